/*
 * pool — worker threads for import and export: a bounded queue of files
 * filled by one walker, emptied by n workers. A video takes every core, so
 * videos go one at a time while the other workers go on with photos.
 *
 * Lock: pool.lock protects the queue, its counts and the video turn; it is
 * a leaf, never held while a task runs.
 */
#include "internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* Files waiting at most (the walker waits when the workers lag). */
#define POOL_QUEUE_MAX 256

struct task {
	char *path; /* relative to the walk's root */
	char *src;  /* the source file's absolute path (import) */
	struct stat st;
	struct task *next;
};

struct fs_pool {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct task *head, *tail;
	size_t queued;
	int closed;	/* no more tasks will come */
	int video_busy; /* a video task is running */
	pthread_t *threads;
	int nthreads;
	fs_pool_fn run;
	void *arg;
	const atomic_int *stop;
};

static void task_free(struct task *t)
{
	free(t->path);
	free(t->src);
	free(t);
}

static void *pool_main(void *arg)
{
	struct fs_pool *p = arg;

	for (;;) {
		struct task *t;
		pthread_mutex_lock(&p->lock);
		while (!p->head && !p->closed)
			pthread_cond_wait(&p->cond, &p->lock);
		t = p->head;
		if (!t) {
			pthread_mutex_unlock(&p->lock);
			return NULL;
		}
		p->head = t->next;
		if (!p->head)
			p->tail = NULL;
		p->queued--;
		pthread_cond_broadcast(&p->cond);
		pthread_mutex_unlock(&p->lock);
		if (!(p->stop && atomic_load(p->stop)))
			p->run(p->arg, p, t->path, t->src, &t->st);
		task_free(t);
	}
}

int fs_pool_new(int n, fs_pool_fn run, void *arg, const atomic_int *stop, struct fs_pool **out)
{
	struct fs_pool *p = calloc(1, sizeof(*p));

	if (!p)
		return -ENOMEM;
	if (n < 1)
		n = 1;
	p->threads = calloc((size_t)n, sizeof(*p->threads));
	if (!p->threads) {
		free(p);
		return -ENOMEM;
	}
	pthread_mutex_init(&p->lock, NULL);
	pthread_cond_init(&p->cond, NULL);
	p->run = run;
	p->arg = arg;
	p->stop = stop;
	for (int i = 0; i < n; i++) {
		if (pthread_create(&p->threads[i], NULL, pool_main, p))
			break;
		p->nthreads++;
	}
	if (!p->nthreads) {
		fs_pool_free(p);
		return -EAGAIN;
	}
	*out = p;
	return 0;
}

int fs_pool_add(struct fs_pool *p, const char *path, const char *src, const struct stat *st)
{
	struct task *t = calloc(1, sizeof(*t));

	if (!t || !(t->path = strdup(path)) || (src && !(t->src = strdup(src)))) {
		if (t)
			task_free(t);
		return -ENOMEM;
	}
	t->st = *st;
	pthread_mutex_lock(&p->lock);
	while (p->queued >= POOL_QUEUE_MAX && !(p->stop && atomic_load(p->stop)))
		pthread_cond_wait(&p->cond, &p->lock);
	if (p->tail)
		p->tail->next = t;
	else
		p->head = t;
	p->tail = t;
	p->queued++;
	pthread_cond_broadcast(&p->cond);
	pthread_mutex_unlock(&p->lock);
	return 0;
}

void fs_pool_video(struct fs_pool *p, int start)
{
	pthread_mutex_lock(&p->lock);
	if (start) {
		while (p->video_busy)
			pthread_cond_wait(&p->cond, &p->lock);
		p->video_busy = 1;
	} else {
		p->video_busy = 0;
		pthread_cond_broadcast(&p->cond);
	}
	pthread_mutex_unlock(&p->lock);
}

void fs_pool_free(struct fs_pool *p)
{
	if (!p)
		return;
	pthread_mutex_lock(&p->lock);
	p->closed = 1;
	pthread_cond_broadcast(&p->cond);
	pthread_mutex_unlock(&p->lock);
	for (int i = 0; i < p->nthreads; i++)
		pthread_join(p->threads[i], NULL);
	while (p->head) {
		struct task *t = p->head;
		p->head = t->next;
		task_free(t);
	}
	pthread_mutex_destroy(&p->lock);
	pthread_cond_destroy(&p->cond);
	free(p->threads);
	free(p);
}
