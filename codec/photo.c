/* photo — JPEG -> HEIC archiving (quality search, verification, keep
 * decisions) and the legacy JPEG view rendered back from the HEIC. */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <libheif/heif.h>
#include <math.h>
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
 *   8  1  version (1)
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
 *  68  N  one record per APPn and COM segment of the original, in order:
 *         0x00, then the segment verbatim (marker, length, payload): IPTC,
 *         maker notes, comments, vendor segments;
 *         or a source (1 Exif, 2 XMP, 3 Extended XMP, 4 ICC), marker byte,
 *         u16 prefix length P, P payload bytes (e.g. "ICC_PROFILE\0", seq,
 *         count), u32 offset and u16 length of the source bytes that end
 *         the payload. So Exif, XMP and ICC are not stored twice.
 * Version 1 (written before the quality and SSIMs were recorded) is the same
 * without bytes 56..67: its records start at 56. A reader that sees another
 * version refuses the file (-EINVAL).
 */
#define HDR_ITEM_TYPE "mime"
#define HDR_CONTENT_TYPE "application/x-hevcfs-jpeg-header"
#define HDR_MAGIC "HVFSJPEG"
#define HDR_VERSION 2
#define HDR_FIXED 68
#define HDR_FIXED_V1 56
#define HDR_SSIM_SCALE 1e6
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
 * jpg/hdr: 4 photos, 2-12 MP) on 2 cores, auto quality at SSIM >= 0.99:
 * see PHOTO_DEF_PRESET. opts->preset overrides the preset.
 */
#ifndef PHOTO_DEF_PRESET
#define PHOTO_DEF_PRESET "medium"
#endif
#ifndef PHOTO_DEF_TUNE
#define PHOTO_DEF_TUNE "ssim"
#endif

/* Auto quality: first guess (the issue measured ~0.39x the JPEG at SSIM
 * ~0.99 on phone photos around q60), search bounds and at most this many
 * encodes. libheif 1.15 turns quality q into x265 CRF (100 - q) / 2 in whole
 * steps, so q 2k-1 and 2k give the same bytes: search on even qualities.
 * d log(1 - SSIM) / dq is about -0.08 on the corpus phone photos. */
#define Q_START 60
#define Q_GRID 2
#define Q_PRIOR_SLOPE (-0.08)
#define Q_MIN 10
#define Q_MAX 96
#define Q_MAX_TRIES 4

/* Keep the JPEG unless the HEIC is at most this fraction of it. */
#define MAX_SIZE_RATIO 0.90
/* View quality is raised in these steps up to VIEW_Q_MAX to meet the floor. */
#define VIEW_Q_STEP 3
#define VIEW_Q_MAX 98

/* What the header item says, parsed (segs borrowed from the item buffer). */
struct view_hdr {
	int version;
	int view_quality, subsamp, orientation;
	int width, height;
	uint64_t orig_bytes, view_bytes;
	int quality;             /* HEVC quality (0: version 1, not recorded) */
	double ssim, view_ssim;  /* as measured at archive time (0: version 1) */
	uint32_t src_len[JPEG_SRC_COUNT]; /* index by enum jpeg_src */
	const uint8_t *recs;              /* segment records, borrowed */
	size_t recs_len;
};

/* One encode of the auto-quality search. */
struct attempt {
	int q;
	double ssim;
	size_t bytes;             /* serialised HEIC, before the header item */
	struct heif_context *ctx; /* kept to add the header item and write */
	struct photo_planes dec;  /* its decoded planes, for the view */
};

/* Everything photo_archive holds, released in one place. */
struct photo_job {
	uint8_t *src;
	size_t src_len;
	struct jpeg_info ji;
	struct photo_planes orig;
	struct attempt best, cur;
	uint8_t *view, *hdr, *heic, *check_view, *check_item;
	size_t view_len, hdr_len, heic_len, check_view_len;
	struct photo_planes check;
	struct heif_context *check_ctx;
	struct heif_image_handle *check_handle;
};

static void attempt_release(struct attempt *a)
{
	heif_context_free(a->ctx);
	photo_planes_release(&a->dec);
	memset(a, 0, sizeof(*a));
}

static void job_release(struct photo_job *j)
{
	free(j->src);
	jpeg_info_release(&j->ji);
	photo_planes_release(&j->orig);
	attempt_release(&j->best);
	attempt_release(&j->cur);
	free(j->view);
	free(j->hdr);
	free(j->heic);
	free(j->check_view);
	free(j->check_item);
	photo_planes_release(&j->check);
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
	return ssim <= 0 ? 0 : ssim >= 1 ? (uint32_t)HDR_SSIM_SCALE
				      : (uint32_t)lround(ssim * HDR_SSIM_SCALE);
}

/* Build the header item (layout above, current version) for vh and the
 * segments of ji into a malloc'd buffer. */
static int hdr_pack(const struct view_hdr *vh, const struct jpeg_info *ji, uint8_t **out,
		    size_t *len)
{
	/* a record is never longer than its segment plus its own 9 bytes */
	size_t cap = HDR_FIXED + ji->segs_len + 9 * (ji->segs_len / 4 + 1), n = HDR_FIXED;
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
	for (size_t off = 0; off < ji->segs_len;) {
		const uint8_t *seg = ji->segs + off;
		size_t seglen = 2 + get_be16(seg + 2);
		const struct jpeg_ref *r = ref_at(ji, off);

		if (r) {
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
	put_be32(p + 52, (uint32_t)(n - HDR_FIXED));
	*out = p;
	*len = n;
	return 0;
}

/* Parse and check a header item (version 1 or 2). 0 or -EINVAL (logged). */
static int hdr_parse(const uint8_t *p, size_t len, struct view_hdr *vh)
{
	size_t fixed;

	memset(vh, 0, sizeof(*vh));
	if (len < HDR_FIXED_V1 || memcmp(p, HDR_MAGIC, 8) != 0) {
		log_msg(LOG_ERR, "photo: hevcfs header item is malformed");
		return -EINVAL;
	}
	if (p[8] != 1 && p[8] != HDR_VERSION) {
		log_msg(LOG_ERR, "photo: hevcfs header version %u not supported", p[8]);
		return -EINVAL;
	}
	vh->version = p[8];
	fixed = vh->version == 1 ? HDR_FIXED_V1 : HDR_FIXED;
	if (len < fixed) {
		log_msg(LOG_ERR, "photo: hevcfs header item is malformed");
		return -EINVAL;
	}
	if (vh->version >= 2) {
		vh->quality = p[56];
		vh->ssim = get_be32(p + 60) / HDR_SSIM_SCALE;
		vh->view_ssim = get_be32(p + 64) / HDR_SSIM_SCALE;
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
	    (vh->subsamp != TJSAMP_444 && vh->subsamp != TJSAMP_422 &&
	     vh->subsamp != TJSAMP_420 && vh->subsamp != TJSAMP_GRAY) ||
	    vh->width < 1 || vh->height < 1 || vh->width > HEVC_MAX_SIDE ||
	    vh->height > HEVC_MAX_SIDE ||
	    (uint64_t)vh->width * (uint64_t)vh->height > HEVC_MAX_LUMA_PS || vh->quality > 100 || vh->ssim > 1 ||
	    vh->view_ssim > 1) {
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
				if (left < 5 || r[1] != 0xFF || (sl = 2 + get_be16(r + 3)) > left - 1)
					goto bad;
				if (pass)
					memcpy(out + n, r + 1, sl);
				n += sl, r += 1 + sl;
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

/* Create or truncate path, write buf, fsync and close. 0 or -errno. */
static int write_file(const char *path, const uint8_t *buf, size_t len)
{
	size_t off = 0;
	int fd, ret = 0;

	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd == -1) {
		ret = -errno;
		log_msg(LOG_ERR, "photo: creating %s: %s", path, strerror(-ret));
		return ret;
	}
	while (off < len) {
		ssize_t n = write(fd, buf + off, len - off);
		if (n == -1 && errno == EINTR)
			continue;
		if (n == -1) {
			ret = -errno;
			goto out_close;
		}
		off += (size_t)n;
	}
	if (fsync(fd) == -1)
		ret = -errno;
out_close:
	if (close(fd) == -1 && !ret)
		ret = -errno;
	if (ret)
		log_msg(LOG_ERR, "photo: writing %s: %s", path, strerror(-ret));
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

/* Encode the photo at quality q into a, decode it back and measure its luma
 * SSIM against the original. 0 or -errno. */
static int try_quality(struct photo_job *j, const struct heic_params *base, int q,
		       struct attempt *a)
{
	struct heic_params hp = *base;
	struct heif_context *rctx = NULL;
	struct heif_image_handle *h = NULL;
	uint8_t *buf = NULL;
	int ret;

	memset(a, 0, sizeof(*a));
	a->q = q;
	hp.quality = q;
	ret = heic_encode(&j->orig, &j->ji, &hp, &a->ctx);
	if (ret)
		return ret;
	ret = heic_write_mem(a->ctx, &buf, &a->bytes);
	if (ret)
		goto out_release_attempt;
	ret = heic_open(buf, a->bytes, hp.threads, &rctx, &h);
	if (ret)
		goto out_free_buf;
	ret = heic_decode_planes(h, j->orig.subsamp, j->orig.width, j->orig.height, &a->dec);
	if (ret)
		goto out_close;
	a->ssim = luma_ssim(&j->orig, &a->dec);
	log_msg(LOG_DEBUG, "photo: q%d luma SSIM %.5f, %zu bytes", q, a->ssim, a->bytes);
out_close:
	heif_image_handle_release(h);
	heif_context_free(rctx);
out_free_buf:
	free(buf);
out_release_attempt:
	if (ret)
		attempt_release(a);
	return ret;
}

/*
 * Find the lowest quality whose luma SSIM reaches min_ssim in at most
 * Q_MAX_TRIES encodes. log(1 - SSIM) is close to linear in the quality: the
 * first step uses Q_PRIOR_SLOPE (measured on phone photos), later ones a
 * secant through the last two encodes, aiming at the floor and rounding up
 * to the libheif quality grid. The search stops when the model says the
 * best passing quality is the answer, when passing and failing qualities
 * are adjacent on the grid, or when a failing encode is already over the size
 * limit (higher qualities only grow). On return j->best holds the lowest
 * passing attempt (ctx NULL when none passed), *fail_q and *fail_ssim the
 * highest failing one.
 */
static int search_quality(struct photo_job *j, const struct codec_opts *opts,
			  const struct heic_params *hp, double min_ssim, int *tries,
			  int *fail_q, double *fail_ssim, size_t *fail_bytes)
{
	double limit = MAX_SIZE_RATIO * (double)j->src_len, target = log(1.0 - min_ssim);
	int q = opts->photo_quality > 0 ? opts->photo_quality : Q_START;
	int q_pass = INT32_MAX, q_fail = INT32_MIN, ret;
	double lq[2] = {0}, ld[2] = {0};

	if (q > 100)
		q = 100;
	*fail_q = 0;
	*fail_ssim = 0;
	*fail_bytes = 0;
	for (*tries = 0; *tries < Q_MAX_TRIES;) {
		double b, est;
		int next;

		if (cancelled(opts))
			return -ECANCELED;
		ret = try_quality(j, hp, q, &j->cur);
		if (ret)
			return ret;
		lq[*tries & 1] = q;
		ld[*tries & 1] = log(fmax(1.0 - j->cur.ssim, 1e-6));
		(*tries)++;
		if (j->cur.ssim >= min_ssim) {
			q_pass = q;
			attempt_release(&j->best);
			j->best = j->cur;
			memset(&j->cur, 0, sizeof(j->cur));
		} else {
			size_t bytes = j->cur.bytes;

			q_fail = q;
			*fail_q = q;
			*fail_ssim = j->cur.ssim;
			*fail_bytes = bytes;
			attempt_release(&j->cur);
			if ((double)bytes > limit)
				break;
		}
		if (opts->photo_quality > 0)
			break;
		b = Q_PRIOR_SLOPE;
		if (*tries >= 2 && lq[0] != lq[1] && (ld[1] - ld[0]) / (lq[1] - lq[0]) < 0)
			b = (ld[1] - ld[0]) / (lq[1] - lq[0]);
		est = q + (target - ld[(*tries - 1) & 1]) / b;
		next = (int)ceil(est / Q_GRID) * Q_GRID;
		if (next > Q_MAX)
			next = Q_MAX;
		if (next < Q_MIN)
			next = Q_MIN;
		if (next <= q_fail)
			next = q_fail + Q_GRID;
		if (next >= q_pass || next > Q_MAX)
			break;
		q = next;
	}
	return 0;
}

/*
 * Decode the HEIC whose primary image handle is h into *dec and render its
 * JPEG view from the hevcfs header item (*item holds the item; vh points
 * into it). Shared by photo_render_view and the archive-time check.
 */
static int render_from_handle(const struct heif_image_handle *h, uint8_t **item,
			      struct view_hdr *vh, struct photo_planes *dec, uint8_t **view,
			      size_t *view_len)
{
	uint8_t *segs = NULL;
	size_t item_len, segs_len = 0;
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
	ret = rebuild_segs(h, vh, &segs, &segs_len);
	if (ret)
		return ret;
	ret = heic_decode_planes(h, vh->subsamp, vh->width, vh->height, dec);
	if (!ret)
		ret = jpeg_encode_view(dec, vh->view_quality, segs, segs_len, view, view_len);
	else if (ret != -ENOMEM)
		ret = -EINVAL;
	free(segs);
	return ret;
}

/* Render the view of the best attempt, raising its quality until its luma
 * SSIM against the original reaches the floor. 0 with *ok set, or -errno. */
static int make_view(struct photo_job *j, const struct codec_opts *opts, int *view_q,
		     double *view_ssim, int *ok)
{
	double floor_ = opts->min_view_ssim > 0 ? opts->min_view_ssim : CODEC_DEF_MIN_VIEW_SSIM;
	int q = opts->view_quality > 0 ? opts->view_quality : CODEC_DEF_VIEW_QUALITY;
	char why[128];
	int ret;

	if (q > 100)
		q = 100;
	*ok = 0;
	for (;;) {
		struct photo_planes vp;

		free(j->view);
		j->view = NULL;
		ret = jpeg_encode_view(&j->best.dec, q, j->ji.segs, j->ji.segs_len, &j->view,
				       &j->view_len);
		if (ret)
			return ret;
		ret = jpeg_decode_planes(j->view, j->view_len, &vp, why, sizeof(why));
		if (ret) {
			log_msg(LOG_ERR, "photo: own view does not decode: %s", why);
			return ret == -ENOMEM ? ret : -EIO;
		}
		*view_ssim = luma_ssim(&j->orig, &vp);
		photo_planes_release(&vp);
		*view_q = q;
		if (*view_ssim >= floor_) {
			*ok = 1;
			return 0;
		}
		if (q >= VIEW_Q_MAX)
			return 0;
		q = q + VIEW_Q_STEP > VIEW_Q_MAX ? VIEW_Q_MAX : q + VIEW_Q_STEP;
	}
}

/* Read out_path back and check what it promises: the metadata items are
 * there, the ICC profile is intact, orientation is expressed, the pixels
 * meet the floor, and it renders exactly the view measured. 0, -EIO when
 * the file does not hold up (logged), or -errno. */
static int verify_written(struct photo_job *j, const char *out_path, int threads,
			  double min_ssim, double *ssim)
{
	const struct jpeg_info *ji = &j->ji;
	struct view_hdr vh;
	uint8_t *icc = NULL;
	int fd, ret, w, h, swap;

	fd = open(out_path, O_RDONLY | O_CLOEXEC);
	if (fd == -1)
		return -errno;
	ret = codec_read_all(fd, PHOTO_MAX_HEIC_BYTES, &j->heic, &j->heic_len);
	close(fd);
	if (ret)
		return ret;
	ret = heic_open(j->heic, j->heic_len, threads, &j->check_ctx, &j->check_handle);
	if (ret)
		return ret == -ENOMEM ? ret : -EIO;
	if (ji->exif && heif_image_handle_get_number_of_metadata_blocks(j->check_handle,
									"Exif") < 1) {
		log_msg(LOG_ERR, "photo: %s lacks its Exif item", out_path);
		return -EIO;
	}
	if (ji->xmp || ji->xmp_ext) {
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
	ret = render_from_handle(j->check_handle, &j->check_item, &vh, &j->check,
				 &j->check_view, &j->check_view_len);
	if (ret)
		return ret == -ENOMEM ? ret : -EIO;
	*ssim = luma_ssim(&j->orig, &j->check);
	if (*ssim < min_ssim || j->check_view_len != j->view_len ||
	    vh.view_bytes != j->view_len || memcmp(j->check_view, j->view, j->view_len) != 0) {
		log_msg(LOG_ERR, "photo: %s does not decode as encoded (SSIM %.5f, view %zu/%zu)",
			out_path, *ssim, j->check_view_len, j->view_len);
		return -EIO;
	}
	return 0;
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

int photo_archive(int src_fd, const char *out_path, const char *view_path,
		  const struct codec_opts *opts, struct codec_result *result)
{
	static const struct codec_opts defaults;
	struct photo_job j = {0};
	struct heic_params hp = {0};
	struct view_hdr vh = {0};
	double min_ssim, fail_ssim, view_ssim = 0, check_ssim = 0, t0 = now();
	int ret, tries = 0, fail_q, view_q = 0, view_ok;
	size_t fail_bytes;
	char why[128];

	if (!opts)
		opts = &defaults;
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

	hp.preset = opts->preset ? opts->preset : PHOTO_DEF_PRESET;
	hp.tune = PHOTO_DEF_TUNE;
	hp.threads = opts->threads;
	ret = search_quality(&j, opts, &hp, min_ssim, &tries, &fail_q, &fail_ssim, &fail_bytes);
	if (ret == -EIO || ret == -EINVAL || ret == -ENOTSUP) {
		/* libheif said why in the log; retrying would fail the same way */
		codec_keep(result, "HEIC encoding failed (%s)", strerror(-ret));
		ret = 0;
		goto out_release_job;
	}
	if (ret)
		goto out_release_job;
	if (!j.best.ctx && (double)fail_bytes > MAX_SIZE_RATIO * (double)j.src_len) {
		codec_keep(result, "not smaller (%.0f%% of the JPEG at q%d, still under the SSIM "
				   "floor)",
			   100.0 * (double)fail_bytes / (double)j.src_len, fail_q);
		goto out_release_job;
	}
	if (!j.best.ctx) {
		codec_keep(result, "luma SSIM %.4f under %.3f even at q%d", fail_ssim, min_ssim,
			   fail_q);
		goto out_release_job;
	}
	/* the header item adds at most its fixed part and the segments */
	if ((double)(j.best.bytes + HDR_FIXED) > MAX_SIZE_RATIO * (double)j.src_len) {
		codec_keep(result, "not smaller (%.0f%% of the JPEG at q%d)",
			   100.0 * (double)j.best.bytes / (double)j.src_len, j.best.q);
		goto out_release_job;
	}
	if (cancelled(opts)) {
		ret = -ECANCELED;
		goto out_release_job;
	}
	ret = make_view(&j, opts, &view_q, &view_ssim, &view_ok);
	if (ret)
		goto out_release_job;
	if (!view_ok) {
		codec_keep(result, "JPEG view luma SSIM %.4f under the floor even at quality %d",
			   view_ssim, view_q);
		goto out_release_job;
	}

	vh.view_quality = view_q;
	vh.subsamp = j.orig.subsamp;
	vh.orientation = j.ji.orientation;
	vh.width = j.orig.width;
	vh.height = j.orig.height;
	vh.orig_bytes = j.src_len;
	vh.view_bytes = j.view_len;
	vh.quality = j.best.q;
	vh.ssim = j.best.ssim;
	vh.view_ssim = view_ssim;
	vh.src_len[JPEG_SRC_EXIF] = j.ji.exif ? (uint32_t)j.ji.exif_len : 0;
	vh.src_len[JPEG_SRC_XMP] = j.ji.xmp ? (uint32_t)j.ji.xmp_len : 0;
	vh.src_len[JPEG_SRC_XMP_EXT] = j.ji.xmp_ext ? (uint32_t)j.ji.xmp_ext_len : 0;
	vh.src_len[JPEG_SRC_ICC] = j.ji.icc ? (uint32_t)j.ji.icc_len : 0;
	ret = hdr_pack(&vh, &j.ji, &j.hdr, &j.hdr_len);
	if (!ret)
		ret = heic_add_item(j.best.ctx, HDR_ITEM_TYPE, HDR_CONTENT_TYPE, j.hdr, j.hdr_len);
	if (!ret)
		ret = heic_write_mem(j.best.ctx, &j.heic, &j.heic_len);
	if (ret)
		goto out_release_job;
	if ((double)j.heic_len > MAX_SIZE_RATIO * (double)j.src_len) {
		codec_keep(result, "not smaller (%.0f%% of the JPEG at q%d)",
			   100.0 * (double)j.heic_len / (double)j.src_len, j.best.q);
		goto out_release_job;
	}
	ret = write_file(out_path, j.heic, j.heic_len);
	if (ret)
		goto out_release_job;
	free(j.heic);
	j.heic = NULL;
	ret = verify_written(&j, out_path, opts->threads, min_ssim, &check_ssim);
	if (ret)
		goto out_release_job;
	if (view_path) {
		ret = write_file(view_path, j.view, j.view_len);
		if (ret)
			goto out_release_job;
	}

	result->archived = 1;
	result->reason[0] = '\0';
	memcpy(result->suffix, ".heic", sizeof(".heic"));
	result->stored_bytes = j.heic_len;
	result->view_bytes = j.view_len;
	result->quality = j.best.q;
	result->ssim = check_ssim;
	result->view_ssim = view_ssim;
	log_msg(LOG_INFO,
		"photo: %dx%d q%d SSIM %.4f, %zu -> %zu bytes (%.0f%%), view q%d SSIM %.4f, "
		"%d encodes, %.1f s",
		j.orig.width, j.orig.height, j.best.q, check_ssim, j.src_len, j.heic_len,
		100.0 * (double)j.heic_len / (double)j.src_len, view_q, view_ssim, tries,
		now() - t0);
out_release_job:
	job_release(&j);
	return ret;
}

int photo_render_view(int stored_fd, const char *out_path, const struct codec_opts *opts,
		      uint64_t *size)
{
	struct heif_context *ctx = NULL;
	struct heif_image_handle *h = NULL;
	struct photo_planes dec = {0};
	struct view_hdr vh;
	uint8_t *buf = NULL, *item = NULL, *view = NULL;
	size_t len, view_len;
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
	ret = render_from_handle(h, &item, &vh, &dec, &view, &view_len);
	if (ret)
		goto out_release;
	if (view_len != vh.view_bytes)
		log_msg(LOG_WARNING, "photo: view renders to %zu bytes, %llu recorded at archive "
				     "time (TurboJPEG changed?)",
			view_len, (unsigned long long)vh.view_bytes);
	ret = write_file(out_path, view, view_len);
	if (!ret)
		*size = view_len;
out_release:
	free(view);
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

int photo_probe_archived(int fd, struct codec_result *result)
{
	struct heif_context *ctx = NULL;
	struct heif_image_handle *h = NULL;
	struct heic_fd f;
	struct view_hdr vh;
	uint8_t *item = NULL;
	size_t len;
	int ret;

	ret = heif_brand(fd);
	if (ret <= 0) {
		if (!ret)
			codec_keep(result, "not a HEIF file");
		return ret;
	}
	ret = heic_open_fd(&f, fd, &ctx, &h);
	if (ret == -EINVAL) {
		codec_keep(result, "HEIF file libheif cannot read");
		return 0;
	}
	if (ret)
		return ret;
	ret = heic_get_item(h, HDR_ITEM_TYPE, HDR_CONTENT_TYPE, &item, &len);
	if (ret == -EINVAL && f.err)
		ret = f.err;
	if (ret == -ENOENT || ret == -EINVAL) {
		codec_keep(result, ret == -ENOENT ? "HEIF file without a hevcfs header item"
						  : "unreadable hevcfs header item");
		ret = 0;
		goto out_release;
	}
	if (ret)
		goto out_release;
	if (hdr_parse(item, len, &vh)) {
		codec_keep(result, "damaged hevcfs header item");
		goto out_release;
	}
	result->archived = 1;
	result->reason[0] = '\0';
	memcpy(result->suffix, ".heic", sizeof(".heic"));
	result->orig_bytes = vh.orig_bytes;
	result->stored_bytes = (uint64_t)f.size;
	result->view_bytes = vh.view_bytes;
	result->quality = vh.quality;
	result->ssim = vh.ssim;
	result->view_ssim = vh.view_ssim;
out_release:
	free(item);
	heif_image_handle_release(h);
	heif_context_free(ctx);
	return ret;
}
