/*
 * names — the one place that knows how logical names map to stored ones
 * (an archived photo IMG.JPG is IMG.JPG.heic, a video clip.avi becomes
 * clip.avi.mp4 but VID.MP4 keeps its name, a HEIF photo may show a JPEG
 * sibling X.HEIC.jpg, the state directory is nobody's), and resolution that
 * cannot leave BACKING. Paths here are relative to BACKING, without a
 * leading '/', at most FS_PATH_MAX bytes with the terminator.
 */
#include "internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/sendfile.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* Suffixes an archived copy's backing name may carry (mutually exclusive:
 * their order does not matter). */
static const char *const archive_suffixes[] = {".heic", ".mp4", ".mkv"};
#define NSUFFIXES (sizeof(archive_suffixes) / sizeof(archive_suffixes[0]))
/* What a HEIF photo's JPEG sibling adds to its name. */
#define SIBLING_SUFFIX ".jpg"

int64_t fs_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int fs_name_ok(const char *name)
{
	size_t n = strlen(name);

	return n > 0 && n <= NAME_MAX && !strchr(name, '/') && strcmp(name, ".") &&
	       strcmp(name, "..");
}

int fs_name_reserved(int is_root, const char *name)
{
	return is_root && strcmp(name, FS_STATE_DIR) == 0;
}

int fs_path_reserved(const char *path)
{
	size_t n = strlen(FS_STATE_DIR);

	while (*path == '/')
		path++;
	return strncmp(path, FS_STATE_DIR, n) == 0 && (path[n] == '\0' || path[n] == '/');
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

int fs_archive_beside(int dirfd, const char *name)
{
	char buf[NAME_MAX + 8];
	struct stat st;

	for (size_t i = 0; i < NSUFFIXES; i++)
		if ((size_t)snprintf(buf, sizeof(buf), "%s%s", name, archive_suffixes[i]) <
			sizeof(buf) &&
		    fstatat(dirfd, buf, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(st.st_mode))
			return 1;
	return 0;
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

const char *fs_basename(const char *path)
{
	const char *slash = strrchr(path, '/');

	return slash ? slash + 1 : path;
}

int fs_path_join(const char *parent, const char *name, char *buf, size_t size)
{
	size_t n = (size_t)snprintf(buf, size, "%s%s%s", parent, parent[0] ? "/" : "", name);

	return n >= size ? -ENAMETOOLONG : 0;
}

const char *fs_proc_fd(int fd, char *buf)
{
	snprintf(buf, FS_PROC_FD_BUF, "/proc/self/fd/%d", fd);
	return buf;
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

/* Is the backing name the archived copy of a logical name, archived with
 * exactly the suffix it ends in? */
static int is_archive_of(const struct idx_entry *e, const char *name)
{
	size_t n = strlen(name), s = strlen(e->suffix);

	return e->state == IDX_ARCHIVED && s > 0 && n > s && strcmp(name + n - s, e->suffix) == 0;
}

/* Does this entry give a HEIF photo a JPEG sibling? */
static int has_sibling(struct fs *fs, const struct idx_entry *e)
{
	return fs->cfg->heic_view && e->state == IDX_KEPT && (e->flags & IDX_F_SIBLING) &&
	       e->view_bytes > 0;
}

/* Is the logical name lname of an archived copy stored with suffix taken
 * in dirfd by something the legacy view shows first: a file of that very
 * name, or an archived copy of it under a suffix tried before this one?
 * Then the copy is shown under its stored name (a tree made through the
 * native view, or by hand, can hold both). */
static int taken_before(struct fs *fs, struct idx_txn *txn, int dirfd, const char *lname,
			const char *suffix)
{
	char name[FS_STORED_BUF];
	struct idx_entry e;
	struct stat st;
	size_t n = strlen(lname);

	if (fstatat(dirfd, lname, &st, AT_SYMLINK_NOFOLLOW) == 0)
		return 1;
	for (size_t i = 0; i < NSUFFIXES && strcmp(archive_suffixes[i], suffix); i++) {
		size_t s = strlen(archive_suffixes[i]);
		if (n + s >= sizeof(name))
			continue;
		memcpy(name, lname, n);
		memcpy(name + n, archive_suffixes[i], s + 1);
		if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(st.st_mode) &&
		    (txn ? idx_get(txn, (uint64_t)st.st_ino, &e)
			 : fs_entry_get(fs, (uint64_t)st.st_ino, &e)) == 0 &&
		    is_archive_of(&e, name))
			return 1;
	}
	return 0;
}

int fs_resolve(struct fs *fs, int dirfd, int is_root, const char *name, struct fs_found *f)
{
	size_t nlen = strlen(name);

	memset(f, 0, sizeof(*f));
	if (nlen > NAME_MAX)
		return -ENAMETOOLONG;
	if (!fs_name_ok(name) || fs_name_reserved(is_root, name))
		return -ENOENT;
	memcpy(f->lname, name, nlen + 1);
	memcpy(f->name, name, nlen + 1);
	if (fstatat(dirfd, name, &f->st, AT_SYMLINK_NOFOLLOW) == 0) {
		/* only a name with an archive suffix can differ from what is
		 * stored; any other file is itself, with no index lookup */
		if (S_ISREG(f->st.st_mode) && fs_has_archive_suffix(name) &&
		    fs_entry_get(fs, f->st.st_ino, &f->e) == 0) {
			f->has_entry = 1;
			/* in the legacy view an archived copy answers only to
			 * its logical name, never to its own, unless that name
			 * is taken (then it is shown as stored) */
			if (fs->cfg->view == FS_VIEW_LEGACY && is_archive_of(&f->e, name)) {
				char lname[FS_NAME_BUF];
				size_t l = nlen - strlen(f->e.suffix);
				memcpy(lname, name, l);
				lname[l] = '\0';
				if (!taken_before(fs, NULL, dirfd, lname, f->e.suffix)) {
					memset(f, 0, sizeof(*f));
					return -ENOENT;
				}
			}
		}
		return 0;
	}
	if (errno != ENOENT)
		return -errno;
	/* an archived copy under its logical name: the legacy view's */
	for (size_t i = 0; fs->cfg->view == FS_VIEW_LEGACY && i < NSUFFIXES; i++) {
		size_t s = strlen(archive_suffixes[i]);
		if (nlen + s > NAME_MAX)
			continue;
		memcpy(f->name + nlen, archive_suffixes[i], s + 1);
		if (fstatat(dirfd, f->name, &f->st, AT_SYMLINK_NOFOLLOW) != 0 ||
		    !S_ISREG(f->st.st_mode) || fs_entry_get(fs, f->st.st_ino, &f->e) != 0 ||
		    !is_archive_of(&f->e, f->name))
			continue;
		f->has_entry = 1;
		if (!strcmp(f->e.suffix, ".heic")) {
			f->kind = FS_KIND_VIEW;
			f->view_bytes = f->e.view_bytes;
		}
		return 0;
	}
	/* X.HEIC.jpg: the JPEG sibling of a HEIF photo X.HEIC (either view) */
	if (fs->cfg->heic_view && nlen > strlen(SIBLING_SUFFIX) &&
	    !strcmp(name + nlen - strlen(SIBLING_SUFFIX), SIBLING_SUFFIX)) {
		f->name[nlen - strlen(SIBLING_SUFFIX)] = '\0';
		if (fstatat(dirfd, f->name, &f->st, AT_SYMLINK_NOFOLLOW) == 0 &&
		    S_ISREG(f->st.st_mode) && fs_entry_get(fs, f->st.st_ino, &f->e) == 0 &&
		    has_sibling(fs, &f->e)) {
			f->has_entry = 1;
			f->kind = FS_KIND_SIBLING;
			f->view_bytes = f->e.view_bytes;
			return 0;
		}
	}
	memset(&f->st, 0, sizeof(f->st));
	f->has_entry = 0;
	memcpy(f->name, name, nlen + 1);
	return -ENOENT;
}

const char *fs_list_name(struct fs *fs, struct idx_txn *txn, int dirfd, int is_root,
			 const char *name, uint64_t ino, unsigned char d_type, char *buf,
			 size_t size)
{
	struct idx_entry e;
	size_t n;

	if (fs_name_reserved(is_root, name))
		return NULL;
	if (fs->cfg->view != FS_VIEW_LEGACY || !txn || (d_type != DT_REG && d_type != DT_UNKNOWN) ||
	    !fs_has_archive_suffix(name))
		return name;
	if (idx_get(txn, ino, &e) != 0 || !is_archive_of(&e, name))
		return name;
	n = strlen(name) - strlen(e.suffix);
	if (n >= size)
		return NULL;
	memcpy(buf, name, n);
	buf[n] = '\0';
	/* its logical name taken: shown as stored, never twice */
	return taken_before(fs, txn, dirfd, buf, e.suffix) ? name : buf;
}

const char *fs_sibling_name(struct fs *fs, int dirfd, const char *name, const struct idx_entry *e,
			    char *buf, size_t size)
{
	struct stat st;

	if (!has_sibling(fs, e) ||
	    (size_t)snprintf(buf, size, "%s%s", name, SIBLING_SUFFIX) >= size ||
	    strlen(buf) > NAME_MAX)
		return NULL;
	/* a file of that name is shown instead: a sibling is a rendering */
	if (fstatat(dirfd, buf, &st, AT_SYMLINK_NOFOLLOW) == 0)
		return NULL;
	return buf;
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

int fs_open_path(struct fs *fs, const char *path, int flags, mode_t mode)
{
	return fs_open_beneath(fs->root_fd, path, flags, mode);
}

int fs_open_parent(struct fs *fs, const char *path, const char **name)
{
	char buf[FS_PATH_MAX];
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

int fs_resolve_path(struct fs *fs, const char *path, int *dirfd, struct fs_found *f)
{
	const char *name;
	int rc;

	while (*path == '/')
		path++;
	if (fs_path_reserved(path))
		return -ENOENT;
	*dirfd = fs_open_parent(fs, path, &name);
	if (*dirfd < 0)
		return *dirfd;
	rc = fs_resolve(fs, *dirfd, strchr(path, '/') == NULL, name, f);
	if (rc) {
		close(*dirfd);
		*dirfd = -1;
	}
	return rc;
}

int fs_copy_fd(int src, int dst, uint64_t limit)
{
	off_t off = 0;

	while ((uint64_t)off < limit) {
		ssize_t n =
		    copy_file_range(src, &off, dst, NULL, (size_t)(limit - (uint64_t)off), 0);
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
