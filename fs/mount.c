/*
 * mount — opening a backing directory (state directory, lock, index),
 * recovery after a crash, and the FUSE session.
 */
#include "internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

/* The meta key saying the index has seen the whole tree once. */
#define WALKED_KEY "walked"

void fs_config_init(struct fs_config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->settle_ms = 1000;
	cfg->view = FS_VIEW_LEGACY;
	cfg->cache_bytes = 1024ull << 20;
	cfg->verify_reads = 1;
	cfg->splice = 1;
	cfg->readahead_kb = 1024;
}

/* mkdir that accepts an existing directory. */
static int ensure_dir(int dirfd, const char *name)
{
	if (mkdirat(dirfd, name, 0700) == -1 && errno != EEXIST)
		return -errno;
	return 0;
}

/* Join two path pieces into a new string. */
static char *join(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b);
	char *p = malloc(la + lb + 2);

	if (p) {
		memcpy(p, a, la);
		p[la] = '/';
		memcpy(p + la + 1, b, lb + 1);
	}
	return p;
}

/* Close everything fs_open_state opened; fields may be unset (-1/NULL). */
static void fs_close_state(struct fs *fs)
{
	idx_close(fs->idx);
	fs->idx = NULL;
	int *fds[] = {&fs->cache_fd, &fs->work_fd,  &fs->prev_fd,
		      &fs->meta_fd,  &fs->state_fd, &fs->root_fd};
	for (size_t i = 0; i < sizeof(fds) / sizeof(*fds); i++) {
		if (*fds[i] >= 0)
			close(*fds[i]);
		*fds[i] = -1;
	}
	free(fs->work_dir);
	free(fs->cache_dir);
	fs->work_dir = fs->cache_dir = NULL;
}

/* Open the directory name of dirfd (creating it) as an O_PATH fd. */
static int open_subdir(int dirfd, const char *name)
{
	int rc = ensure_dir(dirfd, name), fd;

	if (rc)
		return rc;
	fd = openat(dirfd, name, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	return fd == -1 ? -errno : fd;
}

/*
 * Open BACKING and its state (fs_paths_open made the directories), take the
 * mount lock (lock_fd, kept open by the caller) and open the index. *fresh
 * is set when the index did not exist or the last mount died.
 */
static int fs_open_state(struct fs *fs, const struct fs_paths *p, int *lock_fd, int *fresh)
{
	char *index = fs_index_dir(p);
	struct stat st;
	int rc = 0;

	fs->root_fd = fs->state_fd = fs->meta_fd = fs->work_fd = fs->cache_fd = fs->prev_fd = -1;
	*lock_fd = -1;
	if (!index)
		return -ENOMEM;
	*fresh = stat(index, &st) == -1;
	fs->root_fd = open(p->backing, O_PATH | O_DIRECTORY | O_CLOEXEC);
	fs->meta_fd = open(p->meta, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	fs->state_fd = open(p->state, O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (fs->root_fd == -1 || fs->meta_fd == -1 || fs->state_fd == -1) {
		rc = -errno;
		log_msg(LOG_ERR, "%s: %s", p->backing, strerror(errno));
		goto out;
	}
	*lock_fd = openat(fs->state_fd, FS_LOCK_NAME, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (*lock_fd == -1) {
		rc = -errno;
		goto out;
	}
	if (flock(*lock_fd, LOCK_EX | LOCK_NB) == -1) {
		rc = errno == EWOULDBLOCK ? -EBUSY : -errno;
		goto out;
	}
	/* outputs and archives kept aside are renamed to and from the tree:
	 * they live on BACKING's filesystem; the cache with the state */
	if ((rc = fs->work_fd = open_subdir(fs->meta_fd, "work")) < 0 ||
	    (rc = fs->prev_fd = open_subdir(fs->meta_fd, "prev")) < 0 ||
	    (rc = fs->cache_fd = open_subdir(fs->state_fd, "cache")) < 0)
		goto out;
	rc = 0;
	fs->work_dir = join(p->meta, "work");
	fs->cache_dir = join(p->state, "cache");
	if (!fs->work_dir || !fs->cache_dir) {
		rc = -ENOMEM;
		goto out;
	}
	switch (fs_dirty_get(fs->state_fd)) {
	case FS_DIRTY_OTHER_BOOT:
	case FS_DIRTY_UNREADABLE: /* the lock is ours: nothing to trust it by */
		if ((rc = fs_index_reset(p, fs->state_fd, FS_WHY_STOPPED)))
			goto out;
		/* fall through */
	case FS_DIRTY_THIS_BOOT:
		*fresh = 1;
		break;
	}
	rc = idx_open(index, 0, &fs->idx);
	if (!rc && fs_index_tree_moved(p, fs->idx)) {
		idx_close(fs->idx);
		fs->idx = NULL;
		if (!(rc = fs_index_reset(p, fs->state_fd, FS_WHY_MOVED)))
			rc = idx_open(index, 0, &fs->idx);
		*fresh = 1;
	}
out:
	free(index);
	return rc;
}

/* Remove every file in a directory of the state: unfinished outputs. */
static void wipe_dir(int dirfd)
{
	int fd = openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	struct dirent *de;
	DIR *d;

	if (fd < 0 || !(d = fdopendir(fd))) {
		if (fd >= 0)
			close(fd);
		return;
	}
	while ((de = readdir(d)))
		if (strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))
			unlinkat(dirfd, de->d_name, 0);
	closedir(d);
}

/*
 * An archived copy whose logical name is also a plain file: that can only be
 * left by a crash between the two steps of replacing an archived file (an
 * edit that turned it back into a plain file, or a rename over it; a commit's
 * own window is closed by its journal first). The plain file is the newer
 * one and complete (fsynced before it got its name): the archived copy goes.
 */
static void drop_shadowed(struct fs *fs, int dirfd, const char *name, size_t llen, uint64_t ino)
{
	char logical[256];
	struct stat st;
	struct idx_txn *txn;

	memcpy(logical, name, llen);
	logical[llen] = '\0';
	if (fstatat(dirfd, logical, &st, AT_SYMLINK_NOFOLLOW) == -1 || !S_ISREG(st.st_mode))
		return;
	if (unlinkat(dirfd, name, 0) == -1)
		return;
	log_msg(LOG_INFO, "recovery: %s replaced %s, which is removed", logical, name);
	if (idx_begin(fs->idx, 1, &txn) == 0) {
		idx_del(txn, ino);
		idx_commit(txn);
	}
	fs_fsync_dir(dirfd);
}

/* Files a rebuild marks staged in one transaction: with a commit per file,
 * a rebuild of 1,000,000 files took 250 s against 3 s for 100,000. A
 * crash loses nothing: the old index stays aside until the new one is
 * whole and synced. */
#define REBUILD_BATCH 1024

struct batch {
	struct fs *fs;
	struct idx_txn *txn; /* open while files wait in it */
	unsigned n;
	int rc; /* the first failure */
};

static void batch_flush(struct batch *b)
{
	if (b && b->txn) {
		int rc = idx_commit(b->txn);
		if (rc && !b->rc)
			b->rc = rc;
		b->txn = NULL;
		b->n = 0;
	}
}

static int rebuild_one(struct fs *fs, struct batch *b, int dirfd, const char *name,
		       const struct stat *st, const char *path);

/* Recovery's visit: what the tree says of a file the index does not know
 * (rebuild_file); drop an archived copy shadowed by a plain file. */
static int recover_file(void *arg, int dirfd, const char *name, const struct stat *st,
			const char *path)
{
	struct fs *fs = arg;
	struct idx_entry e;
	size_t nlen = strlen(name);

	if (fs_entry_get(fs, st->st_ino, &e) == -ENOENT)
		rebuild_one(fs, NULL, dirfd, name, st, path);
	else if (e.state == IDX_ARCHIVED && e.suffix[0] && nlen > strlen(e.suffix) &&
		 fs_has_archive_suffix(name))
		drop_shadowed(fs, dirfd, name, nlen - strlen(e.suffix), st->st_ino);
	return 0;
}

/* Recovery proper, on an opened state: finish or undo half-done commits,
 * drop unfinished outputs, and after an unclean end (fresh 1), or on a
 * tree the index has never seen, give every unknown file an entry so it is
 * archived too (fresh -1: never walk the tree). */
static int recover(struct fs *fs, int fresh)
{
	struct idx_txn *txn;
	int rc = fs_replace_recover(fs), old;

	if (rc)
		return rc;
	wipe_dir(fs->work_fd);
	/* files removed while open were kept in "hidden" by versions before
	 * 0.9; their handles are long gone */
	if ((old = openat(fs->meta_fd, "hidden", O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)) >=
	    0) {
		wipe_dir(old);
		close(old);
		unlinkat(fs->meta_fd, "hidden", AT_REMOVEDIR);
	}
	fs_prev_recover(fs);
	/* an index that has never seen the tree (new, or made before a first
	 * mount only to hold saved options) walks it whole */
	if (fresh < 0)
		return idx_sync(fs->idx);
	if (!fresh && idx_begin(fs->idx, 0, &txn) == 0) {
		char v[8];
		size_t n;
		fresh = idx_meta_get(txn, WALKED_KEY, v, sizeof(v), &n) != 0;
		idx_abort(txn);
	}
	if (fresh) {
		int wrc = fs_walk(fs->root_fd, recover_file, fs);
		if (wrc < 0)
			return wrc;
		if (idx_begin(fs->idx, 1, &txn) == 0) {
			if (idx_meta_put(txn, WALKED_KEY, "1", 1) == 0)
				idx_commit(txn);
			else
				idx_abort(txn);
		}
	}
	return idx_sync(fs->idx);
}

/* Containers whose files get ".mp4" or ".mkv" appended when archived. */
static int video_name(const char *name, size_t len)
{
	static const char *const exts[] = {".avi", ".mkv",  ".webm", ".mts", ".m2ts", ".ts",
					   ".mpg", ".mpeg", ".vob",  ".ogv", ".ogg",  ".wmv",
					   ".asf", ".flv",  ".3gp",  ".mp4", ".mov",  ".m4v"};

	for (size_t i = 0; i < sizeof(exts) / sizeof(exts[0]); i++) {
		size_t n = strlen(exts[i]);
		if (len > n && !strncasecmp(name + len - n, exts[i], n))
			return 1;
	}
	return 0;
}

/* Stage x_name of dirfd, a file whose logical path is path less its last
 * strip bytes (the suffix of the archive beside it). */
static void stage_beside(struct fs *fs, int dirfd, const char *x_name, const char *path,
			 size_t strip)
{
	char xp[FS_PATH_MAX];
	size_t pl = strlen(path) - strip;
	struct stat st;

	if (pl >= sizeof(xp) || fstatat(dirfd, x_name, &st, AT_SYMLINK_NOFOLLOW) == -1 ||
	    !S_ISREG(st.st_mode))
		return;
	memcpy(xp, path, pl);
	xp[pl] = '\0';
	fs_mark_staged(fs, st.st_ino, (uint64_t)st.st_size, xp);
}

/*
 * An archive Y and, under its logical name, a plain file X: what a crash of
 * the machine in the middle of a commit leaves (the index that journalled
 * it set aside as torn), or one of replacing an archived file by a plain
 * one. X made Y when its bytes are the original Y records (a commit got as
 * far as putting Y in place; X was synced before that): X goes, unless Y
 * fails its own checksum (intact 0), when the whole original is the copy to
 * keep. Otherwise X is the newer file, whole (synced before it got its
 * name): Y goes, and X is staged. Returns 1 when Y went.
 */
static int settle_pair(struct fs *fs, int dirfd, const char *y_name, size_t llen,
		       const struct codec_embedded *emb, int intact, const char *path)
{
	char x_name[NAME_MAX + 1];
	struct sum_file f = {0};
	struct stat st;
	int same;

	if (llen > NAME_MAX)
		return 0;
	memcpy(x_name, y_name, llen);
	x_name[llen] = '\0';
	if (fstatat(dirfd, x_name, &st, AT_SYMLINK_NOFOLLOW) == -1 || !S_ISREG(st.st_mode))
		return 0;
	same = emb->has && fs_sum_path(dirfd, x_name, &f) == 0 &&
	       !memcmp(f.whole, emb->orig_sum, SUM_LEN);
	sum_file_release(&f);
	if (same && intact) {
		if (unlinkat(dirfd, x_name, 0) == 0) {
			log_msg(LOG_INFO,
				"recovery: %s was archived as %s: the original is removed", x_name,
				y_name);
			fs_fsync_dir(dirfd);
		}
		return 0;
	}
	if (unlinkat(dirfd, y_name, 0) == -1)
		return 0;
	log_msg(LOG_INFO,
		same ? "recovery: %s is the original of %s, which is damaged: it is removed"
		     : "recovery: %s replaced %s, which is removed",
		x_name, path);
	fs_fsync_dir(dirfd);
	stage_beside(fs, dirfd, x_name, path, strlen(y_name) - llen);
	return 1;
}

/*
 * Rebuild's visit: what the tree alone says of a file. A HEIC that
 * codec_probe_archived recognises is an archived photo (its header item has
 * the figures); an MP4 that carries hevcfs's digests box, or "NAME.EXT.mp4"
 * / ".mkv" holding video where NAME.EXT names a video container, is an
 * archived video. Their checksums come from the file: checked against the
 * digests it carries where it carries them (a file that does not match is
 * flagged damaged), learnt as it is otherwise. Anything else is staged and
 * queued, so it is looked at again (and kept, or archived, as on first
 * write).
 */
static int rebuild_one(struct fs *fs, struct batch *b, int dirfd, const char *name,
		       const struct stat *st, const char *path)
{
	struct idx_entry e = {0};
	struct codec_result r;
	struct codec_embedded emb;
	struct sum_file f = {0};
	size_t n = strlen(name);
	struct idx_txn *txn;
	int fd, archived = 0, ok = 0;

	/* a file with an archive beside it is settled with that archive */
	if (fs_archive_beside(dirfd, name))
		return 0;
	fd = openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return 0;
	if (codec_embedded_sums(fd, &emb))
		emb.has = 0;
	if (n > 5 && !strcmp(name + n - 5, ".heic") && codec_probe_archived(fd, &r) == 0 &&
	    r.archived) {
		archived = 1;
		e.kind = IDX_KIND_PHOTO;
		e.orig_bytes = r.orig_bytes;
		e.view_bytes = r.view_bytes;
		e.quality = (uint32_t)r.quality;
		e.ssim = r.ssim;
		e.view_ssim = r.view_ssim;
		e.carries = r.carries;
		memcpy(e.scan_sum, r.scan_sum, SUM_LEN);
		if (r.view_own_size) {
			e.flags |= IDX_F_VIEW_OWN_SIZE;
			snprintf(e.reason, sizeof(e.reason), "view not the original's size: %s",
				 r.view_why);
		}
		snprintf(e.suffix, sizeof(e.suffix), ".heic");
	} else if (codec_sniff(fd) == CODEC_KIND_VIDEO &&
		   (emb.has ||
		    (n > 4 && (!strcmp(name + n - 4, ".mp4") || !strcmp(name + n - 4, ".mkv")) &&
		     video_name(name, n - 4)))) {
		archived = 1;
		e.kind = IDX_KIND_VIDEO;
		e.orig_bytes = emb.has ? emb.orig_bytes : (uint64_t)st->st_size;
		e.view_bytes = (uint64_t)st->st_size;
		/* a name of its own ("VID.MP4") or one with ".mp4" appended */
		if (n > 4 && (!strcmp(name + n - 4, ".mp4") || !strcmp(name + n - 4, ".mkv")) &&
		    video_name(name, n - 4))
			snprintf(e.suffix, sizeof(e.suffix), "%s", name + n - 4);
	}
	if (archived && (sum_file(fd, 1, 0, 0, NULL, NULL, &f) ||
			 (emb.has && codec_check_self_sum(fd, &emb, &ok))))
		archived = 0; /* unreadable: looked at again as a new file */
	close(fd);
	if (!archived && b && !fs_has_archive_suffix(name)) {
		int rc = b->txn ? 0 : idx_begin(fs->idx, 1, &b->txn);
		if (!rc)
			rc = fs_mark_staged_in(b->txn, st->st_ino, (uint64_t)st->st_size, path);
		if (rc && !b->rc)
			b->rc = rc;
		if (++b->n >= REBUILD_BATCH)
			batch_flush(b);
		goto out;
	}
	/* what follows has transactions of its own */
	batch_flush(b);
	if (!archived) {
		fs_mark_staged(fs, st->st_ino, (uint64_t)st->st_size, path);
		/* a file passed over because this one stands beside it */
		if (fs_has_archive_suffix(name)) {
			const char *dot = strrchr(name, '.');
			char x[NAME_MAX + 1];
			memcpy(x, name, (size_t)(dot - name));
			x[dot - name] = '\0';
			stage_beside(fs, dirfd, x, path, strlen(dot));
		}
		goto out;
	}
	if (e.suffix[0] &&
	    settle_pair(fs, dirfd, name, n - strlen(e.suffix), &emb, emb.has && ok, path))
		goto out;
	e.state = IDX_ARCHIVED;
	e.stored_bytes = (uint64_t)st->st_size;
	if (emb.has)
		memcpy(e.orig_sum, emb.orig_sum, SUM_LEN);
	if (emb.has && !ok)
		log_msg(LOG_ERR, "damaged: %s: does not match the checksum it carries", path);
	else if (!emb.has)
		log_msg(LOG_INFO, "rebuild: %s carries no checksum: learnt from it as it is", path);
	if (idx_begin(fs->idx, 1, &txn) == 0) {
		int rc = fs_sums_record(txn, st->st_ino, &e, &f);
		if (emb.has && !ok) {
			e.flags |= IDX_F_DAMAGED;
			e.checked = 0;
		}
		/* the origin of its original, by its logical path */
		char *logical = strdup(path);
		if (logical && e.suffix[0] && strlen(logical) > strlen(e.suffix))
			logical[strlen(logical) - strlen(e.suffix)] = '\0';
		if (!rc && idx_put(txn, st->st_ino, &e) == 0 &&
		    (!logical || (e.flags & IDX_F_DAMAGED) ||
		     idx_origin_put(txn, e.orig_sum, st->st_ino, logical) == 0))
			idx_commit(txn);
		else
			idx_abort(txn);
		free(logical);
	}
out:
	sum_file_release(&f);
	return 0;
}

/* A rebuild's visit (rebuild_one, batched). */
static int rebuild_file(void *arg, int dirfd, const char *name, const struct stat *st,
			const char *path)
{
	struct batch *b = arg;

	return rebuild_one(b->fs, b, dirfd, name, st, path);
}

int fs_rebuild(const struct fs_paths *p)
{
	struct fs_config cfg;
	struct fs fs = {.cfg = &cfg};
	struct idx_txn *txn;
	char *index = NULL, saved[IDX_META_MAX];
	size_t saved_len = 0;
	int lock_fd, fresh = 0, rc;

	fs_config_init(&cfg);
	rc = fs_open_state(&fs, p, &lock_fd, &fresh);
	if (rc)
		goto out;
	/* finish or undo interrupted commits with the old index first (the
	 * tree is walked once, below); keep the options it saved */
	rc = recover(&fs, -1);
	if (!rc && idx_begin(fs.idx, 0, &txn) == 0) {
		if (idx_meta_get(txn, FS_OPTIONS_KEY, saved, sizeof(saved), &saved_len))
			saved_len = 0;
		idx_abort(txn);
	}
	idx_close(fs.idx);
	fs.idx = NULL;
	if (rc)
		goto out;
	index = fs_index_dir(p);
	if (!index) {
		rc = -ENOMEM;
		goto out;
	}
	/* the old index stays aside until the new one is complete */
	rc = idx_set_aside(index);
	if (rc)
		goto out;
	rc = idx_open(index, 0, &fs.idx);
	if (rc)
		goto out;
	{
		struct batch b = {.fs = &fs};
		rc = fs_walk(fs.root_fd, rebuild_file, &b);
		batch_flush(&b);
		if (rc >= 0 && b.rc)
			rc = b.rc;
	}
	if (rc >= 0 && (rc = idx_begin(fs.idx, 1, &txn)) == 0) {
		if ((rc = idx_meta_put(txn, WALKED_KEY, "1", 1)) == 0 && saved_len)
			rc = idx_meta_put(txn, FS_OPTIONS_KEY, saved, saved_len);
		if (rc)
			idx_abort(txn);
		else
			rc = idx_commit(txn);
	}
	if (!rc)
		rc = idx_sync(fs.idx);
	if (!rc)
		idx_remove_aside(index);
out:
	free(index);
	fs_close_state(&fs);
	if (lock_fd >= 0)
		close(lock_fd);
	return rc;
}

int fs_recover(const struct fs_paths *p)
{
	struct fs_config cfg;
	struct fs fs = {.cfg = &cfg};
	int lock_fd, fresh = 0, rc;

	fs_config_init(&cfg);
	rc = fs_open_state(&fs, p, &lock_fd, &fresh);
	if (!rc)
		rc = recover(&fs, 1);
	fs_close_state(&fs);
	if (lock_fd >= 0)
		close(lock_fd);
	return rc;
}

int fs_is_mounted(const struct fs_paths *p)
{
	char *lock = join(p->state, FS_LOCK_NAME);
	int fd, busy = 0;

	if (lock && (fd = open(lock, O_RDONLY | O_CLOEXEC)) >= 0) {
		busy = flock(fd, LOCK_SH | LOCK_NB) == -1 && errno == EWOULDBLOCK;
		close(fd);
	}
	free(lock);
	return busy;
}

/* Give the mount at mnt (just made, its INIT not yet answered) a
 * readahead of kb KiB. The kernel gives a FUSE mount 128 KiB: a
 * sequential reader then has one or two requests in flight, and each
 * waits for its reply (and, with verify_reads, for its block's check).
 * The setting is the mount's bdi in sysfs, which only root may write;
 * the kernel caps it at the max_readahead the INIT reply gives (IO_MAX,
 * ops.c). */
static void set_readahead(const char *mnt, int kb)
{
	char line[PATH_MAX + 512], dev[32] = "", path[96];
	FILE *f;
	int fd;

	/* mnt is absolute and resolved (fuse_parse_cmdline); no path of the
	 * mount may be looked at here: the kernel holds every request until
	 * INIT is answered, and the loop that answers it has not started */
	if (kb <= 0 || mnt[0] != '/' || !(f = fopen("/proc/self/mountinfo", "re")))
		return;
	/* "ID PARENT MAJ:MIN ROOT MOUNTPOINT ...", the mount point with
	 * space, tab, newline and backslash as octal escapes; the last
	 * match is ours */
	while (fgets(line, sizeof(line), f)) {
		char majmin[32], point[PATH_MAX], *w = point;
		if (sscanf(line, "%*s %*s %31s %*s %4095s", majmin, point) != 2)
			continue;
		for (const char *r = point; *r; w++) {
			if (r[0] == '\\' && r[1] >= '0' && r[1] <= '3' && r[2] >= '0' &&
			    r[2] <= '7' && r[3] >= '0' && r[3] <= '7') {
				*w = (char)((r[1] - '0') << 6 | (r[2] - '0') << 3 | (r[3] - '0'));
				r += 4;
			} else {
				*w = *r++;
			}
		}
		*w = '\0';
		if (!strcmp(point, mnt))
			snprintf(dev, sizeof(dev), "%s", majmin);
	}
	fclose(f);
	if (!*dev)
		return;
	snprintf(path, sizeof(path), "/sys/class/bdi/%s/read_ahead_kb", dev);
	if ((fd = open(path, O_WRONLY | O_CLOEXEC)) < 0) {
		log_msg(LOG_DEBUG, "readahead stays the kernel's: %s: %s", path, strerror(errno));
		return;
	}
	if (dprintf(fd, "%d\n", kb) < 0)
		log_msg(LOG_DEBUG, "readahead stays the kernel's: %s", strerror(errno));
	close(fd);
}

/* Serve the session until it is unmounted (or a signal ends it): the
 * request threads as the command line asked. 0 or an error. */
static int serve(struct fs *fs, struct fuse_cmdline_opts *o)
{
	struct fuse_loop_config *lc;
	int rc;

	if (o->singlethread)
		return fuse_session_loop(fs->se);
	lc = fuse_loop_cfg_create();
	if (!lc)
		return -ENOMEM;
	fuse_loop_cfg_set_clone_fd(lc, (unsigned)o->clone_fd);
	fuse_loop_cfg_set_idle_threads(lc, o->max_idle_threads);
	fuse_loop_cfg_set_max_threads(lc, o->max_threads);
	rc = fuse_session_loop_mt(fs->se, lc);
	fuse_loop_cfg_destroy(lc);
	return rc;
}

int fs_mount(struct fs_config *cfg, const struct fs_paths *p, int argc, char *argv[])
{
	struct fs fs = {.cfg = cfg};
	struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
	struct fuse_cmdline_opts o = {0};
	char *index = NULL;
	int lock_fd, fresh = 0, dirty = 0, served = 0, clean = 0, rc, mounted = 0, handlers = 0;

	rc = fs_open_state(&fs, p, &lock_fd, &fresh);
	if (fs.state_fd >= 0 && rc != -EBUSY) {
		char *log = join(p->state, "log");
		if (log && log_open(log))
			log_msg(LOG_WARNING, "cannot open %s", log);
		free(log);
	}
	if (rc == -EBUSY) {
		log_msg(LOG_ERR, "%s is already mounted by another hevcfs", p->backing);
		goto out_close;
	}
	if (rc)
		goto out_close;
	rc = recover(&fs, fresh);
	if (rc) {
		log_msg(LOG_ERR, "recovery of %s failed: %s", p->backing, strerror(-rc));
		goto out_close;
	}
	/* LMDB handles must not cross fork(): the index is reopened in the
	 * daemon (op_init runs once the session has daemonized). */
	idx_close(fs.idx);
	fs.idx = NULL;
	fs_mutex_init(&fs.ns_lock, FS_LOCK_NS, "ns");
	fs_mutex_init(&fs.jobs_lock, FS_LOCK_JOBS, "jobs");
	fs_mutex_init(&fs.render_lock, FS_LOCK_LEAF, "render");
	fs_mutex_init(&fs.live_lock, FS_LOCK_LEAF, "live");
	fs_mutex_init(&fs.scrub_lock, FS_LOCK_LEAF, "scrub");
	pthread_cond_init(&fs.jobs_cond, NULL);
	pthread_cond_init(&fs.scrub_cond, NULL);
	pthread_cond_init(&fs.render_cond, NULL);
	index = fs_index_dir(p);
	if (!index || fs_nodes_new(&fs)) {
		log_msg(LOG_ERR, "out of memory");
		goto out_close;
	}
	fs.index_path = index;

	if (fuse_parse_cmdline(&args, &o) != 0 || !o.mountpoint) {
		log_msg(LOG_ERR, "no mountpoint given");
		goto out_close;
	}
	fs.se = fuse_session_new(&args, &fs_ops, sizeof(fs_ops), &fs);
	if (!fs.se)
		goto out_close;
	if (fuse_set_signal_handlers(fs.se) != 0)
		goto out_close;
	handlers = 1;
	/* the mark is durable before the mount can change anything */
	if ((rc = fs_dirty_set(fs.state_fd))) {
		log_msg(LOG_ERR, "%s: cannot mark the mount: %s", p->state, strerror(-rc));
		goto out_close;
	}
	dirty = 1;
	if (fuse_session_mount(fs.se, o.mountpoint) != 0)
		goto out_close;
	mounted = 1;
	set_readahead(o.mountpoint, cfg->readahead_kb);
	/* A new file's mode is masked by its creator's umask (new_mode in
	 * ops.c, FUSE_CAP_DONT_MASK) or, under a default ACL, by that ACL:
	 * the daemon's own umask must not mask it again, or a 0664 file made
	 * under umask 002 would land as 0644. Files of our
	 * own are created with explicit modes (0600/0700 in .hevcfs), and an
	 * archived copy takes its original's mode. */
	umask(0);
	if (fuse_daemonize(o.foreground) != 0)
		goto out_close;
	served = 1;
	rc = serve(&fs, &o) ? 1 : 0;
	/* the notify thread writes to the session's descriptor, which the
	 * unmount closes (and the number may be reused at once) */
	fs_threads_stop(&fs);
	fuse_session_unmount(fs.se);
	mounted = 0;
	/* a return at all is a clean end: everything was recorded; the mark
	 * goes once the index is closed (synced) */
	clean = 1;
	goto out_free;

out_close:
	rc = 1;
out_free:
	if (mounted)
		fuse_session_unmount(fs.se);
	if (handlers)
		fuse_remove_signal_handlers(fs.se);
	if (fs.se)
		fuse_session_destroy(fs.se); /* op_destroy: threads stopped */
	if (dirty && (clean || !served))
		fs_dirty_clear(fs.state_fd);
	fs_nodes_free(&fs);
	free(fs.rendering);
	free(fs.views_checked);
	free(index);
	free(o.mountpoint);
	fuse_opt_free_args(&args);
	fs_close_state(&fs);
	if (lock_fd >= 0)
		close(lock_fd);
	return rc;
}

/* State of an fs_list walk. */
struct lister {
	struct idx_txn *txn;
	int (*fn)(void *arg, const char *logical, const char *stored, const struct idx_entry *e);
	void *arg;
	char logical[FS_PATH_MAX + NAME_MAX + 2];
};

/* fs_list's visit: map the stored name to the logical one. */
static int list_file(void *arg, int dirfd, const char *name, const struct stat *st,
		     const char *path)
{
	struct lister *l = arg;
	struct idx_entry e;
	size_t plen = strlen(path), nlen = strlen(name), slen;
	int has = l->txn && idx_get(l->txn, st->st_ino, &e) == 0;

	(void)dirfd;
	memcpy(l->logical, path, plen + 1);
	slen = has ? strlen(e.suffix) : 0;
	if (has && e.state == IDX_ARCHIVED && slen && nlen > slen &&
	    !strcmp(name + nlen - slen, e.suffix))
		l->logical[plen - slen] = '\0';
	return l->fn(l->arg, l->logical, path, has ? &e : NULL);
}

int fs_list(const struct fs_paths *p,
	    int (*fn)(void *arg, const char *logical, const char *stored,
		      const struct idx_entry *e),
	    void *arg)
{
	struct lister *l = calloc(1, sizeof(*l));
	struct idx *idx = NULL;
	int root, rc = 0;

	if (!l) {
		rc = -ENOMEM;
		goto out;
	}
	root = open(p->backing, O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (root < 0) {
		rc = -errno;
		goto out;
	}
	if (fs_index_open(p, 1, &idx) == 0 && idx_begin(idx, 0, &l->txn) != 0)
		l->txn = NULL;
	l->fn = fn;
	l->arg = arg;
	rc = fs_walk(root, list_file, l);
	if (rc > 0)
		rc = 0;
	idx_abort(l->txn);
	idx_close(idx);
	close(root);
out:
	free(l);
	return rc;
}
