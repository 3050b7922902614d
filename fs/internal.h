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
	int writers;         /* open handles that may write */
	int opens;           /* open handles of any kind */
	int gone;            /* no name left: writes are not staged again */
	int hidden_links;    /* names of it in the hidden directory */
	char hidden_name[64]; /* the latest of them (fs_hidden_key) */
	int64_t hidden_size; /* size shown under a hidden name (a view's), or -1 */
	int commit_waits;    /* an archive waits for the last handle to close */
	struct ready *ready; /* that archive, verified, its files in work/ */
	int dirty;           /* written since the last enqueue */
	int settling;        /* on the settle list (holds a reference) */
	int64_t settle_at;   /* monotonic ms when it may be queued */
	char *path;          /* last known logical path, relative, for the queue */
	atomic_uint_fast64_t gen; /* bumped by every change to the bytes */
	atomic_int cancel;   /* set to abandon the running job */
	struct node *next;   /* hash chain */
	struct node *settle_next;
};

/* A queued or running archive job. */
struct job {
	uint64_t ino;
	uint64_t gen;
	int video;         /* known to be a video (one runs at a time) */
	struct node *node; /* holds a reference */
	struct job *next;
};

/* The mount. One instance, the FUSE private data. */
struct fs {
	struct fs_config *cfg;
	int root_fd;   /* BACKING, O_PATH directory */
	int state_fd;  /* BACKING/.hevcfs */
	int work_fd;   /* BACKING/.hevcfs/work: archive outputs before commit */
	int cache_fd;  /* BACKING/.hevcfs/cache: rendered views */
	int hidden_fd; /* BACKING/.hevcfs/hidden: files removed while open */
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
	int settle_kick;        /* a node joined that is due before that */

	pthread_mutex_t jobs_lock;
	pthread_cond_t jobs_cond;
	struct job *jobs_head, *jobs_tail;
	int video_running; /* one video at a time; protected by jobs_lock */
	atomic_int stopping; /* set once at unmount */
	atomic_int active; /* jobs being worked on */

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

	pthread_mutex_t render_lock; /* one render of a given view at a time */
	pthread_cond_t render_cond;
	uint64_t *rendering; /* inos being rendered */
	size_t nrendering;
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
/* Open a directory or file by logical path as above, with flags. */
int fs_open_path(struct fs *fs, const char *path, int flags, mode_t mode);

/* How a logical name is stored. */
struct fs_lookup {
	int parent;          /* parent directory fd (caller closes) */
	char name[256 + 8];  /* backing name */
	struct stat st;      /* of the backing file */
	int archived;        /* stored as an archived copy under a suffix */
	struct idx_entry e;  /* valid when has_entry: looked up only for names
				that carry an archive suffix */
	int has_entry;
	int hidden;          /* found in the hidden directory */
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
void fs_node_hidden_link(struct fs *fs, uint64_t ino, const char *name, int delta,
			 int64_t size);
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
 * child keeps the file with the reason, and opts->cancel kills it. */
int fs_archive_isolated(int src_fd, const char *out_path, const char *view_path,
			const struct codec_opts *opts, struct codec_result *result);

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
		 const struct idx_entry *e);
/* Forget the cached view of ino. */
void fs_view_drop(struct fs *fs, uint64_t ino);
/* Keep the cache under its bound (least recently used out first). */
void fs_cache_trim(struct fs *fs);

/* --- ops.c ---------------------------------------------------------------- */
extern const struct fuse_operations fs_ops;

/* Debug hook for crash tests: when the environment variable
 * HEVCFS_CRASH_AT names this point, the process kills itself with SIGKILL. */
void fs_crash_point(const char *name);

#endif
