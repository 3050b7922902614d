/*
 * cache — rendered JPEG views of archived photos, on disk in
 * BACKING/.hevcfs/cache, one file per archived inode, bounded by cache_bytes
 * with least-recently-used eviction (a view's mtime is its last use).
 * Concurrent readers of one photo wait for a single render.
 */
#include "internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Cache files whose bytes were found equal to their view's digest in this
 * mount (their inode numbers, a ring): a view is hashed once, not at every
 * open. */
#define VIEWS_CHECKED 1024

/* Has the cache file with inode cino been checked? Remember it when add. */
static int view_checked(struct fs *fs, uint64_t cino, int add)
{
	int seen = 0;

	pthread_mutex_lock(&fs->render_lock);
	for (size_t i = 0; i < fs->nviews_checked && !seen; i++)
		seen = fs->views_checked[i] == cino;
	if (!seen && add) {
		if (!fs->views_checked)
			fs->views_checked = calloc(VIEWS_CHECKED, sizeof(*fs->views_checked));
		if (fs->views_checked) {
			fs->views_checked[fs->views_next] = cino;
			fs->views_next = (fs->views_next + 1) % VIEWS_CHECKED;
			if (fs->nviews_checked < VIEWS_CHECKED)
				fs->nviews_checked++;
		}
	}
	pthread_mutex_unlock(&fs->render_lock);
	return seen;
}

/* Open the cached view of ino if it is there, whole and (with
 * verify_reads, once a mount) equal to the view's digest e->view_sum. */
static int cached(struct fs *fs, uint64_t ino, const struct idx_entry *e)
{
	char name[32];
	struct stat st;
	int fd;

	snprintf(name, sizeof(name), "%llu", (unsigned long long)ino);
	fd = openat(fs->cache_fd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (fstat(fd, &st) == -1 || (uint64_t)st.st_size != e->view_bytes)
		goto out_drop;
	if (fs->cfg->verify_reads && !sum_is_zero(e->view_sum) &&
	    !view_checked(fs, (uint64_t)st.st_ino, 0)) {
		struct sum_file f;
		if (sum_file(fd, 0, 0, 0, NULL, NULL, &f) != 0 ||
		    memcmp(f.whole, e->view_sum, SUM_LEN) != 0) {
			/* the cache's own damage: the view is made again */
			log_msg(LOG_WARNING, "cache: view of inode %llu damaged, rendered again",
				(unsigned long long)ino);
			goto out_drop;
		}
		view_checked(fs, (uint64_t)st.st_ino, 1);
	}
	/* mark it used (its mtime orders eviction) */
	struct timespec ts[2] = {{.tv_nsec = UTIME_OMIT}, {.tv_nsec = UTIME_NOW}};
	futimens(fd, ts);
	return fd;
out_drop:
	close(fd);
	unlinkat(fs->cache_fd, name, 0);
	return -ENOENT;
}

/* Is a render's failure (rc) the stored file's fault: it does not decode? */
static int render_damage(int rc)
{
	return rc == -EINVAL || rc == -EIO || rc == -EPROTO || rc == -EBADMSG;
}

/* Claim the render of ino, or wait for the thread doing it. Returns 1 when
 * the caller must render, 0 when another thread just did. */
static int render_claim(struct fs *fs, uint64_t ino)
{
	int waited = 0;

	pthread_mutex_lock(&fs->render_lock);
	for (;;) {
		size_t i;
		for (i = 0; i < fs->nrendering && fs->rendering[i] != ino; i++)
			;
		if (i == fs->nrendering)
			break;
		waited = 1;
		pthread_cond_wait(&fs->render_cond, &fs->render_lock);
	}
	if (!waited) {
		uint64_t *r = realloc(fs->rendering, (fs->nrendering + 1) * sizeof(*r));
		if (r) {
			fs->rendering = r;
			fs->rendering[fs->nrendering++] = ino;
		}
	}
	pthread_mutex_unlock(&fs->render_lock);
	return !waited;
}

static void render_done(struct fs *fs, uint64_t ino)
{
	pthread_mutex_lock(&fs->render_lock);
	for (size_t i = 0; i < fs->nrendering; i++) {
		if (fs->rendering[i] == ino) {
			fs->rendering[i] = fs->rendering[--fs->nrendering];
			break;
		}
	}
	pthread_cond_broadcast(&fs->render_cond);
	pthread_mutex_unlock(&fs->render_lock);
}

int fs_view_open(struct fs *fs, int parent, const char *name, uint64_t ino,
		 const struct idx_entry *e, const char *path)
{
	char tmp[64], final[32], *tpath = NULL, what[128];
	uint64_t size = 0;
	int fd, src, rc;

	for (;;) {
		fd = cached(fs, ino, e);
		if (fd >= 0)
			return fd;
		if (render_claim(fs, ino))
			break;
	}
	src = openat(parent, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (src == -1) {
		rc = -errno;
		goto out_done;
	}
	/* the HEIC is read whole by the render anyway: its digest first, so
	 * damage is an error rather than a concealed, plausible picture */
	if (fs->cfg->verify_reads && !sum_is_zero(e->sum)) {
		struct sum_file f;
		rc = sum_file(src, 0, 0, 0, NULL, NULL, &f);
		if (!rc && (f.size != e->stored_bytes || memcmp(f.whole, e->sum, SUM_LEN))) {
			fs_mark_damaged(fs, ino, path, "checksum mismatch");
			rc = -EIO;
		}
		if (rc) {
			close(src);
			goto out_done;
		}
	}
	snprintf(tmp, sizeof(tmp), "%llu.render", (unsigned long long)ino);
	snprintf(final, sizeof(final), "%llu", (unsigned long long)ino);
	if (asprintf(&tpath, "%s/%s", fs->cache_dir, tmp) < 0) {
		tpath = NULL;
		close(src);
		rc = -ENOMEM;
		goto out_done;
	}
	rc = codec_render_view(src, tpath, &fs->cfg->codec, &size);
	close(src);
	if (rc) {
		if (render_damage(rc)) {
			snprintf(what, sizeof(what), "the stored photo does not render (%s)",
				 strerror(-rc));
			fs_mark_damaged(fs, ino, path, what);
			rc = -EIO;
		} else {
			log_msg(LOG_ERR, "view of %s: render failed: %s", path, strerror(-rc));
		}
		goto out_unlink;
	}
	if (size != e->view_bytes) {
		/* stat promised another size: serving it would cut or pad what
		 * readers see */
		snprintf(what, sizeof(what), "the view renders to %llu bytes, %llu promised",
			 (unsigned long long)size, (unsigned long long)e->view_bytes);
		fs_mark_damaged(fs, ino, path, what);
		rc = -EIO;
		goto out_unlink;
	}
	if (renameat(fs->cache_fd, tmp, fs->cache_fd, final) == -1) {
		rc = -errno;
		goto out_unlink;
	}
	rc = openat(fs->cache_fd, final, O_RDONLY | O_CLOEXEC);
	if (rc == -1)
		rc = -errno;
	fs_cache_trim(fs); /* after the open: an evicted view stays readable */
	goto out_done;
out_unlink:
	unlinkat(fs->cache_fd, tmp, 0);
out_done:
	free(tpath);
	render_done(fs, ino);
	return rc;
}

void fs_view_drop(struct fs *fs, uint64_t ino)
{
	char name[32];

	snprintf(name, sizeof(name), "%llu", (unsigned long long)ino);
	unlinkat(fs->cache_fd, name, 0);
}

struct cache_file {
	struct timespec used;
	off_t size;
	char name[32];
};

static int by_use(const void *a, const void *b)
{
	const struct cache_file *x = a, *y = b;

	if (x->used.tv_sec != y->used.tv_sec)
		return x->used.tv_sec < y->used.tv_sec ? -1 : 1;
	return x->used.tv_nsec < y->used.tv_nsec ? -1 : x->used.tv_nsec > y->used.tv_nsec;
}

void fs_cache_trim(struct fs *fs)
{
	struct cache_file *files = NULL;
	size_t n = 0, cap = 0;
	uint64_t total = 0;
	struct dirent *de;
	DIR *dir;
	int fd = openat(fs->cache_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	if (fd < 0 || !(dir = fdopendir(fd))) {
		if (fd >= 0)
			close(fd);
		return;
	}
	while ((de = readdir(dir))) {
		struct stat st;
		if (de->d_name[0] == '.' || strlen(de->d_name) >= sizeof(files->name) ||
		    fstatat(fs->cache_fd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) == -1)
			continue;
		if (n == cap) {
			cap = cap ? cap * 2 : 64;
			struct cache_file *g = realloc(files, cap * sizeof(*files));
			if (!g)
				break;
			files = g;
		}
		files[n].used = st.st_mtim;
		files[n].size = st.st_size;
		memcpy(files[n].name, de->d_name, strlen(de->d_name) + 1);
		total += (uint64_t)st.st_blocks * 512;
		n++;
	}
	closedir(dir);
	if (total > fs->cfg->cache_bytes) {
		qsort(files, n, sizeof(*files), by_use);
		for (size_t i = 0; i < n && total > fs->cfg->cache_bytes; i++) {
			if (strstr(files[i].name, ".render"))
				continue;
			if (unlinkat(fs->cache_fd, files[i].name, 0) == 0)
				total -= (uint64_t)files[i].size;
		}
	}
	free(files);
}
