/*
 * Private to fs/: the mount's shared state and the verbs the files of fs/
 * offer each other. Which file owns what:
 *
 *   ops.c     the FUSE low-level operations: requests in, replies out
 *   node.c    the inodes the kernel knows and the files being written:
 *             struct fs_node, opaque outside it; staging and settling
 *   names.c   logical <-> backing names, safe resolution below BACKING
 *   commit.c  the one journalled "replace X by Y durably" step, and its
 *             recovery
 *   queue.c   archive jobs and their workers
 *   prev.c    archives a new file replaced, kept aside until it settles
 *   cache.c   rendered views; sums.c checksums checked on read
 *   spawn.c   the children that archive and decode
 *   mount.c   the state, recovery at mount, the FUSE session; state.c
 *             where the state lives; scrub.c, import.c, export.c, pool.c,
 *             tree.c the work done without requests
 *
 * Locks (lock.c checks the order in debug builds). Take them in this order,
 * never the reverse; a leaf is never held while another lock is taken:
 *   ns (namespace changes) -> nodes (node table, staging) -> jobs (queue)
 *   leaves: render (cache.c), check (each struct fs_check), scrub, pool,
 *           notify (node.c's invalidation list)
 * An index transaction may be opened while holding any of them; it is never
 * held across slow work (transcoding, fsync of data), and no lock is taken
 * while one is open for writing.
 */
#ifndef HEVCFS_FS_INTERNAL_H
#define HEVCFS_FS_INTERNAL_H

#define FUSE_USE_VERSION 314
#include <fuse_lowlevel.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/stat.h>

#include "../index/index.h"
#include "fs.h"

/* Buffer sizes, named once. */
#define FS_NAME_BUF (NAME_MAX + 1)    /* a name and its terminator */
#define FS_STORED_BUF (NAME_MAX + 16) /* a name with an archive suffix */
#define FS_JOB_NAME_BUF 64	      /* work/<ino>.<gen>.out and the like */
#define FS_PROC_FD_BUF 32	      /* "/proc/self/fd/N" */

/* ---- lock.c: mutexes that know their place in the lock order ------------ */

enum fs_lock_rank {
	FS_LOCK_NS = 1,
	FS_LOCK_NODES,
	FS_LOCK_JOBS,
	FS_LOCK_LEAF, /* render, check, scrub, pool, notify */
};

struct fs_mutex {
	pthread_mutex_t m;
	enum fs_lock_rank rank;
	const char *name;
};

void fs_mutex_init(struct fs_mutex *l, enum fs_lock_rank rank, const char *name);
void fs_mutex_destroy(struct fs_mutex *l);
/* Lock l; in debug builds abort with both names when a lock of the same or
 * a later rank is already held by this thread. */
void fs_mutex_lock(struct fs_mutex *l);
void fs_mutex_unlock(struct fs_mutex *l);
/* pthread_cond_wait/timedwait on l (the rank bookkeeping stays right). */
void fs_cond_wait(pthread_cond_t *c, struct fs_mutex *l);
int fs_cond_timedwait(pthread_cond_t *c, struct fs_mutex *l, const struct timespec *abstime);

/* An archive verified and waiting to be committed: its output and view are
 * work/<ino>.<gen>.out and .view. */
struct ready {
	uint64_t gen;
	struct codec_result res;
};

struct fs_node;
struct fs_check;

/* A queued or running archive job. */
struct job {
	uint64_t ino;	      /* the backing file archived */
	uint64_t gen;	      /* of its bytes */
	int video;	      /* known to be a video (one runs at a time) */
	struct fs_node *node; /* holds a reference */
	struct job *next;
};

/* The mount. One instance, the session's user data. */
struct fs {
	struct fs_config *cfg;
	int root_fd;		    /* BACKING, O_PATH directory */
	int meta_fd;		    /* BACKING/.hevcfs */
	int state_fd;		    /* the state directory (fs_paths): lock, index, log */
	int work_fd;		    /* BACKING/.hevcfs/work: archive outputs before commit */
	int cache_fd;		    /* STATE/cache: rendered views */
	int prev_fd;		    /* BACKING/.hevcfs/prev: archives a new file
				       replaced, kept aside until it settles */
	dev_t dev;		    /* BACKING's device */
	char *work_dir, *cache_dir; /* absolute paths of the above, for codec/ */
	struct idx *idx;
	const char *index_path; /* opened in the daemon, after fork */
	struct fuse_session *se;

	/* Serialises namespace changes (rename, unlink, rmdir, create over
	 * an archive) with the renames of commits. */
	struct fs_mutex ns_lock;

	struct fs_nodes *nodes; /* node.c's: the table, settling, the LRU */

	struct fs_mutex jobs_lock;
	pthread_cond_t jobs_cond;
	struct job *jobs_head, *jobs_tail;
	int video_running; /* one video at a time; protected by jobs_lock */
	/* The index's queue is taken in a batch at a time, in inode order,
	 * when the workers run out of jobs (queue.c): a mount after a
	 * rebuild of a million files holds a batch of jobs and nodes, not a
	 * million. Under jobs_lock. */
	uint64_t backlog_from; /* the next inode of the queue to look at */
	int backlog;	       /* records may remain from backlog_from on */
	int refilling;	       /* a worker is taking a batch in */
	atomic_int stopping;   /* set once at unmount */
	atomic_int active;     /* jobs being worked on */

	pthread_t *workers;
	int nworkers;
	int threads_started;

	struct fs_mutex scrub_lock; /* the background scrubber's sleep (scrub.c) */
	pthread_cond_t scrub_cond;
	pthread_t scrub_thread;
	int scrubbing;

	struct fs_mutex render_lock; /* one render of a given view at a time */
	/* open file and directory handles (ops.c): the kernel may drop the
	 * RELEASE of those still open at unmount; they are closed at the end */
	struct fs_mutex live_lock;
	struct live *live;
	pthread_cond_t render_cond;
	uint64_t *rendering; /* inos being rendered */
	size_t nrendering;
	uint64_t *views_checked; /* cache files found whole (cache.c) */
	size_t nviews_checked, views_next;
};

/* Current monotonic time in ms. */
int64_t fs_now_ms(void);

/* ---- names.c: logical <-> backing names, resolution below BACKING ------- */

/* Is name a name a file may have: not empty, no '/', not "." or "..", at
 * most NAME_MAX bytes? */
int fs_name_ok(const char *name);
/* Is name, in the directory dir_ino (BACKING's root when is_root), the
 * state directory? */
int fs_name_reserved(int is_root, const char *name);
/* Is this logical path (with or without a leading '/') the state directory
 * or inside it? */
int fs_path_reserved(const char *path);
/* Does backing name end with a suffix used for archived copies? */
int fs_has_archive_suffix(const char *name);
/* Is there a regular file name + an archive suffix in dirfd? */
int fs_archive_beside(int dirfd, const char *name);
/* The stored name of an archived file named name whose archive has suffix
 * (".heic", ".mp4", ".mkv"): name + suffix, except that an MP4 of a video
 * whose name already says MP4/MOV/M4V keeps its name. -ENAMETOOLONG when it
 * does not fit in NAME_MAX (or size). */
int fs_stored_name(const char *name, const char *suffix, char *out, size_t size);
/* The last component of a path. */
const char *fs_basename(const char *path);
/* A path relative to BACKING: parent's path joined with name into buf
 * (FS_PATH_MAX bytes). 0 or -ENAMETOOLONG. */
int fs_path_join(const char *parent, const char *name, char *buf, size_t size);

/* How a logical name is stored in a directory. */
enum fs_kind {
	FS_KIND_PLAIN = 0, /* the file itself */
	FS_KIND_VIEW,	   /* an archived photo shown as its JPEG view */
	FS_KIND_SIBLING,   /* a HEIF photo's read-only JPEG sibling */
};

struct fs_found {
	char lname[FS_NAME_BUF];  /* the logical name looked up */
	char name[FS_STORED_BUF]; /* the backing name */
	struct stat st;		  /* of the backing file */
	enum fs_kind kind;
	uint64_t view_bytes; /* VIEW, SIBLING: the size shown */
	int has_entry;	     /* e is the backing file's index entry */
	struct idx_entry e;
};

/* Resolve logical name in the directory dirfd (BACKING's root when
 * is_root). 0, -ENOENT, or -errno. Only names that can be archived copies
 * (a suffix, or a missing name) cost an index lookup. */
int fs_resolve(struct fs *fs, int dirfd, int is_root, const char *name, struct fs_found *f);
/* The logical name of the backing entry name (inode ino, type d_type) of
 * directory dirfd in a listing, into buf: name itself, name less its
 * archive suffix (in the legacy view, unless that name is taken: then the
 * stored name, so no name is listed twice), or NULL when it is not shown
 * (the state directory). txn may be NULL (no index lookups). */
const char *fs_list_name(struct fs *fs, struct idx_txn *txn, int dirfd, int is_root,
			 const char *name, uint64_t ino, unsigned char d_type, char *buf,
			 size_t size);
/* The read-only JPEG sibling name of a kept HEIF photo named name (its
 * entry e) in dirfd, into buf; NULL when it has none (heic_view=jpeg off,
 * no view learnt, a file of that name there). */
const char *fs_sibling_name(struct fs *fs, int dirfd, const char *name, const struct idx_entry *e,
			    char *buf, size_t size);

/* Open rel below root_fd (BACKING, or any directory) without following a
 * symlink, "..", or magic link (openat2 RESOLVE_BENEATH). An fd or -errno. */
int fs_open_beneath(int root_fd, const char *rel, int flags, mode_t mode);
/* Open a directory or file by logical path the same way, with flags. */
int fs_open_path(struct fs *fs, const char *path, int flags, mode_t mode);
/* Open the parent directory of a logical path the same way and point *name
 * at its last component. An O_PATH fd or -errno (-EINVAL for the root). */
int fs_open_parent(struct fs *fs, const char *path, const char **name);
/* Resolve a logical path to its backing file: the parent directory opened
 * (*dirfd, O_PATH; close it) and what fs_resolve finds there. 0 or -errno
 * (nothing open). */
int fs_resolve_path(struct fs *fs, const char *path, int *dirfd, struct fs_found *f);
/* Copy src into dst from offset 0, at most limit bytes (copy_file_range:
 * a reflink where the filesystem shares extents). 0 or -errno. */
int fs_copy_fd(int src, int dst, uint64_t limit);
/* "/proc/self/fd/N" for fd, into buf (FS_PROC_FD_BUF bytes). */
const char *fs_proc_fd(int fd, char *buf);

/* Read one index entry in its own transaction. */
int fs_entry_get(struct fs *fs, uint64_t ino, struct idx_entry *e);

/* ---- node.c: the inodes the kernel knows, and the files being written ---
 *
 * A node is one backing inode (an archived photo's view and a HEIF photo's
 * JPEG sibling are nodes of their own), known to the kernel (nlookup) or to
 * hevcfs (a handle, a job, the settle list: refs). It holds an O_PATH fd of
 * its backing file once the kernel has looked it up, the directory and
 * name it was last seen under, and the state of its bytes: their
 * generation, writers, settling, the job's cancel flag, an archive waiting
 * for its readers, the check of its reads. Every field is node.c's, under
 * its lock; the rest of fs/ uses the verbs below. Nodes the kernel no
 * longer needs go, and node.c asks the kernel to forget the least recently
 * used ones when there are more than it keeps, so memory does not grow with
 * the number of files.
 */

int fs_nodes_new(struct fs *fs);
/* At unmount: free every node (what the kernel knew is gone with it). */
void fs_nodes_free(struct fs *fs);
int fs_nodes_start(struct fs *fs); /* the settle and notify threads */
void fs_nodes_stop(struct fs *fs);

/* What the table holds now (tests, and the log at unmount). */
struct fs_nodes_stats {
	size_t nodes, looked_up, with_fd, lru, max, notices;
};
void fs_nodes_stats(struct fs *fs, struct fs_nodes_stats *s);

/* The root (BACKING) and the node of a kernel inode number. */
struct fs_node *fs_node_root(struct fs *fs);
struct fs_node *fs_node_of(struct fs *fs, fuse_ino_t ino);
fuse_ino_t fs_node_id(const struct fs_node *n);
uint64_t fs_node_generation(const struct fs_node *n);

/* A lookup the kernel will remember (nlookup + 1): the node of what f found
 * in parent (made, with an O_PATH fd of it, when new; otherwise brought up
 * to date: its name, kind and size shown). *out holds no extra reference.
 * 0 or -errno. */
int fs_node_lookup(struct fs *fs, struct fs_node *parent, const struct fs_found *f,
		   struct fs_node **out);
/* The kernel forgets nlookup lookups of n. */
void fs_node_forget(struct fs *fs, struct fs_node *n, uint64_t nlookup);

/* The node of backing inode ino (for jobs), made without a kernel lookup
 * when there is none; with a reference. NULL on ENOMEM. */
struct fs_node *fs_node_get(struct fs *fs, uint64_t ino);
/* The node of backing inode ino if any, with a reference. */
struct fs_node *fs_node_find(struct fs *fs, uint64_t ino);
void fs_node_hold(struct fs *fs, struct fs_node *n);
/* Drop a reference (NULL is fine); frees the node when nothing holds it. */
void fs_node_put(struct fs *fs, struct fs_node *n);

/* What a node is. fd: its O_PATH fd (-1 when the kernel never looked it
 * up); valid while the node is held or looked up. Its number stays; the
 * file behind it changes when a commit replaces it (fs_node_replaced). */
int fs_node_fd(const struct fs_node *n);
/* The file a node stands for, read at one moment: a commit may make it
 * stand for another file right after (unless the caller holds ns_lock). */
struct fs_node_file {
	uint64_t ino;	     /* backing inode */
	enum fs_kind kind;   /* how it is shown */
	uint64_t view_bytes; /* VIEW, SIBLING: the size shown */
};
void fs_node_file(struct fs *fs, struct fs_node *n, struct fs_node_file *f);
uint64_t fs_node_ino(struct fs *fs, struct fs_node *n);
enum fs_kind fs_node_kind(struct fs *fs, struct fs_node *n);
mode_t fs_node_type(const struct fs_node *n);
/* Open the file n stands for with flags (through its O_PATH fd), and say in
 * f which file that is: the descriptor and f agree even when a commit
 * replaces the file meanwhile. A descriptor or -errno. */
int fs_node_reopen(struct fs *fs, struct fs_node *n, int flags, struct fs_node_file *f);
/* n's logical path (relative, no leading '/') into buf (FS_PATH_MAX):
 * through the names its directories were last seen under. -ENOENT when it
 * has no name left (removed, or known only to a job). */
int fs_node_path(struct fs *fs, struct fs_node *n, char *buf, size_t size);
/* n's backing name in its directory, and that directory's O_PATH fd (dup'd:
 * close it). -ENOENT when it has none. */
int fs_node_at(struct fs *fs, struct fs_node *n, int *dirfd, char *name, size_t size);
/* The stat the kernel is told: the backing file's, with a view's size. */
int fs_node_stat(struct fs *fs, struct fs_node *n, struct stat *st);

/* Namespace changes (the caller holds ns_lock). */
/* n was renamed: now named lname (logical; bname stored) in parent. */
void fs_node_moved(struct fs *fs, struct fs_node *n, struct fs_node *parent, const char *lname,
		   const char *bname);
/* n's backing file lost the name it was known by (unlinked, renamed over):
 * when no name is left it is gone (nothing of it is archived). */
void fs_node_unnamed(struct fs *fs, struct fs_node *n, int last);
/* The node of backing inode ino, if any, now stands for another backing
 * file (an archive committed, a photo turned back into a JPEG to be written,
 * an archive put back): inode new_ino, stored as bname in the same
 * directory, of kind and size shown. Its O_PATH fd is opened anew; the
 * kernel is told to forget what it cached of it unless in_request (the
 * request's own reply brings it up to date). */
void fs_node_replaced(struct fs *fs, uint64_t ino, uint64_t new_ino, int dirfd, const char *bname,
		      enum fs_kind kind, uint64_t view_bytes, int in_request);
/* Tell the kernel (from a thread that serves no request: never from inside
 * one) to forget what it cached of the node of backing inode ino (its
 * attributes and pages), or of the name name (logical) of the directory of
 * logical path dir. */
void fs_notify_ino(struct fs *fs, uint64_t ino);
void fs_notify_name(struct fs *fs, const char *dir, const char *name);

/* The bytes of n's file changed: a new generation, its job cancelled. */
void fs_node_touch(struct fs *fs, struct fs_node *n);
/* n's file changed by path, with no handle of the caller's (mknod of a
 * regular file, truncate(2) by name): as fs_node_touch, its check stopped,
 * and it settles unless a writer has it open (that writer's close will). */
void fs_node_changed(struct fs *fs, struct fs_node *n);
/* A handle opened on n (writable: it may write) or closed. The last writer's
 * close starts settling when the bytes changed; the last close of a file
 * whose archive waited for its readers queues it again. */
void fs_node_opened(struct fs *fs, struct fs_node *n, int writable);
void fs_node_closed(struct fs *fs, struct fs_node *n, int writable);
/* Has n open handles? Writers? (ino: by backing inode, 0 when unknown.) */
int fs_node_is_open(struct fs *fs, uint64_t ino);
int fs_node_writing(struct fs *fs, struct fs_node *n);
/* The file is gone (no name left): cancel its job, forget settling, and
 * stage nothing for it again. */
void fs_node_gone(struct fs *fs, uint64_t ino);
/* The job's view of n: its generation, cancel flag, whether it is current
 * (its bytes are still those of gen). A writer that has written nothing is
 * no change: the commit waits for its close (fs_node_defer_commit), and a
 * write from it makes the job stale and the file settle again. */
uint64_t fs_node_gen(struct fs_node *n);
/* The node of backing inode ino (held, as fs_node_get), its present
 * generation in *gen recorded as the one a job is being made for; or NULL
 * with *busy set when the file is in this mount's hands already (open,
 * written and settling, or with a job made for its present bytes): then a
 * queue record of it in the index is no job to make. NULL with *busy
 * clear: out of memory. */
struct fs_node *fs_node_claim(struct fs *fs, uint64_t ino, uint64_t *gen, int *busy);
atomic_int *fs_node_cancel(struct fs_node *n);
int fs_node_current(struct fs *fs, struct fs_node *n, uint64_t gen);
/* Start n at generation gen (a job queued from the index at mount). */
void fs_node_set_gen(struct fs_node *n, uint64_t gen);
/* If n has open handles, keep the verified archive res of gen for its
 * commit at the last close and return 1. Take it back with
 * fs_node_take_ready (1 if still of gen). */
int fs_node_defer_commit(struct fs *fs, struct fs_node *n, uint64_t gen,
			 const struct codec_result *res);
int fs_node_take_ready(struct fs *fs, struct fs_node *n, uint64_t gen, struct codec_result *res);
/* The check of the reads of n's file (backing inode ino), a reference (put
 * it), or NULL when there is none. */
struct fs_check *fs_node_check_get(struct fs *fs, struct fs_node *n, uint64_t ino);
/* Make c (the caller's reference, taken) the check of n's file ino, unless
 * one is there already or a writer has it open. Returns the check to use, a
 * reference, or NULL. */
struct fs_check *fs_node_check_set(struct fs *fs, struct fs_node *n, uint64_t ino,
				   struct fs_check *c);
/* Mark a new or rewritten file staged in the index, with its path in the
 * queue so recovery finds it if the mount ends before it settles. */
int fs_mark_staged(struct fs *fs, uint64_t ino, uint64_t size, const char *path);
/* The same inside txn (a write transaction the caller commits). */
int fs_mark_staged_in(struct idx_txn *txn, uint64_t ino, uint64_t size, const char *path);
/* Cancel every job (at unmount). */
void fs_nodes_cancel_all(struct fs *fs);

/* ---- commit.c: the one durable replace step, and its recovery ----------- */

enum fs_replace_result {
	FS_REPLACED = 0,  /* done: Y is in place, indexed, X gone or aside */
	FS_REPLACE_MOVED, /* X changed, moved or went meanwhile: nothing done */
	FS_REPLACE_TAKEN, /* Y's name was taken by another file: nothing done */
	FS_REPLACE_OPEN,  /* X is open: nothing done (the archive waits for its
			     last close) */
	FS_REPLACE_ERROR, /* *err says why; nothing lost */
};

/* How fs_replace replaces X by Y. */
enum {
	FS_REPLACE_ATTRS = 1 << 0,	/* give Y X's owner, mode, times, xattrs */
	FS_REPLACE_JOURNAL = 1 << 1,	/* an intent first (recovery finishes it) */
	FS_REPLACE_SYNC = 1 << 2,	/* durable: directories and index synced
					   before X goes */
	FS_REPLACE_KEEP_X = 1 << 3,	/* X kept aside for Y (prev/), not removed */
	FS_REPLACE_HAVE_NS = 1 << 4,	/* the caller holds ns_lock */
	FS_REPLACE_IN_REQUEST = 1 << 5, /* called inside a request: the kernel
					   learns from its reply */
};

/*
 * Replace the file X (backing x_name, inode x_ino, in the directory dirfd of
 * logical path dir; x_name NULL when there is no X) by Y (y_name in the
 * directory y_dirfd: work/, prev/, or elsewhere in the tree), which becomes
 * target in dirfd. The steps, in this order, whatever the caller: Y gets X's
 * attributes and is synced (ATTRS); under ns_lock, X is checked to be still
 * itself (inode, queue generation x_gen when not 0, not open when node says
 * so: the archive then waits in the node for its last close), an intent is
 * recorded (JOURNAL), Y is renamed to target (never over another file but
 * X), the directory synced (SYNC), the index records Y (entry, when not
 * NULL: gen is set to Y's inode; its digests sums; X's entry dropped unless
 * KEEP_X) and is synced (SYNC), X is removed or kept aside (KEEP_X), the
 * directory synced and its times put back, the intent dropped. A crash at
 * any point leaves X, or Y in place with the index saying so.
 */
struct fs_replace {
	int dirfd;
	const char *dir;    /* logical path of that directory */
	const char *x_name; /* X's backing name, or NULL */
	uint64_t x_ino;
	uint64_t x_gen;
	int y_dirfd;
	const char *y_name;
	const char *target; /* Y's name in dirfd */
	struct idx_entry *entry;
	const struct sum_file *sums;
	const char *logical;  /* the origin path of an archive (entry) */
	struct fs_node *node; /* X's node: the archive waits in it while X is
				 open (ready), and it stands for Y after */
	const struct codec_result *ready;
	enum fs_kind kind; /* what Y is shown as */
	unsigned flags;
};
enum fs_replace_result fs_replace(struct fs *fs, const struct fs_replace *r, int *err);
/* Finish or roll back every journalled replace (at mount, in fsck). */
int fs_replace_recover(struct fs *fs);
/* fsync a directory given any fd of it (O_PATH too). */
int fs_fsync_dir(int dirfd);

/* ---- state.c: the mark of a mount under way ---------------------------- */

#define FS_LOCK_NAME "lock" /* flock()ed by the mount for its whole life */
/* Exists while mounted, naming the boot it was made in: at the next mount
 * it says the last one did not end cleanly, and whether the machine
 * stopped meanwhile (the index, committed without a sync between its sync
 * points, may then be torn) or only the daemon did (the page cache kept
 * every write). */
#define FS_DIRTY_NAME "dirty"
/* The meta key of the options saved by the first mount (tools/options.c). */
#define FS_OPTIONS_KEY "config"
enum { FS_DIRTY_NONE, FS_DIRTY_THIS_BOOT, FS_DIRTY_OTHER_BOOT, FS_DIRTY_UNREADABLE };
/* Make the mark, durable (file and directory synced) before anything the
 * mount changes. 0 or -errno. */
int fs_dirty_set(int state_fd);
/* Remove the mark, durably: the end of a clean unmount (the index synced). */
int fs_dirty_clear(int state_fd);
/* FS_DIRTY_*: no mark; one of this boot; one of another boot (or of none:
 * empty, as versions before the boot was named made it); one that cannot
 * be read. */
int fs_dirty_get(int state_fd);
/* The machine stopped while BACKING was mounted: set the index aside and
 * make a new one holding only the saved options (read from the old one in a
 * child process, which a torn index cannot take down); the mark is made
 * anew, so the next recovery walks the tree. The caller holds the lock. */
int fs_index_reset(const struct fs_paths *p, int state_fd, const char *why);
#define FS_WHY_STOPPED "was mounted when the machine stopped"
#define FS_WHY_MOVED "is not the tree its index was made on (copied or restored?)"
/* The meta key naming the tree an index was made on: the inode number of
 * BACKING/.hevcfs/id. The index is keyed by backing inode numbers, which a
 * copy of the tree (cp -a, rsync, a restore from a backup) does not keep. */
#define FS_TREE_KEY "tree"
/* 1 when idx was made on another tree than p's (its inode numbers name
 * nothing here); 0 otherwise, recording p's tree in an index that names
 * none yet. */
int fs_index_tree_moved(const struct fs_paths *p, struct idx *idx);
/* Give dst src's owner, mode, times and user.* xattrs, then fsync dst.
 * Failures to copy an xattr are logged, not fatal. */
int fs_copy_attrs(int src, int dst);
/* Debug hook for crash tests: when the environment variable
 * HEVCFS_CRASH_AT names this point, the process kills itself with SIGKILL. */
void fs_crash_point(const char *name);

/* ---- queue.c: jobs, workers ---------------------------------------------- */

/* Queue ino at gen, the file of node (held by the caller, which has
 * recorded gen as its job's under the nodes lock: settle, a deferred
 * commit's close, fs_node_claim). */
int fs_job_push(struct fs *fs, uint64_t ino, uint64_t gen, struct fs_node *node);
int fs_workers_start(struct fs *fs);
void fs_workers_stop(struct fs *fs);
/* Stop every thread of the mount (settle, notify, scrubber, workers; ops.c),
 * once the session's loop has ended and before its descriptor is closed. */
void fs_threads_stop(struct fs *fs);
/* Queue again every pending record of the index (at mount). */
int fs_queue_load(struct fs *fs);

/* ---- spawn.c: archive jobs in a child process ---------------------------- */

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

/* A view (codec_render_view) or a HEIF photo's JPEG sibling
 * (codec_render_heif_jpeg, sibling 1) of the stored photo on fd, rendered
 * to out_path in a child process: the render's contract, with a decoder
 * that crashes on the file giving -EIO. */
int fs_render_isolated(int fd, const char *out_path, int sibling, const struct codec_opts *opts,
		       uint64_t *size);

/* ---- scrub.c: the background scrubber (scrub_days) ---------------------- */
int fs_scrubber_start(struct fs *fs);
void fs_scrubber_stop(struct fs *fs);

/* ---- prev.c: archives a new file replaced, kept aside ------------------- */

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

/* ---- pool.c: workers for import and export ------------------------------ */

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

/* ---- tree.c: walking the backing tree ------------------------------------ */

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

/* ---- sums.c: checksums of stored files, checked on read ---------------- */

struct sum_file;

/* The check of the reads of n's file, open on fd with backing inode ino
 * and entry e, against its block digests: a reference for the handle (put
 * it at its close), or NULL when nothing is checked (verify_reads off, e
 * not at rest with digests for fd's whole size, a writer has it open).
 * Handles of one file share one check. */
struct fs_check *fs_check_attach(struct fs *fs, struct fs_node *n, int fd, uint64_t ino,
				 const struct idx_entry *e);
/* Check the blocks that bytes [off, off + size) of the file c checks touch,
 * reading whole blocks from fd (n: its node, to tell a change from damage).
 * 0 (also when c is NULL or stopped), -EIO when one does not match its
 * digest (the file is flagged damaged and named in the log by path), or
 * -errno of a failed read. */
int fs_check_range(struct fs *fs, struct fs_check *c, struct fs_node *n, int fd, uint64_t off,
		   size_t size, const char *path);
/* After a read of [off, off + size) of c's file: the block after it when
 * the reads are sequential and it is not checked yet, marked as being
 * checked (the caller must then fs_check_ahead it), or -1. NULL is fine. */
int64_t fs_check_ahead_claim(struct fs_check *c, uint64_t off, size_t size);
/* Check block b claimed above, reading it from fd (-1: a descriptor could
 * not be had); what does not match, or could not be read, is left for the
 * read that wants it to find and report. */
void fs_check_ahead(struct fs *fs, struct fs_check *c, int fd, uint64_t b);
/* A writer opened the file: nothing more of it is checked. NULL is fine. */
void fs_check_stop(struct fs_check *c);
struct fs_check *fs_check_ref(struct fs_check *c);
void fs_check_put(struct fs_check *c); /* NULL is fine */
/* Flag ino damaged in the index and name it in the log, with what failed. */
void fs_mark_damaged(struct fs *fs, uint64_t ino, const char *path, const char *what);
/* Record the digests f of ino's stored file in e (sum, checked now, no
 * longer damaged) and its block digests in txn. */
int fs_sums_record(struct idx_txn *txn, uint64_t ino, struct idx_entry *e,
		   const struct sum_file *f);
/* Digest dirfd/name whole and per block (sum_file). */
int fs_sum_path(int dirfd, const char *name, struct sum_file *f);

/* ---- cache.c: rendered views --------------------------------------------- */

/* Open (rendering if needed) the view of an archived photo whose stored
 * file is open on stored (borrowed), inode ino, entry e; path names it in
 * the log. Returns an fd open for reading or -errno. */
int fs_view_open(struct fs *fs, int stored, uint64_t ino, const struct idx_entry *e,
		 const char *path);
/* Is the view of inode ino in the cache, size bytes long (a read of it
 * renders nothing)? */
int fs_view_cached(struct fs *fs, uint64_t ino, uint64_t size);
/* The same for a HEIF photo's JPEG sibling. */
int fs_sibling_open(struct fs *fs, int stored, uint64_t ino, const struct idx_entry *e,
		    const char *path);
/* Render the JPEG sibling of the HEIF photo open on fd (inode ino) into
 * the cache now (a photo kept with heic_view=jpeg), its size and digest
 * into bytes and sum for the index. 0 or -errno. */
int fs_sibling_render(struct fs *fs, int fd, uint64_t ino, uint64_t *bytes, uint8_t sum[SUM_LEN]);
/* Forget the cached views of ino. */
void fs_view_drop(struct fs *fs, uint64_t ino);
/* Keep the cache under its bound (least recently used out first). */
void fs_cache_trim(struct fs *fs);

/* ---- ops.c ----------------------------------------------------------------- */
extern const struct fuse_lowlevel_ops fs_ops;

#endif
