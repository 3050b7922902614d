/* path — logical <-> backing names, and resolution that cannot leave BACKING. */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <limits.h>
#include <sys/sendfile.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* Suffixes an archived copy's backing name may carry, longest first is not
 * needed: they are mutually exclusive. */
static const char *const archive_suffixes[] = {".heic", ".mp4", ".mkv"};
#define NSUFFIXES (sizeof(archive_suffixes) / sizeof(archive_suffixes[0]))

int64_t fs_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int fs_path_reserved(const char *path)
{
	size_t n = strlen(FS_STATE_DIR);

	while (*path == '/')
		path++;
	return strncmp(path, FS_STATE_DIR, n) == 0 && (path[n] == '\0' || path[n] == '/');
}

/* openat2 beneath dirfd: no symlinks anywhere, no "..", no magic links. */
static int open_beneath(int dirfd, const char *rel, int flags, mode_t mode)
{
	struct open_how how = {
	    .flags = (uint64_t)flags | O_CLOEXEC,
	    .mode = (flags & (O_CREAT | O_TMPFILE)) ? mode : 0,
	    .resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS,
	};
	long fd;

	do
		fd = syscall(SYS_openat2, dirfd, rel, &how, sizeof(how));
	while (fd == -1 && errno == EAGAIN);
	if (fd == -1)
		return errno == EXDEV ? -ENOENT : -errno;
	return (int)fd;
}

int fs_open_beneath(int root_fd, const char *rel, int flags, mode_t mode)
{
	while (*rel == '/')
		rel++;
	return open_beneath(root_fd, *rel ? rel : ".", flags | O_NOFOLLOW, mode);
}

/* Does a video's name already say MP4/MOV, so an MP4 can keep it? */
static int name_says_mp4(const char *name)
{
	const char *dot = strrchr(name, '.');

	return dot &&
	       (!strcasecmp(dot, ".mp4") || !strcasecmp(dot, ".mov") || !strcasecmp(dot, ".m4v"));
}

int fs_stored_name(const char *name, const char *suffix, char *out, size_t size)
{
	if (!strcmp(suffix, ".mp4") && name_says_mp4(name))
		suffix = "";
	if ((size_t)snprintf(out, size, "%s%s", name, suffix) >= size || strlen(out) > NAME_MAX)
		return -ENAMETOOLONG;
	return 0;
}

int fs_copy_fd(int src, int dst, uint64_t limit)
{
	off_t off = 0;

	while ((uint64_t)off < limit) {
		ssize_t n = copy_file_range(src, &off, dst, NULL, (size_t)(limit - (uint64_t)off), 0);
		if (n == -1 && (errno == EXDEV || errno == EINVAL || errno == ENOSYS))
			n = sendfile(dst, src, &off, (size_t)(limit - (uint64_t)off));
		if (n == -1 && errno == EINTR)
			continue;
		if (n == -1)
			return -errno;
		if (n == 0)
			break;
	}
	return 0;
}

int fs_open_parent(struct fs *fs, const char *path, const char **name)
{
	char buf[4096];
	const char *slash;
	size_t len;

	while (*path == '/')
		path++;
	if (*path == '\0')
		return -EINVAL;
	slash = strrchr(path, '/');
	if (!slash) {
		*name = path;
		return open_beneath(fs->root_fd, ".", O_PATH | O_DIRECTORY, 0);
	}
	*name = slash + 1;
	len = (size_t)(slash - path);
	if (len >= sizeof(buf))
		return -ENAMETOOLONG;
	memcpy(buf, path, len);
	buf[len] = '\0';
	return open_beneath(fs->root_fd, buf, O_PATH | O_DIRECTORY, 0);
}

int fs_open_path(struct fs *fs, const char *path, int flags, mode_t mode)
{
	while (*path == '/')
		path++;
	return open_beneath(fs->root_fd, *path ? path : ".", flags | O_NOFOLLOW, mode);
}

int fs_hidden_name(const char *name)
{
	static const char prefix[] = ".fuse_hidden";
	const size_t n = sizeof(prefix) - 1;

	if (strncmp(name, prefix, n) != 0)
		return 0;
	for (size_t i = n; i < n + 16; i++)
		if (!((name[i] >= '0' && name[i] <= '9') || (name[i] >= 'a' && name[i] <= 'f')))
			return 0;
	return name[n + 16] == '\0';
}

int fs_hidden_key(int dirfd, const char *name, char *buf, size_t size)
{
	struct stat st;

	if (fstat(dirfd, &st) == -1)
		return -errno;
	if ((size_t)snprintf(buf, size, "%llx-%s", (unsigned long long)st.st_ino, name) >= size)
		return -ENAMETOOLONG;
	return 0;
}

const char *fs_basename(const char *path)
{
	const char *slash = strrchr(path, '/');

	return slash ? slash + 1 : path;
}

int fs_has_archive_suffix(const char *name)
{
	size_t n = strlen(name);

	for (size_t i = 0; i < NSUFFIXES; i++) {
		size_t s = strlen(archive_suffixes[i]);
		if (n > s && strcmp(name + n - s, archive_suffixes[i]) == 0)
			return 1;
	}
	return 0;
}

int fs_entry_get(struct fs *fs, uint64_t ino, struct idx_entry *e)
{
	struct idx_txn *txn;
	int rc = idx_begin(fs->idx, 0, &txn);

	if (rc)
		return rc;
	rc = idx_get(txn, ino, e);
	idx_abort(txn);
	return rc;
}

/* Is the backing file name (with inode ino) the archived copy of a logical
 * name, i.e. archived with exactly the suffix it ends in? */
static int is_archive_of(const struct idx_entry *e, const char *name)
{
	size_t n = strlen(name), s = strlen(e->suffix);

	return e->state == IDX_ARCHIVED && s > 0 && n > s && strcmp(name + n - s, e->suffix) == 0;
}

const char *fs_logical_name(struct fs *fs, struct idx_txn *txn, const char *name, uint64_t ino,
			    char *buf, size_t size)
{
	struct idx_entry e;
	size_t n;

	if (fs->cfg->view == FS_VIEW_NATIVE || !fs_has_archive_suffix(name))
		return name;
	if (idx_get(txn, ino, &e) != 0 || !is_archive_of(&e, name))
		return name;
	n = strlen(name) - strlen(e.suffix);
	if (n >= size)
		return NULL;
	memcpy(buf, name, n);
	buf[n] = '\0';
	return buf;
}

int fs_lookup(struct fs *fs, const char *path, struct fs_lookup *lk)
{
	int rc = fs_lookup_for_create(fs, path, lk);

	if (rc == -ENOENT && lk->parent >= 0) {
		close(lk->parent);
		lk->parent = -1;
	}
	return rc;
}

/* Look name up in the directory lk->parent (open): 0, or -ENOENT with
 * lk->name set to name for a create, or ARCHIVE_OWN_NAME, or another
 * -errno. */
#define ARCHIVE_OWN_NAME 1
static int lookup_in(struct fs *fs, const char *name, struct fs_lookup *lk)
{
	size_t nlen = strlen(name);

	if (nlen > 255)
		return -ENAMETOOLONG;
	memcpy(lk->name, name, nlen + 1);
	if (fstatat(lk->parent, name, &lk->st, AT_SYMLINK_NOFOLLOW) == 0) {
		/* Only a name with an archive suffix can differ from what is
		 * stored (hidden, or shown with its view's size); any other
		 * regular file reads its own bytes, so getattr, the hot path,
		 * needs no index lookup for it. */
		if (S_ISREG(lk->st.st_mode) && fs_has_archive_suffix(name) &&
		    fs_entry_get(fs, lk->st.st_ino, &lk->e) == 0)
			lk->has_entry = 1;
		/* In the legacy view an archived copy answers only to the
		 * logical name, not to its own. */
		if (fs->cfg->view == FS_VIEW_LEGACY && lk->has_entry && is_archive_of(&lk->e, name))
			return ARCHIVE_OWN_NAME;
		lk->archived = lk->has_entry && lk->e.state == IDX_ARCHIVED;
		return 0;
	}
	if (errno != ENOENT)
		return -errno;
	if (fs->cfg->view == FS_VIEW_LEGACY) {
		for (size_t i = 0; i < NSUFFIXES; i++) {
			size_t s = strlen(archive_suffixes[i]);
			if (nlen + s > 255)
				continue;
			memcpy(lk->name + nlen, archive_suffixes[i], s + 1);
			if (fstatat(lk->parent, lk->name, &lk->st, AT_SYMLINK_NOFOLLOW) != 0 ||
			    !S_ISREG(lk->st.st_mode))
				continue;
			if (fs_entry_get(fs, lk->st.st_ino, &lk->e) == 0 &&
			    is_archive_of(&lk->e, lk->name)) {
				lk->has_entry = 1;
				lk->archived = 1;
				return 0;
			}
		}
		lk->name[nlen] = '\0';
	}
	memset(&lk->st, 0, sizeof(lk->st));
	lk->has_entry = 0;
	return -ENOENT;
}

int fs_lookup_for_create(struct fs *fs, const char *path, struct fs_lookup *lk)
{
	const char *name;
	int rc;

	memset(lk, 0, sizeof(*lk));
	if (fs_path_reserved(path))
		return -ENOENT;
	if (path[strspn(path, "/")] == '\0') {
		/* the root: "." of itself */
		lk->parent = open_beneath(fs->root_fd, ".", O_PATH | O_DIRECTORY, 0);
		if (lk->parent < 0)
			return lk->parent;
		strcpy(lk->name, ".");
		if (fstat(lk->parent, &lk->st) == -1) {
			rc = -errno;
			goto out_close;
		}
		return 0;
	}
	lk->parent = fs_open_parent(fs, path, &name);
	if (lk->parent < 0)
		return lk->parent;
	if (fs_hidden_name(name)) {
		/* a file of this directory removed while open lives on in the
		 * hidden directory under a name that says which directory */
		char key[64];
		int dir = lk->parent;
		if ((rc = fs_hidden_key(dir, name, key, sizeof(key))))
			goto out_close;
		lk->parent = fcntl(fs->hidden_fd, F_DUPFD_CLOEXEC, 0);
		if (lk->parent < 0) {
			rc = -errno;
			close(dir);
			return rc;
		}
		lk->hidden = 1;
		rc = lookup_in(fs, key, lk);
		if (rc != -ENOENT) {
			close(dir);
			goto out;
		}
		close(lk->parent);
		memset(lk, 0, sizeof(*lk));
		lk->parent = dir;
	}
	rc = lookup_in(fs, name, lk);
out:
	if (rc == ARCHIVE_OWN_NAME)
		rc = -ENOENT; /* and no create under it either */
	else if (rc == 0 || rc == -ENOENT)
		return rc; /* -ENOENT with the parent open, for a create */
out_close:
	close(lk->parent);
	lk->parent = -1;
	return rc;
}
