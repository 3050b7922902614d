/*
 * mount — opening a backing directory (state directory, lock, index),
 * recovery after a crash, and the FUSE main loop.
 */
#define FUSE_USE_VERSION 314
#include "internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <fuse.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#define LOCK_NAME "lock" /* flock()ed by the mount for its whole life */
#define DIRTY_NAME                                                                                 \
	"dirty" /* exists while mounted: its presence at mount                                     \
		   means the last mount did not end cleanly */
/* The meta key saying the index has seen the whole tree once. */
#define WALKED_KEY "walked"
/* The meta key of the options saved by the first mount (tools/options.c). */
#define OPTIONS_KEY "config"

void fs_config_init(struct fs_config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->settle_ms = 1000;
	cfg->view = FS_VIEW_LEGACY;
	cfg->cache_bytes = 1024ull << 20;
	cfg->verify_reads = 1;
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
	int *fds[] = {&fs->cache_fd, &fs->work_fd,  &fs->hidden_fd,
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

	fs->root_fd = fs->state_fd = fs->meta_fd = fs->work_fd = fs->cache_fd = fs->hidden_fd =
		fs->prev_fd = -1;
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
	*lock_fd = openat(fs->state_fd, LOCK_NAME, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (*lock_fd == -1) {
		rc = -errno;
		goto out;
	}
	if (flock(*lock_fd, LOCK_EX | LOCK_NB) == -1) {
		rc = errno == EWOULDBLOCK ? -EBUSY : -errno;
		goto out;
	}
	/* outputs and files removed while open are renamed to and from the
	 * tree: they live on BACKING's filesystem; the cache with the state */
	if ((rc = fs->work_fd = open_subdir(fs->meta_fd, "work")) < 0 ||
	    (rc = fs->hidden_fd = open_subdir(fs->meta_fd, "hidden")) < 0 ||
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
	if (fstatat(fs->state_fd, DIRTY_NAME, &st, 0) == 0)
		*fresh = 1;
	rc = idx_open(index, 0, &fs->idx);
out:
	free(index);
	return rc;
}

/* Roll one commit forward (the archived copy is in place and whole) or
 * back. An archived copy whose bytes are not the ones the intent recorded
 * is dropped while the original is still there; without the original it is
 * kept, flagged damaged. */
static int recover_intent(void *arg, const struct idx_intent *in)
{
	struct fs *fs = arg;
	const char *name;
	char target[NAME_MAX + 16];
	struct stat st;
	struct idx_txn *txn;
	struct sum_file f = {0};
	int parent = fs_open_parent(fs, in->path, &name), whole, original;

	if (parent < 0) {
		log_msg(LOG_WARNING, "recovery: %s: %s", in->path, strerror(-parent));
		goto out_forget;
	}
	snprintf(target, sizeof(target), "%s%s", name, in->entry.suffix);
	if (fstatat(parent, target, &st, AT_SYMLINK_NOFOLLOW) != 0 ||
	    (uint64_t)st.st_ino != in->archive_ino) {
		log_msg(LOG_INFO, "recovery: rolled back archiving %s (queued again)", in->path);
		goto out_close;
	}
	whole = fs_sum_path(parent, target, &f) == 0 &&
		(sum_is_zero(in->entry.sum) || !memcmp(f.whole, in->entry.sum, SUM_LEN));
	original = in->entry.suffix[0] && fstatat(parent, name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
		   (uint64_t)st.st_ino == in->staged_ino;
	if (!whole && original) {
		unlinkat(parent, target, 0);
		fs_fsync_dir(parent);
		log_msg(LOG_WARNING, "recovery: the archived copy of %s is not whole: rolled back",
			in->path);
		goto out_close;
	}
	/* forward: the archived copy is in place */
	if (idx_begin(fs->idx, 1, &txn) == 0) {
		struct idx_entry e = in->entry;
		if (whole)
			fs_sums_record(txn, in->archive_ino, &e, &f);
		else
			e.flags |= IDX_F_DAMAGED;
		idx_del(txn, in->staged_ino);
		idx_put(txn, in->archive_ino, &e);
		if (whole)
			idx_origin_put(txn, e.orig_sum, in->archive_ino, in->path);
		idx_queue_del(txn, in->staged_ino);
		idx_commit(txn);
		idx_sync(fs->idx);
	}
	if (original)
		unlinkat(parent, name, 0);
	fs_fsync_dir(parent);
	if (whole)
		log_msg(LOG_INFO, "recovery: finished archiving %s", in->path);
	else
		log_msg(LOG_ERR, "damaged: %s: its archived copy does not match its checksum",
			in->path);
out_close:
	sum_file_release(&f);
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

static int rebuild_file(void *arg, int dirfd, const char *name, const struct stat *st,
			const char *path);

/* Recovery's visit: what the tree says of a file the index does not know
 * (rebuild_file); drop an archived copy shadowed by a plain file. */
static int recover_file(void *arg, int dirfd, const char *name, const struct stat *st,
			const char *path)
{
	struct fs *fs = arg;
	struct idx_entry e;
	size_t nlen = strlen(name);

	if (fs_entry_get(fs, st->st_ino, &e) == -ENOENT)
		rebuild_file(fs, dirfd, name, st, path);
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
 * drop unfinished outputs, and after an unclean end (fresh 1), or on a
 * tree the index has never seen, give every unknown file an entry so it is
 * archived too (fresh -1: never walk the tree). */
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
static int rebuild_file(void *arg, int dirfd, const char *name, const struct stat *st,
			const char *path)
{
	struct fs *fs = arg;
	struct idx_entry e = {0};
	struct codec_result r;
	struct codec_embedded emb;
	struct sum_file f = {0};
	size_t n = strlen(name);
	struct idx_txn *txn;
	int fd, archived = 0, ok = 0;

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
	if (archived &&
	    (sum_file(fd, 1, 0, 0, NULL, NULL, &f) ||
	     (emb.has && codec_check_self_sum(fd, &emb, &ok))))
		archived = 0; /* unreadable: looked at again as a new file */
	close(fd);
	if (!archived) {
		fs_mark_staged(fs, st->st_ino, (uint64_t)st->st_size, path);
		goto out;
	}
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
		if (idx_meta_get(txn, OPTIONS_KEY, saved, sizeof(saved), &saved_len))
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
	rc = fs_walk(fs.root_fd, rebuild_file, &fs);
	if (rc >= 0 && (rc = idx_begin(fs.idx, 1, &txn)) == 0) {
		if ((rc = idx_meta_put(txn, WALKED_KEY, "1", 1)) == 0 && saved_len)
			rc = idx_meta_put(txn, OPTIONS_KEY, saved, saved_len);
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
	char *lock = join(p->state, LOCK_NAME);
	int fd, busy = 0;

	if (lock && (fd = open(lock, O_RDONLY | O_CLOEXEC)) >= 0) {
		busy = flock(fd, LOCK_SH | LOCK_NB) == -1 && errno == EWOULDBLOCK;
		close(fd);
	}
	free(lock);
	return busy;
}

int fs_mount(struct fs_config *cfg, const struct fs_paths *p, int argc, char *argv[])
{
	struct fs fs = {.cfg = cfg};
	char *index = NULL;
	int lock_fd, fresh = 0, dirty, rc;

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
	pthread_mutex_init(&fs.scrub_lock, NULL);
	pthread_cond_init(&fs.scrub_cond, NULL);
	pthread_cond_init(&fs.render_cond, NULL);
	fs.nodes_size = 4096;
	fs.nodes = calloc(fs.nodes_size, sizeof(*fs.nodes));
	index = fs_index_dir(p);
	if (!fs.nodes || !index) {
		rc = -ENOMEM;
		goto out_close;
	}
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
	free(fs.views_checked);
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
