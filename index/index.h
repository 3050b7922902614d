/*
 * index — the LMDB environment that records every file hevcfs stores.
 *
 * The backing tree is the truth; the index is what hevcfs knows about it:
 * each stored file's state (staged, pending, archived, kept, failed) and
 * figures, the job queue, and the commit journal that lets recovery finish or
 * roll back a half-done archive step.
 *
 * Keys. Entries are keyed by the backing file's inode number, not its path:
 * paths can be 4095 bytes and LMDB keys at most 511, and a rename (of the file
 * or of any directory above it) must not rewrite the index. The queue also
 * keeps the path of each pending file, rewritten on rename.
 *
 * Databases: "entries" (ino -> struct idx_entry), "queue" (ino -> gen, path),
 * "journal" (ino -> struct idx_intent), "meta" (schema version).
 *
 * Durability: the environment is opened MDB_NOSYNC so a metadata-heavy
 * workload pays no fsync per operation; commits still reach the page cache at
 * once, so a killed process loses nothing. idx_sync() is called before any
 * step that destroys data (removing an original) and once a second.
 *
 * Thread safety: one struct idx is shared by every thread. Read transactions
 * may run in any thread at any time (MDB_NOTLS); LMDB serialises writers.
 * Never hold a write transaction across slow work.
 *
 * Ownership: values read into caller structs are copies; nothing borrowed
 * from LMDB escapes a function.
 */
#ifndef HEVCFS_INDEX_H
#define HEVCFS_INDEX_H

#include <stddef.h>
#include <stdint.h>

#include "../lib/lib.h"

#define IDX_SCHEMA_VERSION 1

enum idx_state {
	IDX_STAGED = 1, /* written, still open or settling */
	IDX_PENDING,    /* settled, queued for a worker */
	IDX_ARCHIVED,   /* transcoded; the backing file is the archived copy */
	IDX_KEPT,       /* stored byte for byte, with the reason */
	IDX_FAILED,     /* a job failed operationally (I/O); the original is kept */
	IDX_NSTATES
};

/* One stored file. Fixed layout, stored as is (versioned by the meta db). */
struct idx_entry {
	uint32_t state;       /* enum idx_state */
	uint32_t quality;     /* photo quality or video CRF used */
	uint64_t gen;         /* write generation the figures belong to */
	uint64_t orig_bytes;  /* size as written */
	uint64_t stored_bytes;/* size of the backing file */
	uint64_t view_bytes;  /* size the mount reports (the view's) */
	uint64_t done, total; /* progress of a running job (frames) */
	int64_t updated;      /* unix time of the last change */
	double ssim;          /* luma SSIM archived vs original */
	double view_ssim;     /* luma SSIM of the view vs original */
	double fps;           /* speed of a running job */
	char suffix[8];       /* appended to the logical name on the backing tree */
	char reason[160];     /* why kept or failed */
};

/* A commit in progress (see fs/queue.c for the protocol): enough to roll it
 * forward once the archived copy is in place, or back before. */
struct idx_intent {
	uint64_t staged_ino;   /* the original */
	uint64_t archive_ino;  /* the archived copy, before and after its rename */
	struct idx_entry entry;/* the record the archived copy gets */
	char path[4096];       /* logical path of the original (relative) */
};

struct idx;
struct idx_txn;

/* Open (creating if needed) the environment in dir. read_only for status
 * tools. Returns 0 or -errno; *out is set on success. */
int idx_open(const char *dir, int read_only, struct idx **out);
/* Close the environment; accepts NULL. */
void idx_close(struct idx *idx);
/* Flush everything committed so far to disk. */
int idx_sync(struct idx *idx);

/* Transactions: write or read. Every idx_* accessor below takes one. */
int idx_begin(struct idx *idx, int write, struct idx_txn **out);
int idx_commit(struct idx_txn *txn); /* frees txn, even on error */
void idx_abort(struct idx_txn *txn); /* frees txn; accepts NULL */

int idx_get(struct idx_txn *txn, uint64_t ino, struct idx_entry *e); /* -ENOENT */
int idx_put(struct idx_txn *txn, uint64_t ino, const struct idx_entry *e);
int idx_del(struct idx_txn *txn, uint64_t ino); /* absent is not an error */

/* Queue records. path is the logical (= backing, for pending files) path
 * relative to the root, without a leading slash. */
int idx_queue_put(struct idx_txn *txn, uint64_t ino, uint64_t gen, const char *path);
int idx_queue_get(struct idx_txn *txn, uint64_t ino, uint64_t *gen, char *path, size_t size);
int idx_queue_del(struct idx_txn *txn, uint64_t ino);
/* Call fn for each queued file, in inode order; fn returning nonzero stops. */
int idx_queue_each(struct idx_txn *txn,
		   int (*fn)(void *arg, uint64_t ino, uint64_t gen, const char *path), void *arg);
/* A rename of from -> to: rewrite the paths of queued files at or below it. */
int idx_queue_rename(struct idx_txn *txn, const char *from, const char *to);

/* Commit journal. */
int idx_intent_put(struct idx_txn *txn, const struct idx_intent *in);
int idx_intent_del(struct idx_txn *txn, uint64_t staged_ino);
int idx_intent_each(struct idx_txn *txn, int (*fn)(void *arg, const struct idx_intent *in),
		    void *arg);

/* Totals over every entry, for `hevcfs status`. */
struct idx_stats {
	uint64_t files;
	uint64_t by_state[IDX_NSTATES];
	uint64_t bytes_original, bytes_stored;
	uint64_t queued; /* records in the queue */
};
int idx_stats(struct idx_txn *txn, struct idx_stats *st);

/* Call fn for every entry; fn returning nonzero stops. */
int idx_each(struct idx_txn *txn, int (*fn)(void *arg, uint64_t ino, const struct idx_entry *e),
	     void *arg);

const char *idx_state_name(enum idx_state s);

#endif
