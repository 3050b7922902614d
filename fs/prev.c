/*
 * prev — an archive that a new file replaced is kept aside until that file
 * settles, because the new bytes are often not new at all: `rsync -c` or
 * `cp` write the same original again (its view differs from it byte for
 * byte, so they think it changed), a file manager "replaces" it with
 * itself, a photo manager rewrites only its metadata. When the new file
 * settles, the job compares: the archive's original again puts the archive
 * back, unchanged (fs_prev_restore); only the view's APPn/COM segments or
 * trailer changed makes a new HEIC of the same coded pictures (a retag,
 * codec_retag); anything else is encoded afresh, and the archive goes.
 *
 * The archive waits in BACKING/.hevcfs/prev under its new file's inode
 * number, flagged IDX_F_PREV in the index (no file of the tree), the new
 * file's entry naming it (prev). Recovery drops what no entry names.
 */
#include "internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* The name of owner's archive kept aside. */
static void prev_name(uint64_t owner, char buf[32])
{
	snprintf(buf, 32, "%llu", (unsigned long long)owner);
}

void fs_prev_drop(struct fs *fs, uint64_t owner, uint64_t ino)
{
	struct idx_txn *txn;
	struct stat st;
	char name[32];

	if (!ino)
		return;
	prev_name(owner, name);
	if (fstatat(fs->prev_fd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
	    (uint64_t)st.st_ino == ino && unlinkat(fs->prev_fd, name, 0) == -1)
		log_msg(LOG_WARNING, "prev: cannot remove %s: %s", name, strerror(errno));
	if (idx_begin(fs->idx, 1, &txn) == 0) {
		struct idx_entry e;
		if (idx_get(txn, ino, &e) == 0 && (e.flags & IDX_F_PREV))
			idx_del(txn, ino);
		idx_commit(txn);
	}
	fs_view_drop(fs, ino);
}

int fs_prev_keep(struct fs *fs, int dirfd, const char *name, uint64_t ino, uint64_t owner)
{
	struct idx_txn *txn;
	struct idx_entry e, o;
	char aside[32];
	int rc;

	prev_name(owner, aside);
	if ((rc = idx_begin(fs->idx, 0, &txn)))
		return rc;
	rc = idx_get(txn, owner, &o);
	idx_abort(txn);
	if (rc)
		return rc;
	/* one archive aside per file: an older one goes */
	if (o.prev && o.prev != ino)
		fs_prev_drop(fs, owner, o.prev);
	if (renameat2(dirfd, name, fs->prev_fd, aside, RENAME_NOREPLACE) == -1) {
		rc = -errno;
		if (rc != -EEXIST)
			return rc;
		unlinkat(fs->prev_fd, aside, 0); /* a leftover of a crash */
		if (renameat2(dirfd, name, fs->prev_fd, aside, RENAME_NOREPLACE) == -1)
			return -errno;
	}
	if ((rc = idx_begin(fs->idx, 1, &txn)))
		return rc;
	if ((rc = idx_get(txn, ino, &e)) == 0) {
		e.flags |= IDX_F_PREV;
		rc = idx_put(txn, ino, &e);
	}
	if (!rc && (rc = idx_get(txn, owner, &o)) == 0) {
		o.prev = ino;
		rc = idx_put(txn, owner, &o);
	}
	if (rc) {
		idx_abort(txn);
		return rc;
	}
	return idx_commit(txn);
}

int fs_prev_open(struct fs *fs, uint64_t owner, uint64_t ino)
{
	struct stat st;
	char name[32];
	int fd;

	prev_name(owner, name);
	fd = openat(fs->prev_fd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (fstat(fd, &st) == -1 || (uint64_t)st.st_ino != ino) {
		close(fd);
		return -ENOENT;
	}
	return fd;
}

int fs_prev_restore(struct fs *fs, uint64_t owner, uint64_t ino, const char *path, uint64_t gen)
{
	struct idx_txn *txn;
	struct idx_entry e;
	struct stat st;
	const char *name;
	char aside[32], target[FS_STORED_BUF], qpath[8];
	uint64_t qgen;
	int parent = -1, cur = -1, kept = -1, rc;

	prev_name(owner, aside);
	kept = openat(fs->prev_fd, aside, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (kept < 0 || fstat(kept, &st) == -1 || (uint64_t)st.st_ino != ino) {
		rc = -ESTALE;
		goto out_close;
	}
	if ((rc = fs_entry_get(fs, ino, &e)))
		goto out_close;
	/* only a whole archive comes back (read before any lock is taken:
	 * nothing but this file's own job moves it) */
	if (!sum_is_zero(e.sum)) {
		struct sum_file f;
		if ((rc = sum_file(kept, 0, 0, 0, NULL, NULL, &f)))
			goto out_close;
		rc = memcmp(f.whole, e.sum, SUM_LEN) ? -EIO : 0;
		sum_file_release(&f);
		if (rc)
			goto out_close;
	}
	parent = fs_open_parent(fs, path, &name);
	if (parent < 0) {
		rc = parent;
		goto out_close;
	}
	cur = openat(parent, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
	if (cur < 0 || fstat(cur, &st) == -1 || (uint64_t)st.st_ino != owner) {
		rc = -ESTALE;
		goto out_close;
	}
	if ((rc = fs_stored_name(name, e.suffix, target, sizeof(target))))
		goto out_close;
	/* the new file's owner, mode, times and xattrs are the user's latest */
	if ((rc = fs_copy_attrs(cur, kept)))
		goto out_close;

	fs_mutex_lock(&fs->ns_lock);
	/* still the file that settled, at its name, with nobody writing */
	if ((rc = idx_begin(fs->idx, 0, &txn)))
		goto out_unlock;
	rc = idx_queue_get(txn, owner, &qgen, qpath, sizeof(qpath));
	if (rc == -ENAMETOOLONG)
		rc = 0;
	if (!rc)
		rc = idx_get(txn, ino, &e);
	idx_abort(txn);
	if (rc || qgen != gen || !(e.flags & IDX_F_PREV) ||
	    fstatat(parent, name, &st, AT_SYMLINK_NOFOLLOW) != 0 || (uint64_t)st.st_ino != owner) {
		rc = rc ? rc : -ESTALE;
		goto out_unlock;
	}
	/* a reader of the new file would see another file under its name: the
	 * caller archives it the usual way, which waits for it */
	if (fs_node_is_open(fs, owner)) {
		rc = -EBUSY;
		goto out_unlock;
	}
	/* back in place beside the new file (the plain name wins a lookup
	 * until the index says otherwise; a crash here leaves both, and
	 * recovery keeps the plain file, which has the same bytes) */
	if (renameat2(fs->prev_fd, aside, parent, target,
		      strcmp(target, name) ? RENAME_NOREPLACE : 0) == -1) {
		rc = -errno;
		goto out_unlock;
	}
	fs_fsync_dir(parent);
	if ((rc = idx_begin(fs->idx, 1, &txn)))
		goto out_unlock;
	e.flags &= ~IDX_F_PREV;
	if ((rc = idx_del(txn, owner)) || (rc = idx_queue_del(txn, owner)) ||
	    (rc = idx_put(txn, ino, &e)) || (rc = idx_origin_put(txn, e.orig_sum, ino, path))) {
		idx_abort(txn);
		goto out_unlock;
	}
	if ((rc = idx_commit(txn)) || (rc = idx_sync(fs->idx)))
		goto out_unlock;
	if (strcmp(target, name) && unlinkat(parent, name, 0) == -1)
		log_msg(LOG_ERR, "restore: cannot remove %s: %s", path, strerror(errno));
	fs_fsync_dir(parent);
	/* the new file's node stands for the archive from now on */
	fs_node_replaced(fs, owner, ino, parent, target,
			 !strcmp(e.suffix, ".heic") && fs->cfg->view == FS_VIEW_LEGACY
			     ? FS_KIND_VIEW
			     : FS_KIND_PLAIN,
			 e.view_bytes, 0);
out_unlock:
	fs_mutex_unlock(&fs->ns_lock);
out_close:
	if (cur >= 0)
		close(cur);
	if (kept >= 0)
		close(kept);
	if (parent >= 0)
		close(parent);
	return rc;
}

void fs_prev_recover(struct fs *fs)
{
	int fd = openat(fs->prev_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	struct dirent *de;
	DIR *d;

	if (fd < 0 || !(d = fdopendir(fd))) {
		if (fd >= 0)
			close(fd);
		return;
	}
	while ((de = readdir(d))) {
		struct idx_txn *txn;
		struct idx_entry o;
		struct stat st;
		char *end;
		uint64_t owner = strtoull(de->d_name, &end, 10);
		int named = 0;

		if (de->d_name[0] == '.' || fstatat(fs->prev_fd, de->d_name, &st, 0) == -1)
			continue;
		if (!*end && idx_begin(fs->idx, 0, &txn) == 0) {
			named = idx_get(txn, owner, &o) == 0 && o.prev == (uint64_t)st.st_ino &&
				(o.state == IDX_STAGED || o.state == IDX_PENDING);
			idx_abort(txn);
		}
		if (!named) {
			/* its new file went, or was archived: so does it */
			unlinkat(fs->prev_fd, de->d_name, 0);
			if (idx_begin(fs->idx, 1, &txn) == 0) {
				struct idx_entry e;
				if (idx_get(txn, (uint64_t)st.st_ino, &e) == 0 &&
				    (e.flags & IDX_F_PREV))
					idx_del(txn, (uint64_t)st.st_ino);
				idx_commit(txn);
			}
		}
	}
	closedir(d);
}
