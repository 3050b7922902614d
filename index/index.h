/*
 * index — the LMDB environment that records every file hevcfs stores.
 *
 * The backing tree is the truth; the index is what hevcfs knows about it:
 * each stored file's state (staged, pending, archived, kept, failed), kind,
 * figures and checksums, the job queue, the commit journal that lets
 * recovery finish or roll back a half-done archive step, running totals for
 * `hevcfs status`, and a few named values (schema version, saved options).
 *
 * Keys. Entries are keyed by the backing file's inode number, not its path:
 * paths can be 4095 bytes and LMDB keys at most 511, and a rename (of the file
 * or of any directory above it) must not rewrite the index. The queue also
 * keeps the path of each pending file, rewritten on rename.
 *
 * Databases: "entries" (ino -> encoded struct idx_entry), "blocks" (ino ->
 * SHA-256 of each SUM_BLOCK of the stored file), "origins" (SHA-256 of an
 * original -> ino of an archived file made from it), "totals" (running
 * counts and bytes by state and kind, and of kept files by reason), "queue"
 * (ino -> gen, path), "journal" (ino -> struct idx_intent), "meta" (schema
 * version and named values). Records are encoded with explicit field order
 * and byte order (idx_entry_encode), not stored as C structs. blocks, origins
 * and totals are kept by idx_put and idx_del themselves, in the caller's
 * transaction: they can never disagree with the entries.
 *
 * Durability: the environment is opened MDB_NOSYNC so a metadata-heavy
 * workload pays no fsync per operation; commits still reach the page cache at
 * once, so a killed process loses nothing. idx_sync() is called before any
 * step that destroys data (removing an original).
 *
 * Thread safety: one struct idx is shared by every thread. Read transactions
 * may run in any thread at any time (MDB_NOTLS); LMDB serialises writers,
 * also across processes (`hevcfs verify` writes while a mount runs). Never
 * hold a write transaction across slow work.
 *
 * Ownership: values read into caller structs are copies; nothing borrowed
 * from LMDB escapes a function.
 */
#ifndef HEVCFS_INDEX_H
#define HEVCFS_INDEX_H

#include <stddef.h>
#include <stdint.h>

#include "../lib/lib.h"

/* 2: encoded records with kinds, checksums and running totals. An index of
 * version 1 is upgraded in place when opened for writing. */
#define IDX_SCHEMA_VERSION 2

enum idx_state {
	IDX_STAGED = 1, /* written, still open or settling */
	IDX_PENDING,	/* settled, queued for a worker */
	IDX_ARCHIVED,	/* transcoded; the backing file is the archived copy */
	IDX_KEPT,	/* stored byte for byte, with the reason */
	IDX_FAILED,	/* a job failed operationally (I/O); the original is kept */
	IDX_NSTATES
};

/* What a file is, by content (never by name). */
enum idx_kind {
	IDX_KIND_UNKNOWN = 0, /* not looked at yet */
	IDX_KIND_PHOTO,	      /* JPEG, HEIC/HEIF/AVIF */
	IDX_KIND_VIDEO,
	IDX_KIND_OTHER, /* anything else (camera raw too) */
	IDX_NKINDS
};

/* idx_entry.flags */
#define IDX_F_DAMAGED 0x1u /* the last check of the stored bytes failed */
#define IDX_F_VIEW_OWN_SIZE                                                                        \
	0x2u /* a photo's view is not its original's size                                          \
		(the reason says why) */
#define IDX_F_SIBLING                                                                              \
	0x8u /* a kept HEIF photo with a JPEG sibling view                                         \
		(heic_view=jpeg): view_bytes, view_sum are                                         \
		the sibling's */
#define IDX_F_PREV                                                                                 \
	0x4u /* an archive a new file replaced, kept aside                                         \
		until that file settles (entry.prev): no                                           \
		file of the tree, left out of the totals */

/* One stored file. */
struct idx_entry {
	uint32_t state;		   /* enum idx_state */
	uint32_t kind;		   /* enum idx_kind */
	uint32_t flags;		   /* IDX_F_* */
	uint32_t carries;	   /* what an archived photo carried besides its
				      picture (codec's CODEC_CARRIES_* bits) */
	uint32_t quality;	   /* photo quality or video CRF used */
	uint64_t gen;		   /* write generation the figures belong to */
	uint64_t orig_bytes;	   /* size as written */
	uint64_t stored_bytes;	   /* size of the backing file */
	uint64_t view_bytes;	   /* size the mount reports (the view's) */
	uint64_t done, total;	   /* progress of a running job (frames) */
	uint64_t prev;		   /* a staged file that replaced an archived one:
				      that archive's inode, kept aside until this
				      file settles (its bytes may be the
				      archive's original again, or its view
				      retagged) */
	int64_t updated;	   /* unix time of the last change (set by idx_put) */
	int64_t started;	   /* unix time the running job started, 0: none */
	int64_t checked;	   /* unix time the stored bytes were last found
				      whole against sum, 0: never */
	double elapsed;		   /* seconds the archive job took */
	double ssim;		   /* luma SSIM archived vs original */
	double view_ssim;	   /* luma SSIM of the view vs original */
	double fps;		   /* speed of a running job */
	uint8_t sum[SUM_LEN];	   /* SHA-256 of the stored file; zeros: not known
				      (archived before checksums, or not at rest) */
	uint8_t orig_sum[SUM_LEN]; /* SHA-256 of the original bytes */
	uint8_t view_sum[SUM_LEN]; /* SHA-256 of a photo's view */
	uint8_t scan_sum[SUM_LEN]; /* SHA-256 of the view's image data */
	uint8_t head_sum[SUM_LEN]; /* SHA-256 of what a view's map serves
				      without a render (codec_view_map_sum:
				      its header, then its fill and EOI),
				      checked against this */
	char suffix[8];		   /* appended to the logical name on the backing tree */
	char reason[160];	   /* why kept or failed, or what was found damaged */
};

/* Largest encoded entry (idx_entry_encode). */
#define IDX_ENTRY_MAX 512

/* Encode e into buf (IDX_ENTRY_MAX bytes); returns the length. */
size_t idx_entry_encode(const struct idx_entry *e, uint8_t *buf);
/* Decode len bytes of buf into e. 0, or -EPROTO when they are not an entry
 * this version wrote (never reads out of bounds: fuzzed). */
int idx_entry_decode(const uint8_t *buf, size_t len, struct idx_entry *e);

/* A commit in progress (see fs/queue.c for the protocol): enough to roll it
 * forward once the archived copy is in place, or back before. */
struct idx_intent {
	uint64_t staged_ino;	/* the original */
	uint64_t archive_ino;	/* the archived copy, before and after its rename */
	struct idx_entry entry; /* the record the archived copy gets */
	char path[4096];	/* logical path of the original (relative) */
};

struct idx;
struct idx_txn;

/* Open (creating if needed) the environment in dir. read_only for status
 * tools. Returns 0 or -errno; *out is set on success. */
int idx_open(const char *dir, int read_only, struct idx **out);
/* Move the environment in dir aside (to dir.old), for a new one to be
 * built in its place; nothing there is fine. 0 or -errno. */
int idx_set_aside(const char *dir);
/* Remove what idx_set_aside moved aside (the new one is complete). */
void idx_remove_aside(const char *dir);
/* Close the environment; accepts NULL. */
void idx_close(struct idx *idx);
/* Flush everything committed so far to disk. */
int idx_sync(struct idx *idx);

/* Transactions: write or read. Every idx_* accessor below takes one. */
int idx_begin(struct idx *idx, int write, struct idx_txn **out);
int idx_commit(struct idx_txn *txn); /* frees txn, even on error */
void idx_abort(struct idx_txn *txn); /* frees txn; accepts NULL */

int idx_get(struct idx_txn *txn, uint64_t ino, struct idx_entry *e); /* -ENOENT */
/* Write ino's entry (updated is set to now). The totals follow; an archived
 * entry with an orig_sum becomes the origin of that sum. */
int idx_put(struct idx_txn *txn, uint64_t ino, const struct idx_entry *e);
/* Forget ino: its entry, block digests, origin and totals. Absent is not an
 * error. */
int idx_del(struct idx_txn *txn, uint64_t ino);

/* Block digests of ino's stored file: n * SUM_LEN bytes, block i the
 * SHA-256 of bytes [i * SUM_BLOCK, (i + 1) * SUM_BLOCK). Replaced whole. */
int idx_blocks_put(struct idx_txn *txn, uint64_t ino, const uint8_t *sums, uint64_t n);
/* Copy block i's digest to out. -ENOENT when none is recorded. */
int idx_blocks_get(struct idx_txn *txn, uint64_t ino, uint64_t i, uint8_t out[SUM_LEN]);
/* How many block digests ino has (0 when none). */
uint64_t idx_blocks_count(struct idx_txn *txn, uint64_t ino);
int idx_blocks_del(struct idx_txn *txn, uint64_t ino);

/* An archived file made from an original with digest sum: its inode and
 * logical path (kept current by idx_origins_rename), so a second copy of the
 * same original reuses its encode. idx_put and idx_del drop the record of
 * an entry that is no longer that archive. */
int idx_origin_put(struct idx_txn *txn, const uint8_t sum[SUM_LEN], uint64_t ino, const char *path);
/* -ENOENT, -ENAMETOOLONG when path (size bytes) is too small. */
int idx_origin_get(struct idx_txn *txn, const uint8_t sum[SUM_LEN], uint64_t *ino, char *path,
		   size_t size);
/* A rename of from -> to: rewrite the origins' paths at or below it. */
int idx_origins_rename(struct idx_txn *txn, const char *from, const char *to);

/* Named values (saved options, ids): at most IDX_META_MAX bytes each. */
#define IDX_META_MAX 4096
/* Copy key's value to buf (size bytes) and set *len. -ENOENT, -ENOSPC when
 * it does not fit. */
int idx_meta_get(struct idx_txn *txn, const char *key, void *buf, size_t size, size_t *len);
int idx_meta_put(struct idx_txn *txn, const char *key, const void *val, size_t len);
int idx_meta_del(struct idx_txn *txn, const char *key);

/* Queue records. path is the logical (= backing, for pending files) path
 * relative to the root, without a leading slash. */
int idx_queue_put(struct idx_txn *txn, uint64_t ino, uint64_t gen, const char *path);
int idx_queue_get(struct idx_txn *txn, uint64_t ino, uint64_t *gen, char *path, size_t size);
int idx_queue_del(struct idx_txn *txn, uint64_t ino);
/* Call fn for each queued file, in inode order; fn returning nonzero stops. */
int idx_queue_each(struct idx_txn *txn,
		   int (*fn)(void *arg, uint64_t ino, uint64_t gen, const char *path), void *arg);
/* The same from the first queued inode >= from. */
int idx_queue_each_from(struct idx_txn *txn, uint64_t from,
			int (*fn)(void *arg, uint64_t ino, uint64_t gen, const char *path),
			void *arg);
/* A rename of from -> to: rewrite the paths of queued files at or below it. */
int idx_queue_rename(struct idx_txn *txn, const char *from, const char *to);

/* Commit journal. */
int idx_intent_put(struct idx_txn *txn, const struct idx_intent *in);
int idx_intent_del(struct idx_txn *txn, uint64_t staged_ino);
int idx_intent_each(struct idx_txn *txn, int (*fn)(void *arg, const struct idx_intent *in),
		    void *arg);

/* Totals over every entry, for `hevcfs status`: read from the running
 * totals, so their cost does not grow with the number of files. */
struct idx_count {
	uint64_t files, bytes_original, bytes_stored;
};
struct idx_stats {
	uint64_t files;
	uint64_t by_state[IDX_NSTATES];
	uint64_t bytes_original, bytes_stored;
	uint64_t queued;			      /* records in the queue */
	struct idx_count by[IDX_NSTATES][IDX_NKINDS]; /* by state and kind */
	uint64_t damaged;			      /* entries flagged damaged */
	uint64_t unsummed;			      /* at rest without a checksum */
};
int idx_stats(struct idx_txn *txn, struct idx_stats *st);

/* The group a kept or failed file's reason falls in: its words before the
 * first '(' or ':' ("not smaller (93% of the JPEG at q60)" -> "not
 * smaller"), at most size - 1 bytes. */
void idx_reason_group(const char *reason, char *buf, size_t size);
/* Call fn for each reason group of kept files with their count and bytes. */
int idx_reasons_each(struct idx_txn *txn,
		     int (*fn)(void *arg, const char *group, const struct idx_count *c), void *arg);

/* Call fn for every entry; fn returning nonzero stops. */
int idx_each(struct idx_txn *txn, int (*fn)(void *arg, uint64_t ino, const struct idx_entry *e),
	     void *arg);

const char *idx_state_name(enum idx_state s);
const char *idx_kind_name(enum idx_kind k);

#endif
