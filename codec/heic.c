/* heic — HEIC encoding of Y'CbCr planes with their metadata, and decoding the
 * primary image back to planes (libheif 1.15 with x265 and libde265). */
#include "internal.h"

#include <errno.h>
#include <libheif/heif.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <turbojpeg.h>
#include <unistd.h>

/* Thumbnail bounding box: what file managers ask for. */
#define THUMB_BOX 320
/* A thumbnail carries the photo's ICC profile up to this size; a larger
 * one (a 64 KiB print profile, say) would outweigh the thumbnail itself,
 * which then says sRGB through its nclx. */
#define THUMB_ICC_MAX 8192
/* JPEG's neutral chroma, for grayscale stored as 4:2:0. */
#define NEUTRAL_CHROMA 128

/* nclx code points (ITU-T H.273). */
#define NCLX_PRIMARIES_BT709 1 /* sRGB primaries */
#define NCLX_UNSPECIFIED 2     /* the ICC profile says it */
#define NCLX_TRANSFER_SRGB 13  /* IEC 61966-2-1 */
#define NCLX_MATRIX_BT601 6    /* JFIF's Y'CbCr matrix */

/* Translate a libheif error at the module edge: log it, return -errno. */
static int heif_errno(struct heif_error e, const char *what)
{
	if (e.code == heif_error_Ok)
		return 0;
	log_msg(LOG_ERR, "heic: %s: %s", what, e.message);
	switch (e.code) {
	case heif_error_Memory_allocation_error:
		return -ENOMEM;
	case heif_error_Unsupported_feature:
	case heif_error_Unsupported_filetype:
		return -ENOTSUP;
	case heif_error_Invalid_input:
		return -EINVAL;
	default:
		return -EIO;
	}
}

/* Copy our padded planes into a new heif_image (grayscale becomes 4:2:0
 * with neutral chroma: see photo.c for why not monochrome). */
static int planes_to_image(const struct photo_planes *pl, struct heif_image **out)
{
	enum heif_chroma ch = pl->subsamp == TJSAMP_444	  ? heif_chroma_444
			      : pl->subsamp == TJSAMP_422 ? heif_chroma_422
							  : heif_chroma_420;
	static const enum heif_channel chan[3] = {heif_channel_Y, heif_channel_Cb, heif_channel_Cr};
	struct heif_image *img;
	int ret;

	ret = heif_errno(heif_image_create(pl->width, pl->height, heif_colorspace_YCbCr, ch, &img),
			 "heif_image_create");
	if (ret)
		return ret;
	for (int i = 0; i < 3; i++) {
		int w, h, stride;
		uint8_t *dst;

		photo_plane_size(pl, i, &w, &h);
		ret =
		    heif_errno(heif_image_add_plane(img, chan[i], w, h, 8), "heif_image_add_plane");
		if (ret)
			goto out_release;
		dst = heif_image_get_plane(img, chan[i], &stride);
		for (int y = 0; y < h; y++) {
			if (i < pl->nplanes)
				memcpy(dst + (size_t)y * stride,
				       pl->plane[i] + (size_t)y * pl->stride[i], (size_t)w);
			else
				memset(dst + (size_t)y * stride, NEUTRAL_CHROMA, (size_t)w);
		}
	}
	*out = img;
	return 0;

out_release:
	heif_image_release(img);
	return ret;
}

/* Colour: nclx says JPEG's full-range BT.601 Y'CbCr (sRGB primaries and
 * transfer unless an ICC profile describes the RGB, then those are left
 * unspecified). libheif 1.15 writes both colr boxes when asked
 * (save_two_colr_boxes_when_ICC_and_nclx_available), so both are kept. */
static int set_colour(struct heif_image *img, const struct jpeg_info *ji, size_t icc_max)
{
	struct heif_color_profile_nclx *nclx = heif_nclx_color_profile_alloc();
	int icc = ji->icc && ji->icc_len <= icc_max;
	int ret;

	if (!nclx)
		return -ENOMEM;
	nclx->color_primaries = icc ? NCLX_UNSPECIFIED : NCLX_PRIMARIES_BT709;
	nclx->transfer_characteristics = icc ? NCLX_UNSPECIFIED : NCLX_TRANSFER_SRGB;
	nclx->matrix_coefficients = NCLX_MATRIX_BT601;
	nclx->full_range_flag = 1;
	ret = heif_errno(heif_image_set_nclx_color_profile(img, nclx), "setting nclx");
	heif_nclx_color_profile_free(nclx);
	if (ret || !icc)
		return ret;
	return heif_errno(heif_image_set_raw_color_profile(img, "prof", ji->icc, ji->icc_len),
			  "setting the ICC profile");
}

/* Pass each "key=value" of list (comma separated) to x265 as "x265:key":
 * libheif 1.15's x265 plugin applies those after its own settings. */
static int set_x265(struct heif_encoder *enc, const char *list)
{
	char name[64], value[64];

	while (*list) {
		size_t k = strcspn(list, "="), v;

		if (list[k] != '=' || k + 5 >= sizeof(name))
			return -EINVAL;
		v = strcspn(list + k + 1, ",");
		if (v >= sizeof(value))
			return -EINVAL;
		snprintf(name, sizeof(name), "x265:%.*s", (int)k, list);
		snprintf(value, sizeof(value), "%.*s", (int)v, list + k + 1);
		if (heif_errno(heif_encoder_set_parameter(enc, name, value), name))
			return -EINVAL;
		list += k + 1 + v;
		if (*list == ',')
			list++;
	}
	return 0;
}

/* An x265 encoder configured from hp. */
static int get_encoder(struct heif_context *ctx, const struct heic_params *hp, int subsamp,
		       struct heif_encoder **out)
{
	struct heif_encoder *enc;
	char threads[16];
	int ret;

	ret = heif_errno(heif_context_get_encoder_for_format(ctx, heif_compression_HEVC, &enc),
			 "no HEVC encoder");
	if (ret)
		return ret;
	/* level 0: x265 prints nothing on stderr */
	heif_encoder_set_logging_level(enc, 0);
	ret = heif_errno(heif_encoder_set_lossy_quality(enc, hp->quality), "quality");
	if (!ret)
		ret = heif_errno(heif_encoder_set_parameter(enc, "preset", hp->preset), "preset");
	if (!ret && hp->tune)
		ret = heif_errno(heif_encoder_set_parameter(enc, "tune", hp->tune), "tune");
	/* the x265 plugin converts to its "chroma" setting: ask for the JPEG's */
	if (!ret)
		ret = heif_errno(heif_encoder_set_parameter(enc, "chroma",
							    subsamp == TJSAMP_444   ? "444"
							    : subsamp == TJSAMP_422 ? "422"
										    : "420"),
				 "chroma");
	if (!ret && hp->threads > 0) {
		snprintf(threads, sizeof(threads), "%d", hp->threads);
		ret = heif_errno(heif_encoder_set_parameter(enc, "x265:pools", threads),
				 "x265 pools");
	}
	if (!ret && hp->x265)
		ret = set_x265(enc, hp->x265);
	/* one picture: more frame encoders only cost memory */
	if (!ret)
		ret = heif_errno(heif_encoder_set_parameter(enc, "x265:frame-threads", "1"),
				 "x265 frame-threads");
	if (ret) {
		heif_encoder_release(enc);
		return ret;
	}
	*out = enc;
	return 0;
}

int heic_add_item(struct heif_context *ctx, const char *item_type, const char *content_type,
		  const uint8_t *data, size_t len)
{
	struct heif_image_handle *h;
	int ret;

	if (len > INT32_MAX)
		return -EFBIG;
	ret = heif_errno(heif_context_get_primary_image_handle(ctx, &h), "primary image");
	if (ret)
		return ret;
	ret = heif_errno(
	    heif_context_add_generic_metadata(ctx, h, data, (int)len, item_type, content_type),
	    "adding a metadata item");
	heif_image_handle_release(h);
	return ret;
}

/* The thumbnail's size for a w x h photo: THUMB_BOX on the long side,
 * even sides (as libheif makes them). 0 when the photo needs none (it fits
 * the box) or can have none (a side would shrink below 2 samples: a 1000 x 1
 * strip). A thumbnail side is then never longer than the photo's. */
static int thumb_size(int w, int h, int *tw, int *th)
{
	if (w <= THUMB_BOX && h <= THUMB_BOX)
		return 0;
	*tw = (w >= h ? THUMB_BOX : (int)((int64_t)w * THUMB_BOX / h)) & ~1;
	*th = (w >= h ? (int)((int64_t)h * THUMB_BOX / w) : THUMB_BOX) & ~1;
	return *tw >= 2 && *th >= 2;
}

/* Scale a sw x sh plane into a dw x dh one (dw <= sw, dh <= sh), each
 * sample the rounded mean of the source samples its area covers. */
static void box_scale(const uint8_t *src, int sstride, int sw, int sh, uint8_t *dst, int dstride,
		      int dw, int dh, uint32_t *acc, uint16_t *xmap, uint32_t *xcount)
{
	memset(xcount, 0, (size_t)dw * sizeof(*xcount));
	for (int x = 0; x < sw; x++) {
		xmap[x] = (uint16_t)((int64_t)x * dw / sw);
		xcount[xmap[x]]++;
	}
	for (int y = 0, sy = 0; y < dh; y++) {
		int sy_end = (int)((int64_t)(y + 1) * sh / dh), rows = sy_end - sy;

		memset(acc, 0, (size_t)dw * sizeof(*acc));
		for (; sy < sy_end; sy++) {
			const uint8_t *row = src + (size_t)sy * sstride;
			for (int x = 0; x < sw; x++)
				acc[xmap[x]] += row[x];
		}
		for (int x = 0; x < dw; x++) {
			uint32_t n = xcount[x] * (uint32_t)rows;
			dst[(size_t)y * dstride + x] = (uint8_t)((acc[x] + n / 2) / n);
		}
	}
}

/* The thumbnail's planes: pl scaled into THUMB_BOX (even sides, as libheif
 * makes them) by area averaging. libheif 1.15's own thumbnail
 * (heif_context_encode_thumbnail) samples the nearest pixel: aliased, and
 * on the bench's 9 photos 35% more bytes (174 KB against 129 KB, 3.7% of
 * all they store). 0, -EINVAL when pl has no thumbnail (thumb_size), or
 * -ENOMEM. */
static int thumb_planes(const struct photo_planes *pl, struct photo_planes *t)
{
	int w = pl->width, tw, th, ret;
	uint32_t *acc, *xcount;
	uint16_t *xmap;

	if (!thumb_size(pl->width, pl->height, &tw, &th))
		return -EINVAL;
	ret = photo_planes_alloc(t, tw, th, pl->subsamp);
	if (ret)
		return ret;
	acc = malloc((size_t)tw * sizeof(*acc));
	xcount = malloc((size_t)tw * sizeof(*xcount));
	xmap = malloc((size_t)w * sizeof(*xmap));
	if (!acc || !xcount || !xmap) {
		ret = -ENOMEM;
		photo_planes_release(t);
		goto out;
	}
	for (int i = 0; i < pl->nplanes; i++) {
		int sw, sh, dw, dh;

		photo_plane_size(pl, i, &sw, &sh);
		photo_plane_size(t, i, &dw, &dh);
		box_scale(pl->plane[i], pl->stride[i], sw, sh, t->plane[i], t->stride[i], dw, dh,
			  acc, xmap, xcount);
	}
out:
	free(acc);
	free(xcount);
	free(xmap);
	return ret;
}

/* Encode the thumbnail of img (whose handle is h) and link it to h. */
static int encode_thumbnail(struct heif_context *ctx, const struct photo_planes *pl,
			    const struct jpeg_info *ji, struct heif_encoder *enc,
			    const struct heif_encoding_options *eo, struct heif_image_handle *h)
{
	struct photo_planes t = {0};
	struct heif_image *img = NULL;
	struct heif_image_handle *th = NULL;
	int ret = thumb_planes(pl, &t);

	if (ret)
		return ret == -EINVAL ? 0 : ret;
	ret = planes_to_image(&t, &img);
	photo_planes_release(&t);
	if (!ret)
		ret = set_colour(img, ji, THUMB_ICC_MAX);
	if (!ret)
		ret = heif_errno(heif_context_encode_image(ctx, img, enc, eo, &th),
				 "encoding the thumbnail");
	/* libheif 1.15's heif_context_assign_thumbnail hands its arguments on
	 * swapped (libheif issue 93 renamed them; the call still swaps): the
	 * thumbnail goes first so that the iref says "th is a thumbnail of
	 * h". Should a later libheif swap them back, heic_check_thumbnail on
	 * the written file fails the job rather than let a photo through as
	 * a thumbnail. */
	if (!ret)
		ret =
		    heif_errno(heif_context_assign_thumbnail(ctx, th, h), "linking the thumbnail");
	heif_image_handle_release(th);
	heif_image_release(img);
	return ret;
}

/* ji's Exif, XMP and Extended XMP as items of the image h. 0 or -errno. */
static int add_metadata(struct heif_context *ctx, struct heif_image_handle *h,
			const struct jpeg_info *ji)
{
	int ret = 0;

	if (ji->exif)
		ret =
		    heif_errno(heif_context_add_exif_metadata(ctx, h, ji->exif, (int)ji->exif_len),
			       "adding Exif");
	if (!ret && ji->xmp)
		ret = heif_errno(heif_context_add_XMP_metadata(ctx, h, ji->xmp, (int)ji->xmp_len),
				 "adding XMP");
	/* Extended XMP is a second XMP document: a second XMP item */
	if (!ret && ji->xmp_ext && ji->xmp_ext_len <= INT32_MAX)
		ret = heif_errno(
		    heif_context_add_XMP_metadata(ctx, h, ji->xmp_ext, (int)ji->xmp_ext_len),
		    "adding Extended XMP");
	return ret;
}

/* How heic_encode and heic_encode_coded write: pixels stay unrotated,
 * irot/imir carry the EXIF orientation; both colr boxes are kept. */
static struct heif_encoding_options *encoding_options(const struct jpeg_info *ji)
{
	struct heif_encoding_options *eo = heif_encoding_options_alloc();

	if (!eo)
		return NULL;
	eo->image_orientation = (enum heif_orientation)ji->orientation;
	eo->save_two_colr_boxes_when_ICC_and_nclx_available = 1;
	/* that workaround drops the nclx box, and with it "full range" */
	eo->macOS_compatibility_workaround_no_nclx_profile = 0;
	return eo;
}

int heic_encode(const struct photo_planes *pl, const struct jpeg_info *ji,
		const struct heic_params *hp, struct heif_context **out)
{
	struct heif_context *ctx;
	struct heif_image *img = NULL;
	struct heif_encoder *enc = NULL;
	struct heif_encoding_options *eo;
	struct heif_image_handle *h = NULL;
	int ret;

	ctx = heif_context_alloc();
	if (!ctx)
		return -ENOMEM;
	eo = encoding_options(ji);
	if (!eo) {
		ret = -ENOMEM;
		goto out_free_ctx;
	}
	ret = planes_to_image(pl, &img);
	if (ret)
		goto out_free_options;
	ret = set_colour(img, ji, SIZE_MAX);
	if (ret)
		goto out_release_image;
	ret = get_encoder(ctx, hp, pl->subsamp, &enc);
	if (ret)
		goto out_release_image;
	ret = heif_errno(heif_context_encode_image(ctx, img, enc, eo, &h), "encoding");
	if (ret)
		goto out_release_encoder;
	if (!hp->no_thumbnail) {
		ret = encode_thumbnail(ctx, pl, ji, enc, eo, h);
		if (ret)
			goto out_release_handle;
	}
	ret = add_metadata(ctx, h, ji);
	if (ret)
		goto out_release_handle;
	*out = ctx;
	ctx = NULL;
out_release_handle:
	heif_image_handle_release(h);
out_release_encoder:
	heif_encoder_release(enc);
out_release_image:
	heif_image_release(img);
out_free_options:
	heif_encoding_options_free(eo);
out_free_ctx:
	heif_context_free(ctx);
	return ret;
}

/* A growing buffer heif_context_write appends to. */
struct membuf {
	uint8_t *p;
	size_t len, cap;
	int err;
};

static struct heif_error mem_write(struct heif_context *ctx, const void *data, size_t size,
				   void *arg)
{
	struct membuf *m = arg;
	struct heif_error ok = {heif_error_Ok, heif_suberror_Unspecified, "ok"};
	struct heif_error nomem = {heif_error_Memory_allocation_error, heif_suberror_Unspecified,
				   "out of memory"};

	(void)ctx;
	if (m->len + size > m->cap) {
		size_t cap = m->cap ? m->cap : 1 << 20;
		uint8_t *p;
		while (cap < m->len + size)
			cap *= 2;
		p = realloc(m->p, cap);
		if (!p) {
			m->err = -ENOMEM;
			return nomem;
		}
		m->p = p;
		m->cap = cap;
	}
	memcpy(m->p + m->len, data, size);
	m->len += size;
	return ok;
}

int heic_write_mem(struct heif_context *ctx, uint8_t **buf, size_t *len)
{
	struct membuf m = {0};
	struct heif_writer w = {.writer_api_version = 1, .write = mem_write};
	int ret;

	ret = heif_errno(heif_context_write(ctx, &w, &m), "writing");
	if (ret) {
		free(m.p);
		return m.err ? m.err : ret;
	}
	*buf = m.p;
	*len = m.len;
	return 0;
}

int heic_open(const uint8_t *buf, size_t len, int threads, struct heif_context **out,
	      struct heif_image_handle **handle)
{
	struct heif_context *ctx = heif_context_alloc();
	int ret;

	if (!ctx)
		return -ENOMEM;
	if (threads > 0)
		heif_context_set_max_decoding_threads(ctx, threads);
	ret = heif_errno(heif_context_read_from_memory_without_copy(ctx, buf, len, NULL),
			 "reading HEIF");
	if (!ret)
		ret =
		    heif_errno(heif_context_get_primary_image_handle(ctx, handle), "primary image");
	if (ret) {
		heif_context_free(ctx);
		return ret == -ENOMEM ? ret : -EINVAL;
	}
	*out = ctx;
	return 0;
}

int heic_check_thumbnail(const struct heif_image_handle *handle, int width, int height)
{
	int tw, tth, want = thumb_size(width, height, &tw, &tth);
	heif_item_id id;
	struct heif_image_handle *th;
	int ok;

	if (heif_image_handle_get_number_of_thumbnails(handle) != want)
		return -EIO;
	if (!want)
		return 0;
	if (heif_image_handle_get_list_of_thumbnail_IDs(handle, &id, 1) != 1 ||
	    heif_image_handle_get_thumbnail(handle, id, &th).code != heif_error_Ok)
		return -EIO;
	/* irot turns the thumbnail as it turns the photo */
	ok = (heif_image_handle_get_width(th) == tw && heif_image_handle_get_height(th) == tth) ||
	     (heif_image_handle_get_width(th) == tth && heif_image_handle_get_height(th) == tw);
	heif_image_handle_release(th);
	return ok ? 0 : -EIO;
}

/* heif_reader callbacks over a struct heic_fd: pread at our own position,
 * so libheif reads the boxes it needs and skips the coded pixels. */
static int64_t fd_get_position(void *arg)
{
	return ((struct heic_fd *)arg)->pos;
}

static int fd_read(void *data, size_t size, void *arg)
{
	struct heic_fd *f = arg;
	size_t off = 0;

	while (off < size) {
		ssize_t n = pread(f->fd, (uint8_t *)data + off, size - off, (off_t)(f->pos + off));
		if (n == -1 && errno == EINTR)
			continue;
		if (n <= 0) {
			/* a file that shrank under us reads as damaged, not as an I/O error */
			f->err = n == 0 ? 0 : -errno;
			return 1;
		}
		off += (size_t)n;
	}
	f->pos += (int64_t)size;
	return 0;
}

static int fd_seek(int64_t pos, void *arg)
{
	struct heic_fd *f = arg;

	if (pos < 0 || pos > f->size)
		return 1;
	f->pos = pos;
	return 0;
}

static enum heif_reader_grow_status fd_wait_for_file_size(int64_t target, void *arg)
{
	return target <= ((struct heic_fd *)arg)->size ? heif_reader_grow_status_size_reached
						       : heif_reader_grow_status_size_beyond_eof;
}

static const struct heif_reader fd_reader = {
    .reader_api_version = 1,
    .get_position = fd_get_position,
    .read = fd_read,
    .seek = fd_seek,
    .wait_for_file_size = fd_wait_for_file_size,
};

int heic_open_fd(struct heic_fd *f, int fd, struct heif_context **out,
		 struct heif_image_handle **handle)
{
	struct heif_context *ctx;
	struct stat st;
	int ret;

	memset(f, 0, sizeof(*f));
	if (fstat(fd, &st) == -1)
		return -errno;
	f->fd = fd;
	f->size = st.st_size;
	ctx = heif_context_alloc();
	if (!ctx)
		return -ENOMEM;
	ret = heif_errno(heif_context_read_from_reader(ctx, &fd_reader, f, NULL), "reading HEIF");
	if (!ret)
		ret =
		    heif_errno(heif_context_get_primary_image_handle(ctx, handle), "primary image");
	if (ret) {
		heif_context_free(ctx);
		return f->err ? f->err : ret == -ENOMEM ? ret : -EINVAL;
	}
	*out = ctx;
	return 0;
}

int heic_get_item(const struct heif_image_handle *handle, const char *item_type,
		  const char *content_type, uint8_t **data, size_t *len)
{
	int n = heif_image_handle_get_number_of_metadata_blocks(handle, item_type);
	heif_item_id *ids;
	int ret = -ENOENT;

	if (n <= 0)
		return -ENOENT;
	ids = calloc((size_t)n, sizeof(*ids));
	if (!ids)
		return -ENOMEM;
	n = heif_image_handle_get_list_of_metadata_block_IDs(handle, item_type, ids, n);
	for (int i = 0; i < n; i++) {
		const char *ct = heif_image_handle_get_metadata_content_type(handle, ids[i]);
		size_t sz;
		uint8_t *p;

		if (content_type && (!ct || strcmp(ct, content_type) != 0))
			continue;
		sz = heif_image_handle_get_metadata_size(handle, ids[i]);
		if (sz > HEIC_MAX_ITEM_BYTES) {
			/* the iloc says so, the file need not hold it: no blind malloc */
			log_msg(LOG_ERR, "heic: metadata item of %zu bytes refused", sz);
			ret = -EINVAL;
			break;
		}
		p = malloc(sz ? sz : 1);
		if (!p) {
			ret = -ENOMEM;
			break;
		}
		ret = heif_errno(heif_image_handle_get_metadata(handle, ids[i], p),
				 "reading a metadata item");
		if (ret) {
			free(p);
			ret = -EINVAL;
			break;
		}
		*data = p;
		*len = sz;
		break;
	}
	free(ids);
	return ret;
}

/* Repeat the last sample of each filled row (rw x rh of plane i) into the
 * padding, and the last row below it, as jpeg_decode_planes does. */
static void pad_plane(struct photo_planes *pl, int i, int rw, int rh)
{
	for (int y = 0; y < rh; y++)
		for (int x = rw; x < pl->pw[i]; x++)
			pl->plane[i][(size_t)y * pl->stride[i] + x] =
			    pl->plane[i][(size_t)y * pl->stride[i] + rw - 1];
	for (int y = rh; y < pl->ph[i]; y++)
		memcpy(pl->plane[i] + (size_t)y * pl->stride[i],
		       pl->plane[i] + (size_t)(rh - 1) * pl->stride[i], (size_t)pl->pw[i]);
}

/* Decodes take turns: a capture (hevcdec_capture) is for the whole
 * process, and libheif may decode on a thread of its own. */
static pthread_mutex_t decode_lock = PTHREAD_MUTEX_INITIALIZER;

/* The picture as the decoder made it, through hevcdec_capture. */
static int decode_raw(const struct heif_image_handle *handle, enum heif_chroma ch,
		      struct heif_decoding_options *dopt, struct photo_planes *pl)
{
	struct hevcdec_capture cap = {.pl = pl};
	struct heif_image *img = NULL;
	struct heif_error e;

	pthread_mutex_lock(&decode_lock);
	hevcdec_capture(&cap);
	e = heif_decode_image(handle, &img, heif_colorspace_YCbCr, ch, dopt);
	hevcdec_capture(NULL);
	pthread_mutex_unlock(&decode_lock);
	heif_image_release(img);
	if (!cap.done) {
		log_msg(LOG_ERR, "heic: decoding: %s", e.code ? e.message : "no picture taken");
		return e.code == heif_error_Memory_allocation_error ? -ENOMEM : -EINVAL;
	}
	for (int i = 0; i < pl->nplanes; i++)
		pad_plane(pl, i, cap.w[i], cap.h[i]);
	return 0;
}

/* The picture as libheif hands it out (through RGB and back). */
static int decode_libheif(const struct heif_image_handle *handle, enum heif_chroma ch,
			  struct heif_decoding_options *dopt, struct photo_planes *pl)
{
	static const enum heif_channel chan[3] = {heif_channel_Y, heif_channel_Cb, heif_channel_Cr};
	struct heif_image *img = NULL;
	int ret;

	pthread_mutex_lock(&decode_lock);
	ret = heif_errno(heif_decode_image(handle, &img, heif_colorspace_YCbCr, ch, dopt),
			 "decoding");
	pthread_mutex_unlock(&decode_lock);
	if (ret)
		return ret;
	if (heif_image_get_width(img, heif_channel_Y) != pl->width ||
	    heif_image_get_height(img, heif_channel_Y) != pl->height ||
	    heif_image_get_chroma_format(img) != ch ||
	    heif_image_get_bits_per_pixel(img, heif_channel_Y) != 8) {
		log_msg(LOG_ERR, "heic: decoded %dx%d chroma %d, expected %dx%d chroma %d",
			heif_image_get_width(img, heif_channel_Y),
			heif_image_get_height(img, heif_channel_Y),
			heif_image_get_chroma_format(img), pl->width, pl->height, ch);
		ret = -EINVAL;
		goto out;
	}
	for (int i = 0; i < pl->nplanes; i++) {
		int stride, rw = heif_image_get_width(img, chan[i]);
		int rh = heif_image_get_height(img, chan[i]);
		const uint8_t *src = heif_image_get_plane_readonly(img, chan[i], &stride);

		if (!src || rw > pl->pw[i] || rh > pl->ph[i] || rw < 1 || rh < 1) {
			log_msg(LOG_ERR, "heic: unexpected plane %d size %dx%d", i, rw, rh);
			ret = -EINVAL;
			goto out;
		}
		for (int y = 0; y < rh; y++)
			memcpy(pl->plane[i] + (size_t)y * pl->stride[i], src + (size_t)y * stride,
			       (size_t)rw);
		pad_plane(pl, i, rw, rh);
	}
out:
	heif_image_release(img);
	return ret;
}

int heic_decode_planes(const struct heif_image_handle *handle, int subsamp, int width, int height,
		       int raw, struct photo_planes *pl)
{
	enum heif_chroma ch = subsamp == TJSAMP_444   ? heif_chroma_444
			      : subsamp == TJSAMP_422 ? heif_chroma_422
						      : heif_chroma_420;
	struct heif_decoding_options *dopt;
	int ret;

	memset(pl, 0, sizeof(*pl));
	hevcdec_init();
	dopt = heif_decoding_options_alloc();
	if (!dopt)
		return -ENOMEM;
	/* the stored pixels, unrotated: the EXIF orientation still applies */
	dopt->ignore_transformations = 1;
	ret = photo_planes_alloc(pl, width, height, subsamp);
	if (!ret)
		ret = raw ? decode_raw(handle, ch, dopt, pl) : decode_libheif(handle, ch, dopt, pl);
	if (ret)
		photo_planes_release(pl);
	heif_decoding_options_free(dopt);
	return ret;
}

/* ---- where an item's bytes lie: the iloc box (ISO/IEC 14496-12 8.11.3) ---- */

/* Largest meta box we read (a photo's is a few KB; a grid's, tens). */
#define HEIC_MAX_META_BYTES (16u << 20)

/* A big-endian unsigned of n bytes (0, 4 or 8) at p. */
static uint64_t be_n(const uint8_t *p, int n)
{
	uint64_t v = 0;

	for (int i = 0; i < n; i++)
		v = v << 8 | p[i];
	return v;
}

int heic_iloc_find(const uint8_t *meta, size_t len, uint32_t id, uint64_t *off, uint64_t *size)
{
	size_t p = 4; /* the meta box's version and flags */

	while (p + 8 <= len) {
		uint64_t box = be_n(meta + p, 4);
		size_t hdr = 8, q, end;
		int v, os, ls, bs, is, count;

		if (box == 1) {
			if (p + 16 > len)
				return -EINVAL;
			box = be_n(meta + p + 8, 8);
			hdr = 16;
		}
		if (box < hdr || box > len - p)
			return -EINVAL;
		if (memcmp(meta + p + 4, "iloc", 4) != 0) {
			p += (size_t)box;
			continue;
		}
		q = p + hdr;
		end = p + (size_t)box;
		if (q + 8 > end)
			return -EINVAL;
		v = meta[q];
		if (v > 2)
			return -ENOTSUP;
		os = meta[q + 4] >> 4, ls = meta[q + 4] & 15;
		bs = meta[q + 5] >> 4, is = v ? meta[q + 5] & 15 : 0;
		if ((os && os != 4 && os != 8) || (ls && ls != 4 && ls != 8) ||
		    (bs && bs != 4 && bs != 8) || (is && is != 4 && is != 8))
			return -EINVAL;
		q += 6;
		count = (int)be_n(meta + q, v < 2 ? 2 : 4);
		q += v < 2 ? 2 : 4;
		for (int i = 0; i < count; i++) {
			uint32_t item;
			int method = 0, extents;
			uint64_t base;

			if (q + (v < 2 ? 2 : 4) + (v ? 2 : 0) + 2 + (size_t)bs + 2 > end)
				return -EINVAL;
			item = (uint32_t)be_n(meta + q, v < 2 ? 2 : 4);
			q += v < 2 ? 2 : 4;
			if (v) {
				method = meta[q + 1] & 15;
				q += 2;
			}
			q += 2; /* data reference index */
			base = be_n(meta + q, bs);
			q += (size_t)bs;
			extents = (int)be_n(meta + q, 2);
			q += 2;
			if (q + (size_t)extents * (size_t)(is + os + ls) > end)
				return -EINVAL;
			if (item == id) {
				/* one extent in the file itself: the data is contiguous */
				if (method != 0 || extents != 1)
					return -ENOTSUP;
				*off = base + be_n(meta + q + is, os);
				*size = be_n(meta + q + is + os, ls);
				return 0;
			}
			q += (size_t)extents * (size_t)(is + os + ls);
		}
		return -ENOENT;
	}
	return -ENOENT;
}

int heic_meta_read(int fd, const uint8_t *buf, size_t len, uint8_t **meta, size_t *meta_len)
{
	uint64_t pos = 0;
	struct stat st;

	if (!buf) {
		if (fstat(fd, &st) == -1)
			return -errno;
		len = (size_t)st.st_size;
	}
	while (pos + 8 <= len) {
		uint8_t h[16];
		uint64_t box;
		size_t hdr = 8;

		if (buf)
			memcpy(h, buf + pos, pos + 16 <= len ? 16 : 8);
		else if (pread(fd, h, sizeof(h), (off_t)pos) < 8)
			return -EIO;
		box = be_n(h, 4);
		if (box == 1) {
			if (pos + 16 > len)
				return -EINVAL;
			box = be_n(h + 8, 8);
			hdr = 16;
		} else if (box == 0) {
			box = len - pos; /* to the end of the file */
		}
		if (box < hdr || box > len - pos)
			return -EINVAL;
		if (!memcmp(h + 4, "meta", 4)) {
			size_t n = (size_t)box - hdr;
			uint8_t *m;
			ssize_t got;

			if (box > HEIC_MAX_META_BYTES)
				return -EINVAL;
			m = malloc(n ? n : 1);
			if (!m)
				return -ENOMEM;
			if (buf) {
				memcpy(m, buf + pos + hdr, n);
			} else {
				got = pread(fd, m, n, (off_t)(pos + hdr));
				if (got != (ssize_t)n) {
					int err = got == -1 ? -errno : -EINVAL;
					free(m);
					return err;
				}
			}
			*meta = m;
			*meta_len = n;
			return 0;
		}
		pos += box;
	}
	return -ENOENT;
}

/* ---- a HEIC made of another's coded pictures (hevccopy.c) ---- */

/* One copy encode at a time: the copy encoder's source is process-wide. */
static pthread_mutex_t copy_lock = PTHREAD_MUTEX_INITIALIZER;

/* The coded data of the picture of handle, as a decoder would get it. */
static int capture_nals(const struct heif_image_handle *handle, struct hevcdec_nals *c)
{
	struct heif_decoding_options *dopt = heif_decoding_options_alloc();
	struct heif_image *img = NULL;
	struct heif_error e;

	if (!dopt)
		return -ENOMEM;
	dopt->ignore_transformations = 1;
	memset(c, 0, sizeof(*c));
	pthread_mutex_lock(&decode_lock);
	hevcdec_capture_nals(c);
	e = heif_decode_image(handle, &img, heif_colorspace_undefined, heif_chroma_undefined, dopt);
	hevcdec_capture_nals(NULL);
	pthread_mutex_unlock(&decode_lock);
	heif_image_release(img);
	heif_decoding_options_free(dopt);
	if (!c->done) {
		log_msg(LOG_ERR, "heic: taking the coded picture: %s",
			e.code ? e.message : "nothing handed over");
		free(c->data);
		memset(c, 0, sizeof(*c));
		return e.code == heif_error_Memory_allocation_error ? -ENOMEM : -EINVAL;
	}
	return 0;
}

void heic_coded_release(struct heic_coded *c)
{
	if (!c)
		return;
	free(c->main.data);
	free(c->thumb.data);
	memset(c, 0, sizeof(*c));
}

int heic_capture_coded(const struct heif_image_handle *handle, int width, int height, int subsamp,
		       struct heic_coded *c)
{
	struct heif_image_handle *th = NULL;
	heif_item_id id;
	int tw, tth, ret;

	memset(c, 0, sizeof(*c));
	hevcdec_init();
	c->width = width;
	c->height = height;
	c->subsamp = subsamp;
	ret = capture_nals(handle, &c->main);
	if (ret)
		return ret;
	if (heic_check_thumbnail(handle, width, height)) {
		log_msg(LOG_ERR, "heic: the thumbnail is not the one expected");
		ret = -EINVAL;
		goto out_release;
	}
	if (!thumb_size(width, height, &tw, &tth))
		return 0;
	if (heif_image_handle_get_list_of_thumbnail_IDs(handle, &id, 1) != 1 ||
	    heif_image_handle_get_thumbnail(handle, id, &th).code != heif_error_Ok) {
		ret = -EINVAL;
		goto out_release;
	}
	ret = capture_nals(th, &c->thumb);
	heif_image_handle_release(th);
out_release:
	if (ret)
		heic_coded_release(c);
	return ret;
}

/* A heif_image of w x h at subsamp whose samples nothing reads (the copy
 * encoder takes the picture from its capture), coloured for ji. */
static int blank_image(int w, int h, int subsamp, const struct jpeg_info *ji, size_t icc_max,
		       struct heif_image **out)
{
	struct photo_planes pl = {.width = w, .height = h, .subsamp = subsamp};
	enum heif_chroma ch = subsamp == TJSAMP_444   ? heif_chroma_444
			      : subsamp == TJSAMP_422 ? heif_chroma_422
						      : heif_chroma_420;
	static const enum heif_channel chan[3] = {heif_channel_Y, heif_channel_Cb, heif_channel_Cr};
	struct heif_image *img;
	int ret;

	ret = heif_errno(heif_image_create(w, h, heif_colorspace_YCbCr, ch, &img),
			 "heif_image_create");
	for (int i = 0; !ret && i < 3; i++) {
		int pw, ph;
		photo_plane_size(&pl, i, &pw, &ph);
		ret = heif_errno(heif_image_add_plane(img, chan[i], pw, ph, 8),
				 "heif_image_add_plane");
	}
	if (!ret)
		ret = set_colour(img, ji, icc_max);
	if (ret) {
		heif_image_release(img);
		return ret;
	}
	*out = img;
	return 0;
}

/* Encode img with the copy encoder handing over src. */
static int copy_encode(struct heif_context *ctx, struct heif_encoder *enc,
		       const struct heif_encoding_options *eo, struct heif_image *img,
		       const struct hevcdec_nals *src, struct heif_image_handle **h)
{
	int ret;

	pthread_mutex_lock(&copy_lock);
	hevccopy_source(src);
	ret =
	    heif_errno(heif_context_encode_image(ctx, img, enc, eo, h), "writing a coded picture");
	hevccopy_source(NULL);
	pthread_mutex_unlock(&copy_lock);
	return ret;
}

int heic_encode_coded(const struct heic_coded *c, const struct jpeg_info *ji,
		      struct heif_context **out)
{
	const struct heif_encoder_descriptor *desc = NULL;
	struct heif_context *ctx;
	struct heif_encoder *enc = NULL;
	struct heif_encoding_options *eo = NULL;
	struct heif_image *img = NULL, *timg = NULL;
	struct heif_image_handle *h = NULL, *th = NULL;
	int ret, tw, tth;

	ret = hevccopy_init();
	if (ret)
		return ret;
	if (heif_get_encoder_descriptors(heif_compression_HEVC, HEVCCOPY_ID, &desc, 1) != 1)
		return -ENOTSUP;
	ctx = heif_context_alloc();
	if (!ctx)
		return -ENOMEM;
	eo = encoding_options(ji);
	if (!eo) {
		ret = -ENOMEM;
		goto out_free_ctx;
	}
	ret = heif_errno(heif_context_get_encoder(ctx, desc, &enc), "the copy encoder");
	if (ret)
		goto out_free_options;
	ret = blank_image(c->width, c->height, c->subsamp, ji, SIZE_MAX, &img);
	if (!ret)
		ret = copy_encode(ctx, enc, eo, img, &c->main, &h);
	if (ret)
		goto out_release;
	if (c->thumb.len) {
		if (!thumb_size(c->width, c->height, &tw, &tth)) {
			ret = -EINVAL;
			goto out_release;
		}
		ret = blank_image(tw, tth, c->subsamp, ji, THUMB_ICC_MAX, &timg);
		if (!ret)
			ret = copy_encode(ctx, enc, eo, timg, &c->thumb, &th);
		/* swapped, as in encode_thumbnail */
		if (!ret)
			ret = heif_errno(heif_context_assign_thumbnail(ctx, th, h),
					 "linking the thumbnail");
		if (ret)
			goto out_release;
	}
	ret = add_metadata(ctx, h, ji);
	if (ret)
		goto out_release;
	*out = ctx;
	ctx = NULL;
out_release:
	heif_image_handle_release(th);
	heif_image_handle_release(h);
	heif_image_release(timg);
	heif_image_release(img);
	heif_encoder_release(enc);
out_free_options:
	heif_encoding_options_free(eo);
out_free_ctx:
	heif_context_free(ctx);
	return ret;
}
