/*
 * state — where a backing directory keeps what hevcfs knows about it.
 *
 * BACKING/.hevcfs always holds what must live on BACKING's own filesystem
 * (archive outputs before their rename into the tree, files removed while
 * open) and an id file. The state proper — the LMDB index, the mount lock,
 * the log and the view cache — lives there too, unless state=DIR puts it on a
 * local directory: LMDB's locks and memory map are not safe on NFS, CIFS,
 * FUSE or cluster filesystems, so a BACKING on one of those is refused
 * without it. The two id files name each other, so a state directory is never
 * used with another BACKING, nor a BACKING without its state directory.
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <sys/vfs.h>
#include <unistd.h>

#define ID_NAME "id"
#define INDEX_NAME "index"
#define BOOT_ID "/proc/sys/kernel/random/boot_id"
#define ID_MAX 8192

/* Filesystems whose locking or coherence LMDB cannot rely on. */
static const struct {
	unsigned long magic;
	const char *name;
} remote_fs[] = {
    {0x6969, "NFS"},	    {0x517B, "SMB"},	      {0xFF534D42, "CIFS"}, {0xFE534D42, "SMB2"},
    {0x65735546, "FUSE"},   {0x00C36400, "CephFS"},   {0x5346414F, "AFS"},  {0x73757245, "Coda"},
    {0x564C, "NCP"},	    {0x01021997, "9P"},	      {0x01161970, "GFS2"}, {0x7461636F, "OCFS2"},
    {0x0BD00BD0, "Lustre"}, {0x20030528, "OrangeFS"}, {0x47504653, "GPFS"},
};

const char *fs_remote_type(const char *path)
{
	struct statfs sf;

	if (statfs(path, &sf) == -1)
		return NULL;
	for (size_t i = 0; i < sizeof(remote_fs) / sizeof(*remote_fs); i++)
		if ((unsigned long)sf.f_type == remote_fs[i].magic)
			return remote_fs[i].name;
	return NULL;
}

/* What an id file says: its id, and the other side's path (BACKING's file:
 * the state directory, when external; the state directory's: BACKING). */
struct id_file {
	char id[40];
	char other[PATH_MAX];
	int has;
};

/* Read dir/id. 0 (f->has tells whether it was there) or -errno. */
static int id_read(const char *dir, struct id_file *f)
{
	char path[PATH_MAX + 8], buf[ID_MAX];
	ssize_t n;
	int fd;

	memset(f, 0, sizeof(*f));
	if (snprintf(path, sizeof(path), "%s/%s", dir, ID_NAME) >= (int)sizeof(path))
		return -ENAMETOOLONG;
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return errno == ENOENT || errno == ENOTDIR ? 0 : -errno;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n < 0)
		return -errno;
	buf[n] = '\0';
	for (char *line = strtok(buf, "\n"); line; line = strtok(NULL, "\n")) {
		if (!strncmp(line, "id ", 3))
			snprintf(f->id, sizeof(f->id), "%s", line + 3);
		else if (!strncmp(line, "state ", 6) || !strncmp(line, "backing ", 8))
			snprintf(f->other, sizeof(f->other), "%s", strchr(line, ' ') + 1);
	}
	f->has = f->id[0] != '\0';
	return 0;
}

/* Write dir/id durably: the id, and "key other" when other is set. */
static int id_write(const char *dir, const char *id, const char *key, const char *other)
{
	char path[PATH_MAX + 8], tmp[PATH_MAX + 16], buf[ID_MAX];
	int fd, n, rc = 0;

	n = other ? snprintf(buf, sizeof(buf), "id %s\n%s %s\n", id, key, other)
		  : snprintf(buf, sizeof(buf), "id %s\n", id);
	if (n >= (int)sizeof(buf) ||
	    snprintf(path, sizeof(path), "%s/%s", dir, ID_NAME) >= (int)sizeof(path) ||
	    snprintf(tmp, sizeof(tmp), "%s/%s.new", dir, ID_NAME) >= (int)sizeof(tmp))
		return -ENAMETOOLONG;
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		return -errno;
	if (write(fd, buf, (size_t)n) != n || fsync(fd) == -1)
		rc = errno ? -errno : -EIO;
	close(fd);
	if (!rc && rename(tmp, path) == -1)
		rc = -errno;
	if (rc)
		unlink(tmp);
	return rc;
}

/* A new random id. */
static int new_id(char out[40])
{
	unsigned char r[16];

	if (getrandom(r, sizeof(r), 0) != sizeof(r))
		return -EIO;
	for (int i = 0; i < 16; i++)
		snprintf(out + 2 * i, 3, "%02x", r[i]);
	return 0;
}

void fs_paths_release(struct fs_paths *p)
{
	free(p->backing);
	free(p->meta);
	free(p->state);
	memset(p, 0, sizeof(*p));
}

/* mkdir that accepts an existing directory. */
static int make_dir(const char *path)
{
	return mkdir(path, 0700) == -1 && errno != EEXIST ? -errno : 0;
}

int fs_paths_open(const char *backing, const char *state, int create, struct fs_paths *p, char *err,
		  size_t errlen)
{
	struct id_file m, s;
	const char *remote;
	char *real = NULL;
	int rc;

	memset(p, 0, sizeof(*p));
	err[0] = '\0';
	p->backing = realpath(backing, NULL);
	if (!p->backing) {
		rc = -errno;
		snprintf(err, errlen, "%s: %s", backing, strerror(errno));
		return rc;
	}
	if (asprintf(&p->meta, "%s/%s", p->backing, FS_STATE_DIR) < 0) {
		p->meta = NULL;
		rc = -ENOMEM;
		goto out_fail;
	}
	if (create && (rc = make_dir(p->meta))) {
		snprintf(err, errlen, "%s: %s", p->meta, strerror(-rc));
		goto out_fail;
	}
	if ((rc = id_read(p->meta, &m)))
		goto out_io;
	if (state) {
		if (create && (rc = make_dir(state))) {
			snprintf(err, errlen, "state=%s: %s", state, strerror(-rc));
			goto out_fail;
		}
		real = realpath(state, NULL);
		if (!real) {
			rc = -errno;
			snprintf(err, errlen, "state=%s: %s", state, strerror(errno));
			goto out_fail;
		}
	}
	if (!real || !strcmp(real, p->meta)) {
		/* the state in BACKING itself */
		free(real);
		real = NULL;
		if (m.other[0]) {
			snprintf(err, errlen,
				 "%s keeps its index in %s (it was mounted with -o state=%s): give "
				 "the same option",
				 p->backing, m.other, m.other);
			rc = -EXDEV;
			goto out_fail;
		}
		if ((remote = fs_remote_type(p->backing))) {
			snprintf(
			    err, errlen,
			    "%s is on a network filesystem (%s): its index must live on a local "
			    "disk: use -o state=DIR (a local directory)",
			    p->backing, remote);
			rc = -EREMOTE;
			goto out_fail;
		}
		p->state = strdup(p->meta);
		if (!p->state) {
			rc = -ENOMEM;
			goto out_fail;
		}
		if (create && !m.has) {
			char id[40];
			if ((rc = new_id(id)) || (rc = id_write(p->meta, id, NULL, NULL)))
				goto out_io;
		}
		return 0;
	}
	p->state = real;
	p->external = 1;
	if ((remote = fs_remote_type(p->state))) {
		snprintf(err, errlen, "state=%s is on a network filesystem (%s): it must be local",
			 p->state, remote);
		rc = -EREMOTE;
		goto out_fail;
	}
	if ((rc = id_read(p->state, &s)))
		goto out_io;
	if (s.has && (!m.has || strcmp(s.id, m.id))) {
		snprintf(err, errlen, "state=%s is the state of another backing directory (%s)",
			 p->state, s.other[0] ? s.other : "unknown");
		rc = -EXDEV;
		goto out_fail;
	}
	if (!s.has && m.has && m.other[0] && strcmp(m.other, p->state)) {
		snprintf(err, errlen, "%s keeps its index in %s, not in %s", p->backing, m.other,
			 p->state);
		rc = -EXDEV;
		goto out_fail;
	}
	if (!create) {
		if (!s.has) {
			rc = -ENOENT;
			snprintf(err, errlen, "state=%s holds no state of %s", p->state,
				 p->backing);
			goto out_fail;
		}
		return 0;
	}
	if (!s.has || strcmp(m.other, p->state) || strcmp(s.other, p->backing)) {
		/* pair them (again: a state directory moved, or BACKING) */
		char id[40];
		if (m.has)
			snprintf(id, sizeof(id), "%s", m.id);
		else if ((rc = new_id(id)))
			goto out_io;
		if ((rc = id_write(p->state, id, "backing", p->backing)) ||
		    (rc = id_write(p->meta, id, "state", p->state)))
			goto out_io;
	}
	return 0;
out_io:
	snprintf(err, errlen, "%s: %s", p->backing, strerror(-rc));
out_fail:
	fs_paths_release(p);
	return rc;
}

char *fs_index_dir(const struct fs_paths *p)
{
	char *dir;

	return asprintf(&dir, "%s/%s", p->state, INDEX_NAME) < 0 ? NULL : dir;
}

/* ---- the mark of a mount under way ------------------------------------ */

/* This boot's id (the kernel's boot_id), or "" when it cannot be read. */
static void boot_id(char out[40])
{
	int fd = open(BOOT_ID, O_RDONLY | O_CLOEXEC);
	ssize_t n = fd >= 0 ? read(fd, out, 39) : -1;

	if (fd >= 0)
		close(fd);
	out[n > 0 ? n : 0] = '\0';
	out[strcspn(out, "\n")] = '\0';
}

int fs_dirty_set(int state_fd)
{
	char id[40];
	int fd, rc = 0;

	boot_id(id);
	fd = openat(state_fd, FS_DIRTY_NAME, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		return -errno;
	if (write(fd, id, strlen(id)) != (ssize_t)strlen(id) || fsync(fd) == -1)
		rc = errno ? -errno : -EIO;
	close(fd);
	if (!rc)
		rc = fs_fsync_dir(state_fd);
	return rc;
}

int fs_dirty_clear(int state_fd)
{
	if (unlinkat(state_fd, FS_DIRTY_NAME, 0) == -1)
		return errno == ENOENT ? 0 : -errno;
	return fs_fsync_dir(state_fd);
}

int fs_dirty_get(int state_fd)
{
	char id[40], had[40];
	int fd = openat(state_fd, FS_DIRTY_NAME, O_RDONLY | O_CLOEXEC);
	ssize_t n;

	if (fd < 0)
		return errno == ENOENT ? FS_DIRTY_NONE : FS_DIRTY_UNREADABLE;
	n = read(fd, had, sizeof(had) - 1);
	close(fd);
	had[n > 0 ? n : 0] = '\0';
	boot_id(id);
	return id[0] && !strcmp(id, had) ? FS_DIRTY_THIS_BOOT : FS_DIRTY_OTHER_BOOT;
}

/* The options saved in the index at dir, read in a child process: an index
 * torn by a crash of the machine may make LMDB fault, and that must not take
 * the caller down. 0 and the options in out (n bytes), or -errno. */
static int salvage_options(const char *dir, char *out, size_t size, size_t *n)
{
	int pfd[2], status;
	pid_t pid;
	size_t got = 0;

	*n = 0;
	if (pipe2(pfd, O_CLOEXEC) == -1)
		return -errno;
	pid = fork();
	if (pid == -1) {
		close(pfd[0]);
		close(pfd[1]);
		return -EAGAIN;
	}
	if (pid == 0) {
		struct idx *idx;
		struct idx_txn *txn;
		char buf[IDX_META_MAX];
		size_t len = 0;

		close(pfd[0]);
		if (idx_open(dir, 1, &idx) || idx_begin(idx, 0, &txn))
			_exit(1);
		switch (idx_meta_get(txn, FS_OPTIONS_KEY, buf, sizeof(buf), &len)) {
		case 0:
			break;
		case -ENOENT:
			_exit(0); /* none were saved */
		default:
			_exit(1);
		}
		_exit(write(pfd[1], buf, len) == (ssize_t)len ? 0 : 1);
	}
	close(pfd[1]);
	for (;;) {
		ssize_t r = read(pfd[0], out + got, size - got);
		if (r == -1 && errno == EINTR)
			continue;
		if (r <= 0 || (got += (size_t)r) == size)
			break;
	}
	close(pfd[0]);
	while (waitpid(pid, &status, 0) == -1 && errno == EINTR)
		;
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
		return -EIO;
	*n = got;
	return 0;
}

int fs_index_reset(const struct fs_paths *p, int state_fd, const char *why)
{
	char *dir = fs_index_dir(p), saved[IDX_META_MAX];
	size_t saved_len = 0;
	struct idx *idx = NULL;
	struct idx_txn *txn;
	int rc;

	if (!dir)
		return -ENOMEM;
	log_msg(LOG_WARNING, "%s %s: its index is rebuilt from the tree", p->backing, why);
	if (salvage_options(dir, saved, sizeof(saved), &saved_len))
		log_msg(LOG_WARNING, "the options saved in the old index could not be read");
	/* the old index stays aside until the new one is whole; it is never
	 * opened again in this process */
	if ((rc = idx_set_aside(dir)) || (rc = idx_open(dir, 0, &idx)))
		goto out;
	if (saved_len && (rc = idx_begin(idx, 1, &txn)) == 0) {
		if ((rc = idx_meta_put(txn, FS_OPTIONS_KEY, saved, saved_len)))
			idx_abort(txn);
		else
			rc = idx_commit(txn);
	}
	if (!rc)
		rc = idx_sync(idx);
	/* from now on an interrupted mount is one of this boot: the tree is
	 * walked (the mark stays), the new index trusted */
	if (!rc)
		rc = fs_dirty_set(state_fd);
	if (!rc)
		idx_remove_aside(dir);
out:
	idx_close(idx);
	free(dir);
	return rc;
}

int fs_index_tree_moved(const struct fs_paths *p, struct idx *idx)
{
	char path[PATH_MAX + 8], have[32], want[32];
	struct idx_txn *txn;
	struct stat st;
	size_t n = 0;
	int rc;

	if (snprintf(path, sizeof(path), "%s/%s", p->meta, ID_NAME) >= (int)sizeof(path) ||
	    stat(path, &st) == -1)
		return 0;
	snprintf(want, sizeof(want), "%llu", (unsigned long long)st.st_ino);
	if (idx_begin(idx, 0, &txn))
		return 0;
	rc = idx_meta_get(txn, FS_TREE_KEY, have, sizeof(have) - 1, &n);
	idx_abort(txn);
	if (rc == 0) {
		have[n] = '\0';
		return strcmp(have, want) != 0;
	}
	if (idx_begin(idx, 1, &txn) == 0) {
		if (idx_meta_put(txn, FS_TREE_KEY, want, strlen(want)) == 0)
			idx_commit(txn);
		else
			idx_abort(txn);
	}
	return 0;
}

/* Before the index of an unmounted BACKING is opened: an index a crash of
 * the machine may have torn is rebuilt. Mounted (the lock is taken), the
 * mount has done it. */
static int index_check(const struct fs_paths *p)
{
	int state_fd = open(p->state, O_PATH | O_DIRECTORY | O_CLOEXEC), lock, rc = 0;

	if (state_fd < 0)
		return 0; /* idx_open says what is wrong */
	lock = openat(state_fd, FS_LOCK_NAME, O_RDONLY | O_CLOEXEC);
	/* a mark this user cannot read (another's archive) is left to a
	 * command that can: the mount or fsck */
	if (lock >= 0 && flock(lock, LOCK_EX | LOCK_NB) == 0 &&
	    fs_dirty_get(state_fd) == FS_DIRTY_OTHER_BOOT)
		rc = fs_index_reset(p, state_fd, FS_WHY_STOPPED);
	if (lock >= 0)
		close(lock);
	close(state_fd);
	return rc;
}

int fs_index_open(const struct fs_paths *p, int read_only, struct idx **idx)
{
	char *dir = fs_index_dir(p);
	int rc;

	if (!dir)
		return -ENOMEM;
	rc = index_check(p);
	if (!rc)
		rc = idx_open(dir, read_only, idx);
	free(dir);
	return rc;
}
