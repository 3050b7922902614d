/* sibling — a JPEG of a HEIF photo's primary image, for viewers that open
 * no HEIC: the pixels as stored, the orientation as EXIF, its Exif, XMP and
 * ICC profile carried. */
#include "internal.h"

#include <errno.h>
#include <libheif/heif.h>
#include <stdlib.h>
#include <string.h>
#include <turbojpeg.h>

/* Largest HEIF file we read whole. */
#define SIBLING_MAX_BYTES (1ull << 30)
/* An APPn payload is at most this long (its length field counts itself). */
#define APP_MAX_PAYLOAD 65533
/* Payload identifiers. */
static const char EXIF_ID[6] = "Exif\0";
static const char XMP_ID[] = "http://ns.adobe.com/xap/1.0/"; /* with its NUL */
static const char ICC_ID[] = "ICC_PROFILE";		     /* with its NUL */
/* An ICC chunk's header: the identifier, sequence number, count. */
#define ICC_CHUNK_HDR (sizeof(ICC_ID) + 2)
/* EXIF: the Orientation tag, of type SHORT; IFD entries are 12 bytes. */
#define TAG_ORIENTATION 0x0112
#define TIFF_SHORT 3
#define IFD_ENTRY 12
/* libheif puts a 4-byte offset to the TIFF header before an Exif item. */
#define EXIF_ITEM_PREFIX 4

/* A growing output buffer. */
struct out {
	uint8_t *p;
	size_t len, cap;
};

static int out_add(struct out *o, const void *data, size_t n)
{
	if (o->len + n > o->cap) {
		size_t cap = o->cap ? o->cap : 65536;
		uint8_t *q;
		while (cap < o->len + n)
			cap *= 2;
		q = realloc(o->p, cap);
		if (!q)
			return -ENOMEM;
		o->p = q;
		o->cap = cap;
	}
	memcpy(o->p + o->len, data, n);
	o->len += n;
	return 0;
}

/* One APPn segment: marker, length, id (n_id bytes), then n bytes. */
static int out_app(struct out *o, int marker, const void *id, size_t n_id, const void *data,
		   size_t n)
{
	uint8_t h[4] = {0xFF, (uint8_t)marker, (uint8_t)((n_id + n + 2) >> 8),
			(uint8_t)(n_id + n + 2)};
	int ret;

	if (n_id + n > APP_MAX_PAYLOAD)
		return -EFBIG;
	ret = out_add(o, h, sizeof(h));
	if (!ret)
		ret = out_add(o, id, n_id);
	if (!ret && n)
		ret = out_add(o, data, n);
	return ret;
}

static unsigned rd16(const uint8_t *p, int le)
{
	return le ? (unsigned)(p[0] | p[1] << 8) : (unsigned)(p[0] << 8 | p[1]);
}

static uint32_t rd32(const uint8_t *p, int le)
{
	return le ? (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
			(uint32_t)p[3] << 24
		  : (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void wr16(uint8_t *p, unsigned v, int le)
{
	p[le ? 0 : 1] = (uint8_t)v;
	p[le ? 1 : 0] = (uint8_t)(v >> 8);
}

static void wr32(uint8_t *p, uint32_t v, int le)
{
	for (int i = 0; i < 4; i++)
		p[le ? i : 3 - i] = (uint8_t)(v >> (8 * i));
}

/*
 * A TIFF (EXIF) whose IFD0 says orientation o: the tag set in place when
 * IFD0 has it; else a copy of IFD0 with the tag added is appended and the
 * header pointed at it (every other offset stays valid: nothing moves).
 * *out malloc'd. 0, -EINVAL (not a TIFF we can read), -ENOMEM.
 */
static int tiff_with_orientation(const uint8_t *t, size_t n, int o, uint8_t **out, size_t *out_len)
{
	size_t ifd, count, at;
	uint8_t *p;
	int le;

	if (n < 8 || !((t[0] == 'I' && t[1] == 'I') || (t[0] == 'M' && t[1] == 'M')))
		return -EINVAL;
	le = t[0] == 'I';
	ifd = rd32(t + 4, le);
	if (ifd < 8 || ifd > n - 2)
		return -EINVAL;
	count = rd16(t + ifd, le);
	if (ifd + 2 + IFD_ENTRY * count + 4 > n)
		return -EINVAL;
	for (size_t i = 0; i < count; i++) {
		const uint8_t *e = t + ifd + 2 + IFD_ENTRY * i;
		if (rd16(e, le) == TAG_ORIENTATION && rd16(e + 2, le) == TIFF_SHORT &&
		    rd32(e + 4, le) == 1) {
			p = malloc(n);
			if (!p)
				return -ENOMEM;
			memcpy(p, t, n);
			wr16(p + (e - t) + 8, (unsigned)o, le);
			wr16(p + (e - t) + 10, 0, le);
			*out = p;
			*out_len = n;
			return 0;
		}
	}
	/* a new IFD0 at the end, on a word boundary, entries in tag order
	 * (an Orientation entry of another type or count is replaced) */
	at = (n + 1) & ~(size_t)1;
	p = calloc(1, at + 2 + IFD_ENTRY * (count + 1) + 4);
	if (!p)
		return -ENOMEM;
	memcpy(p, t, n);
	wr32(p + 4, (uint32_t)at, le);
	{
		size_t k = 0;
		int put = 0;
		for (size_t i = 0; i <= count; i++) {
			const uint8_t *e = t + ifd + 2 + IFD_ENTRY * i;
			uint8_t *d = p + at + 2 + IFD_ENTRY * k;
			if (!put && (i == count || rd16(e, le) > TAG_ORIENTATION)) {
				wr16(d, TAG_ORIENTATION, le);
				wr16(d + 2, TIFF_SHORT, le);
				wr32(d + 4, 1, le);
				wr16(d + 8, (unsigned)o, le);
				put = 1;
				k++;
				d += IFD_ENTRY;
			}
			if (i < count && rd16(e, le) != TAG_ORIENTATION) {
				memcpy(d, e, IFD_ENTRY);
				k++;
			}
		}
		wr16(p + at, (unsigned)k, le);
		memcpy(p + at + 2 + IFD_ENTRY * k, t + ifd + 2 + IFD_ENTRY * count, 4);
		*out = p;
		*out_len = at + 2 + IFD_ENTRY * k + 4;
	}
	return 0;
}

/* The smallest EXIF that says orientation o: a big-endian TIFF header and
 * an IFD0 of one entry. */
static void minimal_tiff(int o, uint8_t t[26])
{
	memset(t, 0, 26);
	memcpy(t, "MM\0*\0\0\0\x08\0\x01", 10);
	wr16(t + 10, TAG_ORIENTATION, 0);
	wr16(t + 12, TIFF_SHORT, 0);
	wr32(t + 14, 1, 0);
	wr16(t + 18, (unsigned)o, 0);
}

/* ---- irot and imir as an EXIF orientation ---- */

/* A 3 x 2 picture of distinct samples, transformed as HEIF says. */
struct grid {
	int w, h;
	uint8_t v[6];
};

static uint8_t grid_at(const struct grid *g, int x, int y)
{
	return g->v[y * g->w + x];
}

/* Turn a quarter anticlockwise (irot's unit). */
static void grid_rot_ccw(struct grid *g)
{
	struct grid r = {g->h, g->w, {0}};

	for (int y = 0; y < g->h; y++)
		for (int x = 0; x < g->w; x++)
			r.v[(g->w - 1 - x) * r.w + y] = grid_at(g, x, y);
	*g = r;
}

/* Mirror: left to right (lr) or top to bottom. */
static void grid_mirror(struct grid *g, int lr)
{
	struct grid r = *g;

	for (int y = 0; y < g->h; y++)
		for (int x = 0; x < g->w; x++)
			r.v[y * g->w + x] =
			    lr ? grid_at(g, g->w - 1 - x, y) : grid_at(g, x, g->h - 1 - y);
	*g = r;
}

/* Where EXIF orientation o takes displayed sample (x, y) from in a stored
 * w x h picture. */
static void exif_source(int o, int w, int h, int x, int y, int *sx, int *sy)
{
	switch (o) {
	case 2:
		*sx = w - 1 - x, *sy = y;
		break;
	case 3:
		*sx = w - 1 - x, *sy = h - 1 - y;
		break;
	case 4:
		*sx = x, *sy = h - 1 - y;
		break;
	case 5:
		*sx = y, *sy = x;
		break;
	case 6:
		*sx = y, *sy = h - 1 - x;
		break;
	case 7:
		*sx = w - 1 - y, *sy = h - 1 - x;
		break;
	case 8:
		*sx = w - 1 - y, *sy = x;
		break;
	default:
		*sx = x, *sy = y;
		break;
	}
}

/* The EXIF orientation that displays a picture as g shows the 3 x 2 one
 * (1 when none does: cannot happen for rotations and mirrors). */
static int grid_orientation(const struct grid *g)
{
	static const struct grid base = {3, 2, {0, 1, 2, 3, 4, 5}};

	for (int o = 1; o <= 8; o++) {
		int dw = o >= 5 ? 2 : 3, dh = o >= 5 ? 3 : 2, same = dw == g->w && dh == g->h;
		for (int y = 0; same && y < dh; y++)
			for (int x = 0; same && x < dw; x++) {
				int sx, sy;
				exif_source(o, 3, 2, x, y, &sx, &sy);
				same = grid_at(&base, sx, sy) == grid_at(g, x, y);
			}
		if (same)
			return o;
	}
	return 1;
}

/*
 * The EXIF orientation of item id's transformations (irot, imir, in the
 * order its ipma lists them) in a meta box's payload, read as libheif 1.15
 * applies them (irot: quarter turns anticlockwise; imir axis 1: left to
 * right, 0: top to bottom), so the JPEG shows what libheif shows. 1 when
 * none or unreadable.
 */
static int meta_orientation(const uint8_t *m, size_t n, uint32_t id)
{
	const uint8_t *ipco = NULL, *ipma = NULL;
	size_t ipco_len = 0, ipma_len = 0, p = 4;
	struct grid g = {3, 2, {0, 1, 2, 3, 4, 5}};

	/* meta (after its version and flags) > iprp > ipco, ipma */
	while (p + 8 <= n) {
		size_t box = rd32(m + p, 0);
		if (box < 8 || box > n - p)
			return 1;
		if (!memcmp(m + p + 4, "iprp", 4)) {
			for (size_t q = p + 8; q + 8 <= p + box;) {
				size_t b = rd32(m + q, 0);
				if (b < 8 || b > p + box - q)
					return 1;
				if (!memcmp(m + q + 4, "ipco", 4))
					ipco = m + q + 8, ipco_len = b - 8;
				else if (!memcmp(m + q + 4, "ipma", 4))
					ipma = m + q + 8, ipma_len = b - 8;
				q += b;
			}
		}
		p += box;
	}
	if (!ipco || !ipma || ipma_len < 8)
		return 1;
	{
		int version = ipma[0], wide = ipma[3] & 1;
		uint32_t entries = rd32(ipma + 4, 0);
		size_t q = 8;

		for (uint32_t e = 0; e < entries; e++) {
			uint32_t item;
			unsigned assoc;
			if (q + (version < 1 ? 2 : 4) + 1 > ipma_len)
				return 1;
			item = version < 1 ? rd16(ipma + q, 0) : rd32(ipma + q, 0);
			q += version < 1 ? 2 : 4;
			assoc = ipma[q++];
			if (q + assoc * (wide ? 2u : 1u) > ipma_len)
				return 1;
			for (unsigned a = 0; a < assoc; a++, q += wide ? 2 : 1) {
				unsigned index = wide ? rd16(ipma + q, 0) & 0x7FFF : ipma[q] & 0x7F;
				size_t c = 0;
				if (item != id || !index)
					continue;
				/* the index-th property (from 1) of ipco */
				for (unsigned k = 1; c + 8 <= ipco_len; k++) {
					size_t b = rd32(ipco + c, 0);
					if (b < 8 || b > ipco_len - c)
						return 1;
					if (k == index && b >= 9) {
						if (!memcmp(ipco + c + 4, "irot", 4))
							for (int t = 0; t < (ipco[c + 8] & 3); t++)
								grid_rot_ccw(&g);
						else if (!memcmp(ipco + c + 4, "imir", 4))
							grid_mirror(&g, ipco[c + 8] & 1);
						break;
					}
					c += b;
				}
			}
		}
	}
	return grid_orientation(&g);
}

/* ---- the JPEG ---- */

/* The segments: Exif (the HEIC's own with the orientation set, or a
 * minimal one), XMP, ICC profile (none for nclx-only colour). */
static int sibling_segments(const struct heif_image_handle *h, int orientation, struct out *o)
{
	uint8_t *item = NULL, *tiff = NULL, *icc = NULL, mini[26];
	size_t n = 0, tn = 0, icc_len;
	int ret;

	ret = heic_get_item(h, "Exif", NULL, &item, &n);
	if (ret == -ENOMEM)
		return ret;
	if (!ret && n >= EXIF_ITEM_PREFIX) {
		size_t skip = EXIF_ITEM_PREFIX + rd32(item, 0);
		if (skip < n)
			ret = tiff_with_orientation(item + skip, n - skip, orientation, &tiff, &tn);
		else
			ret = -EINVAL;
		if (ret == -ENOMEM)
			goto out_free;
		if (!ret && tn + sizeof(EXIF_ID) > APP_MAX_PAYLOAD) {
			log_msg(LOG_WARNING,
				"sibling: Exif of %zu bytes does not fit a segment: "
				"only the orientation is written",
				tn);
			ret = -EFBIG;
		}
	}
	if (ret || !tiff) {
		free(tiff);
		minimal_tiff(orientation, mini);
		ret = out_app(o, 0xE1, EXIF_ID, sizeof(EXIF_ID), mini, sizeof(mini));
	} else {
		ret = out_app(o, 0xE1, EXIF_ID, sizeof(EXIF_ID), tiff, tn);
		free(tiff);
	}
	free(item);
	item = NULL;
	if (ret)
		return ret;

	ret = heic_get_item(h, "mime", "application/rdf+xml", &item, &n);
	if (ret == -ENOMEM)
		return ret;
	if (!ret) {
		ret = out_app(o, 0xE1, XMP_ID, sizeof(XMP_ID), item, n);
		if (ret == -EFBIG) {
			log_msg(LOG_WARNING,
				"sibling: XMP of %zu bytes does not fit a segment: "
				"left out",
				n);
			ret = 0;
		}
		if (ret)
			goto out_free;
	}
	ret = 0;

	if (heif_image_handle_get_color_profile_type(h) == heif_color_profile_type_prof ||
	    heif_image_handle_get_color_profile_type(h) == heif_color_profile_type_rICC) {
		size_t chunk = APP_MAX_PAYLOAD - ICC_CHUNK_HDR, count;
		icc_len = heif_image_handle_get_raw_color_profile_size(h);
		count = (icc_len + chunk - 1) / chunk;
		icc = icc_len && count <= 255 ? malloc(icc_len) : NULL;
		if (icc && heif_image_handle_get_raw_color_profile(h, icc).code == heif_error_Ok) {
			for (size_t i = 0; !ret && i < count; i++) {
				uint8_t hdr[ICC_CHUNK_HDR];
				size_t at = i * chunk,
				       m = icc_len - at < chunk ? icc_len - at : chunk;
				memcpy(hdr, ICC_ID, sizeof(ICC_ID));
				hdr[sizeof(ICC_ID)] = (uint8_t)(i + 1);
				hdr[sizeof(ICC_ID) + 1] = (uint8_t)count;
				ret = out_app(o, 0xE2, hdr, sizeof(hdr), icc + at, m);
			}
		} else if (icc_len) {
			log_msg(LOG_WARNING, "sibling: ICC profile of %zu bytes not carried",
				icc_len);
		}
	}
out_free:
	free(icc);
	free(item);
	return ret;
}

/* The primary image's pixels, as stored (no irot/imir), as 8-bit RGB:
 * libheif assembles a grid's tiles and converts by the file's own colour
 * description (any bit depth, any chroma). */
static int decode_rgb(const struct heif_image_handle *h, struct heif_image **img)
{
	struct heif_decoding_options *dopt = heif_decoding_options_alloc();
	struct heif_error e;

	if (!dopt)
		return -ENOMEM;
	dopt->ignore_transformations = 1;
	hevcdec_init();
	e = heif_decode_image(h, img, heif_colorspace_RGB, heif_chroma_interleaved_RGB, dopt);
	heif_decoding_options_free(dopt);
	if (e.code) {
		log_msg(LOG_ERR, "sibling: decoding: %s", e.message);
		return e.code == heif_error_Memory_allocation_error ? -ENOMEM : -EINVAL;
	}
	return 0;
}

/* The luma of interleaved 8-bit RGB as JPEG's Y'CbCr has it (BT.601, full
 * range, TurboJPEG's 16-bit fixed point). *y malloc'd. */
static int rgb_luma(const uint8_t *rgb, int w, int h, int stride, uint8_t **y)
{
	uint8_t *p = malloc((size_t)w * (size_t)h);

	if (!p)
		return -ENOMEM;
	for (int r = 0; r < h; r++)
		for (int x = 0; x < w; x++) {
			const uint8_t *s = rgb + (size_t)r * (size_t)stride + 3 * (size_t)x;
			p[(size_t)r * (size_t)w + x] =
			    (uint8_t)((19595 * s[0] + 38470 * s[1] + 7471 * s[2] + 32768) >> 16);
		}
	*y = p;
	return 0;
}

/*
 * Encode the RGB picture as a JPEG with TurboJPEG's defaults (see jpeg.c:
 * the same pixels give the same bytes) at quality q, raised as a view's is
 * until the luma SSIM against the picture reaches floor_ (or VIEW_Q_MAX:
 * then that one, with a warning). *jbuf is tjAlloc'd. 0 or -errno.
 */
static int encode_rgb(const uint8_t *rgb, int w, int h, int stride, int q, double floor_,
		      unsigned char **jbuf, unsigned long *jlen)
{
	struct photo_planes pl = {0};
	uint8_t *y = NULL;
	char why[128];
	tjhandle tj;
	int ret;

	tj = tjInitCompress();
	if (!tj)
		return -ENOMEM;
	ret = rgb_luma(rgb, w, h, stride, &y);
	while (!ret) {
		double ssim;

		tjFree(*jbuf);
		*jbuf = NULL;
		if (tjCompress2(tj, rgb, w, stride, h, TJPF_RGB, jbuf, jlen, TJSAMP_420, q, 0) ==
		    -1) {
			log_msg(LOG_ERR, "sibling: encoding: %s", tjGetErrorStr2(tj));
			ret = -EIO;
			break;
		}
		ret = jpeg_decode_planes(*jbuf, *jlen, &pl, why, sizeof(why));
		if (ret) {
			log_msg(LOG_ERR, "sibling: own JPEG does not decode: %s", why);
			ret = ret == -ENOMEM ? ret : -EIO;
			break;
		}
		ssim = codec_ssim_plane(y, w, pl.plane[0], pl.stride[0], w, h);
		photo_planes_release(&pl);
		if (ssim >= floor_)
			break;
		if (q >= VIEW_Q_MAX) {
			log_msg(LOG_WARNING,
				"sibling: luma SSIM %.4f under %.3f even at quality %d", ssim,
				floor_, q);
			break;
		}
		q = q + VIEW_Q_STEP > VIEW_Q_MAX ? VIEW_Q_MAX : q + VIEW_Q_STEP;
	}
	free(y);
	tjDestroy(tj);
	return ret;
}

int codec_render_heif_jpeg(int fd, const char *out_path, const struct codec_opts *opts,
			   uint64_t *size)
{
	struct heif_context *ctx = NULL;
	struct heif_image_handle *h = NULL;
	struct heif_image *img = NULL;
	struct out o = {0};
	uint8_t *buf = NULL, *meta = NULL;
	unsigned char *jbuf = NULL;
	unsigned long jlen = 0;
	size_t len, meta_len, p = 2;
	const uint8_t *rgb;
	int ret, stride, w, hgt, orientation = 1;
	int q = opts && opts->view_quality > 0 ? opts->view_quality : CODEC_DEF_VIEW_QUALITY;
	double floor_ =
	    opts && opts->min_view_ssim > 0 ? opts->min_view_ssim : CODEC_DEF_MIN_VIEW_SSIM;
	heif_item_id id;

	ret = codec_read_all(fd, SIBLING_MAX_BYTES, &buf, &len);
	if (ret)
		return ret;
	ret = heic_open(buf, len, opts ? opts->threads : 0, &ctx, &h);
	if (ret)
		goto out_free;
	/* the orientation irot/imir give the primary image */
	if (heif_context_get_primary_image_ID(ctx, &id).code == heif_error_Ok &&
	    heic_meta_read(-1, buf, len, &meta, &meta_len) == 0)
		orientation = meta_orientation(meta, meta_len, id);
	ret = decode_rgb(h, &img);
	if (ret)
		goto out_release;
	w = heif_image_get_width(img, heif_channel_interleaved);
	hgt = heif_image_get_height(img, heif_channel_interleaved);
	rgb = heif_image_get_plane_readonly(img, heif_channel_interleaved, &stride);
	if (!rgb || w < 1 || hgt < 1 ||
	    heif_image_get_bits_per_pixel_range(img, heif_channel_interleaved) != 8) {
		log_msg(LOG_ERR, "sibling: unexpected decoded image");
		ret = -EINVAL;
		goto out_release;
	}
	ret = encode_rgb(rgb, w, hgt, stride, q, floor_, &jbuf, &jlen);
	if (ret)
		goto out_release;
	/* SOI, our segments, then TurboJPEG's tables and scan (its JFIF
	 * APP0 left out: Exif comes first) */
	while (p + 4 <= jlen && jbuf[p] == 0xFF && jbuf[p + 1] >= 0xE0 && jbuf[p + 1] <= 0xEF)
		p += 2 + ((size_t)jbuf[p + 2] << 8 | jbuf[p + 3]);
	ret = out_add(&o, jbuf, 2);
	if (!ret)
		ret = sibling_segments(h, orientation, &o);
	if (!ret && p < jlen)
		ret = out_add(&o, jbuf + p, jlen - p);
	if (!ret)
		ret = codec_write_file(out_path, o.p, o.len);
	if (!ret && size)
		*size = o.len;
out_release:
	tjFree(jbuf);
	free(o.p);
	free(meta);
	heif_image_release(img);
	heif_image_handle_release(h);
	heif_context_free(ctx);
out_free:
	free(buf);
	return ret;
}
