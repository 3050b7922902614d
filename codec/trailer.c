/* trailer — what a JPEG carries after its primary image's EOI (a motion
 * photo's video, MPF images and Ultra HDR gain maps, Samsung SEF data,
 * padding), how it is classified, and the XMP a HEIC motion photo gets. */
#include "internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* An ISO BMFF file starts with a box whose type is at byte 4. */
#define BOX_TYPE_AT 4
/* Samsung's SEF trailer ends with its directory's length (4 bytes) and
 * "SEFT". */
#define SEF_TAIL "SEFT"
#define SEF_TAIL_LEN 8
/* Longest decimal number we read from XMP. */
#define XMP_NUM_MAX 20

/* Google's namespaces (Motion Photo format 1.0, camera and container). */
#define NS_GCAMERA "http://ns.google.com/photos/1.0/camera/"
#define NS_CONTAINER "http://ns.google.com/photos/1.0/container/"
#define NS_ITEM "http://ns.google.com/photos/1.0/container/item/"

/* The value of attribute name="..." (name includes the '="') inside
 * [p, end) as a number; -1 when absent or not a number. */
static long long xmp_attr_num(const uint8_t *p, const uint8_t *end, const char *name)
{
	size_t n = strlen(name);
	const uint8_t *a = memmem(p, (size_t)(end - p), name, n);
	char num[XMP_NUM_MAX + 1];
	size_t k = 0;

	if (!a)
		return -1;
	a += n;
	while (a < end && *a >= '0' && *a <= '9' && k < XMP_NUM_MAX)
		num[k++] = (char)*a++;
	if (!k || a >= end || *a != '"')
		return -1;
	num[k] = '\0';
	return strtoll(num, NULL, 10);
}

/* Does the XMP say this is a motion photo (MotionPhoto or MicroVideo set
 * to 1, as attribute or element)? */
static int xmp_says_motion(const uint8_t *x, size_t n)
{
	static const char *const flags[] = {
	    "GCamera:MotionPhoto=\"1\"",
	    "GCamera:MicroVideo=\"1\"",
	    "<GCamera:MotionPhoto>1<",
	    "<GCamera:MicroVideo>1<",
	};

	for (size_t i = 0; i < sizeof(flags) / sizeof(flags[0]); i++)
		if (memmem(x, n, flags[i], strlen(flags[i])))
			return 1;
	return 0;
}

/* The length the XMP gives the motion photo's video (the Container item of
 * semantic MotionPhoto, else the older MicroVideoOffset: both count from
 * the end of the file), or 0. */
static size_t xmp_video_len(const uint8_t *x, size_t n)
{
	static const char sem[] = "Item:Semantic=\"MotionPhoto\"";
	const uint8_t *s = memmem(x, n, sem, sizeof(sem) - 1), *end = x + n;
	long long v;

	if (s) {
		/* the Container:Item element around the attribute */
		const uint8_t *lt = s, *gt = memchr(s, '>', (size_t)(end - s));
		while (lt > x && *lt != '<')
			lt--;
		v = xmp_attr_num(lt, gt ? gt : end, "Item:Length=\"");
		return v > 0 ? (size_t)v : 0;
	}
	v = xmp_attr_num(x, end, "GCamera:MicroVideoOffset=\"");
	return v > 0 ? (size_t)v : 0;
}

/* Is the whole buffer zeros? */
static int all_zero(const uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (p[i])
			return 0;
	return 1;
}

/* Append n bytes to a growing buffer (*cap: its size). */
static int put(uint8_t **buf, size_t *len, size_t *cap, const void *p, size_t n)
{
	if (*len + n > *cap) {
		size_t c = *cap ? *cap : 4096;
		uint8_t *q;
		while (c < *len + n)
			c *= 2;
		q = realloc(*buf, c);
		if (!q)
			return -ENOMEM;
		*buf = q;
		*cap = c;
	}
	memcpy(*buf + *len, p, n);
	*len += n;
	return 0;
}

/* The attributes and element the HEIC's XMP drops from the original's:
 * they describe the JPEG's layout, not the HEIC's. */
static const char *const xmp_drop_attrs[] = {
    "GCamera:MotionPhoto=\"",	    "GCamera:MotionPhotoVersion=\"", "GCamera:MicroVideo=\"",
    "GCamera:MicroVideoVersion=\"", "GCamera:MicroVideoOffset=\"",
};
#define DIR_OPEN "<Container:Directory"
#define DIR_CLOSE "</Container:Directory>"

/* Does the original's XMP describe the JPEG's layout (so the HEIC needs
 * its own)? */
static int xmp_has_layout(const uint8_t *x, size_t n)
{
	if (memmem(x, n, DIR_OPEN, sizeof(DIR_OPEN) - 1))
		return 1;
	for (size_t i = 0; i < sizeof(xmp_drop_attrs) / sizeof(xmp_drop_attrs[0]); i++)
		if (memmem(x, n, xmp_drop_attrs[i], strlen(xmp_drop_attrs[i])))
			return 1;
	return 0;
}

/* Where a span to drop starts at x[i], its length (0: none). */
static size_t drop_at(const uint8_t *x, size_t n, size_t i)
{
	if (n - i >= sizeof(DIR_OPEN) - 1 && !memcmp(x + i, DIR_OPEN, sizeof(DIR_OPEN) - 1)) {
		const uint8_t *gt = memchr(x + i, '>', n - i), *close;
		if (!gt)
			return 0;
		if (gt[-1] == '/')
			return (size_t)(gt + 1 - (x + i));
		close = memmem(gt, n - (size_t)(gt - x), DIR_CLOSE, sizeof(DIR_CLOSE) - 1);
		return close ? (size_t)(close + sizeof(DIR_CLOSE) - 1 - (x + i)) : 0;
	}
	if (x[i] != ' ' && x[i] != '\t' && x[i] != '\n' && x[i] != '\r')
		return 0;
	for (size_t k = 0; k < sizeof(xmp_drop_attrs) / sizeof(xmp_drop_attrs[0]); k++) {
		size_t an = strlen(xmp_drop_attrs[k]), j = i;
		const uint8_t *q;
		while (j < n && (x[j] == ' ' || x[j] == '\t' || x[j] == '\n' || x[j] == '\r'))
			j++;
		if (n - j < an || memcmp(x + j, xmp_drop_attrs[k], an) != 0)
			continue;
		q = memchr(x + j + an, '"', n - j - an);
		return q ? (size_t)(q + 1 - (x + i)) : 0;
	}
	return 0;
}

/*
 * The XMP of the HEIC: the original's packet without what describes the
 * JPEG's layout (Container:Directory, the MotionPhoto and MicroVideo flags,
 * MicroVideoOffset), and for a motion photo a description of the HEIC's
 * (Motion Photo format 1.0: the primary image/heic item, then the video/mp4
 * item of video_len bytes behind the 8 bytes of its mpvd box header). A new
 * packet when the original has none (or no rdf:RDF to put it in).
 */
static int heic_xmp(const uint8_t *x, size_t n, size_t video_len, uint8_t **out, size_t *out_len)
{
	static const char packet_head[] =
	    "<?xpacket begin=\"\xEF\xBB\xBF\" id=\"W5M0MpCehiHzreSzNTczkc9d\"?>"
	    "<x:xmpmeta xmlns:x=\"adobe:ns:meta/\"><rdf:RDF "
	    "xmlns:rdf=\"http://www.w3.org/1999/02/22-rdf-syntax-ns#\">";
	static const char packet_tail[] = "</rdf:RDF></x:xmpmeta><?xpacket end=\"w\"?>";
	char desc[1024];
	uint8_t *buf = NULL;
	size_t len = 0, cap = 0, dn = 0;
	const uint8_t *rdf = x ? memmem(x, n, "<rdf:RDF", 8) : NULL, *gt = NULL;
	int ret = 0;

	if (video_len)
		dn = (size_t)snprintf(
		    desc, sizeof(desc),
		    "<rdf:Description rdf:about=\"\" xmlns:GCamera=\"" NS_GCAMERA
		    "\" xmlns:Container=\"" NS_CONTAINER "\" xmlns:Item=\"" NS_ITEM
		    "\" GCamera:MotionPhoto=\"1\" GCamera:MotionPhotoVersion=\"1\">"
		    "<Container:Directory><rdf:Seq><rdf:li rdf:parseType=\"Resource\">"
		    "<Container:Item Item:Mime=\"image/heic\" Item:Semantic=\"Primary\" "
		    "Item:Length=\"0\" Item:Padding=\"0\"/></rdf:li><rdf:li "
		    "rdf:parseType=\"Resource\"><Container:Item Item:Mime=\"video/mp4\" "
		    "Item:Semantic=\"MotionPhoto\" Item:Length=\"%zu\" Item:Padding=\"%d\"/>"
		    "</rdf:li></rdf:Seq></Container:Directory></rdf:Description>",
		    video_len, MPVD_HEADER);
	if (rdf)
		gt = memchr(rdf, '>', n - (size_t)(rdf - x));
	if (!gt) {
		ret = put(&buf, &len, &cap, packet_head, sizeof(packet_head) - 1);
		if (!ret)
			ret = put(&buf, &len, &cap, desc, dn);
		if (!ret)
			ret = put(&buf, &len, &cap, packet_tail, sizeof(packet_tail) - 1);
		goto out;
	}
	for (size_t i = 0; i < n && !ret;) {
		size_t d = drop_at(x, n, i);
		if (d) {
			i += d;
			continue;
		}
		ret = put(&buf, &len, &cap, x + i, 1);
		if (!ret && x + i == gt)
			ret = put(&buf, &len, &cap, desc, dn);
		i++;
	}
out:
	if (ret) {
		free(buf);
		return ret;
	}
	*out = buf;
	*out_len = len;
	return 0;
}

int trailer_classify(const struct jpeg_info *ji, struct photo_trailer *t)
{
	const uint8_t *tr = ji->trailer;
	size_t n = ji->trailer_len;
	int ftyp_first = n >= BOX_TYPE_AT + 4 && !memcmp(tr + BOX_TYPE_AT, "ftyp", 4);
	int sef = n >= SEF_TAIL_LEN && !memcmp(tr + n - 4, SEF_TAIL, 4);
	size_t v = ji->xmp ? xmp_video_len(ji->xmp, ji->xmp_len) : 0;

	memset(t, 0, sizeof(*t));
	if (!n)
		return 0;
	/* the video the XMP locates must be an MP4 and end the file; an MP4
	 * that no XMP names is a motion video too, but the HEIC does not claim
	 * to be a motion photo on the strength of four bytes: it goes in the
	 * trailer item */
	if (v && (v > n || v < BOX_TYPE_AT + 4 || memcmp(tr + n - v + BOX_TYPE_AT, "ftyp", 4) != 0))
		v = 0;
	t->video_len = v;
	t->item_len = n - v;
	if (v || ftyp_first || (ji->xmp && xmp_says_motion(ji->xmp, ji->xmp_len)))
		t->carries |= CODEC_CARRIES_MOTION;
	if (ji->mpf && ji->hdrgm)
		t->carries |= CODEC_CARRIES_GAIN_MAP;
	if (ji->mpf && ji->mpf_images > (ji->hdrgm ? 1 : 0))
		t->carries |= CODEC_CARRIES_MPF;
	if (sef)
		t->carries |= CODEC_CARRIES_SEF;
	if (!t->carries && all_zero(tr, n))
		t->carries |= CODEC_CARRIES_PADDING;
	if (!t->carries)
		t->carries |= CODEC_CARRIES_OTHER;
	return 0;
}

int trailer_heic_xmp(const struct jpeg_info *ji, const struct photo_trailer *t, uint8_t **xmp,
		     size_t *xmp_len)
{
	*xmp = NULL;
	*xmp_len = 0;
	if (!t->video_len && !(ji->xmp && xmp_has_layout(ji->xmp, ji->xmp_len)))
		return 0;
	return heic_xmp(ji->xmp, ji->xmp ? ji->xmp_len : 0, t->video_len, xmp, xmp_len);
}
