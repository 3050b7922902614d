/*
 * mount — opening a backing directory (state directory, lock, index),
 * recovery after a crash, and the FUSE main loop.
 */
#define FUSE_USE_VERSION 314
#include "internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fuse.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#define LOCK_NAME "lock"   /* flock()ed by the mount for its whole life */
#define DIRTY_NAME "dirty" /* exists while mounted: its presence at mount
			      means the last mount did not end cleanly */
#define INDEX_NAME "index"

void fs_config_init(struct fs_config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->settle_ms = 1000;
	cfg->view = FS_VIEW_LEGACY;
	cfg->cache_bytes = 1024ull << 20;
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
	if (fs->cache_fd >= 0)
		close(fs->cache_fd);
	if (fs->work_fd >= 0)
		close(fs->work_fd);
	if (fs->hidden_fd >= 0)
		close(fs->hidden_fd);
	if (fs->state_fd >= 0)
		close(fs->state_fd);
	if (fs->root_fd >= 0)
		close(fs->root_fd);
	fs->root_fd = fs->state_fd = fs->work_fd = fs->cache_fd = fs->hidden_fd = -1;
	free(fs->work_dir);
	free(fs->cache_dir);
	fs->work_dir = fs->cache_dir = NULL;
}

/*
 * Open BACKING and its state directory (creating it), take the mount lock
 * (lock_fd, kept open by the caller) and open the index. *fresh is set when
 * the state directory did not exist or the last mount died.
 */
static int fs_open_state(struct fs *fs, const char *backing, int *lock_fd, int *fresh)
{
	char *state = join(backing, FS_STATE_DIR);
	char *index = state ? join(state, INDEX_NAME) : NULL;
	struct stat st;
	int rc;

	fs->root_fd = fs->state_fd = fs->work_fd = fs->cache_fd = fs->hidden_fd = -1;
	*lock_fd = -1;
	if (!index) {
		rc = -ENOMEM;
		goto out;
	}
	fs->root_fd = open(backing, O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (fs->root_fd == -1) {
		rc = -errno;
		log_msg(LOG_ERR, "%s: %s", backing, strerror(errno));
		goto out;
	}
	*fresh = fstatat(fs->root_fd, FS_STATE_DIR, &st, AT_SYMLINK_NOFOLLOW) == -1;
	if ((rc = ensure_dir(fs->root_fd, FS_STATE_DIR)))
		goto out;
	fs->state_fd = openat(fs->root_fd, FS_STATE_DIR, O_PATH | O_DIRECTORY | O_NOFOLLOW |
							     O_CLOEXEC);
	if (fs->state_fd == -1) {
		rc = -errno;
		goto out;
	}
	*lock_fd = openat(fs->state_fd, LOCK_NAME, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (*lock_fd == -1) {
		rc = -errno;
		goto out;
	}
	if (flock(*lock_fd, LOCK_EX | LOCK_NB) == -1) {
		rc = errno == EWOULDBLOCK ? -EBUSY : -errno;
		goto out;
	}
	if ((rc = ensure_dir(fs->state_fd, "work")) || (rc = ensure_dir(fs->state_fd, "cache")) ||
	    (rc = ensure_dir(fs->state_fd, "hidden")))
		goto out;
	fs->work_fd = openat(fs->state_fd, "work", O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	fs->cache_fd = openat(fs->state_fd, "cache", O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	fs->hidden_fd = openat(fs->state_fd, "hidden", O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	fs->work_dir = join(state, "work");
	fs->cache_dir = join(state, "cache");
	if (fs->work_fd == -1 || fs->cache_fd == -1 || fs->hidden_fd == -1 || !fs->work_dir ||
	    !fs->cache_dir) {
		rc = fs->work_fd == -1 || fs->cache_fd == -1 || fs->hidden_fd == -1 ? -errno : -ENOMEM;
		goto out;
	}
	if (fstatat(fs->state_fd, DIRTY_NAME, &st, 0) == 0)
		*fresh = 1;
	rc = idx_open(index, 0, &fs->idx);
out:
	free(index);
	free(state);
	return rc;
}

/* Roll one commit forward (the archived copy is in place) or back. */
static int recover_intent(void *arg, const struct idx_intent *in)
{
	struct fs *fs = arg;
	const char *name;
	char target[300];
	struct stat st;
	struct idx_txn *txn;
	int parent = fs_open_parent(fs, in->path, &name);

	if (parent < 0) {
		log_msg(LOG_WARNING, "recovery: %s: %s", in->path, strerror(-parent));
		goto out_forget;
	}
	snprintf(target, sizeof(target), "%s%s", name, in->entry.suffix);
	if (fstatat(parent, target, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
	    (uint64_t)st.st_ino == in->archive_ino) {
		/* forward: the archived copy is in place */
		if (idx_begin(fs->idx, 1, &txn) == 0) {
			idx_put(txn, in->archive_ino, &in->entry);
			idx_del(txn, in->staged_ino);
			idx_queue_del(txn, in->staged_ino);
			idx_commit(txn);
			idx_sync(fs->idx);
		}
		if (in->entry.suffix[0] && fstatat(parent, name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
		    (uint64_t)st.st_ino == in->staged_ino)
			unlinkat(parent, name, 0);
		fs_fsync_dir(parent);
		log_msg(LOG_INFO, "recovery: finished archiving %s", in->path);
	} else {
		log_msg(LOG_INFO, "recovery: rolled back archiving %s (queued again)", in->path);
	}
	close(parent);
out_forget:
	if (idx_begin(fs->idx, 1, &txn) == 0) {
		idx_intent_del(txn, in->staged_ino);
		idx_commit(txn);
	}
	return 0;
}

/* Remove every file in a directory of the state: unfinished outputs, and
 * files removed while open when the last mount ended. */
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

/*
 * Walk the backing tree below dirfd (BACKING itself at depth 0, where the
 * state directory is skipped), calling visit for every regular file with its
 * directory, name, stat and path relative to BACKING (in path, len bytes so
 * far, at most 4095). Symlinks are never followed; visit returning nonzero
 * stops the walk. Returns nonzero when stopped.
 */
typedef int (*walk_fn)(void *arg, int dirfd, const char *name, const struct stat *st,
		       const char *path);

static int walk(int dirfd, char *path, size_t len, int depth, walk_fn visit, void *arg)
{
	int fd = openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC), stop = 0;
	struct dirent *de;
	DIR *d;

	if (fd < 0 || !(d = fdopendir(fd))) {
		if (fd >= 0)
			close(fd);
		return 0;
	}
	while (!stop && (de = readdir(d))) {
		size_t nlen = strlen(de->d_name), sub = len + (len ? 1 : 0) + nlen;
		struct stat st;

		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..") ||
		    (depth == 0 && !strcmp(de->d_name, FS_STATE_DIR)) || sub > 4095 ||
		    fstatat(dirfd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) == -1)
			continue;
		if (len)
			path[len] = '/';
		memcpy(path + len + (len ? 1 : 0), de->d_name, nlen + 1);
		if (S_ISDIR(st.st_mode)) {
			int child = openat(dirfd, de->d_name,
					   O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
			if (child >= 0) {
				stop = walk(child, path, sub, depth + 1, visit, arg);
				close(child);
			}
		} else if (S_ISREG(st.st_mode)) {
			stop = visit(arg, dirfd, de->d_name, &st, path);
		}
		path[len] = '\0';
	}
	closedir(d);
	return stop;
}

/* Recovery's visit: give a file the index does not know an entry, staged
 * and queued; drop an archived copy shadowed by a plain file. */
static int recover_file(void *arg, int dirfd, const char *name, const struct stat *st,
			const char *path)
{
	struct fs *fs = arg;
	struct idx_entry e;
	size_t nlen = strlen(name);

	if (fs_entry_get(fs, st->st_ino, &e) == -ENOENT)
		fs_mark_staged(fs, st->st_ino, (uint64_t)st->st_size, path);
	else if (e.state == IDX_ARCHIVED && e.suffix[0] && nlen > strlen(e.suffix) &&
		 fs_has_archive_suffix(name))
		drop_shadowed(fs, dirfd, name, nlen - strlen(e.suffix), st->st_ino);
	return 0;
}

/* Intents are copied out of the read transaction before any is resolved. */
struct intents {
	struct idx_intent *v;
	size_t n;
};

static int intent_collect(void *arg, const struct idx_intent *in)
{
	struct intents *l = arg;
	struct idx_intent *g = realloc(l->v, (l->n + 1) * sizeof(*g));

	if (!g)
		return 1;
	l->v = g;
	l->v[l->n++] = *in;
	return 0;
}

/* Recovery proper, on an opened state: finish or undo half-done commits,
 * drop unfinished outputs, and after an unclean end (or on a tree new to
 * hevcfs) give every unknown file an entry so it is archived too. */
static int recover(struct fs *fs, int fresh)
{
	struct intents l = {0};
	struct idx_txn *txn;
	int rc = idx_begin(fs->idx, 0, &txn);

	if (rc)
		return rc;
	rc = idx_intent_each(txn, intent_collect, &l);
	idx_abort(txn);
	for (size_t i = 0; !rc && i < l.n; i++)
		recover_intent(fs, &l.v[i]);
	free(l.v);
	if (rc)
		return rc;
	wipe_dir(fs->work_fd);
	wipe_dir(fs->hidden_fd);
	if (fresh) {
		char *path = calloc(1, 4096);
		if (!path)
			return -ENOMEM;
		walk(fs->root_fd, path, 0, 0, recover_file, fs);
		free(path);
	}
	return idx_sync(fs->idx);
}

/* Containers whose files get ".mp4" or ".mkv" appended when archived. */
static int video_name(const char *name, size_t len)
{
	static const char *const exts[] = {".avi", ".mkv", ".webm", ".mts", ".m2ts", ".ts",
					   ".mpg", ".mpeg", ".vob", ".ogv", ".ogg", ".wmv",
					   ".asf", ".flv", ".3gp", ".mp4", ".mov", ".m4v"};

	for (size_t i = 0; i < sizeof(exts) / sizeof(exts[0]); i++) {
		size_t n = strlen(exts[i]);
		if (len > n && !strncasecmp(name + len - n, exts[i], n))
			return 1;
	}
	return 0;
}

/*
 * Rebuild's visit: what the tree alone says of a file. A HEIC that
 * codec_probe_archived recognises is an archived photo (its header item has
 * the figures); "NAME.EXT.mp4"/".mkv" holding video, where NAME.EXT names a
 * video container, is an archived video; anything else is staged and queued,
 * so it is looked at again (and kept, or archived, as on first write).
 */
static int rebuild_file(void *arg, int dirfd, const char *name, const struct stat *st,
			const char *path)
{
	struct fs *fs = arg;
	struct idx_entry e = {0};
	struct codec_result r;
	size_t n = strlen(name);
	struct idx_txn *txn;
	int fd, archived = 0;

	fd = openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return 0;
	if (n > 5 && !strcmp(name + n - 5, ".heic") && codec_probe_archived(fd, &r) == 0 &&
	    r.archived) {
		archived = 1;
		e.orig_bytes = r.orig_bytes;
		e.view_bytes = r.view_bytes;
		e.quality = (uint32_t)r.quality;
		e.ssim = r.ssim;
		e.view_ssim = r.view_ssim;
		snprintf(e.suffix, sizeof(e.suffix), ".heic");
	} else if (n > 4 && (!strcmp(name + n - 4, ".mp4") || !strcmp(name + n - 4, ".mkv")) &&
		   video_name(name, n - 4) && codec_sniff(fd) == CODEC_KIND_VIDEO) {
		archived = 1;
		e.orig_bytes = e.view_bytes = (uint64_t)st->st_size;
		snprintf(e.suffix, sizeof(e.suffix), "%s", name + n - 4);
	}
	close(fd);
	if (!archived) {
		fs_mark_staged(fs, st->st_ino, (uint64_t)st->st_size, path);
		return 0;
	}
	e.state = IDX_ARCHIVED;
	e.stored_bytes = (uint64_t)st->st_size;
	if (idx_begin(fs->idx, 1, &txn) == 0) {
		if (idx_put(txn, st->st_ino, &e) == 0)
			idx_commit(txn);
		else
			idx_abort(txn);
	}
	return 0;
}

int fs_rebuild(const char *backing)
{
	struct fs_config cfg;
	struct fs fs = {.cfg = &cfg};
	char *path = NULL, *index = NULL, *old = NULL;
	int lock_fd, fresh = 0, rc;

	fs_config_init(&cfg);
	rc = fs_open_state(&fs, backing, &lock_fd, &fresh);
	if (rc)
		goto out;
	/* finish or undo interrupted commits with the old index first */
	rc = recover(&fs, 0);
	idx_close(fs.idx);
	fs.idx = NULL;
	if (rc)
		goto out;
	index = join(backing, FS_STATE_DIR "/" INDEX_NAME);
	old = join(backing, FS_STATE_DIR "/" INDEX_NAME ".old");
	path = calloc(1, 4352);
	if (!index || !old || !path) {
		rc = -ENOMEM;
		goto out;
	}
	/* the old index stays aside until the new one is complete */
	if (rename(index, old) == -1 && errno != ENOENT) {
		rc = -errno;
		goto out;
	}
	rc = idx_open(index, 0, &fs.idx);
	if (rc)
		goto out;
	walk(fs.root_fd, path, 0, 0, rebuild_file, &fs);
	rc = idx_sync(fs.idx);
	if (!rc) {
		unlinkat(fs.state_fd, INDEX_NAME ".old/data.mdb", 0);
		unlinkat(fs.state_fd, INDEX_NAME ".old/lock.mdb", 0);
		unlinkat(fs.state_fd, INDEX_NAME ".old", AT_REMOVEDIR);
	}
out:
	free(path);
	free(index);
	free(old);
	fs_close_state(&fs);
	if (lock_fd >= 0)
		close(lock_fd);
	return rc;
}

int fs_recover(const char *backing)
{
	struct fs_config cfg;
	struct fs fs = {.cfg = &cfg};
	int lock_fd, fresh = 0, rc;

	fs_config_init(&cfg);
	rc = fs_open_state(&fs, backing, &lock_fd, &fresh);
	if (!rc)
		rc = recover(&fs, 1);
	fs_close_state(&fs);
	if (lock_fd >= 0)
		close(lock_fd);
	return rc;
}

int fs_is_mounted(const char *backing)
{
	char *state = join(backing, FS_STATE_DIR), *lock = state ? join(state, LOCK_NAME) : NULL;
	int fd, busy = 0;

	if (lock && (fd = open(lock, O_RDONLY | O_CLOEXEC)) >= 0) {
		busy = flock(fd, LOCK_SH | LOCK_NB) == -1 && errno == EWOULDBLOCK;
		close(fd);
	}
	free(lock);
	free(state);
	return busy;
}

int fs_mount(struct fs_config *cfg, int argc, char *argv[])
{
	struct fs fs = {.cfg = cfg};
	char *index = NULL;
	int lock_fd, fresh = 0, dirty, rc;

	rc = fs_open_state(&fs, cfg->backing, &lock_fd, &fresh);
	if (fs.state_fd >= 0 && rc != -EBUSY) {
		char *log = join(cfg->backing, FS_STATE_DIR "/log");
		if (log && log_open(log))
			log_msg(LOG_WARNING, "cannot open %s", log);
		free(log);
	}
	if (rc == -EBUSY) {
		log_msg(LOG_ERR, "%s is already mounted by another hevcfs", cfg->backing);
		goto out_close;
	}
	if (rc)
		goto out_close;
	rc = recover(&fs, fresh);
	if (rc) {
		log_msg(LOG_ERR, "recovery of %s failed: %s", cfg->backing, strerror(-rc));
		goto out_close;
	}
	/* LMDB handles must not cross fork(): the index is reopened in the
	 * daemon (op_init runs after fuse_main daemonizes). */
	idx_close(fs.idx);
	fs.idx = NULL;
	dirty = openat(fs.state_fd, DIRTY_NAME, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
	if (dirty >= 0)
		close(dirty);
	pthread_mutex_init(&fs.ns_lock, NULL);
	pthread_mutex_init(&fs.nodes_lock, NULL);
	pthread_mutex_init(&fs.jobs_lock, NULL);
	pthread_cond_init(&fs.jobs_cond, NULL);
	pthread_mutex_init(&fs.links_lock, NULL);
	pthread_cond_init(&fs.links_cond, NULL);
	pthread_mutex_init(&fs.render_lock, NULL);
	pthread_cond_init(&fs.render_cond, NULL);
	fs.nodes_size = 4096;
	fs.nodes = calloc(fs.nodes_size, sizeof(*fs.nodes));
	index = malloc(strlen(cfg->backing) + sizeof("/" FS_STATE_DIR "/" INDEX_NAME));
	if (!fs.nodes || !index) {
		rc = -ENOMEM;
		goto out_close;
	}
	sprintf(index, "%s/%s/%s", cfg->backing, FS_STATE_DIR, INDEX_NAME);
	fs.index_path = index;

	/* The kernel has applied the caller's umask to every mode it hands us
	 * (no FUSE_CAP_DONT_MASK): the daemon's own must not mask it again, or
	 * a 0664 file made under umask 002 would land as 0644. Files of our
	 * own are created with explicit modes (0600/0700 in .hevcfs), and an
	 * archived copy takes its original's mode. */
	umask(0);
	rc = fuse_main(argc, argv, &fs_ops, &fs) ? 1 : 0;
	/* a return at all is a clean end: everything was recorded */
	unlinkat(fs.state_fd, DIRTY_NAME, 0);
	goto out_free;

out_close:
	rc = 1;
out_free:
	if (fs.nodes)
		fs_nodes_free(&fs);
	free(fs.nodes);
	free(fs.rendering);
	free(index);
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
	char logical[4352];
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

int fs_list(const char *backing,
	    int (*fn)(void *arg, const char *logical, const char *stored,
		      const struct idx_entry *e),
	    void *arg)
{
	struct lister *l = calloc(1, sizeof(*l));
	char *state = join(backing, FS_STATE_DIR), *index = state ? join(state, INDEX_NAME) : NULL;
	char *path = calloc(1, 4352);
	struct idx *idx = NULL;
	int root, rc = 0;

	if (!l || !index || !path) {
		rc = -ENOMEM;
		goto out;
	}
	root = open(backing, O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (root < 0) {
		rc = -errno;
		goto out;
	}
	if (idx_open(index, 1, &idx) == 0 && idx_begin(idx, 0, &l->txn) != 0)
		l->txn = NULL;
	l->fn = fn;
	l->arg = arg;
	walk(root, path, 0, 0, list_file, l);
	idx_abort(l->txn);
	idx_close(idx);
	close(root);
out:
	free(path);
	free(index);
	free(state);
	free(l);
	return rc;
}
