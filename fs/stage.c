/* stage — what is being written: per-inode nodes, generations, settling. */
#include "internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Global source of generation numbers: unique across the mount's life and
 * larger than any from an earlier mount (seeded from the clock). */
static atomic_uint_fast64_t gen_counter;

/* Slot of ino in the hash table. */
static size_t node_slot(struct fs *fs, uint64_t ino)
{
	return (size_t)((ino * 0x9E3779B97F4A7C15ull) >> 20) % fs->nodes_size;
}

/* Look ino up; caller holds nodes_lock. */
static struct node *node_lookup(struct fs *fs, uint64_t ino)
{
	for (struct node *n = fs->nodes[node_slot(fs, ino)]; n; n = n->next)
		if (n->ino == ino)
			return n;
	return NULL;
}

struct node *fs_node_find(struct fs *fs, uint64_t ino)
{
	struct node *n;

	pthread_mutex_lock(&fs->nodes_lock);
	n = node_lookup(fs, ino);
	if (n)
		n->refs++;
	pthread_mutex_unlock(&fs->nodes_lock);
	return n;
}

struct node *fs_node_get(struct fs *fs, uint64_t ino)
{
	struct node *n;

	pthread_mutex_lock(&fs->nodes_lock);
	n = node_lookup(fs, ino);
	if (n) {
		n->refs++;
	} else if ((n = calloc(1, sizeof(*n)))) {
		size_t slot = node_slot(fs, ino);
		uint64_t zero = 0;
		n->ino = ino;
		n->refs = 1;
		atomic_compare_exchange_strong(&gen_counter, &zero, (uint64_t)time(NULL) << 20);
		atomic_store(&n->gen, atomic_fetch_add(&gen_counter, 1) + 1);
		n->next = fs->nodes[slot];
		fs->nodes[slot] = n;
	}
	pthread_mutex_unlock(&fs->nodes_lock);
	return n;
}

/* Remove the files of ino's archive at gen from work/. */
static void ready_unlink(struct fs *fs, uint64_t ino, uint64_t gen)
{
	char name[64];

	snprintf(name, sizeof(name), "%llu.%llu.out", (unsigned long long)ino,
		 (unsigned long long)gen);
	unlinkat(fs->work_fd, name, 0);
	snprintf(name, sizeof(name), "%llu.%llu.view", (unsigned long long)ino,
		 (unsigned long long)gen);
	unlinkat(fs->work_fd, name, 0);
}

int fs_node_take_ready(struct fs *fs, struct node *n, uint64_t gen, struct codec_result *res)
{
	pthread_mutex_lock(&fs->nodes_lock);
	struct ready *r = n->ready;
	n->ready = NULL;
	pthread_mutex_unlock(&fs->nodes_lock);
	if (!r)
		return 0;
	if (r->gen != gen) {
		ready_unlink(fs, n->ino, r->gen);
		free(r);
		return 0;
	}
	*res = r->res;
	free(r);
	return 1;
}

void fs_node_put(struct fs *fs, struct node *n)
{
	if (!n)
		return;
	pthread_mutex_lock(&fs->nodes_lock);
	if (--n->refs > 0) {
		pthread_mutex_unlock(&fs->nodes_lock);
		return;
	}
	for (struct node **pp = &fs->nodes[node_slot(fs, n->ino)]; *pp; pp = &(*pp)->next) {
		if (*pp == n) {
			*pp = n->next;
			break;
		}
	}
	pthread_mutex_unlock(&fs->nodes_lock);
	if (n->ready)
		ready_unlink(fs, n->ino, n->ready->gen);
	free(n->ready);
	free(n->path);
	fs_check_free(atomic_load(&n->check));
	free(n);
}

void fs_node_touch(struct fs *fs, struct node *n)
{
	(void)fs;
	atomic_store(&n->gen, atomic_fetch_add(&gen_counter, 1) + 1);
	atomic_store(&n->cancel, 1);
	n->dirty = 1; /* a plain int store: read under nodes_lock at close */
}

int fs_node_path_hidden(const struct node *n, const char *path)
{
	return path && (n->gone || n->hidden_links > 0) && fs_hidden_name(fs_basename(path));
}

/* Remember path as the node's latest name; caller holds nodes_lock. The
 * hidden name of a file removed while open is no name to archive under. */
static void node_set_path(struct node *n, const char *path)
{
	char *p;

	if (!path || fs_node_path_hidden(n, path))
		return;
	while (*path == '/')
		path++;
	if (n->path && strcmp(n->path, path) == 0)
		return;
	p = strdup(path);
	if (!p)
		return; /* keep the older name: the rename hook keeps it current */
	free(n->path);
	n->path = p;
}

/* n was opened through path; caller holds nodes_lock. Opened under a real
 * name it is a file again (its inode number may have been reused since the
 * node's file went). */
static void node_opened_as(struct node *n, const char *path)
{
	if (path && !fs_node_path_hidden(n, path))
		n->gone = 0;
	node_set_path(n, path);
}

void fs_node_writer_open(struct fs *fs, struct node *n, const char *path)
{
	pthread_mutex_lock(&fs->nodes_lock);
	n->writers++;
	node_opened_as(n, path);
	pthread_mutex_unlock(&fs->nodes_lock);
	/* its bytes may change from now on: they are checked once settled */
	fs_check_stop(n);
}

int fs_node_writing(struct fs *fs, struct node *n)
{
	pthread_mutex_lock(&fs->nodes_lock);
	int w = n->writers > 0;
	pthread_mutex_unlock(&fs->nodes_lock);
	return w;
}

void fs_node_opened(struct fs *fs, struct node *n, const char *path)
{
	pthread_mutex_lock(&fs->nodes_lock);
	n->opens++;
	node_opened_as(n, path);
	pthread_mutex_unlock(&fs->nodes_lock);
}

int fs_node_closed(struct fs *fs, struct node *n, char *buf)
{
	int last, requeue = 0;
	uint64_t gen = 0;

	pthread_mutex_lock(&fs->nodes_lock);
	n->opens--;
	last = n->opens == 0 && n->gone && n->hidden_name[0];
	if (last)
		memcpy(buf, n->hidden_name, sizeof(n->hidden_name));
	if (n->opens == 0 && n->commit_waits) {
		n->commit_waits = 0;
		/* written meanwhile: settling queues it; gone: nothing to do */
		requeue = !n->gone && !n->dirty && n->writers == 0 && !fs->stopping;
		gen = atomic_load(&n->gen);
	}
	pthread_mutex_unlock(&fs->nodes_lock);
	if (requeue)
		fs_job_push(fs, n->ino, gen, n);
	return last;
}

int fs_node_defer_commit(struct fs *fs, struct node *n, uint64_t gen,
			 const struct codec_result *res)
{
	struct ready *r = malloc(sizeof(*r)), *old = NULL;
	int open, kept = 0;

	if (r) {
		r->gen = gen;
		r->res = *res;
	}
	pthread_mutex_lock(&fs->nodes_lock);
	open = n->opens > 0;
	if (open) {
		n->commit_waits = 1;
		old = n->ready;
		n->ready = r;
		kept = r != NULL;
		r = NULL;
	}
	pthread_mutex_unlock(&fs->nodes_lock);
	if (old && old->gen != gen)
		ready_unlink(fs, n->ino, old->gen);
	free(old);
	free(r);
	/* with no memory for it the archive is made again at the last close */
	if (open && !kept)
		ready_unlink(fs, n->ino, gen);
	return open;
}

int64_t fs_node_hidden_size(struct fs *fs, uint64_t ino)
{
	pthread_mutex_lock(&fs->nodes_lock);
	struct node *n = node_lookup(fs, ino);
	int64_t size = n && n->hidden_links > 0 ? n->hidden_size : -1;
	pthread_mutex_unlock(&fs->nodes_lock);
	return size;
}

nlink_t fs_node_nlink(struct fs *fs, uint64_t ino, nlink_t nlink)
{
	pthread_mutex_lock(&fs->nodes_lock);
	struct node *n = node_lookup(fs, ino);
	if (n && n->gone)
		nlink = 0;
	else if (n)
		nlink -= (nlink_t)n->hidden_links < nlink ? (nlink_t)n->hidden_links : nlink;
	pthread_mutex_unlock(&fs->nodes_lock);
	return nlink;
}

void fs_node_hidden_link(struct fs *fs, uint64_t ino, const char *name, int delta, int64_t size)
{
	/* the hidden links hold a reference: what they show outlives the
	 * handles (the inode a removed name had may have none of its own) */
	struct node *n = delta > 0 ? fs_node_get(fs, ino) : fs_node_find(fs, ino);
	int keep = 0, drop = 0;

	if (!n)
		return;
	pthread_mutex_lock(&fs->nodes_lock);
	if (delta > 0) {
		keep = n->hidden_links++ == 0;
		n->hidden_size = size;
		snprintf(n->hidden_name, sizeof(n->hidden_name), "%s", name);
	} else if (n->hidden_links > 0) {
		drop = --n->hidden_links == 0;
		if (!strcmp(n->hidden_name, name))
			n->hidden_name[0] = '\0';
	}
	pthread_mutex_unlock(&fs->nodes_lock);
	if (!keep)
		fs_node_put(fs, n);
	if (drop)
		fs_node_put(fs, n);
}

void fs_nodes_forget_path(struct fs *fs, const char *path)
{
	while (*path == '/')
		path++;
	pthread_mutex_lock(&fs->nodes_lock);
	for (size_t i = 0; i < fs->nodes_size; i++) {
		for (struct node *n = fs->nodes[i]; n; n = n->next) {
			if (n->path && !strcmp(n->path, path)) {
				free(n->path);
				n->path = NULL;
			}
		}
	}
	pthread_mutex_unlock(&fs->nodes_lock);
}

void fs_nodes_free(struct fs *fs)
{
	for (size_t i = 0; i < fs->nodes_size; i++) {
		while (fs->nodes[i]) {
			struct node *n = fs->nodes[i];
			fs->nodes[i] = n->next;
			free(n->ready); /* its files go with work/ at the next mount */
			free(n->path);
			fs_check_free(atomic_load(&n->check));
			free(n);
		}
	}
}

int fs_path_is_open(struct fs *fs, const char *path)
{
	int open = 0;

	while (*path == '/')
		path++;
	pthread_mutex_lock(&fs->nodes_lock);
	for (size_t i = 0; !open && i < fs->nodes_size; i++)
		for (struct node *n = fs->nodes[i]; !open && n; n = n->next)
			open = n->opens > 0 && n->path && !strcmp(n->path, path);
	pthread_mutex_unlock(&fs->nodes_lock);
	return open;
}

int fs_node_is_open(struct fs *fs, uint64_t ino)
{
	pthread_mutex_lock(&fs->nodes_lock);
	struct node *n = node_lookup(fs, ino);
	int open = n && n->opens > 0;
	pthread_mutex_unlock(&fs->nodes_lock);
	return open;
}

void fs_node_writer_close(struct fs *fs, struct node *n, const char *path)
{
	pthread_mutex_lock(&fs->nodes_lock);
	n->writers--;
	if (!n->gone)
		node_set_path(n, path);
	n->settle_at = fs_now_ms() + fs->cfg->settle_ms;
	if (n->writers == 0 && n->dirty && !n->gone && !n->settling && !fs->stopping) {
		n->settling = 1;
		n->refs++;
		n->settle_next = fs->settle;
		fs->settle = n;
		/* the thread looks at the list when it planned to, and that is
		 * soon enough unless this node is due earlier */
		if (n->settle_at < fs->settle_wake_at) {
			fs->settle_kick = 1;
			pthread_cond_signal(&fs->settle_cond);
		}
	}
	pthread_mutex_unlock(&fs->nodes_lock);
}

void fs_nodes_rename(struct fs *fs, const char *from, const char *to)
{
	size_t flen, tlen;

	while (*from == '/')
		from++;
	while (*to == '/')
		to++;
	flen = strlen(from);
	tlen = strlen(to);
	pthread_mutex_lock(&fs->nodes_lock);
	for (size_t i = 0; i < fs->nodes_size; i++) {
		for (struct node *n = fs->nodes[i]; n; n = n->next) {
			size_t plen = n->path ? strlen(n->path) : 0;
			if (!n->path || plen < flen || memcmp(n->path, from, flen) != 0 ||
			    (plen > flen && n->path[flen] != '/'))
				continue;
			char *p = malloc(tlen + plen - flen + 1);
			if (!p)
				continue;
			memcpy(p, to, tlen);
			memcpy(p + tlen, n->path + flen, plen - flen + 1);
			free(n->path);
			n->path = p;
		}
	}
	pthread_mutex_unlock(&fs->nodes_lock);
}

void fs_node_gone(struct fs *fs, uint64_t ino)
{
	pthread_mutex_lock(&fs->nodes_lock);
	struct node *n = node_lookup(fs, ino);
	if (n) {
		atomic_store(&n->cancel, 1);
		atomic_fetch_add(&n->gen, 1);
		n->dirty = 0;
		n->gone = 1;
	}
	pthread_mutex_unlock(&fs->nodes_lock);
}

int fs_mark_staged(struct fs *fs, uint64_t ino, uint64_t size, const char *path)
{
	struct idx_entry e = {
	    .state = IDX_STAGED, .orig_bytes = size, .stored_bytes = size, .view_bytes = size};
	struct idx_entry old;
	struct idx_txn *txn;
	int rc = idx_begin(fs->idx, 1, &txn);

	if (rc)
		return rc;
	/* an archive it replaced still waits for it to settle */
	if (idx_get(txn, ino, &old) == 0)
		e.prev = old.prev;
	while (*path == '/')
		path++;
	rc = idx_put(txn, ino, &e);
	if (!rc)
		rc = idx_blocks_del(txn, ino); /* digests come again when it settles */
	if (!rc)
		rc = idx_queue_put(txn, ino, 0, path);
	if (rc) {
		idx_abort(txn);
		return rc;
	}
	return idx_commit(txn);
}

/* Queue every settled node: one index transaction for the batch. Called
 * with nodes_lock held; releases and retakes it around the index write. */
static void settle_due(struct fs *fs, int64_t now, int64_t *next)
{
	struct node *due = NULL, **pp = &fs->settle;

	while (*pp) {
		struct node *n = *pp;
		if (n->writers == 0 && n->settle_at <= now) {
			*pp = n->settle_next;
			n->settling = 0;
			n->settle_next = due;
			due = n;
		} else {
			if (n->writers == 0 && n->settle_at < *next)
				*next = n->settle_at;
			pp = &n->settle_next;
		}
	}
	if (!due)
		return; /* the lock stays held: no window for a kick */
	pthread_mutex_unlock(&fs->nodes_lock);
	while (due) {
		struct node *n = due;
		due = n->settle_next;
		pthread_mutex_lock(&fs->nodes_lock);
		int dirty = n->dirty && !n->gone;
		n->dirty = 0;
		pthread_mutex_unlock(&fs->nodes_lock);
		if (dirty)
			fs_job_push(fs, n->ino, atomic_load(&n->gen), n);
		fs_node_put(fs, n); /* the settle list's reference */
	}
	pthread_mutex_lock(&fs->nodes_lock);
}

/* Settling is a pause of settle_ms: a few ms later does not matter. */
#define SETTLE_TICK_MS 20

/* The settle thread: wakes when a node is due, or when one joins the list
 * that is due before the thread's planned look. */
static void *settle_main(void *arg)
{
	struct fs *fs = arg;

	pthread_mutex_lock(&fs->nodes_lock);
	while (!fs->stopping) {
		int64_t now = fs_now_ms(), next = now + 1000;
		/* nodes that join while the look has the lock released are
		 * not in next: they kick, and the thread looks again */
		fs->settle_wake_at = INT64_MAX;
		fs->settle_kick = 0;
		settle_due(fs, now, &next);
		if (fs->stopping)
			break;
		if (fs->settle_kick)
			continue;
		/* each look walks the whole list: with thousands of files
		 * settling (a folder being copied in), looking at most every
		 * SETTLE_TICK_MS keeps that walk off the write path's lock */
		now = fs_now_ms();
		if (next < now + SETTLE_TICK_MS)
			next = now + SETTLE_TICK_MS;
		fs->settle_wake_at = next;
		struct timespec ts;
		clock_gettime(CLOCK_MONOTONIC, &ts);
		int64_t wait = next - now;
		ts.tv_sec += wait / 1000;
		ts.tv_nsec += (wait % 1000) * 1000000;
		if (ts.tv_nsec >= 1000000000) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000;
		}
		pthread_cond_timedwait(&fs->settle_cond, &fs->nodes_lock, &ts);
	}
	pthread_mutex_unlock(&fs->nodes_lock);
	return NULL;
}

int fs_settle_start(struct fs *fs)
{
	pthread_condattr_t ca;
	int rc;

	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&fs->settle_cond, &ca);
	pthread_condattr_destroy(&ca);
	rc = pthread_create(&fs->settle_thread, NULL, settle_main, fs);
	return -rc;
}

/* Stop settling. Files still settling stay "staged" in the index and are
 * queued again by the next mount's recovery. */
void fs_settle_stop(struct fs *fs)
{
	pthread_mutex_lock(&fs->nodes_lock);
	fs->stopping = 1;
	pthread_cond_signal(&fs->settle_cond);
	pthread_mutex_unlock(&fs->nodes_lock);
	pthread_join(fs->settle_thread, NULL);
	pthread_mutex_lock(&fs->nodes_lock);
	struct node *list = fs->settle;
	fs->settle = NULL;
	for (struct node *n = list; n; n = n->settle_next)
		n->settling = 0;
	pthread_mutex_unlock(&fs->nodes_lock);
	while (list) {
		struct node *n = list;
		list = n->settle_next;
		fs_node_put(fs, n);
	}
}
