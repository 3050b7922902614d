/*
 * ops — the FUSE low-level operations: a passthrough to the backing tree by
 * inode (each node holds an O_PATH fd of its backing file; names come one
 * component at a time and are resolved below their directory, so no path
 * can leave BACKING), plus the mapping of archived files to their logical
 * names and views, and the hooks that stage written files for archiving.
 */
#include "internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/xattr.h>
#include <unistd.h>

/* How long the kernel may keep names and attributes: every change goes
 * through the mount or is told to the kernel (fs_notify_*), so long. */
#define ENTRY_TIMEOUT 86400.0
#define ATTR_TIMEOUT 86400.0
/* Largest chunk the kernel reads or writes at once. */
#define IO_MAX (1u << 20)

/* A handle the kernel holds: on fs->live until its release. */
struct live {
	struct live *prev, *next;
	int dir; /* a struct dirh, else a struct handle */
};

/* An open file. */
struct handle {
	struct live live;     /* first: a struct live * is the handle */
	int fd;		      /* what reads and writes go to (a view's cache
				 file once rendered) */
	int stored;	      /* a view: its stored HEIC, open for reading */
	struct fs_node *node; /* held */
	int writable;
	int staged; /* the index already says "staged" */
	enum fs_kind kind;
	struct codec_view_map *map; /* a view: what is served without a render */
	struct fs_check *check;	    /* its reads checked (sums.c), or NULL */
	pthread_mutex_t lock;	    /* a view: its render, once */
	uint64_t ino;		    /* backing inode */
	uint64_t view_bytes;	    /* a view or sibling: its size */
};

/* An open directory, read in a stream. */
struct dirh {
	struct live live; /* first */
	DIR *dir;
	struct fs_node *node;	   /* held */
	off_t pos;		   /* telldir() after the last entry returned */
	struct dirent *held;	   /* read but not yet passed on */
	char sibling[FS_NAME_BUF]; /* a sibling name still to pass on at pos */
};

static void live_add(struct fs *fs, struct live *l, int dir)
{
	l->dir = dir;
	fs_mutex_lock(&fs->live_lock);
	l->prev = NULL;
	l->next = fs->live;
	if (fs->live)
		fs->live->prev = l;
	fs->live = l;
	fs_mutex_unlock(&fs->live_lock);
}

static void live_del(struct fs *fs, struct live *l)
{
	fs_mutex_lock(&fs->live_lock);
	if (l->prev)
		l->prev->next = l->next;
	else
		fs->live = l->next;
	if (l->next)
		l->next->prev = l->prev;
	l->prev = l->next = NULL;
	fs_mutex_unlock(&fs->live_lock);
}

static struct fs *fs_of(fuse_req_t req)
{
	return fuse_req_userdata(req);
}

static struct fs_node *node_of(fuse_req_t req, fuse_ino_t ino)
{
	return fs_node_of(fs_of(req), ino);
}

/* Reply an error (errno value, positive) or success. */
static void reply_err(fuse_req_t req, int rc)
{
	fuse_reply_err(req, rc < 0 ? -rc : rc);
}

/* A new object belongs to the caller, as on a local disk (when we can); the
 * group follows a set-gid parent directory. */
static void own_new(fuse_req_t req, int parent, const char *name)
{
	const struct fuse_ctx *ctx = fuse_req_ctx(req);
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

/* The logical path of name in the directory node p, into buf. */
static int path_in(struct fs *fs, struct fs_node *p, const char *name, char *buf, size_t size)
{
	char dir[FS_PATH_MAX];
	int rc = fs_node_path(fs, p, dir, sizeof(dir));

	return rc ? rc : fs_path_join(dir, name, buf, size);
}

/* Fill an entry reply for node n (one more lookup of it, by the caller). */
static int entry_of(struct fs *fs, struct fs_node *n, struct fuse_entry_param *e)
{
	memset(e, 0, sizeof(*e));
	e->ino = fs_node_id(n);
	e->generation = fs_node_generation(n);
	e->attr_timeout = ATTR_TIMEOUT;
	e->entry_timeout = ENTRY_TIMEOUT;
	return fs_node_stat(fs, n, &e->attr);
}

/* Look name up in p and make the kernel's entry for it (nlookup + 1). */
static int lookup_entry(struct fs *fs, struct fs_node *p, const char *name,
			struct fuse_entry_param *e)
{
	struct fs_found f;
	struct fs_node *n;
	int rc = fs_resolve(fs, fs_node_fd(p), p == fs_node_root(fs), name, &f);

	if (rc)
		return rc;
	if ((rc = fs_node_lookup(fs, p, &f, &n)))
		return rc;
	rc = entry_of(fs, n, e);
	if (rc)
		fs_node_forget(fs, n, 1);
	return rc;
}

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct fs *fs = fs_of(req);
	struct fuse_entry_param e;
	int rc = lookup_entry(fs, node_of(req, parent), name, &e);

	if (rc == -ENOENT) {
		/* "no such name" is cached too: every name appears through
		 * the mount, or is told (fs_notify_name) */
		memset(&e, 0, sizeof(e));
		e.entry_timeout = ENTRY_TIMEOUT;
		fuse_reply_entry(req, &e);
		return;
	}
	if (rc)
		reply_err(req, rc);
	else
		fuse_reply_entry(req, &e);
}

static void op_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
	fs_node_forget(fs_of(req), node_of(req, ino), nlookup);
	fuse_reply_none(req);
}

static void op_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets)
{
	struct fs *fs = fs_of(req);

	for (size_t i = 0; i < count; i++)
		fs_node_forget(fs, fs_node_of(fs, forgets[i].ino), forgets[i].nlookup);
	fuse_reply_none(req);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct stat st;
	int rc = fs_node_stat(fs_of(req), node_of(req, ino), &st);

	(void)fi;
	if (rc)
		reply_err(req, rc);
	else
		fuse_reply_attr(req, &st, ATTR_TIMEOUT);
}

/* ---- staging -------------------------------------------------------------- */

/* First change through a handle: new generation, "staged" in the index. */
static void handle_dirty(struct fs *fs, struct handle *h)
{
	fs_node_touch(fs, h->node);
	if (!h->staged) {
		struct stat st;
		char path[FS_PATH_MAX];
		h->staged = 1;
		/* a file with no name left (removed while open) is not staged */
		if (fstat(h->fd, &st) == 0 && fs_node_path(fs, h->node, path, sizeof(path)) == 0)
			fs_mark_staged(fs, (uint64_t)st.st_ino, (uint64_t)st.st_size, path);
	}
}

/* Forget everything hevcfs knows about a backing file that no longer has a
 * name: its job, its entry, its views, an archive it replaced. */
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
	fs_prev_drop(fs, ino, e.prev);
}

/* ---- files: open, read, write ------------------------------------------- */

static void op_release_handle(struct fs *fs, struct fuse_file_info *fi);

/* A backing file that fails from below (EACCES, EIO, ...): the request
 * fails, and the log says which file. */
static void log_fault(struct fs *fs, struct fs_node *n, const char *what, int rc)
{
	char path[FS_PATH_MAX];

	if (rc == -ENOENT || rc == -EAGAIN || rc == -ESTALE || rc == -EINTR)
		return; /* a race with a change of the tree, not a fault */
	if (fs_node_path(fs, n, path, sizeof(path)))
		snprintf(path, sizeof(path), "inode %llu", (unsigned long long)fs_node_ino(fs, n));
	log_msg(LOG_WARNING, "%s: %s: %s", path, what, strerror(-rc));
}

static void handle_free(struct fs *fs, struct handle *h)
{
	if (!h)
		return;
	live_del(fs, &h->live);
	if (h->node)
		fs_node_closed(fs, h->node, h->writable);
	if (h->stored >= 0)
		close(h->stored);
	if (h->fd >= 0)
		close(h->fd);
	fs_check_put(h->check);
	codec_view_map_release(h->map);
	free(h->map);
	pthread_mutex_destroy(&h->lock);
	free(h);
}

/* A handle on n with fd (taken), the file f says n stood for when fd was
 * opened. */
static struct handle *handle_new(struct fs *fs, struct fs_node *n, int fd, int writable,
				 const struct fs_node_file *f)
{
	struct handle *h = calloc(1, sizeof(*h));

	if (!h)
		return NULL;
	h->fd = fd;
	h->stored = -1;
	h->node = n;
	h->writable = writable;
	h->kind = f->kind;
	h->ino = f->ino;
	h->view_bytes = f->view_bytes;
	pthread_mutex_init(&h->lock, NULL);
	fs_node_opened(fs, n, writable);
	live_add(fs, &h->live, 0);
	return h;
}

/* A stored file at rest opened for reading: its reads are checked against
 * its digests (sums.c). */
static void check_reads(struct fs *fs, struct handle *h)
{
	struct idx_entry e;

	if (fs->cfg->verify_reads && fs_entry_get(fs, h->ino, &e) == 0)
		h->check = fs_check_attach(fs, h->node, h->fd >= 0 ? h->fd : h->stored, h->ino, &e);
}

/*
 * Turn the archived photo n (a view) back into a plain staged JPEG at its
 * logical name, so it can be written: the view's bytes (or nothing when
 * truncating), the archive kept aside (prev.c) in case the edit changes
 * only its metadata or brings its original back. Inside the open request.
 */
static int materialise(struct fs *fs, struct fs_node *n, int keep_bytes)
{
	struct idx_entry e;
	char name[FS_STORED_BUF], lname[FS_NAME_BUF], tmp[FS_JOB_NAME_BUF], path[FS_PATH_MAX];
	char dir[FS_PATH_MAX];
	struct stat st;
	int dirfd = -1, src = -1, dst = -1, view, rc;
	uint64_t ino = fs_node_ino(fs, n), staged = 0;

	if ((rc = fs_node_path(fs, n, path, sizeof(path))) ||
	    (rc = fs_node_at(fs, n, &dirfd, name, sizeof(name))))
		return rc;
	snprintf(lname, sizeof(lname), "%s", fs_basename(path));
	snprintf(dir, sizeof(dir), "%.*s",
		 (int)(fs_basename(path) - path) - (strchr(path, '/') ? 1 : 0), path);
	if ((rc = fs_entry_get(fs, ino, &e)))
		goto out;
	snprintf(tmp, sizeof(tmp), "edit.%llu", (unsigned long long)ino);
	dst = openat(fs->work_fd, tmp, O_CREAT | O_TRUNC | O_RDWR | O_CLOEXEC, 0600);
	src = openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (dst < 0 || src < 0) {
		rc = -errno;
		goto out;
	}
	if (keep_bytes) {
		view = fs_view_open(fs, src, ino, &e, path);
		if (view < 0) {
			rc = view;
			goto out;
		}
		rc = fs_copy_fd(view, dst, e.view_bytes);
		close(view);
		if (rc)
			goto out;
	}
	if ((rc = fs_copy_attrs(src, dst)) || fstat(dst, &st) == -1) {
		rc = rc ? rc : -errno;
		goto out;
	}
	if ((rc = fs_mark_staged(fs, (uint64_t)st.st_ino, (uint64_t)st.st_size, path)))
		goto out;
	staged = (uint64_t)st.st_ino;
	{
		struct fs_replace r = {
		    .dirfd = dirfd,
		    .dir = dir,
		    .x_name = name,
		    .x_ino = ino,
		    .y_dirfd = fs->work_fd,
		    .y_name = tmp,
		    .target = lname,
		    .kind = FS_KIND_PLAIN,
		    .flags = FS_REPLACE_KEEP_X | FS_REPLACE_HAVE_NS | FS_REPLACE_IN_REQUEST,
		};
		switch (fs_replace(fs, &r, &rc)) {
		case FS_REPLACED:
			rc = 0;
			break;
		case FS_REPLACE_TAKEN:
			rc = -EEXIST;
			break;
		case FS_REPLACE_MOVED:
		case FS_REPLACE_OPEN:
			rc = -EAGAIN;
			break;
		case FS_REPLACE_ERROR:
			break;
		}
	}
out:
	if (rc) {
		unlinkat(fs->work_fd, tmp, 0);
		if (staged)
			forget_file(fs, staged);
	}
	if (src >= 0)
		close(src);
	if (dst >= 0)
		close(dst);
	if (dirfd >= 0)
		close(dirfd);
	return rc;
}

static int view_map(struct fs *fs, struct handle *h);

/* Open n as fi asks, into a new handle (fi->fh). 0 or -errno. */
static int open_node(struct fs *fs, struct fs_node *n, struct fuse_file_info *fi)
{
	int acc = fi->flags & O_ACCMODE, writable = acc != O_RDONLY;
	int trunc = (fi->flags & O_TRUNC) != 0, fd, rc = 0, locked = 0;
	struct fs_node_file f;
	struct handle *h;

	if (writable || trunc) {
		/* not between a commit's look at the file and its rename: what
		 * n stands for stays put until the handle counts as open */
		fs_mutex_lock(&fs->ns_lock);
		locked = 1;
	}
	fs_node_file(fs, n, &f);
	if (f.kind == FS_KIND_SIBLING && (writable || trunc)) {
		rc = -EROFS; /* a rendering of a HEIF photo: read only */
		goto out_unlock;
	}
	if (f.kind != FS_KIND_PLAIN && !writable && !trunc) {
		/* a view or sibling: its stored photo, rendered at need */
		fd = fs_node_reopen(fs, n, O_RDONLY, &f);
		if (fd < 0) {
			log_fault(fs, n, "cannot open its stored file", fd);
			return fd;
		}
		if (f.kind == FS_KIND_PLAIN)
			goto opened; /* turned back into a JPEG meanwhile */
		h = handle_new(fs, n, -1, 0, &f);
		if (!h) {
			close(fd);
			return -ENOMEM;
		}
		h->stored = fd;
		if (f.kind == FS_KIND_VIEW)
			check_reads(fs, h); /* its trailer is served from it */
		fi->fh = (uintptr_t)h;
		/* a view whose map knows all but its entropy-coded data, and
		 * that is not rendered yet, is read past the page cache: the
		 * kernel's readahead would carry a reader of its head into the
		 * image data, and render it */
		if (f.kind == FS_KIND_VIEW && view_map(fs, h) == 0 && h->map->end_len &&
		    !fs_view_cached(fs, h->ino, h->map->size))
			fi->direct_io = 1;
		else
			fi->keep_cache = 1; /* a view never changes while archived */
		return 0;
	}
	/* a photo opened for writing is a JPEG again */
	if (f.kind == FS_KIND_VIEW && (rc = materialise(fs, n, !trunc)))
		goto out_unlock;
	fd = fs_node_reopen(fs, n, fi->flags, &f);
	if (fd < 0) {
		log_fault(fs, n, "cannot open", fd);
		rc = fd;
		goto out_unlock;
	}
opened:
	if (f.kind != FS_KIND_PLAIN) {
		close(fd);
		if (locked) {
			/* cannot happen: ns_lock keeps commits out */
			rc = -EAGAIN;
			goto out_unlock;
		}
		goto view; /* read only, archived since the look above */
	}
	/* O_TRUNC changes the bytes even with O_RDONLY (Linux truncates): the
	 * handle counts as a writer, so its close settles the file again */
	h = handle_new(fs, n, fd, writable || trunc, &f);
	if (!h) {
		close(fd);
		rc = -ENOMEM;
		goto out_unlock;
	}
	fi->fh = (uintptr_t)h;
	if (trunc)
		handle_dirty(fs, h);
	else if (!writable && fs_node_type(n) == S_IFREG)
		check_reads(fs, h);
out_unlock:
	if (locked)
		fs_mutex_unlock(&fs->ns_lock);
	return rc;
view:
	return open_node(fs, n, fi);
}

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	int rc = open_node(fs_of(req), node_of(req, ino), fi);

	if (rc)
		reply_err(req, rc);
	else if (fuse_reply_open(req, fi) == -ENOENT)
		op_release_handle(fs_of(req), fi); /* the opener went away */
}

/* A view's map (what is served without a render), made at its open (or,
 * when that failed, tried again at each read until it renders). 0 or
 * -errno (the caller renders instead). */
static int view_map(struct fs *fs, struct handle *h)
{
	struct codec_view_map *m;
	struct idx_entry e;
	uint8_t sum[SUM_LEN];
	int rc;

	if (h->map)
		return 0;
	if (fs_entry_get(fs, h->ino, &e) || sum_is_zero(e.head_sum))
		return -ENOENT; /* archived before the head was recorded */
	m = calloc(1, sizeof(*m));
	if (!m)
		return -ENOMEM;
	rc = codec_view_map(h->stored, m);
	/* the head is checked against what was recorded (served bytes are
	 * never plausible garbage) */
	if (!rc && (m->size != e.view_bytes || codec_view_map_sum(m, sum) ||
		    memcmp(sum, e.head_sum, SUM_LEN)))
		rc = -EIO;
	if (rc) {
		codec_view_map_release(m);
		free(m);
		return rc;
	}
	h->map = m;
	return 0;
}

/* Render h's view (once) and make h->fd its cache file. */
static int view_render(struct fs *fs, struct handle *h, const char *why)
{
	struct idx_entry e;
	char path[FS_PATH_MAX];
	int fd, rc;

	if (h->fd >= 0)
		return 0;
	if ((rc = fs_entry_get(fs, h->ino, &e)))
		return rc;
	if (fs_node_path(fs, h->node, path, sizeof(path)))
		snprintf(path, sizeof(path), "%s", why);
	fd = h->kind == FS_KIND_SIBLING ? fs_sibling_open(fs, h->stored, h->ino, &e, path)
					: fs_view_open(fs, h->stored, h->ino, &e, path);
	if (fd < 0)
		return fd == -ENOSPC || fd == -EMFILE || fd == -ENFILE || fd == -ENOMEM ? fd : -EIO;
	if (h->map && !codec_view_map_matches(fd, h->map)) {
		/* the map may have served some of this view already: a render
		 * that says otherwise (TurboJPEG changed since the archive)
		 * would make the bytes read a mix of two files */
		log_msg(LOG_ERR, "%s: its view renders other bytes than its header item says",
			path);
		close(fd);
		return -EIO;
	}
	h->fd = fd;
	return 0;
}

/* Reply bytes [off, off + size) of fd (a splice where the kernel can). A
 * read error of fd is replied as that error by libfuse itself. */
static void reply_fd(fuse_req_t req, int fd, size_t size, off_t off)
{
	struct fuse_bufvec bv = FUSE_BUFVEC_INIT(size);

	bv.buf[0].flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
	bv.buf[0].fd = fd;
	bv.buf[0].pos = off;
	fuse_reply_data(req, &bv, FUSE_BUF_SPLICE_MOVE);
}

/* Does a view's map know bytes [off, end) after its image data: in the fill
 * and EOI that end it, and the trailer that follows when the stored file
 * holds it contiguous? */
static int view_end_known(const struct codec_view_map *m, uint64_t off, uint64_t end)
{
	uint64_t a, b;

	if (m->end_len) {
		a = m->end_off;
		b = m->end_off + m->end_len;
		if (m->tail_len && m->tail_off == b)
			b += m->tail_len;
	} else if (m->tail_len) {
		a = m->tail_off;
		b = m->tail_off + m->tail_len;
	} else {
		return 0;
	}
	return off >= a && end <= b;
}

/* Reply bytes [off, end) of h's view that its map knows (view_end_known):
 * the trailer is read from the stored file and checked against its block
 * digests. 0, or -errno when nothing was replied. */
static int view_reply_end(fuse_req_t req, struct fs *fs, struct handle *h, uint64_t off,
			  uint64_t end)
{
	const struct codec_view_map *m = h->map;
	uint64_t split = m->end_len ? m->end_off + m->end_len : m->tail_off, src;
	size_t n = (size_t)(end - off), known = 0;
	char *buf;
	ssize_t got;
	int rc;

	if (off < split)
		known = (size_t)((end < split ? end : split) - off);
	if (known < n) {
		src = m->tail_src + (off + known - m->tail_off);
		rc = fs_check_range(fs, h->check, h->node, h->stored, src, n - known,
				    "a view's trailer");
		if (rc)
			return rc;
		if (!known) {
			reply_fd(req, h->stored, n, (off_t)src);
			return 0;
		}
	}
	buf = malloc(n);
	if (!buf)
		return -ENOMEM;
	codec_view_map_end(m, off, (uint8_t *)buf, known);
	if (known < n) {
		src = m->tail_src + (off + known - m->tail_off);
		got = pread(h->stored, buf + known, n - known, (off_t)src);
		if (got != (ssize_t)(n - known)) {
			rc = got < 0 ? -errno : -EIO;
			free(buf);
			return rc;
		}
	}
	fuse_reply_buf(req, buf, n);
	free(buf);
	return 0;
}

/* Reply a checked read of h, then check the block after it when the reads
 * are sequential: this thread hashes it while others serve the rest of
 * this block. The handle may be released once replied, so the check reads
 * from a descriptor and a reference of its own. */
static void read_ahead_checked(fuse_req_t req, struct fs *fs, struct handle *h, size_t size,
			       off_t off)
{
	int64_t b = fs_check_ahead_claim(h->check, (uint64_t)off, size);
	struct fs_check *c = NULL;
	int fd = -1;

	if (b >= 0) {
		c = fs_check_ref(h->check);
		fd = fcntl(h->fd, F_DUPFD_CLOEXEC, 0);
	}
	reply_fd(req, h->fd, size, off);
	if (b < 0)
		return;
	fs_check_ahead(fs, c, fd, (uint64_t)b);
	if (fd >= 0)
		close(fd);
	fs_check_put(c);
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		    struct fuse_file_info *fi)
{
	struct fs *fs = fs_of(req);
	struct handle *h = (struct handle *)(uintptr_t)fi->fh;
	int rc = 0;

	(void)ino;
	if (h->stored >= 0) {
		/* a view: its header and trailer are the original's, served
		 * without rendering it (a photo manager reading metadata);
		 * anything else renders it once */
		uint64_t end = (uint64_t)off + size;
		pthread_mutex_lock(&h->lock);
		if (h->fd < 0 && h->kind == FS_KIND_VIEW && view_map(fs, h) == 0) {
			const struct codec_view_map *m = h->map;
			if ((uint64_t)off >= m->size) {
				pthread_mutex_unlock(&h->lock);
				fuse_reply_buf(req, NULL, 0);
				return;
			}
			if (end > m->size)
				end = m->size;
			if (end <= m->head_len) {
				/* a copy: the reply completes the read before
				 * writev returns, and the close that follows
				 * may free the map meanwhile */
				size_t n = (size_t)(end - (uint64_t)off);
				char *buf = malloc(n ? n : 1);
				if (buf)
					memcpy(buf, m->head + off, n);
				pthread_mutex_unlock(&h->lock);
				if (buf)
					fuse_reply_buf(req, buf, n);
				else
					reply_err(req, ENOMEM);
				free(buf);
				return;
			}
			if (view_end_known(m, (uint64_t)off, end)) {
				pthread_mutex_unlock(&h->lock);
				rc = view_reply_end(req, fs, h, (uint64_t)off, end);
				if (rc)
					reply_err(req, rc);
				return;
			}
		}
		rc = view_render(fs, h, "a view");
		pthread_mutex_unlock(&h->lock);
		if (rc) {
			reply_err(req, rc);
			return;
		}
		reply_fd(req, h->fd, size, off);
		return;
	}
	if (h->check) {
		char path[FS_PATH_MAX];
		if (fs_node_path(fs, h->node, path, sizeof(path)))
			snprintf(path, sizeof(path), "inode %llu", (unsigned long long)h->ino);
		rc = fs_check_range(fs, h->check, h->node, h->fd, (uint64_t)off, size, path);
		if (rc) {
			reply_err(req, rc);
			return;
		}
		read_ahead_checked(req, fs, h, size, off);
		return;
	}
	reply_fd(req, h->fd, size, off);
}

static void op_write_buf(fuse_req_t req, fuse_ino_t ino, struct fuse_bufvec *in, off_t off,
			 struct fuse_file_info *fi)
{
	struct handle *h = (struct handle *)(uintptr_t)fi->fh;
	struct fuse_bufvec dst = FUSE_BUFVEC_INIT(fuse_buf_size(in));
	ssize_t n;

	(void)ino;
	if (!h->writable) {
		reply_err(req, EBADF);
		return;
	}
	dst.buf[0].flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
	dst.buf[0].fd = h->fd;
	dst.buf[0].pos = off;
	n = fuse_buf_copy(&dst, in, FUSE_BUF_SPLICE_NONBLOCK);
	if (n < 0) {
		reply_err(req, (int)n);
		return;
	}
	handle_dirty(fs_of(req), h);
	fuse_reply_write(req, (size_t)n);
}

static void op_release_handle(struct fs *fs, struct fuse_file_info *fi)
{
	struct handle *h = (struct handle *)(uintptr_t)fi->fh;
	struct stat st;

	/* written and left without a name (removed while open): nothing of
	 * it is archived */
	if (h->writable && fstat(h->fd, &st) == 0 && st.st_nlink == 0)
		forget_file(fs, (uint64_t)st.st_ino);
	handle_free(fs, h);
}

static void op_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)ino;
	op_release_handle(fs_of(req), fi);
	fuse_reply_err(req, 0);
}

static void op_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
	struct handle *h = (struct handle *)(uintptr_t)fi->fh;
	int fd = h->fd >= 0 ? h->fd : h->stored;

	(void)ino;
	reply_err(req, (datasync ? fdatasync(fd) : fsync(fd)) == -1 ? errno : 0);
}

static void op_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t off, off_t len,
			 struct fuse_file_info *fi)
{
	struct handle *h = (struct handle *)(uintptr_t)fi->fh;

	(void)ino;
	if (!h->writable) {
		reply_err(req, EBADF);
		return;
	}
	if (fallocate(h->fd, mode, off, len) == -1) {
		reply_err(req, errno);
		return;
	}
	handle_dirty(fs_of(req), h);
	reply_err(req, 0);
}

static void op_lseek(fuse_req_t req, fuse_ino_t ino, off_t off, int whence,
		     struct fuse_file_info *fi)
{
	struct handle *h = (struct handle *)(uintptr_t)fi->fh;
	off_t r;

	(void)ino;
	if (h->fd < 0) {
		/* a view: all data, no holes */
		uint64_t size = h->view_bytes;
		if ((uint64_t)off >= size) {
			reply_err(req, ENXIO);
			return;
		}
		fuse_reply_lseek(req, whence == SEEK_HOLE ? (off_t)size : off);
		return;
	}
	r = lseek(h->fd, off, whence);
	if (r == -1)
		reply_err(req, errno);
	else
		fuse_reply_lseek(req, r);
}

/* ---- creating names ---------------------------------------------------- */

/* Is name free to create in p (no logical file of that name, not the state
 * directory)? 0, -EEXIST, -EPERM, or -errno. */
static int can_create(struct fs *fs, struct fs_node *p, const char *name)
{
	struct fs_found f;
	int rc;

	if (strlen(name) > NAME_MAX)
		return -ENAMETOOLONG;
	if (fs_name_reserved(p == fs_node_root(fs), name))
		return -EPERM;
	rc = fs_resolve(fs, fs_node_fd(p), p == fs_node_root(fs), name, &f);
	return rc == 0 ? -EEXIST : rc == -ENOENT ? 0 : rc;
}

/* Reply the entry of the new name name in p, made by the caller. */
static void reply_new(fuse_req_t req, struct fs_node *p, const char *name)
{
	struct fuse_entry_param e;
	int rc = lookup_entry(fs_of(req), p, name, &e);

	if (rc)
		reply_err(req, rc);
	else
		fuse_reply_entry(req, &e);
}

/* The mode a new file in p gets: the caller's umask applies unless p has a
 * default ACL, which then decides, as on a local disk (with POSIX ACLs the
 * kernel leaves the umask to the filesystem: FUSE_CAP_DONT_MASK). */
static mode_t new_mode(fuse_req_t req, struct fs_node *p, mode_t mode)
{
	char proc[FS_PROC_FD_BUF];

	if (getxattr(fs_proc_fd(fs_node_fd(p), proc), "system.posix_acl_default", NULL, 0) > 0)
		return mode;
	return mode & ~fuse_req_ctx(req)->umask;
}

static void op_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, dev_t rdev)
{
	struct fs *fs = fs_of(req);
	struct fs_node *p = node_of(req, parent);
	int d = fs_node_fd(p), rc = can_create(fs, p, name);

	mode = new_mode(req, p, mode);
	if (!rc) {
		if (S_ISREG(mode)) {
			int fd = openat(d, name, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, mode);
			rc = fd == -1 ? -errno : 0;
			if (fd >= 0) {
				struct stat st;
				char path[FS_PATH_MAX];
				own_new(req, d, name);
				/* an empty file settles like any other */
				if (fstat(fd, &st) == 0 &&
				    path_in(fs, p, name, path, sizeof(path)) == 0)
					fs_mark_staged(fs, (uint64_t)st.st_ino, 0, path);
				close(fd);
			}
		} else if (S_ISFIFO(mode)) {
			rc = mkfifoat(d, name, mode) == -1 ? -errno : 0;
		} else {
			rc = mknodat(d, name, mode, rdev) == -1 ? -errno : 0;
		}
		if (!rc && !S_ISREG(mode))
			own_new(req, d, name);
	}
	if (rc) {
		reply_err(req, rc);
		return;
	}
	if (S_ISREG(mode)) {
		/* staged: its node settles it with no writer open */
		struct fuse_entry_param e;
		rc = lookup_entry(fs, p, name, &e);
		if (!rc) {
			fs_node_changed(fs, fs_node_of(fs, e.ino));
			fuse_reply_entry(req, &e);
			return;
		}
		reply_err(req, rc);
		return;
	}
	reply_new(req, p, name);
}

static void op_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode)
{
	struct fs *fs = fs_of(req);
	struct fs_node *p = node_of(req, parent);
	int rc = can_create(fs, p, name);

	mode = new_mode(req, p, mode);
	if (!rc && mkdirat(fs_node_fd(p), name, mode) == -1)
		rc = -errno;
	if (rc) {
		reply_err(req, rc);
		return;
	}
	own_new(req, fs_node_fd(p), name);
	reply_new(req, p, name);
}

static void op_symlink(fuse_req_t req, const char *link, fuse_ino_t parent, const char *name)
{
	struct fs *fs = fs_of(req);
	struct fs_node *p = node_of(req, parent);
	int rc = can_create(fs, p, name);

	if (!rc && symlinkat(link, fs_node_fd(p), name) == -1)
		rc = -errno;
	if (rc) {
		reply_err(req, rc);
		return;
	}
	own_new(req, fs_node_fd(p), name);
	reply_new(req, p, name);
}

static void op_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
		      struct fuse_file_info *fi)
{
	struct fs *fs = fs_of(req);
	struct fs_node *p = node_of(req, parent), *n;
	struct fuse_entry_param e;
	struct handle *h;
	int d = fs_node_fd(p), fd, err, rc = can_create(fs, p, name), tries = 0;

again:
	if (rc == -EEXIST && !(fi->flags & O_EXCL)) {
		/* there already (made meanwhile, or an archived copy): open it */
		rc = lookup_entry(fs, p, name, &e);
		if (!rc && (rc = open_node(fs, fs_node_of(fs, e.ino), fi)))
			fs_node_forget(fs, fs_node_of(fs, e.ino), 1);
		if (rc)
			reply_err(req, rc);
		else if (fuse_reply_create(req, &e, fi) == -ENOENT) {
			op_release_handle(fs, fi);
			fs_node_forget(fs, fs_node_of(fs, e.ino), 1);
		}
		return;
	}
	if (rc) {
		reply_err(req, rc);
		return;
	}
	/* O_EXCL always: the name is free as the mount shows it, and a file
	 * there in BACKING is one it does not show (the archived copy of
	 * another name, X.jpg.heic): opening it would write into an archive */
	fd = openat(d, name, ((fi->flags | O_CREAT | O_EXCL) & ~O_NOCTTY) | O_NOFOLLOW | O_CLOEXEC,
		    new_mode(req, p, mode));
	err = fd < 0 ? errno : 0;
	if (err == EEXIST && tries++ == 0 && (rc = can_create(fs, p, name)) == -EEXIST)
		goto again; /* made meanwhile through the mount: open it */
	if (fd < 0) {
		reply_err(req, err);
		return;
	}
	own_new(req, d, name);
	rc = lookup_entry(fs, p, name, &e);
	if (rc) {
		close(fd);
		reply_err(req, rc);
		return;
	}
	n = fs_node_of(fs, e.ino);
	{
		/* new and not staged yet: no commit replaces it meanwhile */
		struct stat st;
		struct fs_node_file nf = {.kind = FS_KIND_PLAIN};
		if (fstat(fd, &st) == 0)
			nf.ino = (uint64_t)st.st_ino;
		h = handle_new(fs, n, fd, 1, &nf);
	}
	if (!h) {
		close(fd);
		fs_node_forget(fs, n, 1);
		reply_err(req, ENOMEM);
		return;
	}
	handle_dirty(fs, h);
	fi->fh = (uintptr_t)h;
	if (fuse_reply_create(req, &e, fi) == -ENOENT) {
		/* the opener went away: nothing holds the handle */
		handle_free(fs, h);
		fs_node_forget(fs, n, 1);
	}
}

static void op_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char *newname)
{
	struct fs *fs = fs_of(req);
	struct fs_node *n = node_of(req, ino), *p = node_of(req, newparent);
	char target[FS_STORED_BUF], proc[FS_PROC_FD_BUF], suffix[8] = "";
	struct fs_node_file f;
	int rc = can_create(fs, p, newname);

	if (rc) {
		reply_err(req, rc);
		return;
	}
	/* what n stands for stays put until the link is made */
	fs_mutex_lock(&fs->ns_lock);
	fs_node_file(fs, n, &f);
	if (f.kind == FS_KIND_SIBLING) {
		rc = EPERM;
	} else if (f.kind == FS_KIND_VIEW) {
		struct idx_entry e;
		if (fs_entry_get(fs, f.ino, &e) == 0)
			snprintf(suffix, sizeof(suffix), "%s", e.suffix);
	}
	if (!rc &&
	    ((size_t)snprintf(target, sizeof(target), "%s%s", newname, suffix) >= sizeof(target) ||
	     strlen(target) > NAME_MAX))
		rc = ENAMETOOLONG;
	if (!rc && linkat(AT_FDCWD, fs_proc_fd(fs_node_fd(n), proc), fs_node_fd(p), target,
			  AT_SYMLINK_FOLLOW) == -1)
		rc = errno;
	fs_mutex_unlock(&fs->ns_lock);
	if (rc) {
		reply_err(req, rc);
		return;
	}
	reply_new(req, p, newname);
}

/* ---- removing and renaming --------------------------------------------- */

static void op_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct fs *fs = fs_of(req);
	struct fs_node *p = node_of(req, parent), *n;
	struct fs_found f;
	int rc, keep = -1;

	fs_mutex_lock(&fs->ns_lock);
	rc = fs_resolve(fs, fs_node_fd(p), p == fs_node_root(fs), name, &f);
	if (!rc && f.kind == FS_KIND_SIBLING)
		rc = -EPERM; /* a rendering: it goes with its photo */
	/* the inode stays allocated until its entry is forgotten: its number,
	 * free again, could be a new file's (created meanwhile, without
	 * ns_lock), whose entry would be forgotten instead */
	if (!rc && S_ISREG(f.st.st_mode))
		keep = openat(fs_node_fd(p), f.name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
	if (!rc && unlinkat(fs_node_fd(p), f.name, 0) == -1)
		rc = -errno;
	if (!rc && !S_ISDIR(f.st.st_mode)) {
		int last = f.st.st_nlink <= 1;
		n = fs_node_find(fs, (uint64_t)f.st.st_ino);
		if (n) {
			fs_node_unnamed(fs, n, last);
			fs_node_put(fs, n);
		}
		if (last && S_ISREG(f.st.st_mode))
			forget_file(fs, (uint64_t)f.st.st_ino);
	}
	fs_mutex_unlock(&fs->ns_lock);
	if (keep >= 0)
		close(keep);
	reply_err(req, rc);
}

static void op_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct fs *fs = fs_of(req);
	struct fs_node *p = node_of(req, parent), *n;
	struct fs_found f;
	int rc;

	fs_mutex_lock(&fs->ns_lock);
	rc = fs_resolve(fs, fs_node_fd(p), p == fs_node_root(fs), name, &f);
	if (!rc && unlinkat(fs_node_fd(p), f.name, AT_REMOVEDIR) == -1)
		rc = -errno;
	if (!rc && (n = fs_node_find(fs, (uint64_t)f.st.st_ino))) {
		fs_node_unnamed(fs, n, 1);
		fs_node_put(fs, n);
	}
	fs_mutex_unlock(&fs->ns_lock);
	reply_err(req, rc);
}

/* Does src, renamed over the archived dst, settle into a job that may find
 * it is dst's original again (a file being written: staged or pending)? */
static int replaces_archive(struct fs *fs, const struct fs_found *src, const struct fs_found *dst)
{
	struct idx_entry e;

	return dst->has_entry && dst->e.state == IDX_ARCHIVED && S_ISREG(src->st.st_mode) &&
	       src->st.st_nlink == 1 && fs_entry_get(fs, src->st.st_ino, &e) == 0 &&
	       (e.state == IDX_STAGED || e.state == IDX_PENDING);
}

/* The name paths pass through while two are exchanged. */
#define EXCHANGE_TMP "\x01\x02hevcfs exchange\x02\x01"

/* Tell the index and the nodes that from (logical path) is now to. */
static void renamed_paths(struct fs *fs, const char *from, const char *to, unsigned int flags)
{
	struct idx_txn *txn;

	if (idx_begin(fs->idx, 1, &txn))
		return;
	if (flags & RENAME_EXCHANGE) {
		/* through a name no real path will have */
		idx_queue_rename(txn, from, EXCHANGE_TMP);
		idx_queue_rename(txn, to, from);
		idx_queue_rename(txn, EXCHANGE_TMP, to);
		idx_origins_rename(txn, from, EXCHANGE_TMP);
		idx_origins_rename(txn, to, from);
		idx_origins_rename(txn, EXCHANGE_TMP, to);
	} else {
		idx_queue_rename(txn, from, to);
		idx_origins_rename(txn, from, to);
	}
	idx_commit(txn);
}

static void op_rename(fuse_req_t req, fuse_ino_t parent, const char *name, fuse_ino_t newparent,
		      const char *newname, unsigned int flags)
{
	struct fs *fs = fs_of(req);
	struct fs_node *p = node_of(req, parent), *np = node_of(req, newparent), *n;
	struct fs_found src, dst;
	char target[FS_STORED_BUF], from[FS_PATH_MAX], to[FS_PATH_MAX];
	const char *suffix;
	int have_dst, rc, keep = -1;

	if (flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE)) {
		reply_err(req, EINVAL);
		return;
	}
	if (strlen(newname) > NAME_MAX) {
		reply_err(req, ENAMETOOLONG);
		return;
	}
	if (fs_name_reserved(np == fs_node_root(fs), newname)) {
		reply_err(req, EPERM);
		return;
	}
	fs_mutex_lock(&fs->ns_lock);
	rc = fs_resolve(fs, fs_node_fd(p), p == fs_node_root(fs), name, &src);
	if (!rc && src.kind == FS_KIND_SIBLING)
		rc = -EPERM;
	if (rc)
		goto out_unlock;
	/* an archived copy keeps its suffix under its new name */
	suffix = src.name + strlen(name);
	if ((size_t)snprintf(target, sizeof(target), "%s%s", newname, suffix) >= sizeof(target) ||
	    strlen(target) > NAME_MAX) {
		rc = -ENAMETOOLONG;
		goto out_unlock;
	}
	have_dst = fs_resolve(fs, fs_node_fd(np), np == fs_node_root(fs), newname, &dst) == 0;
	if (have_dst && dst.kind == FS_KIND_SIBLING) {
		rc = -EPERM;
		goto out_unlock;
	}
	/* a file replaced keeps its inode until its entry is forgotten (see
	 * op_unlink) */
	if (have_dst && S_ISREG(dst.st.st_mode))
		keep = openat(fs_node_fd(np), dst.name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
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
			goto out_unlock;
		} else if (renameat2(fs_node_fd(p), src.name, fs_node_fd(np), target,
				     RENAME_NOREPLACE) == -1) {
			rc = -errno;
		} else if (!(replaces_archive(fs, &src, &dst) &&
			     fs_prev_keep(fs, fs_node_fd(np), dst.name, dst.st.st_ino,
					  src.st.st_ino) == 0)) {
			/* (an archive replaced by a file being written waits
			 * aside: the new bytes may be its original again) */
			if (unlinkat(fs_node_fd(np), dst.name, 0) == -1)
				log_msg(LOG_ERR, "rename: cannot remove replaced %s: %s", newname,
					strerror(errno));
			else if (S_ISREG(dst.st.st_mode) && dst.st.st_nlink <= 1)
				forget_file(fs, dst.st.st_ino);
		}
	} else if (src.kind == FS_KIND_VIEW && suffix[0] && (flags & RENAME_EXCHANGE)) {
		rc = -EINVAL; /* exchanging stored names would swap their suffixes */
	} else if (!have_dst && (flags & RENAME_EXCHANGE)) {
		rc = -ENOENT; /* nothing there as the mount shows it */
	} else if (renameat2(fs_node_fd(p), src.name, fs_node_fd(np), target,
			     have_dst ? flags : flags | RENAME_NOREPLACE) == -1) {
		/* with no logical target, a file at the stored target name is
		 * one the mount does not show (another name's archived copy,
		 * or a file named as one): it is never replaced */
		rc = -errno;
	} else if (have_dst && !(flags & RENAME_EXCHANGE) && S_ISREG(dst.st.st_mode) &&
		   dst.st.st_nlink <= 1 && dst.st.st_ino != src.st.st_ino) {
		forget_file(fs, dst.st.st_ino);
	}
	if (rc)
		goto out_unlock;
	/* the nodes and the paths the index keeps follow */
	if (have_dst && dst.st.st_ino != src.st.st_ino &&
	    (n = fs_node_find(fs, (uint64_t)dst.st.st_ino))) {
		if (flags & RENAME_EXCHANGE)
			fs_node_moved(fs, n, p, name, src.name); /* where src was */
		else
			fs_node_unnamed(fs, n, S_ISDIR(dst.st.st_mode) || dst.st.st_nlink <= 1);
		fs_node_put(fs, n);
	}
	if ((n = fs_node_find(fs, (uint64_t)src.st.st_ino))) {
		fs_node_moved(fs, n, np, newname, target);
		fs_node_put(fs, n);
	}
	if (path_in(fs, p, name, from, sizeof(from)) == 0 &&
	    path_in(fs, np, newname, to, sizeof(to)) == 0)
		renamed_paths(fs, from, to, flags);
	/* a file still to be archived, moved to another directory: its archive
	 * will get a name in the new one, made durable by the commit; its
	 * old name must not come back beside it after a crash of the machine,
	 * so the old directory's removal is made durable before any commit
	 * (which takes ns_lock) can name the archive */
	if (p != np && S_ISREG(src.st.st_mode)) {
		struct idx_entry e;
		if (fs_entry_get(fs, (uint64_t)src.st.st_ino, &e) == 0 &&
		    (e.state == IDX_STAGED || e.state == IDX_PENDING))
			fs_fsync_dir(fs_node_fd(p));
	}
out_unlock:
	fs_mutex_unlock(&fs->ns_lock);
	if (keep >= 0)
		close(keep);
	reply_err(req, rc);
}

/* ---- attributes ---------------------------------------------------------- */

/* Apply to_set of attr to node n (through its handle's fd when there is
 * one). 0 or -errno. */
static int set_attrs(fuse_req_t req, struct fs_node *n, struct stat *attr, int to_set,
		     struct handle *h)
{
	struct fs *fs = fs_of(req);
	char proc[FS_PROC_FD_BUF];
	const char *path = fs_proc_fd(fs_node_fd(n), proc);
	int fd = h && h->fd >= 0 ? h->fd : -1, rc = 0;

	if (to_set & FUSE_SET_ATTR_MODE) {
		if ((fd >= 0 ? fchmod(fd, attr->st_mode) : chmod(path, attr->st_mode)) == -1)
			return -errno;
	}
	if (to_set & (FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID)) {
		uid_t uid = to_set & FUSE_SET_ATTR_UID ? attr->st_uid : (uid_t)-1;
		gid_t gid = to_set & FUSE_SET_ATTR_GID ? attr->st_gid : (gid_t)-1;
		if (fchownat(fs_node_fd(n), "", uid, gid, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) ==
		    -1)
			return -errno;
	}
	if ((to_set & FUSE_SET_ATTR_SIZE) && h && h->writable) {
		/* through a descriptor open for writing: its own file (a commit
		 * waits for its close) */
		if (ftruncate(h->fd, attr->st_size) == -1)
			return -errno;
		handle_dirty(fs, h);
	} else if (to_set & FUSE_SET_ATTR_SIZE) {
		/* truncate(2) by name: not between a commit's look at the file
		 * and its rename, as a writable open */
		struct fs_node_file f;
		struct stat st;
		char logical[FS_PATH_MAX];
		int tfd;

		fs_mutex_lock(&fs->ns_lock);
		fs_node_file(fs, n, &f);
		rc = 0;
		if (f.kind == FS_KIND_SIBLING)
			rc = -EROFS;
		else if (f.kind == FS_KIND_VIEW)
			rc = materialise(fs, n, attr->st_size > 0); /* a JPEG again */
		tfd = rc ? rc : fs_node_reopen(fs, n, O_WRONLY | O_NONBLOCK, &f);
		if (tfd < 0) {
			fs_mutex_unlock(&fs->ns_lock);
			return tfd;
		}
		rc = ftruncate(tfd, attr->st_size) == -1 ? -errno : 0;
		/* a change of the bytes, as a write is */
		if (!rc && fstat(tfd, &st) == 0 &&
		    fs_node_path(fs, n, logical, sizeof(logical)) == 0)
			fs_mark_staged(fs, (uint64_t)st.st_ino, (uint64_t)st.st_size, logical);
		if (!rc)
			fs_node_changed(fs, n);
		fs_mutex_unlock(&fs->ns_lock);
		close(tfd);
		if (rc)
			return rc;
	}
	if (to_set & (FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_MTIME)) {
		struct timespec tv[2] = {{.tv_nsec = UTIME_OMIT}, {.tv_nsec = UTIME_OMIT}};
		int locked = 0;
		if (to_set & FUSE_SET_ATTR_ATIME_NOW)
			tv[0].tv_nsec = UTIME_NOW;
		else if (to_set & FUSE_SET_ATTR_ATIME)
			tv[0] = attr->st_atim;
		if (to_set & FUSE_SET_ATTR_MTIME_NOW)
			tv[1].tv_nsec = UTIME_NOW;
		else if (to_set & FUSE_SET_ATTR_MTIME)
			tv[1] = attr->st_mtim;
		/* a commit puts its directory's times back after its renames
		 * (cp -a set them): a directory's new times must not fall
		 * between its look and its restore */
		if (fs_node_type(n) == S_IFDIR) {
			fs_mutex_lock(&fs->ns_lock);
			locked = 1;
		}
		/* through the magic link: the inode itself, a symlink too */
		if (fd >= 0)
			rc = futimens(fd, tv) == -1 ? -errno : 0;
		else
			rc = utimensat(AT_FDCWD, path, tv, 0) == -1 ? -errno : 0;
		if (locked)
			fs_mutex_unlock(&fs->ns_lock);
		if (rc)
			return rc;
	}
	return 0;
}

static void op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
		       struct fuse_file_info *fi)
{
	struct fs *fs = fs_of(req);
	struct fs_node *n = node_of(req, ino);
	struct handle *h =
	    fi && fs_node_type(n) == S_IFREG ? (struct handle *)(uintptr_t)fi->fh : NULL;
	struct stat st;
	int rc;

	if (fs_node_kind(fs, n) == FS_KIND_SIBLING) {
		reply_err(req, EROFS);
		return;
	}
	rc = set_attrs(req, n, attr, to_set, h);
	if (!rc)
		rc = fs_node_stat(fs, n, &st);
	if (rc)
		reply_err(req, rc);
	else
		fuse_reply_attr(req, &st, ATTR_TIMEOUT);
}

static void op_readlink(fuse_req_t req, fuse_ino_t ino)
{
	char buf[FS_PATH_MAX];
	ssize_t n = readlinkat(fs_node_fd(node_of(req, ino)), "", buf, sizeof(buf) - 1);

	if (n == -1) {
		reply_err(req, errno);
		return;
	}
	buf[n] = '\0';
	fuse_reply_readlink(req, buf);
}

static void op_statfs(fuse_req_t req, fuse_ino_t ino)
{
	struct statvfs sv;

	(void)ino;
	if (fstatvfs(fs_of(req)->root_fd, &sv) == -1)
		reply_err(req, errno);
	else
		fuse_reply_statfs(req, &sv);
}

static void op_access(fuse_req_t req, fuse_ino_t ino, int mask)
{
	struct fs_node *n = node_of(req, ino);

	if (fs_node_kind(fs_of(req), n) == FS_KIND_SIBLING && (mask & W_OK)) {
		reply_err(req, EROFS);
		return;
	}
	reply_err(req,
		  faccessat(fs_node_fd(n), "", mask, AT_EACCESS | AT_EMPTY_PATH) == -1 ? errno : 0);
}

/* ---- xattrs ---------------------------------------------------------------- */

/* The user, trusted and security namespaces pass, and POSIX ACLs (the
 * kernel checks them with the modes; the backing filesystem stores them and
 * keeps the mode in step). */
static int xattr_allowed(const char *name)
{
	return !strncmp(name, "user.", 5) || !strncmp(name, "trusted.", 8) ||
	       !strncmp(name, "security.", 9) || !strcmp(name, "system.posix_acl_access") ||
	       !strcmp(name, "system.posix_acl_default");
}

/* The path xattrs of n go through (regular files and directories only). */
static const char *xattr_path(struct fs_node *n, char *buf)
{
	mode_t t = fs_node_type(n);

	return t == S_IFREG || t == S_IFDIR ? fs_proc_fd(fs_node_fd(n), buf) : NULL;
}

static void op_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name, const char *value,
			size_t size, int flags)
{
	struct fs_node *n = node_of(req, ino);
	char proc[FS_PROC_FD_BUF];
	const char *path = xattr_path(n, proc);

	if (!xattr_allowed(name)) {
		reply_err(req, EOPNOTSUPP);
		return;
	}
	if (!path || fs_node_kind(fs_of(req), n) == FS_KIND_SIBLING) {
		reply_err(req, EPERM);
		return;
	}
	reply_err(req, setxattr(path, name, value, size, flags) == -1 ? errno : 0);
}

static void op_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size)
{
	char proc[FS_PROC_FD_BUF], *buf = NULL;
	const char *path = xattr_path(node_of(req, ino), proc);
	ssize_t n;

	if (!xattr_allowed(name) || !path) {
		reply_err(req, ENODATA);
		return;
	}
	if (size == 0) {
		n = getxattr(path, name, NULL, 0);
		if (n == -1)
			reply_err(req, errno);
		else
			fuse_reply_xattr(req, (size_t)n);
		return;
	}
	buf = malloc(size);
	if (!buf) {
		reply_err(req, ENOMEM);
		return;
	}
	n = getxattr(path, name, buf, size);
	if (n == -1)
		reply_err(req, errno);
	else
		fuse_reply_buf(req, buf, (size_t)n);
	free(buf);
}

static void op_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size)
{
	char proc[FS_PROC_FD_BUF], *buf = NULL;
	const char *path = xattr_path(node_of(req, ino), proc);
	ssize_t n;

	if (!path) {
		if (size == 0)
			fuse_reply_xattr(req, 0);
		else
			fuse_reply_buf(req, NULL, 0);
		return;
	}
	if (size == 0) {
		n = listxattr(path, NULL, 0);
		if (n == -1)
			reply_err(req, errno);
		else
			fuse_reply_xattr(req, (size_t)n);
		return;
	}
	buf = malloc(size);
	if (!buf) {
		reply_err(req, ENOMEM);
		return;
	}
	n = listxattr(path, buf, size);
	if (n == -1)
		reply_err(req, errno);
	else
		fuse_reply_buf(req, buf, (size_t)n);
	free(buf);
}

static void op_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name)
{
	struct fs_node *n = node_of(req, ino);
	char proc[FS_PROC_FD_BUF];
	const char *path = xattr_path(n, proc);

	if (!xattr_allowed(name)) {
		reply_err(req, EOPNOTSUPP);
		return;
	}
	if (!path || fs_node_kind(fs_of(req), n) == FS_KIND_SIBLING) {
		reply_err(req, EPERM);
		return;
	}
	reply_err(req, removexattr(path, name) == -1 ? errno : 0);
}

/* ---- directories ------------------------------------------------------ */

static void dirh_free(struct fs *fs, struct dirh *d)
{
	live_del(fs, &d->live);
	closedir(d->dir);
	fs_node_put(fs, d->node);
	free(d);
}

static void op_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct fs *fs = fs_of(req);
	struct fs_node *n = node_of(req, ino);
	struct dirh *d = calloc(1, sizeof(*d));
	int fd;

	if (!d) {
		reply_err(req, ENOMEM);
		return;
	}
	fd = openat(fs_node_fd(n), ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0 || !(d->dir = fdopendir(fd))) {
		int rc = errno;
		if (fd >= 0)
			close(fd);
		free(d);
		reply_err(req, rc);
		return;
	}
	d->node = n;
	fs_node_hold(fs, n);
	live_add(fs, &d->live, 1);
	fi->fh = (uintptr_t)d;
	if (fuse_reply_open(req, fi) == -ENOENT)
		dirh_free(fs, d); /* the opener went away */
}

/* Stream a directory: the offset handed to the kernel is telldir()'s, so a
 * directory of any size is read in pieces without holding it. With plus,
 * each entry is looked up (the kernel then asks for no attributes). */
static void read_dir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		     struct fuse_file_info *fi, int plus)
{
	struct fs *fs = fs_of(req);
	struct dirh *d = (struct dirh *)(uintptr_t)fi->fh;
	struct fs_node *dn = node_of(req, ino);
	int root = dn == fs_node_root(fs);
	struct idx_txn *txn = NULL;
	char *buf = malloc(size), lname[FS_NAME_BUF], sib[FS_NAME_BUF];
	size_t used = 0;

	if (!buf) {
		reply_err(req, ENOMEM);
		return;
	}
	if (off != d->pos) {
		seekdir(d->dir, off);
		d->pos = off;
		d->held = NULL;
		d->sibling[0] = '\0';
	}
	/* names are mapped between namespace changes: a commit renames the
	 * archive in, records it and removes the original under ns_lock, and
	 * halfway through it the listing would show a stored name */
	fs_mutex_lock(&fs->ns_lock);
	if ((fs->cfg->view == FS_VIEW_LEGACY || fs->cfg->heic_view) && idx_begin(fs->idx, 0, &txn))
		txn = NULL;
	for (;;) {
		struct dirent *de = NULL;
		const char *name;
		off_t next;
		size_t len;
		struct fuse_entry_param e = {0};
		struct stat st = {0};

		if (d->sibling[0]) {
			/* the JPEG sibling of the entry before, at the same offset */
			name = d->sibling;
			next = d->pos;
		} else {
			de = d->held;
			if (!de) {
				errno = 0;
				de = readdir(d->dir);
				if (!de)
					break;
			}
			d->held = NULL;
			next = telldir(d->dir);
			name = fs_list_name(fs, txn, dirfd(d->dir), root, de->d_name, de->d_ino,
					    de->d_type, lname, sizeof(lname));
			if (!name || !strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) {
				if (name && plus) {
					/* "." and "..": no lookup */
					st.st_ino = de->d_ino;
					st.st_mode = (mode_t)DTTOIF(de->d_type);
					e.attr = st;
					len = fuse_add_direntry_plus(req, buf + used, size - used,
								     name, &e, next);
					if (len > size - used) {
						d->held = de;
						break;
					}
					used += len;
				} else if (name) {
					st.st_ino = de->d_ino;
					st.st_mode = (mode_t)DTTOIF(de->d_type);
					len = fuse_add_direntry(req, buf + used, size - used, name,
								&st, next);
					if (len > size - used) {
						d->held = de;
						break;
					}
					used += len;
				}
				d->pos = next;
				continue;
			}
			/* a HEIF photo with a JPEG sibling: the sibling follows */
			if (txn && fs->cfg->heic_view && de->d_type == DT_REG) {
				struct idx_entry ie;
				if (idx_get(txn, de->d_ino, &ie) == 0 &&
				    fs_sibling_name(fs, dirfd(d->dir), de->d_name, &ie, sib,
						    sizeof(sib)))
					snprintf(d->sibling, sizeof(d->sibling), "%s", sib);
			}
		}
		if (plus) {
			if (lookup_entry(fs, dn, name, &e) != 0) {
				/* gone meanwhile: skip it */
				if (name == d->sibling)
					d->sibling[0] = '\0';
				d->pos = next;
				continue;
			}
			len = fuse_add_direntry_plus(req, buf + used, size - used, name, &e, next);
			if (len > size - used) {
				fs_node_forget(fs, fs_node_of(fs, e.ino), 1);
				if (name != d->sibling) {
					d->held = de;
					d->sibling[0] = '\0';
				}
				break;
			}
		} else {
			st.st_ino = name == d->sibling ? 0 : de->d_ino;
			st.st_mode = name == d->sibling ? S_IFREG : (mode_t)DTTOIF(de->d_type);
			len = fuse_add_direntry(req, buf + used, size - used, name, &st, next);
			if (len > size - used) {
				if (name != d->sibling) {
					d->held = de;
					d->sibling[0] = '\0';
				}
				break;
			}
		}
		used += len;
		if (name == d->sibling)
			d->sibling[0] = '\0';
		d->pos = next;
	}
	idx_abort(txn);
	fs_mutex_unlock(&fs->ns_lock);
	fuse_reply_buf(req, buf, used);
	free(buf);
}

static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		       struct fuse_file_info *fi)
{
	read_dir(req, ino, size, off, fi, 0);
}

static void op_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
			   struct fuse_file_info *fi)
{
	read_dir(req, ino, size, off, fi, 1);
}

static void op_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct dirh *d = (struct dirh *)(uintptr_t)fi->fh;

	(void)ino;
	dirh_free(fs_of(req), d);
	fuse_reply_err(req, 0);
}

static void op_fsyncdir(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
	struct dirh *d = (struct dirh *)(uintptr_t)fi->fh;

	(void)ino;
	(void)datasync;
	reply_err(req, fsync(dirfd(d->dir)) == -1 ? errno : 0);
}

/* ---- the session ------------------------------------------------------- */

static void op_init(void *userdata, struct fuse_conn_info *conn)
{
	struct fs *fs = userdata;

	conn->want |=
	    conn->capable & (FUSE_CAP_SPLICE_READ | FUSE_CAP_SPLICE_WRITE | FUSE_CAP_SPLICE_MOVE |
			     FUSE_CAP_PARALLEL_DIROPS | FUSE_CAP_ATOMIC_O_TRUNC |
			     FUSE_CAP_READDIRPLUS | FUSE_CAP_READDIRPLUS_AUTO |
			     FUSE_CAP_EXPORT_SUPPORT | FUSE_CAP_POSIX_ACL | FUSE_CAP_DONT_MASK);
	/* the daemon is told of every change that goes through the mount,
	 * and tells the kernel of its own (fs_notify_*) */
	conn->want &= ~(unsigned)FUSE_CAP_AUTO_INVAL_DATA;
	if (!fs->cfg->splice)
		conn->want &= ~(unsigned)(FUSE_CAP_SPLICE_READ | FUSE_CAP_SPLICE_WRITE |
					  FUSE_CAP_SPLICE_MOVE);
#ifdef __SANITIZE_THREAD__
	/* The kernel orders a file's requests (its RELEASE comes after every
	 * reply on the handle): ThreadSanitizer sees that order through the
	 * read() of each request and the writev() of each reply on /dev/fuse,
	 * not through splice, so a ThreadSanitizer build copies. */
	conn->want &=
	    ~(unsigned)(FUSE_CAP_SPLICE_READ | FUSE_CAP_SPLICE_WRITE | FUSE_CAP_SPLICE_MOVE);
#endif
	conn->max_write = IO_MAX;
	conn->max_readahead = IO_MAX;
	if (idx_open(fs->index_path, 0, &fs->idx)) {
		log_msg(LOG_ERR, "cannot open the index: unmounting");
		fuse_session_exit(fs->se);
		return;
	}
	if (!fs->cfg->foreground)
		log_syslog("hevcfs"); /* a daemon's stderr goes nowhere */
	if (fs_nodes_start(fs) || fs_workers_start(fs) || fs_scrubber_start(fs))
		log_msg(LOG_ERR, "cannot start background threads: files stay staged");
	fs->threads_started = 1;
	if (fs_queue_load(fs))
		log_msg(LOG_ERR, "cannot load the queue: pending files wait for the next mount");
}

void fs_threads_stop(struct fs *fs)
{
	if (fs->threads_started) {
		fs_nodes_stop(fs);
		fs_scrubber_stop(fs);
		fs_workers_stop(fs);
		fs->threads_started = 0;
	}
}

static void op_destroy(void *userdata)
{
	struct fs *fs = userdata;

	fs_threads_stop(fs);
	/* what the kernel never released (its RELEASE dropped at unmount) */
	while (fs->live) {
		struct live *l = fs->live;
		if (l->dir)
			dirh_free(fs, (struct dirh *)l);
		else
			handle_free(fs, (struct handle *)l);
	}
	idx_close(fs->idx);
	fs->idx = NULL;
}

/* No flush: a write is on BACKING when it returns, so close() has nothing
 * to wait for, and the kernel skips that round trip on every close. */
const struct fuse_lowlevel_ops fs_ops = {
    .init = op_init,
    .destroy = op_destroy,
    .lookup = op_lookup,
    .forget = op_forget,
    .forget_multi = op_forget_multi,
    .getattr = op_getattr,
    .setattr = op_setattr,
    .readlink = op_readlink,
    .mknod = op_mknod,
    .mkdir = op_mkdir,
    .unlink = op_unlink,
    .rmdir = op_rmdir,
    .symlink = op_symlink,
    .rename = op_rename,
    .link = op_link,
    .open = op_open,
    .read = op_read,
    .write_buf = op_write_buf,
    .release = op_release,
    .fsync = op_fsync,
    .opendir = op_opendir,
    .readdir = op_readdir,
    .readdirplus = op_readdirplus,
    .releasedir = op_releasedir,
    .fsyncdir = op_fsyncdir,
    .statfs = op_statfs,
    .setxattr = op_setxattr,
    .getxattr = op_getxattr,
    .listxattr = op_listxattr,
    .removexattr = op_removexattr,
    .access = op_access,
    .create = op_create,
    .fallocate = op_fallocate,
    .lseek = op_lseek,
};
