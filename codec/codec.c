/* codec — sniffing by content and dispatch to the photo and video halves. */
#include "internal.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Enough bytes for every container signature we look at. */
#define SNIFF_BYTES 4096

enum codec_kind codec_sniff(int fd)
{
	uint8_t head[SNIFF_BYTES];
	ssize_t n = pread(fd, head, sizeof(head), 0);

	if (n < 4)
		return CODEC_KIND_OTHER;
	if (head[0] == 0xFF && head[1] == 0xD8 && head[2] == 0xFF)
		return CODEC_KIND_JPEG;
	if (video_sniff(head, (size_t)n))
		return CODEC_KIND_VIDEO;
	return CODEC_KIND_OTHER;
}

void codec_keep(struct codec_result *result, const char *fmt, ...)
{
	va_list ap;

	result->archived = 0;
	result->suffix[0] = '\0';
	va_start(ap, fmt);
	vsnprintf(result->reason, sizeof(result->reason), fmt, ap);
	va_end(ap);
}

int codec_read_all(int fd, size_t max, uint8_t **buf, size_t *len)
{
	struct stat st;
	uint8_t *p;
	size_t off = 0;

	if (fstat(fd, &st) == -1)
		return -errno;
	if ((uint64_t)st.st_size > max)
		return -EFBIG;
	p = malloc(st.st_size ? (size_t)st.st_size : 1);
	if (!p)
		return -ENOMEM;
	while (off < (size_t)st.st_size) {
		ssize_t n = pread(fd, p + off, (size_t)st.st_size - off, (off_t)off);
		if (n == -1 && errno == EINTR)
			continue;
		if (n <= 0) {
			int err = n == 0 ? -EIO : -errno;
			free(p);
			return err;
		}
		off += (size_t)n;
	}
	*buf = p;
	*len = off;
	return 0;
}

int codec_archive(int src_fd, const char *out_path, const char *view_path,
		  const struct codec_opts *opts, struct codec_result *result)
{
	struct stat st;

	memset(result, 0, sizeof(*result));
	if (fstat(src_fd, &st) == -1)
		return -errno;
	result->orig_bytes = (uint64_t)st.st_size;
	switch (codec_sniff(src_fd)) {
	case CODEC_KIND_JPEG:
		return photo_archive(src_fd, out_path, view_path, opts, result);
	case CODEC_KIND_VIDEO:
		return video_archive(src_fd, out_path, opts, result);
	default:
		codec_keep(result, "not a photo or video");
		return 0;
	}
}

int codec_render_view(int stored_fd, const char *out_path, const struct codec_opts *opts,
		      uint64_t *size)
{
	return photo_render_view(stored_fd, out_path, opts, size);
}

int codec_probe_archived(int fd, struct codec_result *result)
{
	memset(result, 0, sizeof(*result));
	return photo_probe_archived(fd, result);
}

/* Does the head of a file start with an ftyp box (ISO BMFF)? */
static int is_bmff(const uint8_t *head, size_t n)
{
	return n >= 12 && memcmp(head + 4, "ftyp", 4) == 0;
}

int codec_embedded_sums(int fd, struct codec_embedded *e)
{
	uint8_t head[16];
	ssize_t n = pread(fd, head, sizeof(head), 0);
	int ret;

	memset(e, 0, sizeof(*e));
	if (n == -1)
		return -errno;
	/* by content: a HEIC carries them in its hevcfs header item, an MP4 in
	 * its last box */
	if (!is_bmff(head, (size_t)n))
		return 0;
	ret = photo_embedded_sums(fd, e);
	if (ret || e->has)
		return ret;
	ret = video_embedded_sums(fd, e->orig_sum, e->self_sum, &e->self_off, &e->orig_bytes);
	if (ret < 0)
		return ret;
	e->has = ret == 1;
	return 0;
}

int codec_check_self_sum(int fd, const struct codec_embedded *e, int *ok)
{
	struct sum_file sf;
	int ret;

	*ok = 0;
	if (!e->has)
		return -EINVAL;
	ret = sum_file(fd, 0, e->self_off, SUM_LEN, NULL, NULL, &sf);
	if (ret)
		return ret;
	*ok = sf.size >= e->self_off + SUM_LEN && memcmp(sf.whole, e->self_sum, SUM_LEN) == 0;
	sum_file_release(&sf);
	return 0;
}
