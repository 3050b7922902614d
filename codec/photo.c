/* photo — JPEG -> HEIC archiving (quality prediction, one measured encode,
 * verification, keep decisions) and the legacy JPEG view rendered back from
 * the HEIC. */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <libheif/heif.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <turbojpeg.h>
#include <unistd.h>

/*
 * The hevcfs header item: everything the view needs that the HEIF boxes do
 * not say, so the backing file alone rebuilds the view byte for byte.
 * Stored as a metadata item of type "mime" with the content type below,
 * attached to the primary image. Layout (integers big-endian):
 *   0  8  magic "HVFSJPEG"
 *   8  1  version (5; 1 to 4 are read too, see below)
 *   9  1  view quality (TurboJPEG 1..100)
 *  10  1  subsampling of the original (TJSAMP_444/422/420/GRAY: 0/1/2/3)
 *  11  1  EXIF orientation of the original (informational)
 *  12  4  width, 16 4 height (stored pixels, unrotated)
 *  20  8  size of the original JPEG
 *  28  8  exact size of the view
 *  36 16  lengths of the four sources (Exif payload, XMP, Extended XMP, ICC;
 *         0 when absent) as the HEIC's own items hold them
 *  52  4  length N of the segment records that follow
 *  56  1  HEVC quality (libheif 0..100)                        \
 *  57  3  zero                                                  | version 2
 *  60  4  luma SSIM of the HEIC vs the original, x 1e6 (0..1e6) | only
 *  64  4  luma SSIM of the view vs the original, x 1e6         /
 *  68  N  (232 from version 4 on, 236 from 5 on) one record per APPn and COM segment of
 *         the original, in order:
 *         0x00, then the segment verbatim (marker, length, payload): IPTC,
 *         maker notes, comments, vendor segments;
 *         or a source (1 Exif, 2 XMP, 3 Extended XMP, 4 ICC), marker byte,
 *         u16 prefix length P, P payload bytes (e.g. "ICC_PROFILE\0", seq,
 *         count), u32 offset and u16 length of the source bytes that end
 *         the payload. So Exif, XMP and ICC are not stored twice.
 *         From version 4 on, a segment of zero bytes is 0x10, the marker
 *         byte and its u16 length field.
 * Version 4 adds, between byte 68 and the records (which start at 232):
 *  68  1  flags: 1 = the view keeps its own size (its scan did not fit the
 *         original's layout at any quality meeting the view's SSIM floor)
 *  69  3  zero
 *  72  4  what the original carried (CODEC_CARRIES_*)
 *  76  4  bytes of padding in the view (jpeg.c: APP15 segments)
 *  80  8  length T of the trailer (the bytes after the primary's EOI)
 *  88  8  length V of its last part that is a motion photo's MP4, stored in
 *         the top-level mpvd box that ends the file (the rest, T - V bytes,
 *         is the trailer item's data)
 *  96  8  file offset where the whole trailer lies contiguous (the mpvd
 *         payload or the trailer item's data), 0 when it does not
 * 104 32  SHA-256 of the trailer
 * 136 32  SHA-256 of the original JPEG
 * 168 32  SHA-256 of the view's image data (first table marker through EOI;
 *         from version 5 on, without the fill before the EOI)
 * 200 32  SHA-256 of the whole stored file with these 32 bytes counted as
 *         zeros (the file checks itself)
 * The view of version 4 is the original's layout: SOI, the segments, the
 * padding, the scan ending at the original's EOI offset, the trailer; so it
 * has the original's size (unless flag 1 says otherwise).
 * Version 5 adds, between byte 232 and the records (which start at 236):
 * 232  4  fill F: bytes 0xFF the view has before its EOI marker (T.81
 *         B.1.1.2 allows fill before any marker)
 * Its view is SOI, the segments, the padding, the tables (TurboJPEG's at
 * the view quality: jpeg_view_tables), the entropy-coded data, F fill
 * bytes, EOI, the trailer. The padding and the fill share the room the
 * original's scan left: the padding puts the end of the tables on a
 * boundary of 64 KiB (or 16, 8, 4 KiB, as the room allows), so a reader of
 * whole blocks from the start (exiftool reads 8 KiB at a time, stdio
 * st_blksize) that stops at the SOS segment reads no image data; the fill
 * keeps the last 64 bytes (exiftool's look for a trailer) out of it too.
 * Everything but the entropy-coded data is then known without a render.
 * Version 3 has the layout of version 2; its view (and the SSIMs) are made
 * of the planes as the HEVC decoder produced them. Versions 1 and 2 were
 * made of the planes libheif 1.15 hands out, converted to RGB and back: their
 * views are rendered that way still, so that they keep the size recorded.
 * Versions 1 to 3 have no padding and no trailer: their view is SOI, the
 * segments, then the image data.
 * Version 1 (written before the quality and SSIMs were recorded) is the same
 * without bytes 56..67: its records start at 56. A reader that sees another
 * version refuses the file (-EINVAL).
 */
#define HDR_ITEM_TYPE "mime"
#define HDR_CONTENT_TYPE "application/x-hevcfs-jpeg-header"
#define HDR_MAGIC "HVFSJPEG"
#define HDR_VERSION 5
/* The first version whose view is made of the decoder's own planes. */
#define HDR_VERSION_RAW 3
/* The first version whose view is the original's layout. */
#define HDR_VERSION_LAYOUT 4
/* The first version with fill and the tables recorded. */
#define HDR_VERSION_FILL 5
#define HDR_FIXED 232
#define HDR_FIXED_V5 236
#define HDR_FIXED_V2 68
#define HDR_FIXED_V1 56
#define HDR_SSIM_SCALE 1e6
/* Offsets of the version 4 fields (above). */
#define HDR_FLAGS 68
#define HDR_CARRIES 72
#define HDR_PAD 76
#define HDR_TRAILER_LEN 80
#define HDR_VIDEO_LEN 88
#define HDR_TAIL_SRC 96
#define HDR_TRAILER_SUM 104
#define HDR_ORIG_SUM 136
#define HDR_SCAN_SUM 168
#define HDR_SELF_SUM 200
#define HDR_FILL 232
#define HDR_F_OWN_SIZE 1u
/* A segment record (version 4 on) for a segment whose payload is all zero
 * bytes (the padding of a view that comes back tagged): 0x10, marker byte,
 * u16 length field. */
#define HDR_REC_ZEROS 0x10
/* The trailer item: the trailer bytes not in an mpvd box, verbatim. */
#define TRAILER_CONTENT_TYPE "application/x-hevcfs-jpeg-trailer"
/* What libheif calls an XMP item. */
#define XMP_CONTENT_TYPE "application/rdf+xml"
/* libheif puts a 4-byte offset to the TIFF header before the Exif payload. */
#define EXIF_ITEM_PREFIX 4

/* Largest total of APPn/COM segments we archive: the header item and the
 * metadata items stay under heic_get_item's HEIC_MAX_ITEM_BYTES. */
#define PHOTO_MAX_SEGS_BYTES (HEIC_MAX_ITEM_BYTES / 2)

/* Largest HEIC we read back whole (a photo we wrote is far smaller). */
#define PHOTO_MAX_HEIC_BYTES (1ull << 30)

/*
 * H.265 Annex A, Table A.8: the highest level (6.2) caps a picture at
 * MaxLumaPs = 35,651,584 luma samples and each side at sqrt(8 * MaxLumaPs) =
 * 16,888. libheif 1.15 has no API to write a grid of tiles, so larger photos
 * (panoramas) are kept rather than written as out-of-level streams.
 */
#define HEVC_MAX_LUMA_PS 35651584ull
#define HEVC_MAX_SIDE 16888

/*
 * x265 settings for photos, measured on the corpus phone photos (jpg/mobile,
 * jpg/hdr: 6 photos, 3-9 MP) on 2 cores, each at the lowest quality with
 * luma SSIM >= 0.99. libheif's x265 plugin overrides much of what a preset
 * sets for a single intra picture (it forces rskip 0, rect, amp, aq-mode 1,
 * psy-rd 1): medium, fast, faster and veryfast land within 0.1% of each
 * other's bytes and 6% of their time; superfast and ultrafast need lower
 * CRFs for the same SSIM and cost 5-25% more bytes. What costs the time is
 * the 8x8 CUs (and their 4x4 intra partitions): min-cu-size=16 takes 2.8x
 * less CPU for 1% more bytes. rdoq-level=2 (what "slow" adds) then takes
 * 3-8% off the bytes at the same quality for twice the encode time, which
 * one encode per photo affords (slow itself: the same bytes, 15% slower;
 * without min-cu-size=16: 1% fewer bytes, 2.5x the time). opts->preset
 * overrides the preset.
 */
#ifndef PHOTO_DEF_PRESET
#define PHOTO_DEF_PRESET "fast"
#endif
#ifndef PHOTO_DEF_TUNE
#define PHOTO_DEF_TUNE "ssim"
#endif
#ifndef PHOTO_X265
#define PHOTO_X265 "min-cu-size=16,rdoq-level=2"
#endif

/* Auto quality. libheif 1.15 turns quality q into x265 CRF (100 - q) / 2 in
 * whole steps, so q 2k-1 and 2k give the same bytes: qualities are searched
 * on even values. (A fractional CRF through "x265:crf" changes nothing: x265
 * rounds a single picture's QP to a whole step.) log(1 - SSIM) is close to
 * linear in q, with a slope of about -0.08 on the corpus phone photos. The
 * first guess is the quality that met the floor on most of them. */
#define Q_START 54
#define Q_GRID 2
#define Q_PRIOR_SLOPE (-0.08)
#define Q_MIN 10
#define Q_MAX 96
/* Full-size encodes at most (one when the prediction holds). */
#define Q_MAX_TRIES 4

/*
 * The prediction: trial encodes of a mosaic of MOSAIC_TILE-square tiles
 * taken on a regular grid across the photo (about 1/MOSAIC_SHARE of its
 * pixels, so each trial costs that share of a full encode) find the lowest
 * quality whose mosaic meets the floor, and the photo is encoded full size
 * at that quality plus MOSAIC_MARGIN. On the bench's 9 photos (corpus phone
 * photos and generated 12 MP ones) the mosaic's SSIM was within 0.0005 of
 * the photo's at every quality from 46 to 60, and 64-sample tiles named
 * the photo's own lowest passing quality on all 7 whose pass/fail step lay
 * in that range (128-sample tiles: one step high on one); all 9 were
 * archived with one full-size encode. A miss costs one more full encode,
 * one step too high ~9% of that photo's bytes: no margin is added. Photos
 * under MOSAIC_MIN_PIXELS are searched full size: they are cheap, and too
 * few tiles would not represent them.
 */
#define MOSAIC_TILE 64
#define MOSAIC_SHARE 16
#define MOSAIC_MARGIN 0
#define MOSAIC_MIN_PIXELS 2000000
#define PROBE_MAX_TRIES 6

/* Keep the JPEG unless the HEIC is at most this fraction of it. */
#define MAX_SIZE_RATIO 0.90

/* What the header item says, parsed (segs borrowed from the item buffer). */
struct view_hdr {
	int version;
	int view_quality, subsamp, orientation;
	int width, height;
	uint64_t orig_bytes, view_bytes;
	int quality;			  /* HEVC quality (0: version 1, not recorded) */
	double ssim, view_ssim;		  /* as measured at archive time (0: version 1) */
	uint32_t src_len[JPEG_SRC_COUNT]; /* index by enum jpeg_src */
	const uint8_t *recs;		  /* segment records, borrowed */
	size_t recs_len;
	/* version 4 (zero before) */
	uint32_t flags, carries, pad;
	uint64_t trailer_len, video_len, tail_src;
	uint8_t trailer_sum[SUM_LEN], orig_sum[SUM_LEN], scan_sum[SUM_LEN], self_sum[SUM_LEN];
	/* version 5 (zero before) */
	uint32_t fill;
};

/* One full-size encode: the HEIC as it will be written (but for the
 * header item's measured fields, patched in place at the end) and its
 * decoded planes, which the SSIM and the view are computed from. */
struct attempt {
	int q;
	double ssim;
	uint8_t *heic; /* serialised HEIC, malloc'd */
	size_t heic_len;
	size_t hdr_off;	 /* offset of the header item's bytes in heic */
	size_t item_off; /* offset of the trailer item's bytes (0: none) */
	struct photo_planes dec;
};

/* Everything photo_archive holds, released in one place. */
struct photo_job {
	uint8_t *src;
	size_t src_len;
	struct jpeg_info ji;
	struct jpeg_info enc_ji; /* ji as the HEIC's items get it (XMP rewritten) */
	struct photo_trailer tr;
	uint8_t *heic_xmp; /* the HEIC's XMP when not the original's */
	size_t heic_xmp_len;
	uint8_t *scan; /* the view's image data */
	size_t scan_len;
	struct photo_planes orig, mosaic;
	struct view_hdr vh; /* the header item's fields */
	uint8_t *hdr;	    /* vh packed with the segment records */
	size_t hdr_len;
	struct attempt best, cur;
	uint8_t *view, *check, *check_item, *check_segs;
	size_t view_len, check_len, check_segs_len;
	struct heif_context *check_ctx;
	struct heif_image_handle *check_handle;
	int encodes, probes; /* full-size and mosaic encodes made */
};

static void attempt_release(struct attempt *a)
{
	free(a->heic);
	photo_planes_release(&a->dec);
	memset(a, 0, sizeof(*a));
}

static void job_release(struct photo_job *j)
{
	free(j->src);
	jpeg_info_release(&j->ji);
	free(j->heic_xmp);
	free(j->scan);
	photo_planes_release(&j->orig);
	photo_planes_release(&j->mosaic);
	free(j->hdr);
	attempt_release(&j->best);
	attempt_release(&j->cur);
	free(j->view);
	free(j->check);
	free(j->check_item);
	free(j->check_segs);
	heif_image_handle_release(j->check_handle);
	heif_context_free(j->check_ctx);
}

static void put_be32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24), p[1] = (uint8_t)(v >> 16), p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}

static void put_be64(uint8_t *p, uint64_t v)
{
	put_be32(p, (uint32_t)(v >> 32));
	put_be32(p + 4, (uint32_t)v);
}

static uint32_t get_be32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static uint64_t get_be64(const uint8_t *p)
{
	return (uint64_t)get_be32(p) << 32 | get_be32(p + 4);
}

static void put_be16(uint8_t *p, unsigned v)
{
	p[0] = (uint8_t)(v >> 8), p[1] = (uint8_t)v;
}

static unsigned get_be16(const uint8_t *p)
{
	return (unsigned)p[0] << 8 | p[1];
}

/* The reference that rebuilds the segment at seg_off, if any. */
static const struct jpeg_ref *ref_at(const struct jpeg_info *ji, size_t seg_off)
{
	for (size_t i = 0; i < ji->nrefs; i++)
		if (ji->refs[i].seg_off == seg_off)
			return &ji->refs[i];
	return NULL;
}

/* An SSIM as the header stores it. */
static uint32_t ssim_word(double ssim)
{
	return ssim <= 0   ? 0
	       : ssim >= 1 ? (uint32_t)HDR_SSIM_SCALE
			   : (uint32_t)lround(ssim * HDR_SSIM_SCALE);
}

/* Is the buffer all zero bytes? */
static int all_zeros(const uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (p[i])
			return 0;
	return 1;
}

/* Build the header item (layout above, current version) for vh and the
 * segments of ji into a malloc'd buffer. */
static int hdr_pack(const struct view_hdr *vh, const struct jpeg_info *ji, uint8_t **out,
		    size_t *len)
{
	/* a record is never longer than its segment plus its own 9 bytes */
	size_t fixed = HDR_FIXED_V5, n = fixed;
	size_t cap = fixed + ji->segs_len + 9 * (ji->segs_len / 4 + 1);
	uint8_t *p;

	if (cap > UINT32_MAX)
		return -EFBIG;
	p = malloc(cap);
	if (!p)
		return -ENOMEM;
	memcpy(p, HDR_MAGIC, 8);
	p[8] = HDR_VERSION;
	p[9] = (uint8_t)vh->view_quality;
	p[10] = (uint8_t)vh->subsamp;
	p[11] = (uint8_t)vh->orientation;
	put_be32(p + 12, (uint32_t)vh->width);
	put_be32(p + 16, (uint32_t)vh->height);
	put_be64(p + 20, vh->orig_bytes);
	put_be64(p + 28, vh->view_bytes);
	for (int i = 1; i < JPEG_SRC_COUNT; i++)
		put_be32(p + 36 + 4 * (i - 1), vh->src_len[i]);
	p[56] = (uint8_t)vh->quality;
	p[57] = p[58] = p[59] = 0;
	put_be32(p + 60, ssim_word(vh->ssim));
	put_be32(p + 64, ssim_word(vh->view_ssim));
	put_be32(p + HDR_FLAGS, vh->flags);
	put_be32(p + HDR_CARRIES, vh->carries);
	put_be32(p + HDR_PAD, vh->pad);
	put_be64(p + HDR_TRAILER_LEN, vh->trailer_len);
	put_be64(p + HDR_VIDEO_LEN, vh->video_len);
	put_be64(p + HDR_TAIL_SRC, vh->tail_src);
	memcpy(p + HDR_TRAILER_SUM, vh->trailer_sum, SUM_LEN);
	memcpy(p + HDR_ORIG_SUM, vh->orig_sum, SUM_LEN);
	memcpy(p + HDR_SCAN_SUM, vh->scan_sum, SUM_LEN);
	memcpy(p + HDR_SELF_SUM, vh->self_sum, SUM_LEN);
	put_be32(p + HDR_FILL, vh->fill);
	for (size_t off = 0; off < ji->segs_len;) {
		const uint8_t *seg = ji->segs + off;
		size_t seglen = 2 + get_be16(seg + 2);
		const struct jpeg_ref *r = ref_at(ji, off);

		if (!r && seglen >= 4 && all_zeros(seg + 4, seglen - 4)) {
			p[n++] = HDR_REC_ZEROS;
			p[n++] = seg[1];
			put_be16(p + n, (unsigned)(seglen - 2));
			n += 2;
		} else if (r) {
			p[n++] = (uint8_t)r->src;
			p[n++] = seg[1];
			put_be16(p + n, (unsigned)r->prefix);
			memcpy(p + n + 2, seg + 4, r->prefix);
			n += 2 + r->prefix;
			put_be32(p + n, (uint32_t)r->src_off);
			put_be16(p + n + 4, (unsigned)r->len);
			n += 6;
		} else {
			p[n++] = JPEG_SRC_NONE;
			memcpy(p + n, seg, seglen);
			n += seglen;
		}
		off += seglen;
	}
	put_be32(p + 52, (uint32_t)(n - fixed));
	*out = p;
	*len = n;
	return 0;
}

/* Parse and check a header item (versions 1 to 5). 0 or -EINVAL (logged). */
static int hdr_parse(const uint8_t *p, size_t len, struct view_hdr *vh)
{
	size_t fixed;

	memset(vh, 0, sizeof(*vh));
	if (len < HDR_FIXED_V1 || memcmp(p, HDR_MAGIC, 8) != 0) {
		log_msg(LOG_ERR, "photo: hevcfs header item is malformed");
		return -EINVAL;
	}
	if (p[8] < 1 || p[8] > HDR_VERSION) {
		log_msg(LOG_ERR, "photo: hevcfs header version %u not supported", p[8]);
		return -EINVAL;
	}
	vh->version = p[8];
	fixed = vh->version == 1		   ? HDR_FIXED_V1
		: vh->version < HDR_VERSION_LAYOUT ? HDR_FIXED_V2
		: vh->version < HDR_VERSION_FILL   ? HDR_FIXED
						   : HDR_FIXED_V5;
	if (len < fixed) {
		log_msg(LOG_ERR, "photo: hevcfs header item is malformed");
		return -EINVAL;
	}
	if (vh->version >= HDR_VERSION_FILL)
		vh->fill = get_be32(p + HDR_FILL);
	if (vh->version >= 2) {
		vh->quality = p[56];
		vh->ssim = get_be32(p + 60) / HDR_SSIM_SCALE;
		vh->view_ssim = get_be32(p + 64) / HDR_SSIM_SCALE;
	}
	if (vh->version >= HDR_VERSION_LAYOUT) {
		vh->flags = get_be32(p + HDR_FLAGS);
		vh->carries = get_be32(p + HDR_CARRIES);
		vh->pad = get_be32(p + HDR_PAD);
		vh->trailer_len = get_be64(p + HDR_TRAILER_LEN);
		vh->video_len = get_be64(p + HDR_VIDEO_LEN);
		vh->tail_src = get_be64(p + HDR_TAIL_SRC);
		memcpy(vh->trailer_sum, p + HDR_TRAILER_SUM, SUM_LEN);
		memcpy(vh->orig_sum, p + HDR_ORIG_SUM, SUM_LEN);
		memcpy(vh->scan_sum, p + HDR_SCAN_SUM, SUM_LEN);
		memcpy(vh->self_sum, p + HDR_SELF_SUM, SUM_LEN);
	}
	vh->view_quality = p[9];
	vh->subsamp = p[10];
	vh->orientation = p[11];
	vh->width = (int)get_be32(p + 12);
	vh->height = (int)get_be32(p + 16);
	vh->orig_bytes = get_be64(p + 20);
	vh->view_bytes = get_be64(p + 28);
	for (int i = 1; i < JPEG_SRC_COUNT; i++)
		vh->src_len[i] = get_be32(p + 36 + 4 * (i - 1));
	vh->recs_len = get_be32(p + 52);
	vh->recs = p + fixed;
	if (vh->recs_len != len - fixed || vh->view_quality < 1 || vh->view_quality > 100 ||
	    (vh->subsamp != TJSAMP_444 && vh->subsamp != TJSAMP_422 && vh->subsamp != TJSAMP_420 &&
	     vh->subsamp != TJSAMP_GRAY) ||
	    vh->width < 1 || vh->height < 1 || vh->width > HEVC_MAX_SIDE ||
	    vh->height > HEVC_MAX_SIDE ||
	    (uint64_t)vh->width * (uint64_t)vh->height > HEVC_MAX_LUMA_PS || vh->quality > 100 ||
	    vh->ssim > 1 || vh->view_ssim > 1 || !jpeg_pad_ok(vh->pad) ||
	    vh->trailer_len > vh->orig_bytes || vh->video_len > vh->trailer_len ||
	    vh->view_bytes > PHOTO_MAX_HEIC_BYTES || vh->fill > vh->view_bytes) {
		log_msg(LOG_ERR, "photo: hevcfs header item is inconsistent");
		return -EINVAL;
	}
	return 0;
}

/* The sources the segment records draw on, fetched from the HEIC's items
 * (each malloc'd; base/len describe the source bytes inside). */
struct sources {
	uint8_t *item[JPEG_SRC_COUNT];
	const uint8_t *base[JPEG_SRC_COUNT];
	size_t len[JPEG_SRC_COUNT];
};

static void sources_release(struct sources *s)
{
	for (int i = 0; i < JPEG_SRC_COUNT; i++)
		free(s->item[i]);
	memset(s, 0, sizeof(*s));
}

/* Find the XMP item of exactly len bytes, other than skip (XMP and
 * Extended XMP are both "mime" items of the XMP content type). */
static int find_xmp(const struct heif_image_handle *h, size_t len, heif_item_id skip,
		    heif_item_id *found)
{
	heif_item_id ids[64];
	int n = heif_image_handle_get_list_of_metadata_block_IDs(h, "mime", ids, 64);

	for (int i = 0; i < n; i++) {
		const char *ct = heif_image_handle_get_metadata_content_type(h, ids[i]);
		if (ids[i] != skip && ct && strcmp(ct, XMP_CONTENT_TYPE) == 0 &&
		    heif_image_handle_get_metadata_size(h, ids[i]) == len) {
			*found = ids[i];
			return 0;
		}
	}
	return -ENOENT;
}

/* Fetch every source vh names from the HEIC. 0, -EINVAL (logged), -ENOMEM. */
static int sources_get(const struct heif_image_handle *h, const struct view_hdr *vh,
		       struct sources *s)
{
	heif_item_id xmp_id = 0;

	memset(s, 0, sizeof(*s));
	for (int i = 1; i < JPEG_SRC_COUNT; i++) {
		size_t want = vh->src_len[i], got = 0;
		heif_item_id id = 0;
		int ret = 0;

		if (!want)
			continue;
		if (want > HEIC_MAX_ITEM_BYTES) {
			log_msg(LOG_ERR, "photo: metadata source %d of %zu bytes refused", i, want);
			return -EINVAL;
		}
		switch (i) {
		case JPEG_SRC_EXIF:
			ret = heic_get_item(h, "Exif", NULL, &s->item[i], &got);
			if (!ret)
				s->base[i] = s->item[i] + EXIF_ITEM_PREFIX;
			want += EXIF_ITEM_PREFIX;
			break;
		case JPEG_SRC_XMP:
		case JPEG_SRC_XMP_EXT:
			ret = find_xmp(h, want, xmp_id, &id);
			if (ret)
				break;
			if (i == JPEG_SRC_XMP)
				xmp_id = id;
			got = want;
			s->item[i] = malloc(want);
			if (!s->item[i])
				ret = -ENOMEM;
			else if (heif_image_handle_get_metadata(h, id, s->item[i]).code)
				ret = -EINVAL;
			s->base[i] = s->item[i];
			break;
		case JPEG_SRC_ICC:
			got = heif_image_handle_get_raw_color_profile_size(h);
			s->item[i] = got == want ? malloc(want) : NULL;
			if (got != want)
				ret = -EINVAL;
			else if (!s->item[i])
				ret = -ENOMEM;
			else if (heif_image_handle_get_raw_color_profile(h, s->item[i]).code)
				ret = -EINVAL;
			s->base[i] = s->item[i];
			break;
		}
		if (ret == -ENOMEM)
			return ret;
		if (ret || got != want) {
			log_msg(LOG_ERR, "photo: metadata source %d missing from the HEIC", i);
			return -EINVAL;
		}
		s->len[i] = vh->src_len[i];
	}
	return 0;
}

/* Rebuild the original APPn/COM segments from the records of vh and the
 * sources in the HEIC. *segs is malloc'd. 0, -EINVAL (logged), -ENOMEM. */
static int rebuild_segs(const struct heif_image_handle *h, const struct view_hdr *vh,
			uint8_t **segs, size_t *segs_len)
{
	const uint8_t *r = vh->recs, *end = vh->recs + vh->recs_len;
	struct sources src;
	size_t cap = 0, n = 0;
	uint8_t *out = NULL;
	int ret;

	ret = sources_get(h, vh, &src);
	if (ret)
		goto out_release;
	/* first pass sizes, second pass copies */
	for (int pass = 0; pass < 2; pass++) {
		n = 0;
		for (r = vh->recs; r < end;) {
			size_t left = (size_t)(end - r);
			if (r[0] == JPEG_SRC_NONE) {
				size_t sl;
				if (left < 5 || r[1] != 0xFF ||
				    (sl = 2 + get_be16(r + 3)) > left - 1)
					goto bad;
				if (pass)
					memcpy(out + n, r + 1, sl);
				n += sl, r += 1 + sl;
			} else if (r[0] == HDR_REC_ZEROS && vh->version >= HDR_VERSION_LAYOUT) {
				size_t sl;
				if (left < 4 || (sl = get_be16(r + 2)) < 2)
					goto bad;
				if (pass) {
					out[n] = 0xFF, out[n + 1] = r[1];
					put_be16(out + n + 2, (unsigned)sl);
					memset(out + n + 4, 0, sl - 2);
				}
				n += 2 + sl, r += 4;
			} else if (r[0] < JPEG_SRC_COUNT) {
				size_t pre, off, len;
				int s = r[0];
				if (left < 4 || (pre = get_be16(r + 2)) + 10 > left)
					goto bad;
				off = get_be32(r + 4 + pre);
				len = get_be16(r + 8 + pre);
				if (!src.base[s] || off > src.len[s] || len > src.len[s] - off ||
				    2 + pre + len > 0xFFFF)
					goto bad;
				if (pass) {
					out[n] = 0xFF, out[n + 1] = r[1];
					put_be16(out + n + 2, (unsigned)(2 + pre + len));
					memcpy(out + n + 4, r + 4, pre);
					memcpy(out + n + 4 + pre, src.base[s] + off, len);
				}
				n += 4 + pre + len, r += 10 + pre;
			} else {
				goto bad;
			}
		}
		if (!pass) {
			cap = n;
			out = malloc(cap ? cap : 1);
			if (!out) {
				ret = -ENOMEM;
				goto out_release;
			}
		}
	}
	*segs = out;
	*segs_len = n;
	out = NULL;
	goto out_release;
bad:
	log_msg(LOG_ERR, "photo: hevcfs header segment records are corrupt");
	ret = -EINVAL;
out_release:
	free(out);
	sources_release(&src);
	return ret;
}

/* Luma SSIM of two planes sets of the same image size. */
static double luma_ssim(const struct photo_planes *a, const struct photo_planes *b)
{
	return codec_ssim_plane(a->plane[0], a->stride[0], b->plane[0], b->stride[0], a->width,
				a->height);
}

static int cancelled(const struct codec_opts *opts)
{
	return opts->cancel && atomic_load(opts->cancel);
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* log(1 - SSIM): the scale on which SSIM is about linear in quality. */
static double ldist(double ssim)
{
	return log(fmax(1.0 - ssim, 1e-6));
}

/* Decode the primary image of the serialised HEIC in buf into dec (at
 * subsamp, w x h). 0 or -errno. */
static int decode_mem(const uint8_t *buf, size_t len, int threads, int subsamp, int w, int h,
		      struct photo_planes *dec)
{
	struct heif_context *ctx;
	struct heif_image_handle *handle;
	int ret;

	ret = heic_open(buf, len, threads, &ctx, &handle);
	if (ret)
		return ret;
	ret = heic_decode_planes(handle, subsamp, w, h, 1, dec);
	heif_image_handle_release(handle);
	heif_context_free(ctx);
	return ret;
}

/* Lay the mosaic tiles of o side by side in m: nx x ny tiles centred on a
 * regular grid, their origins on a 16-sample grid so that chroma tiles line
 * up at any subsampling. 0, -ENOMEM, or -ERANGE when o is too small to
 * sample. */
static int make_mosaic(const struct photo_planes *o, struct photo_planes *m)
{
	const int t = MOSAIC_TILE;
	int hf = o->subsamp == TJSAMP_444 || o->subsamp == TJSAMP_GRAY ? 1 : 2;
	int vf = o->subsamp == TJSAMP_420 ? 2 : 1;
	double n = (double)o->width * o->height / MOSAIC_SHARE / (t * t);
	int nx, ny, ret;

	if ((uint64_t)o->width * (uint64_t)o->height < MOSAIC_MIN_PIXELS || o->width < 2 * t ||
	    o->height < 2 * t)
		return -ERANGE;
	/* as many tiles across and down as the photo's aspect asks */
	nx = (int)lround(sqrt(n * o->width / o->height));
	nx = nx < 1 ? 1 : nx > o->width / t ? o->width / t : nx;
	ny = (int)lround(n / nx);
	ny = ny < 1 ? 1 : ny > o->height / t ? o->height / t : ny;
	ret = photo_planes_alloc(m, nx * t, ny * t, o->subsamp);
	if (ret)
		return ret;
	for (int ty = 0; ty < ny; ty++)
		for (int tx = 0; tx < nx; tx++) {
			int sx = (int)((int64_t)(o->width - t) * (2 * tx + 1) / (2 * nx)) & ~15;
			int sy = (int)((int64_t)(o->height - t) * (2 * ty + 1) / (2 * ny)) & ~15;

			for (int i = 0; i < m->nplanes; i++) {
				int tw = i ? t / hf : t, th = i ? t / vf : t;
				int x0 = i ? sx / hf : sx, y0 = i ? sy / vf : sy;

				for (int y = 0; y < th; y++)
					memcpy(m->plane[i] + (size_t)(ty * th + y) * m->stride[i] +
						   (size_t)tx * tw,
					       o->plane[i] + (size_t)(y0 + y) * o->stride[i] + x0,
					       (size_t)tw);
			}
		}
	return 0;
}

/* Encode the mosaic at quality q (no metadata, no thumbnail), decode it
 * and measure its luma SSIM. 0 or -errno. */
static int probe_quality(struct photo_job *j, const struct heic_params *base, int q, double *ssim)
{
	static const struct jpeg_info bare = {.orientation = 1};
	const struct photo_planes *m = &j->mosaic;
	struct heic_params hp = *base;
	struct heif_context *ctx = NULL;
	struct photo_planes dec = {0};
	uint8_t *buf = NULL;
	size_t len = 0;
	int ret;

	hp.quality = q;
	hp.no_thumbnail = 1;
	ret = heic_encode(m, &bare, &hp, &ctx);
	if (ret)
		return ret;
	j->probes++;
	ret = heic_write_mem(ctx, &buf, &len);
	heif_context_free(ctx);
	if (ret)
		return ret;
	ret = decode_mem(buf, len, hp.threads, m->subsamp, m->width, m->height, &dec);
	if (!ret) {
		*ssim = luma_ssim(m, &dec);
		log_msg(LOG_DEBUG, "photo: mosaic q%d luma SSIM %.5f, %zu bytes", q, *ssim, len);
	}
	photo_planes_release(&dec);
	free(buf);
	return ret;
}

/* The id of the first "mime" item of content type ct. 0 or -ENOENT. */
static int find_mime_item(const struct heif_image_handle *h, const char *ct, heif_item_id *id)
{
	heif_item_id ids[64];
	int n = heif_image_handle_get_list_of_metadata_block_IDs(h, "mime", ids, 64);

	for (int i = 0; i < n; i++) {
		const char *t = heif_image_handle_get_metadata_content_type(h, ids[i]);
		if (t && strcmp(t, ct) == 0) {
			*id = ids[i];
			return 0;
		}
	}
	return -ENOENT;
}

/* Where the "mime" item of content type ct of the HEIF file buf (or fd,
 * when buf is NULL) lies: one extent, checked against the handle's size of
 * it. 0, -ENOENT, -EINVAL (damaged), -ENOMEM, -errno. */
static int mime_item_at(int fd, const uint8_t *buf, size_t len, const struct heif_image_handle *h,
			const char *ct, uint64_t *off, uint64_t *size)
{
	heif_item_id id;
	uint8_t *meta;
	size_t meta_len;
	int ret = find_mime_item(h, ct, &id);

	if (ret)
		return ret;
	ret = heic_meta_read(fd, buf, len, &meta, &meta_len);
	if (ret)
		return ret == -ENOENT ? -EINVAL : ret;
	ret = heic_iloc_find(meta, meta_len, id, off, size);
	free(meta);
	if (ret)
		return ret == -ENOMEM ? ret : -EINVAL;
	if (*size != heif_image_handle_get_metadata_size(h, id) || *off > (uint64_t)INT64_MAX)
		return -EINVAL;
	return 0;
}

/* Where the header item's and the trailer item's bytes lie in a->heic
 * (opened as h), from its iloc, checked against what was put there. 0,
 * -EINVAL (logged), -ENOMEM. */
static int locate_items(struct photo_job *j, struct attempt *a, const struct heif_image_handle *h)
{
	uint64_t off, size;
	int ret;

	ret = mime_item_at(-1, a->heic, a->heic_len, h, HDR_CONTENT_TYPE, &off, &size);
	if (!ret && (size != j->hdr_len || memcmp(a->heic + off, j->hdr, j->hdr_len) != 0))
		ret = -EINVAL;
	if (ret) {
		log_msg(LOG_ERR, "photo: the hevcfs header item is not where iloc says");
		return ret == -ENOMEM ? ret : -EINVAL;
	}
	a->hdr_off = (size_t)off;
	if (!j->tr.item_len)
		return 0;
	ret = mime_item_at(-1, a->heic, a->heic_len, h, TRAILER_CONTENT_TYPE, &off, &size);
	if (!ret &&
	    (size != j->tr.item_len || memcmp(a->heic + off, j->ji.trailer, j->tr.item_len) != 0))
		ret = -EINVAL;
	if (ret) {
		log_msg(LOG_ERR, "photo: the trailer item is not where iloc says");
		return ret == -ENOMEM ? ret : -EINVAL;
	}
	a->item_off = (size_t)off;
	return 0;
}

/*
 * Encode the photo at quality q as it will be written (metadata, thumbnail,
 * the provisional header item j->hdr and the trailer item), decode that
 * once and measure its luma SSIM. Where the header item's bytes (patched
 * with the measured values at the end) and the trailer item's lie is read
 * from the file's iloc and checked. 0, -EINVAL when they are not where it
 * says (logged), or -errno.
 */
static int encode_full(struct photo_job *j, const struct heic_params *base, int q,
		       struct attempt *a)
{
	struct heic_params hp = *base;
	struct heif_context *ctx = NULL;
	struct heif_image_handle *h = NULL;
	int ret;

	memset(a, 0, sizeof(*a));
	a->q = q;
	hp.quality = q;
	ret = heic_encode(&j->orig, &j->enc_ji, &hp, &ctx);
	if (ret)
		return ret;
	j->encodes++;
	ret = heic_add_item(ctx, HDR_ITEM_TYPE, HDR_CONTENT_TYPE, j->hdr, j->hdr_len);
	if (!ret && j->tr.item_len)
		ret = heic_add_item(ctx, HDR_ITEM_TYPE, TRAILER_CONTENT_TYPE, j->ji.trailer,
				    j->tr.item_len);
	if (!ret)
		ret = heic_write_mem(ctx, &a->heic, &a->heic_len);
	heif_context_free(ctx);
	ctx = NULL;
	if (ret)
		goto out_release_attempt;
	ret = heic_open(a->heic, a->heic_len, hp.threads, &ctx, &h);
	if (ret)
		goto out_release_attempt;
	ret = locate_items(j, a, h);
	if (ret)
		goto out_release_handle;
	ret = heic_decode_planes(h, j->orig.subsamp, j->orig.width, j->orig.height, 1, &a->dec);
	if (ret)
		goto out_release_handle;
	a->ssim = luma_ssim(&j->orig, &a->dec);
	log_msg(LOG_DEBUG, "photo: q%d luma SSIM %.5f, %zu bytes", q, a->ssim, a->heic_len);
out_release_handle:
	heif_image_handle_release(h);
	heif_context_free(ctx);
out_release_attempt:
	if (ret)
		attempt_release(a);
	return ret;
}

/* The bytes of an attempt that code the photo (the trailer item is not). */
static size_t image_bytes(const struct photo_job *j, const struct attempt *a)
{
	return a->heic_len - j->tr.item_len;
}

/* A quality search: the lowest passing and the highest failing quality
 * (with that one's SSIM and bytes), and the last two measures. */
struct search {
	int q_pass, q_fail, tries;
	double fail_ssim;
	size_t fail_bytes;
	double lq[2], ld[2];
};

static void search_init(struct search *s)
{
	memset(s, 0, sizeof(*s));
	s->q_pass = INT32_MAX;
	s->q_fail = INT32_MIN;
}

static void search_note(struct search *s, int q, double ssim, int pass)
{
	s->lq[s->tries & 1] = q;
	s->ld[s->tries & 1] = ldist(ssim);
	s->tries++;
	if (pass && q < s->q_pass)
		s->q_pass = q;
	if (!pass && q > s->q_fail)
		s->q_fail = q;
}

/* The quality to try after s's last measure (at q): where a line through
 * the last two measures (the prior slope after one) meets the floor,
 * rounded up to the grid, strictly between the failing and passing
 * qualities. 0 when none is left. */
static int next_quality(const struct search *s, int q, double target)
{
	double b = Q_PRIOR_SLOPE, est;
	int next;

	if (s->tries >= 2 && s->lq[0] != s->lq[1] &&
	    (s->ld[1] - s->ld[0]) / (s->lq[1] - s->lq[0]) < 0)
		b = (s->ld[1] - s->ld[0]) / (s->lq[1] - s->lq[0]);
	est = fmin(fmax(q + (target - s->ld[(s->tries - 1) & 1]) / b, Q_MIN), Q_MAX);
	next = (int)ceil(est / Q_GRID) * Q_GRID;
	if (next <= s->q_fail)
		next = s->q_fail + Q_GRID;
	if (next >= s->q_pass || next > Q_MAX)
		return 0;
	return next;
}

/* Predict the lowest quality that meets min_ssim from trial encodes of the
 * mosaic (a secant search on it). *q: the prediction. 0 or -errno. */
static int predict_quality(struct photo_job *j, const struct codec_opts *opts,
			   const struct heic_params *hp, double min_ssim, int *q)
{
	double target = ldist(min_ssim);
	struct search s;
	int cur = Q_START, ret;

	search_init(&s);
	*q = Q_MAX;
	while (cur && s.tries < PROBE_MAX_TRIES) {
		double ssim = 0;

		if (cancelled(opts))
			return -ECANCELED;
		ret = probe_quality(j, hp, cur, &ssim);
		if (ret)
			return ret;
		search_note(&s, cur, ssim, ssim >= min_ssim);
		cur = next_quality(&s, cur, target);
		/* trials are cheap: settle the step under the lowest pass too,
		 * which the model's rounding up may skip */
		if (!cur && s.q_pass != INT32_MAX && s.q_pass - Q_GRID > s.q_fail &&
		    s.q_pass - Q_GRID >= Q_MIN)
			cur = s.q_pass - Q_GRID;
		/* out of trials without a pass: the next guess is the best one */
		*q = s.q_pass != INT32_MAX ? s.q_pass : cur ? cur : Q_MAX;
	}
	return 0;
}

/*
 * Encode full size from quality q until one meets min_ssim: at most
 * max_tries encodes; with settle, the first that passes is taken, else the
 * search goes on down while the model says a lower quality may pass. A
 * failing encode already over the size limit ends it (higher qualities only
 * grow). On return j->best holds the lowest passing attempt (heic NULL when
 * none passed) and s the failing one. 0 or -errno.
 */
static int search_full(struct photo_job *j, const struct codec_opts *opts,
		       const struct heic_params *hp, double min_ssim, int q, int max_tries,
		       int settle, struct search *s)
{
	double limit = MAX_SIZE_RATIO * (double)j->ji.eoi_end, target = ldist(min_ssim);
	int ret;

	search_init(s);
	while (q && s->tries < max_tries) {
		if (cancelled(opts))
			return -ECANCELED;
		ret = encode_full(j, hp, q, &j->cur);
		if (ret)
			return ret;
		search_note(s, q, j->cur.ssim, j->cur.ssim >= min_ssim);
		if (j->cur.ssim >= min_ssim) {
			attempt_release(&j->best);
			j->best = j->cur;
			memset(&j->cur, 0, sizeof(j->cur));
			if (settle)
				break;
		} else {
			s->fail_ssim = j->cur.ssim;
			s->fail_bytes = image_bytes(j, &j->cur);
			attempt_release(&j->cur);
			if ((double)s->fail_bytes > limit)
				break;
		}
		q = next_quality(s, q, target);
	}
	return 0;
}

/*
 * What the view of the HEIC whose primary image handle is h needs besides
 * its pixels: the hevcfs header item (*item holds it; vh points into it),
 * checked against the picture's size, and the original's APPn/COM segments
 * rebuilt from it (*segs, malloc'd). Reads metadata items only.
 */
static int view_source(const struct heif_image_handle *h, uint8_t **item, struct view_hdr *vh,
		       uint8_t **segs, size_t *segs_len)
{
	size_t item_len;
	int ret, w, hgt;

	ret = heic_get_item(h, HDR_ITEM_TYPE, HDR_CONTENT_TYPE, item, &item_len);
	if (ret == -ENOENT) {
		log_msg(LOG_ERR, "photo: not an archived photo (no hevcfs header item)");
		return -EINVAL;
	}
	if (ret)
		return ret;
	ret = hdr_parse(*item, item_len, vh);
	if (ret)
		return ret;
	/* the picture must be the one the header describes (maybe turned by
	 * irot) before anything is decoded at whatever size the file claims */
	w = heif_image_handle_get_width(h);
	hgt = heif_image_handle_get_height(h);
	if (!(w == vh->width && hgt == vh->height) && !(w == vh->height && hgt == vh->width)) {
		log_msg(LOG_ERR, "photo: HEIC is %dx%d, its hevcfs header says %dx%d", w, hgt,
			vh->width, vh->height);
		return -EINVAL;
	}
	return rebuild_segs(h, vh, segs, segs_len);
}

/*
 * The trailer of the view of the HEIC in buf (len bytes, primary image h,
 * header vh): the trailer item's data, then the payload of the mpvd box
 * that ends the file, checked against the header's lengths and digest.
 * *out is malloc'd (NULL when there is no trailer). 0, -EINVAL (logged),
 * -ENOMEM.
 */
static int view_trailer(const uint8_t *buf, size_t len, const struct heif_image_handle *h,
			const struct view_hdr *vh, uint8_t **out)
{
	size_t item = (size_t)(vh->trailer_len - vh->video_len), v = (size_t)vh->video_len, got;
	uint8_t *t, *data = NULL, sum[SUM_LEN];
	int ret = 0;

	*out = NULL;
	if (!vh->trailer_len)
		return 0;
	t = malloc((size_t)vh->trailer_len);
	if (!t)
		return -ENOMEM;
	if (item) {
		ret = heic_get_item(h, HDR_ITEM_TYPE, TRAILER_CONTENT_TYPE, &data, &got);
		if (ret == -ENOMEM)
			goto out_free;
		if (ret || got != item) {
			log_msg(LOG_ERR, "photo: the trailer item is missing or of the wrong size");
			ret = -EINVAL;
			goto out_free;
		}
		memcpy(t, data, item);
	}
	if (v) {
		const uint8_t *box = buf + len - v - MPVD_HEADER;
		if (len < v + MPVD_HEADER || get_be32(box) != v + MPVD_HEADER ||
		    memcmp(box + 4, "mpvd", 4) != 0) {
			log_msg(LOG_ERR,
				"photo: the motion photo's mpvd box does not end the file");
			ret = -EINVAL;
			goto out_free;
		}
		memcpy(t + item, box + MPVD_HEADER, v);
	}
	ret = sum_buf(t, (size_t)vh->trailer_len, sum);
	if (!ret && memcmp(sum, vh->trailer_sum, SUM_LEN) != 0) {
		log_msg(LOG_ERR, "photo: the trailer does not match its digest");
		ret = -EINVAL;
	}
out_free:
	free(data);
	if (ret)
		free(t);
	else
		*out = t;
	return ret;
}

/* The padding that ends a scan of scan_len bytes where the original's EOI
 * ended, space bytes after its segments; -1 when the scan does not fit (too
 * long, or a gap too short for a padding segment). */
static long long pad_for(size_t space, size_t scan_len)
{
	if (scan_len > space || !jpeg_pad_ok(space - scan_len))
		return -1;
	return (long long)(space - scan_len);
}

/* Encode the view's scan of the best attempt at quality q and, when ssim
 * is not NULL, measure the view's luma SSIM against the original. *scan is
 * malloc'd. 0 or -errno. */
static int view_try(struct photo_job *j, int q, uint8_t **scan, size_t *scan_len, double *ssim)
{
	struct photo_planes vp;
	uint8_t *v = NULL;
	size_t vlen;
	char why[128];
	int ret;

	ret = jpeg_encode_scan(&j->best.dec, q, scan, scan_len);
	if (ret || !ssim)
		return ret;
	ret = jpeg_view_layout(j->ji.segs, j->ji.segs_len, 0, *scan, *scan_len, 0, NULL, 0, &v,
			       &vlen);
	if (!ret) {
		ret = jpeg_decode_planes(v, vlen, &vp, why, sizeof(why));
		if (ret) {
			log_msg(LOG_ERR, "photo: own view does not decode: %s", why);
			ret = ret == -ENOMEM ? ret : -EIO;
		}
	}
	free(v);
	if (ret) {
		free(*scan);
		*scan = NULL;
		return ret;
	}
	*ssim = luma_ssim(&j->orig, &vp);
	photo_planes_release(&vp);
	return 0;
}

/* The room a scan of scan_len bytes leaves where the original's EOI ended,
 * space bytes after its segments (padding and fill share it); -1 when it
 * does not fit. */
static long long room_for(size_t space, size_t scan_len)
{
	return scan_len > space ? -1 : (long long)(space - scan_len);
}

/* Where the image data of a view may start, largest first (header item,
 * version 5): a reader of whole blocks of any of these sizes from the
 * start that stops at the SOS segment reads none of it. */
static const size_t view_aligns[] = {65536, 16384, 8192, 4096};
/* The last bytes of a view kept out of its image data by the fill: what
 * exiftool reads there for a trailer. */
#define VIEW_END_KNOWN 64

/* The padding that ends a head of head bytes on a boundary of g bytes (a
 * gap too short for a padding segment takes a whole boundary more). */
static size_t pad_to(size_t head, size_t g)
{
	size_t a = (g - head % g) % g;

	return a && !jpeg_pad_ok(a) ? a + g : a;
}

/* The fill a view needs for VIEW_END_KNOWN bytes at its end to be known. */
static size_t fill_min(size_t trailer_len)
{
	return trailer_len + 2 >= VIEW_END_KNOWN ? 0 : VIEW_END_KNOWN - 2 - trailer_len;
}

/* The room a view whose head (SOI, segments, tables) is head bytes long
 * needs for its tables to end on an 8 KiB boundary (exiftool's blocks). */
static size_t room_wanted(size_t head, size_t trailer_len)
{
	return pad_to(head, 8192) + fill_min(trailer_len);
}

/* Share room bytes between the view's padding and its fill (vh's pad and
 * fill): the tables end on the largest boundary that leaves the fill enough
 * for VIEW_END_KNOWN bytes at the end. head: the bytes before the image
 * data without padding (SOI, segments, tables). */
static void place_view(struct view_hdr *vh, size_t head, size_t room, size_t trailer_len)
{
	vh->pad = 0;
	for (size_t i = 0; i < sizeof(view_aligns) / sizeof(view_aligns[0]); i++) {
		size_t a = pad_to(head, view_aligns[i]);

		if (a <= room && room - a >= fill_min(trailer_len)) {
			vh->pad = (uint32_t)a;
			break;
		}
	}
	vh->fill = (uint32_t)(room - vh->pad);
}

/*
 * Render the view of the best attempt (j->view; its image data j->scan):
 * at the view quality, raised until its luma SSIM against the original
 * reaches the floor; then, so that it keeps the original's layout, the
 * highest quality whose scan fits the original's (found by bisection on
 * the scan's size, which grows with quality) if that one still meets the
 * floor. When none does, the view keeps its own size at the first quality
 * (HDR_F_OWN_SIZE). The room a scan that fits leaves is padding and fill
 * (place_view). Sets j->vh's view_quality, pad, fill and flags. 0 with *ok
 * set, or -errno.
 */
static int make_view(struct photo_job *j, const struct codec_opts *opts, double *view_ssim, int *ok)
{
	double floor_ = opts->min_view_ssim > 0 ? opts->min_view_ssim : CODEC_DEF_MIN_VIEW_SSIM;
	int q = opts->view_quality > 0 ? opts->view_quality : CODEC_DEF_VIEW_QUALITY;
	size_t space = j->ji.eoi_end - 2 - j->ji.segs_len, len;
	uint8_t *scan = NULL;
	long long room;
	long tables;
	int ret;

	if (q > 100)
		q = 100;
	*ok = 0;
	for (;;) {
		ret = view_try(j, q, &scan, &len, view_ssim);
		if (ret)
			return ret;
		if (*view_ssim >= floor_)
			break;
		free(scan);
		scan = NULL;
		j->vh.view_quality = q;
		if (q >= VIEW_Q_MAX)
			return 0;
		q = q + VIEW_Q_STEP > VIEW_Q_MAX ? VIEW_Q_MAX : q + VIEW_Q_STEP;
	}
	room = room_for(space, len);
	if (room < 0) {
		int lo = 1, hi = q - 1, fit = 0;
		uint8_t *s2 = NULL;
		size_t l2;
		double ssim2;

		while (lo <= hi) {
			int mid = lo + (hi - lo) / 2;
			ret = view_try(j, mid, &s2, &l2, NULL);
			if (ret)
				goto out_free_scan;
			free(s2);
			s2 = NULL;
			if (l2 <= space)
				fit = mid, lo = mid + 1;
			else
				hi = mid - 1;
		}
		if (fit >= 1) {
			ret = view_try(j, fit, &s2, &l2, &ssim2);
			if (ret)
				goto out_free_scan;
			if (ssim2 >= floor_ && room_for(space, l2) >= 0) {
				free(scan);
				scan = s2, len = l2, q = fit, *view_ssim = ssim2;
				room = room_for(space, len);
			} else {
				free(s2);
			}
		}
	}
	tables = jpeg_scan_data_off(scan, len);
	if (tables < 0 || (size_t)tables >= len) {
		log_msg(LOG_ERR, "photo: the view's image data has no scan");
		ret = -EIO;
		goto out_free_scan;
	}
	if (room >= 0 && q > 1) {
		/* a scan that fits with too little room for its head to end on
		 * a block boundary: one quality lower, if that meets the floor */
		size_t want = room_wanted(2 + j->ji.segs_len + (size_t)tables, j->ji.trailer_len);
		uint8_t *s2 = NULL;
		size_t l2;
		double ssim2;

		if ((size_t)room < want) {
			ret = view_try(j, q - 1, &s2, &l2, &ssim2);
			if (ret)
				goto out_free_scan;
			if (ssim2 >= floor_ && room_for(space, l2) >= (long long)want) {
				free(scan);
				scan = s2, len = l2, q = q - 1, *view_ssim = ssim2;
				room = room_for(space, len);
			} else {
				free(s2);
			}
		}
	}
	j->vh.view_quality = q;
	j->vh.flags = room < 0 ? HDR_F_OWN_SIZE : 0;
	j->vh.pad = j->vh.fill = 0;
	if (room >= 0)
		place_view(&j->vh, 2 + j->ji.segs_len + (size_t)tables, (size_t)room,
			   j->ji.trailer_len);
	free(j->view);
	j->view = NULL;
	ret = jpeg_view_layout(j->ji.segs, j->ji.segs_len, j->vh.pad, scan, len, j->vh.fill,
			       j->ji.trailer, j->ji.trailer_len, &j->view, &j->view_len);
	if (ret)
		goto out_free_scan;
	free(j->scan);
	j->scan = scan;
	j->scan_len = len;
	scan = NULL;
	*ok = 1;
out_free_scan:
	free(scan);
	return ret;
}

/* Put the measured values (j->vh) into the best attempt's header item, in
 * place: the header's length does not depend on them, so nothing else in
 * the file moves. 0, -ENOMEM or -EIO. */
static int patch_header(struct photo_job *j)
{
	uint8_t *hdr;
	size_t len;
	int ret;

	ret = hdr_pack(&j->vh, &j->ji, &hdr, &len);
	if (ret)
		return ret;
	if (len != j->hdr_len) {
		log_msg(LOG_ERR, "photo: header item changed size (%zu, %zu)", len, j->hdr_len);
		free(hdr);
		return -EIO;
	}
	memcpy(j->best.heic + j->best.hdr_off, hdr, len);
	free(hdr);
	return 0;
}

/* The self-digest of a stored file (buf, len) whose header item's
 * self_sum field is at self_off: SHA-256 of it all with those bytes counted
 * as zeros. 0 or -errno. */
static int self_digest(const uint8_t *buf, size_t len, size_t self_off, uint8_t out[SUM_LEN])
{
	static const uint8_t zeros[SUM_LEN];
	struct sum *s;
	int ret;

	if (self_off > len || len - self_off < SUM_LEN)
		return -EINVAL;
	ret = sum_new(&s);
	if (ret)
		return ret;
	ret = sum_update(s, buf, self_off);
	if (!ret)
		ret = sum_update(s, zeros, SUM_LEN);
	if (!ret)
		ret = sum_update(s, buf + self_off + SUM_LEN, len - self_off - SUM_LEN);
	if (!ret)
		ret = sum_final(s, out);
	sum_free(&s);
	return ret;
}

/*
 * Finish the best attempt as it is written: the measured values in its
 * header item, the motion photo's video in an mpvd box after every other
 * box, and the self-digest. 0 or -errno.
 */
static int finish_heic(struct photo_job *j)
{
	size_t v = j->tr.video_len, n = j->best.heic_len;
	uint8_t *p;
	int ret;

	if (v && v == j->ji.trailer_len)
		j->vh.tail_src = n + MPVD_HEADER;
	else if (!v && j->tr.item_len)
		j->vh.tail_src = j->best.item_off;
	else
		j->vh.tail_src = 0;
	memset(j->vh.self_sum, 0, SUM_LEN);
	ret = patch_header(j);
	if (ret)
		return ret;
	if (v) {
		if (v + MPVD_HEADER > UINT32_MAX)
			return -EFBIG;
		p = realloc(j->best.heic, n + MPVD_HEADER + v);
		if (!p)
			return -ENOMEM;
		j->best.heic = p;
		put_be32(p + n, (uint32_t)(v + MPVD_HEADER));
		memcpy(p + n + 4, "mpvd", 4);
		memcpy(p + n + MPVD_HEADER, j->ji.trailer + j->tr.item_len, v);
		j->best.heic_len = n + MPVD_HEADER + v;
	}
	ret = self_digest(j->best.heic, j->best.heic_len, j->best.hdr_off + HDR_SELF_SUM,
			  j->vh.self_sum);
	if (!ret)
		memcpy(j->best.heic + j->best.hdr_off + HDR_SELF_SUM, j->vh.self_sum, SUM_LEN);
	return ret;
}

/*
 * Read out_path back and check it without decoding it: it must be byte for
 * byte the HEIC whose decode was measured (the header item patched since
 * holds no pixels), its metadata items must be there (Exif, XMP, the ICC
 * profile intact), its size must express the orientation, its header item
 * must rebuild the original's segments and name the view quality, size and
 * padding measured, so photo_render_view's decode of it renders exactly
 * j->view; the trailer it stores must be the original's, the view must end
 * with it and have the original's size (unless it keeps its own), and the
 * file must match its own digest. 0, -EIO when the file does not hold up
 * (logged), or -errno.
 */
static int verify_written(struct photo_job *j, const char *out_path)
{
	const struct jpeg_info *ji = &j->ji;
	struct view_hdr vh;
	uint8_t *icc = NULL, *tr = NULL, self[SUM_LEN];
	int fd, ret, w, h, swap;

	fd = open(out_path, O_RDONLY | O_CLOEXEC);
	if (fd == -1)
		return -errno;
	ret = codec_read_all(fd, PHOTO_MAX_HEIC_BYTES, &j->check, &j->check_len);
	close(fd);
	if (ret)
		return ret;
	if (j->check_len != j->best.heic_len || memcmp(j->check, j->best.heic, j->check_len) != 0) {
		log_msg(LOG_ERR, "photo: %s does not read back as written", out_path);
		return -EIO;
	}
	ret = heic_open(j->check, j->check_len, 0, &j->check_ctx, &j->check_handle);
	if (ret)
		return ret == -ENOMEM ? ret : -EIO;
	if (ji->exif &&
	    heif_image_handle_get_number_of_metadata_blocks(j->check_handle, "Exif") < 1) {
		log_msg(LOG_ERR, "photo: %s lacks its Exif item", out_path);
		return -EIO;
	}
	if (ji->xmp || ji->xmp_ext || j->heic_xmp) {
		uint8_t *x;
		size_t n;
		ret = heic_get_item(j->check_handle, "mime", XMP_CONTENT_TYPE, &x, &n);
		if (ret == -ENOMEM)
			return ret;
		if (ret) {
			log_msg(LOG_ERR, "photo: %s lacks its XMP item", out_path);
			return -EIO;
		}
		free(x);
	}
	if (ji->icc) {
		size_t n = heif_image_handle_get_raw_color_profile_size(j->check_handle);
		icc = n == ji->icc_len ? malloc(n) : NULL;
		if (!icc || heif_image_handle_get_raw_color_profile(j->check_handle, icc).code ||
		    memcmp(icc, ji->icc, n) != 0) {
			free(icc);
			log_msg(LOG_ERR, "photo: %s lacks the ICC profile", out_path);
			return -EIO;
		}
		free(icc);
	}
	/* irot/imir: orientations 5..8 turn the picture a quarter */
	w = heif_image_handle_get_width(j->check_handle);
	h = heif_image_handle_get_height(j->check_handle);
	swap = ji->orientation >= 5;
	if ((swap ? h : w) != j->orig.width || (swap ? w : h) != j->orig.height) {
		log_msg(LOG_ERR, "photo: %s is %dx%d, orientation %d of %dx%d not expressed",
			out_path, w, h, ji->orientation, j->orig.width, j->orig.height);
		return -EIO;
	}
	if (heic_check_thumbnail(j->check_handle, j->orig.width, j->orig.height)) {
		log_msg(LOG_ERR, "photo: %s lacks its thumbnail", out_path);
		return -EIO;
	}
	ret = view_source(j->check_handle, &j->check_item, &vh, &j->check_segs, &j->check_segs_len);
	if (ret)
		return ret == -ENOMEM ? ret : -EIO;
	if (vh.view_quality != j->vh.view_quality || vh.view_bytes != j->view_len ||
	    vh.subsamp != j->orig.subsamp || vh.width != j->orig.width ||
	    vh.height != j->orig.height || vh.quality != j->best.q || vh.pad != j->vh.pad ||
	    vh.fill != j->vh.fill || vh.flags != j->vh.flags || vh.carries != j->tr.carries ||
	    vh.trailer_len != ji->trailer_len || vh.video_len != j->tr.video_len ||
	    memcmp(vh.orig_sum, j->vh.orig_sum, SUM_LEN) != 0 ||
	    memcmp(vh.scan_sum, j->vh.scan_sum, SUM_LEN) != 0 ||
	    j->check_segs_len != ji->segs_len ||
	    (ji->segs_len && memcmp(j->check_segs, ji->segs, ji->segs_len) != 0)) {
		log_msg(LOG_ERR, "photo: %s: its header item does not describe the view measured",
			out_path);
		return -EIO;
	}
	ret = self_digest(j->check, j->check_len, j->best.hdr_off + HDR_SELF_SUM, self);
	if (ret)
		return ret;
	if (memcmp(self, vh.self_sum, SUM_LEN) != 0) {
		log_msg(LOG_ERR, "photo: %s does not match its own digest", out_path);
		return -EIO;
	}
	/* the trailer as a render fetches it, and the view around it */
	ret = view_trailer(j->check, j->check_len, j->check_handle, &vh, &tr);
	if (ret)
		return ret == -ENOMEM ? ret : -EIO;
	if ((ji->trailer_len && memcmp(tr, ji->trailer, ji->trailer_len) != 0) ||
	    j->view_len < ji->trailer_len ||
	    memcmp(j->view + j->view_len - ji->trailer_len, ji->trailer, ji->trailer_len) != 0 ||
	    (!(vh.flags & HDR_F_OWN_SIZE) && j->view_len != j->src_len)) {
		log_msg(LOG_ERR, "photo: %s: the view's trailer or size is not the original's",
			out_path);
		ret = -EIO;
	}
	free(tr);
	return ret;
}

/* Is the JPEG small enough to decode, and to fit one HEVC picture? Keeps
 * it with a reason when not (from the header alone: nothing allocated). */
static int check_size(const struct jpeg_info *ji, const struct codec_opts *opts,
		      struct codec_result *result)
{
	uint64_t max = opts->max_pixels ? opts->max_pixels : CODEC_DEF_MAX_PIXELS;
	uint64_t px = (uint64_t)ji->width * (uint64_t)ji->height;

	if (px > max) {
		codec_keep(result, "%dx%d is over the %llu pixel limit", ji->width, ji->height,
			   (unsigned long long)max);
		return 0;
	}
	if (ji->width > HEVC_MAX_SIDE || ji->height > HEVC_MAX_SIDE || px > HEVC_MAX_LUMA_PS) {
		codec_keep(result,
			   "too large for one HEVC picture (%dx%d; level 6.2 allows %d per side, "
			   "%llu pixels)",
			   ji->width, ji->height, HEVC_MAX_SIDE, HEVC_MAX_LUMA_PS);
		return 0;
	}
	return 1;
}

/*
 * The trailer and the items that depend on it: the video in an mpvd box,
 * the rest in the trailer item; the HEIC's XMP describes the HEIC's
 * layout, so the XMP segment is then stored verbatim rather than rebuilt
 * from that item. 0; 1 when the photo is kept (result says why); -errno.
 */
static int prepare_items(struct photo_job *j, struct codec_result *result)
{
	int ret;

	trailer_classify(&j->ji, &j->tr);
	result->carries = j->tr.carries;
	if (j->tr.item_len > HEIC_MAX_ITEM_BYTES) {
		codec_keep(result, "%zu bytes after the image (over %llu)", j->tr.item_len,
			   (unsigned long long)HEIC_MAX_ITEM_BYTES);
		return 1;
	}
	ret = trailer_heic_xmp(&j->ji, &j->tr, &j->heic_xmp, &j->heic_xmp_len);
	if (ret)
		return ret;
	if (j->heic_xmp)
		jpeg_info_drop_source(&j->ji, JPEG_SRC_XMP);
	j->enc_ji = j->ji;
	if (j->heic_xmp) {
		j->enc_ji.xmp = j->heic_xmp;
		j->enc_ji.xmp_len = j->heic_xmp_len;
	}
	return 0;
}

/* The header item (j->hdr) for j->vh as set by the caller (quality,
 * sizes), with what the JPEG says: orientation, sizes of the sources, the
 * trailer and the original's digests. 0 or -errno. */
static int pack_header(struct photo_job *j)
{
	int ret;

	j->vh.orientation = j->ji.orientation;
	j->vh.orig_bytes = j->src_len;
	j->vh.src_len[JPEG_SRC_EXIF] = j->ji.exif ? (uint32_t)j->ji.exif_len : 0;
	j->vh.src_len[JPEG_SRC_XMP] = j->ji.xmp && !j->heic_xmp ? (uint32_t)j->ji.xmp_len : 0;
	j->vh.src_len[JPEG_SRC_XMP_EXT] = j->ji.xmp_ext ? (uint32_t)j->ji.xmp_ext_len : 0;
	j->vh.src_len[JPEG_SRC_ICC] = j->ji.icc ? (uint32_t)j->ji.icc_len : 0;
	j->vh.carries = j->tr.carries;
	j->vh.trailer_len = j->ji.trailer_len;
	j->vh.video_len = j->tr.video_len;
	ret = sum_buf(j->ji.trailer, j->ji.trailer_len, j->vh.trailer_sum);
	if (!ret)
		ret = sum_buf(j->src, j->src_len, j->vh.orig_sum);
	if (!ret)
		ret = hdr_pack(&j->vh, &j->ji, &j->hdr, &j->hdr_len);
	return ret;
}

/* The digest of image data p (first table marker through EOI, n bytes)
 * as recorded (HDR_SCAN_SUM): without the fill bytes before its EOI, whose
 * count goes in *fill. Entropy-coded data never ends with a lone 0xFF (a
 * coded 0xFF is followed by a stuffed zero), so the fill is every 0xFF
 * before the marker's own. 0 or -errno. */
static int scan_sum_unfilled(const uint8_t *p, size_t n, size_t *fill, uint8_t out[SUM_LEN])
{
	static const uint8_t eoi[2] = {0xFF, 0xD9};
	struct sum *s;
	size_t k = 0;
	int ret;

	if (n >= 2 && p[n - 2] == 0xFF && p[n - 1] == 0xD9)
		while (k + 3 <= n && p[n - 3 - k] == 0xFF)
			k++;
	*fill = k;
	if (!k)
		return sum_buf(p, n, out);
	ret = sum_new(&s);
	if (ret)
		return ret;
	ret = sum_update(s, p, n - 2 - k);
	if (!ret)
		ret = sum_update(s, eoi, sizeof(eoi));
	if (!ret)
		ret = sum_final(s, out);
	sum_free(&s);
	return ret;
}

int photo_test_q_offset;

int photo_archive(int src_fd, const char *out_path, const char *view_path,
		  const struct codec_opts *opts, struct codec_result *result)
{
	static const struct codec_opts defaults;
	struct photo_job j = {0};
	struct heic_params hp = {0};
	struct search s;
	double min_ssim, view_ssim = 0, t0 = now();
	int ret, q, predicted = 0, view_ok;
	char why[128];

	if (!opts)
		opts = &defaults;
	search_init(&s);
	min_ssim = opts->min_ssim > 0 ? opts->min_ssim : CODEC_DEF_MIN_SSIM;
	ret = codec_read_all(src_fd, PHOTO_MAX_JPEG_BYTES, &j.src, &j.src_len);
	if (ret == -EFBIG) {
		codec_keep(result, "JPEG larger than %llu bytes", PHOTO_MAX_JPEG_BYTES);
		return 0;
	}
	if (ret)
		return ret;
	result->orig_bytes = j.src_len;
	ret = jpeg_parse(j.src, j.src_len, &j.ji);
	if (ret == -EINVAL || ret == -ENOTSUP) {
		codec_keep(result, "%s", j.ji.why);
		ret = 0;
		goto out_release_job;
	}
	if (ret || !check_size(&j.ji, opts, result))
		goto out_release_job;
	if (j.ji.segs_len > PHOTO_MAX_SEGS_BYTES) {
		codec_keep(result, "%zu bytes of APPn/COM segments (over %llu)", j.ji.segs_len,
			   (unsigned long long)PHOTO_MAX_SEGS_BYTES);
		goto out_release_job;
	}
	ret = jpeg_decode_planes(j.src, j.src_len, &j.orig, why, sizeof(why));
	if (ret == -EINVAL || ret == -ENOTSUP) {
		codec_keep(result, "%s", why);
		ret = 0;
		goto out_release_job;
	}
	if (ret)
		goto out_release_job;
	if (j.orig.width != j.ji.width || j.orig.height != j.ji.height) {
		codec_keep(result, "frame header and decoder disagree on the size");
		goto out_release_job;
	}

	ret = prepare_items(&j, result);
	if (ret) {
		ret = ret == 1 ? 0 : ret;
		goto out_release_job;
	}
	/* the header item, provisional in its measured fields (view quality
	 * and size, quality, SSIMs, digests) but already its final length */
	j.vh.view_quality = CODEC_DEF_VIEW_QUALITY;
	j.vh.subsamp = j.orig.subsamp;
	j.vh.width = j.orig.width;
	j.vh.height = j.orig.height;
	ret = pack_header(&j);
	if (ret)
		goto out_release_job;

	hp.preset = opts->preset ? opts->preset : PHOTO_DEF_PRESET;
	hp.tune = PHOTO_DEF_TUNE;
	hp.x265 = PHOTO_X265;
	hp.threads = opts->threads;
	if (opts->photo_quality > 0) {
		/* one encode at the quality asked for */
		q = opts->photo_quality > 100 ? 100 : opts->photo_quality;
		ret = search_full(&j, opts, &hp, min_ssim, q, 1, 1, &s);
	} else {
		ret = make_mosaic(&j.orig, &j.mosaic);
		if (ret == -ERANGE) {
			/* small: searched full size, down as well as up */
			ret = search_full(&j, opts, &hp, min_ssim, Q_START, Q_MAX_TRIES, 0, &s);
		} else if (!ret) {
			ret = predict_quality(&j, opts, &hp, min_ssim, &q);
			q += MOSAIC_MARGIN + photo_test_q_offset;
			q = q < Q_MIN ? Q_MIN : q > Q_MAX ? Q_MAX : q;
			predicted = q;
			if (!ret)
				ret = search_full(&j, opts, &hp, min_ssim, q, Q_MAX_TRIES, 1, &s);
		}
	}
	if (ret == -EIO || ret == -EINVAL || ret == -ENOTSUP) {
		/* libheif said why in the log; retrying would fail the same way */
		codec_keep(result, "HEIC encoding failed (%s)", strerror(-ret));
		ret = 0;
		goto out_release_job;
	}
	if (ret)
		goto out_release_job;
	/* sizes are the image's: the trailer is stored as it is either way */
	if (!j.best.heic && (double)s.fail_bytes > MAX_SIZE_RATIO * (double)j.ji.eoi_end) {
		codec_keep(result,
			   "not smaller (%.0f%% of the JPEG at q%d, still under the SSIM "
			   "floor)",
			   100.0 * (double)s.fail_bytes / (double)j.ji.eoi_end, s.q_fail);
		goto out_release_job;
	}
	if (!j.best.heic) {
		codec_keep(result, "luma SSIM %.4f under %.3f even at q%d", s.fail_ssim, min_ssim,
			   s.q_fail);
		goto out_release_job;
	}
	if ((double)image_bytes(&j, &j.best) > MAX_SIZE_RATIO * (double)j.ji.eoi_end) {
		codec_keep(result, "not smaller (%.0f%% of the JPEG at q%d)",
			   100.0 * (double)image_bytes(&j, &j.best) / (double)j.ji.eoi_end,
			   j.best.q);
		goto out_release_job;
	}
	if (cancelled(opts)) {
		ret = -ECANCELED;
		goto out_release_job;
	}
	ret = make_view(&j, opts, &view_ssim, &view_ok);
	if (ret)
		goto out_release_job;
	if (!view_ok) {
		codec_keep(result, "JPEG view luma SSIM %.4f under the floor even at quality %d",
			   view_ssim, j.vh.view_quality);
		goto out_release_job;
	}

	j.vh.view_bytes = j.view_len;
	j.vh.quality = j.best.q;
	j.vh.ssim = j.best.ssim;
	j.vh.view_ssim = view_ssim;
	ret = sum_buf(j.scan, j.scan_len, j.vh.scan_sum);
	if (!ret)
		ret = finish_heic(&j);
	if (ret)
		goto out_release_job;
	ret = codec_write_file(out_path, j.best.heic, j.best.heic_len);
	if (ret)
		goto out_release_job;
	ret = verify_written(&j, out_path);
	if (ret)
		goto out_release_job;
	if (view_path) {
		ret = codec_write_file(view_path, j.view, j.view_len);
		if (ret)
			goto out_release_job;
	}

	result->archived = 1;
	result->reason[0] = '\0';
	memcpy(result->suffix, ".heic", sizeof(".heic"));
	result->stored_bytes = j.best.heic_len;
	result->view_bytes = j.view_len;
	result->quality = j.best.q;
	result->ssim = j.best.ssim;
	result->view_ssim = view_ssim;
	memcpy(result->orig_sum, j.vh.orig_sum, SUM_LEN);
	memcpy(result->scan_sum, j.vh.scan_sum, SUM_LEN);
	if (j.vh.flags & HDR_F_OWN_SIZE) {
		result->view_own_size = 1;
		snprintf(result->view_why, sizeof(result->view_why),
			 "image data does not fit the original's at any view quality with luma "
			 "SSIM >= %.4f",
			 opts->min_view_ssim > 0 ? opts->min_view_ssim : CODEC_DEF_MIN_VIEW_SSIM);
	}
	log_msg(LOG_INFO,
		"photo: %dx%d q%d (predicted q%d) SSIM %.4f, %zu -> %zu bytes (%.0f%%), view q%d "
		"SSIM %.4f, %d encodes + %d of the mosaic, %.1f s",
		j.orig.width, j.orig.height, j.best.q, predicted, j.best.ssim, j.src_len,
		j.best.heic_len, 100.0 * (double)j.best.heic_len / (double)j.src_len,
		j.vh.view_quality, view_ssim, j.encodes, j.probes, now() - t0);
out_release_job:
	job_release(&j);
	return ret;
}

/*
 * A retag: the JPEG src_fd is the view of the archived photo prev_fd with
 * other metadata (its image data, first table marker through EOI, is the
 * view's: the same digest) and maybe another trailer. Write out_path with
 * prev's coded pictures bit for bit, src's metadata and trailer, and
 * verify it like an archive: its view must be src byte for byte.
 */
int photo_retag(int prev_fd, int src_fd, const char *out_path, const char *view_path,
		const struct codec_opts *opts, struct codec_result *result)
{
	static const struct codec_opts defaults;
	struct photo_job j = {0};
	struct heif_context *pctx = NULL, *ctx = NULL;
	struct heif_image_handle *ph = NULL, *h = NULL;
	struct heic_coded coded = {0};
	struct view_hdr old;
	uint8_t *prev = NULL, *pitem = NULL, *psegs = NULL, sum[SUM_LEN];
	size_t prev_len, psegs_len = 0, fill;
	double t0 = now();
	int ret;

	if (!opts)
		opts = &defaults;
	/* the previous archive: what its view's image data was */
	ret = codec_read_all(prev_fd, PHOTO_MAX_HEIC_BYTES, &prev, &prev_len);
	if (ret == -EFBIG) {
		codec_keep(result, "previous file is not an archived photo");
		return 0;
	}
	if (ret)
		return ret;
	ret = heic_open(prev, prev_len, opts->threads, &pctx, &ph);
	if (!ret)
		ret = view_source(ph, &pitem, &old, &psegs, &psegs_len);
	if (ret == -ENOMEM)
		goto out_release;
	if (ret) {
		codec_keep(result, "previous file is not an archived photo");
		ret = 0;
		goto out_release;
	}
	if (old.version < HDR_VERSION_LAYOUT) {
		codec_keep(result, "previous archive records no digest of its view's image data");
		goto out_release;
	}

	/* the new JPEG: the same image data, only segments and trailer changed */
	ret = codec_read_all(src_fd, PHOTO_MAX_JPEG_BYTES, &j.src, &j.src_len);
	if (ret == -EFBIG) {
		codec_keep(result, "JPEG larger than %llu bytes", PHOTO_MAX_JPEG_BYTES);
		ret = 0;
		goto out_release;
	}
	if (ret)
		goto out_release;
	result->orig_bytes = j.src_len;
	ret = jpeg_parse(j.src, j.src_len, &j.ji);
	if (ret == -EINVAL || ret == -ENOTSUP) {
		codec_keep(result, "%s", j.ji.why);
		ret = 0;
		goto out_release;
	}
	if (ret)
		goto out_release;
	if (!j.ji.head_in_place) {
		codec_keep(result, "APPn/COM segments among the image data");
		goto out_release;
	}
	ret = scan_sum_unfilled(j.src + j.ji.head_end, j.ji.eoi_end - j.ji.head_end, &fill, sum);
	if (ret)
		goto out_release;
	if (memcmp(sum, old.scan_sum, SUM_LEN) != 0) {
		codec_keep(result, "image data differs from the archived view's");
		goto out_release;
	}
	if (j.ji.segs_len > PHOTO_MAX_SEGS_BYTES) {
		codec_keep(result, "%zu bytes of APPn/COM segments (over %llu)", j.ji.segs_len,
			   (unsigned long long)PHOTO_MAX_SEGS_BYTES);
		goto out_release;
	}
	ret = prepare_items(&j, result);
	if (ret) {
		ret = ret == 1 ? 0 : ret;
		goto out_release;
	}
	/* the measures of the pictures are prev's: they are the same */
	j.vh.view_quality = old.view_quality;
	j.vh.subsamp = old.subsamp;
	j.vh.width = old.width;
	j.vh.height = old.height;
	j.vh.quality = old.quality;
	j.vh.ssim = old.ssim;
	j.vh.view_ssim = old.view_ssim;
	j.vh.view_bytes = j.src_len;
	memcpy(j.vh.scan_sum, old.scan_sum, SUM_LEN);
	/* the view is the JPEG given: no padding of its own, its fill kept */
	j.vh.fill = (uint32_t)fill;
	ret = pack_header(&j);
	if (ret)
		goto out_release;
	j.orig.width = old.width;
	j.orig.height = old.height;
	j.orig.subsamp = old.subsamp;

	/* prev's coded pictures, in a file with src's metadata */
	ret = heic_capture_coded(ph, old.width, old.height, old.subsamp, &coded);
	if (ret == -EINVAL) {
		codec_keep(result, "previous archive's coded pictures cannot be taken");
		ret = 0;
		goto out_release;
	}
	if (!ret)
		ret = heic_encode_coded(&coded, &j.enc_ji, &ctx);
	if (!ret)
		ret = heic_add_item(ctx, HDR_ITEM_TYPE, HDR_CONTENT_TYPE, j.hdr, j.hdr_len);
	if (!ret && j.tr.item_len)
		ret = heic_add_item(ctx, HDR_ITEM_TYPE, TRAILER_CONTENT_TYPE, j.ji.trailer,
				    j.tr.item_len);
	if (!ret)
		ret = heic_write_mem(ctx, &j.best.heic, &j.best.heic_len);
	heif_context_free(ctx);
	ctx = NULL;
	if (!ret)
		ret = heic_open(j.best.heic, j.best.heic_len, opts->threads, &ctx, &h);
	if (!ret)
		ret = locate_items(&j, &j.best, h);
	if (!ret)
		ret = heic_decode_planes(h, old.subsamp, old.width, old.height, 1, &j.best.dec);
	if (ret)
		goto out_release;
	j.best.q = old.quality;
	j.best.ssim = old.ssim;

	/* its view: the same image data, with no room for padding */
	ret = jpeg_encode_scan(&j.best.dec, old.view_quality, &j.scan, &j.scan_len);
	if (!ret)
		ret = sum_buf(j.scan, j.scan_len, sum);
	if (!ret && (memcmp(sum, old.scan_sum, SUM_LEN) != 0 ||
		     j.ji.eoi_end - 2 - j.ji.segs_len != j.scan_len + j.vh.fill)) {
		log_msg(LOG_ERR, "photo: the copied pictures do not render the view's image data");
		ret = -EIO;
	}
	if (!ret)
		ret = jpeg_view_layout(j.ji.segs, j.ji.segs_len, 0, j.scan, j.scan_len, j.vh.fill,
				       j.ji.trailer, j.ji.trailer_len, &j.view, &j.view_len);
	if (!ret && (j.view_len != j.src_len || memcmp(j.view, j.src, j.src_len) != 0)) {
		log_msg(LOG_ERR, "photo: the retagged view is not the JPEG given");
		ret = -EIO;
	}
	if (!ret)
		ret = finish_heic(&j);
	if (!ret)
		ret = codec_write_file(out_path, j.best.heic, j.best.heic_len);
	if (!ret)
		ret = verify_written(&j, out_path);
	if (!ret && view_path)
		ret = codec_write_file(view_path, j.view, j.view_len);
	if (ret)
		goto out_release;

	result->archived = 1;
	result->reason[0] = '\0';
	memcpy(result->suffix, ".heic", sizeof(".heic"));
	result->stored_bytes = j.best.heic_len;
	result->view_bytes = j.view_len;
	result->quality = old.quality;
	result->ssim = old.ssim;
	result->view_ssim = old.view_ssim;
	memcpy(result->orig_sum, j.vh.orig_sum, SUM_LEN);
	memcpy(result->scan_sum, j.vh.scan_sum, SUM_LEN);
	log_msg(LOG_INFO, "photo: retagged %dx%d, %zu -> %zu bytes, pictures kept, %.2f s",
		old.width, old.height, j.src_len, j.best.heic_len, now() - t0);
out_release:
	heic_coded_release(&coded);
	heif_image_handle_release(h);
	heif_context_free(ctx);
	free(psegs);
	free(pitem);
	heif_image_handle_release(ph);
	heif_context_free(pctx);
	free(prev);
	job_release(&j);
	return ret;
}

/*
 * The view of decoded planes dec of the HEIC in buf (primary image h,
 * header vh, segments rebuilt): the image data at the recorded quality in
 * the layout of the header's version. From version 4 on that is the
 * original's: the padding is what puts the EOI where the original's was,
 * as recorded (should TurboJPEG ever code the planes to another size, the
 * padding absorbs the difference while it can, and the view keeps its own
 * size, with a warning, when it cannot). *view is malloc'd. 0 or -errno.
 */
static int render_layout(const uint8_t *buf, size_t len, const struct heif_image_handle *h,
			 const struct view_hdr *vh, const struct photo_planes *dec,
			 const uint8_t *segs, size_t segs_len, uint8_t **view, size_t *view_len)
{
	uint8_t *scan = NULL, *tr = NULL, sum[SUM_LEN];
	size_t scan_len, pad = 0, fill = 0;
	int ret;

	ret = jpeg_encode_scan(dec, vh->view_quality, &scan, &scan_len);
	if (ret)
		return ret;
	if (vh->version >= HDR_VERSION_LAYOUT) {
		ret = view_trailer(buf, len, h, vh, &tr);
		if (ret)
			goto out_free;
		if (vh->version >= HDR_VERSION_FILL && !(vh->flags & HDR_F_OWN_SIZE)) {
			/* the padding as recorded; the fill takes up the rest */
			uint64_t fixed = 2 + segs_len + vh->pad + scan_len + vh->trailer_len;
			if (vh->view_bytes >= fixed) {
				pad = vh->pad;
				fill = (size_t)(vh->view_bytes - fixed);
			} else {
				log_msg(LOG_WARNING,
					"photo: view's image data (%zu bytes) no longer "
					"fits the original's layout",
					scan_len);
			}
		} else if (!(vh->flags & HDR_F_OWN_SIZE)) {
			long long p = -1;
			if (vh->view_bytes >= 2 + segs_len + vh->trailer_len)
				p = pad_for(
				    (size_t)(vh->view_bytes - 2 - segs_len - vh->trailer_len),
				    scan_len);
			if (p < 0)
				log_msg(LOG_WARNING,
					"photo: view's image data (%zu bytes) no longer "
					"fits the original's layout",
					scan_len);
			pad = p < 0 ? 0 : (size_t)p;
		}
		if (sum_buf(scan, scan_len, sum) == 0 && memcmp(sum, vh->scan_sum, SUM_LEN) != 0)
			log_msg(LOG_WARNING, "photo: view's image data differs from the one "
					     "recorded at archive time (TurboJPEG changed?)");
	}
	ret = jpeg_view_layout(segs, segs_len, pad, scan, scan_len, fill, tr,
			       (size_t)vh->trailer_len, view, view_len);
out_free:
	free(tr);
	free(scan);
	return ret;
}

int photo_render_view(int stored_fd, const char *out_path, const struct codec_opts *opts,
		      uint64_t *size)
{
	struct heif_context *ctx = NULL;
	struct heif_image_handle *h = NULL;
	struct photo_planes dec = {0};
	struct view_hdr vh;
	uint8_t *buf = NULL, *item = NULL, *segs = NULL, *view = NULL;
	size_t len, segs_len = 0, view_len;
	int ret;

	/* the view quality is the one recorded at archive time, whatever
	 * opts->view_quality says now: getattr already promised its size */
	ret = codec_read_all(stored_fd, PHOTO_MAX_HEIC_BYTES, &buf, &len);
	if (ret)
		return ret;
	ret = heic_open(buf, len, opts ? opts->threads : 0, &ctx, &h);
	if (ret) {
		log_msg(LOG_ERR, "photo: not an archived photo (not a HEIF file)");
		goto out_free_buf;
	}
	ret = view_source(h, &item, &vh, &segs, &segs_len);
	if (ret)
		goto out_release;
	ret = heic_decode_planes(h, vh.subsamp, vh.width, vh.height, vh.version >= HDR_VERSION_RAW,
				 &dec);
	if (ret) {
		ret = ret == -ENOMEM ? ret : -EINVAL;
		goto out_release;
	}
	ret = render_layout(buf, len, h, &vh, &dec, segs, segs_len, &view, &view_len);
	if (ret)
		goto out_release;
	if (view_len != vh.view_bytes)
		log_msg(LOG_WARNING,
			"photo: view renders to %zu bytes, %llu recorded at archive "
			"time (TurboJPEG changed?)",
			view_len, (unsigned long long)vh.view_bytes);
	ret = codec_write_file(out_path, view, view_len);
	if (!ret)
		*size = view_len;
out_release:
	free(view);
	free(segs);
	free(item);
	photo_planes_release(&dec);
	heif_image_handle_release(h);
	heif_context_free(ctx);
out_free_buf:
	free(buf);
	return ret;
}

/* Does the file start with an ftyp box naming a HEIF brand? 1, 0 or -errno.
 * Most files a rebuild probes (JPEGs kept, videos, documents) stop here. */
static int heif_brand(int fd)
{
	uint8_t b[64];
	ssize_t n = pread(fd, b, sizeof(b), 0);
	size_t box;

	if (n == -1)
		return -errno;
	if (n < 16 || memcmp(b + 4, "ftyp", 4) != 0)
		return 0;
	box = get_be32(b);
	if (box > (size_t)n)
		box = (size_t)n; /* the brands we read are enough to decide */
	/* major brand at 8, minor version at 12, compatible brands from 16 */
	for (size_t i = 8; i + 4 <= box; i += 4)
		if (i != 12 && (memcmp(b + i, "heic", 4) == 0 || memcmp(b + i, "mif1", 4) == 0))
			return 1;
	return 0;
}

/*
 * The hevcfs header item of the HEIC on fd, read through libheif without
 * the coded pixels: *ctx and *h are open (the caller releases both, and f
 * must outlive them), *item malloc'd and vh parsed from it. 0; 1 when fd is
 * not an archived photo (*why says why; nothing is left open); -errno.
 */
static int header_fd(int fd, struct heic_fd *f, struct heif_context **ctx,
		     struct heif_image_handle **h, uint8_t **item, size_t *len, struct view_hdr *vh,
		     const char **why)
{
	int ret;

	*ctx = NULL;
	*h = NULL;
	*item = NULL;
	ret = heif_brand(fd);
	if (ret <= 0) {
		*why = "not a HEIF file";
		return ret ? ret : 1;
	}
	ret = heic_open_fd(f, fd, ctx, h);
	if (ret == -EINVAL) {
		*why = "HEIF file libheif cannot read";
		return 1;
	}
	if (ret)
		return ret;
	ret = heic_get_item(*h, HDR_ITEM_TYPE, HDR_CONTENT_TYPE, item, len);
	if (ret == -EINVAL && f->err)
		ret = f->err;
	if (ret == -ENOENT || ret == -EINVAL) {
		*why = ret == -ENOENT ? "HEIF file without a hevcfs header item"
				      : "unreadable hevcfs header item";
		ret = 1;
	} else if (!ret && hdr_parse(*item, *len, vh)) {
		*why = "damaged hevcfs header item";
		ret = 1;
	}
	if (ret) {
		free(*item);
		*item = NULL;
		heif_image_handle_release(*h);
		heif_context_free(*ctx);
		*h = NULL;
		*ctx = NULL;
	}
	return ret;
}

int photo_probe_archived(int fd, struct codec_result *result)
{
	struct heif_context *ctx;
	struct heif_image_handle *h;
	struct heic_fd f;
	struct view_hdr vh;
	const char *why = NULL;
	uint8_t *item;
	size_t len;
	int ret;

	ret = header_fd(fd, &f, &ctx, &h, &item, &len, &vh, &why);
	if (ret == 1) {
		codec_keep(result, "%s", why);
		return 0;
	}
	if (ret)
		return ret;
	result->archived = 1;
	result->reason[0] = '\0';
	memcpy(result->suffix, ".heic", sizeof(".heic"));
	result->orig_bytes = vh.orig_bytes;
	result->stored_bytes = (uint64_t)f.size;
	result->view_bytes = vh.view_bytes;
	result->quality = vh.quality;
	result->ssim = vh.ssim;
	result->view_ssim = vh.view_ssim;
	result->carries = vh.carries;
	if (vh.flags & HDR_F_OWN_SIZE) {
		result->view_own_size = 1;
		snprintf(result->view_why, sizeof(result->view_why),
			 "image data did not fit the original's at any view quality meeting the "
			 "floor");
	}
	memcpy(result->orig_sum, vh.orig_sum, SUM_LEN);
	memcpy(result->scan_sum, vh.scan_sum, SUM_LEN);
	free(item);
	heif_image_handle_release(h);
	heif_context_free(ctx);
	return 0;
}

int photo_embedded_sums(int fd, struct codec_embedded *e)
{
	struct heif_context *ctx;
	struct heif_image_handle *h;
	struct heic_fd f;
	struct view_hdr vh;
	const char *why = NULL;
	uint8_t *item, *again = NULL;
	uint64_t off, size;
	size_t len;
	ssize_t n;
	int ret;

	memset(e, 0, sizeof(*e));
	ret = header_fd(fd, &f, &ctx, &h, &item, &len, &vh, &why);
	if (ret == 1)
		return 0;
	if (ret)
		return ret;
	if (vh.version < HDR_VERSION_LAYOUT)
		goto out_release; /* no digests recorded */
	/* the field's offset: where iloc puts the item, which must hold the
	 * bytes libheif read */
	ret = mime_item_at(fd, NULL, 0, h, HDR_CONTENT_TYPE, &off, &size);
	if (ret == -EINVAL || ret == -ENOTSUP || ret == -ENOENT) {
		ret = 0;
		goto out_release;
	}
	if (ret)
		goto out_release;
	again = malloc(len);
	if (!again) {
		ret = -ENOMEM;
		goto out_release;
	}
	n = pread(fd, again, len, (off_t)off);
	if (n == -1) {
		ret = -errno;
		goto out_release;
	}
	if ((size_t)n != len || size != len || memcmp(again, item, len) != 0)
		goto out_release;
	e->has = 1;
	memcpy(e->orig_sum, vh.orig_sum, SUM_LEN);
	memcpy(e->self_sum, vh.self_sum, SUM_LEN);
	e->self_off = off + HDR_SELF_SUM;
	e->orig_bytes = vh.orig_bytes;
out_release:
	free(again);
	free(item);
	heif_image_handle_release(h);
	heif_context_free(ctx);
	return ret;
}

/* Read len bytes of fd at off and digest them. 0, -EINVAL (the file ends
 * before), -errno, -ENOMEM. */
static int sum_range(int fd, uint64_t off, uint64_t len, uint8_t out[SUM_LEN])
{
	uint8_t *buf = malloc(SUM_BLOCK);
	struct sum *s = NULL;
	int ret;

	if (!buf)
		return -ENOMEM;
	ret = sum_new(&s);
	while (!ret && len) {
		size_t want = len < SUM_BLOCK ? (size_t)len : SUM_BLOCK;
		ssize_t n = pread(fd, buf, want, (off_t)off);
		if (n == -1 && errno == EINTR)
			continue;
		if (n <= 0) {
			ret = n == 0 ? -EINVAL : -errno;
			break;
		}
		ret = sum_update(s, buf, (size_t)n);
		off += (uint64_t)n;
		len -= (uint64_t)n;
	}
	if (!ret)
		ret = sum_final(s, out);
	sum_free(&s);
	free(buf);
	return ret;
}

/* Is the trailer that vh says lies contiguous at vh->tail_src really
 * there: in the mpvd box that ends the file, or as the trailer item's data
 * where iloc puts it, and of the recorded digest? 0, -EINVAL, -errno. */
static int check_tail(int fd, const struct heic_fd *f, const struct heif_image_handle *h,
		      const struct view_hdr *vh)
{
	uint8_t sum[SUM_LEN], box[MPVD_HEADER];
	uint64_t off, size;
	int ret;

	if (vh->video_len == vh->trailer_len) {
		if (vh->tail_src < MPVD_HEADER ||
		    vh->tail_src + vh->trailer_len != (uint64_t)f->size ||
		    pread(fd, box, sizeof(box), (off_t)(vh->tail_src - MPVD_HEADER)) !=
			(ssize_t)sizeof(box) ||
		    get_be32(box) != vh->trailer_len + MPVD_HEADER || memcmp(box + 4, "mpvd", 4))
			return -EINVAL;
	} else {
		ret = mime_item_at(fd, NULL, 0, h, TRAILER_CONTENT_TYPE, &off, &size);
		if (ret == -ENOMEM || (ret && ret != -EINVAL && ret != -ENOENT && ret != -ENOTSUP))
			return ret;
		if (ret || off != vh->tail_src || size != vh->trailer_len)
			return -EINVAL;
	}
	ret = sum_range(fd, vh->tail_src, vh->trailer_len, sum);
	if (ret)
		return ret;
	return memcmp(sum, vh->trailer_sum, SUM_LEN) ? -EINVAL : 0;
}

int photo_view_map(int fd, struct codec_view_map *m)
{
	struct heif_context *ctx;
	struct heif_image_handle *h;
	struct heic_fd f;
	struct view_hdr vh;
	const char *why = NULL;
	uint8_t *item, *segs = NULL, *tables = NULL;
	size_t len, segs_len = 0, tables_len = 0;
	int ret;

	ret = header_fd(fd, &f, &ctx, &h, &item, &len, &vh, &why);
	if (ret == 1)
		log_msg(LOG_ERR, "photo: no view to map: %s", why);
	if (ret)
		return ret == 1 ? -EINVAL : ret;
	if (!vh.view_bytes) {
		ret = -ENOTSUP; /* version 1: the size was not recorded */
		goto out_release;
	}
	ret = rebuild_segs(h, &vh, &segs, &segs_len);
	if (ret == -EINVAL && f.err)
		ret = f.err;
	if (ret)
		goto out_release;
	if (vh.version >= HDR_VERSION_FILL) {
		ret = jpeg_view_tables(vh.view_quality, vh.subsamp, vh.width, vh.height, &tables,
				       &tables_len);
		if (ret && ret != -ENOMEM)
			ret = -ENOTSUP; /* no map: the view is rendered */
		if (ret)
			goto out_release;
	}
	m->size = vh.view_bytes;
	m->head_len = 2 + segs_len + vh.pad + tables_len;
	if (m->head_len > m->size) {
		ret = -EINVAL;
		goto out_release;
	}
	ret = jpeg_view_layout(segs, segs_len, vh.pad, tables, tables_len, 0, NULL, 0, &m->head,
			       &len);
	if (ret)
		goto out_release;
	if (vh.version >= HDR_VERSION_FILL) {
		/* the fill and the EOI that end the image data */
		m->end_len = (uint64_t)vh.fill + 2;
		if (vh.trailer_len > m->size || m->end_len > m->size - vh.trailer_len ||
		    m->size - vh.trailer_len - m->end_len <= m->head_len) {
			log_msg(LOG_ERR, "photo: the view's recorded layout does not add up");
			ret = -EINVAL;
			goto out_release;
		}
		m->end_off = m->size - vh.trailer_len - m->end_len;
	}
	if (vh.trailer_len && vh.tail_src) {
		ret = check_tail(fd, &f, h, &vh);
		if (ret == -EINVAL)
			log_msg(LOG_ERR, "photo: the trailer is not where the header item says");
		if (ret)
			goto out_release;
		m->tail_off = vh.view_bytes - vh.trailer_len;
		m->tail_len = vh.trailer_len;
		m->tail_src = vh.tail_src;
	}
out_release:
	if (ret) {
		free(m->head);
		memset(m, 0, sizeof(*m));
	}
	free(tables);
	free(segs);
	free(item);
	heif_image_handle_release(h);
	heif_context_free(ctx);
	return ret;
}
