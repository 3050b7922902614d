/*
 * import — the offline way in for a big collection: source files archived
 * straight into BACKING by the mount's own steps (sniffing, the archive job
 * in a child process with its verification, checksums, the durable
 * commit: written in BACKING/.hevcfs/work, attributes copied, fsynced,
 * renamed into place never over another file, the directory fsynced, then
 * indexed), parallel, one video at a time.
 *
 * Resumable: a file whose stored copy is already in place (by name, mtime
 * and the original's size, or failing those, the original's SHA-256 the
 * copy carries) is skipped; a copy left unindexed by an interrupted run is
 * indexed then. With --shard K/N each of N machines sharing BACKING takes
 * the files whose path hashes to its share and leaves the index alone, for
 * `hevcfs fsck --rebuild` to build once they are done.
 */
#include "internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* A destination directory whose attributes are set at the end. */
struct dir_attr {
	char *logical;
	char *src;
};

struct import_run {
	const struct fs_import *im;
	struct idx *idx; /* NULL with a shard */
	int root, work;
	char *work_dir;
	atomic_uint_fast64_t seq; /* names of outputs in work */
	pthread_mutex_t lock;	  /* t, dirs and the reports */
	struct fs_xfer_totals t;
	double t0;
	struct dir_attr *dirs;
	size_t ndirs;
	struct fs_pool *pool;
	int rc;
};

static double mono(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* FNV-1a over a path: how files are dealt to shards, the same on every
 * machine. */
static uint64_t path_hash(const char *p)
{
	uint64_t h = 0xcbf29ce484222325ull;

	for (; *p; p++)
		h = (h ^ (uint8_t)*p) * 0x100000001b3ull;
	return h;
}

/* Is logical this run's to do? */
static int mine(const struct fs_import *im, const char *logical)
{
	return im->shard_n <= 0 ||
	       path_hash(logical) % (uint64_t)im->shard_n == (uint64_t)(im->shard_k - 1);
}

static void done(struct import_run *r, const struct fs_xfer_file *f)
{
	pthread_mutex_lock(&r->lock);
	r->t.files++;
	r->t.bytes_in += f->bytes_in;
	r->t.bytes_out += f->bytes_out;
	switch (f->outcome) {
	case FS_XFER_ARCHIVED:
		r->t.archived++;
		break;
	case FS_XFER_KEPT:
		r->t.kept++;
		break;
	case FS_XFER_SKIPPED:
		r->t.skipped++;
		break;
	default:
		r->t.errors++;
		break;
	}
	if (f->kind == IDX_KIND_PHOTO &&
	    (f->outcome == FS_XFER_ARCHIVED || f->outcome == FS_XFER_KEPT))
		r->t.photos++;
	r->t.seconds = mono() - r->t0;
	if (r->im->report)
		r->im->report(r->im->arg, f, &r->t);
	pthread_mutex_unlock(&r->lock);
}

/* The original's size that the stored file stored_fd carries (an archived
 * HEIC's header, an archived MP4's box), or its own size. */
static uint64_t carried_size(int fd, const struct stat *st, uint8_t orig_sum[SUM_LEN], int *has)
{
	struct codec_embedded emb;
	struct codec_result r;

	*has = 0;
	if (codec_embedded_sums(fd, &emb) == 0 && emb.has) {
		memcpy(orig_sum, emb.orig_sum, SUM_LEN);
		*has = 1;
		return emb.orig_bytes;
	}
	if (codec_probe_archived(fd, &r) == 0 && r.archived)
		return r.orig_bytes;
	return (uint64_t)st->st_size;
}

/* Index a stored file an earlier run left unindexed (its rename done, its
 * index write not). */
static void adopt(struct import_run *r, int dfd, const char *stored, const char *name,
		  const struct stat *sst, uint64_t orig_bytes, const uint8_t *orig_sum)
{
	struct idx_entry e = {0};
	struct sum_file f = {0};
	struct codec_result probe;
	struct idx_txn *txn;
	int fd = openat(dfd, stored, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);

	if (fd < 0)
		return;
	e.orig_bytes = orig_bytes;
	e.stored_bytes = e.view_bytes = (uint64_t)sst->st_size;
	e.state = strcmp(stored, name) ? IDX_ARCHIVED : IDX_KEPT;
	if (codec_probe_archived(fd, &probe) == 0 && probe.archived) {
		e.state = IDX_ARCHIVED;
		e.kind = IDX_KIND_PHOTO;
		e.view_bytes = probe.view_bytes;
		e.quality = (uint32_t)probe.quality;
		e.ssim = probe.ssim;
		e.view_ssim = probe.view_ssim;
	} else {
		e.kind = codec_sniff(fd) == CODEC_KIND_VIDEO ? IDX_KIND_VIDEO : IDX_KIND_OTHER;
	}
	if (e.state == IDX_ARCHIVED)
		snprintf(e.suffix, sizeof(e.suffix), "%s", stored + strlen(name));
	else
		snprintf(e.reason, sizeof(e.reason), "kept by an import");
	if (orig_sum)
		memcpy(e.orig_sum, orig_sum, SUM_LEN);
	if (sum_file(fd, 1, 0, 0, NULL, NULL, &f) == 0 && idx_begin(r->idx, 1, &txn) == 0) {
		if (e.state == IDX_KEPT)
			memcpy(e.orig_sum, f.whole, SUM_LEN);
		if (fs_sums_record(txn, sst->st_ino, &e, &f) || idx_put(txn, sst->st_ino, &e))
			idx_abort(txn);
		else
			idx_commit(txn);
	}
	sum_file_release(&f);
	close(fd);
}

/* Is the source (st) already stored in dfd under name or an archive name of
 * it? 1 (skipped, indexed if it was not), 0 (not there), or -EEXIST when
 * the name holds something else. */
static int already(struct import_run *r, int dfd, const char *name, const struct stat *st)
{
	static const char *const suffixes[] = {"", ".heic", ".mp4", ".mkv"};
	char stored[NAME_MAX + 8];

	for (size_t i = 0; i < sizeof(suffixes) / sizeof(*suffixes); i++) {
		struct idx_entry e;
		struct idx_txn *txn;
		struct stat sst;
		uint8_t orig_sum[SUM_LEN];
		uint64_t orig;
		int indexed = 0, has_sum = 0, fd;

		if (snprintf(stored, sizeof(stored), "%s%s", name, suffixes[i]) >=
			(int)sizeof(stored) ||
		    fstatat(dfd, stored, &sst, AT_SYMLINK_NOFOLLOW) != 0)
			continue;
		if (!S_ISREG(sst.st_mode))
			return i == 0 ? -EEXIST : 0;
		if (r->idx && idx_begin(r->idx, 0, &txn) == 0) {
			indexed = idx_get(txn, sst.st_ino, &e) == 0;
			idx_abort(txn);
		}
		if (indexed) {
			orig = e.orig_bytes;
		} else {
			fd = openat(dfd, stored, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
			if (fd < 0)
				return -EEXIST;
			orig = carried_size(fd, &sst, orig_sum, &has_sum);
			close(fd);
		}
		/* an archived copy has its original's mtime and carries its size */
		if (orig == (uint64_t)st->st_size && sst.st_mtim.tv_sec == st->st_mtim.tv_sec &&
		    sst.st_mtim.tv_nsec == st->st_mtim.tv_nsec) {
			if (r->idx && !indexed)
				adopt(r, dfd, stored, name, &sst, orig, has_sum ? orig_sum : NULL);
			return 1;
		}
		if (i == 0)
			return -EEXIST;
	}
	return 0;
}

/* Copy all of src into dst. 0 or -errno. */
static int copy_all(int src, int dst)
{
	off_t off = 0;

	for (;;) {
		ssize_t n = copy_file_range(src, &off, dst, NULL, 1 << 30, 0);
		if (n == -1 && (errno == EXDEV || errno == EINVAL || errno == ENOSYS)) {
			char buf[1 << 16];
			n = pread(src, buf, sizeof(buf), off);
			if (n > 0 && write(dst, buf, (size_t)n) != n)
				return -EIO;
			if (n > 0)
				off += n;
		}
		if (n == -1 && errno == EINTR)
			continue;
		if (n == -1)
			return -errno;
		if (n == 0)
			return 0;
	}
}

/*
 * Put work/out (the archive of src, described by e, or a copy of it for a
 * kept file) in place as dfd/target: the source's owner, mode, times and
 * user.* xattrs, fsynced, its checksums taken, renamed never over another
 * file, the directory fsynced, indexed (an archive as the origin of its
 * original, at logical). 0, -EEXIST (the name is taken), or -errno.
 */
static int commit_import(struct import_run *r, const char *out, int src, int dfd,
			 const char *target, const char *logical, struct idx_entry *e)
{
	struct sum_file f = {0};
	struct idx_txn *txn;
	struct stat st;
	int fd = openat(r->work, out, O_RDONLY | O_NOFOLLOW | O_CLOEXEC), rc;

	if (fd < 0)
		return -errno;
	rc = fs_copy_attrs(src, fd);
	if (!rc)
		rc = sum_file(fd, 1, 0, 0, NULL, NULL, &f);
	if (!rc && fstat(fd, &st) == -1)
		rc = -errno;
	close(fd);
	if (rc)
		goto out;
	e->stored_bytes = f.size;
	if (renameat2(r->work, out, dfd, target, RENAME_NOREPLACE) == -1) {
		rc = -errno;
		goto out;
	}
	fs_fsync_dir(dfd);
	if (r->idx) {
		if ((rc = idx_begin(r->idx, 1, &txn)))
			goto out;
		if ((rc = fs_sums_record(txn, st.st_ino, e, &f)) ||
		    (rc = idx_put(txn, st.st_ino, e)) ||
		    (e->state == IDX_ARCHIVED &&
		     (rc = idx_origin_put(txn, e->orig_sum, st.st_ino, logical)))) {
			idx_abort(txn);
			goto out;
		}
		rc = idx_commit(txn);
	}
out:
	sum_file_release(&f);
	return rc;
}

/* Import one source file as logical. */
static void import_one(void *arg, struct fs_pool *pool, const char *logical, const char *src_path,
		       const struct stat *st)
{
	struct import_run *r = arg;
	struct fs_xfer_file f = {
	    .path = logical, .outcome = FS_XFER_ERROR, .bytes_in = (uint64_t)st->st_size};
	struct idx_entry e = {0};
	struct codec_result res;
	struct sum_file orig = {0};
	const char *name = fs_basename(logical);
	char dir[FS_PATH_MAX], out[64], target[NAME_MAX + 8], *outpath = NULL;
	enum codec_kind sniffed;
	const char *format = "";
	int dfd = -1, src = -1, rc, video = 0;
	double t0 = mono();

	snprintf(dir, sizeof(dir), "%.*s", (int)(name - logical), logical);
	dfd = fs_open_beneath(r->root, dir[0] ? dir : ".", O_PATH | O_DIRECTORY, 0);
	if (dfd < 0) {
		snprintf(f.what, sizeof(f.what), "%s", strerror(-dfd));
		goto out_report;
	}
	rc = already(r, dfd, name, st);
	if (rc == 1) {
		f.outcome = FS_XFER_SKIPPED;
		goto out_report;
	}
	if (rc == -EEXIST) {
		snprintf(f.what, sizeof(f.what), "BACKING already has another file of that name");
		goto out_report;
	}
	src = open(src_path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (src < 0) {
		snprintf(f.what, sizeof(f.what), "%s", strerror(errno));
		goto out_report;
	}
	sniffed = codec_sniff_format(src, &format);
	f.kind = sniffed == CODEC_KIND_VIDEO   ? IDX_KIND_VIDEO
		 : sniffed == CODEC_KIND_OTHER ? IDX_KIND_OTHER
					       : IDX_KIND_PHOTO;
	e.kind = (uint32_t)f.kind;
	rc = sum_file(src, 1, 0, 0, NULL, NULL, &orig);
	if (rc) {
		snprintf(f.what, sizeof(f.what), "reading: %s", strerror(-rc));
		goto out_report;
	}
	memcpy(e.orig_sum, orig.whole, SUM_LEN);
	e.orig_bytes = e.view_bytes = orig.size;
	snprintf(out, sizeof(out), "%llu.out", (unsigned long long)atomic_fetch_add(&r->seq, 1));
	if (asprintf(&outpath, "%s/%s", r->work_dir, out) < 0) {
		outpath = NULL;
		goto out_report;
	}
	res.archived = 0;
	if (sniffed == CODEC_KIND_HEIF)
		snprintf(res.reason, sizeof(res.reason), "already %s", format);
	else if (sniffed == CODEC_KIND_RAW)
		snprintf(res.reason, sizeof(res.reason), "camera raw (%s)", format);
	else
		snprintf(res.reason, sizeof(res.reason), "not a photo or video");
	if (sniffed == CODEC_KIND_JPEG && strlen(name) + strlen(".heic") > NAME_MAX) {
		snprintf(res.reason, sizeof(res.reason), "name too long to append .heic");
	} else if (sniffed == CODEC_KIND_JPEG || sniffed == CODEC_KIND_VIDEO) {
		struct codec_opts opts = *r->im->codec;
		if (sniffed == CODEC_KIND_VIDEO) {
			fs_pool_video(pool, 1);
			video = 1;
		}
		opts.cancel = r->im->stop;
		rc = fs_archive_isolated(src, -1, outpath, NULL, &opts, &res);
		if (video)
			fs_pool_video(pool, 0);
		if (rc) {
			snprintf(f.what, sizeof(f.what), "archiving: %s", strerror(-rc));
			goto out_unlink;
		}
	}
	if (res.archived && fs_stored_name(name, res.suffix, target, sizeof(target))) {
		res.archived = 0;
		snprintf(res.reason, sizeof(res.reason), "name too long to append %s", res.suffix);
	}
	if (res.archived) {
		e.state = IDX_ARCHIVED;
		e.quality = (uint32_t)res.quality;
		e.view_bytes = res.view_bytes;
		e.ssim = res.ssim;
		e.view_ssim = res.view_ssim;
		e.carries = res.carries;
		memcpy(e.scan_sum, res.scan_sum, SUM_LEN);
		if (res.view_own_size) {
			e.flags |= IDX_F_VIEW_OWN_SIZE;
			snprintf(e.reason, sizeof(e.reason), "view not the original's size: %s",
				 res.view_why);
		}
		if (strcmp(target, name))
			snprintf(e.suffix, sizeof(e.suffix), "%s", res.suffix);
	} else {
		/* kept: a copy of its bytes, made and committed the same way */
		int o;
		unlinkat(r->work, out, 0);
		o = openat(r->work, out, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
		rc = o < 0 ? -errno : copy_all(src, o);
		if (o >= 0)
			close(o);
		if (rc) {
			snprintf(f.what, sizeof(f.what), "copying: %s", strerror(-rc));
			goto out_unlink;
		}
		e.state = IDX_KEPT;
		snprintf(e.reason, sizeof(e.reason), "%s", res.reason);
		snprintf(target, sizeof(target), "%s", name);
		snprintf(f.what, sizeof(f.what), "%s", res.reason);
	}
	e.elapsed = mono() - t0;
	rc = commit_import(r, out, src, dfd, target, logical, &e);
	if (rc == -EEXIST) {
		snprintf(f.what, sizeof(f.what), "%.200s appeared in BACKING meanwhile", target);
		goto out_unlink;
	}
	if (rc) {
		snprintf(f.what, sizeof(f.what), "storing: %s", strerror(-rc));
		goto out_unlink;
	}
	f.outcome = e.state == IDX_ARCHIVED ? FS_XFER_ARCHIVED : FS_XFER_KEPT;
	f.bytes_out = e.stored_bytes;
	goto out_report;
out_unlink:
	unlinkat(r->work, out, 0);
out_report:
	if (r->im->stop && atomic_load(r->im->stop) && f.outcome == FS_XFER_ERROR) {
		/* stopped, not failed: the next run does it */
		f.outcome = FS_XFER_SKIPPED;
		snprintf(f.what, sizeof(f.what), "interrupted");
	}
	sum_file_release(&orig);
	free(outpath);
	if (src >= 0)
		close(src);
	if (dfd >= 0)
		close(dfd);
	done(r, &f);
}

/* mkdir -p of a logical directory under BACKING. */
static int make_dirs(int root, const char *logical)
{
	char buf[FS_PATH_MAX];
	size_t n = strlen(logical);

	if (n >= sizeof(buf))
		return -ENAMETOOLONG;
	memcpy(buf, logical, n + 1);
	for (char *p = buf; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (buf[0] && mkdirat(root, buf, 0755) == -1 && errno != EEXIST)
			return -errno;
		*p = '/';
	}
	if (mkdirat(root, buf, 0755) == -1 && errno != EEXIST)
		return -errno;
	return 0;
}

/* A source being walked: where it lands. */
struct import_walk {
	struct import_run *r;
	const char *src_root;  /* the source directory */
	const char *dest_root; /* its logical path under BACKING */
	int count_only;	       /* the walk that counts what is to do */
};

/* The logical path of a source entry at rel into buf. */
static int logical_of(const struct import_walk *w, const char *rel, char *buf, size_t size)
{
	return (size_t)snprintf(buf, size, "%s%s%s", w->dest_root, rel[0] ? "/" : "", rel) >= size
		   ? -ENAMETOOLONG
		   : 0;
}

static int import_visit(void *arg, enum fs_tree_what what, int dirfd, const char *name,
			const struct stat *st, const char *rel)
{
	struct import_walk *w = arg;
	struct import_run *r = w->r;
	char logical[FS_PATH_MAX], src[FS_PATH_MAX + NAME_MAX + 2];

	(void)dirfd;
	(void)name;
	if (r->im->stop && atomic_load(r->im->stop))
		return 1;
	if (logical_of(w, rel, logical, sizeof(logical)) ||
	    snprintf(src, sizeof(src), "%s/%s", w->src_root, rel) >= (int)sizeof(src))
		return 0;
	if (what == FS_TREE_FILE && mine(r->im, logical)) {
		if (w->count_only) {
			r->t.files_total++;
			r->t.bytes_total += (uint64_t)st->st_size;
			return 0;
		}
		r->rc = fs_pool_add(r->pool, logical, src, st);
		return r->rc ? 1 : 0;
	}
	if (what == FS_TREE_DIR && !w->count_only) {
		struct dir_attr *d;
		if (make_dirs(r->root, logical))
			return 0;
		d = realloc(r->dirs, (r->ndirs + 1) * sizeof(*d));
		if (!d)
			return 0;
		r->dirs = d;
		d[r->ndirs].logical = strdup(logical);
		d[r->ndirs].src = strdup(src);
		if (d[r->ndirs].logical && d[r->ndirs].src)
			r->ndirs++;
	}
	return 0;
}

/* Walk one source (a file or a folder). */
static int import_source(struct import_run *r, const char *source, int count_only)
{
	const struct fs_import *im = r->im;
	struct import_walk w = {.r = r, .count_only = count_only};
	char *real = realpath(source, NULL), dest[FS_PATH_MAX];
	const char *into = im->into ? im->into : "";
	struct stat st;
	int rc = 0;

	if (!real)
		return -errno;
	while (*into == '/')
		into++;
	snprintf(dest, sizeof(dest), "%s%s%s", into, into[0] ? "/" : "", fs_basename(real));
	if (stat(real, &st) == -1) {
		rc = -errno;
	} else if (S_ISDIR(st.st_mode)) {
		int fd = open(real, O_PATH | O_DIRECTORY | O_CLOEXEC);
		w.src_root = real;
		w.dest_root = dest;
		if (fd < 0) {
			rc = -errno;
		} else {
			if (!count_only && (rc = make_dirs(r->root, dest)) == 0)
				import_visit(&w, FS_TREE_DIR, -1, "", &st, "");
			if (!rc)
				rc = fs_walk_tree(fd, import_visit, &w);
			close(fd);
		}
	} else if (S_ISREG(st.st_mode) && mine(im, dest)) {
		if (count_only) {
			r->t.files_total++;
			r->t.bytes_total += (uint64_t)st.st_size;
		} else if (!(into[0] && (rc = make_dirs(r->root, into)))) {
			rc = fs_pool_add(r->pool, dest, real, &st);
		}
	}
	free(real);
	return rc < 0 ? rc : 0;
}

/* Give BACKING's new folders their sources' modes, times and xattrs,
 * deepest first. */
static void dirs_finish(struct import_run *r)
{
	for (size_t i = r->ndirs; i-- > 0;) {
		struct dir_attr *d = &r->dirs[i];
		int s = open(d->src, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		int t = fs_open_beneath(r->root, d->logical, O_RDONLY | O_DIRECTORY, 0);
		if (s >= 0 && t >= 0)
			fs_copy_attrs(s, t);
		if (s >= 0)
			close(s);
		if (t >= 0)
			close(t);
		free(d->logical);
		free(d->src);
	}
	free(r->dirs);
	r->dirs = NULL;
	r->ndirs = 0;
}

/* Empty a work directory of what an interrupted run left there. */
static void wipe(int dirfd)
{
	int fd = openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
	struct dirent *de;

	if (!d) {
		if (fd >= 0)
			close(fd);
		return;
	}
	while ((de = readdir(d)))
		if (strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))
			unlinkat(dirfd, de->d_name, 0);
	closedir(d);
}

int fs_import(const struct fs_import *im, struct fs_xfer_totals *t)
{
	struct import_run r = {.im = im, .root = -1, .work = -1};
	char work[64], *meta = NULL;
	int lock_fd = -1, rc;

	memset(t, 0, sizeof(*t));
	pthread_mutex_init(&r.lock, NULL);
	r.root = open(im->backing, O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (r.root < 0) {
		rc = -errno;
		goto out;
	}
	if (im->paths) {
		/* the offline way in: a mount must not run meanwhile, and what
		 * an interrupted mount left half done is finished first */
		if (fs_is_mounted(im->paths)) {
			rc = -EBUSY;
			goto out;
		}
		if ((rc = fs_recover(im->paths)))
			goto out;
		if (asprintf(&meta, "%s/lock", im->paths->state) < 0) {
			meta = NULL;
			rc = -ENOMEM;
			goto out;
		}
		lock_fd = open(meta, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
		if (lock_fd < 0 || flock(lock_fd, LOCK_EX | LOCK_NB) == -1) {
			rc = lock_fd < 0 ? -errno : -EBUSY;
			goto out;
		}
		if ((rc = fs_index_open(im->paths, 0, &r.idx)))
			goto out;
		snprintf(work, sizeof(work), "%s/work/import", FS_STATE_DIR);
	} else {
		snprintf(work, sizeof(work), "%s/work/import-%d-of-%d", FS_STATE_DIR, im->shard_k,
			 im->shard_n);
	}
	if ((rc = make_dirs(r.root, work)))
		goto out;
	r.work = fs_open_beneath(r.root, work, O_PATH | O_DIRECTORY, 0);
	if (r.work < 0 || asprintf(&r.work_dir, "%s/%s", im->backing, work) < 0) {
		rc = r.work < 0 ? r.work : -ENOMEM;
		r.work_dir = NULL;
		goto out;
	}
	wipe(r.work);
	for (int i = 0; i < im->nsrcs; i++)
		if ((rc = import_source(&r, im->srcs[i], 1)))
			goto out;
	r.t0 = mono();
	rc = fs_pool_new(im->jobs > 0 ? im->jobs : (int)sysconf(_SC_NPROCESSORS_ONLN), import_one,
			 &r, im->stop, &r.pool);
	if (rc)
		goto out;
	for (int i = 0; i < im->nsrcs && !rc && !r.rc; i++)
		rc = import_source(&r, im->srcs[i], 0);
	fs_pool_free(r.pool);
	dirs_finish(&r);
	if (!rc)
		rc = r.rc;
	if (!rc && im->stop && atomic_load(im->stop))
		rc = -EINTR;
	if (r.idx)
		idx_sync(r.idx);
out:
	r.t.seconds = r.t0 > 0 ? mono() - r.t0 : 0;
	*t = r.t;
	if (r.work >= 0) {
		wipe(r.work);
		close(r.work);
		unlinkat(r.root, work, AT_REMOVEDIR);
	}
	if (r.root >= 0)
		close(r.root);
	idx_close(r.idx);
	if (lock_fd >= 0)
		close(lock_fd);
	free(meta);
	free(r.work_dir);
	pthread_mutex_destroy(&r.lock);
	return rc;
}

/* ---- the dry run ----------------------------------------------------- */

/* What the look at the sources found: files by kind, and where the photos
 * and videos are (for the sample). */
struct survey {
	struct fs_import_estimate *est;
	char **photos, **videos;
	uint64_t *photo_bytes, *video_bytes;
	size_t nphotos, nvideos;
	const atomic_int *stop;
	const char *root;
};

static int survey_add(char ***v, uint64_t **b, size_t *n, const char *path, uint64_t bytes)
{
	char **nv = realloc(*v, (*n + 1) * sizeof(**v));
	uint64_t *nb = nv ? realloc(*b, (*n + 1) * sizeof(**b)) : NULL;

	if (nv)
		*v = nv;
	if (!nb)
		return -ENOMEM;
	*b = nb;
	if (!((*v)[*n] = strdup(path)))
		return -ENOMEM;
	(*b)[(*n)++] = bytes;
	return 0;
}

static int survey_visit(void *arg, int dirfd, const char *name, const struct stat *st,
			const char *rel)
{
	struct survey *s = arg;
	char path[FS_PATH_MAX + NAME_MAX + 2];
	int fd, kind;

	if (s->stop && atomic_load(s->stop))
		return 1;
	fd = openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return 0;
	switch (codec_sniff(fd)) {
	case CODEC_KIND_JPEG:
		kind = IDX_KIND_PHOTO;
		break;
	case CODEC_KIND_VIDEO:
		kind = IDX_KIND_VIDEO;
		break;
	default:
		kind = IDX_KIND_OTHER;
		break;
	}
	close(fd);
	s->est->files[kind]++;
	s->est->bytes[kind] += (uint64_t)st->st_size;
	snprintf(path, sizeof(path), "%s%s%s", s->root, rel[0] ? "/" : "", rel);
	if (kind == IDX_KIND_PHOTO)
		return survey_add(&s->photos, &s->photo_bytes, &s->nphotos, path,
				  (uint64_t)st->st_size)
			   ? 1
			   : 0;
	if (kind == IDX_KIND_VIDEO)
		return survey_add(&s->videos, &s->video_bytes, &s->nvideos, path,
				  (uint64_t)st->st_size)
			   ? 1
			   : 0;
	return 0;
}

/* Photos and videos archived as a sample at most. */
#define SAMPLE_PHOTOS 16
#define SAMPLE_VIDEOS 2

/* Archive up to max of the n files (evenly spread) into dir; add what they
 * were and became to in, out (bytes) and took (seconds). */
static void sample(const struct fs_import *im, char **files, size_t n, size_t max, const char *dir,
		   uint64_t *count, uint64_t *in, uint64_t *out, double *took)
{
	for (size_t k = 0; k < max && k < n; k++) {
		size_t i = n <= max ? k : k * n / max;
		struct codec_result res;
		char path[FS_PATH_MAX];
		double t0 = mono();
		int fd = open(files[i], O_RDONLY | O_NOFOLLOW | O_CLOEXEC);

		if (im->stop && atomic_load(im->stop))
			break;
		if (fd < 0)
			continue;
		snprintf(path, sizeof(path), "%s/sample.out", dir);
		if (fs_archive_isolated(fd, -1, path, NULL, im->codec, &res) == 0) {
			struct stat st;
			fstat(fd, &st);
			(*count)++;
			*in += (uint64_t)st.st_size;
			*out += res.archived ? res.stored_bytes : (uint64_t)st.st_size;
			*took += mono() - t0;
		}
		unlink(path);
		close(fd);
	}
}

int fs_import_estimate(const struct fs_import *im, struct fs_import_estimate *est)
{
	struct survey s = {.est = est, .stop = im->stop};
	char dir[] = "/tmp/hevcfs-estimate-XXXXXX";
	uint64_t pin = 0, pout = 0, vin = 0, vout = 0, pn = 0, vn = 0;
	double pt = 0, vt = 0;
	int rc = 0;

	memset(est, 0, sizeof(*est));
	for (int i = 0; i < im->nsrcs && !rc; i++) {
		char *real = realpath(im->srcs[i], NULL);
		struct stat st;
		if (!real)
			return -errno;
		s.root = real;
		if (stat(real, &st) == 0 && S_ISDIR(st.st_mode)) {
			int fd = open(real, O_PATH | O_DIRECTORY | O_CLOEXEC);
			if (fd >= 0) {
				rc = fs_walk(fd, survey_visit, &s);
				close(fd);
			}
		} else if (S_ISREG(st.st_mode)) {
			/* a file given by itself: its folder is the root */
			char *slash = strrchr(real, '/');
			int d;
			*slash = '\0';
			d = open(slash == real ? "/" : real, O_PATH | O_DIRECTORY | O_CLOEXEC);
			if (d >= 0) {
				rc = survey_visit(&s, d, slash + 1, &st, slash + 1);
				close(d);
			}
		}
		free(real);
	}
	if (!mkdtemp(dir)) {
		rc = -errno;
		goto out;
	}
	sample(im, s.photos, s.nphotos, SAMPLE_PHOTOS, dir, &pn, &pin, &pout, &pt);
	sample(im, s.videos, s.nvideos, SAMPLE_VIDEOS, dir, &vn, &vin, &vout, &vt);
	rmdir(dir);
	est->sampled = pn + vn;
	est->sampled_in = pin + vin;
	est->sampled_out = pout + vout;
	est->ratio_photo = pin ? (double)pout / (double)pin : 1;
	est->ratio_video = vin ? (double)vout / (double)vin : 1;
	est->seconds_photo = pin ? pt / (double)pin : 0;
	est->seconds_video = vin ? vt / (double)vin : 0;
	est->estimate_out = (uint64_t)((double)est->bytes[IDX_KIND_PHOTO] * est->ratio_photo +
				       (double)est->bytes[IDX_KIND_VIDEO] * est->ratio_video) +
			    est->bytes[IDX_KIND_OTHER] + est->bytes[IDX_KIND_UNKNOWN];
	rc = im->stop && atomic_load(im->stop) ? -EINTR : rc > 0 ? 0 : rc;
out:
	for (size_t i = 0; i < s.nphotos; i++)
		free(s.photos[i]);
	for (size_t i = 0; i < s.nvideos; i++)
		free(s.videos[i]);
	free(s.photos);
	free(s.videos);
	free(s.photo_bytes);
	free(s.video_bytes);
	return rc;
}
