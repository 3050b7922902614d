/*
 * ops — the FUSE operations: a passthrough to the backing tree through
 * directory fds (no path can leave BACKING), plus the mapping of archived
 * files to their logical names and views, and the staging hooks that queue
 * written files for archiving.
 */
#define FUSE_USE_VERSION 314
#include "internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fuse.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/xattr.h>
#include <unistd.h>

/* What fi->fh points at: the kernel hands directory handles to setattr and
 * getattr too (fchmod, futimens, fstat on a directory fd), so both kinds
 * start with their kind. */
enum { HANDLE_FILE = 0x46494c45, HANDLE_DIR = 0x44495220 };

/* An open file. */
struct handle {
	int kind;	   /* HANDLE_FILE */
	int fd;		   /* where the bytes are read and written */
	int bfd;	   /* the backing file (differs from fd for a rendered view) */
	struct node *node; /* writers only */
	int writable;
	int staged; /* the index already says "staged" */
	int linked; /* the file has other names (links.c) */
	uint64_t ino;
};

/* An open directory, read in a stream. */
struct dirh {
	int kind; /* HANDLE_DIR */
	DIR *dir;
	int root;	     /* the mount's root: hide the state directory */
	off_t pos;	     /* telldir() after the last entry returned */
	struct dirent *held; /* read but not yet passed to the filler */
};

static struct fs *fs_get(void)
{
	return fuse_get_context()->private_data;
}

/* The file handle of fi, or NULL when there is none or it is a directory's. */
static struct handle *fh_of(struct fuse_file_info *fi)
{
	struct handle *h = fi ? (struct handle *)(uintptr_t)fi->fh : NULL;

	return h && h->kind == HANDLE_FILE ? h : NULL;
}

/* The backing fd an attribute change through fi applies to (a file's or a
 * directory's), or -1 when fi carries none. */
static int attr_fd(struct fuse_file_info *fi)
{
	int *kind = fi ? (int *)(uintptr_t)fi->fh : NULL;

	if (!kind)
		return -1;
	if (*kind == HANDLE_FILE)
		return ((struct handle *)kind)->bfd;
	return dirfd(((struct dirh *)kind)->dir);
}

/* Can st have other names the kernel caches apart (a hard link)? Any
 * file but a directory: FIFOs, sockets, devices and symlinks too. */
static int linkable(const struct stat *st)
{
	return !S_ISDIR(st->st_mode) && st->st_nlink > 1;
}

/* A file that changed, seen through st: if it has other names, the kernel
 * must forget what it cached for them. */
static void changed(struct fs *fs, const struct stat *st, const char *path)
{
	if (linkable(st))
		fs_links_changed(fs, st->st_ino, path);
}

/* The same through an fd. */
static void changed_fd(struct fs *fs, int fd, const char *path)
{
	struct stat st;

	if (fstat(fd, &st) == 0)
		changed(fs, &st, path);
}

/* Strip leading slashes: index and queue paths are relative. */
static const char *rel(const char *path)
{
	while (*path == '/')
		path++;
	return path;
}

/* A new object belongs to the caller, as on a local disk (when we can). The
 * group follows a set-gid parent directory. */
static void own_new(int parent, const char *name)
{
	struct fuse_context *ctx = fuse_get_context();
	struct stat pst;
	gid_t gid = ctx->gid;

	if (geteuid() != 0)
		return;
	if (fstat(parent, &pst) == 0 && (pst.st_mode & S_ISGID))
		gid = pst.st_gid;
	if (ctx->uid == geteuid() && gid == getegid())
		return; /* created so already */
	if (fchownat(parent, name, ctx->uid, gid, AT_SYMLINK_NOFOLLOW) == -1)
		log_msg(LOG_WARNING, "cannot give %s to uid %u: %s", name, ctx->uid,
			strerror(errno));
}

/* The stat the mount shows for a looked-up file. */
static void logical_stat(const struct fs_lookup *lk, struct stat *st)
{
	*st = lk->st;
	if (lk->archived)
		st->st_size = (off_t)lk->e.view_bytes;
}

/*
 * What a file removed while open shows. libfuse keeps it under a hidden name
 * (hide_file), a link the file does not really have: no name counts the
 * hidden ones. libfuse itself takes one off when it answers a getattr of a
 * hidden name, but not when it answers an attribute change (fchmod,
 * ftruncate, ...) through one. A file with no name left shows 0 either way;
 * a hard-linked file that lost one of its names may show a count off by one
 * through that name's descriptor (which answer it gets depends on the
 * request, which the path-based API does not tell). A photo read as its
 * view keeps the view's size.
 */
static void shown_stat(struct fs *fs, const struct fs_lookup *lk, struct stat *st)
{
	if (!S_ISREG(st->st_mode) || (!lk->hidden && st->st_nlink < 2))
		return; /* the hot path: nothing of it can be hidden */
	st->st_nlink = fs_node_nlink(fs, st->st_ino, st->st_nlink);
	if (lk->hidden && st->st_nlink > 0)
		st->st_nlink++; /* for libfuse to take off */
	if (lk->hidden) {
		int64_t size = fs_node_hidden_size(fs, st->st_ino);
		if (size >= 0)
			st->st_size = (off_t)size;
	}
}

static int op_getattr(const char *path, struct stat *st, struct fuse_file_info *fi)
{
	struct fs *fs = fs_get();
	struct fs_lookup lk;
	int rc;

	if (attr_fd(fi) >= 0) {
		struct handle *h = fh_of(fi);
		if (fstat(attr_fd(fi), st) == -1)
			return -errno;
		if (h && h->fd != h->bfd) {
			/* a view: the backing file's inode and blocks, the view's size */
			struct stat vst;
			if (fstat(h->fd, &vst) == -1)
				return -errno;
			st->st_size = vst.st_size;
		}
		if (h && S_ISREG(st->st_mode))
			st->st_nlink = fs_node_nlink(fs, h->ino, st->st_nlink);
		return 0;
	}
	if (!path)
		return -ESTALE;
	if (!strcmp(path, "/"))
		return fstat(fs->root_fd, st) == -1 ? -errno : 0;
	rc = fs_lookup(fs, path, &lk);
	if (rc)
		return rc;
	close(lk.parent);
	logical_stat(&lk, st);
	shown_stat(fs, &lk, st);
	if (!lk.hidden && linkable(st))
		fs_links_note(fs, st->st_ino, path);
	return 0;
}

static int op_readlink(const char *path, char *buf, size_t size)
{
	struct fs_lookup lk;
	ssize_t n;
	int rc = fs_lookup(fs_get(), path, &lk);

	if (rc)
		return rc;
	n = readlinkat(lk.parent, lk.name, buf, size - 1);
	rc = n == -1 ? -errno : 0;
	close(lk.parent);
	if (n >= 0)
		buf[n] = '\0';
	return rc;
}

/* Open the parent of a name about to be created, refusing the state
 * directory and names that would shadow an archived file. */
static int create_parent(struct fs *fs, const char *path, const char **name)
{
	struct fs_lookup lk;
	int rc;

	if (fs_path_reserved(path))
		return -EPERM;
	rc = fs_lookup_for_create(fs, path, &lk);
	if (rc == 0) {
		close(lk.parent);
		return -EEXIST;
	}
	if (rc != -ENOENT || lk.parent < 0)
		return rc;
	*name = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
	return lk.parent;
}

static int op_mknod(const char *path, mode_t mode, dev_t rdev)
{
	struct fs *fs = fs_get();
	const char *name;
	int parent = create_parent(fs, path, &name), rc = 0;

	if (parent < 0)
		return parent;
	if (S_ISREG(mode)) {
		int fd = openat(parent, name, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, mode);
		if (fd == -1) {
			rc = -errno;
		} else {
			struct stat st;
			own_new(parent, name);
			if (fstat(fd, &st) == 0)
				fs_mark_staged(fs, st.st_ino, 0, path);
			close(fd);
			/* an empty file settles like any other */
			struct node *n = fs_node_get(fs, st.st_ino);
			if (n) {
				fs_node_writer_open(fs, n, path);
				fs_node_touch(fs, n);
				fs_node_writer_close(fs, n, path);
				fs_node_put(fs, n);
			}
		}
	} else if (S_ISFIFO(mode)) {
		rc = mkfifoat(parent, name, mode) == -1 ? -errno : 0;
	} else {
		rc = mknodat(parent, name, mode, rdev) == -1 ? -errno : 0;
	}
	if (!rc && !S_ISREG(mode))
		own_new(parent, name);
	close(parent);
	return rc;
}

static int op_mkdir(const char *path, mode_t mode)
{
	const char *name;
	int parent = create_parent(fs_get(), path, &name), rc;

	if (parent < 0)
		return parent;
	rc = mkdirat(parent, name, mode) == -1 ? -errno : 0;
	if (!rc)
		own_new(parent, name);
	close(parent);
	return rc;
}

/* Forget everything hevcfs knows about a backing file that no longer has a
 * name. */
static void forget_file(struct fs *fs, uint64_t ino)
{
	struct idx_txn *txn;
	struct idx_entry e = {0};

	fs_node_gone(fs, ino);
	fs_view_drop(fs, ino);
	if (idx_begin(fs->idx, 1, &txn) == 0) {
		if (idx_get(txn, ino, &e))
			e.prev = 0;
		idx_del(txn, ino);
		idx_queue_del(txn, ino);
		idx_commit(txn);
	}
	fs_prev_drop(fs, ino, e.prev); /* an archive it replaced goes with it */
}

/* Does src, renamed over the archived dst, settle into a job that may find
 * it is dst's original again (a file being written: staged or pending)? */
static int replaces_archive(struct fs *fs, const struct fs_lookup *src,
			    const struct fs_lookup *dst)
{
	struct idx_entry e;

	return dst->archived && S_ISREG(src->st.st_mode) && src->st.st_nlink == 1 &&
	       fs_entry_get(fs, src->st.st_ino, &e) == 0 &&
	       (e.state == IDX_STAGED || e.state == IDX_PENDING);
}

static int op_unlink(const char *path)
{
	struct fs *fs = fs_get();
	struct fs_lookup lk;
	int rc;

	pthread_mutex_lock(&fs->ns_lock);
	rc = fs_lookup(fs, path, &lk);
	if (rc) {
		/* libfuse removing a hidden file that its last close removed */
		if (rc == -ENOENT && fs_hidden_name(fs_basename(path)))
			rc = 0;
		goto out_unlock;
	}
	if (unlinkat(lk.parent, lk.name, 0) == -1) {
		rc = -errno;
	} else if (S_ISREG(lk.st.st_mode) &&
		   (lk.hidden ? lk.st.st_nlink : fs_node_nlink(fs, lk.st.st_ino, lk.st.st_nlink)) <=
		       1) {
		/* the last name; a hidden one is the last link */
		if (lk.hidden)
			fs_node_hidden_link(fs, lk.st.st_ino, lk.name, -1, -1);
		forget_file(fs, lk.st.st_ino);
	} else {
		if (lk.hidden)
			fs_node_hidden_link(fs, lk.st.st_ino, lk.name, -1, -1);
		changed(fs, &lk.st, path);
	}
	close(lk.parent);
out_unlock:
	pthread_mutex_unlock(&fs->ns_lock);
	return rc;
}

static int op_rmdir(const char *path)
{
	struct fs *fs = fs_get();
	struct fs_lookup lk;
	int rc;

	pthread_mutex_lock(&fs->ns_lock);
	rc = fs_lookup(fs, path, &lk);
	if (!rc) {
		rc = unlinkat(lk.parent, lk.name, AT_REMOVEDIR) == -1 ? -errno : 0;
		close(lk.parent);
	}
	pthread_mutex_unlock(&fs->ns_lock);
	return rc;
}

static int op_symlink(const char *target, const char *path)
{
	const char *name;
	int parent = create_parent(fs_get(), path, &name), rc;

	if (parent < 0)
		return parent;
	rc = symlinkat(target, parent, name) == -1 ? -errno : 0;
	if (!rc)
		own_new(parent, name);
	close(parent);
	return rc;
}

/*
 * Is the rename from -> to libfuse hiding a file removed while open? It
 * renames the file within its directory to ".fuse_hidden%08x%08x", the
 * second number a counter of its own that only grows (by one a try), and
 * only while the file is open. A name somebody gives a file (a leftover of
 * another FUSE filesystem, say) has none of that together, and stays an
 * ordinary rename. Caller holds ns_lock, which guards fs->hide_seen.
 */
static int is_hide(struct fs *fs, const char *from, const char *to, const struct fs_lookup *src,
		   unsigned int flags)
{
	const char *name = fs_basename(to);
	size_t dlen = (size_t)(name - to);
	unsigned int count;
	int32_t ahead;

	if (flags || src->hidden || !S_ISREG(src->st.st_mode) || !fs_hidden_name(name) ||
	    dlen != (size_t)(fs_basename(from) - from) || memcmp(from, to, dlen) != 0)
		return 0;
	count = (unsigned int)strtoul(name + strlen(name) - 8, NULL, 16);
	/* tries of other threads may arrive a little out of order */
	ahead = (int32_t)(count - fs->hide_seen);
	if (ahead < -256 || ahead > 1024)
		return 0;
	/* open: this inode, or the one a reader holds that the archive
	 * replaced under the same name */
	if (!fs_node_is_open(fs, src->st.st_ino) && !fs_path_is_open(fs, from))
		return 0;
	if (ahead > 0)
		fs->hide_seen = count;
	return 1;
}

/*
 * libfuse's removal of a file that is still open (is_hide): it answers
 * fstat() through the hidden name and removes it at the last close. The
 * file waits in the hidden directory under a key naming its directory, out
 * of every listing (the directory can be removed), and is no longer in the
 * index: nothing is archived from it. Caller holds ns_lock.
 */
static int hide_file(struct fs *fs, struct fs_lookup *src, const char *from, const char *to)
{
	nlink_t names = fs_node_nlink(fs, src->st.st_ino, src->st.st_nlink);
	char key[64];
	int rc = fs_hidden_key(src->parent, fs_basename(to), key, sizeof(key));

	if (rc)
		return rc;
	if (renameat2(src->parent, src->name, fs->hidden_fd, key, RENAME_NOREPLACE) == -1) {
		if (errno == ENOENT)
			return -ENOENT;
		/* another filesystem mounted inside BACKING (EXDEV), or no room
		 * for the name: remove the file now, as a local disk would;
		 * only fstat() through the mount loses it */
		log_msg(LOG_WARNING, "cannot keep %s open after its removal: %s", from,
			strerror(errno));
		if (unlinkat(src->parent, src->name, 0) == -1)
			return -errno;
	} else {
		/* a photo read as its view keeps showing the view's size */
		fs_node_hidden_link(fs, src->st.st_ino, key, 1,
				    src->archived ? (int64_t)src->e.view_bytes : -1);
	}
	/* the name is gone: no node (an open original the archive replaced
	 * under it, say) may stand for it any more */
	fs_nodes_forget_path(fs, from);
	if (names <= 1)
		forget_file(fs, src->st.st_ino);
	else
		changed(fs, &src->st, from);
	return 0;
}

/* The name paths pass through while two are exchanged. */
#define EXCHANGE_TMP "\x01\x02hevcfs exchange\x02\x01"

static int op_rename(const char *from, const char *to, unsigned int flags)
{
	struct fs *fs = fs_get();
	struct fs_lookup src, dst;
	const char *to_name;
	char target[NAME_MAX + 16];
	int to_parent = -1, have_dst, rc;

	if (flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE))
		return -EINVAL;
	if (fs_path_reserved(to))
		return -EPERM;
	pthread_mutex_lock(&fs->ns_lock);
	rc = fs_lookup(fs, from, &src);
	if (rc)
		goto out_unlock;
	if (is_hide(fs, from, to, &src, flags)) {
		rc = hide_file(fs, &src, from, to);
		goto out_src;
	}
	to_parent = fs_open_parent(fs, to, &to_name);
	if (to_parent < 0) {
		rc = to_parent;
		goto out_src;
	}
	if (strlen(to_name) > NAME_MAX) {
		rc = -ENAMETOOLONG;
		goto out_close;
	}
	/* an archived copy keeps its suffix under its new name */
	size_t slen = strlen(src.name),
	       llen = strlen(from) - (size_t)(strrchr(from, '/') - from) - 1;
	const char *suffix = src.name + (slen > llen ? llen : slen);
	if (snprintf(target, sizeof(target), "%s%s", to_name, suffix) > NAME_MAX) {
		rc = -ENAMETOOLONG;
		goto out_close;
	}
	have_dst = fs_lookup(fs, to, &dst) == 0;
	if (have_dst && strcmp(dst.name, target) != 0) {
		/* the logical target is stored under another name */
		if (flags & RENAME_NOREPLACE) {
			rc = -EEXIST;
		} else if (flags & RENAME_EXCHANGE) {
			rc = -EINVAL;
		} else if (S_ISDIR(src.st.st_mode) && !S_ISDIR(dst.st.st_mode)) {
			rc = -ENOTDIR;
		} else if (!S_ISDIR(src.st.st_mode) && S_ISDIR(dst.st.st_mode)) {
			rc = -EISDIR;
		} else if (src.st.st_ino == dst.st.st_ino) {
			rc = 0;
		} else if (renameat2(src.parent, src.name, to_parent, target, RENAME_NOREPLACE) ==
			   -1) {
			rc = -errno;
		} else if (!(replaces_archive(fs, &src, &dst) &&
			     fs_prev_keep(fs, dst.parent, dst.name, dst.st.st_ino, src.st.st_ino) ==
				     0)) {
			/* (an archive replaced by a file being written waits
			 * aside: the new bytes may be its original again) */
			if (unlinkat(dst.parent, dst.name, 0) == -1)
				log_msg(LOG_ERR, "rename: cannot remove replaced %s: %s", to,
					strerror(errno));
			else if (S_ISREG(dst.st.st_mode) && dst.st.st_nlink <= 1)
				forget_file(fs, dst.st.st_ino);
		}
	} else if (src.archived && suffix[0] && (flags & RENAME_EXCHANGE)) {
		rc = -EINVAL; /* exchanging stored names would swap their suffixes */
	} else if (renameat2(src.parent, src.name, to_parent, target, flags) == -1) {
		rc = -errno;
	} else if (have_dst && !(flags & RENAME_EXCHANGE) && S_ISREG(dst.st.st_mode) &&
		   dst.st.st_nlink <= 1 && dst.st.st_ino != src.st.st_ino) {
		forget_file(fs, dst.st.st_ino);
	} else if (have_dst && dst.st.st_ino != src.st.st_ino) {
		changed(fs, &dst.st, NULL);
	}
	if (have_dst)
		close(dst.parent);
	if (!rc) {
		struct idx_txn *txn;
		if (idx_begin(fs->idx, 1, &txn) == 0) {
			if (flags & RENAME_EXCHANGE) {
				/* through a name no real path will have */
				idx_queue_rename(txn, rel(from), EXCHANGE_TMP);
				idx_queue_rename(txn, rel(to), rel(from));
				idx_queue_rename(txn, EXCHANGE_TMP, rel(to));
				idx_origins_rename(txn, rel(from), EXCHANGE_TMP);
				idx_origins_rename(txn, rel(to), rel(from));
				idx_origins_rename(txn, EXCHANGE_TMP, rel(to));
			} else {
				idx_queue_rename(txn, rel(from), rel(to));
				idx_origins_rename(txn, rel(from), rel(to));
			}
			idx_commit(txn);
		}
		if (flags & RENAME_EXCHANGE) {
			fs_nodes_rename(fs, from, EXCHANGE_TMP);
			fs_nodes_rename(fs, to, from);
			fs_nodes_rename(fs, EXCHANGE_TMP, to);
		} else {
			fs_nodes_rename(fs, from, to);
		}
	}
out_close:
	close(to_parent);
out_src:
	close(src.parent);
out_unlock:
	pthread_mutex_unlock(&fs->ns_lock);
	return rc;
}

static int op_link(const char *from, const char *to)
{
	struct fs *fs = fs_get();
	struct fs_lookup src;
	const char *name;
	char target[NAME_MAX + 16];
	int parent, rc;

	parent = create_parent(fs, to, &name);
	if (parent < 0)
		return parent;
	rc = fs_lookup(fs, from, &src);
	if (rc)
		goto out_close;
	size_t slen = strlen(src.name),
	       llen = strlen(from) - (size_t)(strrchr(from, '/') - from) - 1;
	if (snprintf(target, sizeof(target), "%s%s", name, src.name + (slen > llen ? llen : slen)) >
	    NAME_MAX)
		rc = -ENAMETOOLONG;
	else if (linkat(src.parent, src.name, parent, target, 0) == -1)
		rc = -errno;
	if (!rc) {
		fs_links_note(fs, src.st.st_ino, from);
		fs_links_note(fs, src.st.st_ino, to);
		fs_links_changed(fs, src.st.st_ino, to);
	}
	close(src.parent);
out_close:
	close(parent);
	return rc;
}

/* An attribute change: chmod, chown or utimens. */
struct attr_change {
	enum { SET_MODE, SET_OWNER, SET_TIMES } what;
	mode_t mode;
	uid_t uid;
	gid_t gid;
	const struct timespec *tv;
};

/* Apply c through an open fd (a handle's backing file or directory). */
static int change_fd(int fd, const struct attr_change *c)
{
	int r = c->what == SET_MODE    ? fchmod(fd, c->mode)
		: c->what == SET_OWNER ? fchown(fd, c->uid, c->gid)
				       : futimens(fd, c->tv);
	return r == -1 ? -errno : 0;
}

/* Apply c to dir/name, never following a symlink. */
static int change_at(int dir, const char *name, const struct attr_change *c)
{
	int r = c->what == SET_MODE    ? fchmodat(dir, name, c->mode, AT_SYMLINK_NOFOLLOW)
		: c->what == SET_OWNER ? fchownat(dir, name, c->uid, c->gid, AT_SYMLINK_NOFOLLOW)
				       : utimensat(dir, name, c->tv, AT_SYMLINK_NOFOLLOW);
	return r == -1 ? -errno : 0;
}

/* Apply c by handle when there is one, else by name; then tell the other
 * names of a hard-linked file. */
static int set_attr(const char *path, struct fuse_file_info *fi, const struct attr_change *c)
{
	struct fs *fs = fs_get();
	struct fs_lookup lk;
	struct stat st;
	int rc, fd = attr_fd(fi), locked = 0;

	if (fd < 0) {
		rc = fs_lookup(fs, path, &lk);
		if (rc)
			return rc;
		st = lk.st;
	} else if (fstat(fd, &st) == -1) {
		return -errno;
	}
	/* A commit puts its directory's times back after its renames (cp -a
	 * set them): a directory's new times must not fall between its look
	 * and its restore, or they would be undone. */
	if (c->what == SET_TIMES && S_ISDIR(st.st_mode)) {
		pthread_mutex_lock(&fs->ns_lock);
		locked = 1;
	}
	if (fd >= 0) {
		rc = change_fd(fd, c);
		if (!rc)
			changed(fs, &st, path);
	} else {
		rc = change_at(lk.parent, lk.name, c);
		if (!rc)
			changed(fs, &lk.st, path);
		close(lk.parent);
	}
	if (locked)
		pthread_mutex_unlock(&fs->ns_lock);
	return rc;
}

static int op_chmod(const char *path, mode_t mode, struct fuse_file_info *fi)
{
	struct attr_change c = {.what = SET_MODE, .mode = mode};

	return set_attr(path, fi, &c);
}

static int op_chown(const char *path, uid_t uid, gid_t gid, struct fuse_file_info *fi)
{
	struct attr_change c = {.what = SET_OWNER, .uid = uid, .gid = gid};

	return set_attr(path, fi, &c);
}

static int op_utimens(const char *path, const struct timespec tv[2], struct fuse_file_info *fi)
{
	struct attr_change c = {.what = SET_TIMES, .tv = tv};

	return set_attr(path, fi, &c);
}

/*
 * Turn an archived file back into a plain staged one at its logical name,
 * so it can be written: a photo's view bytes (or nothing when truncating), a
 * video's stored bytes. Caller holds ns_lock. keep_bytes = 0 for O_TRUNC.
 */
static int materialise(struct fs *fs, struct fs_lookup *lk, const char *path, int keep_bytes)
{
	const char *lname = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
	struct idx_txn *txn;
	struct stat st;
	char tmp[64];
	int src = -1, dst = -1, rc;

	if (!lk->e.suffix[0] || strcmp(lk->e.suffix, ".heic") != 0) {
		/* a video: its view is its stored bytes; give it back its name */
		if (strcmp(lk->name, lname) != 0 &&
		    renameat2(lk->parent, lk->name, lk->parent, lname, RENAME_NOREPLACE) == -1)
			return -errno;
		snprintf(lk->name, sizeof(lk->name), "%s", lname);
		rc = fs_mark_staged(fs, lk->st.st_ino, (uint64_t)lk->st.st_size, path);
		lk->archived = 0;
		return rc;
	}
	snprintf(tmp, sizeof(tmp), "edit.%llu", (unsigned long long)lk->st.st_ino);
	dst = openat(fs->work_fd, tmp, O_CREAT | O_TRUNC | O_RDWR | O_CLOEXEC, 0600);
	if (dst == -1)
		return -errno;
	src = openat(lk->parent, lk->name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (src == -1) {
		rc = -errno;
		goto out_close;
	}
	if (keep_bytes) {
		int view = fs_view_open(fs, lk->parent, lk->name, lk->st.st_ino, &lk->e, path);
		if (view < 0) {
			rc = view;
			goto out_close;
		}
		rc = fs_copy_fd(view, dst, lk->e.view_bytes);
		close(view);
		if (rc)
			goto out_close;
	}
	if ((rc = fs_copy_attrs(src, dst)) || fstat(dst, &st) == -1)
		goto out_close;
	if (renameat2(fs->work_fd, tmp, lk->parent, lname, RENAME_NOREPLACE) == -1) {
		rc = -errno;
		goto out_close;
	}
	fs_fsync_dir(lk->parent);
	fs_mark_staged(fs, st.st_ino, (uint64_t)st.st_size, path);
	/* the archive waits aside: the edit may change only its metadata (a
	 * retag), or write its original again */
	if (fs_prev_keep(fs, lk->parent, lk->name, lk->st.st_ino, st.st_ino)) {
		if ((rc = idx_begin(fs->idx, 1, &txn)) == 0) {
			idx_del(txn, lk->st.st_ino);
			rc = idx_commit(txn);
		}
		if (unlinkat(lk->parent, lk->name, 0) == -1)
			log_msg(LOG_ERR, "edit: cannot remove %s: %s", lk->name, strerror(errno));
		fs_view_drop(fs, lk->st.st_ino);
	}
	fs_fsync_dir(lk->parent);
	snprintf(lk->name, sizeof(lk->name), "%s", lname);
	lk->st = st;
	lk->archived = 0;
	lk->has_entry = 0;
out_close:
	if (src >= 0)
		close(src);
	close(dst);
	if (rc)
		unlinkat(fs->work_fd, tmp, 0);
	return rc;
}

/* Set up a handle on fd for the logical path. Every handle holds its
 * file's node (ino: the backing file's, 0 to take fd's). */
static int handle_new(struct fs *fs, int fd, uint64_t ino, const char *path, int writable,
		      struct fuse_file_info *fi)
{
	struct handle *h = calloc(1, sizeof(*h));
	struct stat st;

	if (!h)
		return -ENOMEM;
	h->kind = HANDLE_FILE;
	h->fd = h->bfd = fd;
	h->writable = writable;
	if (fstat(fd, &st) == -1) {
		int rc = -errno;
		free(h);
		return rc;
	}
	h->ino = ino ? ino : st.st_ino;
	if (!(h->node = fs_node_get(fs, h->ino))) {
		free(h);
		return -ENOMEM;
	}
	fs_node_opened(fs, h->node, path);
	if (writable) {
		h->linked = st.st_nlink > 1;
		fs_node_writer_open(fs, h->node, path);
	}
	fi->fh = (uintptr_t)h;
	return 0;
}

/* Let go of a handle's node: the last writer's close starts settling (path
 * may be NULL: the node remembers the last name). */
static void handle_close_node(struct fs *fs, struct handle *h, const char *path)
{
	char hidden[64];

	if (h->writable)
		fs_node_writer_close(fs, h->node, path);
	/* libfuse removes a hidden file after its last release through its
	 * path; without one (its directory is gone) that is for us to do */
	if (fs_node_closed(fs, h->node, hidden) && !path) {
		if (unlinkat(fs->hidden_fd, hidden, 0) == 0 || errno == ENOENT)
			fs_node_hidden_link(fs, h->ino, hidden, -1, -1);
		else
			log_msg(LOG_WARNING, "cannot remove %s: %s", hidden, strerror(errno));
	}
	fs_node_put(fs, h->node);
	h->node = NULL;
}

/* First change through a handle: new generation, "staged" in the index. */
static void handle_dirty(struct fs *fs, struct handle *h, const char *path)
{
	fs_node_touch(fs, h->node);
	if (!h->staged) {
		struct stat st;
		h->staged = 1;
		if (h->linked)
			fs_links_changed(fs, h->ino, path);
		if (fstat(h->fd, &st) == 0) {
			pthread_mutex_lock(&fs->nodes_lock);
			/* under a hidden name the node knows the real one; a
			 * file with no name left (removed while open) is not
			 * staged */
			if (fs_node_path_hidden(h->node, path))
				path = NULL;
			const char *name = h->node->gone ? NULL : path ? path : h->node->path;
			char *p = name ? strdup(name) : NULL;
			pthread_mutex_unlock(&fs->nodes_lock);
			if (p)
				fs_mark_staged(fs, st.st_ino, (uint64_t)st.st_size, p);
			free(p);
		}
	}
}

/* A stored file at rest opened for reading: its reads are checked against
 * its digests (sums.c). */
static void check_reads(struct fs *fs, struct handle *h, const struct fs_lookup *lk)
{
	struct idx_entry e;

	if (lk->has_entry)
		e = lk->e;
	else if (fs_entry_get(fs, h->ino, &e) != 0)
		return;
	fs_check_attach(fs, h->node, h->fd, h->ino, &e);
}

static int op_open(const char *path, struct fuse_file_info *fi)
{
	struct fs *fs = fs_get();
	struct fs_lookup lk;
	int acc = fi->flags & O_ACCMODE, writable = acc != O_RDONLY;
	int fd, rc;

	if (writable || (fi->flags & O_TRUNC))
		pthread_mutex_lock(&fs->ns_lock);
	rc = fs_lookup(fs, path, &lk);
	if (rc)
		goto out_unlock;
	if (lk.archived && fs->cfg->view == FS_VIEW_LEGACY) {
		if (writable || (fi->flags & O_TRUNC)) {
			rc = materialise(fs, &lk, path, !(fi->flags & O_TRUNC));
			if (rc)
				goto out_close;
		} else if (!strcmp(lk.e.suffix, ".heic")) {
			fd = fs_view_open(fs, lk.parent, lk.name, lk.st.st_ino, &lk.e, path);
			if (fd < 0) {
				/* a view that cannot be made is an I/O error to the
				 * reader (ENOSPC aside); the stored file is untouched */
				rc = fd == -ENOSPC || fd == -EMFILE || fd == -ENFILE ? fd : -EIO;
				goto out_close;
			}
			rc = handle_new(fs, fd, lk.st.st_ino, path, 0, fi);
			if (rc) {
				close(fd);
				goto out_close;
			}
			fi->keep_cache = 1; /* a view never changes while archived */
			/* attribute changes through this handle go to the stored file */
			int bfd = openat(lk.parent, lk.name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
			if (bfd >= 0)
				fh_of(fi)->bfd = bfd;
			goto out_close;
		}
	}
	fd = openat(lk.parent, lk.name,
		    (fi->flags & ~(O_CREAT | O_EXCL | O_NOCTTY)) | O_NOFOLLOW | O_CLOEXEC);
	if (fd == -1) {
		rc = -errno;
		goto out_close;
	}
	rc = handle_new(fs, fd, 0, path, writable, fi);
	if (rc) {
		close(fd);
		goto out_close;
	}
	if (fi->flags & O_TRUNC && writable)
		handle_dirty(fs, fh_of(fi), path);
	else if (!writable && S_ISREG(lk.st.st_mode) && fs->cfg->verify_reads)
		check_reads(fs, fh_of(fi), &lk);
out_close:
	close(lk.parent);
out_unlock:
	if (writable || (fi->flags & O_TRUNC))
		pthread_mutex_unlock(&fs->ns_lock);
	return rc;
}

static int op_create(const char *path, mode_t mode, struct fuse_file_info *fi)
{
	struct fs *fs = fs_get();
	const char *name;
	int parent, fd, rc;

	parent = create_parent(fs, path, &name);
	if (parent == -EEXIST && !(fi->flags & O_EXCL))
		return op_open(path, fi);
	if (parent < 0)
		return parent;
	fd = openat(parent, name, ((fi->flags | O_CREAT) & ~O_NOCTTY) | O_NOFOLLOW | O_CLOEXEC,
		    mode);
	if (fd == -1) {
		rc = -errno;
		goto out_close;
	}
	own_new(parent, name);
	rc = handle_new(fs, fd, 0, path, 1, fi);
	if (rc) {
		close(fd);
		goto out_close;
	}
	handle_dirty(fs, fh_of(fi), path);
out_close:
	close(parent);
	return rc;
}

/* Check what a read of h is about to return, when h's file is checked. */
static int read_check(struct handle *h, off_t off, size_t size, const char *path)
{
	if (h->fd != h->bfd || !atomic_load(&h->node->check))
		return 0; /* a view (checked when rendered), or nothing to check */
	return fs_check_range(fs_get(), h->node, h->fd, (uint64_t)off, size, path);
}

static int op_read_buf(const char *path, struct fuse_bufvec **bufp, size_t size, off_t off,
		       struct fuse_file_info *fi)
{
	struct fuse_bufvec *bv;
	int rc = read_check(fh_of(fi), off, size, path);

	if (rc)
		return rc;
	bv = malloc(sizeof(*bv));
	if (!bv)
		return -ENOMEM;
	*bv = FUSE_BUFVEC_INIT(size);
	bv->buf[0].flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
	bv->buf[0].fd = fh_of(fi)->fd;
	bv->buf[0].pos = off;
	*bufp = bv;
	return 0;
}

static int op_read(const char *path, char *buf, size_t size, off_t off, struct fuse_file_info *fi)
{
	int rc = read_check(fh_of(fi), off, size, path);
	ssize_t n;

	if (rc)
		return rc;
	n = pread(fh_of(fi)->fd, buf, size, off);
	return n == -1 ? -errno : (int)n;
}

static int op_write_buf(const char *path, struct fuse_bufvec *in, off_t off,
			struct fuse_file_info *fi)
{
	struct handle *h = fh_of(fi);
	struct fuse_bufvec dst = FUSE_BUFVEC_INIT(fuse_buf_size(in));
	ssize_t n;

	if (!h->writable)
		return -EBADF;
	dst.buf[0].flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
	dst.buf[0].fd = h->fd;
	dst.buf[0].pos = off;
	n = fuse_buf_copy(&dst, in, FUSE_BUF_SPLICE_NONBLOCK);
	if (n > 0)
		handle_dirty(fs_get(), h, path);
	return (int)n;
}

static int op_write(const char *path, const char *buf, size_t size, off_t off,
		    struct fuse_file_info *fi)
{
	struct handle *h = fh_of(fi);
	ssize_t n;

	if (!h->writable)
		return -EBADF;
	n = pwrite(h->fd, buf, size, off);
	if (n == -1)
		return -errno;
	handle_dirty(fs_get(), h, path);
	return (int)n;
}

static int op_truncate(const char *path, off_t size, struct fuse_file_info *fi)
{
	struct fs *fs = fs_get();
	struct fs_lookup lk;
	int fd, rc;

	if (fh_of(fi) && fh_of(fi)->writable) {
		if (ftruncate(fh_of(fi)->fd, size) == -1)
			return -errno;
		handle_dirty(fs, fh_of(fi), path);
		return 0;
	}
	pthread_mutex_lock(&fs->ns_lock);
	rc = fs_lookup(fs, path, &lk);
	if (rc)
		goto out_unlock;
	if (lk.archived && fs->cfg->view == FS_VIEW_LEGACY) {
		rc = materialise(fs, &lk, path, size > 0);
		if (rc)
			goto out_close;
	}
	fd = openat(lk.parent, lk.name, O_WRONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
	if (fd == -1) {
		rc = -errno;
		goto out_close;
	}
	if (ftruncate(fd, size) == -1) {
		rc = -errno;
	} else {
		struct fuse_file_info tfi = {.flags = O_WRONLY};
		if (handle_new(fs, fd, 0, path, 1, &tfi) == 0) {
			struct handle *h = fh_of(&tfi);
			handle_dirty(fs, h, path);
			handle_close_node(fs, h, path);
			free(h);
		}
	}
	close(fd);
out_close:
	close(lk.parent);
out_unlock:
	pthread_mutex_unlock(&fs->ns_lock);
	return rc;
}

static int op_statfs(const char *path, struct statvfs *sv)
{
	(void)path;
	return fstatvfs(fs_get()->root_fd, sv) == -1 ? -errno : 0;
}

static int op_release(const char *path, struct fuse_file_info *fi)
{
	struct fs *fs = fs_get();
	struct handle *h = fh_of(fi);
	struct stat st;

	if (h->writable) {
		if (fstat(h->fd, &st) == 0 && st.st_nlink == 0) {
			handle_close_node(fs, h, NULL);
			forget_file(fs, st.st_ino);
		} else {
			int staged_linked = h->linked && h->staged;
			handle_close_node(fs, h, path);
			if (staged_linked)
				fs_links_changed(fs, h->ino, path);
		}
	} else {
		handle_close_node(fs, h, path);
	}
	if (h->bfd != h->fd)
		close(h->bfd);
	close(h->fd);
	free(h);
	return 0;
}

static int op_fsync(const char *path, int datasync, struct fuse_file_info *fi)
{
	int fd = fh_of(fi)->fd;

	(void)path;
	return (datasync ? fdatasync(fd) : fsync(fd)) == -1 ? -errno : 0;
}

/* Open a file or directory for its xattrs, never following a symlink. */
static int xattr_fd(const char *path, int *fd)
{
	struct fs_lookup lk;
	int rc = fs_lookup(fs_get(), path, &lk);

	if (rc)
		return rc;
	if (S_ISLNK(lk.st.st_mode) || !(S_ISREG(lk.st.st_mode) || S_ISDIR(lk.st.st_mode))) {
		close(lk.parent);
		return -EPERM;
	}
	*fd = openat(lk.parent, lk.name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
	rc = *fd == -1 ? -errno : 0;
	close(lk.parent);
	return rc;
}

/* Only the user, trusted and security namespaces pass; POSIX ACLs are not
 * supported (the kernel checks modes). */
static int xattr_allowed(const char *name)
{
	return !strncmp(name, "user.", 5) || !strncmp(name, "trusted.", 8) ||
	       !strncmp(name, "security.", 9);
}

static int op_setxattr(const char *path, const char *name, const char *value, size_t size,
		       int flags)
{
	int fd, rc;

	if (!xattr_allowed(name))
		return -EOPNOTSUPP;
	if ((rc = xattr_fd(path, &fd)))
		return rc;
	rc = fsetxattr(fd, name, value, size, flags) == -1 ? -errno : 0;
	if (!rc)
		changed_fd(fs_get(), fd, path);
	close(fd);
	return rc;
}

static int op_getxattr(const char *path, const char *name, char *value, size_t size)
{
	ssize_t n;
	int fd, rc;

	if (!xattr_allowed(name))
		return -ENODATA;
	if ((rc = xattr_fd(path, &fd)))
		return rc == -EPERM ? -ENODATA : rc;
	n = fgetxattr(fd, name, value, size);
	close(fd);
	return n == -1 ? -errno : (int)n;
}

static int op_listxattr(const char *path, char *list, size_t size)
{
	ssize_t n;
	int fd, rc;

	if ((rc = xattr_fd(path, &fd)))
		return rc == -EPERM ? 0 : rc;
	n = flistxattr(fd, list, size);
	close(fd);
	return n == -1 ? -errno : (int)n;
}

static int op_removexattr(const char *path, const char *name)
{
	int fd, rc;

	if (!xattr_allowed(name))
		return -EOPNOTSUPP;
	if ((rc = xattr_fd(path, &fd)))
		return rc;
	rc = fremovexattr(fd, name) == -1 ? -errno : 0;
	if (!rc)
		changed_fd(fs_get(), fd, path);
	close(fd);
	return rc;
}

static int op_opendir(const char *path, struct fuse_file_info *fi)
{
	struct fs *fs = fs_get();
	struct dirh *d;
	int fd;

	if (fs_path_reserved(path))
		return -ENOENT;
	d = calloc(1, sizeof(*d));
	if (!d)
		return -ENOMEM;
	fd = fs_open_path(fs, path, O_RDONLY | O_DIRECTORY, 0);
	if (fd < 0) {
		free(d);
		return fd;
	}
	d->kind = HANDLE_DIR;
	d->root = path[strspn(path, "/")] == '\0';
	d->dir = fdopendir(fd);
	if (!d->dir) {
		int rc = -errno;
		close(fd);
		free(d);
		return rc;
	}
	fi->fh = (uintptr_t)d;
	return 0;
}

/* Stream a directory: the offset handed to the kernel is telldir()'s, so
 * a directory of any size is read in pieces without holding it. */
static int op_readdir(const char *path, void *buf, fuse_fill_dir_t filler, off_t off,
		      struct fuse_file_info *fi, enum fuse_readdir_flags flags)
{
	struct fs *fs = fs_get();
	struct dirh *d = (struct dirh *)(uintptr_t)fi->fh;
	int root = d->root;
	struct idx_txn *txn = NULL;
	char lname[NAME_MAX + 1];

	(void)flags;
	(void)path;
	if (off != d->pos) {
		seekdir(d->dir, off);
		d->pos = off;
		d->held = NULL;
	}
	if (fs->cfg->view == FS_VIEW_LEGACY && idx_begin(fs->idx, 0, &txn))
		txn = NULL;
	for (;;) {
		struct dirent *de = d->held;
		if (!de) {
			errno = 0;
			de = readdir(d->dir);
			if (!de)
				break;
		}
		d->held = NULL;
		off_t next = telldir(d->dir);
		const char *name = de->d_name;
		if (root && !strcmp(name, FS_STATE_DIR)) {
			d->pos = next;
			continue;
		}
		if (txn && de->d_type == DT_REG)
			name = fs_logical_name(fs, txn, name, de->d_ino, lname, sizeof(lname));
		if (!name) {
			d->pos = next;
			continue;
		}
		struct stat st = {.st_ino = de->d_ino, .st_mode = (mode_t)DTTOIF(de->d_type)};
		if (filler(buf, name, &st, next, 0)) {
			d->held = de;
			break;
		}
		d->pos = next;
	}
	idx_abort(txn);
	return 0;
}

static int op_releasedir(const char *path, struct fuse_file_info *fi)
{
	struct dirh *d = (struct dirh *)(uintptr_t)fi->fh;

	(void)path;
	closedir(d->dir);
	free(d);
	return 0;
}

static int op_fsyncdir(const char *path, int datasync, struct fuse_file_info *fi)
{
	struct dirh *d = (struct dirh *)(uintptr_t)fi->fh;

	(void)path;
	(void)datasync;
	return fsync(dirfd(d->dir)) == -1 ? -errno : 0;
}

static int op_access(const char *path, int mask)
{
	struct fs_lookup lk;
	int rc;

	if (!strcmp(path, "/"))
		return 0;
	rc = fs_lookup(fs_get(), path, &lk);
	if (rc)
		return rc;
	rc = faccessat(lk.parent, lk.name, mask, AT_EACCESS | AT_SYMLINK_NOFOLLOW) == -1 ? -errno
											 : 0;
	close(lk.parent);
	return rc;
}

static int op_fallocate(const char *path, int mode, off_t off, off_t len, struct fuse_file_info *fi)
{
	struct handle *h = fh_of(fi);

	if (!h->writable)
		return -EBADF;
	if (fallocate(h->fd, mode, off, len) == -1)
		return -errno;
	handle_dirty(fs_get(), h, path);
	return 0;
}

static off_t op_lseek(const char *path, off_t off, int whence, struct fuse_file_info *fi)
{
	off_t r = lseek(fh_of(fi)->fd, off, whence);

	(void)path;
	return r == -1 ? -errno : r;
}

static void *op_init(struct fuse_conn_info *conn, struct fuse_config *cfg)
{
	struct fs *fs = fs_get();

	cfg->use_ino = 1;
	/* Paths for every operation, so libfuse holds its lock on a file's
	 * path across a release: a removal then waits for the release to end
	 * instead of hiding a file that is no longer open. */
	cfg->nullpath_ok = 0;
	/* A file removed while open is hidden (hide_file) rather than
	 * forgotten, so fstat() through an open descriptor still answers. */
	cfg->hard_remove = 0;
	/* Names and attributes are cached for a second; the other names of a
	 * hard-linked file are invalidated when it changes (links.c). Views
	 * and unchanged files keep their page cache across opens. */
	cfg->entry_timeout = 30.0;
	cfg->attr_timeout = 1.0;
	cfg->auto_cache = 1;
	cfg->negative_timeout = 0;
	conn->want |= conn->capable & (FUSE_CAP_SPLICE_READ | FUSE_CAP_SPLICE_WRITE |
				       FUSE_CAP_SPLICE_MOVE | FUSE_CAP_PARALLEL_DIROPS);
	conn->max_write = 1u << 20;
	conn->max_readahead = 1u << 20;
	fs->fuse = fuse_get_context()->fuse;
	if (idx_open(fs->index_path, 0, &fs->idx)) {
		log_msg(LOG_ERR, "cannot open the index: unmounting");
		fuse_exit(fs->fuse);
		return fs;
	}
	if (!fs->cfg->foreground)
		log_syslog("hevcfs"); /* a daemon's stderr goes nowhere */
	if (fs_links_start(fs) || fs_settle_start(fs) || fs_workers_start(fs) ||
	    fs_scrubber_start(fs))
		log_msg(LOG_ERR, "cannot start background threads: files stay staged");
	fs->threads_started = 1;
	if (fs_queue_load(fs))
		log_msg(LOG_ERR, "cannot load the queue: pending files wait for the next mount");
	return fs;
}

static void op_destroy(void *data)
{
	struct fs *fs = data;

	if (fs->threads_started) {
		fs_settle_stop(fs);
		fs_scrubber_stop(fs);
		fs_workers_stop(fs);
		fs_links_stop(fs);
	}
	idx_close(fs->idx);
	fs->idx = NULL;
	fs->fuse = NULL;
}

/* No flush: a write is on BACKING when it returns, so close() has nothing
 * to wait for. Without the operation the kernel skips that round trip on
 * every close (it still writes back dirty mmap pages first). */
const struct fuse_operations fs_ops = {
    .getattr = op_getattr,
    .readlink = op_readlink,
    .mknod = op_mknod,
    .mkdir = op_mkdir,
    .unlink = op_unlink,
    .rmdir = op_rmdir,
    .symlink = op_symlink,
    .rename = op_rename,
    .link = op_link,
    .chmod = op_chmod,
    .chown = op_chown,
    .truncate = op_truncate,
    .open = op_open,
    .read = op_read,
    .write = op_write,
    .statfs = op_statfs,
    .release = op_release,
    .fsync = op_fsync,
    .setxattr = op_setxattr,
    .getxattr = op_getxattr,
    .listxattr = op_listxattr,
    .removexattr = op_removexattr,
    .opendir = op_opendir,
    .readdir = op_readdir,
    .releasedir = op_releasedir,
    .fsyncdir = op_fsyncdir,
    .init = op_init,
    .destroy = op_destroy,
    .access = op_access,
    .create = op_create,
    .utimens = op_utimens,
    .write_buf = op_write_buf,
    .read_buf = op_read_buf,
    .fallocate = op_fallocate,
    .lseek = op_lseek,
};
