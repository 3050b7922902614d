/*
 * commit — the one durable "replace X by Y" step every change that swaps
 * one backing file for another goes through: an archive taking its
 * original's place, a photo turned back into a JPEG to be written, a file
 * renamed over an archive, an archive put back, an import's file landing.
 * It owns the order of the writes, the syncs and the crash points, the
 * attribute copy, and the recovery of an interrupted one.
 *
 * With FS_REPLACE_JOURNAL (an archive commit), the order is:
 *   1. Y gets X's owner, mode, times, user xattrs and ACL and is fsynced; so is
 *      X, whose bytes Y was made from (a crash of the machine must not
 *      leave a name whose bytes were lost beside the archive of them);
 *   2. an intent names X, Y's inode and the entry Y will get;
 *   3. the directory is fsynced, so X's name (a rename the user made while
 *      Y was made) is durable before Y's is; Y is renamed next to X (never
 *      over another file) and the directory fsynced;
 *   4. one index transaction records Y, drops X's entry and queue record;
 *      the index is synced;
 *   5. X is removed (or kept aside) and the directory fsynced;
 *   6. the intent is dropped.
 * Recovery rolls an intent forward when Y is in place and whole (3
 * happened), and back otherwise. ns_lock is held from the check that X is
 * still itself to the end of 5: the renames and the syncs that make them
 * durable, never the copy of attributes or the sync of Y's data.
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

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

/* Largest xattr value copied. */
#define XATTR_VALUE_MAX 65536

int fs_copy_attrs(int src, int dst)
{
	struct stat st;
	char *names = NULL, *val = NULL;
	ssize_t len;

	if (fstat(src, &st) == -1)
		return -errno;
	if (geteuid() == 0 && fchown(dst, st.st_uid, st.st_gid) == -1)
		return -errno;
	if (fchmod(dst, st.st_mode & 07777) == -1)
		return -errno;
	len = flistxattr(src, NULL, 0);
	if (len > 0 && (names = malloc((size_t)len)) && (val = malloc(XATTR_VALUE_MAX))) {
		len = flistxattr(src, names, (size_t)len);
		for (ssize_t off = 0; len > 0 && off < len;
		     off += (ssize_t)strlen(names + off) + 1) {
			const char *n = names + off;
			if (strncmp(n, "user.", 5) != 0 &&
			    strcmp(n, "system.posix_acl_access") != 0)
				continue;
			ssize_t vl = fgetxattr(src, n, val, XATTR_VALUE_MAX);
			if (vl < 0 || fsetxattr(dst, n, val, (size_t)vl, 0) == -1)
				log_msg(LOG_WARNING, "commit: xattr %s not copied: %s", n,
					strerror(errno));
		}
	}
	free(names);
	free(val);
	struct timespec times[2] = {st.st_atim, st.st_mtim};
	if (futimens(dst, times) == -1)
		return -errno;
	return fsync(dst) == -1 ? -errno : 0;
}

/* Put a directory's access and modification times back (its ctime moves,
 * as it must). dirfd may be an O_PATH fd. */
static void restore_dir_times(int dirfd, const struct stat *before)
{
	struct timespec t[2] = {before->st_atim, before->st_mtim};
	int fd = openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	if (fd < 0)
		return;
	if (futimens(fd, t) == -1)
		log_msg(LOG_WARNING, "commit: directory times not kept: %s", strerror(errno));
	close(fd);
}

/* Drop ino's intent. */
static void intent_drop(struct fs *fs, uint64_t ino)
{
	struct idx_txn *txn;

	if (idx_begin(fs->idx, 1, &txn) == 0) {
		idx_intent_del(txn, ino);
		idx_commit(txn);
	}
}

/* Is X still itself: at its name with its inode, at its queue generation,
 * (with node) not written to? 1 or 0. */
static int x_still(struct fs *fs, const struct fs_replace *r)
{
	struct stat st;
	struct idx_txn *txn;
	uint64_t qgen = 0;
	char qpath[8];
	int rc;

	if (!r->x_name)
		return 1;
	if (fstatat(r->dirfd, r->x_name, &st, AT_SYMLINK_NOFOLLOW) != 0 ||
	    (uint64_t)st.st_ino != r->x_ino)
		return 0;
	if (r->x_gen) {
		if (idx_begin(fs->idx, 0, &txn))
			return 0;
		rc = idx_queue_get(txn, r->x_ino, &qgen, qpath, sizeof(qpath));
		idx_abort(txn);
		if ((rc && rc != -ENAMETOOLONG) || qgen != r->x_gen)
			return 0;
		if (r->node && !fs_node_current(fs, r->node, r->x_gen))
			return 0;
	}
	return 1;
}

/* Step 4: one index transaction. X's entry goes (unless kept aside: its
 * prev, if any, is returned for dropping), Y's is recorded. */
static int index_swap(struct fs *fs, const struct fs_replace *r, uint64_t y_ino, uint64_t *prev)
{
	struct idx_txn *txn;
	struct idx_entry old;
	int rc = idx_begin(fs->idx, 1, &txn);

	*prev = 0;
	if (rc)
		return rc;
	if (r->x_name && !(r->flags & FS_REPLACE_KEEP_X)) {
		if (idx_get(txn, r->x_ino, &old) == 0)
			*prev = old.prev;
		if ((rc = idx_del(txn, r->x_ino)) || (rc = idx_queue_del(txn, r->x_ino)))
			goto out_abort;
	}
	if (r->entry) {
		if ((rc = idx_put(txn, y_ino, r->entry)))
			goto out_abort;
		if (r->sums && (rc = idx_blocks_put(txn, y_ino, r->sums->blocks, r->sums->nblocks)))
			goto out_abort;
		if (r->entry->state == IDX_ARCHIVED && r->logical &&
		    (rc = idx_origin_put(txn, r->entry->orig_sum, y_ino, r->logical)))
			goto out_abort;
	}
	rc = idx_commit(txn);
	if (!rc && (r->flags & FS_REPLACE_SYNC))
		rc = idx_sync(fs->idx);
	return rc;
out_abort:
	idx_abort(txn);
	return rc;
}

enum fs_replace_result fs_replace(struct fs *fs, const struct fs_replace *r, int *err)
{
	struct idx_intent *in = NULL;
	struct idx_txn *txn;
	struct stat yst, dir_before;
	enum fs_replace_result res = FS_REPLACE_ERROR;
	uint64_t prev = 0;
	int x = -1, y = -1, rc = 0, locked = 0, have_times = 0;
	int sync = r->flags & FS_REPLACE_SYNC;

	*err = 0;
	/* 1. Y gets X's attributes and is synced, outside the lock */
	y = openat(r->y_dirfd, r->y_name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (y < 0) {
		rc = -errno;
		goto out;
	}
	if (r->x_name && (r->flags & FS_REPLACE_ATTRS)) {
		x = openat(r->dirfd, r->x_name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
		if (x < 0) {
			res = FS_REPLACE_MOVED;
			goto out;
		}
		if ((rc = fs_copy_attrs(x, y)))
			goto out;
	}
	if (r->x_name && (r->flags & FS_REPLACE_JOURNAL) && (r->flags & FS_REPLACE_SYNC)) {
		if (x < 0)
			x = openat(r->dirfd, r->x_name,
				   O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
		if (x < 0) {
			res = FS_REPLACE_MOVED;
			goto out;
		}
		if (fsync(x) == -1) {
			rc = -errno;
			goto out;
		}
	}
	if (fstat(y, &yst) == -1) {
		rc = -errno;
		goto out;
	}

	if (!(r->flags & FS_REPLACE_HAVE_NS)) {
		fs_mutex_lock(&fs->ns_lock);
		locked = 1;
	}
	if (!x_still(fs, r)) {
		res = FS_REPLACE_MOVED;
		goto out_unlock;
	}
	/* a reader holds X: another file, of another size, under the name its
	 * descriptor reads through would confuse it (the kernel keeps one
	 * size per inode): the archive waits for its last close */
	if (r->node && r->ready && fs_node_defer_commit(fs, r->node, r->x_gen, r->ready)) {
		res = FS_REPLACE_OPEN;
		goto out_unlock;
	}

	/* 2. the intent */
	if (r->flags & FS_REPLACE_JOURNAL) {
		in = calloc(1, sizeof(*in));
		if (!in) {
			rc = -ENOMEM;
			goto out_unlock;
		}
		in->staged_ino = r->x_ino;
		in->archive_ino = (uint64_t)yst.st_ino;
		if (r->entry)
			in->entry = *r->entry;
		if (fs_path_join(r->dir, r->x_name ? r->x_name : r->target, in->path,
				 sizeof(in->path))) {
			rc = -ENAMETOOLONG;
			goto out_unlock;
		}
		if ((rc = idx_begin(fs->idx, 1, &txn)))
			goto out_unlock;
		if ((rc = idx_intent_put(txn, in))) {
			idx_abort(txn);
			goto out_unlock;
		}
		if ((rc = idx_commit(txn)))
			goto out_unlock;
		fs_crash_point("commit-intent");
	}

	/* the directory's times are the user's (cp -a set them): a commit must
	 * not move them */
	have_times = sync && fstat(r->dirfd, &dir_before) == 0;

	/* 3. into place, never over another file (but X when it keeps its
	 * name); X's own name first made durable, or a crash of the machine
	 * could keep Y's new name and lose the rename that gave X its own */
	if ((r->flags & FS_REPLACE_JOURNAL) && sync && (rc = fs_fsync_dir(r->dirfd))) {
		intent_drop(fs, r->x_ino);
		goto out_unlock;
	}
	if (renameat2(r->y_dirfd, r->y_name, r->dirfd, r->target,
		      r->x_name && !strcmp(r->target, r->x_name) ? 0 : RENAME_NOREPLACE) == -1) {
		rc = errno == EEXIST ? 0 : -errno;
		res = errno == EEXIST ? FS_REPLACE_TAKEN : FS_REPLACE_ERROR;
		if (r->flags & FS_REPLACE_JOURNAL)
			intent_drop(fs, r->x_ino);
		goto out_unlock;
	}
	fs_crash_point("commit-renamed");
	if (sync && (rc = fs_fsync_dir(r->dirfd)))
		log_msg(LOG_WARNING, "commit: fsync of %s: %s", r->dir[0] ? r->dir : "/",
			strerror(-rc));

	/* 4. the index */
	if ((rc = index_swap(fs, r, (uint64_t)yst.st_ino, &prev)))
		goto out_unlock; /* the intent stays: recovery finishes it */
	if (r->entry)
		r->entry->gen = (uint64_t)yst.st_ino; /* tell the caller Y's inode */
	fs_crash_point("commit-indexed");

	/* 5. X goes, or waits aside */
	if (r->x_name && strcmp(r->target, r->x_name)) {
		if (r->flags & FS_REPLACE_KEEP_X) {
			if (fs_prev_keep(fs, r->dirfd, r->x_name, r->x_ino, (uint64_t)yst.st_ino)) {
				struct idx_txn *t2;
				unlinkat(r->dirfd, r->x_name, 0);
				if (idx_begin(fs->idx, 1, &t2) == 0) {
					idx_del(t2, r->x_ino);
					idx_commit(t2);
				}
				fs_view_drop(fs, r->x_ino);
			}
		} else if (unlinkat(r->dirfd, r->x_name, 0) == -1) {
			log_msg(LOG_ERR, "commit: cannot remove %s/%s: %s", r->dir, r->x_name,
				strerror(errno));
		}
		if (sync)
			fs_fsync_dir(r->dirfd);
	}
	fs_crash_point("commit-unlinked");
	if (have_times)
		restore_dir_times(r->dirfd, &dir_before);

	/* 6. done */
	if (r->flags & FS_REPLACE_JOURNAL)
		intent_drop(fs, r->x_ino);
	/* the node of X stands for Y from now on */
	if (r->x_name)
		fs_node_replaced(fs, r->x_ino, (uint64_t)yst.st_ino, r->dirfd, r->target, r->kind,
				 r->entry ? r->entry->view_bytes : 0,
				 !!(r->flags & FS_REPLACE_IN_REQUEST));
	res = FS_REPLACED;
out_unlock:
	if (locked)
		fs_mutex_unlock(&fs->ns_lock);
out:
	if (res == FS_REPLACED && r->x_name)
		fs_prev_drop(fs, r->x_ino, prev); /* an archive X replaced goes too */
	free(in);
	if (x >= 0)
		close(x);
	if (y >= 0)
		close(y);
	if (res == FS_REPLACE_ERROR)
		*err = rc ? rc : -EIO;
	return res;
}

/* Roll one intent forward (the archived copy is in place and whole) or
 * back. An archived copy whose bytes are not the ones the intent recorded is
 * dropped while the original is still there; without the original it is
 * kept, flagged damaged. */
static int recover_intent(void *arg, const struct idx_intent *in)
{
	struct fs *fs = arg;
	const char *name;
	char target[FS_STORED_BUF];
	struct stat st;
	struct idx_txn *txn;
	struct sum_file f = {0};
	int parent = fs_open_parent(fs, in->path, &name), whole, original;

	if (parent < 0) {
		log_msg(LOG_WARNING, "recovery: %s: %s", in->path, strerror(-parent));
		goto out_forget;
	}
	if (fs_stored_name(name, in->entry.suffix[0] ? in->entry.suffix : "", target,
			   sizeof(target)) ||
	    fstatat(parent, target, &st, AT_SYMLINK_NOFOLLOW) != 0 ||
	    (uint64_t)st.st_ino != in->archive_ino) {
		log_msg(LOG_INFO, "recovery: rolled back archiving %s (queued again)", in->path);
		goto out_close;
	}
	whole = fs_sum_path(parent, target, &f) == 0 &&
		(sum_is_zero(in->entry.sum) || !memcmp(f.whole, in->entry.sum, SUM_LEN));
	original = strcmp(target, name) && fstatat(parent, name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
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
	intent_drop(fs, in->staged_ino);
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

int fs_replace_recover(struct fs *fs)
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
	return rc;
}
