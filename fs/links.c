/*
 * links — keeping the kernel's attribute cache right for hard-linked files.
 *
 * The path-based FUSE library gives each name its own kernel inode, so when
 * a file with several names changes through one (write, chmod, unlink of
 * another name...), what the kernel cached for the others would be stale for
 * up to attr_timeout. Names of files seen with more than one link are
 * remembered here; after a change, the other names are invalidated from a
 * thread of their own (never from inside a request: the kernel may hold the
 * pages or locks the invalidation would wait for).
 *
 * Lock: links_lock protects everything below; it is a leaf lock.
 */
#define FUSE_USE_VERSION 314
#include "internal.h"

#include <errno.h>
#include <fuse.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* At most this many names are remembered (hard links are rare in photo
 * collections; a backup tree full of them just loses the oldest). */
#define LINKS_MAX 4096

struct link_name {
	uint64_t ino;
	char *path; /* with its leading '/' */
	int stale;  /* to be invalidated */
};

void fs_links_note(struct fs *fs, uint64_t ino, const char *path)
{
	struct link_name *l = NULL;

	if (!path)
		return;
	pthread_mutex_lock(&fs->links_lock);
	for (size_t i = 0; i < fs->nlinks; i++)
		if (fs->links[i].ino == ino && !strcmp(fs->links[i].path, path))
			goto out;
	if (fs->nlinks == LINKS_MAX) {
		free(fs->links[0].path);
		memmove(fs->links, fs->links + 1, (LINKS_MAX - 1) * sizeof(*fs->links));
		fs->nlinks--;
	}
	if (!fs->links && !(fs->links = calloc(LINKS_MAX, sizeof(*fs->links))))
		goto out;
	l = &fs->links[fs->nlinks];
	if ((l->path = strdup(path))) {
		l->ino = ino;
		l->stale = 0;
		fs->nlinks++;
	}
out:
	pthread_mutex_unlock(&fs->links_lock);
}

/* How long a request waits for the invalidations it caused: long enough
 * for them to be done before it returns (what a local disk shows), short
 * enough that a kernel lock held on its behalf can never wedge the mount. */
#define LINKS_WAIT_MS 200

void fs_links_changed(struct fs *fs, uint64_t ino, const char *except)
{
	uint64_t ticket = 0;

	pthread_mutex_lock(&fs->links_lock);
	for (size_t i = 0; i < fs->nlinks; i++) {
		if (fs->links[i].ino == ino && (!except || strcmp(fs->links[i].path, except))) {
			fs->links[i].stale = 1;
			ticket = ++fs->links_queued;
		}
	}
	if (ticket) {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += LINKS_WAIT_MS * 1000000L;
		if (ts.tv_nsec >= 1000000000L) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000L;
		}
		pthread_cond_broadcast(&fs->links_cond);
		while (fs->links_done < ticket && !fs->links_stop &&
		       pthread_cond_timedwait(&fs->links_cond, &fs->links_lock, &ts) == 0)
			;
	}
	pthread_mutex_unlock(&fs->links_lock);
}

/* The invalidating thread. */
static void *links_main(void *arg)
{
	struct fs *fs = arg;

	pthread_mutex_lock(&fs->links_lock);
	while (!fs->links_stop) {
		char *path = NULL;
		for (size_t i = 0; i < fs->nlinks && !path; i++) {
			if (fs->links[i].stale) {
				fs->links[i].stale = 0;
				path = strdup(fs->links[i].path);
			}
		}
		if (!path) {
			/* everything marked so far is done: wake the waiters */
			fs->links_done = fs->links_queued;
			pthread_cond_broadcast(&fs->links_cond);
			pthread_cond_wait(&fs->links_cond, &fs->links_lock);
			continue;
		}
		pthread_mutex_unlock(&fs->links_lock);
		/* -ENOENT: a name no longer known to the kernel, nothing cached */
		if (fs->fuse)
			fuse_invalidate_path(fs->fuse, path);
		free(path);
		pthread_mutex_lock(&fs->links_lock);
	}
	pthread_mutex_unlock(&fs->links_lock);
	return NULL;
}

int fs_links_start(struct fs *fs)
{
	return -pthread_create(&fs->links_thread, NULL, links_main, fs);
}

void fs_links_stop(struct fs *fs)
{
	pthread_mutex_lock(&fs->links_lock);
	fs->links_stop = 1;
	pthread_cond_signal(&fs->links_cond);
	pthread_mutex_unlock(&fs->links_lock);
	pthread_join(fs->links_thread, NULL);
	for (size_t i = 0; i < fs->nlinks; i++)
		free(fs->links[i].path);
	free(fs->links);
	fs->links = NULL;
	fs->nlinks = 0;
}
