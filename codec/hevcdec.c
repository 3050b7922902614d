/*
 * hevcdec — an HEVC decoder for libheif: libde265 with worker threads, and
 * a way to take the decoded picture as it is.
 *
 * libheif 1.15's own libde265 plugin starts one worker thread, so a 12 MP
 * HEIC decodes on one core: most of a cold view's time. x265 writes its
 * rows as wavefront substreams (entropy_coding_sync), which libde265 decodes
 * in parallel when it has threads. The pixels are the same (HEVC decoding
 * is exact); only the time changes. Registered once, above libheif's own
 * plugin, for every decode this process does.
 *
 * libheif then converts what a decoder returns to RGB and back; a capture
 * (hevcdec_capture, for heic_decode_planes) copies the picture out before
 * that and stops the decode there. A NAL capture (hevcdec_capture_nals)
 * keeps what libheif would have the decoder decode, its parameter sets and
 * coded slices, without decoding it: a retag puts them in a new file.
 */
#include "internal.h"

#include <errno.h>
#include <libde265/de265.h>
#include <libheif/heif.h>
#include <libheif/heif_plugin.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <turbojpeg.h>
#include <unistd.h>

/* Above libheif's default priority (100), so this plugin is chosen. */
#define HEVCDEC_PRIORITY 200
/* Worker threads: the cores, within reason (a picture has ~50 CTU rows). */
#define HEVCDEC_MAX_THREADS 8

struct hevcdec {
	de265_decoder_context *ctx;
};

static atomic_ulong hevcdec_decoded;
/* While set, what libheif pushes is kept there instead of decoded
 * (hevcdec_capture_nals). */
static struct hevcdec_nals *_Atomic hevcdec_nals_cap;

void hevcdec_capture_nals(struct hevcdec_nals *c)
{
	atomic_store(&hevcdec_nals_cap, c);
}

/* Keep a copy of data pushed during a NAL capture. 0 or -ENOMEM. */
static int keep_nals(struct hevcdec_nals *c, const void *data, size_t size)
{
	if (c->len + size > c->cap) {
		size_t cap = c->cap ? c->cap : 65536;
		uint8_t *p;
		while (cap < c->len + size)
			cap *= 2;
		p = realloc(c->data, cap);
		if (!p)
			return -ENOMEM;
		c->data = p;
		c->cap = cap;
	}
	memcpy(c->data + c->len, data, size);
	c->len += size;
	return 0;
}
/* Process-wide, not per thread: libheif 1.15 calls the decoder from a
 * thread of its own for some pictures (seen for sides that are not
 * multiples of 8). heic_decode_planes lets one decode run at a time. */
static struct hevcdec_capture *_Atomic hevcdec_cap;

void hevcdec_capture(struct hevcdec_capture *c)
{
	atomic_store(&hevcdec_cap, c);
}

/* Copy pic into c->pl if it is the picture expected: 8 bits, the chroma
 * format of pl's subsampling (grayscale photos are coded 4:2:0), at least
 * pl's size. libheif 1.15 codes some pictures larger than they are and
 * crops them back after decoding (an odd side of a 4:2:0 picture is one
 * sample longer); the samples it adds are on the right and at the bottom,
 * and are not copied. */
#define CAPTURE_MAX_PAD 64
static int capture(const struct de265_image *pic, struct hevcdec_capture *c)
{
	struct photo_planes *pl = c->pl;
	enum de265_chroma want = pl->subsamp == TJSAMP_444   ? de265_chroma_444
				 : pl->subsamp == TJSAMP_422 ? de265_chroma_422
							     : de265_chroma_420;

	if (de265_get_chroma_format(pic) != want)
		return -EINVAL;
	for (int i = 0; i < pl->nplanes; i++) {
		int w, h, pw = de265_get_image_width(pic, i), ph = de265_get_image_height(pic, i);
		int stride;
		const uint8_t *src = de265_get_image_plane(pic, i, &stride);

		photo_plane_size(pl, i, &w, &h);
		if (!src || de265_get_bits_per_pixel(pic, i) != 8 || pw < w ||
		    pw > w + CAPTURE_MAX_PAD || ph < h || ph > h + CAPTURE_MAX_PAD ||
		    w > pl->pw[i] || h > pl->ph[i])
			return -EINVAL;
		for (int y = 0; y < h; y++)
			memcpy(pl->plane[i] + (size_t)y * pl->stride[i], src + (size_t)y * stride,
			       (size_t)w);
		c->w[i] = w;
		c->h[i] = h;
	}
	c->done = 1;
	return 0;
}

static struct heif_error hevcdec_error(enum heif_error_code code, const char *msg)
{
	struct heif_error e = {code, heif_suberror_Unspecified, msg};
	return e;
}

static const struct heif_error hevcdec_ok = {heif_error_Ok, heif_suberror_Unspecified, "ok"};

static const char *hevcdec_name(void)
{
	return "hevcfs libde265 (threaded)";
}

static int hevcdec_supports(enum heif_compression_format format)
{
	return format == heif_compression_HEVC ? HEVCDEC_PRIORITY : 0;
}

static struct heif_error hevcdec_new(void **out)
{
	struct hevcdec *d = calloc(1, sizeof(*d));
	long n = sysconf(_SC_NPROCESSORS_ONLN);

	if (!d)
		return hevcdec_error(heif_error_Memory_allocation_error, "out of memory");
	d->ctx = de265_new_decoder();
	if (!d->ctx) {
		free(d);
		return hevcdec_error(heif_error_Memory_allocation_error, "out of memory");
	}
	n = n < 1 ? 1 : n > HEVCDEC_MAX_THREADS ? HEVCDEC_MAX_THREADS : n;
	/* without threads libde265 still decodes, on the calling thread */
	(void)de265_start_worker_threads(d->ctx, (int)n);
	*out = d;
	return hevcdec_ok;
}

static void hevcdec_free(void *arg)
{
	struct hevcdec *d = arg;

	if (!d)
		return;
	de265_free_decoder(d->ctx);
	free(d);
}

/* libheif hands the parameter sets, then the picture, as NAL units each
 * behind a 4-byte big-endian length (how libheif writes hvcC's arrays and
 * how x265's picture data is framed). */
static struct heif_error hevcdec_push(void *arg, const void *data, size_t size)
{
	struct hevcdec *d = arg;
	struct hevcdec_nals *c = atomic_load(&hevcdec_nals_cap);
	const uint8_t *p = data;
	size_t at = 0;

	if (c)
		return keep_nals(c, data, size)
			   ? hevcdec_error(heif_error_Memory_allocation_error, "out of memory")
			   : hevcdec_ok;
	while (at < size) {
		uint32_t n;
		if (size - at < 4)
			return hevcdec_error(heif_error_Decoder_plugin_error,
					     "truncated NAL length");
		n = (uint32_t)p[at] << 24 | (uint32_t)p[at + 1] << 16 | (uint32_t)p[at + 2] << 8 |
		    p[at + 3];
		at += 4;
		if (n > size - at || n > INT32_MAX)
			return hevcdec_error(heif_error_Decoder_plugin_error,
					     "NAL beyond the data");
		if (de265_push_NAL(d->ctx, p + at, (int)n, 0, NULL) != DE265_OK)
			return hevcdec_error(heif_error_Memory_allocation_error, "out of memory");
		at += n;
	}
	return hevcdec_ok;
}

/* Copy a decoded picture into a new heif_image, planes and colour. */
static struct heif_error to_heif(const struct de265_image *pic, struct heif_image **out)
{
	static const enum heif_channel chan[3] = {heif_channel_Y, heif_channel_Cb, heif_channel_Cr};
	enum de265_chroma cf = de265_get_chroma_format(pic);
	enum heif_chroma ch = cf == de265_chroma_mono  ? heif_chroma_monochrome
			      : cf == de265_chroma_420 ? heif_chroma_420
			      : cf == de265_chroma_422 ? heif_chroma_422
						       : heif_chroma_444;
	int planes = cf == de265_chroma_mono ? 1 : 3;
	struct heif_color_profile_nclx *nclx;
	struct heif_image *img;
	struct heif_error e;

	e = heif_image_create(de265_get_image_width(pic, 0), de265_get_image_height(pic, 0),
			      planes == 1 ? heif_colorspace_monochrome : heif_colorspace_YCbCr, ch,
			      &img);
	if (e.code)
		return e;
	for (int c = 0; c < planes; c++) {
		int w = de265_get_image_width(pic, c), h = de265_get_image_height(pic, c);
		int bits = de265_get_bits_per_pixel(pic, c), sstride, dstride;
		const uint8_t *src = de265_get_image_plane(pic, c, &sstride);
		uint8_t *dst;

		if (w < 1 || h < 1 || bits < 1 || bits > 16 || !src) {
			heif_image_release(img);
			return hevcdec_error(heif_error_Decoder_plugin_error, "bad picture plane");
		}
		e = heif_image_add_plane(img, chan[c], w, h, bits);
		if (e.code) {
			heif_image_release(img);
			return e;
		}
		dst = heif_image_get_plane(img, chan[c], &dstride);
		for (int y = 0; y < h; y++)
			memcpy(dst + (size_t)y * dstride, src + (size_t)y * sstride,
			       (size_t)w * (bits > 8 ? 2 : 1));
	}
	/* the colour the bitstream's VUI states, as libheif's plugin reports */
	nclx = heif_nclx_color_profile_alloc();
	if (nclx) {
		heif_nclx_color_profile_set_color_primaries(
		    nclx, (uint16_t)de265_get_image_colour_primaries(pic));
		heif_nclx_color_profile_set_transfer_characteristics(
		    nclx, (uint16_t)de265_get_image_transfer_characteristics(pic));
		heif_nclx_color_profile_set_matrix_coefficients(
		    nclx, (uint16_t)de265_get_image_matrix_coefficients(pic));
		nclx->full_range_flag = (uint8_t)de265_get_image_full_range_flag(pic);
		heif_image_set_nclx_color_profile(img, nclx);
		heif_nclx_color_profile_free(nclx);
	}
	*out = img;
	return hevcdec_ok;
}

static struct heif_error hevcdec_decode(void *arg, struct heif_image **out)
{
	struct hevcdec *d = arg;
	struct hevcdec_nals *nals = atomic_load(&hevcdec_nals_cap);
	int more = 1;

	*out = NULL;
	if (nals) {
		/* the coded data was wanted, not the picture */
		nals->done = 1;
		return hevcdec_error(heif_error_Decoder_plugin_error, "coded data captured");
	}
	de265_flush_data(d->ctx);
	while (more) {
		const struct de265_image *pic;
		struct hevcdec_capture *cap;
		de265_error err;

		more = 0;
		err = de265_decode(d->ctx, &more);
		if (err != DE265_OK && err != DE265_ERROR_WAITING_FOR_INPUT_DATA)
			return hevcdec_error(heif_error_Decoder_plugin_error,
					     de265_get_error_text(err));
		pic = de265_get_next_picture(d->ctx);
		cap = atomic_load(&hevcdec_cap);
		if (pic && cap) {
			int bad = capture(pic, cap);
			de265_release_next_picture(d->ctx);
			if (!bad)
				atomic_fetch_add(&hevcdec_decoded, 1);
			/* libheif goes no further with the picture */
			return hevcdec_error(heif_error_Decoder_plugin_error,
					     bad ? "picture not as expected" : "picture captured");
		}
		if (pic) {
			struct heif_error e = to_heif(pic, out);
			de265_release_next_picture(d->ctx);
			if (!e.code)
				atomic_fetch_add(&hevcdec_decoded, 1);
			return e;
		}
		if (err == DE265_ERROR_WAITING_FOR_INPUT_DATA)
			break;
	}
	return hevcdec_error(heif_error_Decoder_plugin_error, "no picture decoded");
}

static void hevcdec_set_strict(void *arg, int flag)
{
	(void)arg;
	(void)flag;
}

static const struct heif_decoder_plugin hevcdec_plugin = {
    .plugin_api_version = 3,
    .get_plugin_name = hevcdec_name,
    .does_support_format = hevcdec_supports,
    .new_decoder = hevcdec_new,
    .free_decoder = hevcdec_free,
    .push_data = hevcdec_push,
    .decode_image = hevcdec_decode,
    .set_strict_decoding = hevcdec_set_strict,
    .id_name = "hevcfs-libde265",
};

static pthread_once_t hevcdec_once = PTHREAD_ONCE_INIT;

static void hevcdec_register(void)
{
	struct heif_error e = heif_register_decoder_plugin(&hevcdec_plugin);

	if (e.code)
		log_msg(LOG_WARNING, "heic: threaded decoder not registered (%s): one thread",
			e.message);
}

void hevcdec_init(void)
{
	pthread_once(&hevcdec_once, hevcdec_register);
}

unsigned long hevcdec_pictures(void)
{
	return atomic_load(&hevcdec_decoded);
}
