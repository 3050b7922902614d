/* jpeg — JPEG marker walk, metadata collection, decoding to Y'CbCr planes and
 * the deterministic JPEG view (TurboJPEG 2 API). */
#include "internal.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <turbojpeg.h>

/* Marker bytes (ITU T.81 table B.1). */
#define M_SOF0 0xC0
#define M_DHT 0xC4
#define M_JPG 0xC8
#define M_DAC 0xCC
#define M_RST0 0xD0
#define M_RST7 0xD7
#define M_SOI 0xD8
#define M_EOI 0xD9
#define M_SOS 0xDA
#define M_DNL 0xDC
#define M_APP0 0xE0
#define M_APP15 0xEF
#define M_COM 0xFE
#define M_TEM 0x01

static const char EXIF_ID[] = "Exif\0";			     /* 6 bytes with the final NUL */
static const char XMP_ID[] = "http://ns.adobe.com/xap/1.0/"; /* + NUL */
static const char XMP_EXT_ID[] = "http://ns.adobe.com/xmp/extension/"; /* + NUL */
static const char ICC_ID[] = "ICC_PROFILE";			       /* + NUL */
/* Adobe's gain map namespace: Ultra HDR (JPEG_R) names its gain map with it. */
#define HDRGM_NS "http://ns.adobe.com/hdr-gain-map/1.0/"
#define XMP_GUID_LEN 32 /* Extended XMP chunks: GUID, full length, offset */
#define XMP_EXT_HDR (sizeof(XMP_EXT_ID) + XMP_GUID_LEN + 8)
#define ICC_HDR (sizeof(ICC_ID) + 2) /* then sequence number and count */

static void set_why(struct jpeg_info *ji, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void set_why(struct jpeg_info *ji, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(ji->why, sizeof(ji->why), fmt, ap);
	va_end(ap);
}

static unsigned be16(const uint8_t *p)
{
	return (unsigned)p[0] << 8 | p[1];
}

static uint32_t be32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Does the APPn payload p (n bytes) start with the NUL-terminated id? */
static int has_id(const uint8_t *p, size_t n, const char *id, size_t id_size)
{
	return n >= id_size && memcmp(p, id, id_size) == 0;
}

int photo_planes_alloc(struct photo_planes *pl, int width, int height, int subsamp)
{
	size_t total = 0, off = 0;

	memset(pl, 0, sizeof(*pl));
	if (width < 1 || height < 1)
		return -EINVAL;
	pl->width = width;
	pl->height = height;
	pl->subsamp = subsamp;
	pl->nplanes = subsamp == TJSAMP_GRAY ? 1 : 3;
	for (int i = 0; i < pl->nplanes; i++) {
		pl->pw[i] = tjPlaneWidth(i, width, subsamp);
		pl->ph[i] = tjPlaneHeight(i, height, subsamp);
		if (pl->pw[i] < 1 || pl->ph[i] < 1)
			return -EINVAL;
		pl->stride[i] = pl->pw[i];
		total += (size_t)pl->pw[i] * (size_t)pl->ph[i];
	}
	pl->buf = malloc(total);
	if (!pl->buf)
		return -ENOMEM;
	for (int i = 0; i < pl->nplanes; i++) {
		pl->plane[i] = pl->buf + off;
		off += (size_t)pl->pw[i] * (size_t)pl->ph[i];
	}
	return 0;
}

void photo_plane_size(const struct photo_planes *pl, int i, int *w, int *h)
{
	int hf = i && pl->subsamp != TJSAMP_444 ? 2 : 1;
	int vf = i && (pl->subsamp == TJSAMP_420 || pl->subsamp == TJSAMP_GRAY) ? 2 : 1;

	*w = (pl->width + hf - 1) / hf;
	*h = (pl->height + vf - 1) / vf;
}

void photo_planes_release(struct photo_planes *pl)
{
	if (!pl)
		return;
	free(pl->buf);
	memset(pl, 0, sizeof(*pl));
}

void jpeg_info_release(struct jpeg_info *ji)
{
	if (!ji)
		return;
	free(ji->segs);
	free(ji->xmp_ext);
	free(ji->icc);
	free(ji->refs);
	ji->refs = NULL;
	ji->nrefs = 0;
	ji->segs = ji->xmp_ext = ji->icc = NULL;
	ji->exif = ji->xmp = NULL;
}

/* EXIF orientation (tag 0x0112 in IFD0) of a "Exif\0\0" + TIFF payload, 1 when
 * absent or out of range. Every offset is bounds-checked: EXIF is untrusted. */
static int exif_orientation(const uint8_t *p, size_t n)
{
	const uint8_t *t = p + 6;
	size_t tn, ifd, count;
	int le;

	if (n < 6 + 8)
		return 1;
	tn = n - 6;
	if (t[0] == 'I' && t[1] == 'I')
		le = 1;
	else if (t[0] == 'M' && t[1] == 'M')
		le = 0;
	else
		return 1;
#define RD16(q) (le ? (unsigned)((q)[0] | (q)[1] << 8) : be16(q))
#define RD32(q)                                                                                    \
	(le ? (uint32_t)((q)[0] | (q)[1] << 8 | (q)[2] << 16 | (uint32_t)(q)[3] << 24) : be32(q))
	ifd = RD32(t + 4);
	if (ifd > tn - 2)
		return 1;
	count = RD16(t + ifd);
	for (size_t i = 0; i < count; i++) {
		const uint8_t *e = t + ifd + 2 + 12 * i;
		if (ifd + 2 + 12 * (i + 1) > tn)
			break;
		if (RD16(e) == 0x0112 && RD16(e + 2) == 3 /* SHORT */) {
			unsigned v = RD16(e + 8);
			return v >= 1 && v <= 8 ? (int)v : 1;
		}
	}
#undef RD16
#undef RD32
	return 1;
}

/* Note that the segment at seg_off is prefix bytes then len bytes of src. */
static int add_ref(struct jpeg_info *ji, size_t seg_off, int src, size_t prefix, size_t src_off,
		   size_t len)
{
	struct jpeg_ref *r = realloc(ji->refs, (ji->nrefs + 1) * sizeof(*r));

	if (!r)
		return -ENOMEM;
	ji->refs = r;
	r[ji->nrefs++] = (struct jpeg_ref){seg_off, src, prefix, src_off, len};
	return 0;
}

/* Forget the references to src (its reassembly failed). */
static void drop_refs(struct jpeg_info *ji, int src)
{
	size_t k = 0;

	for (size_t i = 0; i < ji->nrefs; i++)
		if (ji->refs[i].src != src)
			ji->refs[k++] = ji->refs[i];
	ji->nrefs = k;
}

void jpeg_info_drop_source(struct jpeg_info *ji, int src)
{
	drop_refs(ji, src);
}

/* Reassemble the ICC profile from the APP2 chunks in segs, in sequence-number
 * order. A profile with missing, repeated or inconsistent chunks is dropped
 * (with a warning): the verbatim header still carries it. */
static int collect_icc(struct jpeg_info *ji)
{
	const uint8_t *s = ji->segs, *end = ji->segs + ji->segs_len;
	unsigned count = 0, seen = 0;
	size_t total = 0, off = 0;

	for (const uint8_t *p = s; p < end; p += 2 + be16(p + 2)) {
		size_t n = be16(p + 2) - 2u;
		if (p[1] != M_APP0 + 2 || !has_id(p + 4, n, ICC_ID, sizeof(ICC_ID)) || n < ICC_HDR)
			continue;
		if (!count)
			count = p[4 + sizeof(ICC_ID) + 1];
		if (p[4 + sizeof(ICC_ID) + 1] != count)
			goto bad;
		seen++;
		total += n - ICC_HDR;
	}
	if (!seen)
		return 0;
	if (seen != count || count == 0 || total == 0)
		goto bad;
	ji->icc = malloc(total);
	if (!ji->icc)
		return -ENOMEM;
	for (unsigned seq = 1; seq <= count; seq++) {
		int found = 0;
		for (const uint8_t *p = s; p < end; p += 2 + be16(p + 2)) {
			size_t n = be16(p + 2) - 2u;
			if (p[1] != M_APP0 + 2 || !has_id(p + 4, n, ICC_ID, sizeof(ICC_ID)) ||
			    n < ICC_HDR || p[4 + sizeof(ICC_ID)] != seq)
				continue;
			if (found++)
				goto bad_free;
			memcpy(ji->icc + off, p + 4 + ICC_HDR, n - ICC_HDR);
			if (add_ref(ji, (size_t)(p - s), JPEG_SRC_ICC, ICC_HDR, off, n - ICC_HDR))
				goto nomem;
			off += n - ICC_HDR;
		}
		if (!found)
			goto bad_free;
	}
	ji->icc_len = total;
	return 0;

nomem:
	drop_refs(ji, JPEG_SRC_ICC);
	free(ji->icc);
	ji->icc = NULL;
	return -ENOMEM;
bad_free:
	drop_refs(ji, JPEG_SRC_ICC);
	free(ji->icc);
	ji->icc = NULL;
bad:
	log_msg(LOG_WARNING, "jpeg: inconsistent ICC_PROFILE chunks, profile kept only in the "
			     "verbatim header");
	return 0;
}

/* Reassemble Extended XMP: the chunks whose GUID the main packet names in
 * xmpNote:HasExtendedXMP (else the first GUID seen), which writers emit in
 * offset order. Anything else is dropped with a warning (the verbatim header
 * still has it). */
static int collect_xmp_ext(struct jpeg_info *ji)
{
	const uint8_t *s = ji->segs, *end = ji->segs + ji->segs_len;
	char guid[XMP_GUID_LEN];
	int have_guid = 0;
	uint32_t full = 0;
	size_t off = 0;

	if (ji->xmp) {
		static const char key[] = "HasExtendedXMP";
		const uint8_t *k = memmem(ji->xmp, ji->xmp_len, key, sizeof(key) - 1);
		if (k) {
			/* attribute form HasExtendedXMP="GUID" or element form >GUID< */
			const uint8_t *q = k + sizeof(key) - 1, *xe = ji->xmp + ji->xmp_len;
			while (q < xe &&
			       (*q == '=' || *q == '"' || *q == '\'' || *q == '>' || *q == ' '))
				q++;
			if ((size_t)(xe - q) >= XMP_GUID_LEN) {
				memcpy(guid, q, XMP_GUID_LEN);
				have_guid = 1;
			}
		}
	}
	for (const uint8_t *p = s; p < end; p += 2 + be16(p + 2)) {
		size_t n = be16(p + 2) - 2u;
		const uint8_t *c = p + 4;
		if (p[1] != M_APP0 + 1 || !has_id(c, n, XMP_EXT_ID, sizeof(XMP_EXT_ID)) ||
		    n < XMP_EXT_HDR)
			continue;
		c += sizeof(XMP_EXT_ID);
		if (!have_guid) {
			memcpy(guid, c, XMP_GUID_LEN);
			have_guid = 1;
		}
		if (memcmp(c, guid, XMP_GUID_LEN) != 0)
			continue;
		if (!ji->xmp_ext) {
			full = be32(c + XMP_GUID_LEN);
			/* an honest full length never exceeds the file */
			if (full == 0 || full > ji->segs_len)
				goto bad;
			ji->xmp_ext = malloc(full);
			if (!ji->xmp_ext)
				return -ENOMEM;
		}
		if (be32(c + XMP_GUID_LEN) != full || be32(c + XMP_GUID_LEN + 4) != off ||
		    n - XMP_EXT_HDR > full - off)
			goto bad;
		memcpy(ji->xmp_ext + off, c + XMP_GUID_LEN + 8, n - XMP_EXT_HDR);
		if (add_ref(ji, (size_t)(p - s), JPEG_SRC_XMP_EXT, XMP_EXT_HDR, off,
			    n - XMP_EXT_HDR)) {
			drop_refs(ji, JPEG_SRC_XMP_EXT);
			free(ji->xmp_ext);
			ji->xmp_ext = NULL;
			return -ENOMEM;
		}
		off += n - XMP_EXT_HDR;
	}
	if (!ji->xmp_ext)
		return 0;
	if (off != full)
		goto bad;
	ji->xmp_ext_len = full;
	return 0;

bad:
	drop_refs(ji, JPEG_SRC_XMP_EXT);
	free(ji->xmp_ext);
	ji->xmp_ext = NULL;
	log_msg(LOG_WARNING, "jpeg: incomplete Extended XMP, kept only in the verbatim header");
	return 0;
}

/* Append one segment (marker, length, payload) to ji->segs. */
static int add_seg(struct jpeg_info *ji, size_t *cap, const uint8_t *seg, size_t n)
{
	if (ji->segs_len + n > *cap) {
		size_t ncap = *cap ? *cap * 2 : 65536;
		uint8_t *p;
		while (ncap < ji->segs_len + n)
			ncap *= 2;
		p = realloc(ji->segs, ncap);
		if (!p)
			return -ENOMEM;
		ji->segs = p;
		*cap = ncap;
	}
	memcpy(ji->segs + ji->segs_len, seg, n);
	ji->segs_len += n;
	return 0;
}

/* Skip entropy-coded data from p: byte stuffing (FF00), restart markers and
 * fill bytes belong to the scan; any other marker ends it. Returns the
 * offset of the 0xFF of that marker, or len when the data runs out. */
static size_t skip_scan(const uint8_t *buf, size_t len, size_t p)
{
	while (p < len) {
		const uint8_t *ff = memchr(buf + p, 0xFF, len - p);
		uint8_t b;

		if (!ff || (size_t)(ff - buf) + 1 >= len)
			return len;
		p = (size_t)(ff - buf);
		b = buf[p + 1];
		if (b == 0x00 || (b >= M_RST0 && b <= M_RST7))
			p += 2;
		else if (b == 0xFF)
			p += 1;
		else
			return p;
	}
	return len;
}

/* Is this SOFn one TurboJPEG decodes (Huffman, sequential or progressive)?
 * Says why not in ji->why. */
static int sof_supported(struct jpeg_info *ji)
{
	switch (ji->sof) {
	case 0xC0:
	case 0xC1:
	case 0xC2:
		break;
	case 0xC3:
		set_why(ji, "lossless JPEG (SOF3)");
		return 0;
	case 0xC5:
	case 0xC6:
	case 0xC7:
		set_why(ji, "hierarchical JPEG (SOF%d)", ji->sof - 0xC0);
		return 0;
	case 0xCB:
		set_why(ji, "lossless arithmetic-coded JPEG (SOF11)");
		return 0;
	case 0xCF:
		set_why(ji, "lossless arithmetic-coded JPEG (SOF15)");
		return 0;
	default:
		set_why(ji, "arithmetic-coded JPEG (SOF%d)", ji->sof - 0xC0);
		return 0;
	}
	if (ji->precision != 8) {
		set_why(ji, "%d-bit JPEG", ji->precision);
		return 0;
	}
	if (ji->ncomp == 4) {
		set_why(ji, "%s JPEG (4 components)", ji->adobe_transform == 2 ? "YCCK" : "CMYK");
		return 0;
	}
	if (ji->ncomp != 1 && ji->ncomp != 3) {
		set_why(ji, "JPEG with %d components", ji->ncomp);
		return 0;
	}
	if (ji->ncomp == 3 && ji->adobe_transform == 0) {
		set_why(ji, "RGB-coded JPEG (Adobe transform 0)");
		return 0;
	}
	return 1;
}

/* The images other than the first that an MPF index (CIPA DC-007: a TIFF
 * header, then an IFD whose tag 0xB002 holds one 16-byte MP entry per
 * image: attributes, size, offset from the TIFF header, two dependents)
 * points to. 0 when the index is unreadable. Untrusted: bounds-checked. */
static int mpf_images(const uint8_t *t, size_t n)
{
	size_t ifd, count;
	int le, images = 0;

	if (n < 8)
		return 0;
	if (t[0] == 'I' && t[1] == 'I')
		le = 1;
	else if (t[0] == 'M' && t[1] == 'M')
		le = 0;
	else
		return 0;
#define RD16(q) (le ? (unsigned)((q)[0] | (q)[1] << 8) : be16(q))
#define RD32(q)                                                                                    \
	(le ? (uint32_t)((q)[0] | (q)[1] << 8 | (q)[2] << 16 | (uint32_t)(q)[3] << 24) : be32(q))
	ifd = RD32(t + 4);
	if (ifd > n - 2)
		return 0;
	count = RD16(t + ifd);
	for (size_t i = 0; i < count && ifd + 2 + 12 * (i + 1) <= n; i++) {
		const uint8_t *e = t + ifd + 2 + 12 * i;
		uint32_t len = RD32(e + 4), off = RD32(e + 8);

		if (RD16(e) != 0xB002 || RD16(e + 2) != 7 /* UNDEFINED */)
			continue;
		if (off > n || len > n - off)
			return 0;
		for (uint32_t k = 0; k + 16 <= len; k += 16)
			images += RD32(t + off + k + 8) != 0; /* the first image has offset 0 */
	}
#undef RD16
#undef RD32
	return images;
}

/* Inspect an APPn/COM payload for the metadata we carry; remember offsets
 * into segs (pointers are resolved once segs stops moving). */
static void note_app(struct jpeg_info *ji, int marker, const uint8_t *p, size_t n, size_t seg_off,
		     size_t *exif_off, size_t *xmp_off)
{
	/* Exif needs a TIFF header: libheif refuses an Exif item without one */
	if (marker == M_APP0 + 1 && has_id(p, n, EXIF_ID, sizeof(EXIF_ID)) && !ji->exif_len &&
	    n >= 6 + 8 && (memcmp(p + 6, "II*\0", 4) == 0 || memcmp(p + 6, "MM\0*", 4) == 0)) {
		*exif_off = seg_off + 4;
		ji->exif_len = n;
	} else if (marker == M_APP0 + 1 && has_id(p, n, XMP_ID, sizeof(XMP_ID)) && !ji->xmp_len &&
		   n > sizeof(XMP_ID)) {
		*xmp_off = seg_off + 4 + sizeof(XMP_ID);
		ji->xmp_len = n - sizeof(XMP_ID);
	} else if (marker == M_APP0 + 2 && has_id(p, n, "MPF", 4)) {
		if (!ji->mpf)
			ji->mpf_images = mpf_images(p + 4, n - 4);
		ji->mpf = 1;
	} else if (marker == M_APP0 + 14 && n >= 12 && memcmp(p, "Adobe", 5) == 0) {
		ji->adobe_transform = p[11];
	}
}

int jpeg_parse(const uint8_t *buf, size_t len, struct jpeg_info *ji)
{
	size_t pos = 2, cap = 0, exif_off = 0, xmp_off = 0;
	int ret;

	memset(ji, 0, sizeof(*ji));
	ji->adobe_transform = -1;
	ji->orientation = 1;
	if (len < 4 || buf[0] != 0xFF || buf[1] != M_SOI) {
		set_why(ji, "not a JPEG (no SOI)");
		return -EINVAL;
	}
	for (;;) {
		unsigned marker, seglen;

		if (pos >= len) {
			set_why(ji, "truncated JPEG (no EOI)");
			ret = -EINVAL;
			goto out_release;
		}
		if (buf[pos] != 0xFF) {
			set_why(ji, "corrupt JPEG (garbage at offset %zu)", pos);
			ret = -EINVAL;
			goto out_release;
		}
		while (pos < len && buf[pos] == 0xFF)
			pos++;
		if (pos >= len)
			continue; /* reported as truncated above */
		marker = buf[pos++];
		if (marker == M_EOI) {
			ji->eoi_end = pos;
			break;
		}
		if (marker == M_TEM || (marker >= M_RST0 && marker <= M_RST7))
			continue; /* standalone markers */
		if (marker == 0x00 || marker == M_SOI) {
			set_why(ji, "corrupt JPEG (marker 0x%02X at offset %zu)", marker, pos - 1);
			ret = -EINVAL;
			goto out_release;
		}
		if (pos + 2 > len || (seglen = be16(buf + pos)) < 2 || pos + seglen > len) {
			set_why(ji, "truncated JPEG (segment 0x%02X)", marker);
			ret = -EINVAL;
			goto out_release;
		}
		if (!ji->head_end && !((marker >= M_APP0 && marker <= M_APP15) || marker == M_COM))
			ji->head_end = pos - 2;
		if ((marker >= M_APP0 && marker <= M_APP15) || marker == M_COM) {
			size_t seg_off = ji->segs_len;
			ret = add_seg(ji, &cap, buf + pos - 2, seglen + 2u);
			if (ret)
				goto out_release;
			/* normalise fill bytes away: segs must walk as FF Mk Lh Ll */
			ji->segs[seg_off] = 0xFF;
			ji->segs[seg_off + 1] = (uint8_t)marker;
			note_app(ji, (int)marker, buf + pos + 2, seglen - 2u, seg_off, &exif_off,
				 &xmp_off);
		} else if (marker >= M_SOF0 && marker <= 0xCF && marker != M_DHT &&
			   marker != M_JPG && marker != M_DAC) {
			if (seglen < 8) {
				set_why(ji, "corrupt JPEG (short frame header)");
				ret = -EINVAL;
				goto out_release;
			}
			if (ji->sof) {
				set_why(ji, "JPEG with several frames (SOF%d)", marker - M_SOF0);
				ret = -ENOTSUP;
				goto out_release;
			}
			ji->sof = (int)marker;
			ji->precision = buf[pos + 2];
			ji->height = (int)be16(buf + pos + 3);
			ji->width = (int)be16(buf + pos + 5);
			ji->ncomp = buf[pos + 7];
		} else if (marker == M_DNL) {
			set_why(ji, "JPEG with a DNL marker");
			ret = -ENOTSUP;
			goto out_release;
		}
		pos += seglen;
		if (marker == M_SOS) {
			if (!ji->sof) {
				set_why(ji, "corrupt JPEG (scan before frame header)");
				ret = -EINVAL;
				goto out_release;
			}
			ji->scans++;
			pos = skip_scan(buf, len, pos);
		}
	}
	if (!ji->sof || !ji->scans) {
		set_why(ji, "corrupt JPEG (no frame or no scan)");
		ret = -EINVAL;
		goto out_release;
	}
	if (ji->exif_len) {
		ji->exif = ji->segs + exif_off;
		ret = add_ref(ji, exif_off - 4, JPEG_SRC_EXIF, 0, 0, ji->exif_len);
		if (ret)
			goto out_release;
	}
	if (ji->xmp_len) {
		ji->xmp = ji->segs + xmp_off;
		ret = add_ref(ji, xmp_off - 4 - sizeof(XMP_ID), JPEG_SRC_XMP, sizeof(XMP_ID), 0,
			      ji->xmp_len);
		if (ret)
			goto out_release;
		if (memmem(ji->xmp, ji->xmp_len, "MotionPhoto", 11) ||
		    memmem(ji->xmp, ji->xmp_len, "MicroVideo", 10))
			ji->motion = 1;
		if (memmem(ji->xmp, ji->xmp_len, HDRGM_NS, sizeof(HDRGM_NS) - 1))
			ji->hdrgm = 1;
	}
	if (!sof_supported(ji)) {
		ret = -ENOTSUP;
		goto out_release;
	}
	if (ji->width == 0 || ji->height == 0) {
		set_why(ji, "JPEG with a zero dimension (%dx%d)", ji->width, ji->height);
		ret = -ENOTSUP;
		goto out_release;
	}
	/* what follows the primary's EOI (a motion photo's video, MPF images,
	 * padding) is the trailer, archived verbatim */
	ji->trailer = buf + ji->eoi_end;
	ji->trailer_len = len - ji->eoi_end;
	ji->head_in_place = ji->head_end == 2 + ji->segs_len;
	if (ji->exif)
		ji->orientation = exif_orientation(ji->exif, ji->exif_len);
	ret = collect_icc(ji);
	if (ret)
		goto out_release;
	ret = collect_xmp_ext(ji);
	if (ret)
		goto out_release;
	return 0;

out_release:
	jpeg_info_release(ji);
	return ret;
}

/* Fill the padding column(s) and row(s) of each plane with the last real
 * sample, so anything that reads the padded layout reads defined, repeatable
 * values. */
static void pad_planes(struct photo_planes *pl, const int *rw, const int *rh)
{
	for (int i = 0; i < pl->nplanes; i++) {
		uint8_t *p = pl->plane[i];
		int s = pl->stride[i];
		for (int y = 0; y < rh[i]; y++)
			for (int x = rw[i]; x < pl->pw[i]; x++)
				p[y * s + x] = p[y * s + rw[i] - 1];
		for (int y = rh[i]; y < pl->ph[i]; y++)
			memcpy(p + (size_t)y * s, p + (size_t)(rh[i] - 1) * s, (size_t)pl->pw[i]);
	}
}

/* Real (unpadded) plane sizes of a w x h image at subsamp. */
static void real_sizes(int w, int h, int subsamp, int *rw, int *rh)
{
	int sx = subsamp == TJSAMP_444 ? 1 : 2, sy = subsamp == TJSAMP_420 ? 2 : 1;

	rw[0] = w, rh[0] = h;
	rw[1] = rw[2] = (w + sx - 1) / sx;
	rh[1] = rh[2] = (h + sy - 1) / sy;
}

int jpeg_decode_planes(const uint8_t *buf, size_t len, struct photo_planes *pl, char *why,
		       size_t why_len)
{
	int w, h, subsamp, cs, ret, rw[3], rh[3];
	tjhandle tj;

	memset(pl, 0, sizeof(*pl));
	if (len > (size_t)~0ul)
		return -EFBIG;
	tj = tjInitDecompress();
	if (!tj) {
		log_msg(LOG_ERR, "jpeg: tjInitDecompress: %s", tjGetErrorStr2(NULL));
		return -ENOMEM;
	}
	if (tjDecompressHeader3(tj, buf, (unsigned long)len, &w, &h, &subsamp, &cs) == -1) {
		snprintf(why, why_len, "undecodable JPEG header: %s", tjGetErrorStr2(tj));
		ret = -EINVAL;
		goto out_destroy;
	}
	if (cs != TJCS_YCbCr && cs != TJCS_GRAY) {
		snprintf(why, why_len, "JPEG colour space %s",
			 cs == TJCS_RGB	   ? "RGB"
			 : cs == TJCS_CMYK ? "CMYK"
					   : "YCCK");
		ret = -ENOTSUP;
		goto out_destroy;
	}
	if (subsamp != TJSAMP_444 && subsamp != TJSAMP_422 && subsamp != TJSAMP_420 &&
	    subsamp != TJSAMP_GRAY) {
		/* HEVC has no 4:4:0 or 4:1:1 chroma: keeping beats resampling */
		snprintf(why, why_len, "chroma subsampling %s has no HEVC equivalent",
			 subsamp == TJSAMP_440	 ? "4:4:0"
			 : subsamp == TJSAMP_411 ? "4:1:1"
						 : "other");
		ret = -ENOTSUP;
		goto out_destroy;
	}
	ret = photo_planes_alloc(pl, w, h, subsamp);
	if (ret)
		goto out_destroy;
	if (tjDecompressToYUVPlanes(tj, buf, (unsigned long)len, pl->plane, w, pl->stride, h,
				    TJFLAG_STOPONWARNING) == -1) {
		/* warnings too: a JPEG libjpeg had to patch up is not archived */
		snprintf(why, why_len, "undecodable JPEG: %s", tjGetErrorStr2(tj));
		ret = -EINVAL;
		goto out_free_planes;
	}
	real_sizes(w, h, subsamp, rw, rh);
	pad_planes(pl, rw, rh);
	tjDestroy(tj);
	return 0;

out_free_planes:
	photo_planes_release(pl);
out_destroy:
	tjDestroy(tj);
	return ret;
}

/*
 * Encoding uses TurboJPEG's defaults (accurate integer DCT, standard Huffman
 * tables, no restart markers): integer arithmetic, so the same planes give the
 * same bytes on every CPU. TurboJPEG also reads TJ_OPTIMIZE, TJ_ARITHMETIC,
 * TJ_RESTART and TJ_PROGRESSIVE from the environment: the mount must not have
 * them set, or the views it renders change size.
 */
int jpeg_encode_scan(const struct photo_planes *pl, int quality, uint8_t **scan, size_t *scan_len)
{
	unsigned char *jbuf = NULL;
	unsigned long jlen = 0;
	const uint8_t *planes[3] = {pl->plane[0], pl->plane[1], pl->plane[2]};
	size_t p = 2;
	tjhandle tj;
	int ret;

	tj = tjInitCompress();
	if (!tj) {
		log_msg(LOG_ERR, "jpeg: tjInitCompress: %s", tjGetErrorStr2(NULL));
		return -ENOMEM;
	}
	if (tjCompressFromYUVPlanes(tj, planes, pl->width, pl->stride, pl->height, pl->subsamp,
				    &jbuf, &jlen, quality, 0) == -1) {
		log_msg(LOG_ERR, "jpeg: encoding the view: %s", tjGetErrorStr2(tj));
		ret = -EIO;
		goto out_free;
	}
	/* skip TurboJPEG's SOI and its own APPn (JFIF) segments */
	while (p + 4 <= jlen && jbuf[p] == 0xFF && jbuf[p + 1] >= M_APP0 && jbuf[p + 1] <= M_APP15)
		p += 2 + be16(jbuf + p + 2);
	if (p + 4 > jlen || jbuf[0] != 0xFF || jbuf[1] != M_SOI || jbuf[jlen - 2] != 0xFF ||
	    jbuf[jlen - 1] != M_EOI) {
		log_msg(LOG_ERR, "jpeg: unexpected TurboJPEG output");
		ret = -EIO;
		goto out_free;
	}
	*scan = malloc(jlen - p);
	if (!*scan) {
		ret = -ENOMEM;
		goto out_free;
	}
	memcpy(*scan, jbuf + p, jlen - p);
	*scan_len = jlen - p;
	ret = 0;
out_free:
	tjFree(jbuf);
	tjDestroy(tj);
	return ret;
}

/*
 * The padding that puts a view's EOI where the original's was is APP15
 * segments of NUL bytes, each at least JPEG_PAD_MIN and at most
 * JPEG_PAD_SEG_MAX bytes long. Measured on a JPEG with the padding between
 * its APPn run and its tables (Debian 12's tools), against a COM segment of
 * NULs:
 *   - libjpeg-turbo's djpeg: silent for both.
 *   - FFmpeg 5.1 (-v warning): silent for both, but an APPn whose payload is
 *     under 4 bytes gives "unable to decode APP fields": hence 8 bytes at
 *     least (marker, length, 4 NULs).
 *   - exiftool 12.57: -a -G1 lists the COM as a second, empty [File] Comment;
 *     APP15 lists nothing (only -validate says "[minor] Unknown APP15
 *     segment").
 *   - ImageMagick (identify -verbose, convert): a COM replaces the photo's
 *     own comment with an empty one (the last COM wins); APP15 shows as
 *     "Profile-app15: N bytes" and nothing else changes.
 *   - GdkPixbuf 2.42 (gdk-pixbuf-thumbnailer): silent for both.
 * So APP15, which no known writer fills with NULs (GraphicConverter's
 * APP15 starts with an ASCII "Q"): it changes no tag any tool shows.
 * Fill bytes 0xFF before the EOI (T.81 B.1.1.2: any marker may follow any
 * number of them), measured the same way on views with up to 570 KB of
 * them: djpeg, FFmpeg, ImageMagick and GdkPixbuf decode them silently, and
 * exiftool -validate says nothing of them.
 */
int jpeg_pad_ok(size_t gap)
{
	return gap == 0 || gap >= JPEG_PAD_MIN;
}

/* Write gap bytes of padding (jpeg_pad_ok(gap)) at p: as few segments as
 * hold it, of sizes as equal as whole bytes allow (so each is far above
 * JPEG_PAD_MIN once there are several). */
static void write_pad(uint8_t *p, size_t gap)
{
	size_t n = (gap + JPEG_PAD_SEG_MAX - 1) / JPEG_PAD_SEG_MAX;

	for (size_t i = 0; i < n; i++) {
		size_t seg = gap / n + (i < gap % n ? 1 : 0);

		p[0] = 0xFF;
		p[1] = M_APP15;
		p[2] = (uint8_t)((seg - 2) >> 8);
		p[3] = (uint8_t)(seg - 2);
		memset(p + 4, 0, seg - 4);
		p += seg;
	}
}

int jpeg_view_layout(const uint8_t *segs, size_t segs_len, size_t pad, const uint8_t *scan,
		     size_t scan_len, size_t fill, const uint8_t *trailer, size_t trailer_len,
		     uint8_t **out, size_t *out_len)
{
	size_t n = 2 + segs_len + pad + scan_len + fill + trailer_len;
	uint8_t *o, *p;

	if (!jpeg_pad_ok(pad) ||
	    (fill && (scan_len < 2 || scan[scan_len - 2] != 0xFF || scan[scan_len - 1] != M_EOI)))
		return -EINVAL;
	o = malloc(n);
	if (!o)
		return -ENOMEM;
	o[0] = 0xFF;
	o[1] = M_SOI;
	if (segs_len)
		memcpy(o + 2, segs, segs_len);
	p = o + 2 + segs_len;
	write_pad(p, pad);
	p += pad;
	if (scan_len) {
		/* fill bytes go before the EOI marker (T.81 B.1.1.2) */
		size_t body = fill ? scan_len - 2 : scan_len;
		memcpy(p, scan, body);
		memset(p + body, 0xFF, fill);
		memcpy(p + body + fill, scan + body, scan_len - body);
		p += scan_len + fill;
	}
	if (trailer_len)
		memcpy(p, trailer, trailer_len);
	*out = o;
	*out_len = n;
	return 0;
}

long jpeg_scan_data_off(const uint8_t *scan, size_t len)
{
	size_t p = 0;

	while (p + 4 <= len && scan[p] == 0xFF) {
		unsigned marker = scan[p + 1];
		size_t seglen = be16(scan + p + 2);

		if (marker == M_EOI || marker == M_SOI || seglen < 2 || p + 2 + seglen > len)
			break;
		p += 2 + seglen;
		if (marker == M_SOS)
			return (long)p;
	}
	return -EINVAL;
}

int jpeg_view_tables(int quality, int subsamp, int width, int height, uint8_t **out, size_t *len)
{
	struct photo_planes pl;
	uint8_t *scan;
	size_t n;
	long t;
	int ret;

	if (width < 1 || height < 1 || width > 0xFFFF || height > 0xFFFF)
		return -EINVAL;
	ret = photo_planes_alloc(&pl, 16, 16, subsamp);
	if (ret)
		return ret;
	for (int i = 0; i < pl.nplanes; i++)
		memset(pl.plane[i], 0x80, (size_t)pl.stride[i] * (size_t)pl.ph[i]);
	ret = jpeg_encode_scan(&pl, quality, &scan, &n);
	photo_planes_release(&pl);
	if (ret)
		return ret;
	t = jpeg_scan_data_off(scan, n);
	ret = t < 0 ? -EIO : -ENOTSUP;
	/* the frame header (baseline: what TurboJPEG writes unless told
	 * otherwise): its size is the only thing the picture changes */
	for (size_t p = 0; t >= 0 && p + 4 <= (size_t)t; p += 2 + be16(scan + p + 2)) {
		if (scan[p + 1] != M_SOF0 || p + 9 > (size_t)t)
			continue;
		scan[p + 5] = (uint8_t)(height >> 8), scan[p + 6] = (uint8_t)height;
		scan[p + 7] = (uint8_t)(width >> 8), scan[p + 8] = (uint8_t)width;
		ret = 0;
	}
	if (ret) {
		free(scan);
		return ret;
	}
	*out = scan;
	*len = (size_t)t;
	return 0;
}

int jpeg_encode_view(const struct photo_planes *pl, int quality, const uint8_t *segs,
		     size_t segs_len, uint8_t **out, size_t *out_len)
{
	uint8_t *scan;
	size_t scan_len;
	int ret = jpeg_encode_scan(pl, quality, &scan, &scan_len);

	if (ret)
		return ret;
	ret = jpeg_view_layout(segs, segs_len, 0, scan, scan_len, 0, NULL, 0, out, out_len);
	free(scan);
	return ret;
}
