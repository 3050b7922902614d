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

#include <stdint.h>

#include "../codec/codec.h"

/* How archived files appear in the mount. */
enum fs_view {
	FS_VIEW_LEGACY = 0, /* photos read as JPEG under their original names */
	FS_VIEW_NATIVE,     /* the stored files as they are (IMG.JPG.heic) */
};

struct fs_config {
	const char *backing;  /* absolute path of the backing directory */
	const char *mountpoint;
	int workers;          /* transcoding threads; 0 = number of cores */
	int settle_ms;        /* quiet time after the last close before queueing */
	enum fs_view view;
	uint64_t cache_bytes; /* bound of the rendered-view cache */
	struct codec_opts codec;
};

/* Defaults for a fresh config. */
void fs_config_init(struct fs_config *cfg);

/*
 * Prepare BACKING for use (state directory, index), finish or roll back
 * every half-done commit and re-queue pending work. Safe to run on every
 * mount; also run by `hevcfs fsck`. Returns 0 or -errno.
 */
int fs_recover(const char *backing);

/*
 * Rebuild the index of an unmounted BACKING from the tree alone: archived
 * photos are recognised by their header item, archived videos by their
 * names and content, everything else is queued to be looked at again on the
 * next mount. Returns 0 or -errno (-EBUSY when mounted).
 */
int fs_rebuild(const char *backing);

/*
 * Mount and serve until unmounted. argc/argv are the FUSE arguments left after
 * hevcfs's own (mountpoint, -f, -d, -o ...). Returns the exit status.
 */
int fs_mount(struct fs_config *cfg, int argc, char *argv[]);

/* The archive-job child (the hidden command "__archive"): runs
 * codec_archive on fd 3 and reports on stdout. Returns the exit status. */
int fs_archive_child(int argc, char *argv[]);

/* Is a hevcfs mount serving this backing directory now? */
int fs_is_mounted(const char *backing);

/* Walk every regular file of BACKING (not mounted or mounted), calling fn
 * with its logical path (relative), its stored path and its index entry
 * (NULL when the index has none). fn returning nonzero stops the walk.
 * Returns 0 or -errno. */
struct idx_entry;
int fs_list(const char *backing,
	    int (*fn)(void *arg, const char *logical, const char *stored,
		      const struct idx_entry *e),
	    void *arg);

/* Name of the state directory inside BACKING, hidden from the mount. */
#define FS_STATE_DIR ".hevcfs"

#endif
