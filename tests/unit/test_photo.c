/* test_photo — JPEG -> HEIC archiving and the JPEG view, on fixtures built
 * here with TurboJPEG and hand-made APPn/COM segments (and on the shared
 * corpus of camera JPEGs when it is present). */
#include "../../codec/internal.h"
#include "check.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <libheif/heif.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <turbojpeg.h>
#include <unistd.h>

#define CORPUS "../shared/corpus/exif-samples/jpg"
#define TEST_PRESET "fast" /* tests trade a little size for time */

static char tmpdir[64];
static struct codec_opts opts;

/* ---- small buffers ---- */

struct buf {
	uint8_t *p;
	size_t len;
};

static void buf_add(struct buf *b, const void *data, size_t n)
{
	b->p = realloc(b->p, b->len + n + 1);
	if (!b->p)
		abort();
	memcpy(b->p + b->len, data, n);
	b->len += n;
}

static void buf_free(struct buf *b)
{
	free(b->p);
	b->p = NULL;
	b->len = 0;
}

static struct buf read_path(const char *path)
{
	struct buf b = {0};
	int fd = open(path, O_RDONLY);

	if (fd >= 0) {
		if (codec_read_all(fd, 1u << 30, &b.p, &b.len))
			b.p = NULL, b.len = 0;
		close(fd);
	}
	return b;
}

static void write_path(const char *path, const struct buf *b)
{
	FILE *f = fopen(path, "wb");

	if (!f || fwrite(b->p, 1, b->len, f) != b->len || fclose(f) != 0)
		abort();
}

static const char *tpath(const char *name)
{
	static char p[8][256];
	static int i;

	i = (i + 1) % 8;
	snprintf(p[i], sizeof(p[i]), "%s/%s", tmpdir, name);
	return p[i];
}

/* ---- fixtures ---- */

/* A textured picture (gradients, a few sinusoids, mild noise): realistic
 * enough for SSIM to mean something, smooth enough that HEVC beats JPEG. */
static uint8_t *make_rgb(int w, int h, unsigned seed)
{
	uint8_t *p = malloc((size_t)w * h * 3);
	unsigned s = seed * 2654435761u + 1;

	if (!p)
		abort();
	for (int y = 0; y < h; y++)
		for (int x = 0; x < w; x++) {
			int c[3];
			s = s * 1103515245u + 12345u;
			int n = (int)((s >> 16) % 3) - 1;
			int blob = ((x / 24 + y / 16) % 3) * 25;
			c[0] = 40 + 160 * x / (w > 1 ? w : 1) + blob + n;
			c[1] = 60 + 140 * y / (h > 1 ? h : 1) + ((x + y) / 6 % 8) * 6 + n;
			c[2] = 128 + ((x + 2 * y) % 96) - 48 + n;
			for (int k = 0; k < 3; k++)
				p[((size_t)y * w + x) * 3 + k] = (uint8_t)(c[k] < 0	? 0
									   : c[k] > 255 ? 255
											: c[k]);
		}
	return p;
}

/* A JPEG from TurboJPEG (its own JFIF APP0 dropped). */
static struct buf make_jpeg_pf(int w, int h, int subsamp, int flags, int quality, int pf,
			       unsigned seed)
{
	uint8_t *rgb = make_rgb(w, h, seed), *src = rgb;
	unsigned char *j = NULL;
	unsigned long jl = 0;
	struct buf b = {0};
	tjhandle tj = tjInitCompress();
	size_t p = 2;

	if (pf == TJPF_CMYK) {
		src = malloc((size_t)w * h * 4);
		for (size_t i = 0; i < (size_t)w * h; i++) {
			src[i * 4] = rgb[i * 3], src[i * 4 + 1] = rgb[i * 3 + 1];
			src[i * 4 + 2] = rgb[i * 3 + 2], src[i * 4 + 3] = 30;
		}
	}
	if (tjCompress2(tj, src, w, 0, h, pf, &j, &jl, subsamp, quality, flags) == -1) {
		fprintf(stderr, "tjCompress2: %s\n", tjGetErrorStr2(tj));
		abort();
	}
	buf_add(&b, j, 2);
	while (j[p] == 0xFF && j[p + 1] == 0xE0)
		p += 2 + ((size_t)j[p + 2] << 8 | j[p + 3]);
	buf_add(&b, j + p, jl - p);
	tjFree(j);
	tjDestroy(tj);
	if (src != rgb)
		free(src);
	free(rgb);
	return b;
}

static struct buf make_jpeg(int w, int h, int subsamp, int flags, unsigned seed)
{
	return make_jpeg_pf(w, h, subsamp, flags, 95, TJPF_RGB, seed);
}

/* Append one APPn/COM segment (marker, big-endian length, payload). */
static void add_seg(struct buf *segs, int marker, const void *payload, size_t n)
{
	uint8_t h[4] = {0xFF, (uint8_t)marker, (uint8_t)((n + 2) >> 8), (uint8_t)(n + 2)};

	if (n + 2 > 65535)
		abort();
	buf_add(segs, h, 4);
	buf_add(segs, payload, n);
}

/* SOI + segs + the rest of jpeg after its SOI. */
static struct buf splice_segs(const struct buf *jpeg, const struct buf *segs)
{
	struct buf b = {0};

	buf_add(&b, jpeg->p, 2);
	if (segs->len)
		buf_add(&b, segs->p, segs->len);
	buf_add(&b, jpeg->p + 2, jpeg->len - 2);
	return b;
}

static void le16(uint8_t *p, unsigned v)
{
	p[0] = (uint8_t)v, p[1] = (uint8_t)(v >> 8);
}

static void le32(uint8_t *p, uint32_t v)
{
	le16(p, v & 0xFFFF), le16(p + 2, v >> 16);
}

static void ifd_entry(uint8_t *e, unsigned tag, unsigned type, uint32_t count, uint32_t value)
{
	le16(e, tag), le16(e + 2, type), le32(e + 4, count), le32(e + 8, value);
}

/* APP1 Exif: IFD0 (Make, Orientation, ExifIFD, GPS IFD), an Exif IFD with
 * DateTimeOriginal and a MakerNote, a GPS IFD with a latitude. */
static void add_exif(struct buf *segs, int orientation)
{
	uint8_t t[6 + 188] = "Exif";
	uint8_t *x = t + 6;

	memcpy(x, "II*\0", 4), le32(x + 4, 8);
	le16(x + 8, 4);
	ifd_entry(x + 10, 0x010F, 2, 6, 62);
	ifd_entry(x + 22, 0x0112, 3, 1, (uint32_t)orientation);
	ifd_entry(x + 34, 0x8769, 4, 1, 68);
	ifd_entry(x + 46, 0x8825, 4, 1, 134);
	le32(x + 58, 0);
	memcpy(x + 62, "hevcf", 6);
	le16(x + 68, 2);
	ifd_entry(x + 70, 0x9003, 2, 20, 98);
	ifd_entry(x + 82, 0x927C, 7, 16, 118);
	le32(x + 94, 0);
	memcpy(x + 98, "2026:01:02 03:04:05", 20);
	memcpy(x + 118, "MAKERNOTE\x01\x02\x03\x04\x05\x06\x07", 16);
	le16(x + 134, 2);
	ifd_entry(x + 136, 0x0001, 2, 2, 'N');
	ifd_entry(x + 148, 0x0002, 5, 3, 164);
	le32(x + 160, 0);
	for (int i = 0; i < 3; i++)
		le32(x + 164 + 8 * i, (uint32_t)(48 + i)), le32(x + 168 + 8 * i, 1);
	add_seg(segs, 0xE1, t, sizeof(t));
}

#define GUID "0123456789ABCDEF0123456789ABCDEF"

static void add_xmp(struct buf *segs, int with_ext, struct buf *ext_out)
{
	static const char ns[] = "http://ns.adobe.com/xap/1.0/";
	static const char ens[] = "http://ns.adobe.com/xmp/extension/";
	char pkt[1024];
	struct buf b = {0}, ext = {0};
	int n = snprintf(pkt, sizeof(pkt),
			 "<?xpacket begin=\"\" id=\"W5M0MpCehiHzreSzNTczkc9d\"?>"
			 "<x:xmpmeta xmlns:x=\"adobe:ns:meta/\"><rdf:RDF xmlns:rdf=\"http://"
			 "www.w3.org/1999/02/22-rdf-syntax-ns#\"><rdf:Description rdf:about=\"\" "
			 "xmlns:xmp=\"http://ns.adobe.com/xap/1.0/\" xmlns:xmpNote=\"http://"
			 "ns.adobe.com/xmp/note/\" xmp:Rating=\"4\" xmp:CreatorTool=\"hevcfs "
			 "test\"%s/></rdf:RDF></x:xmpmeta><?xpacket end=\"w\"?>",
			 with_ext ? " xmpNote:HasExtendedXMP=\"" GUID "\"" : "");

	buf_add(&b, ns, sizeof(ns));
	buf_add(&b, pkt, (size_t)n);
	add_seg(segs, 0xE1, b.p, b.len);
	buf_free(&b);
	if (!with_ext)
		return;
	{
		static const char head[] =
		    "<x:xmpmeta xmlns:x=\"adobe:ns:meta/\"><rdf:RDF xmlns:rdf=\"http://"
		    "www.w3.org/1999/02/22-rdf-syntax-ns#\"><rdf:Description rdf:about=\"\" "
		    "xmlns:GImage=\"http://ns.google.com/photos/1.0/image/\" "
		    "GImage:Mime=\"image/jpeg\" GImage:Data=\"";
		static const char tail[] = "\"/></rdf:RDF></x:xmpmeta>";
		buf_add(&ext, head, sizeof(head) - 1);
		for (int i = 0; i < 70000; i++)
			buf_add(&ext, &"ABCDEFGHabcdefgh0123456789+/"[i % 28], 1);
		buf_add(&ext, tail, sizeof(tail) - 1);
	}
	for (size_t off = 0; off < ext.len; off += 60000) {
		size_t n2 = ext.len - off < 60000 ? ext.len - off : 60000;
		uint8_t h[8];
		h[0] = (uint8_t)(ext.len >> 24), h[1] = (uint8_t)(ext.len >> 16);
		h[2] = (uint8_t)(ext.len >> 8), h[3] = (uint8_t)ext.len;
		h[4] = (uint8_t)(off >> 24), h[5] = (uint8_t)(off >> 16);
		h[6] = (uint8_t)(off >> 8), h[7] = (uint8_t)off;
		buf_add(&b, ens, sizeof(ens));
		buf_add(&b, GUID, 32);
		buf_add(&b, h, 8);
		buf_add(&b, ext.p + off, n2);
		add_seg(segs, 0xE1, b.p, b.len);
		buf_free(&b);
	}
	*ext_out = ext;
}

/* A plausible ICC profile of n bytes (header, no tags) in APP2 chunks. */
static struct buf add_icc(struct buf *segs, size_t n, size_t chunk)
{
	struct buf icc = {0}, b = {0};
	uint8_t *p = calloc(1, n);
	int count = (int)((n + chunk - 1) / chunk);

	p[0] = (uint8_t)(n >> 24), p[1] = (uint8_t)(n >> 16), p[2] = (uint8_t)(n >> 8);
	p[3] = (uint8_t)n;
	memcpy(p + 4, "lcms", 4);
	p[8] = 2, p[9] = 0x10;
	memcpy(p + 12, "mntr", 4), memcpy(p + 16, "RGB ", 4), memcpy(p + 20, "XYZ ", 4);
	memcpy(p + 36, "acsp", 4);
	for (size_t i = 132; i < n; i++)
		p[i] = (uint8_t)(i * 7);
	buf_add(&icc, p, n);
	free(p);
	for (int s = 0; s < count; s++) {
		size_t off = (size_t)s * chunk, m = n - off < chunk ? n - off : chunk;
		uint8_t h[2] = {(uint8_t)(s + 1), (uint8_t)count};
		buf_add(&b, "ICC_PROFILE", 12);
		buf_add(&b, h, 2);
		buf_add(&b, icc.p + off, m);
		add_seg(segs, 0xE2, b.p, b.len);
		buf_free(&b);
	}
	return icc;
}

static void add_iptc(struct buf *segs)
{
	static const char cap[] = "A caption from IPTC";
	uint8_t iim[64] = {0x1C, 2, 0, 0, 2, 0, 4, 0x1C, 2, 0x78, 0, sizeof(cap) - 1};
	size_t il = 12 + sizeof(cap) - 1;
	struct buf b = {0};
	uint8_t rsrc[12] = {'8', 'B', 'I', 'M', 4, 4, 0, 0, 0, 0, 0, (uint8_t)il};

	memcpy(iim + 12, cap, sizeof(cap) - 1);
	buf_add(&b, "Photoshop 3.0", 14);
	buf_add(&b, rsrc, 12);
	buf_add(&b, iim, il);
	if (il & 1)
		buf_add(&b, "", 1);
	add_seg(segs, 0xED, b.p, b.len);
	buf_free(&b);
}

/* Everything a rich camera/phone JPEG carries. */
struct rich {
	struct buf segs, icc, xmp_ext;
};

static void make_rich(struct rich *r, int orientation)
{
	static const char com[] = "hevcfs test comment";
	static const uint8_t vendor[] = "VENDOR\0opaque\x01\x02\x03";

	memset(r, 0, sizeof(*r));
	add_exif(&r->segs, orientation);
	add_xmp(&r->segs, 1, &r->xmp_ext);
	r->icc = add_icc(&r->segs, 70000, 60000);
	add_iptc(&r->segs);
	add_seg(&r->segs, 0xE9, vendor, sizeof(vendor));
	add_seg(&r->segs, 0xFE, com, sizeof(com) - 1);
}

static void rich_free(struct rich *r)
{
	buf_free(&r->segs);
	buf_free(&r->icc);
	buf_free(&r->xmp_ext);
}

/* ---- running and checking ---- */

static int archive(const struct buf *jpeg, const char *name, struct codec_result *res)
{
	const char *in = tpath(name);
	char out[256], view[256];
	int fd, ret;

	snprintf(out, sizeof(out), "%s.heic", in);
	snprintf(view, sizeof(view), "%s.view.jpg", in);
	write_path(in, jpeg);
	fd = open(in, O_RDONLY);
	if (fd < 0)
		abort();
	ret = codec_archive(fd, out, view, &opts, res);
	close(fd);
	return ret;
}

/* The original's Y plane through TurboJPEG. */
static int y_plane(const struct buf *jpeg, struct photo_planes *pl)
{
	char why[128];

	return jpeg_decode_planes(jpeg->p, jpeg->len, pl, why, sizeof(why));
}

/* Size of the APPn/COM run right after SOI. */
static size_t header_run(const struct buf *j)
{
	size_t p = 2;

	while (p + 4 <= j->len && j->p[p] == 0xFF &&
	       ((j->p[p + 1] >= 0xE0 && j->p[p + 1] <= 0xEF) || j->p[p + 1] == 0xFE))
		p += 2 + ((size_t)j->p[p + 2] << 8 | j->p[p + 3]);
	return p - 2;
}

/* Where the image data of a JPEG starts (the first marker after SOI that
 * is not APPn/COM) and where its EOI ends. */
static void jpeg_bounds(const struct buf *j, size_t *data, size_t *eoi_end)
{
	struct jpeg_info ji;

	CHECK_EQ(jpeg_parse(j->p, j->len, &ji), 0);
	*data = ji.head_end;
	*eoi_end = ji.eoi_end;
	jpeg_info_release(&ji);
}

/* A view is the original's layout: the same size; SOI and the original's
 * APPn/COM segments, byte for byte; APP15 segments of NULs (each at least
 * 8 bytes); the image data, its EOI where the original's was; then the
 * original's trailer, byte for byte. */
static void check_layout(const struct buf *orig, const struct buf *v)
{
	size_t od, oe, vd, ve, p;
	struct jpeg_info ji;

	jpeg_bounds(orig, &od, &oe);
	jpeg_bounds(v, &vd, &ve);
	CHECK_EQ(v->len, orig->len);
	CHECK_EQ(ve, oe);
	CHECK(memcmp(v->p + oe, orig->p + oe, orig->len - oe) == 0);
	CHECK_EQ(jpeg_parse(orig->p, orig->len, &ji), 0);
	CHECK(memcmp(v->p, orig->p, 2) == 0 &&
	      (!ji.segs_len || memcmp(v->p + 2, ji.segs, ji.segs_len) == 0));
	p = 2 + ji.segs_len;
	jpeg_info_release(&ji);
	while (p < vd) {
		size_t n = 2 + ((size_t)v->p[p + 2] << 8 | v->p[p + 3]);
		CHECK(v->p[p] == 0xFF && v->p[p + 1] == 0xEF && n >= 8 && p + n <= vd);
		for (size_t i = 4; i < n; i++)
			CHECK(v->p[p + i] == 0);
		p += n;
	}
	CHECK_EQ(p, vd);
	CHECK(v->p[vd] == 0xFF && v->p[vd + 1] != 0xEF && v->p[vd + 1] != 0xFE);
}

static int render(const char *heic, const char *out, uint64_t *size)
{
	int fd = open(heic, O_RDONLY), ret;

	if (fd < 0)
		return -errno;
	ret = codec_render_view(fd, out, &opts, size);
	close(fd);
	return ret;
}

/* What an archived photo must satisfy; name is the fixture's name. */
static void check_archived(const struct buf *jpeg, const char *name, const struct codec_result *res,
			   const struct buf *icc, int expect_exif, int expect_xmp)
{
	char out[256], view[256], r1[256], r2[256];
	struct buf heic, v, a, b;
	struct photo_planes orig, dec, vp;
	struct heif_context *ctx;
	struct heif_image_handle *h;
	uint64_t s1 = 0, s2 = 0;
	size_t hl = header_run(jpeg);

	snprintf(out, sizeof(out), "%s.heic", tpath(name));
	snprintf(view, sizeof(view), "%s.view.jpg", tpath(name));
	snprintf(r1, sizeof(r1), "%s.r1.jpg", tpath(name));
	snprintf(r2, sizeof(r2), "%s.r2.jpg", tpath(name));
	CHECK(res->archived == 1);
	CHECK(strcmp(res->suffix, ".heic") == 0);
	CHECK(res->ssim >= 0.99);
	CHECK(res->view_ssim >= 0.985);
	CHECK(res->quality > 0 && res->quality <= 100);
	heic = read_path(out);
	CHECK(heic.p && heic.len == res->stored_bytes);
	CHECK(res->stored_bytes <= 0.9 * (double)jpeg->len);

	/* the HEIC: pixels, metadata, colour */
	CHECK_EQ(heic_open(heic.p, heic.len, 0, &ctx, &h), 0);
	CHECK_EQ(y_plane(jpeg, &orig), 0);
	CHECK_EQ(heic_decode_planes(h, orig.subsamp, orig.width, orig.height, 1, &dec), 0);
	CHECK(codec_ssim_plane(orig.plane[0], orig.stride[0], dec.plane[0], dec.stride[0],
			       orig.width, orig.height) >= 0.99);
	photo_planes_release(&dec);
	CHECK_EQ(heif_image_handle_get_number_of_metadata_blocks(h, "Exif"), expect_exif);
	if (expect_xmp) {
		uint8_t *x;
		size_t xl;
		CHECK_EQ(heic_get_item(h, "mime", "application/rdf+xml", &x, &xl), 0);
		CHECK(memmem(x, xl, "hevcfs test", 11) != NULL);
		free(x);
	}
	{
		uint8_t *item;
		size_t il;
		CHECK_EQ(heic_get_item(h, "mime", "application/x-hevcfs-jpeg-header", &item, &il),
			 0);
		CHECK(il >= 236 && memcmp(item, "HVFSJPEG\5", 9) == 0);
		free(item);
	}
	if (icc) {
		size_t n = heif_image_handle_get_raw_color_profile_size(h);
		uint8_t *p = malloc(n ? n : 1);
		CHECK_EQ(n, icc->len);
		CHECK(heif_image_handle_get_raw_color_profile(h, p).code == heif_error_Ok);
		CHECK(memcmp(p, icc->p, n) == 0);
		free(p);
	}
	{
		struct heif_color_profile_nclx *nclx = NULL;
		CHECK(heif_image_handle_get_nclx_color_profile(h, &nclx).code == heif_error_Ok);
		CHECK_EQ(nclx->matrix_coefficients, 6);
		CHECK_EQ(nclx->full_range_flag, 1);
		heif_nclx_color_profile_free(nclx);
	}
	heif_image_handle_release(h);
	heif_context_free(ctx);

	/* the view: the original's layout (header verbatim, padding, EOI where
	 * the original's was, trailer), close to the original, exact size */
	v = read_path(view);
	CHECK(v.p && v.len == res->view_bytes);
	CHECK_EQ(res->view_own_size, 0);
	check_layout(jpeg, &v);
	CHECK(memcmp(v.p, jpeg->p, 2 + hl) == 0);
	CHECK_EQ(y_plane(&v, &vp), 0);
	CHECK(codec_ssim_plane(orig.plane[0], orig.stride[0], vp.plane[0], vp.stride[0], orig.width,
			       orig.height) >= 0.985);
	photo_planes_release(&vp);
	photo_planes_release(&orig);

	/* rendering again, twice, gives the same bytes */
	CHECK_EQ(render(out, r1, &s1), 0);
	CHECK_EQ(render(out, r2, &s2), 0);
	a = read_path(r1);
	b = read_path(r2);
	CHECK(s1 == res->view_bytes && s2 == s1 && a.len == s1 && b.len == s1);
	CHECK(memcmp(a.p, v.p, v.len) == 0 && memcmp(b.p, v.p, v.len) == 0);
	buf_free(&a);
	buf_free(&b);
	buf_free(&v);
	buf_free(&heic);
}

/* ---- tests ---- */

static void test_rich_420(void)
{
	struct rich r;
	struct buf j = make_jpeg_pf(800, 600, TJSAMP_420, 0, 100, TJPF_RGB, 1), f;
	struct codec_result res;

	make_rich(&r, 1);
	f = splice_segs(&j, &r.segs);
	CHECK_EQ(archive(&f, "rich420.jpg", &res), 0);
	if (!res.archived)
		fprintf(stderr, "  kept (%zu bytes, %zu of them metadata): %s\n", f.len, r.segs.len,
			res.reason);
	check_archived(&f, "rich420.jpg", &res, &r.icc, 1, 1);
	/* Extended XMP is its own XMP item, byte for byte */
	{
		struct buf heic = read_path(tpath("rich420.jpg.heic"));
		struct heif_context *ctx;
		struct heif_image_handle *h;
		heif_item_id ids[8];
		int n, found = 0;
		CHECK_EQ(heic_open(heic.p, heic.len, 0, &ctx, &h), 0);
		n = heif_image_handle_get_list_of_metadata_block_IDs(h, "mime", ids, 8);
		for (int i = 0; i < n; i++) {
			size_t sz = heif_image_handle_get_metadata_size(h, ids[i]);
			uint8_t *p = malloc(sz);
			heif_image_handle_get_metadata(h, ids[i], p);
			if (sz == r.xmp_ext.len && memcmp(p, r.xmp_ext.p, sz) == 0)
				found = 1;
			free(p);
		}
		CHECK(heif_image_handle_get_number_of_thumbnails(h) == 1);
		heif_image_handle_release(h);
		heif_context_free(ctx);
		buf_free(&heic);
		CHECK(found);
	}
	rich_free(&r);
	buf_free(&j);
	buf_free(&f);
}

/* Each subsampling, plain (TurboJPEG's JFIF only) and with a comment. */
static void test_subsamplings(void)
{
	static const int ss[] = {TJSAMP_420, TJSAMP_422, TJSAMP_444, TJSAMP_GRAY};

	for (int i = 0; i < 4; i++) {
		struct buf j = make_jpeg(160, 96, ss[i], 0, 10 + (unsigned)i), segs = {0}, f;
		struct codec_result res;
		char name[32];

		add_seg(&segs, 0xFE, "subsampling test", 16);
		f = splice_segs(&j, &segs);
		snprintf(name, sizeof(name), "ss%d.jpg", ss[i]);
		CHECK_EQ(archive(&f, name, &res), 0);
		if (!res.archived)
			fprintf(stderr, "  kept %s: %s\n", name, res.reason);
		check_archived(&f, name, &res, NULL, 0, 0);
		buf_free(&j);
		buf_free(&segs);
		buf_free(&f);
	}
}

/* Where display pixel (x, y) comes from in the stored picture, per EXIF
 * orientation (stored size w x h). */
static void src_of(int o, int w, int h, int x, int y, int *sx, int *sy)
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

/* EXIF orientation 1..8 becomes irot/imir over unrotated pixels, and the
 * Exif item keeps the original value (never rotated twice). */
static void test_orientations(void)
{
	const int w = 96, hgt = 64;

	for (int o = 1; o <= 8; o++) {
		struct buf j = make_jpeg(w, hgt, TJSAMP_420, 0, 20 + (unsigned)o), segs = {0}, f,
			   heic;
		struct codec_result res;
		struct heif_context *ctx;
		struct heif_image_handle *h;
		struct heif_decoding_options *d;
		struct heif_image *raw, *shown;
		const uint8_t *rp, *sp;
		int rs, ss, dw, dh, bad = 0;
		char name[32];

		add_exif(&segs, o);
		f = splice_segs(&j, &segs);
		snprintf(name, sizeof(name), "orient%d.jpg", o);
		CHECK_EQ(archive(&f, name, &res), 0);
		check_archived(&f, name, &res, NULL, 1, 0);

		snprintf(name, sizeof(name), "orient%d.jpg.heic", o);
		heic = read_path(tpath(name));
		CHECK_EQ(heic_open(heic.p, heic.len, 0, &ctx, &h), 0);
		dw = heif_image_handle_get_width(h);
		dh = heif_image_handle_get_height(h);
		CHECK_EQ(dw, o >= 5 ? hgt : w);
		CHECK_EQ(dh, o >= 5 ? w : hgt);
		d = heif_decoding_options_alloc();
		d->ignore_transformations = 1;
		CHECK(heif_decode_image(h, &raw, heif_colorspace_YCbCr, heif_chroma_420, d).code ==
		      heif_error_Ok);
		d->ignore_transformations = 0;
		CHECK(
		    heif_decode_image(h, &shown, heif_colorspace_YCbCr, heif_chroma_420, d).code ==
		    heif_error_Ok);
		CHECK_EQ(heif_image_get_width(raw, heif_channel_Y), w);
		CHECK_EQ(heif_image_get_width(shown, heif_channel_Y), dw);
		rp = heif_image_get_plane_readonly(raw, heif_channel_Y, &rs);
		sp = heif_image_get_plane_readonly(shown, heif_channel_Y, &ss);
		for (int y = 0; y < dh; y++)
			for (int x = 0; x < dw; x++) {
				int sx, sy;
				src_of(o, w, hgt, x, y, &sx, &sy);
				bad += sp[y * ss + x] != rp[sy * rs + sx];
			}
		CHECK_EQ(bad, 0);
		{
			/* the Exif item: 4-byte offset, then our bytes; orientation intact */
			uint8_t *e;
			size_t el;
			CHECK_EQ(heic_get_item(h, "Exif", NULL, &e, &el), 0);
			CHECK(el >= 4 + 6 + 188);
			CHECK(memcmp(e + 4, segs.p + 4, 6 + 188) == 0);
			CHECK_EQ(e[4 + 6 + 22 + 8], o);
			free(e);
		}
		heif_image_release(raw);
		heif_image_release(shown);
		heif_decoding_options_free(d);
		heif_image_handle_release(h);
		heif_context_free(ctx);
		buf_free(&heic);
		buf_free(&j);
		buf_free(&segs);
		buf_free(&f);
	}
}

/* Progressive, restart markers, and a ~1 MP photo with odd sides and a
 * thumbnail. */
static void test_progressive_restart_large(void)
{
	struct buf p = make_jpeg(200, 150, TJSAMP_420, TJFLAG_PROGRESSIVE, 31), r, l;
	struct codec_result res;
	int scans = 0, rst = 0;

	for (size_t i = 0; i + 1 < p.len; i++)
		scans += p.p[i] == 0xFF && p.p[i + 1] == 0xDA;
	CHECK(scans > 1);
	CHECK_EQ(archive(&p, "progressive.jpg", &res), 0);
	check_archived(&p, "progressive.jpg", &res, NULL, 0, 0);

	/* TurboJPEG 2 takes restart intervals from the environment only */
	setenv("TJ_RESTART", "1", 1);
	r = make_jpeg(200, 150, TJSAMP_422, 0, 32);
	unsetenv("TJ_RESTART");
	for (size_t i = 0; i + 1 < r.len; i++)
		rst += r.p[i] == 0xFF && r.p[i + 1] >= 0xD0 && r.p[i + 1] <= 0xD7;
	CHECK(rst > 0);
	CHECK_EQ(archive(&r, "restart.jpg", &res), 0);
	check_archived(&r, "restart.jpg", &res, NULL, 0, 0);

	l = make_jpeg(1201, 801, TJSAMP_420, 0, 33);
	CHECK_EQ(archive(&l, "large.jpg", &res), 0);
	check_archived(&l, "large.jpg", &res, NULL, 0, 0);
	{
		struct buf heic = read_path(tpath("large.jpg.heic"));
		struct heif_context *ctx;
		struct heif_image_handle *h;
		CHECK_EQ(heic_open(heic.p, heic.len, 0, &ctx, &h), 0);
		CHECK_EQ(heif_image_handle_get_number_of_thumbnails(h), 1);
		heif_image_handle_release(h);
		heif_context_free(ctx);
		buf_free(&heic);
	}
	buf_free(&p);
	buf_free(&r);
	buf_free(&l);
}

/* pl encoded as a HEIC (heic_encode with ji and hp), in memory. */
static struct buf encode_mem(const struct photo_planes *pl, const struct jpeg_info *ji,
			     const struct heic_params *hp)
{
	struct heif_context *ctx = NULL;
	struct buf b = {0};

	CHECK_EQ(heic_encode(pl, ji, hp, &ctx), 0);
	CHECK_EQ(heic_write_mem(ctx, &b.p, &b.len), 0);
	heif_context_free(ctx);
	return b;
}

/* Decode a HEIC's primary image (no transformations) with whichever HEVC
 * decoder libheif has chosen. */
static struct heif_image *decode_primary(const struct buf *heic)
{
	struct heif_context *ctx;
	struct heif_image_handle *h;
	struct heif_decoding_options *o = heif_decoding_options_alloc();
	struct heif_image *img = NULL;

	o->ignore_transformations = 1;
	CHECK_EQ(heic_open(heic->p, heic->len, 0, &ctx, &h), 0);
	CHECK_EQ(heif_decode_image(h, &img, heif_colorspace_YCbCr, heif_chroma_420, o).code,
		 heif_error_Ok);
	heif_decoding_options_free(o);
	heif_image_handle_release(h);
	heif_context_free(ctx);
	return img;
}

/* The threaded decoder (hevcdec.c) gives libheif's own decoder's pixels,
 * sample for sample, and is the one used once registered. Runs first: the
 * registration lasts for the process. */
static void test_threaded_decoder(void)
{
	static const struct jpeg_info ji = {.orientation = 1};
	struct heic_params hp = {.quality = 60, .preset = "ultrafast"};
	struct photo_planes pl = {0};
	struct heif_image *a, *b;
	struct buf heic;
	unsigned long before;
	struct buf j = make_jpeg(1280, 720, TJSAMP_420, 0, 7);

	CHECK_EQ(y_plane(&j, &pl), 0);
	heic = encode_mem(&pl, &ji, &hp);

	a = decode_primary(&heic); /* libheif's own libde265 plugin */
	before = hevcdec_pictures();
	hevcdec_init();
	b = decode_primary(&heic);
	CHECK_EQ(hevcdec_pictures(), before + 1);
	for (int c = 0; c < 3; c++) {
		enum heif_channel ch = c == 0	? heif_channel_Y
				       : c == 1 ? heif_channel_Cb
						: heif_channel_Cr;
		int sa, sb, pw = heif_image_get_width(a, ch), ph = heif_image_get_height(a, ch);
		const uint8_t *pa = heif_image_get_plane_readonly(a, ch, &sa);
		const uint8_t *pb = heif_image_get_plane_readonly(b, ch, &sb);
		CHECK_EQ(heif_image_get_width(b, ch), pw);
		CHECK_EQ(heif_image_get_height(b, ch), ph);
		for (int y = 0; y < ph; y++)
			CHECK(memcmp(pa + (size_t)y * sa, pb + (size_t)y * sb, (size_t)pw) == 0);
	}
	heif_image_release(a);
	heif_image_release(b);
	photo_planes_release(&pl);
	buf_free(&heic);
	buf_free(&j);
}

/* Raw planes are the decoder's: a lossless HEIC (x265 lossless=1) decodes
 * to the very planes it was made of, at each subsampling and at odd sides
 * (which libheif codes padded), where at 4:2:0 the planes libheif hands out
 * (through RGB and back) do not. */
static void test_raw_planes(void)
{
	static const int ss[] = {TJSAMP_420, TJSAMP_422, TJSAMP_444};
	static const struct jpeg_info ji = {.orientation = 1};
	struct heic_params hp = {
	    .quality = 90, .preset = "ultrafast", .x265 = "lossless=1", .no_thumbnail = 1};

	for (size_t k = 0; k < sizeof(ss) / sizeof(ss[0]); k++) {
		struct buf j = make_jpeg(333, 211, ss[k], 0, 11 + (unsigned)k);
		struct photo_planes pl = {0}, raw = {0}, conv = {0};
		struct heif_context *rd = NULL;
		struct heif_image_handle *h = NULL;
		struct buf heic;
		int w, hh, sub, same_raw = 1, same_conv = 1;

		CHECK_EQ(y_plane(&j, &pl), 0);
		w = pl.width, hh = pl.height, sub = pl.subsamp;
		heic = encode_mem(&pl, &ji, &hp);
		CHECK_EQ(heic_open(heic.p, heic.len, 0, &rd, &h), 0);
		CHECK_EQ(heic_decode_planes(h, sub, w, hh, 1, &raw), 0);
		CHECK_EQ(heic_decode_planes(h, sub, w, hh, 0, &conv), 0);
		for (int i = 0; i < 3; i++) {
			/* TurboJPEG pads planes to whole MCUs: compare the picture */
			int cw = i && sub != TJSAMP_444 ? (w + 1) / 2 : w;
			int ch = i && sub == TJSAMP_420 ? (hh + 1) / 2 : hh;
			for (int y = 0; y < ch; y++) {
				const uint8_t *o = pl.plane[i] + (size_t)y * pl.stride[i];
				same_raw &= !memcmp(o, raw.plane[i] + (size_t)y * raw.stride[i],
						    (size_t)cw);
				same_conv &= !memcmp(o, conv.plane[i] + (size_t)y * conv.stride[i],
						     (size_t)cw);
			}
		}
		CHECK(same_raw);
		/* the chroma resampling of the RGB round trip shows at 4:2:0 */
		if (sub == TJSAMP_420)
			CHECK(!same_conv);
		heif_image_handle_release(h);
		heif_context_free(rd);
		buf_free(&heic);
		photo_planes_release(&pl);
		photo_planes_release(&raw);
		photo_planes_release(&conv);
		buf_free(&j);
	}
}

/* Photos archived before the view took the original's layout still render
 * as they did: version 3 as SOI, segments and the image data from the
 * decoder's planes (no padding, nothing after EOI); version 2 from the
 * planes libheif hands out (through RGB and back). An archived photo's
 * header item (236 bytes: no segments) is rewritten in place as one of
 * version 3 of the same length (68 bytes and the record of a COM segment),
 * then 2. */
static void test_view_versions(void)
{
	struct buf j = make_jpeg_pf(800, 600, TJSAMP_420, 0, 100, TJPF_RGB, 21), heic, v2, v3;
	struct codec_result res;
	struct photo_planes raw;
	struct heif_context *rd;
	struct heif_image_handle *h;
	uint64_t n2 = 0, n3 = 0;
	uint8_t *at, *scan;
	size_t scan_len, il;

	CHECK_EQ(archive(&j, "versions.jpg", &res), 0);
	CHECK(res.archived);
	heic = read_path(tpath("versions.jpg.heic"));
	at = memmem(heic.p, heic.len, "HVFSJPEG\5", 9);
	CHECK(at != NULL);
	CHECK(at[52] == 0 && at[53] == 0 && at[54] == 0 && at[55] == 0); /* no records */
	il = 236; /* the item's length: no records */
	at[8] = 3;
	at[54] = (uint8_t)((il - 68) >> 8);
	at[55] = (uint8_t)(il - 68);
	memset(at + 68, 0, il - 68);
	at[69] = 0xFF, at[70] = 0xFE;
	at[71] = (uint8_t)((il - 68 - 3) >> 8), at[72] = (uint8_t)(il - 68 - 3);
	write_path(tpath("versions.v3.heic"), &heic);
	at[8] = 2;
	write_path(tpath("versions.v2.heic"), &heic);
	CHECK_EQ(render(tpath("versions.v3.heic"), tpath("versions.v3.jpg"), &n3), 0);
	CHECK_EQ(render(tpath("versions.v2.heic"), tpath("versions.v2.jpg"), &n2), 0);
	v2 = read_path(tpath("versions.v2.jpg"));
	v3 = read_path(tpath("versions.v3.jpg"));
	CHECK(v2.len == n2 && v3.len == n3);
	CHECK(v2.len != v3.len || memcmp(v2.p, v3.p, v2.len) != 0);
	/* version 3: SOI, the segment, TurboJPEG's tables and scan of the raw
	 * planes at the recorded quality */
	CHECK_EQ(heic_open(heic.p, heic.len, 0, &rd, &h), 0);
	CHECK_EQ(heic_decode_planes(h, TJSAMP_420, 800, 600, 1, &raw), 0);
	CHECK_EQ(jpeg_encode_scan(&raw, at[9], &scan, &scan_len), 0);
	CHECK_EQ(v3.len, 2 + (il - 68 - 1) + scan_len);
	CHECK(v3.p[2] == 0xFF && v3.p[3] == 0xFE &&
	      memcmp(v3.p + 2 + (il - 68 - 1), scan, scan_len) == 0);
	free(scan);
	photo_planes_release(&raw);
	heif_image_handle_release(h);
	heif_context_free(rd);
	buf_free(&heic);
	buf_free(&v2);
	buf_free(&v3);
	buf_free(&j);
}

static int probe_path(const char *path, struct codec_result *res);

/* The view quality recorded in an archived photo's header item. */
static int view_quality_of(const char *heic_path)
{
	struct buf heic = read_path(heic_path);
	uint8_t *at = memmem(heic.p, heic.len, "HVFSJPEG\5", 9);
	int q = at ? at[9] : -1;

	buf_free(&heic);
	return q;
}

/* Insert n fill bytes (0xFF, which may precede any marker) before the
 * first DQT of a JPEG. */
static struct buf with_fill(const struct buf *j, size_t n)
{
	struct buf b = {0};
	size_t at = 2;

	while (!(j->p[at] == 0xFF && j->p[at + 1] == 0xDB))
		at += 2 + ((size_t)j->p[at + 2] << 8 | j->p[at + 3]);
	buf_add(&b, j->p, at);
	for (size_t i = 0; i < n; i++)
		buf_add(&b, "\xFF", 1);
	buf_add(&b, j->p + at, j->len - at);
	return b;
}

/*
 * When the view's image data at the view quality does not fit the
 * original's (an original coded at a lower quality than the view's), the
 * view is rendered at the highest lower quality that fits and meets the
 * floor; a gap of a few bytes, too short for padding, is fill before the
 * EOI (header version 5); when no quality that meets the floor fits, the view keeps
 * its own size and says so. (Floors lowered: a synthetic picture coded at
 * JPEG quality 85 is smaller as HEVC only under SSIM 0.99.)
 */
static void test_view_fit(void)
{
	struct buf j = make_jpeg_pf(800, 600, TJSAMP_420, 0, 85, TJPF_RGB, 70), f, v, heic;
	struct codec_opts saved = opts;
	struct codec_result res, pr;
	struct photo_planes raw;
	struct heif_context *rd;
	struct heif_image_handle *h;
	size_t od, oe, scan92;
	uint8_t *scan;
	uint64_t size;

	opts.min_ssim = 0.97;
	opts.min_view_ssim = 0.95;
	CHECK_EQ(archive(&j, "fit85.jpg", &res), 0);
	CHECK(res.archived && !res.view_own_size && res.view_bytes == j.len);
	CHECK(res.view_ssim >= 0.95);
	CHECK(view_quality_of(tpath("fit85.jpg.heic")) < 92);
	v = read_path(tpath("fit85.jpg.view.jpg"));
	check_layout(&j, &v);
	buf_free(&v);

	/* the same pixels with the room for the image data at quality 92 plus
	 * 3 bytes: quality 92 fits, with 3 fill bytes before its EOI */
	heic = read_path(tpath("fit85.jpg.heic"));
	CHECK_EQ(heic_open(heic.p, heic.len, 0, &rd, &h), 0);
	CHECK_EQ(heic_decode_planes(h, TJSAMP_420, 800, 600, 1, &raw), 0);
	CHECK_EQ(jpeg_encode_scan(&raw, 92, &scan, &scan92), 0);
	free(scan);
	photo_planes_release(&raw);
	heif_image_handle_release(h);
	heif_context_free(rd);
	buf_free(&heic);
	jpeg_bounds(&j, &od, &oe);
	CHECK(scan92 + 3 > oe - 2);
	f = with_fill(&j, scan92 + 3 - (oe - 2));
	CHECK_EQ(archive(&f, "fit3.jpg", &res), 0);
	CHECK(res.archived && !res.view_own_size && res.view_bytes == f.len);
	CHECK_EQ(view_quality_of(tpath("fit3.jpg.heic")), 92);
	v = read_path(tpath("fit3.jpg.view.jpg"));
	check_layout(&f, &v);
	jpeg_bounds(&f, &od, &oe);
	CHECK(!memcmp(v.p + oe - 5, "\xFF\xFF\xFF\xFF\xD9", 5) && v.p[oe - 6] != 0xFF);
	buf_free(&v);
	buf_free(&f);
	buf_free(&j);

	/* no quality under 92 that fits meets this floor: the view's own size */
	j = make_jpeg_pf(800, 600, TJSAMP_420, 0, 75, TJPF_RGB, 70);
	opts.min_view_ssim = 0.9686;
	CHECK_EQ(archive(&j, "own.jpg", &res), 0);
	opts = saved;
	CHECK(res.archived && res.view_own_size && strstr(res.view_why, "does not fit"));
	CHECK(res.view_bytes > j.len && res.view_ssim >= 0.9686);
	v = read_path(tpath("own.jpg.view.jpg"));
	CHECK_EQ(v.len, res.view_bytes);
	CHECK(v.p[2] == 0xFF && v.p[3] == 0xDB); /* no padding */
	buf_free(&v);
	CHECK_EQ(render(tpath("own.jpg.heic"), tpath("own.r.jpg"), &size), 0);
	CHECK_EQ(size, res.view_bytes);
	CHECK_EQ(probe_path(tpath("own.jpg.heic"), &pr), 0);
	CHECK(pr.archived && pr.view_own_size && pr.view_why[0] && pr.view_bytes == size);
	buf_free(&j);
}

/* Padding is APP15 segments of NULs, 8 to 65537 bytes each, as few as hold
 * it and of near-equal sizes; a gap of 1 to 7 bytes cannot be padding. */
static void test_padding(void)
{
	static const size_t gaps[] = {0, 8, 9, 65537, 65538, 131074, 131075, 200000};
	const uint8_t segs[] = {0xFF, 0xFE, 0x00, 0x04, 'h', 'i'},
		      scan[] = {0xFF, 0xDB, 0xFF, 0xD9};
	uint8_t *out;
	size_t len;

	for (size_t g = 1; g < JPEG_PAD_MIN; g++) {
		CHECK(!jpeg_pad_ok(g));
		CHECK_EQ(jpeg_view_layout(segs, sizeof(segs), g, scan, sizeof(scan), 0, NULL, 0,
					  &out, &len),
			 -EINVAL);
	}
	for (size_t i = 0; i < sizeof(gaps) / sizeof(gaps[0]); i++) {
		size_t p = 2 + sizeof(segs), n = 0, lo = SIZE_MAX, hi = 0;
		CHECK(jpeg_pad_ok(gaps[i]));
		CHECK_EQ(jpeg_view_layout(segs, sizeof(segs), gaps[i], scan, sizeof(scan), 0,
					  (const uint8_t *)"TR", 2, &out, &len),
			 0);
		CHECK_EQ(len, 2 + sizeof(segs) + gaps[i] + sizeof(scan) + 2);
		CHECK(out[0] == 0xFF && out[1] == 0xD8 && !memcmp(out + 2, segs, sizeof(segs)));
		while (p < 2 + sizeof(segs) + gaps[i]) {
			size_t sl = 2 + ((size_t)out[p + 2] << 8 | out[p + 3]);
			CHECK(out[p] == 0xFF && out[p + 1] == 0xEF);
			for (size_t k = 4; k < sl; k++)
				CHECK(out[p + k] == 0);
			lo = sl < lo ? sl : lo, hi = sl > hi ? sl : hi;
			p += sl, n++;
		}
		CHECK_EQ(p, 2 + sizeof(segs) + gaps[i]);
		CHECK_EQ(n, (gaps[i] + 65536) / 65537);
		CHECK(!n || (lo >= 8 && hi <= 65537 && hi - lo <= 1));
		CHECK(!memcmp(out + p, scan, sizeof(scan)) && !memcmp(out + len - 2, "TR", 2));
		free(out);
	}
}

/* The thumbnail is the photo scaled by area, linked as its thumbnail:
 * 1-sample black and white stripes average to mid-grey (sampling the
 * nearest pixel, as libheif's own thumbnail does, gives one of the two),
 * the primary image stays the photo, and the sides fit the 320 box. */
static void test_thumbnail(void)
{
	static const struct jpeg_info ji = {.orientation = 6};
	struct heic_params hp = {.quality = 90, .preset = "ultrafast"};
	struct photo_planes pl = {0};
	struct heif_context *rd = NULL;
	struct heif_image_handle *h = NULL, *th = NULL;
	struct heif_image *img = NULL;
	heif_item_id id;
	struct buf heic;
	const uint8_t *y;
	int stride;
	double sum = 0, sq = 0;

	CHECK_EQ(photo_planes_alloc(&pl, 640, 480, TJSAMP_444), 0);
	for (int r = 0; r < 480; r++)
		for (int x = 0; x < 640; x++) {
			pl.plane[0][(size_t)r * pl.stride[0] + x] = x & 1 ? 235 : 20;
			pl.plane[1][(size_t)r * pl.stride[1] + x] = 128;
			pl.plane[2][(size_t)r * pl.stride[2] + x] = 128;
		}
	heic = encode_mem(&pl, &ji, &hp);
	photo_planes_release(&pl);
	CHECK_EQ(heic_open(heic.p, heic.len, 0, &rd, &h), 0);
	CHECK_EQ(heif_image_handle_get_width(h), 480); /* irot: a quarter turn */
	CHECK_EQ(heif_image_handle_get_height(h), 640);
	CHECK_EQ(heic_check_thumbnail(h, 640, 480), 0);
	CHECK_EQ(heif_image_handle_get_list_of_thumbnail_IDs(h, &id, 1), 1);
	CHECK_EQ(heif_image_handle_get_thumbnail(h, id, &th).code, heif_error_Ok);
	CHECK_EQ(heif_image_handle_get_width(th), 240); /* turned like the photo */
	CHECK_EQ(heif_image_handle_get_height(th), 320);
	CHECK_EQ(heif_decode_image(th, &img, heif_colorspace_YCbCr, heif_chroma_444, NULL).code,
		 heif_error_Ok);
	y = heif_image_get_plane_readonly(img, heif_channel_Y, &stride);
	for (int r = 0; r < 320; r++)
		for (int x = 0; x < 240; x++) {
			double v = y[(size_t)r * stride + x];
			sum += v;
			sq += v * v;
		}
	sum /= 240 * 320;
	sq = sqrt(sq / (240 * 320) - sum * sum);
	CHECK(fabs(sum - 127.5) < 4);
	CHECK(sq < 4);
	heif_image_release(img);
	heif_image_handle_release(th);
	heif_image_handle_release(h);
	heif_context_free(rd);
	buf_free(&heic);
}

/* Strips and slivers: a thumbnail only where both of its sides keep 2
 * samples, never a crash (a 1000 x 1 strip once divided by zero). */
static void test_thumbnail_slivers(void)
{
	static const int sz[][4] = {
	    /* width, height, subsampling, has a thumbnail */
	    {1000, 1, TJSAMP_420, 0}, {1, 1000, TJSAMP_444, 0}, {2000, 3, TJSAMP_422, 0},
	    {999, 3, TJSAMP_420, 0},  {999, 7, TJSAMP_GRAY, 1}, {3, 999, TJSAMP_420, 0},
	    {7, 999, TJSAMP_420, 1},
	};
	static const struct jpeg_info ji = {.orientation = 1};
	struct heic_params hp = {.quality = 60, .preset = "ultrafast"};

	for (size_t k = 0; k < sizeof(sz) / sizeof(sz[0]); k++) {
		struct photo_planes pl = {0};
		struct heif_context *rd = NULL;
		struct heif_image_handle *h = NULL;
		struct buf heic;

		CHECK_EQ(photo_planes_alloc(&pl, sz[k][0], sz[k][1], sz[k][2]), 0);
		for (int i = 0; i < pl.nplanes; i++)
			for (int y = 0; y < pl.ph[i]; y++)
				for (int x = 0; x < pl.pw[i]; x++)
					pl.plane[i][(size_t)y * pl.stride[i] + x] =
					    (uint8_t)(i ? 128 : (x * 7 + y * 13) & 0xFF);
		heic = encode_mem(&pl, &ji, &hp);
		CHECK_EQ(heic_open(heic.p, heic.len, 0, &rd, &h), 0);
		CHECK_EQ(heif_image_handle_get_number_of_thumbnails(h), sz[k][3]);
		CHECK_EQ(heic_check_thumbnail(h, sz[k][0], sz[k][1]), 0);
		heif_image_handle_release(h);
		heif_context_free(rd);
		buf_free(&heic);
		photo_planes_release(&pl);
	}
}

/* Odd sizes: archived and correct, or kept as not smaller (tiny files);
 * the codec path itself must round-trip them either way. */
static void test_odd_sizes(void)
{
	static const int sz[][3] = {{1, 1, TJSAMP_420},	  {161, 1, TJSAMP_420},
				    {33, 17, TJSAMP_420}, {33, 17, TJSAMP_422},
				    {1, 161, TJSAMP_444}, {17, 33, TJSAMP_GRAY}};

	for (size_t i = 0; i < sizeof(sz) / sizeof(sz[0]); i++) {
		struct buf j =
		    make_jpeg_pf(sz[i][0], sz[i][1], sz[i][2], 0, 100, TJPF_RGB, 40 + (unsigned)i);
		struct codec_result res;
		struct photo_planes orig, dec;
		struct jpeg_info ji;
		struct heic_params hp = {.quality = 90, .preset = TEST_PRESET};
		struct heif_context *ctx, *rctx;
		struct heif_image_handle *h;
		uint8_t *mem, *view;
		size_t ml, vl;
		char name[32];

		snprintf(name, sizeof(name), "odd%zu.jpg", i);
		CHECK_EQ(archive(&j, name, &res), 0);
		if (res.archived)
			check_archived(&j, name, &res, NULL, 0, 0);
		else
			CHECK(strstr(res.reason, "not smaller") != NULL);

		CHECK_EQ(jpeg_parse(j.p, j.len, &ji), 0);
		CHECK_EQ(y_plane(&j, &orig), 0);
		CHECK_EQ(heic_encode(&orig, &ji, &hp, &ctx), 0);
		CHECK_EQ(heic_write_mem(ctx, &mem, &ml), 0);
		CHECK_EQ(heic_open(mem, ml, 0, &rctx, &h), 0);
		CHECK_EQ(heic_decode_planes(h, orig.subsamp, orig.width, orig.height, 1, &dec), 0);
		CHECK(codec_ssim_plane(orig.plane[0], orig.stride[0], dec.plane[0], dec.stride[0],
				       orig.width, orig.height) >= 0.97);
		CHECK_EQ(jpeg_encode_view(&dec, 92, ji.segs, ji.segs_len, &view, &vl), 0);
		free(view);
		photo_planes_release(&dec);
		photo_planes_release(&orig);
		heif_image_handle_release(h);
		heif_context_free(rctx);
		heif_context_free(ctx);
		free(mem);
		jpeg_info_release(&ji);
		buf_free(&j);
	}
}

/* A photo large enough for the predicted path (a trial on a mosaic of
 * tiles, then one full-size encode): archived as any other; and when the
 * prediction is forced far too low, the full-size encode misses the floor
 * and a higher quality is encoded, still verified and exact. */
static void test_predicted(void)
{
	struct rich r;
	struct buf j = make_jpeg_pf(1760, 1320, TJSAMP_420, 0, 100, TJPF_RGB, 90), f;
	struct codec_result res, forced;

	make_rich(&r, 8);
	f = splice_segs(&j, &r.segs);
	CHECK_EQ(archive(&f, "predicted.jpg", &res), 0);
	if (!res.archived)
		fprintf(stderr, "  kept: %s\n", res.reason);
	check_archived(&f, "predicted.jpg", &res, &r.icc, 1, 1);

	photo_test_q_offset = -30;
	CHECK_EQ(archive(&f, "retry.jpg", &forced), 0);
	photo_test_q_offset = 0;
	if (!forced.archived)
		fprintf(stderr, "  kept: %s\n", forced.reason);
	check_archived(&f, "retry.jpg", &forced, &r.icc, 1, 1);
	/* the forced guess was 30 under one that passed: it was not kept */
	CHECK(forced.quality > res.quality - 30);
	buf_free(&j);
	buf_free(&f);
	rich_free(&r);

	/* the mosaic at the other subsamplings (chroma tiles, grayscale) */
	{
		static const int ss[] = {TJSAMP_422, TJSAMP_444, TJSAMP_GRAY};
		for (int i = 0; i < 3; i++) {
			char name[32];
			j = make_jpeg_pf(1704, 1240, ss[i], 0, 100, TJPF_RGB, 91 + (unsigned)i);
			snprintf(name, sizeof(name), "predicted%d.jpg", ss[i]);
			CHECK_EQ(archive(&j, name, &res), 0);
			if (!res.archived)
				fprintf(stderr, "  kept %s: %s\n", name, res.reason);
			check_archived(&j, name, &res, NULL, 0, 0);
			buf_free(&j);
		}
	}
}

/* Patch the first SOF of a JPEG. */
static uint8_t *find_sof(struct buf *j)
{
	for (size_t i = 2; i + 9 < j->len; i++)
		if (j->p[i] == 0xFF && j->p[i + 1] >= 0xC0 && j->p[i + 1] <= 0xC2)
			return j->p + i;
	abort();
}

static void expect_kept(const struct buf *j, const char *name, const char *why)
{
	struct codec_result res;

	CHECK_EQ(archive(j, name, &res), 0);
	if (res.archived || !strstr(res.reason, why))
		fprintf(stderr, "  %s: archived %d, reason \"%s\", expected \"%s\"\n", name,
			res.archived, res.reason, why);
	CHECK(res.archived == 0);
	CHECK(strstr(res.reason, why) != NULL);
	CHECK(res.suffix[0] == '\0');
}

/* What must be kept as is, each with its reason, without a crash. */
static void test_kept(void)
{
	struct buf base = make_jpeg(64, 48, TJSAMP_420, 0, 50), j = {0};
	uint8_t *sof;

	/* truncated */
	buf_add(&j, base.p, base.len * 6 / 10);
	expect_kept(&j, "trunc.jpg", "truncated");
	buf_free(&j);
	/* nothing after the first segments */
	buf_add(&j, base.p, 30);
	expect_kept(&j, "soi.jpg", "truncated");
	buf_free(&j);
	/* garbage where a marker should be */
	buf_add(&j, base.p, base.len);
	for (size_t i = 2; i + 1 < j.len; i++)
		if (j.p[i] == 0xFF && j.p[i + 1] == 0xC4) {
			j.p[i] = j.p[i + 1] = 0;
			break;
		}
	expect_kept(&j, "garbage.jpg", "corrupt");
	buf_free(&j);
	/* corrupt entropy data: a bogus marker inside the scan */
	buf_add(&j, base.p, base.len);
	j.p[j.len - 40] = 0xFF, j.p[j.len - 39] = 0xC4;
	{
		struct codec_result res;
		CHECK_EQ(archive(&j, "entropy.jpg", &res), 0);
		CHECK(res.archived == 0 && res.reason[0]);
	}
	buf_free(&j);
	/* bomb: a frame header claiming 65535x65535 over a tiny scan */
	buf_add(&j, base.p, base.len);
	sof = find_sof(&j);
	sof[5] = sof[6] = sof[7] = sof[8] = 0xFF;
	expect_kept(&j, "bomb.jpg", "pixel limit");
	buf_free(&j);
	/* panorama wider than one HEVC picture */
	buf_add(&j, base.p, base.len);
	sof = find_sof(&j);
	sof[5] = 0x03, sof[6] = 0xE8, sof[7] = 0x75, sof[8] = 0x30; /* 30000x1000 */
	expect_kept(&j, "pano.jpg", "too large for one HEVC picture");
	buf_free(&j);
	/* 12-bit, lossless */
	buf_add(&j, base.p, base.len);
	find_sof(&j)[4] = 12;
	expect_kept(&j, "12bit.jpg", "12-bit");
	buf_free(&j);
	buf_add(&j, base.p, base.len);
	find_sof(&j)[1] = 0xC3;
	expect_kept(&j, "lossless.jpg", "lossless");
	buf_free(&j);
	/* arithmetic coding, from TurboJPEG's environment switch */
	setenv("TJ_ARITHMETIC", "1", 1);
	j = make_jpeg(64, 48, TJSAMP_420, 0, 51);
	unsetenv("TJ_ARITHMETIC");
	expect_kept(&j, "arith.jpg", "arithmetic");
	buf_free(&j);
	/* CMYK (Adobe APP14, four components) */
	j = make_jpeg_pf(64, 48, TJSAMP_444, 0, 95, TJPF_CMYK, 52);
	expect_kept(&j, "cmyk.jpg", "4 components");
	buf_free(&j);
	/* 4:4:0 has no HEVC chroma format */
	j = make_jpeg(64, 48, TJSAMP_440, 0, 53);
	expect_kept(&j, "440.jpg", "4:4:0");
	buf_free(&j);
	/* not a JPEG at all, and an empty file */
	buf_add(&j, "\xFF\xD8\xFFhello", 8);
	{
		struct codec_result res;
		CHECK_EQ(archive(&j, "hello.jpg", &res), 0);
		CHECK(res.archived == 0 && res.reason[0]);
	}
	buf_free(&j);
	buf_free(&base);
}

/* Over the size limit, fixed quality, cancellation, max_pixels. */
static void test_options(void)
{
	struct buf j = make_jpeg(128, 96, TJSAMP_420, 0, 60);
	struct codec_result res;
	atomic_int stop = 1;
	struct codec_opts saved = opts;

	opts.photo_quality = 70;
	CHECK_EQ(archive(&j, "fixed.jpg", &res), 0);
	/* archived at exactly that quality (HEVC at q70 beats this q95 JPEG
	 * at SSIM 0.99; at q90 it is not smaller, and kept) */
	CHECK_EQ(res.archived, 1);
	CHECK_EQ(res.quality, 70);
	opts.photo_quality = 0;
	opts.max_pixels = 100;
	expect_kept(&j, "maxpx.jpg", "pixel limit");
	opts.max_pixels = 0;
	opts.cancel = &stop;
	CHECK_EQ(archive(&j, "cancel.jpg", &res), -ECANCELED);
	opts = saved;
	buf_free(&j);
}

/* A view render of something that is not an archived photo fails cleanly. */
static void test_render_errors(void)
{
	struct buf j = make_jpeg(64, 64, TJSAMP_420, 0, 70), hf = {0};
	struct photo_planes pl;
	struct jpeg_info ji;
	struct heic_params hp = {.quality = 50, .preset = TEST_PRESET};
	struct heif_context *ctx;
	uint64_t size = 0;

	write_path(tpath("plain.jpg"), &j);
	CHECK_EQ(render(tpath("plain.jpg"), tpath("plain.view"), &size), -EINVAL);
	CHECK_EQ(jpeg_parse(j.p, j.len, &ji), 0);
	CHECK_EQ(y_plane(&j, &pl), 0);
	CHECK_EQ(heic_encode(&pl, &ji, &hp, &ctx), 0);
	CHECK_EQ(heic_write_mem(ctx, &hf.p, &hf.len), 0);
	write_path(tpath("foreign.heic"), &hf);
	CHECK_EQ(render(tpath("foreign.heic"), tpath("foreign.view"), &size), -EINVAL);
	heif_context_free(ctx);
	photo_planes_release(&pl);
	jpeg_info_release(&ji);
	buf_free(&hf);
	buf_free(&j);
}

static int probe_path(const char *path, struct codec_result *res)
{
	int fd = open(path, O_RDONLY), ret;

	if (fd < 0)
		return -errno;
	memset(res, 0xAB, sizeof(*res)); /* the probe must set every field */
	ret = codec_probe_archived(fd, res);
	close(fd);
	return ret;
}

/* A handmade version 1 header item (no quality, no SSIMs, no segments). */
static struct buf v1_header(int width, int height, uint64_t orig)
{
	uint8_t h[56] = "HVFSJPEG";
	struct buf b = {0};

	h[8] = 1, h[9] = 90, h[10] = TJSAMP_420, h[11] = 1;
	h[14] = (uint8_t)(width >> 8), h[15] = (uint8_t)width;
	h[18] = (uint8_t)(height >> 8), h[19] = (uint8_t)height;
	for (int i = 0; i < 8; i++)
		h[20 + i] = (uint8_t)(orig >> (56 - 8 * i));
	buf_add(&b, h, sizeof(h));
	return b;
}

/* The index-rebuild probe: what an archived photo says about itself, from
 * its boxes and header item alone; anything else is not one. */
static void test_probe(void)
{
	struct rich r;
	struct buf j = make_jpeg_pf(640, 480, TJSAMP_420, 0, 100, TJPF_RGB, 9), f, heic, hf = {0};
	struct codec_result res, pr;
	struct photo_planes pl;
	struct jpeg_info ji;
	struct heic_params hp = {.quality = 50, .preset = TEST_PRESET};
	struct heif_context *ctx;
	struct stat st;
	uint64_t size = 0;
	uint8_t *mdat;
	int fd;

	make_rich(&r, 6);
	f = splice_segs(&j, &r.segs);
	CHECK_EQ(archive(&f, "probe.jpg", &res), 0);
	CHECK(res.archived);
	CHECK_EQ(probe_path(tpath("probe.jpg.heic"), &pr), 0);
	CHECK_EQ(pr.archived, 1);
	CHECK(strcmp(pr.suffix, ".heic") == 0 && pr.reason[0] == '\0');
	CHECK_EQ(pr.orig_bytes, f.len);
	CHECK_EQ(pr.stored_bytes, res.stored_bytes);
	CHECK_EQ(pr.view_bytes, res.view_bytes);
	CHECK_EQ(pr.quality, res.quality);
	CHECK(fabs(pr.ssim - res.ssim) < 2e-6 && fabs(pr.view_ssim - res.view_ssim) < 2e-6);

	/* no pixel is decoded: wrecking the coded picture changes nothing */
	heic = read_path(tpath("probe.jpg.heic"));
	mdat = memmem(heic.p, heic.len, "mdat", 4);
	CHECK(mdat && (size_t)(mdat - heic.p) + 2000 < heic.len);
	memset(mdat + 4, 0, 1000); /* the first coded image data */
	write_path(tpath("wrecked.heic"), &heic);
	CHECK_EQ(probe_path(tpath("wrecked.heic"), &pr), 0);
	CHECK_EQ(pr.archived, 1);
	CHECK_EQ(pr.view_bytes, res.view_bytes);

	/* a truncated one, the JPEG itself, an empty file, a foreign HEIC */
	heic.len = 100;
	write_path(tpath("trunc.heic"), &heic);
	CHECK_EQ(probe_path(tpath("trunc.heic"), &pr), 0);
	CHECK(pr.archived == 0 && pr.reason[0] && pr.suffix[0] == '\0');
	CHECK_EQ(probe_path(tpath("probe.jpg"), &pr), 0);
	CHECK(pr.archived == 0 && strstr(pr.reason, "not a HEIF"));
	heic.len = 0;
	write_path(tpath("empty.heic"), &heic);
	CHECK_EQ(probe_path(tpath("empty.heic"), &pr), 0);
	CHECK(pr.archived == 0 && pr.reason[0]);
	CHECK_EQ(jpeg_parse(j.p, j.len, &ji), 0);
	CHECK_EQ(y_plane(&j, &pl), 0);
	CHECK_EQ(heic_encode(&pl, &ji, &hp, &ctx), 0);
	CHECK_EQ(heic_write_mem(ctx, &hf.p, &hf.len), 0);
	write_path(tpath("foreign.heic"), &hf);
	CHECK_EQ(probe_path(tpath("foreign.heic"), &pr), 0);
	CHECK(pr.archived == 0 && strstr(pr.reason, "without a hevcfs header"));
	buf_free(&hf);

	/* a version 1 header: sizes, no quality or SSIMs; its view renders */
	{
		struct buf v1 = v1_header(640, 480, 12345);
		CHECK_EQ(
		    heic_add_item(ctx, "mime", "application/x-hevcfs-jpeg-header", v1.p, v1.len),
		    0);
		CHECK_EQ(heic_write_mem(ctx, &hf.p, &hf.len), 0);
		write_path(tpath("v1.heic"), &hf);
		CHECK_EQ(probe_path(tpath("v1.heic"), &pr), 0);
		CHECK(pr.archived == 1 && pr.orig_bytes == 12345 && pr.stored_bytes == hf.len);
		CHECK(pr.quality == 0 && pr.ssim == 0 && pr.view_ssim == 0 && pr.view_bytes == 0);
		CHECK_EQ(render(tpath("v1.heic"), tpath("v1.view.jpg"), &size), 0);
		CHECK(size > 0);
		buf_free(&v1);
		buf_free(&hf);
	}
	heif_context_free(ctx);

	/* a damaged header item is not an archived photo, an I/O error is an error */
	CHECK_EQ(heic_encode(&pl, &ji, &hp, &ctx), 0);
	{
		struct buf bad = v1_header(640, 480, 1);
		bad.p[8] = 9;
		CHECK_EQ(
		    heic_add_item(ctx, "mime", "application/x-hevcfs-jpeg-header", bad.p, bad.len),
		    0);
		buf_free(&bad);
	}
	CHECK_EQ(heic_write_mem(ctx, &hf.p, &hf.len), 0);
	write_path(tpath("badhdr.heic"), &hf);
	CHECK_EQ(probe_path(tpath("badhdr.heic"), &pr), 0);
	CHECK(pr.archived == 0 && strstr(pr.reason, "damaged"));
	heif_context_free(ctx);
	buf_free(&hf);

	/* a header naming an Exif source the file lacks (found by fuzz_view:
	 * pointer arithmetic on NULL) renders nothing, cleanly */
	CHECK_EQ(heic_encode(&pl, &ji, &hp, &ctx), 0);
	{
		struct buf nox = v1_header(640, 480, 1);
		nox.p[39] = 10; /* Exif source length */
		CHECK_EQ(
		    heic_add_item(ctx, "mime", "application/x-hevcfs-jpeg-header", nox.p, nox.len),
		    0);
		buf_free(&nox);
	}
	CHECK_EQ(heic_write_mem(ctx, &hf.p, &hf.len), 0);
	write_path(tpath("noexif.heic"), &hf);
	CHECK_EQ(render(tpath("noexif.heic"), tpath("noexif.view"), &size), -EINVAL);
	heif_context_free(ctx);
	fd = open(tpath("probe.jpg.heic"), O_WRONLY);
	CHECK(fd >= 0 && fstat(fd, &st) == 0);
	CHECK_EQ(codec_probe_archived(fd, &pr), -EBADF);
	close(fd);

	photo_planes_release(&pl);
	jpeg_info_release(&ji);
	buf_free(&hf);
	buf_free(&heic);
	buf_free(&f);
	buf_free(&j);
	rich_free(&r);
}

/* ---- trailers ---- */

/* Append an APP1 XMP segment holding text. */
static void add_xmp_text(struct buf *segs, const char *text)
{
	static const char ns[] = "http://ns.adobe.com/xap/1.0/";
	struct buf b = {0};

	buf_add(&b, ns, sizeof(ns));
	buf_add(&b, text, strlen(text));
	add_seg(segs, 0xE1, b.p, b.len);
	buf_free(&b);
}

/* A small real MP4 (one second of testsrc, MPEG-4 part 2) from ffmpeg, or
 * when ffmpeg is missing a hand-made one: an ftyp box and an mdat. */
static struct buf make_mp4(void)
{
	char cmd[512];
	struct buf m = {0};

	snprintf(cmd, sizeof(cmd),
		 "ffmpeg -nostdin -hide_banner -loglevel error -f lavfi -i "
		 "testsrc=size=64x48:rate=10 -t 1 -c:v mpeg4 -y %s",
		 tpath("clip.mp4"));
	if (system(cmd) == 0)
		m = read_path(tpath("clip.mp4"));
	if (!m.p || m.len < 16) {
		static const uint8_t ftyp[] = {0, 0, 0, 24, 'f', 't', 'y', 'p', 'i', 's', 'o', 'm',
					       0, 0, 2, 0,  'i', 's', 'o', 'm', 'm', 'p', '4', '1'};
		uint8_t mdat[8 + 1000] = {0, 0, 0x03, 0xF0, 'm', 'd', 'a', 't'};
		fprintf(stderr, "  (ffmpeg missing: a hand-made MP4 stands in)\n");
		buf_free(&m);
		for (int i = 8; i < (int)sizeof(mdat); i++)
			mdat[i] = (uint8_t)(i * 31);
		buf_add(&m, ftyp, sizeof(ftyp));
		buf_add(&m, mdat, sizeof(mdat));
	}
	return m;
}

/* A photo with segs (may be empty) and trailer after its EOI. */
static struct buf with_trailer(const struct buf *segs, const uint8_t *tr, size_t n, unsigned seed)
{
	struct buf j = make_jpeg_pf(480, 360, TJSAMP_420, 0, 100, TJPF_RGB, seed), f;

	f = splice_segs(&j, segs);
	if (n)
		buf_add(&f, tr, n);
	buf_free(&j);
	return f;
}

/* Archive f and check what every photo with a trailer must satisfy: the
 * carries bits, the view's layout and trailer (check_archived), the probe's
 * carries, the header's trailer fields. */
static void archive_trailer(const struct buf *f, const char *name, uint32_t carries,
			    struct codec_result *res)
{
	struct codec_result pr;
	char heic[256];

	CHECK_EQ(archive(f, name, res), 0);
	if (!res->archived)
		fprintf(stderr, "  %s kept: %s\n", name, res->reason);
	CHECK(res->archived);
	CHECK_EQ(res->carries, carries);
	snprintf(heic, sizeof(heic), "%s.heic", tpath(name));
	CHECK_EQ(probe_path(heic, &pr), 0);
	CHECK_EQ(pr.carries, carries);
	CHECK(!memcmp(pr.orig_sum, res->orig_sum, SUM_LEN) &&
	      !memcmp(pr.scan_sum, res->scan_sum, SUM_LEN));
}

/* The last top-level box of a HEIF file: its type and payload. */
static const uint8_t *last_box(const struct buf *b, char type[5], size_t *len)
{
	size_t p = 0, last = 0;

	while (p + 8 <= b->len) {
		size_t n = (size_t)b->p[p] << 24 | (size_t)b->p[p + 1] << 16 |
			   (size_t)b->p[p + 2] << 8 | b->p[p + 3];
		CHECK(n >= 8 && n <= b->len - p);
		last = p;
		p += n;
	}
	CHECK_EQ(p, b->len);
	memcpy(type, b->p + last + 4, 4);
	type[4] = '\0';
	*len = b->len - last - 8;
	return b->p + last + 8;
}

/* The HEIC's own XMP item (malloc'd, NUL-terminated). */
static char *heic_xmp_item(const struct buf *heic)
{
	struct heif_context *ctx;
	struct heif_image_handle *h;
	uint8_t *x;
	size_t n;
	char *s;

	CHECK_EQ(heic_open(heic->p, heic->len, 0, &ctx, &h), 0);
	CHECK_EQ(heic_get_item(h, "mime", "application/rdf+xml", &x, &n), 0);
	heif_image_handle_release(h);
	heif_context_free(ctx);
	s = malloc(n + 1);
	memcpy(s, x, n);
	s[n] = '\0';
	free(x);
	return s;
}

/*
 * A Google motion photo (Motion Photo 1.0: XMP Container:Directory naming
 * the MP4 of Length N that ends the file) becomes a HEIC motion photo: the
 * MP4 in a top-level mpvd box after all the others, the HEIC's XMP naming
 * the image/heic primary and the video/mp4 item with its Length and
 * Padding 8; its view is the original byte for byte outside the image data
 * (XMP segment included), so the video is the view's last N bytes again.
 * The older MicroVideo form is recognised too.
 */
static void test_motion_photo(void)
{
	struct buf mp4 = make_mp4(), segs = {0}, f, heic;
	struct codec_result res;
	char xmp[2048], type[5], want[64], *x;
	const uint8_t *payload;
	size_t plen;

	snprintf(xmp, sizeof(xmp),
		 "<x:xmpmeta xmlns:x=\"adobe:ns:meta/\"><rdf:RDF xmlns:rdf=\"http://www.w3.org/"
		 "1999/02/22-rdf-syntax-ns#\"><rdf:Description rdf:about=\"\" "
		 "xmlns:GCamera=\"http://ns.google.com/photos/1.0/camera/\" "
		 "xmlns:Container=\"http://ns.google.com/photos/1.0/container/\" "
		 "xmlns:Item=\"http://ns.google.com/photos/1.0/container/item/\" "
		 "GCamera:MotionPhoto=\"1\" GCamera:MotionPhotoVersion=\"1\" "
		 "GCamera:MotionPhotoPresentationTimestampUs=\"500000\"><Container:Directory>"
		 "<rdf:Seq><rdf:li rdf:parseType=\"Resource\"><Container:Item "
		 "Item:Mime=\"image/jpeg\" Item:Semantic=\"Primary\" Item:Length=\"0\" "
		 "Item:Padding=\"0\"/></rdf:li><rdf:li rdf:parseType=\"Resource\">"
		 "<Container:Item Item:Mime=\"video/mp4\" Item:Semantic=\"MotionPhoto\" "
		 "Item:Length=\"%zu\" Item:Padding=\"0\"/></rdf:li></rdf:Seq>"
		 "</Container:Directory></rdf:Description></rdf:RDF></x:xmpmeta>",
		 mp4.len);
	add_exif(&segs, 1);
	add_xmp_text(&segs, xmp);
	f = with_trailer(&segs, mp4.p, mp4.len, 101);
	archive_trailer(&f, "motion.jpg", CODEC_CARRIES_MOTION, &res);
	check_archived(&f, "motion.jpg", &res, NULL, 1, 0);
	heic = read_path(tpath("motion.jpg.heic"));
	CHECK(heic.len == res.stored_bytes && !memcmp(heic.p, "\0\0\0", 3));
	payload = last_box(&heic, type, &plen);
	CHECK(strcmp(type, "mpvd") == 0);
	CHECK(plen == mp4.len && memcmp(payload, mp4.p, plen) == 0);
	x = heic_xmp_item(&heic);
	snprintf(want, sizeof(want), "Item:Length=\"%zu\" Item:Padding=\"8\"", mp4.len);
	CHECK(strstr(x, "Item:Mime=\"image/heic\" Item:Semantic=\"Primary\""));
	CHECK(strstr(x, "Item:Mime=\"video/mp4\" Item:Semantic=\"MotionPhoto\""));
	CHECK(strstr(x, want) && strstr(x, "GCamera:MotionPhoto=\"1\""));
	CHECK(!strstr(x, "image/jpeg"));
	CHECK(strstr(x, "MotionPhotoPresentationTimestampUs=\"500000\"")); /* kept */
	free(x);
	buf_free(&heic);
	buf_free(&f);
	buf_free(&segs);

	/* MicroVideo: the offset of the video from the end */
	snprintf(xmp, sizeof(xmp),
		 "<x:xmpmeta xmlns:x=\"adobe:ns:meta/\"><rdf:RDF xmlns:rdf=\"http://www.w3.org/"
		 "1999/02/22-rdf-syntax-ns#\"><rdf:Description rdf:about=\"\" "
		 "xmlns:GCamera=\"http://ns.google.com/photos/1.0/camera/\" "
		 "GCamera:MicroVideo=\"1\" GCamera:MicroVideoVersion=\"1\" "
		 "GCamera:MicroVideoOffset=\"%zu\" "
		 "GCamera:MicroVideoPresentationTimestampUs=\"250000\"/></rdf:RDF></x:xmpmeta>",
		 mp4.len);
	add_xmp_text(&segs, xmp);
	f = with_trailer(&segs, mp4.p, mp4.len, 102);
	archive_trailer(&f, "micro.jpg", CODEC_CARRIES_MOTION, &res);
	check_archived(&f, "micro.jpg", &res, NULL, 0, 0);
	heic = read_path(tpath("micro.jpg.heic"));
	payload = last_box(&heic, type, &plen);
	CHECK(strcmp(type, "mpvd") == 0 && plen == mp4.len && !memcmp(payload, mp4.p, plen));
	x = heic_xmp_item(&heic);
	CHECK(strstr(x, want) && !strstr(x, "MicroVideoOffset") &&
	      !strstr(x, "GCamera:MicroVideo=\""));
	free(x);
	buf_free(&heic);
	buf_free(&f);
	buf_free(&segs);
	buf_free(&mp4);
}

/* An MPF APP2 segment (CIPA DC-007, big-endian): an MP index IFD with two
 * entries, the primary (offset 0) and one image at file offset second_at,
 * given that the segment starts at seg_at. */
static void add_mpf(struct buf *segs, size_t seg_at, size_t primary_len, size_t second_at,
		    size_t second_len)
{
	uint8_t p[4 + 82] = "MPF";
	uint8_t *t = p + 4;
	size_t tiff_at = seg_at + 4 + 4;
	uint32_t v[][3] = {{0xB000, 7, 4}, {0xB001, 4, 1}, {0xB002, 7, 32}};

	memcpy(t, "MM\0*\0\0\0\x08\0\x03", 10);
	for (int i = 0; i < 3; i++) {
		uint8_t *e = t + 10 + 12 * i;
		e[0] = (uint8_t)(v[i][0] >> 8), e[1] = (uint8_t)v[i][0];
		e[2] = 0, e[3] = (uint8_t)v[i][1];
		e[4] = e[5] = e[6] = 0, e[7] = (uint8_t)v[i][2];
	}
	memcpy(t + 10 + 8, "0100", 4); /* MPFVersion */
	t[10 + 12 + 11] = 2;	       /* NumberOfImages */
	t[10 + 24 + 11] = 50;	       /* MP entries at 50 */
	/* 46..49: no next IFD; entries at 50 */
	{
		uint8_t *e = t + 50;
		uint32_t vals[] = {0x20030000,		 (uint32_t)primary_len,		 0, 0,
				   (uint32_t)second_len, (uint32_t)(second_at - tiff_at)};
		for (int i = 0; i < 3; i++) {
			for (int k = 0; k < 4; k++) {
				e[4 * i + k] = (uint8_t)(vals[i] >> (24 - 8 * k));
				e[16 + 4 * i + k] = (uint8_t)(vals[3 + i] >> (24 - 8 * k));
			}
		}
	}
	add_seg(segs, 0xE2, p, sizeof(p));
}

/* A photo with an MPF index pointing to a secondary JPEG stored after its
 * EOI (hdrgm: its XMP names an Ultra HDR gain map). */
static struct buf make_mpf_photo(int hdrgm, unsigned seed)
{
	struct buf j = make_jpeg_pf(480, 360, TJSAMP_420, 0, 100, TJPF_RGB, seed);
	struct buf second = make_jpeg_pf(120, 90, TJSAMP_420, 0, 90, TJPF_RGB, seed + 1);
	struct buf segs = {0}, f;
	size_t mpf_at, total;

	if (hdrgm)
		add_xmp_text(&segs, "<x:xmpmeta xmlns:x=\"adobe:ns:meta/\"><rdf:RDF "
				    "xmlns:rdf=\"http://www.w3.org/1999/02/22-rdf-syntax-ns#\">"
				    "<rdf:Description rdf:about=\"\" xmlns:hdrgm=\"http://ns.adobe."
				    "com/hdr-gain-map/1.0/\" hdrgm:Version=\"1.0\"/></rdf:RDF>"
				    "</x:xmpmeta>");
	mpf_at = 2 + segs.len;
	total = j.len + segs.len + 4 + 86; /* the photo with its segments */
	add_mpf(&segs, mpf_at, total, total, second.len);
	f = splice_segs(&j, &segs);
	CHECK_EQ(f.len, total);
	buf_add(&f, second.p, second.len);
	buf_free(&segs);
	buf_free(&j);
	buf_free(&second);
	return f;
}

/* Follow a view's MPF index to its second image: it must be a JPEG of the
 * original's bytes there. */
static void check_mpf_second(const struct buf *orig, const struct buf *v)
{
	uint8_t *m = memmem(v->p, 4096, "MPF\0MM", 6);
	size_t tiff, off, len;

	CHECK(m != NULL);
	tiff = (size_t)(m - v->p) + 4;
	len = (size_t)m[4 + 50 + 16 + 4] << 24 | (size_t)m[4 + 50 + 16 + 5] << 16 |
	      (size_t)m[4 + 50 + 16 + 6] << 8 | m[4 + 50 + 16 + 7];
	off = (size_t)m[4 + 50 + 16 + 8] << 24 | (size_t)m[4 + 50 + 16 + 9] << 16 |
	      (size_t)m[4 + 50 + 16 + 10] << 8 | m[4 + 50 + 16 + 11];
	CHECK(tiff + off + len == v->len && v->p[tiff + off] == 0xFF &&
	      v->p[tiff + off + 1] == 0xD8);
	CHECK(!memcmp(v->p + tiff + off, orig->p + tiff + off, len));
}

/* MPF images and an Ultra HDR gain map, a Samsung SEF trailer, trailing
 * zeros and one stray byte: each archived, its trailer in the trailer item
 * verbatim, classified, and back in its view at the same offsets (an MPF
 * reader finds the second image in the view). */
static void test_trailers(void)
{
	struct buf f, v, none = {0}, heic;
	struct codec_result res;
	uint8_t sef[300], zeros[4096] = {0};

	f = make_mpf_photo(0, 110);
	archive_trailer(&f, "mpf.jpg", CODEC_CARRIES_MPF, &res);
	check_archived(&f, "mpf.jpg", &res, NULL, 0, 0);
	v = read_path(tpath("mpf.jpg.view.jpg"));
	check_mpf_second(&f, &v);
	buf_free(&v);
	/* the trailer item holds the trailer, verbatim */
	{
		struct heif_context *ctx;
		struct heif_image_handle *h;
		uint8_t *t;
		size_t tl, od, oe;
		heic = read_path(tpath("mpf.jpg.heic"));
		CHECK_EQ(heic_open(heic.p, heic.len, 0, &ctx, &h), 0);
		CHECK_EQ(heic_get_item(h, "mime", "application/x-hevcfs-jpeg-trailer", &t, &tl), 0);
		jpeg_bounds(&f, &od, &oe);
		CHECK(tl == f.len - oe && !memcmp(t, f.p + oe, tl));
		free(t);
		heif_image_handle_release(h);
		heif_context_free(ctx);
		buf_free(&heic);
	}
	buf_free(&f);

	f = make_mpf_photo(1, 120);
	archive_trailer(&f, "ultrahdr.jpg", CODEC_CARRIES_GAIN_MAP, &res);
	check_archived(&f, "ultrahdr.jpg", &res, NULL, 0, 0);
	v = read_path(tpath("ultrahdr.jpg.view.jpg"));
	check_mpf_second(&f, &v);
	buf_free(&v);
	buf_free(&f);

	/* Samsung: SEF data, its directory, the directory's size, "SEFT" */
	for (size_t i = 0; i < sizeof(sef); i++)
		sef[i] = (uint8_t)(i * 13 + 7);
	memcpy(sef + 200, "SEFH", 4);
	memcpy(sef + sizeof(sef) - 8, "\x5C\0\0\0SEFT", 8);
	f = with_trailer(&none, sef, sizeof(sef), 130);
	archive_trailer(&f, "sef.jpg", CODEC_CARRIES_SEF, &res);
	check_archived(&f, "sef.jpg", &res, NULL, 0, 0);
	buf_free(&f);

	f = with_trailer(&none, zeros, sizeof(zeros), 131);
	archive_trailer(&f, "zeros.jpg", CODEC_CARRIES_PADDING, &res);
	check_archived(&f, "zeros.jpg", &res, NULL, 0, 0);
	buf_free(&f);

	f = with_trailer(&none, (const uint8_t *)"\n", 1, 132);
	archive_trailer(&f, "stray.jpg", CODEC_CARRIES_OTHER, &res);
	check_archived(&f, "stray.jpg", &res, NULL, 0, 0);
	buf_free(&f);

	/* an MP4 no XMP names: a motion video, kept in the trailer item (the
	 * HEIC claims no motion photo) */
	{
		struct buf mp4 = make_mp4();
		char type[5];
		size_t plen;
		f = with_trailer(&none, mp4.p, mp4.len, 134);
		archive_trailer(&f, "bare.jpg", CODEC_CARRIES_MOTION, &res);
		check_archived(&f, "bare.jpg", &res, NULL, 0, 0);
		heic = read_path(tpath("bare.jpg.heic"));
		last_box(&heic, type, &plen);
		CHECK(strcmp(type, "mpvd") != 0);
		CHECK(memmem(heic.p, heic.len, mp4.p, mp4.len) != NULL);
		buf_free(&heic);
		buf_free(&mp4);
		buf_free(&f);
	}

	/* nothing after EOI: nothing carried */
	f = with_trailer(&none, NULL, 0, 133);
	archive_trailer(&f, "plain.jpg", 0, &res);
	buf_free(&f);
}

static int embedded_path(const char *path, struct codec_embedded *e, int *ok)
{
	int fd = open(path, O_RDONLY), ret;

	if (fd < 0)
		return -errno;
	ret = codec_embedded_sums(fd, e);
	if (!ret && ok)
		ret = e->has ? codec_check_self_sum(fd, e, ok) : -EINVAL;
	close(fd);
	return ret;
}

/* The digests: the original's, the view's image data (what TurboJPEG
 * regenerates), and the stored file's own, which it carries and which
 * fails on any changed byte; other files carry none. */
static void test_digests(void)
{
	struct rich r;
	struct buf j = make_jpeg_pf(480, 360, TJSAMP_420, 0, 100, TJPF_RGB, 140), f, v, heic, z;
	struct codec_result res;
	struct codec_embedded e;
	uint8_t sum[SUM_LEN];
	size_t vd, ve, fill;
	uint8_t *mdat;
	int ok = -1;

	make_rich(&r, 3);
	f = splice_segs(&j, &r.segs);
	CHECK_EQ(archive(&f, "sums.jpg", &res), 0);
	CHECK(res.archived);
	CHECK_EQ(sum_buf(f.p, f.len, sum), 0);
	CHECK(!memcmp(sum, res.orig_sum, SUM_LEN));
	v = read_path(tpath("sums.jpg.view.jpg"));
	jpeg_bounds(&v, &vd, &ve);
	/* the image data without the fill before its EOI */
	for (fill = 0; v.p[ve - 3 - fill] == 0xFF; fill++)
		;
	{
		struct buf d = {0};
		buf_add(&d, v.p + vd, ve - vd - 2 - fill);
		buf_add(&d, "\xFF\xD9", 2);
		CHECK_EQ(sum_buf(d.p, d.len, sum), 0);
		buf_free(&d);
	}
	CHECK(!memcmp(sum, res.scan_sum, SUM_LEN));

	CHECK_EQ(embedded_path(tpath("sums.jpg.heic"), &e, &ok), 0);
	CHECK(e.has == 1 && ok == 1 && e.orig_bytes == f.len);
	CHECK(!memcmp(e.orig_sum, res.orig_sum, SUM_LEN));
	heic = read_path(tpath("sums.jpg.heic"));
	CHECK(e.self_off + SUM_LEN <= heic.len);
	CHECK(!memcmp(heic.p + e.self_off, e.self_sum, SUM_LEN));
	/* the same digest, computed here */
	z = (struct buf){0};
	buf_add(&z, heic.p, heic.len);
	memset(z.p + e.self_off, 0, SUM_LEN);
	CHECK_EQ(sum_buf(z.p, z.len, sum), 0);
	CHECK(!memcmp(sum, e.self_sum, SUM_LEN));
	buf_free(&z);

	/* one flipped bit in the coded picture, then in the digest itself */
	mdat = memmem(heic.p, heic.len, "mdat", 4);
	CHECK(mdat != NULL);
	mdat[500] ^= 1;
	write_path(tpath("sums.bad.heic"), &heic);
	CHECK_EQ(embedded_path(tpath("sums.bad.heic"), &e, &ok), 0);
	CHECK(e.has == 1 && ok == 0);
	mdat[500] ^= 1;
	heic.p[e.self_off + 7] ^= 0x80;
	write_path(tpath("sums.bad.heic"), &heic);
	CHECK_EQ(embedded_path(tpath("sums.bad.heic"), &e, &ok), 0);
	CHECK(e.has == 1 && ok == 0);

	/* a JPEG, an empty file, a header of version 3: none */
	CHECK_EQ(embedded_path(tpath("sums.jpg"), &e, NULL), 0);
	CHECK_EQ(e.has, 0);
	heic.len = 0;
	write_path(tpath("sums.empty"), &heic);
	CHECK_EQ(embedded_path(tpath("sums.empty"), &e, NULL), 0);
	CHECK_EQ(e.has, 0);
	CHECK_EQ(embedded_path(tpath("versions.v3.heic"), &e, NULL), 0);
	CHECK_EQ(e.has, 0);
	buf_free(&heic);
	buf_free(&v);
	buf_free(&f);
	buf_free(&j);
	rich_free(&r);
}

/* Sniff the bytes of b (written to a file) and archive them. */
static enum codec_kind sniff_buf(const struct buf *b, const char **format, struct codec_result *res)
{
	int fd;
	enum codec_kind k;

	write_path(tpath("sniff.bin"), b);
	fd = open(tpath("sniff.bin"), O_RDONLY);
	CHECK(fd >= 0);
	k = codec_sniff_format(fd, format);
	CHECK_EQ(codec_sniff(fd), k);
	if (res && k != CODEC_KIND_VIDEO && k != CODEC_KIND_JPEG)
		CHECK_EQ(codec_archive(fd, tpath("sniff.out"), NULL, &opts, res), 0);
	close(fd);
	return k;
}

/* An ftyp box: major brand, then compatible brands (4 characters each). */
static struct buf ftyp(const char *major, const char *compat)
{
	struct buf b = {0};
	size_t n = 16 + strlen(compat);
	uint8_t h[8] = {0, 0, 0, (uint8_t)n, 'f', 't', 'y', 'p'};

	buf_add(&b, h, 8);
	buf_add(&b, major, 4);
	buf_add(&b, "\0\0\0\0", 4);
	buf_add(&b, compat, strlen(compat));
	buf_add(&b, "\0\0\0\x10mdat\0\0\0\0\0\0\0\0", 16);
	return b;
}

/* A little-endian TIFF whose first IFD has the entries given (tag, type,
 * count, value; an ASCII value longer than 4 bytes is placed after the
 * IFD). */
static struct buf tiff(const char *magic8, const uint32_t (*e)[4], int n, const char *make)
{
	uint8_t t[512] = {0};
	size_t strings = 8 + 2 + 12 * (size_t)n + 4;
	struct buf b = {0};

	memcpy(t, magic8, 8);
	le16(t + 8, (unsigned)n);
	for (int i = 0; i < n; i++) {
		uint32_t v = e[i][3];
		if (e[i][0] == 0x010F) {
			memcpy(t + strings, make, strlen(make) + 1);
			v = (uint32_t)strings;
		}
		ifd_entry(t + 10 + 12 * i, e[i][0], e[i][1], e[i][2], v);
	}
	buf_add(&b, t, sizeof(t));
	return b;
}

/* Content says what a file is: HEIF and AVIF stills and sequences (never
 * videos), camera raws by their signatures (never their names), movies
 * stay videos; codec_archive keeps HEIF and raws with their reasons. */
static void test_sniff(void)
{
	static const struct {
		const char *major, *compat, *format;
	} heifs[] = {
	    {"heic", "mif1heic", "HEIC"},     {"mif1", "mif1heic", "HEIC"},
	    {"heix", "mif1heix", "HEIC"},     {"msf1", "msf1hevc", "HEIC"},
	    {"avif", "mif1avifmiaf", "AVIF"}, {"avis", "msf1avis", "AVIF"},
	    {"mif1", "mif1miaf", "HEIF"},     {"MiHB", "mif1heicmiaf", "HEIC"},
	};
	static const struct {
		const char *major, *compat;
	} movies[] = {{"isom", "isomiso2avc1mp41"},
		      {"mp42", "mp42isom"},
		      {"qt  ", "qt  "},
		      {"isom", "isommif1"}};
	const uint32_t dng[][4] = {{0x00FE, 4, 1, 1}, {0xC612, 1, 4, 0x00000401}};
	const uint32_t nef[][4] = {{0x00FE, 4, 1, 1}, {0x010F, 2, 18, 0}, {0x014A, 4, 1, 300}};
	const uint32_t arw[][4] = {{0x010F, 2, 5, 0}, {0xC634, 1, 4, 0}};
	const uint32_t plain[][4] = {{0x0100, 3, 1, 64}, {0x010F, 2, 18, 0}};
	struct codec_result res;
	const char *fmt;
	struct buf b;
	char cmd[512];

	for (size_t i = 0; i < sizeof(heifs) / sizeof(heifs[0]); i++) {
		b = ftyp(heifs[i].major, heifs[i].compat);
		CHECK_EQ(sniff_buf(&b, &fmt, &res), CODEC_KIND_HEIF);
		CHECK(strcmp(fmt, heifs[i].format) == 0);
		CHECK(!res.archived && strstr(res.reason, "already ") &&
		      strstr(res.reason, heifs[i].format));
		buf_free(&b);
	}
	for (size_t i = 0; i < sizeof(movies) / sizeof(movies[0]); i++) {
		b = ftyp(movies[i].major, movies[i].compat);
		CHECK_EQ(sniff_buf(&b, &fmt, NULL), CODEC_KIND_VIDEO);
		buf_free(&b);
	}
	/* raws */
	b = ftyp("crx ", "crx isom");
	CHECK_EQ(sniff_buf(&b, &fmt, &res), CODEC_KIND_RAW);
	CHECK(!strcmp(fmt, "CR3") && strstr(res.reason, "camera raw (CR3)"));
	buf_free(&b);
	buf_add(&b, "FUJIFILMCCD-RAW 0201FF393101", 28);
	CHECK_EQ(sniff_buf(&b, &fmt, &res), CODEC_KIND_RAW);
	CHECK(!strcmp(fmt, "RAF") && strstr(res.reason, "camera raw (RAF)"));
	buf_free(&b);
	b = tiff("IIRO\x08\0\0\0", plain, 0, "");
	CHECK_EQ(sniff_buf(&b, &fmt, NULL), CODEC_KIND_RAW);
	CHECK(!strcmp(fmt, "ORF"));
	buf_free(&b);
	b = tiff("II*\0\x10\0\0\0", plain, 0, "");
	memcpy(b.p + 8, "CR\x02\0", 4);
	CHECK_EQ(sniff_buf(&b, &fmt, NULL), CODEC_KIND_RAW);
	CHECK(!strcmp(fmt, "CR2"));
	buf_free(&b);
	b = tiff("II*\0\x08\0\0\0", dng, 2, "");
	CHECK_EQ(sniff_buf(&b, &fmt, &res), CODEC_KIND_RAW);
	CHECK(!strcmp(fmt, "DNG") && strstr(res.reason, "camera raw (DNG)"));
	buf_free(&b);
	b = tiff("II*\0\x08\0\0\0", nef, 3, "NIKON CORPORATION");
	CHECK_EQ(sniff_buf(&b, &fmt, NULL), CODEC_KIND_RAW);
	CHECK(!strcmp(fmt, "NEF"));
	buf_free(&b);
	b = tiff("II*\0\x08\0\0\0", arw, 2, "SONY");
	CHECK_EQ(sniff_buf(&b, &fmt, NULL), CODEC_KIND_RAW);
	CHECK(!strcmp(fmt, "ARW"));
	buf_free(&b);
	/* a scanner's TIFF from a camera maker is no raw */
	b = tiff("II*\0\x08\0\0\0", plain, 2, "NIKON CORPORATION");
	CHECK_EQ(sniff_buf(&b, &fmt, &res), CODEC_KIND_OTHER);
	CHECK(!res.archived && strstr(res.reason, "not a photo or video"));
	buf_free(&b);

	/* real files: movies from ffmpeg, HEIC from the corpus */
	for (int i = 0; i < 2; i++) {
		snprintf(cmd, sizeof(cmd),
			 "ffmpeg -nostdin -hide_banner -loglevel error -f lavfi -i "
			 "testsrc=size=64x48:rate=10 -t 0.5 -c:v mpeg4 -y %s",
			 tpath(i ? "m.mov" : "m.mp4"));
		if (system(cmd) != 0)
			continue;
		b = read_path(tpath(i ? "m.mov" : "m.mp4"));
		CHECK_EQ(sniff_buf(&b, &fmt, NULL), CODEC_KIND_VIDEO);
		buf_free(&b);
	}
	{
		static const char *const heic[] = {"IMG_5195.HEIC", "mobile/iphone_13_pro_max.HEIC",
						   "mobile/HMD_Nokia_8.3_5G.heif",
						   "samplefilehub.heif"};
		char path[256];
		for (size_t i = 0; i < sizeof(heic) / sizeof(heic[0]); i++) {
			snprintf(path, sizeof(path), "../shared/corpus/exif-samples/heic/%s",
				 heic[i]);
			b = read_path(path);
			if (!b.p) {
				fprintf(stderr, "  corpus %s absent: not sniffed\n", path);
				continue;
			}
			CHECK_EQ(sniff_buf(&b, &fmt, &res), CODEC_KIND_HEIF);
			CHECK(!res.archived && strstr(res.reason, "already HEI"));
			buf_free(&b);
		}
	}
}

static int map_path(const char *path, struct codec_view_map *m)
{
	int fd = open(path, O_RDONLY), ret;

	if (fd < 0)
		return -errno;
	ret = codec_view_map(fd, m);
	close(fd);
	return ret;
}

/* Where the entropy-coded data of the view v begins: past the SOS segment
 * of the image data that starts at vd. */
static size_t data_start(const struct buf *v, size_t vd)
{
	long off = jpeg_scan_data_off(v->p + vd, v->len - vd);

	return off < 0 ? 0 : vd + (size_t)off;
}

/* The map of name's archived view against the rendered view: the head is
 * the view's bytes before its entropy-coded data, the end its fill and EOI,
 * the tail (when contiguous) the stored file's bytes at tail_src. Returns
 * tail_len. */
static uint64_t check_map(const char *name)
{
	char heic_path[256], view_path[256];
	struct codec_view_map m;
	struct buf heic, v;
	size_t vd, ve;
	uint64_t tail;

	snprintf(heic_path, sizeof(heic_path), "%s.heic", tpath(name));
	snprintf(view_path, sizeof(view_path), "%s.view.jpg", tpath(name));
	heic = read_path(heic_path);
	v = read_path(view_path);
	CHECK_EQ(map_path(heic_path, &m), 0);
	jpeg_bounds(&v, &vd, &ve);
	CHECK_EQ(m.size, v.len);
	CHECK_EQ(m.head_len, data_start(&v, vd));
	CHECK(!memcmp(m.head, v.p, m.head_len));
	CHECK(m.end_len >= 2 && m.end_off > m.head_len && m.end_off + m.end_len == ve);
	{
		uint8_t *e = malloc(m.end_len);
		codec_view_map_end(&m, m.end_off, e, m.end_len);
		CHECK(!memcmp(e, v.p + m.end_off, m.end_len));
		free(e);
	}
	{
		int fd = open(view_path, O_RDONLY);
		CHECK(fd >= 0 && codec_view_map_matches(fd, &m) == 1);
		close(fd);
	}
	if (m.tail_len) {
		CHECK_EQ(m.tail_off, ve);
		CHECK_EQ(m.tail_off + m.tail_len, v.len);
		CHECK(m.tail_src + m.tail_len <= heic.len);
		CHECK(!memcmp(v.p + m.tail_off, heic.p + m.tail_src, m.tail_len));
	}
	tail = m.tail_len;
	codec_view_map_release(&m);
	CHECK(m.head == NULL && m.size == 0);
	buf_free(&heic);
	buf_free(&v);
	return tail;
}

/* A view with room to spare (an original coded at quality 100): its
 * entropy-coded data starts on a 64 KiB boundary and ends 64 bytes or more
 * before the file does, so a reader of 8 KiB blocks that stops at the SOS
 * segment, then reads the last 64 bytes (exiftool), reads only bytes the map
 * knows; the view, fill and all, decodes to what the render coded. A header
 * item whose fill does not add up makes no map. */
static void test_view_aligned(void)
{
	struct buf j = make_jpeg_pf(800, 600, TJSAMP_420, 0, 100, TJPF_RGB, 33), v;
	struct codec_result res;
	struct codec_view_map m;
	struct photo_planes a, b;
	char why[128];
	size_t vd, ve;

	CHECK_EQ(archive(&j, "aligned.jpg", &res), 0);
	CHECK(res.archived && !res.view_own_size && res.view_bytes == j.len);
	check_map("aligned.jpg");
	CHECK_EQ(map_path(tpath("aligned.jpg.heic"), &m), 0);
	v = read_path(tpath("aligned.jpg.view.jpg"));
	jpeg_bounds(&v, &vd, &ve);
	CHECK(m.head_len % 65536 == 0 && m.head_len == data_start(&v, vd));
	CHECK(m.end_len >= 64 && m.end_off + m.end_len == v.len);
	for (uint64_t i = 0; i + 1 < m.end_len; i++)
		CHECK(v.p[m.end_off + i] == 0xFF);
	CHECK(v.p[v.len - 1] == 0xD9 && v.p[m.end_off - 1] != 0xFF);
	/* the fill changes no pixel: the view without it decodes the same */
	{
		struct buf nf = {0};
		buf_add(&nf, v.p, m.end_off);
		buf_add(&nf, "\xFF\xD9", 2);
		CHECK_EQ(jpeg_decode_planes(v.p, v.len, &a, why, sizeof(why)), 0);
		CHECK_EQ(jpeg_decode_planes(nf.p, nf.len, &b, why, sizeof(why)), 0);
		CHECK(a.width == 800 && b.width == 800 && a.height == 600 && b.height == 600);
		CHECK(!memcmp(a.buf, b.buf, (size_t)a.pw[0] * (size_t)a.ph[0]));
		photo_planes_release(&a);
		photo_planes_release(&b);
		buf_free(&nf);
	}
	codec_view_map_release(&m);
	/* a header item whose fill does not add up makes no map: as large as
	 * the view, or beyond it */
	{
		static const uint32_t fills[] = {0, 0xFFFFFFFFu};
		struct buf heic = read_path(tpath("aligned.jpg.heic"));
		uint8_t *at = memmem(heic.p, heic.len, "HVFSJPEG\5", 9);

		CHECK(at != NULL);
		for (size_t i = 0; at && i < sizeof(fills) / sizeof(fills[0]); i++) {
			uint32_t f = fills[i] ? fills[i] : (uint32_t)v.len;
			at[232] = (uint8_t)(f >> 24), at[233] = (uint8_t)(f >> 16);
			at[234] = (uint8_t)(f >> 8), at[235] = (uint8_t)f;
			write_path(tpath("badfill.heic"), &heic);
			CHECK_EQ(map_path(tpath("badfill.heic"), &m), -EINVAL);
			CHECK(m.head == NULL && m.size == 0);
		}
		buf_free(&heic);
	}
	buf_free(&v);
	buf_free(&j);
}

/* A view's map: its head and its trailer's place in the stored file, read
 * without decoding (a wrecked coded picture changes nothing), checked (a
 * damaged trailer is an error); a trailer split between the trailer item
 * and the mpvd box is not contiguous. */
static void test_view_map(void)
{
	struct buf mp4 = make_mp4(), segs = {0}, f, heic, tr = {0};
	struct codec_view_map m;
	struct codec_result res;
	char xmp[1024];
	uint8_t *mdat;
	size_t od, oe;

	snprintf(xmp, sizeof(xmp),
		 "<x:xmpmeta xmlns:x=\"adobe:ns:meta/\"><rdf:RDF xmlns:rdf=\"http://www.w3.org/"
		 "1999/02/22-rdf-syntax-ns#\"><rdf:Description rdf:about=\"\" "
		 "xmlns:GCamera=\"http://ns.google.com/photos/1.0/camera/\" "
		 "GCamera:MicroVideo=\"1\" GCamera:MicroVideoOffset=\"%zu\"/></rdf:RDF>"
		 "</x:xmpmeta>",
		 mp4.len);
	add_exif(&segs, 6);
	add_xmp_text(&segs, xmp);
	/* the video alone: contiguous in the mpvd box */
	f = with_trailer(&segs, mp4.p, mp4.len, 150);
	archive_trailer(&f, "map_mv.jpg", CODEC_CARRIES_MOTION, &res);
	CHECK_EQ(check_map("map_mv.jpg"), mp4.len);
	buf_free(&f);
	/* 100 zeros, then the video: split */
	buf_add(&tr, (const uint8_t[100]){0}, 100);
	buf_add(&tr, mp4.p, mp4.len);
	f = with_trailer(&segs, tr.p, tr.len, 151);
	archive_trailer(&f, "map_split.jpg", CODEC_CARRIES_MOTION, &res);
	check_archived(&f, "map_split.jpg", &res, NULL, 1, 0);
	CHECK_EQ(check_map("map_split.jpg"), 0);
	buf_free(&f);
	/* MPF: contiguous in the trailer item */
	f = make_mpf_photo(0, 152);
	archive_trailer(&f, "map_mpf.jpg", CODEC_CARRIES_MPF, &res);
	jpeg_bounds(&f, &od, &oe);
	CHECK_EQ(check_map("map_mpf.jpg"), f.len - oe);
	buf_free(&f);
	/* no trailer */
	f = with_trailer(&segs, NULL, 0, 153);
	archive_trailer(&f, "map_none.jpg", 0, &res);
	CHECK_EQ(check_map("map_none.jpg"), 0);
	buf_free(&f);

	/* no pixel is decoded: wreck the coded picture */
	heic = read_path(tpath("map_mv.jpg.heic"));
	mdat = memmem(heic.p, heic.len, "mdat", 4);
	CHECK(mdat != NULL);
	memset(mdat + 4, 0, 1000);
	write_path(tpath("map_mv.jpg.heic"), &heic);
	CHECK_EQ(check_map("map_mv.jpg"), mp4.len);
	/* a damaged trailer is found out */
	heic.p[heic.len - 10] ^= 1;
	write_path(tpath("map_bad.heic"), &heic);
	CHECK_EQ(map_path(tpath("map_bad.heic"), &m), -EINVAL);
	/* not an archived photo */
	CHECK_EQ(map_path(tpath("map_none.jpg"), &m), -EINVAL);
	buf_free(&heic);
	buf_free(&tr);
	buf_free(&segs);
	buf_free(&mp4);
}

static int retag_paths(const char *prev, const char *src, const char *out, const char *view,
		       struct codec_result *res)
{
	int pfd = open(prev, O_RDONLY), sfd = open(src, O_RDONLY), ret;

	CHECK(pfd >= 0 && sfd >= 0);
	ret = codec_retag(pfd, sfd, out, view, &opts, res);
	close(pfd);
	close(sfd);
	return ret;
}

/* The coded pictures of a HEIC (primary, thumbnail) as a decoder gets them. */
static struct heic_coded coded_of(const char *path, int w, int h, int subsamp)
{
	struct buf heic = read_path(path);
	struct heif_context *ctx;
	struct heif_image_handle *hd;
	struct heic_coded c;

	CHECK_EQ(heic_open(heic.p, heic.len, 0, &ctx, &hd), 0);
	CHECK_EQ(heic_capture_coded(hd, w, h, subsamp, &c), 0);
	heif_image_handle_release(hd);
	heif_context_free(ctx);
	buf_free(&heic);
	return c;
}

static double seconds(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/*
 * Tagging never costs pixels: ten successive metadata edits of a view
 * (Exif, XMP, comments, a vendor segment, a trailer; the view's padding
 * kept where a tagger leaves it) are each archived from the previous HEIC
 * with its coded pictures bit for bit, their views are the edited JPEGs
 * byte for byte with the first view's image data, and the HEIC's items
 * follow the edits. A pixel edit is no retag, and writes nothing.
 */
static void test_retag(void)
{
	struct rich r;
	struct buf j = make_jpeg_pf(800, 600, TJSAMP_420, 0, 100, TJPF_RGB, 160), f, v0;
	struct codec_result res;
	struct heic_coded c0;
	size_t vd0, ve0;
	char prev[256], src[256], out[256], view[256];
	double t_full, t_retag = 0;

	make_rich(&r, 6);
	f = splice_segs(&j, &r.segs);
	t_full = seconds();
	CHECK_EQ(archive(&f, "tag0.jpg", &res), 0);
	t_full = seconds() - t_full;
	CHECK(res.archived);
	v0 = read_path(tpath("tag0.jpg.view.jpg"));
	jpeg_bounds(&v0, &vd0, &ve0);
	c0 = coded_of(tpath("tag0.jpg.heic"), 800, 600, TJSAMP_420);
	CHECK(c0.main.len > 0 && c0.thumb.len > 0);
	snprintf(prev, sizeof(prev), "%s", tpath("tag0.jpg.heic"));
	for (int i = 1; i <= 10; i++) {
		struct buf segs = {0}, e = {0}, got, heic;
		struct heic_coded ci;
		char xmp[512], com[64], *x;
		double t;

		/* the edit: new Exif, XMP and comment, a vendor segment on odd
		 * edits, the first view's padding, a trailer from the sixth */
		add_exif(&segs, 1 + i % 8);
		snprintf(xmp, sizeof(xmp),
			 "<x:xmpmeta xmlns:x=\"adobe:ns:meta/\"><rdf:RDF xmlns:rdf=\"http://www.w3."
			 "org/1999/02/22-rdf-syntax-ns#\"><rdf:Description rdf:about=\"\" "
			 "xmlns:xmp=\"http://ns.adobe.com/xap/1.0/\" xmp:Rating=\"%d\" "
			 "xmp:Label=\"edit %d\"/></rdf:RDF></x:xmpmeta>",
			 i % 6, i);
		add_xmp_text(&segs, xmp);
		snprintf(com, sizeof(com), "edit number %d", i);
		add_seg(&segs, 0xFE, com, strlen(com));
		if (i & 1)
			add_seg(&segs, 0xE9, "VENDOR\0edited", 13);
		buf_add(&e, v0.p, 2);
		buf_add(&e, segs.p, segs.len);
		buf_add(&e, v0.p + 2 + r.segs.len, vd0 - 2 - r.segs.len); /* padding */
		buf_add(&e, v0.p + vd0, ve0 - vd0);
		for (int k = 5; k < i; k++)
			buf_add(&e, "\0\0\0\0TRAILER", 11);
		snprintf(src, sizeof(src), "%s", tpath("tag.src.jpg"));
		write_path(src, &e);
		snprintf(out, sizeof(out), "%s/tag%d.jpg.heic", tmpdir, i);
		snprintf(view, sizeof(view), "%s/tag%d.jpg.view.jpg", tmpdir, i);
		t = seconds();
		CHECK_EQ(retag_paths(prev, src, out, view, &res), 0);
		t_retag += seconds() - t;
		if (!res.archived)
			fprintf(stderr, "  edit %d not retagged: %s\n", i, res.reason);
		CHECK(res.archived && res.view_bytes == e.len && !res.view_own_size);
		got = read_path(view);
		CHECK(got.len == e.len && !memcmp(got.p, e.p, e.len));
		buf_free(&got);
		/* a fresh render, too */
		CHECK_EQ(render(out, tpath("tag.r.jpg"), &(uint64_t){0}), 0);
		got = read_path(tpath("tag.r.jpg"));
		CHECK(got.len == e.len && !memcmp(got.p, e.p, e.len));
		CHECK(!memcmp(got.p + vd0 + segs.len - r.segs.len, v0.p + vd0,
			      ve0 - vd0)); /* the first view's image data */
		buf_free(&got);
		/* the pictures are the first archive's, bit for bit */
		ci = coded_of(out, 800, 600, TJSAMP_420);
		CHECK(ci.main.len == c0.main.len &&
		      !memcmp(ci.main.data, c0.main.data, c0.main.len));
		CHECK(ci.thumb.len == c0.thumb.len &&
		      !memcmp(ci.thumb.data, c0.thumb.data, c0.thumb.len));
		heic_coded_release(&ci);
		/* the HEIC's own items follow the edit */
		heic = read_path(out);
		x = heic_xmp_item(&heic);
		snprintf(xmp, sizeof(xmp), "xmp:Label=\"edit %d\"", i);
		CHECK(strstr(x, xmp) != NULL);
		free(x);
		buf_free(&heic);
		snprintf(prev, sizeof(prev), "%s", out);
		buf_free(&e);
		buf_free(&segs);
	}
	fprintf(stderr, "  full archive %.2f s, retag %.2f s on average\n", t_full, t_retag / 10);

	/* a pixel edit: no retag, nothing written */
	{
		struct buf e = {0};
		buf_add(&e, v0.p, v0.len);
		e.p[data_start(&v0, vd0) + 100] ^= 0x10; /* in the coded data, not the fill */
		write_path(tpath("tag.px.jpg"), &e);
		CHECK_EQ(retag_paths(prev, tpath("tag.px.jpg"), tpath("tag.px.heic"), NULL, &res),
			 0);
		CHECK(!res.archived && strstr(res.reason, "image data differs"));
		CHECK(access(tpath("tag.px.heic"), F_OK) != 0);
		/* nor is a JPEG retagged against a file that is not an archive */
		CHECK_EQ(retag_paths(tpath("tag.px.jpg"), tpath("tag.px.jpg"), tpath("tag.px.heic"),
				     NULL, &res),
			 0);
		CHECK(!res.archived && strstr(res.reason, "not an archived photo"));
		buf_free(&e);
	}
	heic_coded_release(&c0);
	buf_free(&v0);
	buf_free(&f);
	buf_free(&j);
	rich_free(&r);
}

/* Luma (BT.601, 8 bits) of interleaved RGB. */
static uint8_t *rgb_luma(const uint8_t *rgb, int w, int h, int stride)
{
	uint8_t *y = malloc((size_t)w * h);

	for (int r = 0; r < h; r++)
		for (int x = 0; x < w; x++) {
			const uint8_t *p = rgb + (size_t)r * stride + 3 * x;
			y[(size_t)r * w + x] =
			    (uint8_t)((77 * p[0] + 150 * p[1] + 29 * p[2] + 128) >> 8);
		}
	return y;
}

/* A JPEG's luma as displayed (its EXIF orientation applied): *w x *h. */
static uint8_t *jpeg_display_luma(const struct buf *j, int *w, int *h)
{
	tjhandle tj = tjInitDecompress();
	int sw, sh, ss, cs, o;
	uint8_t *rgb, *y, *d;
	struct jpeg_info ji;

	CHECK_EQ(jpeg_parse(j->p, j->len, &ji), 0);
	o = ji.orientation;
	jpeg_info_release(&ji);
	CHECK_EQ(tjDecompressHeader3(tj, j->p, j->len, &sw, &sh, &ss, &cs), 0);
	rgb = malloc((size_t)sw * sh * 3);
	CHECK_EQ(tjDecompress2(tj, j->p, j->len, rgb, sw, 0, sh, TJPF_RGB, 0), 0);
	tjDestroy(tj);
	y = rgb_luma(rgb, sw, sh, sw * 3);
	free(rgb);
	*w = o >= 5 ? sh : sw;
	*h = o >= 5 ? sw : sh;
	d = malloc((size_t)*w * *h);
	for (int r = 0; r < *h; r++)
		for (int x = 0; x < *w; x++) {
			int sx, sy;
			src_of(o, sw, sh, x, r, &sx, &sy);
			d[(size_t)r * *w + x] = y[(size_t)sy * sw + sx];
		}
	free(y);
	return d;
}

/* libheif's own display of a HEIF file's primary image (irot/imir
 * applied), as luma. */
static uint8_t *heif_display_luma(const struct buf *heif, int *w, int *h)
{
	struct heif_context *ctx;
	struct heif_image_handle *hd;
	struct heif_image *img;
	const uint8_t *rgb;
	uint8_t *y;
	int stride;

	CHECK_EQ(heic_open(heif->p, heif->len, 0, &ctx, &hd), 0);
	CHECK_EQ(heif_decode_image(hd, &img, heif_colorspace_RGB, heif_chroma_interleaved_RGB, NULL)
		     .code,
		 heif_error_Ok);
	*w = heif_image_get_width(img, heif_channel_interleaved);
	*h = heif_image_get_height(img, heif_channel_interleaved);
	rgb = heif_image_get_plane_readonly(img, heif_channel_interleaved, &stride);
	y = rgb_luma(rgb, *w, *h, stride);
	heif_image_release(img);
	heif_image_handle_release(hd);
	heif_context_free(ctx);
	return y;
}

/* Render the JPEG sibling of the HEIF file at path; check it shows what
 * libheif shows (same size, luma SSIM >= 0.98) and carries the file's XMP
 * and ICC profile. Returns the JPEG. */
static struct buf sibling_check(const char *path, const char *out)
{
	struct buf heif = read_path(path), j;
	struct heif_context *ctx;
	struct heif_image_handle *hd;
	struct jpeg_info ji;
	uint8_t *a, *b, *x = NULL;
	int aw, ah, bw, bh, fd = open(path, O_RDONLY);
	uint64_t size = 0;
	size_t xl = 0;
	double ssim;

	CHECK(fd >= 0 && heif.p);
	CHECK_EQ(codec_render_heif_jpeg(fd, out, &opts, &size), 0);
	close(fd);
	j = read_path(out);
	CHECK(j.len == size);
	a = jpeg_display_luma(&j, &aw, &ah);
	b = heif_display_luma(&heif, &bw, &bh);
	CHECK(aw == bw && ah == bh);
	ssim = codec_ssim_plane(a, aw, b, bw, aw, ah);
	fprintf(stderr, "  %s: %dx%d, %zu -> %zu bytes, luma SSIM %.4f\n", path, aw, ah, heif.len,
		j.len, ssim);
	CHECK(ssim >= 0.98);
	free(a);
	free(b);
	/* XMP and ICC as the HEIF file has them */
	CHECK_EQ(jpeg_parse(j.p, j.len, &ji), 0);
	CHECK(ji.exif != NULL);
	CHECK_EQ(heic_open(heif.p, heif.len, 0, &ctx, &hd), 0);
	if (heic_get_item(hd, "mime", "application/rdf+xml", &x, &xl) == 0)
		CHECK(ji.xmp && ji.xmp_len == xl && !memcmp(ji.xmp, x, xl));
	else
		CHECK(ji.xmp == NULL);
	free(x);
	if (heif_image_handle_get_color_profile_type(hd) == heif_color_profile_type_prof) {
		size_t n = heif_image_handle_get_raw_color_profile_size(hd);
		uint8_t *icc = malloc(n);
		CHECK(heif_image_handle_get_raw_color_profile(hd, icc).code == heif_error_Ok);
		CHECK(ji.icc && ji.icc_len == n && !memcmp(ji.icc, icc, n));
		free(icc);
	} else {
		CHECK(ji.icc == NULL);
	}
	heif_image_handle_release(hd);
	heif_context_free(ctx);
	jpeg_info_release(&ji);
	buf_free(&heif);
	return j;
}

/*
 * A JPEG sibling of a HEIF photo: the pixels as stored and the orientation
 * as EXIF, for all eight (irot/imir as libheif writes them, read back), the
 * HEIC's Exif carried with its Orientation set (a minimal Exif when it has
 * none), XMP and ICC carried; the same bytes every time; and the phone
 * HEIC/HEIF files of the corpus (iPhone grids, Nokia, 10-bit HDR).
 */
static void test_heif_jpeg(void)
{
	struct buf j = make_jpeg(96, 64, TJSAMP_420, 0, 170);
	struct heic_params hp = {.quality = 80, .preset = "ultrafast"};
	struct photo_planes pl;
	char name[64];

	CHECK_EQ(y_plane(&j, &pl), 0);
	for (int o = 1; o <= 8; o++) {
		struct buf segs = {0}, f, heic, out, again;
		struct jpeg_info ji;
		struct heif_context *ctx;

		/* even: an Exif item whose Orientation says 1; odd: none */
		if (!(o & 1))
			add_exif(&segs, 1);
		add_xmp(&segs, 0, NULL);
		f = splice_segs(&j, &segs);
		CHECK_EQ(jpeg_parse(f.p, f.len, &ji), 0);
		ji.orientation = o;
		CHECK_EQ(heic_encode(&pl, &ji, &hp, &ctx), 0);
		heic = (struct buf){0};
		CHECK_EQ(heic_write_mem(ctx, &heic.p, &heic.len), 0);
		heif_context_free(ctx);
		snprintf(name, sizeof(name), "sib%d.heic", o);
		write_path(tpath(name), &heic);
		out = sibling_check(tpath(name), tpath("sib.out.jpg"));
		{
			struct jpeg_info oj;
			CHECK_EQ(jpeg_parse(out.p, out.len, &oj), 0);
			CHECK_EQ(oj.orientation, o);
			if (!(o & 1)) /* the HEIC's own Exif: its maker note is there */
				CHECK(memmem(oj.exif, oj.exif_len, "MAKERNOTE", 9) != NULL);
			else
				CHECK(oj.exif_len < 64);
			jpeg_info_release(&oj);
		}
		/* deterministic */
		again = sibling_check(tpath(name), tpath("sib.again.jpg"));
		CHECK(again.len == out.len && !memcmp(again.p, out.p, out.len));
		buf_free(&again);
		buf_free(&out);
		buf_free(&heic);
		jpeg_info_release(&ji);
		buf_free(&f);
		buf_free(&segs);
	}
	photo_planes_release(&pl);
	buf_free(&j);

	{
		static const char *const corpus[] = {
		    "IMG_5195.HEIC", "samplefilehub.heif", "mobile/iphone_13_pro_max.HEIC",
		    "mobile/HMD_Nokia_8.3_5G.heif", "mobile/HMD_Nokia_8.3_5G_hdr.heif"};
		char path[256];
		struct stat st;

		if (stat("../shared/corpus/exif-samples/heic", &st) != 0)
			SKIP("corpus HEIC files absent: corpus part NOT run");
		for (size_t i = 0; i < sizeof(corpus) / sizeof(corpus[0]); i++) {
			struct buf out;
			snprintf(path, sizeof(path), "../shared/corpus/exif-samples/heic/%s",
				 corpus[i]);
			out = sibling_check(path, tpath("sib.corpus.jpg"));
			buf_free(&out);
		}
	}
}

/* exiftool sees the same tags in the original and in its view. */
static void test_exiftool_tags(void)
{
	char cmd[1024];
	struct rich r;
	struct buf j, f, a, b;
	struct codec_result res;
	int rc;

	if (system("exiftool -ver >/dev/null 2>&1") != 0)
		SKIP("exiftool not installed (libimage-exiftool-perl)");
	make_rich(&r, 6);
	j = make_jpeg_pf(800, 600, TJSAMP_420, 0, 100, TJPF_RGB, 80);
	f = splice_segs(&j, &r.segs);
	CHECK_EQ(archive(&f, "tags.jpg", &res), 0);
	CHECK(res.archived);
	for (int i = 0; i < 2; i++) {
		snprintf(cmd, sizeof(cmd),
			 "exiftool -a -G1 -s -n %s | grep -v -E "
			 "'^\\[(File|System|Composite|ExifTool)\\]' "
			 "> %s",
			 tpath(i ? "tags.jpg.view.jpg" : "tags.jpg"),
			 tpath(i ? "tags.view.txt" : "tags.orig.txt"));
		rc = system(cmd);
		CHECK(WIFEXITED(rc) && WEXITSTATUS(rc) == 0);
	}
	a = read_path(tpath("tags.orig.txt"));
	b = read_path(tpath("tags.view.txt"));
	if (a.len != b.len || memcmp(a.p, b.p, a.len) != 0) {
		snprintf(cmd, sizeof(cmd), "diff %s %s >&2", tpath("tags.orig.txt"),
			 tpath("tags.view.txt"));
		rc = system(cmd);
		(void)rc;
	}
	CHECK(a.len > 200 && a.len == b.len && memcmp(a.p, b.p, a.len) == 0);
	/* (exiftool only warns about our unknown maker note; the header check
	 * in check_archived covers it byte for byte) */
	CHECK(memmem(a.p, a.len, "DateTimeOriginal", 16) && memmem(a.p, a.len, "GPSLatitude", 11) &&
	      memmem(a.p, a.len, "Caption-Abstract", 16) && memmem(a.p, a.len, "Rating", 6));
	buf_free(&a);
	buf_free(&b);
	buf_free(&j);
	buf_free(&f);
	rich_free(&r);
}

static int corpus_n, corpus_archived, corpus_kept;

static int corpus_one(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
	struct buf j;
	struct codec_result res;
	size_t n = strlen(path);

	(void)ftw;
	if (type != FTW_F || n < 4 || strcasecmp(path + n - 4, ".jpg") != 0)
		return 0;
	/* the multi-megapixel phone photos take seconds each under ASan */
	if (st->st_size > (1 << 20) && !getenv("HEVCFS_FULL_CORPUS")) {
		fprintf(stderr, "  corpus skips %s (over 1 MiB; HEVCFS_FULL_CORPUS=1 runs it)\n",
			path);
		return 0;
	}
	j = read_path(path);
	if (!j.p)
		return 0;
	corpus_n++;
	if (archive(&j, "corpus.jpg", &res) != 0) {
		fprintf(stderr, "  corpus %s: error\n", path);
		buf_free(&j);
		return 1;
	}
	if (res.archived) {
		struct buf v = read_path(tpath("corpus.jpg.view.jpg"));
		size_t od, oe;
		corpus_archived++;
		/* the view is the original's layout (or says why not) */
		jpeg_bounds(&j, &od, &oe);
		if (!v.p || v.len != res.view_bytes || v.len < j.len - oe ||
		    memcmp(v.p + v.len - (j.len - oe), j.p + oe, j.len - oe) != 0 ||
		    (!res.view_own_size && v.len != j.len)) {
			fprintf(stderr,
				"  corpus %s: view of %zu bytes, not the original's layout\n", path,
				v.len);
			buf_free(&v);
			buf_free(&j);
			return 1;
		}
		buf_free(&v);
		if (res.ssim < 0.99 || res.view_ssim < 0.985 ||
		    res.stored_bytes > 0.9 * (double)j.len) {
			fprintf(stderr, "  corpus %s: SSIM %.4f view %.4f\n", path, res.ssim,
				res.view_ssim);
			buf_free(&j);
			return 1;
		}
	} else {
		corpus_kept++;
		if (!res.reason[0]) {
			buf_free(&j);
			return 1;
		}
		fprintf(stderr, "  corpus kept %s: %s\n", path + strlen(CORPUS) + 1, res.reason);
	}
	buf_free(&j);
	return 0;
}

/* Every camera JPEG of the shared corpus: no crash, floors kept. */
static void test_corpus(void)
{
	struct stat st;
	int rc;

	if (stat(CORPUS, &st) != 0)
		SKIP("corpus " CORPUS " absent: corpus part NOT run");
	if (getenv("HEVCFS_SKIP_CORPUS"))
		SKIP("HEVCFS_SKIP_CORPUS set: corpus part NOT run");
	/* one encode per photo keeps this part short; auto quality is
	 * covered above and measured on the phone photos by the bench */
	opts.photo_quality = 64;
	rc = nftw(CORPUS, corpus_one, 8, FTW_PHYS);
	opts.photo_quality = 0;
	CHECK_EQ(rc, 0);
	fprintf(stderr, "  corpus: %d JPEGs, %d archived, %d kept\n", corpus_n, corpus_archived,
		corpus_kept);
	CHECK(corpus_n > 0 && corpus_archived > 0);
}

/* x265 3.5 (Debian 12) leaks in x265_encoder_open (~1.2 KB of x265_param
 * per encoder) and strdup()s the "pools" string without freeing it: not ours
 * to fix, so LeakSanitizer is told to ignore leaks from inside libx265. */
const char *__lsan_default_suppressions(void);
const char *__lsan_default_suppressions(void)
{
	return "leak:libx265.so\n";
}

static int rm_one(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
	(void)st, (void)type, (void)ftw;
	return remove(path);
}

int main(void)
{
	int rc;

	strcpy(tmpdir, "/tmp/test_photo.XXXXXX");
	if (!mkdtemp(tmpdir)) {
		perror("mkdtemp");
		return 1;
	}
	log_set_level(LOG_WARNING);
	opts.preset = TEST_PRESET;
	opts.threads = getenv("THREADS") ? atoi(getenv("THREADS")) : 2;
	RUN(test_threaded_decoder);
	RUN(test_raw_planes);
	RUN(test_view_versions);
	RUN(test_padding);
	RUN(test_view_fit);
	RUN(test_rich_420);
	RUN(test_subsamplings);
	RUN(test_orientations);
	RUN(test_progressive_restart_large);
	RUN(test_thumbnail);
	RUN(test_thumbnail_slivers);
	RUN(test_odd_sizes);
	RUN(test_predicted);
	RUN(test_kept);
	RUN(test_options);
	RUN(test_render_errors);
	RUN(test_probe);
	RUN(test_motion_photo);
	RUN(test_trailers);
	RUN(test_digests);
	RUN(test_sniff);
	RUN(test_view_map);
	RUN(test_view_aligned);
	RUN(test_retag);
	RUN(test_heif_jpeg);
	RUN(test_exiftool_tags);
	RUN(test_corpus);
	rc = check_done("test_photo");
	if (!getenv("HEVCFS_KEEP_TMP"))
		nftw(tmpdir, rm_one, 8, FTW_DEPTH | FTW_PHYS);
	else
		fprintf(stderr, "fixtures kept in %s\n", tmpdir);
	return rc;
}
