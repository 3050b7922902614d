/*
 * Private to codec/: the entry points codec.c dispatches to, and helpers
 * shared by the photo and video halves.
 */
#ifndef HEVCFS_CODEC_INTERNAL_H
#define HEVCFS_CODEC_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "codec.h"

/* Defaults for zeroed codec_opts fields. */
#define CODEC_DEF_MIN_SSIM 0.99
#define CODEC_DEF_VIEW_QUALITY 92
#define CODEC_DEF_MIN_VIEW_SSIM 0.985
#define CODEC_DEF_CRF 22 /* the seed's balance of size and quality */
#define CODEC_DEF_PRESET "medium"
#define CODEC_DEF_MIN_VIDEO_SSIM 0.97
#define CODEC_DEF_MAX_PIXELS 200000000ull

/* Archive a JPEG (photo.c). Same contract as codec_archive(). */
int photo_archive(int src_fd, const char *out_path, const char *view_path,
		  const struct codec_opts *opts, struct codec_result *result);

/* Render the JPEG view of a HEIC written by photo_archive (photo.c). */
int photo_render_view(int stored_fd, const char *out_path, const struct codec_opts *opts,
		      uint64_t *size);

/* Does this head of a file look like a video container? (video.c) */
int video_sniff(const uint8_t *head, size_t n);

/* Archive a video (video.c). Same contract as codec_archive(). */
int video_archive(int src_fd, const char *out_path, const struct codec_opts *opts,
		  struct codec_result *result);

/* Set result to "kept" with a printf-style reason. */
void codec_keep(struct codec_result *result, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/* Read all of fd (up to max bytes) into a malloc'd buffer. 0 or -errno;
 * -EFBIG when larger than max. */
int codec_read_all(int fd, size_t max, uint8_t **buf, size_t *len);

/* Luma SSIM of two 8-bit planes of equal size (ssim.c): 8x8 windows on a
 * 4-pixel grid, the usual constants for L = 255. Returns a value in [-1, 1]. */
double codec_ssim_plane(const uint8_t *a, int a_stride, const uint8_t *b, int b_stride,
			int width, int height);

#endif
