/*
 * cache — rendered JPEG views of archived photos and JPEG siblings of HEIF
 * photos, on disk in the state directory's cache: "<ino>" a view,
 * "<ino>.jpg" a sibling, bounded by cache_bytes with least-recently-used
 * eviction (a file's mtime is its last use). Concurrent readers of one
 * photo wait for a single render. Every render is deterministic, so one
 * evicted comes back with the size and digest the index recorded.
 *
 * Lock: render_lock (a leaf) guards the set of renders under way and the
 * ring of cache files found whole.
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

	fs_mutex_lock(&fs->render_lock);
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
	fs_mutex_unlock(&fs->render_lock);
	return seen;
}

/* The cache name of ino's view or sibling. */
static void cache_name(uint64_t ino, int sibling, char buf[32])
{
	snprintf(buf, 32, "%llu%s", (unsigned long long)ino, sibling ? ".jpg" : "");
}

/* Open the cached view (or sibling) of ino if it is there, whole and (with
 * verify_reads, once a mount) equal to its digest e->view_sum. */
static int cached(struct fs *fs, uint64_t ino, int sibling, const struct idx_entry *e)
{
	char name[32];
	struct stat st;
	int fd;

	cache_name(ino, sibling, name);
	fd = openat(fs->cache_fd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (fstat(fd, &st) == -1 || (uint64_t)st.st_size != e->view_bytes)
		goto out_drop;
	if (fs->cfg->verify_reads && !sum_is_zero(e->view_sum) &&
	    !view_checked(fs, (uint64_t)st.st_ino, 0)) {
		struct sum_file f;
		int bad = sum_file(fd, 0, 0, 0, NULL, NULL, &f) != 0;
		if (!bad) {
			bad = memcmp(f.whole, e->view_sum, SUM_LEN) != 0;
			sum_file_release(&f);
		}
		if (bad) {
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

int fs_view_cached(struct fs *fs, uint64_t ino, uint64_t size)
{
	char name[32];
	struct stat st;

	cache_name(ino, 0, name);
	return fstatat(fs->cache_fd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(st.st_mode) &&
	       (uint64_t)st.st_size == size;
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

	fs_mutex_lock(&fs->render_lock);
	for (;;) {
		size_t i;
		for (i = 0; i < fs->nrendering && fs->rendering[i] != ino; i++)
			;
		if (i == fs->nrendering)
			break;
		waited = 1;
		fs_cond_wait(&fs->render_cond, &fs->render_lock);
	}
	if (!waited) {
		uint64_t *r = realloc(fs->rendering, (fs->nrendering + 1) * sizeof(*r));
		if (r) {
			fs->rendering = r;
			fs->rendering[fs->nrendering++] = ino;
		}
	}
	fs_mutex_unlock(&fs->render_lock);
	return !waited;
}

static void render_done(struct fs *fs, uint64_t ino)
{
	fs_mutex_lock(&fs->render_lock);
	for (size_t i = 0; i < fs->nrendering; i++) {
		if (fs->rendering[i] == ino) {
			fs->rendering[i] = fs->rendering[--fs->nrendering];
			break;
		}
	}
	pthread_cond_broadcast(&fs->render_cond);
	fs_mutex_unlock(&fs->render_lock);
}

/* Render ino's view or sibling from its stored photo src into the cache
 * (rendering once however many readers ask), and open it. */
static int open_rendered(struct fs *fs, int src, uint64_t ino, int sibling,
			 const struct idx_entry *e, const char *path)
{
	char tmp[64], final[32], *tpath = NULL, what[128];
	uint64_t size = 0, key = ino * 2 + (uint64_t)sibling;
	int fd, rc;

	for (;;) {
		fd = cached(fs, ino, sibling, e);
		if (fd >= 0)
			return fd;
		if (render_claim(fs, key))
			break;
	}
	/* the HEIC is read whole by the render anyway: its digest first, so
	 * damage is an error rather than a concealed, plausible picture */
	if (fs->cfg->verify_reads && !sum_is_zero(e->sum)) {
		struct sum_file f;
		rc = sum_file(src, 0, 0, 0, NULL, NULL, &f);
		if (!rc) {
			if (f.size != e->stored_bytes || memcmp(f.whole, e->sum, SUM_LEN)) {
				fs_mark_damaged(fs, ino, path, "checksum mismatch");
				rc = -EIO;
			}
			sum_file_release(&f);
		}
		if (rc)
			goto out_done;
	}
	snprintf(tmp, sizeof(tmp), "%llu.%d.render", (unsigned long long)ino, sibling);
	cache_name(ino, sibling, final);
	if (asprintf(&tpath, "%s/%s", fs->cache_dir, tmp) < 0) {
		tpath = NULL;
		rc = -ENOMEM;
		goto out_done;
	}
	rc = fs_render_isolated(src, tpath, sibling, &fs->cfg->codec, &size);
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
	render_done(fs, key);
	return rc;
}

int fs_view_open(struct fs *fs, int stored, uint64_t ino, const struct idx_entry *e,
		 const char *path)
{
	return open_rendered(fs, stored, ino, 0, e, path);
}

int fs_sibling_open(struct fs *fs, int stored, uint64_t ino, const struct idx_entry *e,
		    const char *path)
{
	return open_rendered(fs, stored, ino, 1, e, path);
}

int fs_sibling_render(struct fs *fs, int fd, uint64_t ino, uint64_t *bytes, uint8_t sum[SUM_LEN])
{
	char tmp[64], final[32], *tpath = NULL;
	struct sum_file f;
	int out = -1, rc;

	snprintf(tmp, sizeof(tmp), "%llu.1.render", (unsigned long long)ino);
	cache_name(ino, 1, final);
	if (asprintf(&tpath, "%s/%s", fs->cache_dir, tmp) < 0)
		return -ENOMEM;
	render_claim(fs, ino * 2 + 1);
	rc = fs_render_isolated(fd, tpath, 1, &fs->cfg->codec, bytes);
	if (!rc && (out = openat(fs->cache_fd, tmp, O_RDONLY | O_CLOEXEC)) < 0)
		rc = -errno;
	if (!rc && !(rc = sum_file(out, 0, 0, 0, NULL, NULL, &f))) {
		memcpy(sum, f.whole, SUM_LEN);
		if (f.size != *bytes)
			rc = -EIO;
		sum_file_release(&f);
	}
	if (!rc && renameat(fs->cache_fd, tmp, fs->cache_fd, final) == -1)
		rc = -errno;
	if (rc)
		unlinkat(fs->cache_fd, tmp, 0);
	if (out >= 0)
		close(out);
	render_done(fs, ino * 2 + 1);
	free(tpath);
	if (!rc)
		fs_cache_trim(fs);
	return rc;
}

void fs_view_drop(struct fs *fs, uint64_t ino)
{
	char name[32];

	cache_name(ino, 0, name);
	unlinkat(fs->cache_fd, name, 0);
	cache_name(ino, 1, name);
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
