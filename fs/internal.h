/*
 * Private to fs/: the mount's shared state and the pieces the files of fs/
 * share.
 *
 * Lock order (take left before right, never the reverse):
 *   fs.ns_lock -> fs.nodes_lock -> fs.jobs_lock
 * links_lock and render_lock are leaves: nothing is taken while holding them.
 * An index transaction may be opened while holding any of them; it is never
 * held across slow work (transcoding, fsync of data).
 */
#ifndef HEVCFS_FS_INTERNAL_H
#define HEVCFS_FS_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/stat.h>

#include "../index/index.h"
#include "fs.h"

struct fuse;

/* An archive verified and waiting to be committed: its output and view are
 * work/<ino>.<gen>.out and .view. */
struct ready {
	uint64_t gen;
	struct codec_result res;
};

/*
 * In-memory state of one backing inode that is open for writing, settling,
 * or being archived. Reference counted: each open handle, the settle list
 * and a queued or running job hold one reference. Fields are protected by
 * fs.nodes_lock unless marked atomic.
 */
struct node {
	uint64_t ino;
	int refs;
	int writers;			/* open handles that may write */
	int opens;			/* open handles of any kind */
	int gone;			/* no name left: writes are not staged again */
	int hidden_links;		/* names of it in the hidden directory */
	char hidden_name[64];		/* the latest of them (fs_hidden_key) */
	int64_t hidden_size;		/* size shown under a hidden name (a view's), or -1 */
	int commit_waits;		/* an archive waits for the last handle to close */
	struct ready *ready;		/* that archive, verified, its files in work/ */
	int dirty;			/* written since the last enqueue */
	int settling;			/* on the settle list (holds a reference) */
	int64_t settle_at;		/* monotonic ms when it may be queued */
	char *path;			/* last known logical path, relative, for the queue */
	atomic_uint_fast64_t gen;	/* bumped by every change to the bytes */
	atomic_int cancel;		/* set to abandon the running job */
	struct fs_check *_Atomic check; /* reads checked against the stored
				 file's digests (sums.c), set once */
	struct node *next;		/* hash chain */
	struct node *settle_next;
};

/* A queued or running archive job. */
struct job {
	uint64_t ino;
	uint64_t gen;
	int video;	   /* known to be a video (one runs at a time) */
	struct node *node; /* holds a reference */
	struct job *next;
};

/* The mount. One instance, the FUSE private data. */
struct fs {
	struct fs_config *cfg;
	int root_fd;		    /* BACKING, O_PATH directory */
	int meta_fd;		    /* BACKING/.hevcfs */
	int state_fd;		    /* the state directory (fs_paths): lock, index, log */
	int work_fd;		    /* BACKING/.hevcfs/work: archive outputs before commit */
	int cache_fd;		    /* STATE/cache: rendered views */
	int hidden_fd;		    /* BACKING/.hevcfs/hidden: files removed while open */
	int prev_fd;		    /* BACKING/.hevcfs/prev: archives a new file
				       replaced, kept aside until it settles */
	char *work_dir, *cache_dir; /* absolute paths of the above, for codec/ */
	struct idx *idx;
	const char *index_path; /* opened in the daemon, after fork */
	struct fuse *fuse;

	/* Serialises namespace changes (rename, unlink, rmdir) with the
	 * commit step of a job so a name cannot move under either. */
	pthread_mutex_t ns_lock;
	unsigned int hide_seen; /* libfuse's hiding counter, last seen (ops.c) */

	pthread_mutex_t nodes_lock;
	struct node **nodes; /* hash table by ino */
	size_t nodes_size;
	struct node *settle; /* list of settling nodes */
	pthread_cond_t settle_cond;
	int64_t settle_wake_at; /* when the settle thread next looks (ms) */
	int settle_kick;	/* a node joined that is due before that */

	pthread_mutex_t jobs_lock;
	pthread_cond_t jobs_cond;
	struct job *jobs_head, *jobs_tail;
	int video_running;   /* one video at a time; protected by jobs_lock */
	atomic_int stopping; /* set once at unmount */
	atomic_int active;   /* jobs being worked on */

	pthread_t *workers;
	int nworkers;
	pthread_t settle_thread;
	int threads_started;

	pthread_mutex_t links_lock; /* names of hard-linked files (links.c) */
	pthread_cond_t links_cond;
	struct link_name *links;
	size_t nlinks;
	int links_stop;
	uint64_t links_queued, links_done; /* invalidations asked for, done */
	pthread_t links_thread;

	pthread_mutex_t scrub_lock; /* the background scrubber's sleep (scrub.c) */
	pthread_cond_t scrub_cond;
	pthread_t scrub_thread;
	int scrubbing;

	pthread_mutex_t render_lock; /* one render of a given view at a time */
	pthread_cond_t render_cond;
	uint64_t *rendering; /* inos being rendered */
	size_t nrendering;
	uint64_t *views_checked; /* cache files found whole (cache.c) */
	size_t nviews_checked, views_next;
};

/* Current monotonic time in ms. */
int64_t fs_now_ms(void);

/* --- path.c: names, safe resolution ------------------------------------ */

/* Is this logical path (leading '/') the state directory or inside it? */
int fs_path_reserved(const char *path);
/*
 * Open the parent directory of a logical path with no way out of BACKING
 * (no symlinks, no "..", no magic links) and point *name at its last
 * component. Returns an fd (O_PATH directory; close it) or -errno. For "/"
 * itself returns -EINVAL.
 */
int fs_open_parent(struct fs *fs, const char *path, const char **name);
/* Copy src into dst from offset 0, at most limit bytes (copy_file_range:
 * a reflink where the filesystem shares extents). 0 or -errno. */
int fs_copy_fd(int src, int dst, uint64_t limit);
/* Open rel below root_fd (BACKING, or any directory) the same way: no
 * symlink, "..", or magic link followed. An fd or -errno. */
int fs_open_beneath(int root_fd, const char *rel, int flags, mode_t mode);
/* The stored name of an archived file named name whose archive has suffix
 * (".heic", ".mp4", ".mkv"): name + suffix, except that an MP4 of a video
 * whose name already says MP4/MOV/M4V keeps its name. -ENAMETOOLONG when it
 * does not fit in NAME_MAX (or size). */
int fs_stored_name(const char *name, const char *suffix, char *out, size_t size);
/* Open a directory or file by logical path as above, with flags. */
int fs_open_path(struct fs *fs, const char *path, int flags, mode_t mode);

/* How a logical name is stored. */
struct fs_lookup {
	int parent;	    /* parent directory fd (caller closes) */
	char name[256 + 8]; /* backing name */
	struct stat st;	    /* of the backing file */
	int archived;	    /* stored as an archived copy under a suffix */
	struct idx_entry e; /* valid when has_entry: looked up only for names
			       that carry an archive suffix */
	int has_entry;
	int hidden; /* found in the hidden directory */
};
/* Resolve a logical path to its backing file (following the mapping of
 * archived names). Returns 0 (lk->parent open) or -errno (nothing open). */
int fs_lookup(struct fs *fs, const char *path, struct fs_lookup *lk);
/* The same, except that when only the last name is missing it returns
 * -ENOENT with lk->parent open and lk->name set, ready for a create. */
int fs_lookup_for_create(struct fs *fs, const char *path, struct fs_lookup *lk);
/* The logical name under which a backing entry appears in the mount, or NULL
 * when it is hidden. Writes into buf. */
const char *fs_logical_name(struct fs *fs, struct idx_txn *txn, const char *name, uint64_t ino,
			    char *buf, size_t size);
/*
 * Is name the kind libfuse gives a file removed while open
 * (".fuse_hidden" and 16 hex digits)? libfuse renames the file to it, asks
 * for its attributes under it and removes it at the last close; hevcfs keeps
 * such a file in BACKING/.hevcfs/hidden, out of every listing, under a key
 * naming its directory (fs_hidden_key). A name of the form is looked up
 * there first, then in its directory.
 */
int fs_hidden_name(const char *name);
/* The name in the hidden directory of the hidden name name of directory
 * dirfd: "<directory inode>-<name>". */
int fs_hidden_key(int dirfd, const char *name, char *buf, size_t size);
/* The last component of a path. */
const char *fs_basename(const char *path);
/* Does backing name end with a suffix used for archived copies? */
int fs_has_archive_suffix(const char *name);

/* Read one index entry in its own transaction. */
int fs_entry_get(struct fs *fs, uint64_t ino, struct idx_entry *e);

/* --- stage.c: nodes, generations, settling ----------------------------- */

/* Find or create the node of ino, taking a reference. NULL on ENOMEM. */
struct node *fs_node_get(struct fs *fs, uint64_t ino);
/* Find the node of ino if any, taking a reference. */
struct node *fs_node_find(struct fs *fs, uint64_t ino);
/* Drop a reference; frees the node at zero. Accepts NULL. */
void fs_node_put(struct fs *fs, struct node *n);
/* Record a change to the bytes: new generation, cancel a running job. */
void fs_node_touch(struct fs *fs, struct node *n);
/* A writer opened (path may be NULL). */
void fs_node_writer_open(struct fs *fs, struct node *n, const char *path);
/* A writer closed: start settling if it was the last and the node is dirty. */
void fs_node_writer_close(struct fs *fs, struct node *n, const char *path);
/* Is path the hidden name of n's file, removed while open (not a name
 * somebody chose that only looks like one)? Caller holds nodes_lock. */
int fs_node_path_hidden(const struct node *n, const char *path);
/* A handle of any kind opened (through path) or closed on n. When the last
 * closes on a file with no name left, fs_node_closed copies the hidden name
 * it still has to buf (size 64) and returns 1: whoever removes it says so
 * with fs_node_hidden_link(-1). When the last closes on a file whose archive
 * waited for it, it queues the file again. */
void fs_node_opened(struct fs *fs, struct node *n, const char *path);
int fs_node_closed(struct fs *fs, struct node *n, char *buf);
/* Does ino have open handles? */
int fs_node_is_open(struct fs *fs, uint64_t ino);
/* Has n open handles that may write? */
int fs_node_writing(struct fs *fs, struct node *n);
/* If n has open handles, keep the verified archive res of gen for its
 * commit at the last close (fs_node_closed queues the file again) and
 * return 1. Take it back with fs_node_take_ready (1 if still of gen). An
 * archive not taken is removed from work/ when replaced or when the node
 * goes. */
int fs_node_defer_commit(struct fs *fs, struct node *n, uint64_t gen,
			 const struct codec_result *res);
int fs_node_take_ready(struct fs *fs, struct node *n, uint64_t gen, struct codec_result *res);
/* Has a file opened under path (kept current by renames) open handles? It
 * may be another inode than the name has now: the one an archive replaced.
 * Walks every node: not for a hot path. */
int fs_path_is_open(struct fs *fs, const char *path);
/* The link count the mount shows for ino, whose backing count is nlink:
 * links in the hidden directory do not count, and a file with no name left
 * has none. Returns nlink when the node is unknown. */
nlink_t fs_node_nlink(struct fs *fs, uint64_t ino, nlink_t nlink);
/* ino got the hidden name (delta 1; shown with size, -1 for its own) or
 * lost it (-1). */
void fs_node_hidden_link(struct fs *fs, uint64_t ino, const char *name, int delta, int64_t size);
/* The size a file under a hidden name shows (an archived photo's view's),
 * or -1 for its own. */
int64_t fs_node_hidden_size(struct fs *fs, uint64_t ino);
/* A name went (libfuse hid the file under it): no node remembers it. */
void fs_nodes_forget_path(struct fs *fs, const char *path);
/* At the end of the mount: free what nodes are left (hidden links' own). */
void fs_nodes_free(struct fs *fs);
/* A rename happened: rewrite the remembered paths at or below from. */
void fs_nodes_rename(struct fs *fs, const char *from, const char *to);
/* The file is gone (no name left): cancel its job, forget settling, and
 * stage nothing for it until it is opened under a real name again. */
void fs_node_gone(struct fs *fs, uint64_t ino);
/* Mark a new or rewritten file as staged in the index, with its path in
 * the queue so recovery finds it if the mount ends before it settles. */
int fs_mark_staged(struct fs *fs, uint64_t ino, uint64_t size, const char *path);
int fs_settle_start(struct fs *fs);
void fs_settle_stop(struct fs *fs);

/* --- queue.c: jobs, workers, commit, recovery -------------------------- */

/* Queue ino at gen (node may be NULL: one is created). */
int fs_job_push(struct fs *fs, uint64_t ino, uint64_t gen, struct node *node);
int fs_workers_start(struct fs *fs);
void fs_workers_stop(struct fs *fs);
/* Re-queue every pending record of the index (at mount). */
int fs_queue_load(struct fs *fs);
/* fsync a directory given any fd of it (O_PATH too). */
int fs_fsync_dir(int dirfd);
/* Give dst src's owner, mode, times and user.* xattrs, then fsync dst.
 * Failures to copy an xattr are logged, not fatal. */
int fs_copy_attrs(int src, int dst);

/* --- spawn.c: archive jobs in a child process -------------------------- */

/* codec_archive() in a child process: same contract, plus a crash of the
 * child keeps the file with the reason, and opts->cancel kills it. With
 * prev_fd (an archive the file replaced; -1 for none), codec_retag first:
 * a metadata edit of its view keeps its pictures (result->retagged). */
int fs_archive_isolated(int src_fd, int prev_fd, const char *out_path, const char *view_path,
			const struct codec_opts *opts, struct codec_result *result);

/* A stored file decoded whole (codec_check_stored) in a child process: a
 * decoder that crashes on it marks it damaged, never the caller. 0, 1 with
 * why set when it does not decode, -errno. */
int fs_check_isolated(int fd, const struct codec_opts *opts, char *why, size_t len);

/* --- scrub.c: the background scrubber (scrub_days) --------------------- */
int fs_scrubber_start(struct fs *fs);
void fs_scrubber_stop(struct fs *fs);

/* --- links.c: attribute caching and hard links -------------------------- */

/* Remember path (with its leading '/') as a name of ino, which has several. */
void fs_links_note(struct fs *fs, uint64_t ino, const char *path);
/* ino changed: have the kernel forget what it cached for its other names. */
void fs_links_changed(struct fs *fs, uint64_t ino, const char *except);
int fs_links_start(struct fs *fs);
void fs_links_stop(struct fs *fs);

/* --- cache.c: rendered views -------------------------------------------- */

/* Open (rendering if needed) the view of an archived photo stored at
 * parent/name with inode ino. Returns an fd open for reading or -errno. */
int fs_view_open(struct fs *fs, int parent, const char *name, uint64_t ino,
		 const struct idx_entry *e, const char *path);
/* Forget the cached view of ino. */
void fs_view_drop(struct fs *fs, uint64_t ino);
/* Keep the cache under its bound (least recently used out first). */
void fs_cache_trim(struct fs *fs);

/* --- tree.c: walking the backing tree ----------------------------------- */

/* Called for every regular file below BACKING (the state directory left
 * out) with its directory, name, stat and path relative to BACKING; a
 * nonzero return stops the walk. */
typedef int (*fs_walk_fn)(void *arg, int dirfd, const char *name, const struct stat *st,
			  const char *path);
/* Walk every regular file. Returns 0, the visitor's nonzero value that
 * stopped it, or -ENOMEM. Symlinks are never followed. */
int fs_walk(int root_fd, fs_walk_fn visit, void *arg);

/* What fs_walk_tree shows: a file, a directory before and after its
 * entries, anything else (symlink, FIFO, device). */
enum fs_tree_what { FS_TREE_FILE, FS_TREE_DIR, FS_TREE_DIR_END, FS_TREE_OTHER };
typedef int (*fs_tree_fn)(void *arg, enum fs_tree_what what, int dirfd, const char *name,
			  const struct stat *st, const char *path);
/* Walk every entry, directories in pre- and post-order. */
int fs_walk_tree(int root_fd, fs_tree_fn visit, void *arg);

/* --- prev.c: archives a new file replaced, kept aside ------------------ */

/* Keep the archived file dirfd/name (inode ino) aside for owner, the new
 * file that replaced it (renamed over it, or opened over it for writing):
 * moved into BACKING/.hevcfs/prev, flagged IDX_F_PREV, owner's entry naming
 * it. An older one kept for owner goes. Caller holds ns_lock. 0 or -errno. */
int fs_prev_keep(struct fs *fs, int dirfd, const char *name, uint64_t ino, uint64_t owner);
/* Open owner's archive kept aside (inode ino) for reading. An fd or -errno. */
int fs_prev_open(struct fs *fs, uint64_t owner, uint64_t ino);
/* owner (at path, settled at queue generation gen) has its kept archive's
 * original bytes again: put the archive back, unchanged but for owner's
 * attributes, and remove owner. -EBUSY when owner is open, -ESTALE when it
 * changed, -EIO when the archive is not whole: then archive owner anew. */
int fs_prev_restore(struct fs *fs, uint64_t owner, uint64_t ino, const char *path, uint64_t gen);
/* Forget owner's kept archive (inode ino; 0 is fine): its file went, or was
 * archived or kept. */
void fs_prev_drop(struct fs *fs, uint64_t owner, uint64_t ino);
/* At mount: drop what no staged or pending entry names. */
void fs_prev_recover(struct fs *fs);

/* --- pool.c: workers for import and export ----------------------------- */

struct fs_pool;
/* Run one task: path relative to the walk's root, src (import: the source
 * file's path) and its stat. */
typedef void (*fs_pool_fn)(void *arg, struct fs_pool *p, const char *path, const char *src,
			   const struct stat *st);
/* Start n workers running run on each task added. stop, once set, makes
 * them drop what is queued. */
int fs_pool_new(int n, fs_pool_fn run, void *arg, const atomic_int *stop, struct fs_pool **out);
/* Queue a task (copied); waits while the queue is full. */
int fs_pool_add(struct fs_pool *p, const char *path, const char *src, const struct stat *st);
/* Take (start 1) or give back (0) the video turn: one video at a time. */
void fs_pool_video(struct fs_pool *p, int start);
/* Let the workers finish what is queued, join them, free p (NULL is fine). */
void fs_pool_free(struct fs_pool *p);

/* --- sums.c: checksums of stored files, checked on read ---------------- */

struct fs_check;
struct sum_file;

/* Start checking reads of n's file, open on fd with backing inode ino and
 * entry e, against its block digests: nothing happens unless e is at rest
 * (kept or archived) with digests for fd's whole size, and verify_reads is
 * on. Handles of one file share one check. */
void fs_check_attach(struct fs *fs, struct node *n, int fd, uint64_t ino,
		     const struct idx_entry *e);
/* Check the blocks that bytes [off, off + size) of n's file touch, reading
 * whole blocks from fd. 0 (also when nothing is checked), -EIO when one does
 * not match its digest (the file is flagged damaged and named in the log by
 * path), or -errno of a failed read. */
int fs_check_range(struct fs *fs, struct node *n, int fd, uint64_t off, size_t size,
		   const char *path);
/* A writer opened n's file: nothing more of it is checked. */
void fs_check_stop(struct node *n);
void fs_check_free(struct fs_check *c);
/* Flag ino damaged in the index and name it in the log, with what failed. */
void fs_mark_damaged(struct fs *fs, uint64_t ino, const char *path, const char *what);
/* Record the digests f of ino's stored file in e (sum, checked now, no
 * longer damaged) and its block digests in txn. */
int fs_sums_record(struct idx_txn *txn, uint64_t ino, struct idx_entry *e,
		   const struct sum_file *f);
/* Digest dirfd/name whole and per block (sum_file). */
int fs_sum_path(int dirfd, const char *name, struct sum_file *f);

/* --- ops.c ---------------------------------------------------------------- */
extern const struct fuse_operations fs_ops;

/* Debug hook for crash tests: when the environment variable
 * HEVCFS_CRASH_AT names this point, the process kills itself with SIGKILL. */
void fs_crash_point(const char *name);

#endif
