/*
 * lib — helpers every layer may use: the one logging function and SHA-256
 * checksums (OpenSSL's libcrypto).
 *
 * Thread safety: log_msg may be called from any thread (one write(2) per
 * line); the log_* setters are meant for start-up. A struct sum is used by
 * one thread at a time; the sum_* functions that take none are reentrant.
 *
 * Errors: 0 or -errno; libcrypto failures are logged here and come back as
 * -EIO (-ENOMEM when it could not allocate).
 */
#ifndef HEVCFS_LIB_H
#define HEVCFS_LIB_H

#include <stddef.h>
#include <stdint.h>
#include <syslog.h>

/* ---- log.c ------------------------------------------------------------- */

/* Levels are syslog's (LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG). Lines go
 * to stderr and, once log_open() has named a file, to that file too; once
 * log_syslog() was called, to syslog (the journal) instead of stderr. */
void log_msg(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Also append lines to path (O_APPEND). Returns 0 or -errno. */
int log_open(const char *path);

/* Lines above this level are dropped (default LOG_INFO). */
void log_set_level(int level);

/* Stop writing to stderr (after the mount daemonizes). */
void log_quiet_stderr(void);

/* Send lines to syslog under ident (kept, not copied) instead of stderr:
 * a daemon's stderr goes nowhere. */
void log_syslog(const char *ident);

/* ---- sum.c: SHA-256 ---------------------------------------------------- */

#define SUM_LEN 32 /* bytes of a digest */
#define SUM_HEX (2 * SUM_LEN + 1)
/* Stored files are also summed per block of this many bytes, so a read
 * checks only the blocks it touches (as ZFS checks records). */
#define SUM_BLOCK (1u << 20)

/* The number of blocks of a file of size bytes (0 for an empty file). */
static inline uint64_t sum_blocks(uint64_t size)
{
	return (size + SUM_BLOCK - 1) / SUM_BLOCK;
}

/* A running digest. */
struct sum;

/* Start a digest. 0 or -ENOMEM; *s is freed with sum_free. */
int sum_new(struct sum **s);
/* Start over on s, as new. */
int sum_reset(struct sum *s);
/* Add len bytes. 0 or -EIO. */
int sum_update(struct sum *s, const void *data, size_t len);
/* The digest of everything added since the start; s may be reset and used
 * again. 0 or -EIO. */
int sum_final(struct sum *s, uint8_t out[SUM_LEN]);
/* Free s and NULL it (NULL is fine). */
void sum_free(struct sum **s);

/* The digest of one buffer. 0, -ENOMEM or -EIO. */
int sum_buf(const void *data, size_t len, uint8_t out[SUM_LEN]);

/* What sum_file found: the whole file's digest, and one per SUM_BLOCK
 * bytes (blocks: nblocks * SUM_LEN bytes, malloc'd, or NULL when not asked
 * for or the file is empty). */
struct sum_file {
	uint64_t size;
	uint8_t whole[SUM_LEN];
	uint8_t *blocks;
	uint64_t nblocks;
};

/* Called by sum_file after each block read (bytes so far, the file's size):
 * a nonzero return stops it with that value (-ECANCELED, say); also where a
 * caller throttles. */
typedef int (*sum_progress_fn)(void *arg, uint64_t done, uint64_t size);

/*
 * Read all of fd (borrowed, read with pread from offset 0) and digest it:
 * the whole file, and each block when want_blocks. Bytes [zero_off, zero_off
 * + zero_len) count as zeros in the whole-file digest (a digest stored
 * inside the file it covers; zero_len 0 for none). progress may be NULL.
 * 0, -errno of a failed read, -EIO, -ENOMEM or progress's value. Release
 * with sum_file_release.
 */
int sum_file(int fd, int want_blocks, uint64_t zero_off, uint64_t zero_len,
	     sum_progress_fn progress, void *arg, struct sum_file *out);
void sum_file_release(struct sum_file *f);

/* Lower-case hex of a digest, NUL-terminated, into out (SUM_HEX bytes). */
void sum_hex(const uint8_t sum[SUM_LEN], char out[SUM_HEX]);
/* Parse SUM_LEN * 2 hex digits. 0 or -EINVAL. */
int sum_parse_hex(const char *hex, uint8_t out[SUM_LEN]);
/* Is the digest all zeros (none recorded)? */
int sum_is_zero(const uint8_t sum[SUM_LEN]);

#endif
