/* sum — SHA-256 digests through OpenSSL's libcrypto (hardware-accelerated
 * where the CPU has SHA extensions): buffers, streams and whole files with
 * per-block digests. */
#include "lib.h"

#include <errno.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct sum {
	EVP_MD_CTX *ctx;
};

/* Log what libcrypto said about a failed call and give -EIO. */
static int crypto_err(const char *what)
{
	char buf[256];
	unsigned long e = ERR_get_error();

	ERR_error_string_n(e, buf, sizeof(buf));
	log_msg(LOG_ERR, "sha256: %s: %s", what, e ? buf : "failed");
	ERR_clear_error();
	return -EIO;
}

int sum_new(struct sum **out)
{
	struct sum *s = calloc(1, sizeof(*s));

	if (!s)
		return -ENOMEM;
	s->ctx = EVP_MD_CTX_new();
	if (!s->ctx) {
		free(s);
		return -ENOMEM;
	}
	if (sum_reset(s)) {
		sum_free(&s);
		return -EIO;
	}
	*out = s;
	return 0;
}

int sum_reset(struct sum *s)
{
	return EVP_DigestInit_ex(s->ctx, EVP_sha256(), NULL) == 1 ? 0 : crypto_err("init");
}

int sum_update(struct sum *s, const void *data, size_t len)
{
	return EVP_DigestUpdate(s->ctx, data, len) == 1 ? 0 : crypto_err("update");
}

int sum_final(struct sum *s, uint8_t out[SUM_LEN])
{
	unsigned int n = 0;

	if (EVP_DigestFinal_ex(s->ctx, out, &n) != 1 || n != SUM_LEN)
		return crypto_err("final");
	return sum_reset(s);
}

void sum_free(struct sum **s)
{
	if (!s || !*s)
		return;
	EVP_MD_CTX_free((*s)->ctx);
	free(*s);
	*s = NULL;
}

int sum_buf(const void *data, size_t len, uint8_t out[SUM_LEN])
{
	unsigned int n = 0;

	if (EVP_Digest(data, len, out, &n, EVP_sha256(), NULL) != 1 || n != SUM_LEN)
		return crypto_err("digest");
	return 0;
}

void sum_file_release(struct sum_file *f)
{
	if (!f)
		return;
	free(f->blocks);
	f->blocks = NULL;
	f->nblocks = 0;
}

/* Zero the part of buf (holding file bytes [off, off + n)) that falls in
 * [zoff, zoff + zlen). */
static void zero_range(uint8_t *buf, uint64_t off, size_t n, uint64_t zoff, uint64_t zlen)
{
	uint64_t a = off > zoff ? off : zoff;
	uint64_t b = off + n < zoff + zlen ? off + n : zoff + zlen;

	if (zlen && a < b)
		memset(buf + (a - off), 0, (size_t)(b - a));
}

int sum_file(int fd, int want_blocks, uint64_t zero_off, uint64_t zero_len,
	     sum_progress_fn progress, void *arg, struct sum_file *out)
{
	struct sum *whole = NULL;
	uint8_t *buf = NULL;
	uint64_t off = 0, size;
	off_t end;
	int rc;

	memset(out, 0, sizeof(*out));
	end = lseek(fd, 0, SEEK_END);
	if (end < 0)
		return -errno;
	size = (uint64_t)end;
	buf = malloc(SUM_BLOCK);
	if (!buf)
		return -ENOMEM;
	if ((rc = sum_new(&whole)))
		goto out_free;
	if (want_blocks && sum_blocks(size)) {
		out->blocks = malloc(sum_blocks(size) * SUM_LEN);
		if (!out->blocks) {
			rc = -ENOMEM;
			goto out_free;
		}
	}
	for (;;) {
		size_t got = 0;
		/* a whole block (or the file's last bytes) per round */
		while (got < SUM_BLOCK) {
			ssize_t n = pread(fd, buf + got, SUM_BLOCK - got, (off_t)(off + got));
			if (n == -1 && errno == EINTR)
				continue;
			if (n == -1) {
				rc = -errno;
				goto out_free;
			}
			if (n == 0)
				break;
			got += (size_t)n;
		}
		if (!got)
			break;
		if (out->blocks) {
			if (out->nblocks >= sum_blocks(size)) {
				rc = -EAGAIN; /* grew while read */
				goto out_free;
			}
			if ((rc = sum_buf(buf, got, out->blocks + out->nblocks * SUM_LEN)))
				goto out_free;
			out->nblocks++;
		}
		zero_range(buf, off, got, zero_off, zero_len);
		if ((rc = sum_update(whole, buf, got)))
			goto out_free;
		off += got;
		if (progress && (rc = progress(arg, off, size)))
			goto out_free;
		if (got < SUM_BLOCK)
			break;
	}
	if (off != size || (out->blocks && out->nblocks != sum_blocks(size))) {
		rc = -EAGAIN; /* changed size while read */
		goto out_free;
	}
	out->size = size;
	rc = sum_final(whole, out->whole);
out_free:
	if (rc)
		sum_file_release(out);
	sum_free(&whole);
	free(buf);
	return rc;
}

void sum_hex(const uint8_t sum[SUM_LEN], char out[SUM_HEX])
{
	static const char digits[] = "0123456789abcdef";

	for (int i = 0; i < SUM_LEN; i++) {
		out[2 * i] = digits[sum[i] >> 4];
		out[2 * i + 1] = digits[sum[i] & 15];
	}
	out[2 * SUM_LEN] = '\0';
}

/* Value of one hex digit, or -1. */
static int hex_digit(char c)
{
	return c >= '0' && c <= '9'   ? c - '0'
	       : c >= 'a' && c <= 'f' ? c - 'a' + 10
	       : c >= 'A' && c <= 'F' ? c - 'A' + 10
				      : -1;
}

int sum_parse_hex(const char *hex, uint8_t out[SUM_LEN])
{
	for (int i = 0; i < SUM_LEN; i++) {
		int hi = hex_digit(hex[2 * i]), lo = hi < 0 ? -1 : hex_digit(hex[2 * i + 1]);
		if (hi < 0 || lo < 0)
			return -EINVAL;
		out[i] = (uint8_t)(hi << 4 | lo);
	}
	return 0;
}

int sum_is_zero(const uint8_t sum[SUM_LEN])
{
	for (int i = 0; i < SUM_LEN; i++)
		if (sum[i])
			return 0;
	return 1;
}
