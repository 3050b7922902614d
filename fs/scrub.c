/*
 * scrub — re-reading stored files to prove them whole: each file's bytes
 * against its checksums (learnt, on the first scrub, for files archived
 * before checksums were recorded), then, for what hevcfs made, a full decode
 * in a child process (a damaged file must not take the caller down). Used by
 * `hevcfs verify` (mounted or not) and by the mount's background scrubber
 * (scrub_days), which checks the files checked longest ago first.
 */
#define FUSE_USE_VERSION 314
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* The meta key of an interrupted full run: its start time, so the next run
 * skips what it already checked. */
#define RUN_KEY "scrub"

/* The background scrubber reads at most this fast, so the mount stays
 * responsive (MB/s), and looks for due files this often (s). */
#define BACKGROUND_RATE_MB 40.0
#define BACKGROUND_LOOK_S 600
/* Files the background scrubber takes per look, oldest-checked first. */
#define BACKGROUND_BATCH 256

static double mono(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* A run: what it checks with, how fast, what it found so far. */
struct run {
	struct idx *idx;
	const struct fs_scrub *s; /* the caller's request (NULL: background) */
	const struct codec_opts *codec;
	const atomic_int *stop;
	double rate;   /* bytes a second, 0: unthrottled */
	double t0;     /* when the run began (monotonic) */
	int64_t began; /* unix time of the run's start (or of the run resumed) */
	int resuming;
	struct fs_scrub_totals t;
	const char *current;
};

/* sum_file's progress: stop when asked, throttle to the rate, report. */
static int on_bytes(void *arg, uint64_t done, uint64_t size)
{
	struct run *r = arg;
	uint64_t before = r->t.bytes;

	(void)size;
	if (r->stop && atomic_load(r->stop))
		return -ECANCELED;
	if (r->rate > 0) {
		double ahead = (double)(before + done) / r->rate - (mono() - r->t0);
		if (ahead > 0) {
			struct timespec ts = {(time_t)ahead, (long)((ahead - (time_t)ahead) * 1e9)};
			nanosleep(&ts, NULL);
		}
	}
	if (r->s && r->s->progress) {
		struct fs_scrub_totals t = r->t;
		t.bytes += done;
		t.seconds = mono() - r->t0;
		r->s->progress(r->s->arg, &t, r->current);
	}
	return 0;
}

/* Which blocks of f differ from the ones ino has recorded: "bytes A-B" of
 * the first, and how many, into what. */
static void blocks_differ(struct idx *idx, uint64_t ino, const struct sum_file *f, char *what,
			  size_t len)
{
	struct idx_txn *txn;
	uint64_t first = UINT64_MAX, n = 0;

	if (idx_begin(idx, 0, &txn) == 0) {
		for (uint64_t b = 0; b < f->nblocks; b++) {
			uint8_t want[SUM_LEN];
			if (idx_blocks_get(txn, ino, b, want) ||
			    memcmp(want, f->blocks + b * SUM_LEN, SUM_LEN)) {
				if (first == UINT64_MAX)
					first = b;
				n++;
			}
		}
		idx_abort(txn);
	}
	if (first == UINT64_MAX)
		snprintf(what, len, "checksum mismatch");
	else
		snprintf(what, len, "checksum mismatch in bytes %llu-%llu (%llu of %llu blocks)",
			 (unsigned long long)(first * SUM_BLOCK),
			 (unsigned long long)((first + 1) * SUM_BLOCK - 1), (unsigned long long)n,
			 (unsigned long long)f->nblocks);
}

/* Write what a check of ino found, unless its entry changed meanwhile (the
 * mount archived or rewrote the file): the digests learnt (f, when not
 * NULL), the time, the damaged flag. 1 when recorded. */
static int record(struct idx *idx, uint64_t ino, const struct idx_entry *seen, int damaged,
		  const struct sum_file *f)
{
	struct idx_txn *txn;
	struct idx_entry e;
	int done = 0;

	if (idx_begin(idx, 1, &txn))
		return 0;
	if (idx_get(txn, ino, &e) == 0 && e.state == seen->state &&
	    !memcmp(e.sum, seen->sum, SUM_LEN) && e.stored_bytes == seen->stored_bytes) {
		int rc = 0;
		if (f)
			rc = fs_sums_record(txn, ino, &e, f);
		if (damaged)
			e.flags |= IDX_F_DAMAGED;
		else
			e.flags &= ~IDX_F_DAMAGED;
		e.checked = damaged ? e.checked : (int64_t)time(NULL);
		if (!rc && idx_put(txn, ino, &e) == 0)
			done = idx_commit(txn) == 0;
		else
			idx_abort(txn);
		return done;
	}
	idx_abort(txn);
	return 0;
}

/* Check one stored file (dirfd/name, seen as e). Fills out. -ECANCELED
 * when the run is stopped. */
static int check_one(struct run *r, int dirfd, const char *name, const struct stat *st,
		     const struct idx_entry *e, struct fs_scrub_file *out)
{
	struct sum_file f = {0};
	struct codec_embedded emb;
	int fd, rc, learnt = sum_is_zero(e->sum), ok = 1;
	char why[256] = "";

	out->outcome = FS_SCRUB_OK;
	out->bytes = (uint64_t)st->st_size;
	fd = openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0) {
		out->outcome = FS_SCRUB_ERROR;
		snprintf(out->what, sizeof(out->what), "cannot be opened: %s", strerror(errno));
		return 0;
	}
	rc = sum_file(fd, 1, 0, 0, on_bytes, r, &f);
	if (rc == -ECANCELED)
		goto out_close;
	if (rc == -EIO) {
		out->outcome = FS_SCRUB_DAMAGED;
		snprintf(out->what, sizeof(out->what), "read error");
	} else if (rc) {
		out->outcome = FS_SCRUB_ERROR;
		snprintf(out->what, sizeof(out->what), "%s", strerror(-rc));
	} else if (!learnt && (f.size != e->stored_bytes || memcmp(f.whole, e->sum, SUM_LEN))) {
		out->outcome = FS_SCRUB_DAMAGED;
		if (f.size != e->stored_bytes)
			snprintf(out->what, sizeof(out->what), "%llu bytes, %llu recorded",
				 (unsigned long long)f.size, (unsigned long long)e->stored_bytes);
		else
			blocks_differ(r->idx, st->st_ino, &f, out->what, sizeof(out->what));
	} else if (learnt && codec_embedded_sums(fd, &emb) == 0 && emb.has &&
		   codec_check_self_sum(fd, &emb, &ok) == 0 && !ok) {
		out->outcome = FS_SCRUB_DAMAGED;
		snprintf(out->what, sizeof(out->what), "does not match the checksum it carries");
	}
	if (out->outcome == FS_SCRUB_OK && e->state == IDX_ARCHIVED) {
		/* what hevcfs made decodes whole, as it did when archived */
		rc = fs_check_isolated(fd, r->codec, why, sizeof(why));
		if (rc == 1) {
			out->outcome = FS_SCRUB_DAMAGED;
			snprintf(out->what, sizeof(out->what), "%s", why);
		} else if (rc < 0) {
			out->outcome = FS_SCRUB_ERROR;
			snprintf(out->what, sizeof(out->what), "decoding: %s", strerror(-rc));
		}
	}
	if (out->outcome == FS_SCRUB_OK && learnt)
		out->outcome = FS_SCRUB_LEARNT;
	if (out->outcome == FS_SCRUB_ERROR) {
		rc = 0;
		goto out_close;
	}
	if (!record(r->idx, st->st_ino, e, out->outcome == FS_SCRUB_DAMAGED,
		    out->outcome == FS_SCRUB_LEARNT ? &f : NULL)) {
		/* the file changed under the check (the mount archived it, say):
		 * what was found is not about what is stored now */
		out->outcome = FS_SCRUB_SKIPPED;
		snprintf(out->what, sizeof(out->what), "changed while checked");
	} else if (out->outcome == FS_SCRUB_DAMAGED && !r->s) {
		/* the background's finding; `verify` reports its own */
		log_msg(LOG_ERR, "damaged: %s: %s", out->path, out->what);
	}
	rc = 0;
out_close:
	sum_file_release(&f);
	close(fd);
	return rc;
}

/* The logical path of a stored file (its archive suffix dropped) into buf. */
static void logical_of(const char *path, const char *name, const struct idx_entry *e, char *buf,
		       size_t size)
{
	size_t plen = strlen(path), nlen = strlen(name), slen = strlen(e->suffix);

	snprintf(buf, size, "%s", path);
	if (e->state == IDX_ARCHIVED && slen && nlen > slen &&
	    !strcmp(name + nlen - slen, e->suffix))
		buf[plen - slen] = '\0';
}

/* Is logical one of the paths asked for, or below one? */
static int wanted(const struct fs_scrub *s, const char *logical)
{
	if (!s->nonly)
		return 1;
	for (int i = 0; i < s->nonly; i++) {
		const char *o = s->only[i];
		size_t n;
		while (*o == '/')
			o++;
		n = strlen(o);
		while (n && o[n - 1] == '/')
			n--;
		if (!n || (!strncmp(logical, o, n) && (logical[n] == '\0' || logical[n] == '/')))
			return 1;
	}
	return 0;
}

/* fs_scrub's visit. */
static int scrub_visit(void *arg, int dirfd, const char *name, const struct stat *st,
		       const char *path)
{
	struct run *r = arg;
	struct fs_scrub_file out = {0};
	struct idx_txn *txn;
	struct idx_entry e;
	char logical[FS_PATH_MAX];
	int rc;

	if (r->stop && atomic_load(r->stop))
		return 1;
	if (idx_begin(r->idx, 0, &txn))
		return 0;
	rc = idx_get(txn, st->st_ino, &e);
	idx_abort(txn);
	if (rc) {
		snprintf(logical, sizeof(logical), "%s", path);
		if (!wanted(r->s, logical))
			return 0;
		out.path = logical;
		out.outcome = FS_SCRUB_SKIPPED;
		snprintf(out.what, sizeof(out.what), "not in the index");
		goto out_report;
	}
	logical_of(path, name, &e, logical, sizeof(logical));
	if (!wanted(r->s, logical))
		return 0;
	out.path = logical;
	if (e.state != IDX_ARCHIVED && e.state != IDX_KEPT) {
		out.outcome = FS_SCRUB_SKIPPED;
		snprintf(out.what, sizeof(out.what), "not at rest (%s)", idx_state_name(e.state));
		goto out_report;
	}
	if (r->resuming && e.checked >= r->began) {
		/* checked by the run this one goes on with */
		r->t.files_before++;
		r->t.bytes_before += (uint64_t)st->st_size;
		return 0;
	}
	r->current = logical;
	rc = check_one(r, dirfd, name, st, &e, &out);
	r->current = NULL;
	if (rc == -ECANCELED)
		return 1;
out_report:
	r->t.files++;
	r->t.bytes += out.outcome == FS_SCRUB_SKIPPED ? 0 : out.bytes;
	switch (out.outcome) {
	case FS_SCRUB_DAMAGED:
		r->t.damaged++;
		break;
	case FS_SCRUB_LEARNT:
		r->t.learnt++;
		break;
	case FS_SCRUB_SKIPPED:
		r->t.skipped++;
		break;
	case FS_SCRUB_ERROR:
		r->t.errors++;
		break;
	}
	r->t.seconds = mono() - r->t0;
	if (r->s->report)
		r->s->report(r->s->arg, &out, &r->t);
	return 0;
}

/* Read or write the start time of an interrupted full run (0: none). */
static int64_t run_get(struct idx *idx)
{
	struct idx_txn *txn;
	char buf[32];
	size_t len;
	int64_t t = 0;

	if (idx_begin(idx, 0, &txn))
		return 0;
	if (idx_meta_get(txn, RUN_KEY, buf, sizeof(buf) - 1, &len) == 0) {
		buf[len] = '\0';
		t = strtoll(buf, NULL, 10);
	}
	idx_abort(txn);
	return t;
}

static void run_set(struct idx *idx, int64_t t)
{
	struct idx_txn *txn;
	char buf[32];

	if (idx_begin(idx, 1, &txn))
		return;
	snprintf(buf, sizeof(buf), "%lld", (long long)t);
	if ((t ? idx_meta_put(txn, RUN_KEY, buf, strlen(buf)) : idx_meta_del(txn, RUN_KEY)) == 0)
		idx_commit(txn);
	else
		idx_abort(txn);
}

int fs_scrub(const struct fs_scrub *s, struct fs_scrub_totals *t)
{
	struct run r = {.s = s, .codec = s->codec, .stop = s->stop};
	struct idx_stats st;
	struct idx_txn *txn;
	int root, rc;

	memset(t, 0, sizeof(*t));
	rc = fs_index_open(s->paths, 0, &r.idx);
	if (rc)
		return rc;
	root = open(s->paths->backing, O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (root < 0) {
		rc = -errno;
		goto out_close;
	}
	if (!s->nonly && idx_begin(r.idx, 0, &txn) == 0) {
		if (idx_stats(txn, &st) == 0) {
			r.t.files_total = st.by_state[IDX_ARCHIVED] + st.by_state[IDX_KEPT];
			for (int k = 0; k < IDX_NKINDS; k++)
				r.t.bytes_total += st.by[IDX_ARCHIVED][k].bytes_stored +
						   st.by[IDX_KEPT][k].bytes_stored;
		}
		idx_abort(txn);
	}
	r.rate = s->rate_mb > 0 ? s->rate_mb * 1e6 : 0;
	r.t0 = mono();
	r.began = (int64_t)time(NULL);
	if (!s->nonly) {
		int64_t old = run_get(r.idx);
		if (old > 0) {
			/* an interrupted run: go on with it */
			r.resuming = 1;
			r.began = old;
			r.t.resumed = 1;
		} else {
			run_set(r.idx, r.began);
		}
	}
	rc = fs_walk(root, scrub_visit, &r);
	close(root);
	r.t.seconds = mono() - r.t0;
	if (rc < 0)
		goto out_close;
	if (s->stop && atomic_load(s->stop)) {
		rc = -EINTR;
	} else {
		rc = 0;
		if (!s->nonly)
			run_set(r.idx, 0);
	}
out_close:
	*t = r.t;
	idx_close(r.idx);
	return rc;
}

/* ---- the background scrubber -------------------------------------------- */

/* A file due for a check: when it was last checked, and where. */
struct due {
	int64_t checked;
	uint64_t ino;
	char *path;
};

struct collect {
	struct idx *idx;
	int64_t before;
	struct due v[BACKGROUND_BATCH];
	int n;
	const atomic_int *stop;
};

/* Keep the BACKGROUND_BATCH files checked longest ago (before c->before). */
static int collect_due(void *arg, int dirfd, const char *name, const struct stat *st,
		       const char *path)
{
	struct collect *c = arg;
	struct idx_txn *txn;
	struct idx_entry e;
	int worst = 0;

	(void)dirfd;
	(void)name;
	if (atomic_load(c->stop))
		return 1;
	if (idx_begin(c->idx, 0, &txn))
		return 0;
	int rc = idx_get(txn, st->st_ino, &e);
	idx_abort(txn);
	if (rc || (e.state != IDX_ARCHIVED && e.state != IDX_KEPT) || e.checked >= c->before)
		return 0;
	if (c->n == BACKGROUND_BATCH) {
		for (int i = 1; i < c->n; i++)
			if (c->v[i].checked > c->v[worst].checked)
				worst = i;
		if (c->v[worst].checked <= e.checked)
			return 0;
		free(c->v[worst].path);
	} else {
		worst = c->n++;
	}
	c->v[worst].checked = e.checked;
	c->v[worst].ino = (uint64_t)st->st_ino;
	c->v[worst].path = strdup(path);
	return 0;
}

static int by_checked(const void *a, const void *b)
{
	const struct due *x = a, *y = b;

	return x->checked < y->checked ? -1 : x->checked > y->checked;
}

/* Check one due file of the background run by its path. */
static void background_one(struct fs *fs, struct run *r, const struct due *d)
{
	const char *name;
	struct fs_scrub_file out = {0};
	struct idx_txn *txn;
	struct idx_entry e;
	struct stat st;
	int parent = fs_open_parent(fs, d->path, &name);

	if (parent < 0)
		return;
	if (fstatat(parent, name, &st, AT_SYMLINK_NOFOLLOW) == 0 && (uint64_t)st.st_ino == d->ino &&
	    idx_begin(fs->idx, 0, &txn) == 0) {
		int rc = idx_get(txn, d->ino, &e);
		idx_abort(txn);
		out.path = d->path;
		/* a file open for writing is not at rest: left for later */
		if (!rc && !fs_node_is_open(fs, d->ino) &&
		    (e.state == IDX_ARCHIVED || e.state == IDX_KEPT))
			check_one(r, parent, name, &st, &e, &out);
	}
	close(parent);
}

static void *scrubber_main(void *arg)
{
	struct fs *fs = arg;
	struct run r = {.idx = fs->idx,
			.codec = &fs->cfg->codec,
			.stop = &fs->stopping,
			.rate = BACKGROUND_RATE_MB * 1e6};

	fs_mutex_lock(&fs->scrub_lock);
	while (!atomic_load(&fs->stopping)) {
		struct collect *c = calloc(1, sizeof(*c));
		struct timespec ts;
		int n = 0;

		fs_mutex_unlock(&fs->scrub_lock);
		if (c) {
			c->idx = fs->idx;
			c->stop = &fs->stopping;
			/* a test hook (as HEVCFS_CRASH_AT is): every file is due */
			c->before =
			    getenv("HEVCFS_SCRUB_NOW")
				? INT64_MAX
				: (int64_t)time(NULL) - (int64_t)fs->cfg->scrub_days * 86400;
			fs_walk(fs->root_fd, collect_due, c);
			qsort(c->v, (size_t)c->n, sizeof(*c->v), by_checked);
			r.t0 = mono();
			memset(&r.t, 0, sizeof(r.t));
			for (int i = 0; i < c->n && !atomic_load(&fs->stopping); i++)
				background_one(fs, &r, &c->v[i]);
			for (int i = 0; i < c->n; i++)
				free(c->v[i].path);
			n = c->n;
			if (n)
				log_msg(LOG_INFO, "scrub: %d file(s) checked in the background", n);
			free(c);
		}
		fs_mutex_lock(&fs->scrub_lock);
		if (n == BACKGROUND_BATCH)
			continue; /* more are due */
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_sec += getenv("HEVCFS_SCRUB_NOW") ? 1 : BACKGROUND_LOOK_S;
		while (!atomic_load(&fs->stopping) &&
		       fs_cond_timedwait(&fs->scrub_cond, &fs->scrub_lock, &ts) == 0)
			;
	}
	fs_mutex_unlock(&fs->scrub_lock);
	return NULL;
}

int fs_scrubber_start(struct fs *fs)
{
	int rc;

	if (fs->cfg->scrub_days <= 0)
		return 0;
	rc = pthread_create(&fs->scrub_thread, NULL, scrubber_main, fs);
	if (rc)
		return -rc;
	fs->scrubbing = 1;
	return 0;
}

void fs_scrubber_stop(struct fs *fs)
{
	if (!fs->scrubbing)
		return;
	fs_mutex_lock(&fs->scrub_lock);
	pthread_cond_broadcast(&fs->scrub_cond);
	fs_mutex_unlock(&fs->scrub_lock);
	pthread_join(fs->scrub_thread, NULL);
	fs->scrubbing = 0;
}
