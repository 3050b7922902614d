/*
 * queue — the archive jobs: workers that take settled files, archive them
 * in a child process, and commit the verified archive in place of the
 * original (commit.c's fs_replace: journalled, durable, never neither on
 * disk), or record why the file is kept as it is.
 *
 * One video runs at a time (it uses every core by itself); photos go
 * around it. A job belongs to a generation of its file's bytes: a write
 * cancels it (node.c), and nothing is committed for bytes that changed.
 */
#include "internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

int fs_job_push(struct fs *fs, uint64_t ino, uint64_t gen, struct fs_node *node)
{
	struct job *j;
	struct idx_txn *txn;
	struct idx_entry e = {0};
	char *path;
	uint64_t old_gen;
	int rc;

	path = malloc(FS_PATH_MAX);
	j = calloc(1, sizeof(*j));
	if (!path || !j) {
		rc = -ENOMEM;
		goto out_free;
	}
	/* The queue record (written when the file was staged, its path kept
	 * current by renames) now carries the generation to archive. */
	rc = idx_begin(fs->idx, 1, &txn);
	if (rc)
		goto out_free;
	rc = idx_queue_get(txn, ino, &old_gen, path, FS_PATH_MAX);
	if (rc == -ENOENT && fs_node_path(fs, node, path, FS_PATH_MAX) == 0)
		rc = 0;
	if (!rc)
		rc = idx_queue_put(txn, ino, gen, path);
	if (!rc && idx_get(txn, ino, &e) == 0 && e.state == IDX_STAGED) {
		struct stat st;
		int fd = fs_open_path(fs, path, O_PATH, 0);
		if (fd >= 0 && fstat(fd, &st) == 0 && (uint64_t)st.st_ino == ino)
			e.orig_bytes = e.stored_bytes = e.view_bytes = (uint64_t)st.st_size;
		if (fd >= 0)
			close(fd);
		e.state = IDX_PENDING;
		e.gen = gen;
		rc = idx_put(txn, ino, &e);
	} else if (!rc && e.state == IDX_PENDING && (e.started || e.total)) {
		/* queued again (a new mount): not running until a worker takes it */
		e.started = 0;
		e.done = e.total = 0;
		rc = idx_put(txn, ino, &e);
	}
	if (rc) {
		idx_abort(txn);
		goto out_free;
	}
	rc = idx_commit(txn);
	if (rc)
		goto out_free;

	j->ino = ino;
	j->gen = gen;
	fs_node_hold(fs, node);
	j->node = node;
	fs_mutex_lock(&fs->jobs_lock);
	if (fs->jobs_tail)
		fs->jobs_tail->next = j;
	else
		fs->jobs_head = j;
	fs->jobs_tail = j;
	pthread_cond_signal(&fs->jobs_cond);
	fs_mutex_unlock(&fs->jobs_lock);
	free(path);
	return 0;

out_free:
	if (rc)
		log_msg(LOG_ERR, "queue: cannot queue inode %llu: %s", (unsigned long long)ino,
			strerror(-rc));
	free(j);
	free(path);
	return rc;
}

/* The directory part of a logical path, into buf (FS_PATH_MAX): "" for the
 * top. */
static const char *dir_of(const char *path, char *buf)
{
	const char *base = fs_basename(path);
	size_t len = base > path ? (size_t)(base - path) - 1 : 0;

	memcpy(buf, path, len);
	buf[len] = '\0';
	return buf;
}

/* Is the job still current: same generation, nobody writing? */
static int job_current(struct fs *fs, struct job *j)
{
	return fs_node_current(fs, j->node, j->gen);
}

/* A HEIF photo's JPEG sibling, rendered when it is kept. */
struct sibling {
	uint64_t bytes;
	uint8_t sum[SUM_LEN];
};

/* Record the outcome of a job that keeps the file as it is (or failed),
 * unless the file changed meanwhile (its queue record says so). sums, when
 * not NULL, are the file's digests, taken while the job had it open: a kept
 * file is at rest, and its reads are checked against them from now on. sib:
 * its JPEG sibling, or NULL. */
static void finish_kept_sib(struct fs *fs, struct job *j, int state, const char *reason,
			    const struct stat *st, int kind, const struct sum_file *sums,
			    const struct sibling *sib)
{
	struct idx_txn *txn;
	struct idx_entry e = {.state = (uint32_t)state, .gen = j->gen, .kind = (uint32_t)kind};
	char path[8];
	uint64_t qgen;
	int rc;

	if (idx_begin(fs->idx, 1, &txn))
		return;
	rc = idx_queue_get(txn, j->ino, &qgen, path, sizeof(path));
	if ((rc == 0 || rc == -ENAMETOOLONG) && qgen == j->gen && job_current(fs, j)) {
		e.orig_bytes = e.stored_bytes = e.view_bytes = (uint64_t)st->st_size;
		snprintf(e.reason, sizeof(e.reason), "%s", reason);
		struct idx_entry old;
		uint64_t prev = idx_get(txn, j->ino, &old) == 0 ? old.prev : 0;
		rc = 0;
		if (sums && sums->size == (uint64_t)st->st_size) {
			memcpy(e.orig_sum, sums->whole, SUM_LEN);
			rc = fs_sums_record(txn, j->ino, &e, sums);
		}
		if (sib) {
			e.flags |= IDX_F_SIBLING;
			e.view_bytes = sib->bytes;
			memcpy(e.view_sum, sib->sum, SUM_LEN);
		}
		if (rc || idx_put(txn, j->ino, &e) || idx_queue_del(txn, j->ino)) {
			idx_abort(txn);
			return;
		}
		if (idx_commit(txn) == 0)
			fs_prev_drop(fs, j->ino, prev); /* what it replaced goes */
		return;
	}
	idx_abort(txn);
}

static void finish_kept(struct fs *fs, struct job *j, int state, const char *reason,
			const struct stat *st, int kind, const struct sum_file *sums)
{
	finish_kept_sib(fs, j, state, reason, st, kind, sums, NULL);
}

/* Forget a job whose file is gone. */
static void drop_job(struct fs *fs, struct job *j)
{
	struct idx_txn *txn;
	uint64_t qgen;
	char path[8];
	int rc;

	if (idx_begin(fs->idx, 1, &txn))
		return;
	rc = idx_queue_get(txn, j->ino, &qgen, path, sizeof(path));
	if ((rc == 0 || rc == -ENAMETOOLONG) && qgen == j->gen) {
		idx_queue_del(txn, j->ino);
		idx_del(txn, j->ino);
	}
	idx_commit(txn);
}

/* Progress of a long job, written to its index entry about once a second
 * (for `hevcfs status`). */
struct progress {
	struct fs *fs;
	struct job *job;
	int64_t last_ms;
};

static void on_progress(void *arg, uint64_t done, uint64_t total, double fps)
{
	struct progress *p = arg;
	struct idx_txn *txn;
	struct idx_entry e;
	int64_t now = fs_now_ms();

	if (now - p->last_ms < 1000 && done < total)
		return;
	p->last_ms = now;
	if (idx_begin(p->fs->idx, 1, &txn))
		return;
	if (idx_get(txn, p->job->ino, &e) == 0 && e.state == IDX_PENDING) {
		e.done = done;
		e.total = total;
		e.fps = fps;
		if (idx_put(txn, p->job->ino, &e) == 0) {
			idx_commit(txn);
			return;
		}
	}
	idx_abort(txn);
}

/* A video found while another runs goes back to wait for its turn. */
static int video_turn(struct fs *fs, struct job *j)
{
	int mine;

	fs_mutex_lock(&fs->jobs_lock);
	mine = !fs->video_running;
	if (mine) {
		fs->video_running = 1;
	} else {
		j->video = 1;
		j->next = fs->jobs_head;
		fs->jobs_head = j;
		if (!fs->jobs_tail)
			fs->jobs_tail = j;
	}
	fs_mutex_unlock(&fs->jobs_lock);
	return mine;
}

static void video_done(struct fs *fs)
{
	fs_mutex_lock(&fs->jobs_lock);
	fs->video_running = 0;
	pthread_cond_broadcast(&fs->jobs_cond);
	fs_mutex_unlock(&fs->jobs_lock);
}

/* What a job's file is, for the index, from what its bytes say: HEIC and
 * camera raw files are photos too, kept as they are. */
static int kind_of(enum codec_kind k)
{
	switch (k) {
	case CODEC_KIND_JPEG:
	case CODEC_KIND_HEIF:
	case CODEC_KIND_RAW:
		return IDX_KIND_PHOTO;
	case CODEC_KIND_VIDEO:
		return IDX_KIND_VIDEO;
	case CODEC_KIND_OTHER:
		break;
	}
	return IDX_KIND_OTHER;
}

/* sum_file's progress: stop hashing a file whose job was cancelled. */
static int hash_progress(void *arg, uint64_t done, uint64_t size)
{
	const atomic_int *cancel = arg;

	(void)done;
	(void)size;
	return atomic_load(cancel) ? -ECANCELED : 0;
}

/* Seconds on the monotonic clock. */
static double mono_sec(void)
{
	return (double)fs_now_ms() / 1000.0;
}

/* A job began encoding: status shows it running from now on. */
static void job_started(struct fs *fs, struct job *j)
{
	struct idx_txn *txn;
	struct idx_entry e;

	if (idx_begin(fs->idx, 1, &txn))
		return;
	if (idx_get(txn, j->ino, &e) == 0 && e.state == IDX_PENDING) {
		e.started = (int64_t)time(NULL);
		e.done = e.total = 0;
		if (idx_put(txn, j->ino, &e) == 0) {
			idx_commit(txn);
			return;
		}
	}
	idx_abort(txn);
}

/* The meta key of the archiving rate `hevcfs status` estimates with:
 * "SECONDS_PER_BYTE WORKERS". */
#define RATE_KEY "rate"
/* Weight of the newest job in the rate (an exponential moving average). */
#define RATE_WEIGHT 0.2

/* An encode of bytes took seconds: fold it into the rate. */
static void note_rate(struct fs *fs, uint64_t bytes, double seconds)
{
	struct idx_txn *txn;
	char buf[64];
	size_t len;
	double rate = 0, x = bytes ? seconds / (double)bytes : 0;
	int workers = 0;

	if (!bytes || idx_begin(fs->idx, 1, &txn))
		return;
	if (idx_meta_get(txn, RATE_KEY, buf, sizeof(buf) - 1, &len) == 0) {
		buf[len] = '\0';
		sscanf(buf, "%lf %d", &rate, &workers);
	}
	rate = rate > 0 ? (1 - RATE_WEIGHT) * rate + RATE_WEIGHT * x : x;
	snprintf(buf, sizeof(buf), "%.6e %d", rate, fs->nworkers);
	if (idx_meta_put(txn, RATE_KEY, buf, strlen(buf)) == 0)
		idx_commit(txn);
	else
		idx_abort(txn);
}

/* Tell the kernel what a commit changed in the directory dir: the logical
 * name lname shows another file (the node's notice, from fs_replace), and
 * in the native view the stored name target appears in its place. */
static void notify_names(struct fs *fs, const char *dir, const char *lname, const char *target)
{
	if (fs->cfg->view == FS_VIEW_NATIVE && strcmp(lname, target)) {
		fs_notify_name(fs, dir, lname);
		fs_notify_name(fs, dir, target);
	}
}

/* The digest of what a photo archive's view map serves without a render
 * (its bytes before the image data and, from header version 5 on, those
 * after it but the trailer): recorded so that what is served is checked.
 * The map must say what the archive's own render (view_fd) holds there, or
 * the digest is left zero and the view is always rendered; so is it when
 * the archive has no map. */
static void head_digest(int fd, int view_fd, uint64_t view_bytes, const char *path,
			uint8_t out[SUM_LEN])
{
	struct codec_view_map m = {0};

	memset(out, 0, SUM_LEN);
	if (codec_view_map(fd, &m) == 0 && m.size == view_bytes && m.head_len > 0) {
		if (!codec_view_map_matches(view_fd, &m))
			log_msg(LOG_WARNING,
				"%s: its view's head or end is not what the header item "
				"says; the view will be rendered for every read",
				path);
		else if (codec_view_map_sum(&m, out) != 0)
			memset(out, 0, SUM_LEN);
	}
	codec_view_map_release(&m);
}

/* Commits tried under the newest name of a file renamed while archived. */
#define COMMIT_TRIES 4

/* Commit a verified archive of job j (its files work/out and work/view),
 * recording what res measured and the digests of the original (src) and
 * of what is stored. Logs the outcome. */
static void commit_job(struct fs *fs, struct job *j, const char *qpath, const char *out,
		       const char *view, const struct codec_result *res, const struct stat *st,
		       int kind, const struct sum_file *src, double t0)
{
	char path[FS_PATH_MAX];
	struct idx_entry e = {
	    .state = IDX_ARCHIVED,
	    .kind = (uint32_t)kind,
	    .quality = (uint32_t)res->quality,
	    .orig_bytes = (uint64_t)st->st_size,
	    .stored_bytes = res->stored_bytes,
	    .view_bytes = res->view_bytes,
	    .ssim = res->ssim,
	    .view_ssim = res->view_ssim,
	};
	struct sum_file osum = {0}, vsum = {0};
	char reason[600], dir[FS_PATH_MAX], target[FS_STORED_BUF];
	const char *name;
	int rc, dirfd = -1, photo = !strcmp(res->suffix, ".heic");
	enum fs_replace_result done = FS_REPLACE_ERROR;

	snprintf(path, sizeof(path), "%s", qpath);
	name = fs_basename(path);
	snprintf(e.suffix, sizeof(e.suffix), "%s", res->suffix);
	memcpy(e.orig_sum, src->whole, SUM_LEN);
	memcpy(e.scan_sum, res->scan_sum, SUM_LEN);
	e.carries = res->carries;
	if (res->view_own_size) {
		e.flags |= IDX_F_VIEW_OWN_SIZE;
		snprintf(e.reason, sizeof(e.reason), "view not the original's size: %s",
			 res->view_why);
	}
	rc = fs_sum_path(fs->work_fd, out, &osum);
	if (!rc && osum.size != res->stored_bytes)
		rc = -EIO;
	if (!rc) {
		memcpy(e.sum, osum.whole, SUM_LEN);
		e.checked = (int64_t)time(NULL);
	}
	if (!rc && photo) {
		int vfd = openat(fs->work_fd, view, O_RDONLY | O_CLOEXEC), fd = -1;
		if (vfd >= 0 && sum_file(vfd, 0, 0, 0, NULL, NULL, &vsum) == 0 &&
		    vsum.size == res->view_bytes)
			memcpy(e.view_sum, vsum.whole, SUM_LEN);
		sum_file_release(&vsum);
		if (vfd >= 0)
			fd = openat(fs->work_fd, out, O_RDONLY | O_CLOEXEC);
		if (fd >= 0) {
			head_digest(fd, vfd, res->view_bytes, qpath, e.head_sum);
			close(fd);
		}
		if (vfd >= 0)
			close(vfd);
	}
	e.elapsed = mono_sec() - t0;
	/* a file renamed while it was archived (rsync's temporary name) is
	 * committed under its new name: its queue record follows renames */
	for (int tries = 0; !rc && tries < COMMIT_TRIES; tries++) {
		uint64_t qgen;
		struct idx_txn *txn;
		if (tries) {
			char now[FS_PATH_MAX];
			int moved = 0;
			if (!job_current(fs, j) || idx_begin(fs->idx, 0, &txn))
				break;
			if (idx_queue_get(txn, j->ino, &qgen, now, sizeof(now)) == 0 &&
			    qgen == j->gen && strcmp(now, path)) {
				snprintf(path, sizeof(path), "%s", now);
				moved = 1;
			}
			idx_abort(txn);
			if (!moved)
				break;
			log_msg(LOG_INFO, "queue: renamed while archived: committed as %s", path);
			name = fs_basename(path);
			snprintf(e.suffix, sizeof(e.suffix), "%s", res->suffix);
			if (dirfd >= 0)
				close(dirfd);
			dirfd = -1;
		}
		if (fs_stored_name(name, e.suffix, target, sizeof(target))) {
			snprintf(reason, sizeof(reason), "name too long to append %s", e.suffix);
			done = FS_REPLACE_TAKEN;
			goto out;
		}
		if (!strcmp(target, name))
			e.suffix[0] = '\0'; /* a video whose name already said MP4 */
		dirfd = fs_open_path(fs, dir_of(path, dir), O_PATH | O_DIRECTORY, 0);
		if (dirfd == -ENOENT || dirfd == -ENOTDIR) {
			done = FS_REPLACE_MOVED; /* its directory renamed meanwhile */
			continue;
		}
		if (dirfd < 0) {
			rc = dirfd;
			break;
		}
		struct fs_replace r = {
		    .dirfd = dirfd,
		    .dir = dir,
		    .x_name = name,
		    .x_ino = j->ino,
		    .x_gen = j->gen,
		    .y_dirfd = fs->work_fd,
		    .y_name = out,
		    .target = target,
		    .entry = &e,
		    .sums = &osum,
		    .logical = path,
		    .node = j->node,
		    .ready = res,
		    .kind = photo && fs->cfg->view == FS_VIEW_LEGACY ? FS_KIND_VIEW : FS_KIND_PLAIN,
		    .flags = FS_REPLACE_ATTRS | FS_REPLACE_JOURNAL | FS_REPLACE_SYNC,
		};
		done = fs_replace(fs, &r, &rc);
		if (done != FS_REPLACE_MOVED)
			break;
	}
	if (done == FS_REPLACE_MOVED)
		snprintf(reason, sizeof(reason), "changed or moved while archiving");
	else if (done == FS_REPLACE_TAKEN)
		snprintf(reason, sizeof(reason), "name %s is taken", target);
out:
	sum_file_release(&osum);
	if (dirfd >= 0)
		close(dirfd);
	if (done == FS_REPLACE_OPEN) {
		log_msg(LOG_INFO, "queue: %s is open: archived after it is closed", path);
		return; /* keeping the output and view */
	}
	if (done == FS_REPLACE_MOVED || done == FS_REPLACE_TAKEN) {
		log_msg(LOG_INFO, "kept: %s: %s", path, reason);
		if (job_current(fs, j))
			finish_kept(fs, j, IDX_KEPT, reason, st, kind, src);
	} else if (done == FS_REPLACE_ERROR) {
		snprintf(reason, sizeof(reason), "commit failed: %s", strerror(-rc));
		log_msg(LOG_ERR, "failed: %s: %s", path, reason);
		finish_kept(fs, j, IDX_FAILED, reason, st, kind, src);
	} else {
		char cname[32];
		snprintf(cname, sizeof(cname), "%llu", (unsigned long long)e.gen);
		if (renameat(fs->work_fd, view, fs->cache_fd, cname) == -1 && errno != ENOENT)
			log_msg(LOG_WARNING, "queue: view of %s not cached: %s", path,
				strerror(errno));
		else
			fs_cache_trim(fs);
		log_msg(LOG_INFO,
			"archived: %s: %llu -> %llu bytes (%.0f%%), %s %d, SSIM %.4f, %.1f s", path,
			(unsigned long long)st->st_size, (unsigned long long)e.stored_bytes,
			st->st_size ? 100.0 * (double)e.stored_bytes / (double)st->st_size : 0.0,
			kind == IDX_KIND_VIDEO ? "crf" : "q", res->quality, res->ssim, e.elapsed);
		notify_names(fs, dir, name, target);
	}
	unlinkat(fs->work_fd, out, 0);
	unlinkat(fs->work_fd, view, 0);
}

/* Does this job's file have the bytes of the archive it replaced (kept
 * aside), so that archive goes back in place unchanged? 1 when it did. */
static int again(struct fs *fs, struct job *j, const char *path, const struct sum_file *src)
{
	struct idx_entry me, pe;
	char dir[FS_PATH_MAX], target[FS_STORED_BUF];
	int rc;

	if (fs_entry_get(fs, j->ino, &me) || !me.prev || fs_entry_get(fs, me.prev, &pe) ||
	    memcmp(pe.orig_sum, src->whole, SUM_LEN))
		return 0;
	rc = fs_prev_restore(fs, j->ino, me.prev, path, j->gen);
	if (rc) {
		log_msg(LOG_DEBUG, "queue: %s: its archive is not put back: %s", path,
			strerror(-rc));
		return 0;
	}
	log_msg(LOG_INFO,
		"unchanged: %s: written again with its original's bytes: its archive is "
		"back, nothing encoded",
		path);
	if (fs_stored_name(fs_basename(path), pe.suffix, target, sizeof(target)) == 0)
		notify_names(fs, dir_of(path, dir), fs_basename(path), target);
	return 1;
}

/* The archive this job's file replaced, kept aside, open for reading (a
 * metadata edit of its view keeps its pictures), or -1. */
static int prev_archive(struct fs *fs, struct job *j)
{
	struct idx_entry me, pe;
	int fd;

	if (fs_entry_get(fs, j->ino, &me) || !me.prev || fs_entry_get(fs, me.prev, &pe) ||
	    sum_is_zero(pe.scan_sum))
		return -1;
	fd = fs_prev_open(fs, j->ino, me.prev);
	return fd < 0 ? -1 : fd;
}

/* Open the stored file of inode ino that logical path names (its archived
 * copy under any suffix, in either view) for reading, with its entry. An fd
 * or -errno. */
static int open_stored(struct fs *fs, const char *path, uint64_t ino, struct idx_entry *e)
{
	static const char *const suffixes[] = {"", ".heic", ".mp4", ".mkv"};
	char name[FS_STORED_BUF];
	const char *base;
	int dirfd = fs_open_parent(fs, path, &base), fd = -ENOENT;

	if (dirfd < 0)
		return dirfd;
	for (size_t i = 0; i < sizeof(suffixes) / sizeof(*suffixes) && fd == -ENOENT; i++) {
		struct stat st;
		if ((size_t)snprintf(name, sizeof(name), "%s%s", base, suffixes[i]) >=
			sizeof(name) ||
		    fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) != 0 ||
		    (uint64_t)st.st_ino != ino)
			continue;
		fd = openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
		if (fd < 0)
			fd = -errno;
		else if (fstat(fd, &st) == -1 || (uint64_t)st.st_ino != ino ||
			 fs_entry_get(fs, ino, e) != 0) {
			close(fd);
			fd = -ESTALE;
		}
	}
	close(dirfd);
	return fd;
}

/* Copy an archive of the original src (another file with the same bytes,
 * archived before) to work/out and describe it in res, as an encode would.
 * 0, or -ENOENT when there is none whole. */
static int copy_origin(struct fs *fs, const struct sum_file *src, const char *out,
		       struct codec_result *res)
{
	struct idx_txn *txn;
	struct idx_entry e;
	struct sum_file f;
	char *path = malloc(FS_PATH_MAX);
	uint64_t ino;
	int in = -1, o = -1, rc;

	if (!path)
		return -ENOMEM;
	if ((rc = idx_begin(fs->idx, 0, &txn)))
		goto out_free;
	rc = idx_origin_get(txn, src->whole, &ino, path, FS_PATH_MAX);
	idx_abort(txn);
	if (rc)
		goto out_free;
	if ((in = open_stored(fs, path, ino, &e)) < 0) {
		rc = in;
		goto out_free;
	}
	if (e.state != IDX_ARCHIVED || (e.flags & IDX_F_DAMAGED) ||
	    memcmp(e.orig_sum, src->whole, SUM_LEN) || sum_is_zero(e.sum)) {
		rc = -ENOENT;
		goto out_close;
	}
	o = openat(fs->work_fd, out, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (o < 0) {
		rc = -errno;
		goto out_close;
	}
	if ((rc = fs_copy_fd(in, o, e.stored_bytes)) || fsync(o) == -1) {
		rc = rc ? rc : -errno;
		goto out_unlink;
	}
	/* the copy is the archive whole, or nothing */
	if ((rc = sum_file(o, 0, 0, 0, NULL, NULL, &f)))
		goto out_unlink;
	if (memcmp(f.whole, e.sum, SUM_LEN) != 0) {
		sum_file_release(&f);
		rc = -EIO;
		goto out_unlink;
	}
	sum_file_release(&f);
	memset(res, 0, sizeof(*res));
	res->archived = 1;
	snprintf(res->suffix, sizeof(res->suffix), "%s", e.suffix[0] ? e.suffix : ".mp4");
	res->orig_bytes = src->size;
	res->stored_bytes = e.stored_bytes;
	res->view_bytes = e.view_bytes;
	res->quality = (int)e.quality;
	res->ssim = e.ssim;
	res->view_ssim = e.view_ssim;
	res->carries = e.carries;
	memcpy(res->orig_sum, e.orig_sum, SUM_LEN);
	memcpy(res->scan_sum, e.scan_sum, SUM_LEN);
	goto out_close;
out_unlink:
	unlinkat(fs->work_fd, out, 0);
out_close:
	if (in >= 0)
		close(in);
	if (o >= 0)
		close(o);
out_free:
	free(path);
	return rc;
}

/* Run one job: open the settled file, archive it, keep or commit. Returns 1
 * when the job was handed back to the queue (a video waiting its turn). */
static int run_job(struct fs *fs, struct job *j)
{
	struct codec_result res;
	struct codec_opts opts = fs->cfg->codec;
	struct idx_txn *txn;
	struct stat st;
	struct sum_file src = {0};
	char out[64], view[64];
	char *path = malloc(FS_PATH_MAX), *outpath = NULL, *viewpath = NULL;
	char reason[600];
	uint64_t qgen;
	int fd = -1, rc, video = 0, requeued = 0, kind;
	enum codec_kind sniffed;
	const char *format = "";
	struct progress prog = {fs, j, 0};
	double t0 = mono_sec();

	if (!path)
		return 0;
	/* a write from here on cancels the job again */
	atomic_store(fs_node_cancel(j->node), 0);
	if (!job_current(fs, j))
		goto out;
	/* the queue record's path and the open, between renames (a rename
	 * moves the record's path under ns_lock): a file renamed in between
	 * would look gone, and its entry be dropped */
	fs_mutex_lock(&fs->ns_lock);
	if ((rc = idx_begin(fs->idx, 0, &txn)) == 0) {
		rc = idx_queue_get(txn, j->ino, &qgen, path, FS_PATH_MAX);
		idx_abort(txn);
	}
	if (!rc && qgen == j->gen) /* (a FIFO there now must not block the lock) */
		fd = fs_open_path(fs, path, O_RDONLY | O_NONBLOCK, 0);
	fs_mutex_unlock(&fs->ns_lock);
	if (rc || qgen != j->gen)
		goto out;
	if (fd < 0 || fstat(fd, &st) == -1 || (uint64_t)st.st_ino != j->ino) {
		log_msg(LOG_INFO, "queue: %s is gone, job dropped", path);
		drop_job(fs, j);
		goto out;
	}
	if (!S_ISREG(st.st_mode)) {
		drop_job(fs, j);
		goto out;
	}
	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
	/* the first bytes decide; only photos and videos need a child */
	sniffed = codec_sniff_format(fd, &format);
	kind = kind_of(sniffed);
	if (sniffed == CODEC_KIND_VIDEO) {
		if (!video_turn(fs, j)) {
			requeued = 1;
			goto out;
		}
		video = 1;
	}
	/* the original's digests: what a kept file is checked against, and
	 * what names the original of an archive */
	rc = sum_file(fd, 1, 0, 0, hash_progress, fs_node_cancel(j->node), &src);
	if (rc == -ECANCELED || !job_current(fs, j))
		goto out;
	if (rc) {
		snprintf(reason, sizeof(reason), "reading failed: %s", strerror(-rc));
		log_msg(LOG_ERR, "failed: %s: %s", path, reason);
		finish_kept(fs, j, IDX_FAILED, reason, &st, kind, NULL);
		goto out;
	}
	if (st.st_nlink > 1) {
		finish_kept(fs, j, IDX_KEPT, "hard-linked: kept as is", &st, kind, &src);
		goto out;
	}
	if (sniffed == CODEC_KIND_OTHER || sniffed == CODEC_KIND_HEIF ||
	    sniffed == CODEC_KIND_RAW) {
		/* said by the first bytes: no child needed */
		struct sibling sib, *with = NULL;
		if (sniffed == CODEC_KIND_HEIF)
			snprintf(reason, sizeof(reason), "already %s", format);
		else if (sniffed == CODEC_KIND_RAW)
			snprintf(reason, sizeof(reason), "camera raw (%s)", format);
		else
			snprintf(reason, sizeof(reason), "not a photo or video");
		/* heic_view=jpeg: its JPEG sibling, for viewers that open no HEIC */
		if (sniffed == CODEC_KIND_HEIF && fs->cfg->heic_view) {
			rc = fs_sibling_render(fs, fd, j->ino, &sib.bytes, sib.sum);
			if (rc == 0)
				with = &sib;
			else
				log_msg(LOG_WARNING, "%s: no JPEG sibling: %s", path,
					strerror(-rc));
		}
		finish_kept_sib(fs, j, IDX_KEPT, reason, &st, kind, &src, with);
		if (with) {
			char dir[FS_PATH_MAX], sname[FS_NAME_BUF];
			if ((size_t)snprintf(sname, sizeof(sname), "%s.jpg", fs_basename(path)) <
			    sizeof(sname))
				fs_notify_name(fs, dir_of(path, dir), sname);
		}
		goto out;
	}
	if (sniffed == CODEC_KIND_JPEG && strlen(fs_basename(path)) + strlen(".heic") > 255) {
		/* no room for ".heic" after the name: do not encode for nothing */
		finish_kept(fs, j, IDX_KEPT, "name too long to append .heic", &st, kind, &src);
		goto out;
	}
	opts.progress = on_progress;
	opts.progress_arg = &prog;
	/* the same bytes are never encoded twice: the archive this file
	 * replaced, or any archive of the same original */
	if (again(fs, j, path, &src))
		goto out;

	snprintf(out, sizeof(out), "%llu.%llu.out", (unsigned long long)j->ino,
		 (unsigned long long)j->gen);
	snprintf(view, sizeof(view), "%llu.%llu.view", (unsigned long long)j->ino,
		 (unsigned long long)j->gen);
	if (asprintf(&outpath, "%s/%s", fs->work_dir, out) < 0 ||
	    asprintf(&viewpath, "%s/%s", fs->work_dir, view) < 0) {
		outpath = viewpath = NULL;
		goto out;
	}
	if (!job_current(fs, j))
		goto out;
	opts.cancel = fs_node_cancel(j->node);
	if (fs_node_take_ready(fs, j->node, j->gen, &res)) {
		/* made and verified before; its commit waited for readers */
		rc = 0;
	} else if (copy_origin(fs, &src, out, &res) == 0) {
		log_msg(LOG_INFO,
			"queue: %s: an archive of the same original is copied, nothing "
			"encoded",
			path);
		rc = 0;
	} else {
		double e0 = mono_sec();
		int prev_fd = sniffed == CODEC_KIND_JPEG ? prev_archive(fs, j) : -1;
		job_started(fs, j);
		rc = fs_archive_isolated(fd, prev_fd, outpath, viewpath, &opts, &res);
		if (prev_fd >= 0)
			close(prev_fd);
		if (rc == 0 && !res.retagged)
			note_rate(fs, (uint64_t)st.st_size, mono_sec() - e0);
		if (rc == 0 && res.retagged)
			log_msg(LOG_INFO,
				"queue: %s: only its metadata changed: its pictures are "
				"kept, nothing encoded",
				path);
	}
	if (rc == -ECANCELED || !job_current(fs, j)) {
		log_msg(LOG_DEBUG, "queue: %s changed, archive abandoned", path);
	} else if (rc < 0) {
		snprintf(reason, sizeof(reason), "archiving failed: %s", strerror(-rc));
		log_msg(LOG_ERR, "failed: %s: %s", path, reason);
		finish_kept(fs, j, IDX_FAILED, reason, &st, kind, &src);
	} else if (!res.archived) {
		log_msg(LOG_INFO, "kept: %s: %s", path, res.reason);
		finish_kept(fs, j, IDX_KEPT, res.reason, &st, kind, &src);
	} else {
		commit_job(fs, j, path, out, view, &res, &st, kind, &src, t0);
		goto out; /* commit_job cleans work/ (or keeps it for a deferred commit) */
	}
	unlinkat(fs->work_fd, out, 0);
	unlinkat(fs->work_fd, view, 0);
out:
	if (video)
		video_done(fs);
	if (fd >= 0)
		close(fd);
	sum_file_release(&src);
	free(outpath);
	free(viewpath);
	free(path);
	return requeued;
}

/* Queue records taken in at a time, and collected first so that their jobs
 * are pushed outside the read transaction. */
#define BACKLOG_BATCH 256

struct qload {
	uint64_t inos[BACKLOG_BATCH];
	size_t n;
};

static int qload_add(void *arg, uint64_t ino, uint64_t gen, const char *path)
{
	struct qload *q = arg;

	(void)gen;
	(void)path;
	q->inos[q->n++] = ino;
	return q->n == BACKLOG_BATCH;
}

/*
 * Take the next batch of the index's queue in: a job for each record left
 * by an earlier mount (or fsck), or staged and not being written. A file
 * with a job made for its present bytes has it already, and one open or
 * settling is queued when it settles. The number of jobs made, or -errno.
 * Called without jobs_lock, by one thread at a time (refilling).
 */
static long backlog_take(struct fs *fs)
{
	struct qload *q = malloc(sizeof(*q));
	struct idx_txn *txn;
	uint64_t from;
	long made = 0;
	int rc;

	if (!q)
		return -ENOMEM;
	q->n = 0;
	fs_mutex_lock(&fs->jobs_lock);
	from = fs->backlog_from;
	fs_mutex_unlock(&fs->jobs_lock);
	rc = idx_begin(fs->idx, 0, &txn);
	if (!rc) {
		rc = idx_queue_each_from(txn, from, qload_add, q);
		idx_abort(txn);
	}
	if (rc) {
		free(q);
		return rc;
	}
	if (q->n && !from)
		log_msg(LOG_INFO, "queue: taking in the files the index has queued, %d at a time",
			BACKLOG_BATCH);
	fs_mutex_lock(&fs->jobs_lock);
	if (q->n)
		fs->backlog_from = q->inos[q->n - 1] + 1;
	if (q->n < BACKLOG_BATCH || fs->backlog_from == 0)
		fs->backlog = 0;
	fs_mutex_unlock(&fs->jobs_lock);
	for (size_t i = 0; i < q->n && !atomic_load(&fs->stopping); i++) {
		/* the node's generation: the record's belonged to another mount */
		uint64_t gen;
		int busy;
		struct fs_node *n = fs_node_claim(fs, q->inos[i], &gen, &busy);
		if (busy)
			continue;
		if (!n) {
			rc = -ENOMEM;
			break;
		}
		rc = fs_job_push(fs, q->inos[i], gen, n);
		fs_node_put(fs, n);
		if (rc)
			break;
		made++;
	}
	free(q);
	return rc ? rc : made;
}

/* Take the next job, or NULL when stopping. One video at a time: while one
 * runs, videos wait and the photos behind them go first. */
static struct job *job_pop(struct fs *fs)
{
	struct job *j = NULL, *prev = NULL;

	fs_mutex_lock(&fs->jobs_lock);
	while (!atomic_load(&fs->stopping)) {
		prev = NULL;
		for (j = fs->jobs_head; j && j->video && fs->video_running; j = j->next)
			prev = j;
		if (j)
			break;
		if (fs->backlog && !fs->refilling) {
			/* nothing to do: the next batch of the index's queue */
			long made;
			fs->refilling = 1;
			fs_mutex_unlock(&fs->jobs_lock);
			made = backlog_take(fs);
			fs_mutex_lock(&fs->jobs_lock);
			fs->refilling = 0;
			if (made < 0) {
				log_msg(LOG_ERR,
					"queue: cannot read the index's queue (%s): its "
					"files wait for the next mount",
					strerror((int)-made));
				fs->backlog = 0;
			}
			pthread_cond_broadcast(&fs->jobs_cond);
			continue;
		}
		fs_cond_wait(&fs->jobs_cond, &fs->jobs_lock);
	}
	if (atomic_load(&fs->stopping)) {
		j = NULL;
	} else {
		if (prev)
			prev->next = j->next;
		else
			fs->jobs_head = j->next;
		if (fs->jobs_tail == j)
			fs->jobs_tail = prev;
		j->next = NULL;
		atomic_fetch_add(&fs->active, 1);
	}
	fs_mutex_unlock(&fs->jobs_lock);
	return j;
}

static void *worker_main(void *arg)
{
	struct fs *fs = arg;
	struct job *j;

	while ((j = job_pop(fs))) {
		if (!run_job(fs, j)) {
			fs_node_put(fs, j->node);
			free(j);
		}
		atomic_fetch_sub(&fs->active, 1);
	}
	return NULL;
}

int fs_workers_start(struct fs *fs)
{
	int n = fs->cfg->workers > 0 ? fs->cfg->workers : (int)sysconf(_SC_NPROCESSORS_ONLN);

	if (n < 1)
		n = 1;
	fs->workers = calloc((size_t)n, sizeof(*fs->workers));
	if (!fs->workers)
		return -ENOMEM;
	for (int i = 0; i < n; i++) {
		int rc = pthread_create(&fs->workers[i], NULL, worker_main, fs);
		if (rc) {
			log_msg(LOG_ERR, "queue: cannot start worker: %s", strerror(rc));
			break;
		}
		fs->nworkers++;
	}
	return fs->nworkers ? 0 : -EAGAIN;
}

/* Stop the workers: running jobs are cancelled (their files stay queued in
 * the index and are archived by the next mount). */
void fs_workers_stop(struct fs *fs)
{
	fs_mutex_lock(&fs->jobs_lock);
	atomic_store(&fs->stopping, 1);
	pthread_cond_broadcast(&fs->jobs_cond);
	fs_mutex_unlock(&fs->jobs_lock);
	fs_nodes_cancel_all(fs);
	for (int i = 0; i < fs->nworkers; i++)
		pthread_join(fs->workers[i], NULL);
	free(fs->workers);
	fs->workers = NULL;
	fs->nworkers = 0;
	while (fs->jobs_head) {
		struct job *j = fs->jobs_head;
		fs->jobs_head = j->next;
		fs_node_put(fs, j->node);
		free(j);
	}
	fs->jobs_tail = NULL;
}

int fs_queue_load(struct fs *fs)
{
	fs_mutex_lock(&fs->jobs_lock);
	fs->backlog_from = 0;
	fs->backlog = 1;
	pthread_cond_broadcast(&fs->jobs_cond);
	fs_mutex_unlock(&fs->jobs_lock);
	return 0;
}
