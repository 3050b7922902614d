/*
 * fs — the hevcfs filesystem: FUSE operations over a backing directory, the
 * mapping of logical names to stored ones, staging of writes, the settle
 * timer, the job queue and its workers (verify -> commit), recovery after a
 * crash, and the cache of rendered views.
 *
 * The tools/ program parses the command line into struct fs_config and calls
 * fs_mount(); everything else in fs/ is private (fs/internal.h).
 *
 * Ownership: fs_mount borrows cfg for the life of the mount.
 */
#ifndef HEVCFS_FS_H
#define HEVCFS_FS_H

#include <stdatomic.h>
#include <stdint.h>

#include "../codec/codec.h"
#include "../index/index.h"

/* How archived files appear in the mount. */
enum fs_view {
	FS_VIEW_LEGACY = 0, /* photos read as JPEG under their original names */
	FS_VIEW_NATIVE,	    /* the stored files as they are (IMG.JPG.heic) */
};

/* Longest logical path, with its terminator (Linux's PATH_MAX). */
#define FS_PATH_MAX 4096

/*
 * Where a backing directory keeps what hevcfs knows of it (state.c).
 * BACKING/.hevcfs ("meta") always holds what must be on BACKING's own
 * filesystem: archive outputs before their rename into the tree, files
 * removed while open, and an id. The state directory holds the index, the
 * mount lock, the log and the view cache: meta itself, unless state=DIR put
 * it on a local directory (required when BACKING is on NFS, CIFS, FUSE or
 * a cluster filesystem: LMDB is not safe there). The two name each other.
 */
struct fs_paths {
	char *backing; /* absolute */
	char *meta;    /* BACKING/.hevcfs */
	char *state;   /* the state directory: meta, or state=DIR */
	int external;  /* state is not meta */
};

/* Resolve BACKING's paths with the state directory state (NULL: none
 * given). create: make the directories and ids (mount, fsck, import);
 * otherwise they must exist. 0, or -errno with err (errlen bytes) saying
 * what is wrong in a user's words: -EREMOTE (a network filesystem without
 * state=DIR), -EXDEV (a state directory that is not BACKING's), -ENOENT. */
int fs_paths_open(const char *backing, const char *state, int create, struct fs_paths *p, char *err,
		  size_t errlen);
void fs_paths_release(struct fs_paths *p);
/* The LMDB environment's directory in p's state (malloc'd). */
char *fs_index_dir(const struct fs_paths *p);
/* Open p's index (read_only for status, wait, verify's look). When BACKING
 * was mounted as the machine stopped (its mark names another boot), the
 * index is first set aside and made anew (fs_index_reset). */
int fs_index_open(const struct fs_paths *p, int read_only, struct idx **idx);
/* The name of the network filesystem path is on, or NULL when local. */
const char *fs_remote_type(const char *path);

struct fs_config {
	const char *backing; /* absolute path of the backing directory */
	const char *mountpoint;
	int workers;   /* transcoding threads; 0 = number of cores */
	int settle_ms; /* quiet time after the last close before queueing */
	enum fs_view view;
	uint64_t cache_bytes; /* bound of the rendered-view cache */
	int verify_reads;     /* check reads and renders against the stored
				 files' checksums (default 1) */
	int scrub_days;	      /* scrub in the background so that every stored
				 file is checked at least this often (0: off) */
	const char *state;    /* state=DIR, or NULL (fs_paths) */
	int heic_view;	      /* HEIF photos also show a read-only JPEG sibling
				 NAME.HEIC.jpg (heic_view=jpeg) */
	int max_nodes;	      /* inodes the kernel may keep looked up before it
				 is asked to forget the oldest (0: as many as
				 the descriptor limit allows, at most 65536) */
	int splice;	      /* move request and reply data through
				 /dev/fuse with splice (default 1); off,
				 the daemon's writes are plain write calls
				 that a trace of it shows whole */
	int readahead_kb;     /* the mount's readahead (its bdi's
				 read_ahead_kb), set where the daemon may;
				 0: the kernel's default (128 KiB) */
	int foreground;	      /* -f: log to stderr, else to syslog */
	struct codec_opts codec;
};

/* Defaults for a fresh config. */
void fs_config_init(struct fs_config *cfg);

/*
 * Prepare BACKING for use (state directory, index), finish or roll back
 * every half-done commit and re-queue pending work. Safe to run on every
 * mount; also run by `hevcfs fsck`. Returns 0 or -errno.
 */
int fs_recover(const struct fs_paths *p);

/*
 * Rebuild the index of an unmounted BACKING from the tree alone: archived
 * photos are recognised by their header item, archived videos by their
 * names and content, everything else is queued to be looked at again on the
 * next mount. Returns 0 or -errno (-EBUSY when mounted).
 */
int fs_rebuild(const struct fs_paths *p);

/*
 * Mount and serve until unmounted. argc/argv are the FUSE arguments left after
 * hevcfs's own (mountpoint, -f, -d, -o ...). Returns the exit status.
 */
int fs_mount(struct fs_config *cfg, const struct fs_paths *p, int argc, char *argv[]);

/* The archive-job child (the hidden command "__archive"): runs
 * codec_archive on fd 3 and reports on stdout. Returns the exit status. */
int fs_archive_child(int argc, char *argv[]);

/* Is a hevcfs mount serving this backing directory now? */
int fs_is_mounted(const struct fs_paths *p);

/* Walk every regular file of BACKING (not mounted or mounted), calling fn
 * with its logical path (relative), its stored path and its index entry
 * (NULL when the index has none). fn returning nonzero stops the walk.
 * Returns 0 or -errno. */
int fs_list(const struct fs_paths *p,
	    int (*fn)(void *arg, const char *logical, const char *stored,
		      const struct idx_entry *e),
	    void *arg);

/* ---- scrub.c: proving stored files whole (`hevcfs verify`) ------------- */

enum fs_scrub_outcome {
	FS_SCRUB_OK = 0,  /* whole: its checksum matches, it decodes */
	FS_SCRUB_LEARNT,  /* it had no checksum yet (archived before they were
			     recorded): recorded now, after it decoded */
	FS_SCRUB_DAMAGED, /* its bytes are not the ones stored, or it does not
			     decode: flagged in the index */
	FS_SCRUB_SKIPPED, /* not at rest (being written, archived meanwhile) */
	FS_SCRUB_ERROR,	  /* could not be checked (I/O, memory) */
};

/* One file checked. */
struct fs_scrub_file {
	const char *path; /* logical */
	int outcome;	  /* enum fs_scrub_outcome */
	char what[256];	  /* what was found, when not OK */
	uint64_t bytes;
};

/* A run's figures so far. */
struct fs_scrub_totals {
	uint64_t files, bytes; /* checked */
	uint64_t damaged, learnt, skipped, errors;
	uint64_t files_total, bytes_total;   /* stored (0: unknown) */
	uint64_t files_before, bytes_before; /* checked by the run gone on with */
	double seconds;
	int resumed; /* went on with an interrupted run */
};

/* A scrub: every stored file of paths->backing (or the logical paths in
 * only, and what is below them). */
struct fs_scrub {
	const struct fs_paths *paths;
	const char *const *only;
	int nonly;
	double rate_mb;		/* MB/s read at most (0: as fast as it goes) */
	const atomic_int *stop; /* set (by a signal handler) to stop it */
	const struct codec_opts *codec;
	/* after each file, and while one is read (path: the file being read) */
	void (*report)(void *arg, const struct fs_scrub_file *f, const struct fs_scrub_totals *t);
	void (*progress)(void *arg, const struct fs_scrub_totals *t, const char *path);
	void *arg;
};

/*
 * Re-read every stored file s names, check it against its checksums (learn
 * them where there are none yet) and decode what hevcfs made whole, in a
 * child process. Works mounted or not. A full run that is stopped is gone on
 * with by the next full run (files it checked are not read again). Returns 0
 * (damage is not an error: t and the reports say), -EINTR when stopped, or
 * -errno.
 */
int fs_scrub(const struct fs_scrub *s, struct fs_scrub_totals *t);

/* ---- import.c, export.c: the way in and out without a mount ------------ */

enum fs_xfer_outcome {
	FS_XFER_COPIED = 0, /* export: written out */
	FS_XFER_ARCHIVED,   /* import: archived as HEIC/MP4 */
	FS_XFER_KEPT,	    /* import: stored as it is (reason in what) */
	FS_XFER_SKIPPED,    /* already there (an earlier run did it) */
	FS_XFER_DAMAGED,    /* export: the stored file failed its checksum or render */
	FS_XFER_ERROR,	    /* could not be done (what says why) */
};

/* One file done. */
struct fs_xfer_file {
	const char *path; /* logical */
	int outcome;	  /* enum fs_xfer_outcome */
	int kind;	  /* enum idx_kind (import) */
	char what[256];
	uint64_t bytes_in, bytes_out;
};

/* A run's figures so far. */
struct fs_xfer_totals {
	uint64_t files, bytes_in, bytes_out;
	uint64_t copied, archived, kept, skipped, damaged, errors;
	uint64_t photos;		   /* photos archived or kept */
	uint64_t files_total, bytes_total; /* to do (0: not known) */
	double seconds;
};

typedef void (*fs_xfer_report)(void *arg, const struct fs_xfer_file *f,
			       const struct fs_xfer_totals *t);

/* Write BACKING's tree out to dest, as the mount shows it (photos as JPEG
 * views under their names) or, native, as stored; names, modes, owners
 * (as root), times and user.* xattrs kept; every stored byte checked
 * against its checksum on the way. A file dest already has with the size
 * and mtime it would get is skipped (a run goes on where one stopped). */
struct fs_export {
	const struct fs_paths *paths;
	const char *dest;
	int native;
	const char *const *only; /* logical paths (and what is below them) */
	int nonly;
	int jobs; /* workers (0: the cores) */
	const atomic_int *stop;
	const struct codec_opts *codec;
	fs_xfer_report report;
	void *arg;
};
/* 0 (what failed is in the reports and t), -EINTR when stopped, -errno. */
int fs_export(const struct fs_export *x, struct fs_xfer_totals *t);

/* Archive source files into BACKING without a mount: the same sniffing,
 * encoders, verification and durable commit as the mount, each file under
 * into/NAME (a folder's files under into/FOLDER/...). A file whose stored
 * copy is already there is skipped, so a run goes on where one stopped. */
struct fs_import {
	const char *backing;	      /* BACKING (absolute) */
	const struct fs_paths *paths; /* its state; NULL with a shard */
	const char *const *srcs;
	int nsrcs;
	const char *into;     /* logical folder under BACKING ("" or NULL: top) */
	int jobs;	      /* workers (0: the cores) */
	int shard_k, shard_n; /* the k-th (1..n) of n shares, by path; n = 0: all */
	const atomic_int *stop;
	const struct codec_opts *codec;
	fs_xfer_report report;
	void *arg;
};
/* 0, -EBUSY when BACKING is mounted, -EINTR when stopped, -errno. With a
 * shard the index is not touched (`hevcfs fsck --rebuild` builds it). */
int fs_import(const struct fs_import *im, struct fs_xfer_totals *t);

/* What a dry run estimates from a sample. */
struct fs_import_estimate {
	uint64_t files[IDX_NKINDS], bytes[IDX_NKINDS]; /* by kind */
	uint64_t sampled, sampled_in, sampled_out;     /* files archived as a sample */
	double ratio_photo, ratio_video;	       /* stored / original in the sample */
	double seconds_photo, seconds_video;	       /* per byte, as the sample took */
	uint64_t estimate_out;			       /* bytes the import would store */
};
/* Look at the sources and archive a sample of them (into a temporary
 * directory) to estimate the saving. Writes nothing to BACKING. */
int fs_import_estimate(const struct fs_import *im, struct fs_import_estimate *est);

/* The decode child (the hidden command "__check"): codec_check_stored on
 * fd 3. Returns the exit status. */
int fs_check_child(int argc, char *argv[]);
/* The render child (the hidden command "__render"): a view or sibling of
 * the stored photo on fd 3. Returns the exit status. */
int fs_render_child(int argc, char *argv[]);

/* Name of the state directory inside BACKING, hidden from the mount. */
#define FS_STATE_DIR ".hevcfs"

#endif
