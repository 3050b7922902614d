/*
 * sums — checksums of stored files: recorded when a file comes to rest
 * (archived, or kept once settled), checked on every read that reaches the
 * backing disk, one SUM_BLOCK at a time, as ZFS checks records. A block is
 * read whole and hashed once per open file (its handles share the result);
 * a mismatch is an I/O error for that file alone, a log line naming it and
 * the damaged flag in the index.
 *
 * A file that is being written is not checked: a writer's open turns its
 * check off (node.c's writer count and generation say so), and the file
 * gets new digests when it settles again.
 *
 * A sequential reader's next block is checked ahead, by the thread of the
 * request that entered the block before it, once that request has been
 * answered (fs_check_ahead): hashing one block overlaps serving the other.
 *
 * Lock: each struct fs_check has its own mutex, a leaf: nothing is taken
 * while it is held, and it is never held across I/O or hashing.
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* Blocks a sequential reader's reads check ahead of it, each by its own
 * request thread: two keep both cores hashing. */
#define CHECK_AHEAD 2

/* The state of one block of a checked file. */
enum { BLOCK_UNKNOWN = 0, BLOCK_BUSY, BLOCK_OK };

struct fs_check {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	uint64_t ino;  /* the backing file whose digests are checked */
	uint64_t size; /* its size when checking began */
	uint64_t nblocks;
	uint8_t sum[SUM_LEN]; /* its whole-file digest then */
	uint64_t gen;	      /* the node's generation then */
	int off;	      /* protected by lock: the file changed, stop */
	uint8_t *state;	      /* protected by lock: one BLOCK_* a block */
	uint64_t reached;     /* protected by lock: the last block a read touched */
	atomic_int refs;      /* the node's and each handle's */
};

struct fs_check *fs_check_ref(struct fs_check *c)
{
	if (c)
		atomic_fetch_add(&c->refs, 1);
	return c;
}

void fs_check_put(struct fs_check *c)
{
	if (!c || atomic_fetch_sub(&c->refs, 1) > 1)
		return;
	pthread_mutex_destroy(&c->lock);
	pthread_cond_destroy(&c->cond);
	free(c->state);
	free(c);
}

/* Does e describe a file at rest whose digests cover size bytes? */
static int at_rest(const struct idx_entry *e, uint64_t size)
{
	return (e->state == IDX_KEPT || e->state == IDX_ARCHIVED) && !sum_is_zero(e->sum) &&
	       e->stored_bytes == size;
}

struct fs_check *fs_check_attach(struct fs *fs, struct fs_node *n, int fd, uint64_t ino,
				 const struct idx_entry *e)
{
	struct fs_check *c;
	struct idx_txn *txn;
	struct stat st;
	uint64_t have = 0;

	if (!fs->cfg->verify_reads)
		return NULL;
	/* the handles of one file share its check */
	if ((c = fs_node_check_get(fs, n, ino)))
		return c;
	if (fstat(fd, &st) == -1 || !S_ISREG(st.st_mode) || !at_rest(e, (uint64_t)st.st_size) ||
	    st.st_size == 0)
		return NULL;
	if (idx_begin(fs->idx, 0, &txn) == 0) {
		have = idx_blocks_count(txn, ino);
		idx_abort(txn);
	}
	if (have != sum_blocks((uint64_t)st.st_size))
		return NULL; /* learnt by the next scrub */
	c = calloc(1, sizeof(*c));
	if (!c)
		return NULL;
	c->state = calloc((size_t)have, 1);
	if (!c->state) {
		free(c);
		return NULL;
	}
	pthread_mutex_init(&c->lock, NULL);
	pthread_cond_init(&c->cond, NULL);
	c->ino = ino;
	c->size = (uint64_t)st.st_size;
	c->nblocks = have;
	memcpy(c->sum, e->sum, SUM_LEN);
	c->gen = fs_node_gen(n);
	atomic_store(&c->refs, 1);
	/* the node's reference, and the caller's; a writer that opened
	 * meanwhile, or another reader's check set first, wins */
	return fs_node_check_set(fs, n, ino, c);
}

void fs_check_stop(struct fs_check *c)
{
	if (!c)
		return;
	pthread_mutex_lock(&c->lock);
	c->off = 1;
	pthread_cond_broadcast(&c->cond);
	pthread_mutex_unlock(&c->lock);
}

/* Is the mismatch of c's file a change rather than damage: a writer came,
 * its generation moved, or its entry is no longer the one checked against
 * (archived, replaced, rewritten)? */
static int changed_meanwhile(struct fs *fs, struct fs_node *n, struct fs_check *c)
{
	struct idx_entry e;

	if (fs_node_gen(n) != c->gen || fs_node_writing(fs, n))
		return 1;
	if (fs_entry_get(fs, c->ino, &e) != 0)
		return 1;
	return !at_rest(&e, c->size) || memcmp(e.sum, c->sum, SUM_LEN) != 0;
}

void fs_mark_damaged(struct fs *fs, uint64_t ino, const char *path, const char *what)
{
	struct idx_txn *txn;
	struct idx_entry e;

	int first = 0;

	while (path && *path == '/')
		path++;
	if (idx_begin(fs->idx, 1, &txn) == 0) {
		if (idx_get(txn, ino, &e) == 0 && !(e.flags & IDX_F_DAMAGED)) {
			e.flags |= IDX_F_DAMAGED;
			first = idx_put(txn, ino, &e) == 0;
		}
		if (first)
			first = idx_commit(txn) == 0;
		else
			idx_abort(txn);
	}
	/* one line when found, not one per retried read */
	log_msg(first ? LOG_ERR : LOG_DEBUG, "damaged: %s: %s", path ? path : "(a stored file)",
		what);
}

/* Read block b of c's file from fd and compare it with its digest. 0, 1
 * when it does not match, or -errno of the read. */
static int check_block(struct fs *fs, struct fs_check *c, int fd, uint64_t b, uint8_t *buf)
{
	uint64_t start = b * SUM_BLOCK;
	size_t want = (size_t)(c->size - start < SUM_BLOCK ? c->size - start : SUM_BLOCK), got = 0;
	uint8_t have[SUM_LEN], expect[SUM_LEN];
	struct idx_txn *txn;
	int rc;

	while (got < want) {
		ssize_t r = pread(fd, buf + got, want - got, (off_t)(start + got));
		if (r == -1 && errno == EINTR)
			continue;
		if (r == -1)
			return -errno;
		if (r == 0)
			return 1; /* shorter than recorded */
		got += (size_t)r;
	}
	if ((rc = sum_buf(buf, want, have)))
		return rc;
	if ((rc = idx_begin(fs->idx, 0, &txn)))
		return rc;
	rc = idx_blocks_get(txn, c->ino, b, expect);
	idx_abort(txn);
	if (rc == -ENOENT)
		return 1;
	if (rc)
		return rc;
	return memcmp(have, expect, SUM_LEN) != 0;
}

/* One block buffer per thread that checks: FUSE's request threads. */
static _Thread_local uint8_t *block_buf;

/* Free this thread's buffer when it ends (its destructor). */
static pthread_key_t block_key;
static pthread_once_t block_once = PTHREAD_ONCE_INIT;

static void block_key_init(void)
{
	pthread_key_create(&block_key, free);
}

static uint8_t *thread_buf(void)
{
	if (!block_buf) {
		pthread_once(&block_once, block_key_init);
		block_buf = malloc(SUM_BLOCK);
		if (block_buf)
			pthread_setspecific(block_key, block_buf);
	}
	return block_buf;
}

int fs_check_range(struct fs *fs, struct fs_check *c, struct fs_node *n, int fd, uint64_t off,
		   size_t size, const char *path)
{
	uint64_t first, last;

	if (!c || size == 0 || off >= c->size)
		return 0;
	first = off / SUM_BLOCK;
	last = (off + size - 1 < c->size ? off + size - 1 : c->size - 1) / SUM_BLOCK;
	for (uint64_t b = first; b <= last; b++) {
		uint8_t *buf;
		int rc;

		pthread_mutex_lock(&c->lock);
		while (!c->off && c->state[b] == BLOCK_BUSY)
			pthread_cond_wait(&c->cond, &c->lock);
		if (c->off) {
			pthread_mutex_unlock(&c->lock);
			return 0;
		}
		if (c->state[b] == BLOCK_OK) {
			pthread_mutex_unlock(&c->lock);
			continue;
		}
		c->state[b] = BLOCK_BUSY;
		pthread_mutex_unlock(&c->lock);

		/* the next block's read starts now, while this one is hashed
		 * and served: a sequential reader then waits on neither */
		if (b == last && b + 1 < c->nblocks)
			posix_fadvise(fd, (off_t)((b + 1) * SUM_BLOCK), SUM_BLOCK,
				      POSIX_FADV_WILLNEED);
		buf = thread_buf();
		rc = buf ? check_block(fs, c, fd, b, buf) : -ENOMEM;
		if (rc == 1 && changed_meanwhile(fs, n, c)) {
			fs_check_stop(c);
			return 0;
		}
		pthread_mutex_lock(&c->lock);
		c->state[b] = rc == 0 ? BLOCK_OK : BLOCK_UNKNOWN;
		pthread_cond_broadcast(&c->cond);
		pthread_mutex_unlock(&c->lock);
		if (rc == 1) {
			char what[96];
			snprintf(what, sizeof(what), "checksum mismatch in bytes %llu-%llu",
				 (unsigned long long)(b * SUM_BLOCK),
				 (unsigned long long)((b + 1) * SUM_BLOCK - 1));
			fs_mark_damaged(fs, c->ino, path, what);
			return -EIO;
		}
		if (rc)
			return rc;
	}
	return 0;
}

int64_t fs_check_ahead_claim(struct fs_check *c, uint64_t off, size_t size)
{
	uint64_t first, last;
	int64_t b = -1;

	if (!c || size == 0 || off >= c->size)
		return -1;
	first = off / SUM_BLOCK;
	last = (off + size - 1 < c->size ? off + size - 1 : c->size - 1) / SUM_BLOCK;
	pthread_mutex_lock(&c->lock);
	/* sequential: this read starts in the block the reads reached, or
	 * the one after (the kernel's readahead requests may come out of
	 * order); a random reader gets nothing checked it did not ask for */
	if ((first == c->reached || first == c->reached + 1) && !c->off) {
		for (uint64_t next = last + 1; next <= last + CHECK_AHEAD && next < c->nblocks;
		     next++) {
			if (c->state[next] == BLOCK_UNKNOWN) {
				c->state[next] = BLOCK_BUSY;
				b = (int64_t)next;
				break;
			}
		}
	}
	if (last > c->reached)
		c->reached = last;
	pthread_mutex_unlock(&c->lock);
	return b;
}

void fs_check_ahead(struct fs *fs, struct fs_check *c, int fd, uint64_t b)
{
	uint8_t *buf = NULL;
	int rc = -EBADF;

	if (fd >= 0 && b + 1 < c->nblocks)
		posix_fadvise(fd, (off_t)((b + 1) * SUM_BLOCK), 4 * SUM_BLOCK, POSIX_FADV_WILLNEED);
	if (fd >= 0 && (buf = thread_buf()))
		rc = check_block(fs, c, fd, b, buf);
	/* a block that does not match is left unknown: the read that wants
	 * it checks it again and reports it, naming the file */
	pthread_mutex_lock(&c->lock);
	c->state[b] = rc == 0 ? BLOCK_OK : BLOCK_UNKNOWN;
	pthread_cond_broadcast(&c->cond);
	pthread_mutex_unlock(&c->lock);
}

int fs_sums_record(struct idx_txn *txn, uint64_t ino, struct idx_entry *e, const struct sum_file *f)
{
	memcpy(e->sum, f->whole, SUM_LEN);
	e->checked = (int64_t)time(NULL);
	e->flags &= ~IDX_F_DAMAGED;
	return idx_blocks_put(txn, ino, f->blocks, f->nblocks);
}

int fs_sum_path(int dirfd, const char *name, struct sum_file *f)
{
	int fd = openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC), rc;

	if (fd < 0)
		return -errno;
	rc = sum_file(fd, 1, 0, 0, NULL, NULL, f);
	close(fd);
	return rc;
}
