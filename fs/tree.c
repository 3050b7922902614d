/* tree — walking the backing tree: every entry below BACKING but the state
 * directory, without ever following a symlink. */
#include "internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* A walk in progress: the path so far lives in one buffer. */
struct walk {
	fs_tree_fn visit;
	fs_walk_fn visit_file;
	void *arg;
	char path[FS_PATH_MAX + NAME_MAX + 2];
};

/* Walk below dirfd (BACKING at depth 0), the path so far len bytes of
 * w->path. Returns the visitor's nonzero value when it stops the walk. */
static int walk_dir(struct walk *w, int dirfd, size_t len, int depth)
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
		    (depth == 0 && !strcmp(de->d_name, FS_STATE_DIR)) || sub >= FS_PATH_MAX ||
		    fstatat(dirfd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) == -1)
			continue;
		if (len)
			w->path[len] = '/';
		memcpy(w->path + len + (len ? 1 : 0), de->d_name, nlen + 1);
		if (S_ISDIR(st.st_mode)) {
			int child = openat(dirfd, de->d_name,
					   O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
			if (w->visit)
				stop =
				    w->visit(w->arg, FS_TREE_DIR, dirfd, de->d_name, &st, w->path);
			if (!stop && child >= 0)
				stop = walk_dir(w, child, sub, depth + 1);
			if (!stop && w->visit) {
				w->path[sub] = '\0';
				stop = w->visit(w->arg, FS_TREE_DIR_END, dirfd, de->d_name, &st,
						w->path);
			}
			if (child >= 0)
				close(child);
		} else if (S_ISREG(st.st_mode)) {
			stop = w->visit
				   ? w->visit(w->arg, FS_TREE_FILE, dirfd, de->d_name, &st, w->path)
				   : w->visit_file(w->arg, dirfd, de->d_name, &st, w->path);
		} else if (w->visit) {
			stop = w->visit(w->arg, FS_TREE_OTHER, dirfd, de->d_name, &st, w->path);
		}
		w->path[len] = '\0';
	}
	closedir(d);
	return stop;
}

int fs_walk(int root_fd, fs_walk_fn visit, void *arg)
{
	struct walk *w = calloc(1, sizeof(*w));
	int rc;

	if (!w)
		return -ENOMEM;
	w->visit_file = visit;
	w->arg = arg;
	rc = walk_dir(w, root_fd, 0, 0);
	free(w);
	return rc;
}

int fs_walk_tree(int root_fd, fs_tree_fn visit, void *arg)
{
	struct walk *w = calloc(1, sizeof(*w));
	int rc;

	if (!w)
		return -ENOMEM;
	w->visit = visit;
	w->arg = arg;
	rc = walk_dir(w, root_fd, 0, 0);
	free(w);
	return rc;
}
