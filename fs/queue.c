/*
 * queue — the archive jobs: workers that transcode settled files, and the
 * commit protocol that replaces an original by its archived copy without
 * ever having neither on disk.
 *
 * Commit, with ns_lock held so no name can move meanwhile:
 *   1. the output (in BACKING/.hevcfs/work) gets the original's owner, mode,
 *      times and user xattrs, and is fsynced;
 *   2. a journal record (intent) names the original, the output's inode and
 *      the entry it will get;
 *   3. the output is renamed next to the original (never over another file)
 *      and the directory fsynced;
 *   4. one index transaction records the archived entry, drops the original's
 *      entry and queue record; the index is synced;
 *   5. the original is unlinked and the directory fsynced;
 *   6. the intent is dropped.
 * Recovery rolls an intent forward when the output is in place (3 happened)
 * and back otherwise; a crash before 3 leaves only a file in the work
 * directory, which recovery removes.
 */
#define FUSE_USE_VERSION 314
#include "internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fuse.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

/* Longest logical path a job handles, with its terminator. */
#define QUEUE_PATH_MAX 4097

void fs_crash_point(const char *name)
{
	static const char *want;
	static int checked;

	if (!checked) {
		want = getenv("HEVCFS_CRASH_AT");
		checked = 1;
	}
	if (want && strcmp(want, name) == 0) {
		log_msg(LOG_WARNING, "crash point %s reached: killing the process", name);
		kill(getpid(), SIGKILL);
	}
}

int fs_job_push(struct fs *fs, uint64_t ino, uint64_t gen, struct node *node)
{
	struct job *j;
	struct idx_txn *txn;
	struct idx_entry e = {0};
	char *path;
	uint64_t old_gen;
	int rc;

	path = malloc(QUEUE_PATH_MAX);
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
	rc = idx_queue_get(txn, ino, &old_gen, path, QUEUE_PATH_MAX);
	if (rc == -ENOENT && node && node->path) {
		snprintf(path, QUEUE_PATH_MAX, "%s", node->path);
		rc = 0;
	}
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
	j->node = node ? fs_node_find(fs, ino) : fs_node_get(fs, ino);
	if (!j->node) {
		rc = -ENOMEM;
		goto out_free;
	}
	if (!node)
		atomic_store(&j->node->gen, gen);
	pthread_mutex_lock(&fs->jobs_lock);
	if (fs->jobs_tail)
		fs->jobs_tail->next = j;
	else
		fs->jobs_head = j;
	fs->jobs_tail = j;
	pthread_cond_signal(&fs->jobs_cond);
	pthread_mutex_unlock(&fs->jobs_lock);
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

/* Is the job still current: same generation, nobody writing? */
static int job_current(struct fs *fs, struct job *j)
{
	int ok;

	pthread_mutex_lock(&fs->nodes_lock);
	ok = atomic_load(&j->node->gen) == j->gen && j->node->writers == 0;
	pthread_mutex_unlock(&fs->nodes_lock);
	return ok;
}

/* Record the outcome of a job that keeps the file as it is (or failed),
 * unless the file changed meanwhile (its queue record says so). sums, when
 * not NULL, are the file's digests, taken while the job had it open: a kept
 * file is at rest, and its reads are checked against them from now on. */
static void finish_kept(struct fs *fs, struct job *j, int state, const char *reason,
			const struct stat *st, int kind, const struct sum_file *sums)
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

int fs_fsync_dir(int dirfd)
{
	int fd = openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	int rc = 0;

	if (fd == -1)
		return -errno;
	if (fsync(fd) == -1)
		rc = -errno;
	close(fd);
	return rc;
}

int fs_copy_attrs(int src, int dst)
{
	struct stat st;
	char *names = NULL;
	ssize_t len;

	if (fstat(src, &st) == -1)
		return -errno;
	if (geteuid() == 0 && fchown(dst, st.st_uid, st.st_gid) == -1)
		return -errno;
	if (fchmod(dst, st.st_mode & 07777) == -1)
		return -errno;
	len = flistxattr(src, NULL, 0);
	if (len > 0 && (names = malloc((size_t)len))) {
		len = flistxattr(src, names, (size_t)len);
		for (ssize_t off = 0; len > 0 && off < len;
		     off += (ssize_t)strlen(names + off) + 1) {
			const char *n = names + off;
			char val[65536];
			if (strncmp(n, "user.", 5) != 0)
				continue;
			ssize_t vl = fgetxattr(src, n, val, sizeof(val));
			if (vl < 0 || fsetxattr(dst, n, val, (size_t)vl, 0) == -1)
				log_msg(LOG_WARNING, "commit: xattr %s not copied: %s", n,
					strerror(errno));
		}
	}
	free(names);
	struct timespec times[2] = {st.st_atim, st.st_mtim};
	if (futimens(dst, times) == -1)
		return -errno;
	return fsync(dst) == -1 ? -errno : 0;
}

/* Put a directory's access and modification times back (its ctime moves,
 * as it must). parent may be an O_PATH fd. */
static void restore_dir_times(int parent, const struct stat *before)
{
	struct timespec t[2] = {before->st_atim, before->st_mtim};
	int fd = openat(parent, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	if (fd < 0)
		return;
	if (futimens(fd, t) == -1)
		log_msg(LOG_WARNING, "commit: directory times not kept: %s", strerror(errno));
	close(fd);
}

/*
 * Replace the original of job j by the archived copy at work/out (steps
 * 1-6 above). Returns 0 when committed, 1 when the job was abandoned (file
 * changed or a name is taken: reason set), COMMIT_DEFERRED when the file is
 * open (a reader holds it; the node queues it again at the last close), or
 * -errno.
 */
#define COMMIT_DEFERRED 2
static int commit_archive(struct fs *fs, struct job *j, const char *out,
			  const struct codec_result *res, struct idx_entry *e,
			  const struct sum_file *sums, char *reason, size_t rsize, char *path,
			  size_t psize)
{
	struct idx_intent *in = NULL;
	struct idx_txn *txn;
	struct idx_entry old;
	struct stat st, ost;
	uint64_t prev = 0;
	const char *name;
	char target[300];
	uint64_t qgen;
	int parent = -1, src = -1, dst = -1, rc;

	pthread_mutex_lock(&fs->ns_lock);
	rc = idx_begin(fs->idx, 0, &txn);
	if (rc)
		goto out_unlock;
	rc = idx_queue_get(txn, j->ino, &qgen, path, psize);
	idx_abort(txn);
	if (rc || qgen != j->gen || !job_current(fs, j)) {
		rc = 1;
		snprintf(reason, rsize, "changed while archiving");
		goto out_unlock;
	}
	/* A reader holds the original: replacing it now would put another
	 * file, of another size, under the name its descriptor reads through
	 * (the kernel keeps one size per name). Commit at its last close,
	 * with this archive. */
	if (fs_node_defer_commit(fs, j->node, j->gen, res)) {
		rc = COMMIT_DEFERRED;
		goto out_unlock;
	}
	parent = fs_open_parent(fs, path, &name);
	if (parent < 0) {
		rc = parent;
		goto out_unlock;
	}
	src = openat(parent, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (src == -1 || fstat(src, &st) == -1 || st.st_ino != j->ino) {
		rc = 1;
		snprintf(reason, rsize, "moved while archiving");
		goto out_close;
	}
	if (fs_stored_name(name, e->suffix, target, sizeof(target))) {
		rc = 1;
		snprintf(reason, rsize, "name too long to append %s", e->suffix);
		goto out_close;
	}
	if (strcmp(target, name) == 0)
		e->suffix[0] = '\0'; /* a video whose name already said MP4 */
	/* 1. attributes onto the output */
	dst = openat(fs->work_fd, out, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (dst == -1) {
		rc = -errno;
		goto out_close;
	}
	rc = fs_copy_attrs(src, dst);
	if (rc || fstat(dst, &ost) == -1)
		goto out_close;

	/* 2. intent */
	in = calloc(1, sizeof(*in));
	if (!in) {
		rc = -ENOMEM;
		goto out_close;
	}
	in->staged_ino = j->ino;
	in->archive_ino = (uint64_t)ost.st_ino;
	in->entry = *e;
	snprintf(in->path, sizeof(in->path), "%s", path);
	if ((rc = idx_begin(fs->idx, 1, &txn)))
		goto out_close;
	if ((rc = idx_intent_put(txn, in))) {
		idx_abort(txn);
		goto out_close;
	}
	if ((rc = idx_commit(txn)))
		goto out_close;
	fs_crash_point("commit-intent");

	/* the directory's times are the user's (cp -a set them): archiving
	 * must not move them */
	struct stat dst_before;
	int have_dir_times = fstat(parent, &dst_before) == 0;

	/* 3. into place, never over another file (except the original when
	 * the name is kept) */
	if (renameat2(fs->work_fd, out, parent, target, e->suffix[0] ? RENAME_NOREPLACE : 0) ==
	    -1) {
		rc = errno == EEXIST ? 1 : -errno;
		if (rc == 1)
			snprintf(reason, rsize, "name %s is taken", target);
		if (idx_begin(fs->idx, 1, &txn) == 0) {
			idx_intent_del(txn, j->ino);
			idx_commit(txn);
		}
		goto out_close;
	}
	fs_crash_point("commit-renamed");
	rc = fs_fsync_dir(parent);
	if (rc)
		log_msg(LOG_WARNING, "commit: fsync of the directory of %s: %s", path,
			strerror(-rc));

	/* 4. index */
	if ((rc = idx_begin(fs->idx, 1, &txn)))
		goto out_close;
	if (idx_get(txn, j->ino, &old) == 0)
		prev = old.prev;
	if ((rc = idx_del(txn, j->ino)) || (rc = idx_put(txn, in->archive_ino, e)) ||
	    (rc = idx_blocks_put(txn, in->archive_ino, sums->blocks, sums->nblocks)) ||
	    (rc = idx_origin_put(txn, e->orig_sum, in->archive_ino, path)) ||
	    (rc = idx_queue_del(txn, j->ino))) {
		idx_abort(txn);
		goto out_close;
	}
	if ((rc = idx_commit(txn)) || (rc = idx_sync(fs->idx)))
		goto out_close;
	fs_crash_point("commit-indexed");

	/* 5. the original goes */
	if (e->suffix[0]) {
		if (unlinkat(parent, name, 0) == -1)
			log_msg(LOG_ERR, "commit: cannot remove %s: %s", path, strerror(errno));
		fs_fsync_dir(parent);
	}
	fs_crash_point("commit-unlinked");
	if (have_dir_times)
		restore_dir_times(parent, &dst_before);

	/* 6. done: an archive it replaced, kept aside, goes too */
	if (idx_begin(fs->idx, 1, &txn) == 0) {
		idx_intent_del(txn, j->ino);
		idx_commit(txn);
	}
	fs_prev_drop(fs, j->ino, prev);
	e->gen = in->archive_ino; /* tell the caller the new inode */
	rc = 0;
out_close:
	free(in);
	if (dst >= 0)
		close(dst);
	if (src >= 0)
		close(src);
	if (parent >= 0)
		close(parent);
out_unlock:
	pthread_mutex_unlock(&fs->ns_lock);
	return rc;
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

	pthread_mutex_lock(&fs->jobs_lock);
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
	pthread_mutex_unlock(&fs->jobs_lock);
	return mine;
}

static void video_done(struct fs *fs)
{
	pthread_mutex_lock(&fs->jobs_lock);
	fs->video_running = 0;
	pthread_cond_broadcast(&fs->jobs_cond);
	pthread_mutex_unlock(&fs->jobs_lock);
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

/* Commit a verified archive of job j (its files work/out and work/view),
 * recording what res measured and the digests of the original (src) and
 * of what is stored. Logs the outcome. */
static void commit_job(struct fs *fs, struct job *j, const char *path, const char *out,
		       const char *view, const struct codec_result *res, const struct stat *st,
		       int kind, const struct sum_file *src, double t0)
{
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
	char reason[600];
	int rc;

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
	if (!rc && !strcmp(res->suffix, ".heic")) {
		int vfd = openat(fs->work_fd, view, O_RDONLY | O_CLOEXEC);
		if (vfd >= 0 && sum_file(vfd, 0, 0, 0, NULL, NULL, &vsum) == 0 &&
		    vsum.size == res->view_bytes)
			memcpy(e.view_sum, vsum.whole, SUM_LEN);
		if (vfd >= 0)
			close(vfd);
	}
	e.elapsed = mono_sec() - t0;
	if (!rc)
		rc = commit_archive(fs, j, out, res, &e, &osum, reason, sizeof(reason),
				    (char *)path, QUEUE_PATH_MAX);
	sum_file_release(&osum);
	if (rc == COMMIT_DEFERRED) {
		log_msg(LOG_INFO, "queue: %s is open: archived after it is closed", path);
		return; /* keeping the output and view */
	}
	if (rc == 1) {
		log_msg(LOG_INFO, "kept: %s: %s", path, reason);
		if (job_current(fs, j))
			finish_kept(fs, j, IDX_KEPT, reason, st, kind, src);
	} else if (rc < 0) {
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
		if (fs->fuse) {
			char *abs = malloc(strlen(path) + 2);
			if (abs) {
				abs[0] = '/';
				strcpy(abs + 1, path);
				fuse_invalidate_path(fs->fuse, abs);
				free(abs);
			}
		}
	}
	unlinkat(fs->work_fd, out, 0);
	unlinkat(fs->work_fd, view, 0);
}

/* Does this job's file have the bytes of the archive it replaced (kept
 * aside), so that archive goes back in place unchanged? 1 when it did. */
static int again(struct fs *fs, struct job *j, const char *path, const struct sum_file *src)
{
	struct idx_entry me, pe;
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
	log_msg(LOG_INFO, "unchanged: %s: written again with its original's bytes: its archive is "
			  "back, nothing encoded",
		path);
	if (fs->fuse) {
		char *abs = malloc(strlen(path) + 2);
		if (abs) {
			abs[0] = '/';
			strcpy(abs + 1, path);
			fuse_invalidate_path(fs->fuse, abs);
			free(abs);
		}
	}
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

/* Copy an archive of the original src (another file with the same bytes,
 * archived before) to work/out and describe it in res, as an encode would.
 * 0, or -ENOENT when there is none whole. */
static int copy_origin(struct fs *fs, const struct sum_file *src, const char *out,
		       struct codec_result *res)
{
	struct idx_txn *txn;
	struct fs_lookup lk;
	struct sum_file f;
	char *path = malloc(QUEUE_PATH_MAX);
	uint64_t ino;
	int in = -1, o = -1, rc;

	if (!path)
		return -ENOMEM;
	if ((rc = idx_begin(fs->idx, 0, &txn)))
		goto out_free;
	rc = idx_origin_get(txn, src->whole, &ino, path, QUEUE_PATH_MAX);
	idx_abort(txn);
	if (rc)
		goto out_free;
	if ((rc = fs_lookup(fs, path, &lk)))
		goto out_free;
	if (!lk.archived || (uint64_t)lk.st.st_ino != ino ||
	    memcmp(lk.e.orig_sum, src->whole, SUM_LEN) || sum_is_zero(lk.e.sum)) {
		rc = -ENOENT;
		goto out_close;
	}
	in = openat(lk.parent, lk.name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	o = openat(fs->work_fd, out, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (in < 0 || o < 0) {
		rc = -errno;
		goto out_close;
	}
	if ((rc = fs_copy_fd(in, o, lk.e.stored_bytes)) || fsync(o) == -1)
		goto out_unlink;
	/* the copy is the archive whole, or nothing */
	if ((rc = sum_file(o, 0, 0, 0, NULL, NULL, &f)) ||
	    memcmp(f.whole, lk.e.sum, SUM_LEN) != 0) {
		rc = rc ? rc : -EIO;
		goto out_unlink;
	}
	memset(res, 0, sizeof(*res));
	res->archived = 1;
	snprintf(res->suffix, sizeof(res->suffix), "%s", lk.e.suffix[0] ? lk.e.suffix : ".mp4");
	res->orig_bytes = src->size;
	res->stored_bytes = lk.e.stored_bytes;
	res->view_bytes = lk.e.view_bytes;
	res->quality = (int)lk.e.quality;
	res->ssim = lk.e.ssim;
	res->view_ssim = lk.e.view_ssim;
	res->carries = lk.e.carries;
	memcpy(res->orig_sum, lk.e.orig_sum, SUM_LEN);
	memcpy(res->scan_sum, lk.e.scan_sum, SUM_LEN);
	rc = 0;
	goto out_close;
out_unlink:
	unlinkat(fs->work_fd, out, 0);
out_close:
	if (in >= 0)
		close(in);
	if (o >= 0)
		close(o);
	close(lk.parent);
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
	char *path = malloc(QUEUE_PATH_MAX), *outpath = NULL, *viewpath = NULL;
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
	atomic_store(&j->node->cancel, 0);
	if (!job_current(fs, j))
		goto out;
	if ((rc = idx_begin(fs->idx, 0, &txn)))
		goto out;
	rc = idx_queue_get(txn, j->ino, &qgen, path, QUEUE_PATH_MAX);
	idx_abort(txn);
	if (rc || qgen != j->gen)
		goto out;
	fd = fs_open_path(fs, path, O_RDONLY, 0);
	if (fd < 0 || fstat(fd, &st) == -1 || (uint64_t)st.st_ino != j->ino) {
		log_msg(LOG_INFO, "queue: %s is gone, job dropped", path);
		drop_job(fs, j);
		goto out;
	}
	if (!S_ISREG(st.st_mode)) {
		drop_job(fs, j);
		goto out;
	}
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
	rc = sum_file(fd, 1, 0, 0, hash_progress, &j->node->cancel, &src);
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
	if (sniffed == CODEC_KIND_OTHER || sniffed == CODEC_KIND_HEIF || sniffed == CODEC_KIND_RAW) {
		/* said by the first bytes: no child needed */
		if (sniffed == CODEC_KIND_HEIF)
			snprintf(reason, sizeof(reason), "already %s", format);
		else if (sniffed == CODEC_KIND_RAW)
			snprintf(reason, sizeof(reason), "camera raw (%s)", format);
		else
			snprintf(reason, sizeof(reason), "not a photo or video");
		finish_kept(fs, j, IDX_KEPT, reason, &st, kind, &src);
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
	opts.cancel = &j->node->cancel;
	if (fs_node_take_ready(fs, j->node, j->gen, &res)) {
		/* made and verified before; its commit waited for readers */
		rc = 0;
	} else if (copy_origin(fs, &src, out, &res) == 0) {
		log_msg(LOG_INFO, "queue: %s: an archive of the same original is copied, nothing "
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
			log_msg(LOG_INFO, "queue: %s: only its metadata changed: its pictures are "
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

/* Take the next job, or NULL when stopping. One video at a time: while one
 * runs, videos wait and the photos behind them go first. */
static struct job *job_pop(struct fs *fs)
{
	struct job *j = NULL, *prev = NULL;

	pthread_mutex_lock(&fs->jobs_lock);
	while (!fs->stopping) {
		prev = NULL;
		for (j = fs->jobs_head; j && j->video && fs->video_running; j = j->next)
			prev = j;
		if (j)
			break;
		pthread_cond_wait(&fs->jobs_cond, &fs->jobs_lock);
	}
	if (fs->stopping) {
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
	pthread_mutex_unlock(&fs->jobs_lock);
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
	pthread_mutex_lock(&fs->jobs_lock);
	fs->stopping = 1;
	pthread_cond_broadcast(&fs->jobs_cond);
	pthread_mutex_unlock(&fs->jobs_lock);
	pthread_mutex_lock(&fs->nodes_lock);
	for (size_t i = 0; i < fs->nodes_size; i++)
		for (struct node *n = fs->nodes[i]; n; n = n->next)
			atomic_store(&n->cancel, 1);
	pthread_mutex_unlock(&fs->nodes_lock);
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

/* Collect queue records, then push them outside the read transaction. */
struct qload {
	uint64_t *inos, *gens;
	size_t n, cap;
};

static int qload_add(void *arg, uint64_t ino, uint64_t gen, const char *path)
{
	struct qload *q = arg;

	(void)path;
	if (q->n == q->cap) {
		size_t cap = q->cap ? q->cap * 2 : 64;
		uint64_t *a = realloc(q->inos, cap * sizeof(*a));
		if (!a)
			return 1;
		q->inos = a;
		uint64_t *b = realloc(q->gens, cap * sizeof(*b));
		if (!b)
			return 1;
		q->gens = b;
		q->cap = cap;
	}
	q->inos[q->n] = ino;
	q->gens[q->n++] = gen;
	return 0;
}

int fs_queue_load(struct fs *fs)
{
	struct qload q = {0};
	struct idx_txn *txn;
	int rc = idx_begin(fs->idx, 0, &txn);

	if (rc)
		return rc;
	rc = idx_queue_each(txn, qload_add, &q);
	idx_abort(txn);
	for (size_t i = 0; !rc && i < q.n; i++) {
		/* a fresh generation: the old one belonged to another mount */
		struct node *n = fs_node_get(fs, q.inos[i]);
		if (!n) {
			rc = -ENOMEM;
			break;
		}
		rc = fs_job_push(fs, q.inos[i], atomic_load(&n->gen), n);
		fs_node_put(fs, n);
	}
	if (q.n)
		log_msg(LOG_INFO, "queue: %zu file(s) queued from the index", q.n);
	free(q.inos);
	free(q.gens);
	return rc;
}
