/*
 * export — BACKING's tree written out to a plain directory without a mount:
 * as the mount shows it (an archived photo as its JPEG view under its
 * original name, a video as its MP4 under its original name) or as stored.
 * Every stored byte is checked against its checksum on the way (a damaged
 * file is reported and not written); names, modes, owners, times and user.*
 * xattrs are kept; a file already written with its size and mtime is
 * skipped, so an interrupted export goes on where it stopped.
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

/* A directory whose attributes are set once everything in it is written. */
struct dir_attr {
	char *path;
	struct stat st;
	int src; /* an O_PATH fd of the stored directory, for its xattrs */
};

struct export_run {
	const struct fs_export *x;
	struct idx *idx;
	int root, dest;
	pthread_mutex_t lock; /* t and the reports */
	struct fs_xfer_totals t;
	double t0;
	struct dir_attr *dirs;
	size_t ndirs;
};

static double mono(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Is logical wanted: one of the paths asked for, below one, or (for a
 * directory, dir set) above one? */
static int wanted(const struct fs_export *x, const char *logical, int dir)
{
	if (!x->nonly)
		return 1;
	for (int i = 0; i < x->nonly; i++) {
		const char *o = x->only[i];
		size_t n, l = strlen(logical);
		while (*o == '/')
			o++;
		n = strlen(o);
		while (n && o[n - 1] == '/')
			n--;
		if (!n || (!strncmp(logical, o, n) && (logical[n] == '\0' || logical[n] == '/')))
			return 1;
		if (dir && l < n && !strncmp(o, logical, l) && o[l] == '/')
			return 1;
	}
	return 0;
}

/* Is path wanted once an archive suffix is taken off its name? */
static int wanted_stripped(const struct fs_export *x, const char *path)
{
	static const char *const suffixes[] = {".heic", ".mp4", ".mkv"};
	char logical[FS_PATH_MAX];
	size_t n = strlen(path);

	for (size_t i = 0; i < sizeof(suffixes) / sizeof(*suffixes); i++) {
		size_t s = strlen(suffixes[i]);
		if (n > s && n < sizeof(logical) && !strcmp(path + n - s, suffixes[i])) {
			memcpy(logical, path, n - s);
			logical[n - s] = '\0';
			return wanted(x, logical, 0);
		}
	}
	return 0;
}

/* Count one file done and report it. */
static void done(struct export_run *r, const struct fs_xfer_file *f)
{
	pthread_mutex_lock(&r->lock);
	r->t.files++;
	r->t.bytes_in += f->bytes_in;
	r->t.bytes_out += f->bytes_out;
	switch (f->outcome) {
	case FS_XFER_COPIED:
		r->t.copied++;
		break;
	case FS_XFER_SKIPPED:
		r->t.skipped++;
		break;
	case FS_XFER_DAMAGED:
		r->t.damaged++;
		break;
	default:
		r->t.errors++;
		break;
	}
	r->t.seconds = mono() - r->t0;
	if (r->x->report)
		r->x->report(r->x->arg, f, &r->t);
	pthread_mutex_unlock(&r->lock);
}

/* Copy src (size bytes) to dst, checking each SUM_BLOCK against ino's
 * block digests when there are (have). 0, 1 when a block does not match
 * (what says where), -errno. */
static int copy_checked(struct export_run *r, int src, int dst, uint64_t ino, uint64_t size,
			int have, char *what, size_t len)
{
	uint8_t *buf = malloc(SUM_BLOCK);
	int rc = 0;

	if (!buf)
		return -ENOMEM;
	for (uint64_t off = 0, b = 0; off < size && !rc; off += SUM_BLOCK, b++) {
		size_t want = size - off < SUM_BLOCK ? (size_t)(size - off) : SUM_BLOCK, got = 0;
		while (got < want) {
			ssize_t n = pread(src, buf + got, want - got, (off_t)(off + got));
			if (n == -1 && errno == EINTR)
				continue;
			if (n <= 0) {
				rc = n == 0 ? 1 : -errno;
				snprintf(what, len, "shorter than recorded");
				break;
			}
			got += (size_t)n;
		}
		if (rc)
			break;
		if (have) {
			uint8_t sum[SUM_LEN], expect[SUM_LEN];
			struct idx_txn *txn;
			if ((rc = sum_buf(buf, want, sum)) || (rc = idx_begin(r->idx, 0, &txn)))
				break;
			rc = idx_blocks_get(txn, ino, b, expect);
			idx_abort(txn);
			if (rc || memcmp(sum, expect, SUM_LEN)) {
				snprintf(what, len, "checksum mismatch in bytes %llu-%llu",
					 (unsigned long long)off,
					 (unsigned long long)(off + want - 1));
				rc = 1;
				break;
			}
		}
		for (size_t w = 0; w < want;) {
			ssize_t n = write(dst, buf + w, want - w);
			if (n == -1 && errno == EINTR)
				continue;
			if (n == -1) {
				rc = -errno;
				break;
			}
			w += (size_t)n;
		}
	}
	free(buf);
	return rc;
}

/* Render the view of the archived photo src (its entry e) to dst's path
 * tmp in dest directory ddir. 0, 1 when the stored file is damaged (what
 * says how), -errno. */
static int render_checked(struct export_run *r, int src, const struct idx_entry *e, int ddir,
			  const char *tmp, char *what, size_t len)
{
	char path[FS_PATH_MAX + 64];
	uint64_t size = 0;
	int rc;

	if (!sum_is_zero(e->sum)) {
		struct sum_file f;
		if ((rc = sum_file(src, 0, 0, 0, NULL, NULL, &f)))
			return rc;
		if (f.size != e->stored_bytes || memcmp(f.whole, e->sum, SUM_LEN)) {
			snprintf(what, len, "checksum mismatch");
			return 1;
		}
	}
	/* codec/ writes to a path: this directory's, by its fd */
	snprintf(path, sizeof(path), "/proc/self/fd/%d/%s", ddir, tmp);
	rc = codec_render_view(src, path, r->x->codec, &size);
	if (rc == -EINVAL || rc == -EIO || rc == -EPROTO) {
		snprintf(what, len, "the photo does not render (%s)", strerror(-rc));
		return 1;
	}
	if (!rc && size != e->view_bytes) {
		snprintf(what, len, "the view renders to %llu bytes, %llu promised",
			 (unsigned long long)size, (unsigned long long)e->view_bytes);
		return 1;
	}
	return rc;
}

/* Export one stored file (path relative to BACKING). */
static void export_one(void *arg, struct fs_pool *pool, const char *path, const char *unused,
		       const struct stat *st)
{
	struct export_run *r = arg;
	struct fs_xfer_file f = {.path = path, .outcome = FS_XFER_ERROR};
	struct idx_entry e = {0};
	struct idx_txn *txn;
	struct stat dst_st;
	char name[NAME_MAX + 1], tmp[NAME_MAX + 32], logical[FS_PATH_MAX], dir[FS_PATH_MAX];
	const char *base = fs_basename(path);
	int src = -1, ddir = -1, dst = -1, has = 0, view = 0, rc;

	(void)pool;
	(void)unused;
	if (idx_begin(r->idx, 0, &txn) == 0) {
		has = idx_get(txn, st->st_ino, &e) == 0;
		idx_abort(txn);
	}
	/* the name the mount shows, or the stored one */
	snprintf(name, sizeof(name), "%s", base);
	if (!r->x->native && has && e.state == IDX_ARCHIVED && e.suffix[0]) {
		size_t n = strlen(name), s = strlen(e.suffix);
		if (n > s && !strcmp(name + n - s, e.suffix))
			name[n - s] = '\0';
	}
	view = !r->x->native && has && e.state == IDX_ARCHIVED && !strcmp(e.suffix, ".heic");
	snprintf(dir, sizeof(dir), "%.*s", (int)(base - path), path);
	if ((size_t)snprintf(logical, sizeof(logical), "%s%s", dir, name) >= sizeof(logical))
		logical[sizeof(logical) - 1] =
		    '\0'; /* a stored path fits, and so its logical one */
	f.path = logical;
	f.bytes_in = (uint64_t)st->st_size;
	ddir = fs_open_beneath(r->dest, dir[0] ? dir : ".", O_PATH | O_DIRECTORY, 0);
	src = fs_open_beneath(r->root, path, O_RDONLY, 0);
	if (ddir < 0 || src < 0) {
		snprintf(f.what, sizeof(f.what), "cannot open: %s",
			 strerror(-(ddir < 0 ? ddir : src)));
		goto out_report;
	}
	/* there already, as this export would write it: done before */
	if (fstatat(ddir, name, &dst_st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(dst_st.st_mode) &&
	    (uint64_t)dst_st.st_size == (view ? e.view_bytes : (uint64_t)st->st_size) &&
	    dst_st.st_mtim.tv_sec == st->st_mtim.tv_sec &&
	    dst_st.st_mtim.tv_nsec == st->st_mtim.tv_nsec) {
		f.outcome = FS_XFER_SKIPPED;
		goto out_report;
	}
	snprintf(tmp, sizeof(tmp), ".%.200s.hevcfs-export", name);
	if (view) {
		rc = render_checked(r, src, &e, ddir, tmp, f.what, sizeof(f.what));
		if (!rc) {
			dst = openat(ddir, tmp, O_RDONLY | O_CLOEXEC);
			rc = dst < 0 ? -errno : 0;
		}
	} else {
		dst = openat(ddir, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
		rc = dst < 0
			 ? -errno
			 : copy_checked(r, src, dst, (uint64_t)st->st_ino, (uint64_t)st->st_size,
					has && !sum_is_zero(e.sum) &&
					    e.stored_bytes == (uint64_t)st->st_size,
					f.what, sizeof(f.what));
	}
	if (rc == 1) {
		f.outcome = FS_XFER_DAMAGED;
		goto out_unlink;
	}
	if (!rc)
		rc = fs_copy_attrs(src, dst);
	if (!rc && renameat(ddir, tmp, ddir, name) == -1)
		rc = -errno;
	if (rc) {
		snprintf(f.what, sizeof(f.what), "%s", strerror(-rc));
		goto out_unlink;
	}
	f.outcome = FS_XFER_COPIED;
	f.bytes_out = view ? e.view_bytes : (uint64_t)st->st_size;
	goto out_close;
out_unlink:
	unlinkat(ddir, tmp, 0);
out_close:
	if (dst >= 0)
		close(dst);
out_report:
	if (src >= 0)
		close(src);
	if (ddir >= 0)
		close(ddir);
	if (f.outcome == FS_XFER_DAMAGED)
		log_msg(LOG_ERR, "damaged: %s: %s", logical, f.what);
	done(r, &f);
}

/* Recreate a symlink, FIFO or device node of BACKING at dest. */
static void export_other(struct export_run *r, int dirfd, const char *name, const struct stat *st,
			 const char *path)
{
	char target[FS_PATH_MAX], dir[FS_PATH_MAX];
	const char *base = fs_basename(path);
	ssize_t n;
	int ddir, rc = 0;

	snprintf(dir, sizeof(dir), "%.*s", (int)(base - path), path);
	ddir = fs_open_beneath(r->dest, dir[0] ? dir : ".", O_PATH | O_DIRECTORY, 0);
	if (ddir < 0)
		return;
	if (S_ISLNK(st->st_mode)) {
		n = readlinkat(dirfd, name, target, sizeof(target) - 1);
		if (n >= 0) {
			target[n] = '\0';
			rc = symlinkat(target, ddir, base);
		}
	} else if (S_ISFIFO(st->st_mode)) {
		rc = mkfifoat(ddir, base, st->st_mode & 07777);
	} else if (S_ISCHR(st->st_mode) || S_ISBLK(st->st_mode)) {
		rc = mknodat(ddir, base, st->st_mode, st->st_rdev);
	}
	if (rc == 0) {
		struct timespec t[2] = {st->st_atim, st->st_mtim};
		if (geteuid() == 0)
			fchownat(ddir, base, st->st_uid, st->st_gid, AT_SYMLINK_NOFOLLOW);
		utimensat(ddir, base, t, AT_SYMLINK_NOFOLLOW);
	}
	close(ddir);
}

struct export_walk {
	struct export_run *r;
	struct fs_pool *pool;
	int rc;
};

static int export_visit(void *arg, enum fs_tree_what what, int dirfd, const char *name,
			const struct stat *st, const char *path)
{
	struct export_walk *w = arg;
	struct export_run *r = w->r;

	if (r->x->stop && atomic_load(r->x->stop))
		return 1;
	switch (what) {
	case FS_TREE_DIR: {
		struct dir_attr *d;
		if (!wanted(r->x, path, 1))
			return 0;
		if (mkdirat(r->dest, path, 0700) == -1 && errno != EEXIST) {
			log_msg(LOG_ERR, "export: %s: %s", path, strerror(errno));
			return 0;
		}
		d = realloc(r->dirs, (r->ndirs + 1) * sizeof(*d));
		if (!d)
			return 0;
		r->dirs = d;
		d[r->ndirs].path = strdup(path);
		d[r->ndirs].st = *st;
		d[r->ndirs].src =
		    openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (d[r->ndirs].path)
			r->ndirs++;
		else if (d[r->ndirs].src >= 0)
			close(d[r->ndirs].src);
		return 0;
	}
	case FS_TREE_DIR_END:
		return 0;
	case FS_TREE_OTHER:
		if (wanted(r->x, path, 0))
			export_other(r, dirfd, name, st, path);
		return 0;
	case FS_TREE_FILE:
		break;
	}
	/* the logical name decides what is wanted: an archived copy's stored
	 * name has a suffix its logical one lacks (the worker maps it exactly) */
	if (wanted(r->x, path, 0) || wanted_stripped(r->x, path))
		w->rc = fs_pool_add(w->pool, path, NULL, st);
	return w->rc ? 1 : 0;
}

/* Give each exported directory its mode, owner, times and user.* xattrs,
 * deepest first (writing into a directory moves its times). */
static void dirs_finish(struct export_run *r)
{
	for (size_t i = r->ndirs; i-- > 0;) {
		struct dir_attr *d = &r->dirs[i];
		int fd = fs_open_beneath(r->dest, d->path, O_RDONLY | O_DIRECTORY, 0);
		if (fd >= 0 && d->src >= 0)
			fs_copy_attrs(d->src, fd);
		if (fd >= 0)
			close(fd);
		if (d->src >= 0)
			close(d->src);
		free(d->path);
	}
	free(r->dirs);
	r->dirs = NULL;
	r->ndirs = 0;
}

int fs_export(const struct fs_export *x, struct fs_xfer_totals *t)
{
	struct export_run r = {.x = x, .root = -1, .dest = -1};
	struct export_walk w = {.r = &r};
	struct idx_stats st;
	struct idx_txn *txn;
	int rc;

	memset(t, 0, sizeof(*t));
	pthread_mutex_init(&r.lock, NULL);
	rc = fs_index_open(x->paths, 1, &r.idx);
	if (rc)
		goto out;
	if (mkdir(x->dest, 0700) == -1 && errno != EEXIST) {
		rc = -errno;
		goto out;
	}
	r.root = open(x->paths->backing, O_PATH | O_DIRECTORY | O_CLOEXEC);
	r.dest = open(x->dest, O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (r.root < 0 || r.dest < 0) {
		rc = -errno;
		goto out;
	}
	if (!x->nonly && idx_begin(r.idx, 0, &txn) == 0) {
		if (idx_stats(txn, &st) == 0) {
			r.t.files_total = st.files;
			r.t.bytes_total = st.bytes_stored;
		}
		idx_abort(txn);
	}
	r.t0 = mono();
	rc = fs_pool_new(x->jobs > 0 ? x->jobs : (int)sysconf(_SC_NPROCESSORS_ONLN), export_one, &r,
			 x->stop, &w.pool);
	if (rc)
		goto out;
	rc = fs_walk_tree(r.root, export_visit, &w);
	fs_pool_free(w.pool);
	dirs_finish(&r);
	if (rc < 0)
		goto out;
	rc = w.rc ? w.rc : x->stop && atomic_load(x->stop) ? -EINTR : 0;
out:
	r.t.seconds = mono() - r.t0;
	*t = r.t;
	if (r.root >= 0)
		close(r.root);
	if (r.dest >= 0)
		close(r.dest);
	idx_close(r.idx);
	pthread_mutex_destroy(&r.lock);
	return rc;
}
