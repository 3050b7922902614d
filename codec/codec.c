/* codec — sniffing by content and dispatch to the photo and video halves. */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Enough bytes for every container signature we look at. */
#define SNIFF_BYTES 4096
/* A TIFF-based raw's first IFD and its Make string lie in the first KB of
 * every camera file we know; read this much of a TIFF to be sure. */
#define SNIFF_TIFF_BYTES 65536

/* ISO BMFF brands of HEIF images and image sequences (ISO/IEC 23008-12,
 * MIAF, AVIF), and what to call the file. */
static const struct {
	char brand[5];
	const char *name;
} heif_brands[] = {
    {"heic", "HEIC"}, {"heix", "HEIC"}, {"heim", "HEIC"}, {"heis", "HEIC"}, {"hevc", "HEIC"},
    {"hevx", "HEIC"}, {"hevm", "HEIC"}, {"hevs", "HEIC"}, {"avif", "AVIF"}, {"avis", "AVIF"},
    {"avio", "AVIF"}, {"mif1", "HEIF"}, {"mif2", "HEIF"}, {"msf1", "HEIF"}, {"miaf", "HEIF"},
    {"MiHE", "HEIC"}, {"MiHB", "HEIC"}, {"MiHA", "HEIC"}, {"MiAB", "AVIF"},
};

/* Major brands of movies: a file of one of these is never taken for HEIF,
 * whatever it also lists as compatible. */
static const char *const movie_brands[] = {
    "isom", "iso2", "iso3", "iso4", "iso5", "iso6", "mp41", "mp42", "mp71", "qt  ", "M4V ", "M4VH",
    "M4VP", "M4A ", "3gp4", "3gp5", "3gp6", "3g2a", "avc1", "dash", "f4v ", "XAVC", "MSNV", "crx ",
};

static const char *heif_name(const uint8_t *brand)
{
	for (size_t i = 0; i < sizeof(heif_brands) / sizeof(heif_brands[0]); i++)
		if (!memcmp(brand, heif_brands[i].brand, 4))
			return heif_brands[i].name;
	return NULL;
}

/*
 * A HEIF file: an ftyp whose major brand is a HEIF brand, or whose major
 * brand is no movie's and whose compatible brands name the image or image
 * sequence structural brand (mif1, msf1). The name comes from the first
 * brand that tells HEIC from AVIF. NULL when not HEIF.
 */
static const char *sniff_heif(const uint8_t *h, size_t n)
{
	size_t box, end;
	const char *name = NULL, *any = NULL;
	int structural = 0;

	if (n < 16 || memcmp(h + 4, "ftyp", 4) != 0)
		return NULL;
	box = (size_t)h[0] << 24 | (size_t)h[1] << 16 | (size_t)h[2] << 8 | h[3];
	end = box < n ? box : n;
	for (size_t i = 0; i < sizeof(movie_brands) / sizeof(movie_brands[0]); i++)
		if (!memcmp(h + 8, movie_brands[i], 4))
			return NULL;
	/* major brand at 8, minor version at 12, compatible brands from 16 */
	for (size_t i = 8; i + 4 <= end; i += i == 8 ? 8 : 4) {
		const char *nm = heif_name(h + i);
		if (!nm)
			continue;
		if (i == 8)
			structural = 1;
		if (!memcmp(h + i, "mif1", 4) || !memcmp(h + i, "msf1", 4))
			structural = 1;
		if (!any)
			any = nm;
		if (!name && strcmp(nm, "HEIF") != 0)
			name = nm;
	}
	if (!structural)
		return NULL;
	return name ? name : any;
}

/* A TIFF header's byte order: 1 little, 0 big, -1 not TIFF. */
static int tiff_order(const uint8_t *h, size_t n)
{
	if (n >= 8 && !memcmp(h, "II*\0", 4))
		return 1;
	if (n >= 8 && !memcmp(h, "MM\0*", 4))
		return 0;
	return -1;
}

static uint32_t rd(const uint8_t *p, int le, int bytes)
{
	uint32_t v = 0;

	for (int i = 0; i < bytes; i++)
		v |= (uint32_t)p[le ? i : bytes - 1 - i] << (le ? 8 * i : 8 * (bytes - 1 - i));
	return v;
}

/*
 * Camera raw by signature: RAF's magic, CR3's ftyp brand, ORF's and RW2's
 * own TIFF magic numbers, CR2's marker after the TIFF header, and for the
 * TIFF-based rest the first IFD: a DNGVersion tag (DNG), or the Make of a
 * camera maker that writes raws as TIFF (NEF, ARW, PEF) together with what
 * marks a raw's first IFD (SubIFDs, a reduced-resolution image, the maker's
 * private data tag): a scanner's or editor's TIFF is not a raw. NULL when
 * none.
 */
static const char *sniff_raw(const uint8_t *h, size_t n)
{
	static const struct {
		const char *make, *name;
	} makers[] = {
	    {"NIKON", "NEF"},
	    {"SONY", "ARW"},
	    {"PENTAX", "PEF"},
	    {"RICOH", "PEF"},
	};
	size_t ifd, count;
	int le, dng = 0, rawish = 0;
	const char *make = NULL;
	size_t make_len = 0;

	if (n >= 16 && !memcmp(h, "FUJIFILMCCD-RAW ", 16))
		return "RAF";
	if (n >= 12 && !memcmp(h + 4, "ftypcrx ", 8))
		return "CR3";
	if (n >= 8 && (!memcmp(h, "IIRO", 4) || !memcmp(h, "IIRS", 4) || !memcmp(h, "MMOR", 4)))
		return "ORF";
	if (n >= 8 && !memcmp(h, "IIU\0", 4))
		return "RW2";
	le = tiff_order(h, n);
	if (le < 0)
		return NULL;
	if (n >= 12 && h[8] == 'C' && h[9] == 'R' && h[10] == 2)
		return "CR2";
	ifd = rd(h + 4, le, 4);
	if (ifd < 8 || ifd > n - 2)
		return NULL;
	count = rd(h + ifd, le, 2);
	for (size_t i = 0; i < count && ifd + 2 + 12 * (i + 1) <= n; i++) {
		const uint8_t *e = h + ifd + 2 + 12 * i;
		unsigned tag = rd(e, le, 2), type = rd(e + 2, le, 2);
		uint32_t cnt = rd(e + 4, le, 4), val = rd(e + 8, le, 4);

		if (tag == 0xC612) /* DNGVersion */
			dng = 1;
		else if (tag == 0x014A || tag == 0xC634) /* SubIFDs, DNGPrivateData */
			rawish = 1;
		else if (tag == 0x00FE && rd(e + 8, le, type == 3 ? 2 : 4) == 1)
			rawish = 1; /* NewSubfileType: a reduced-resolution image */
		else if (tag == 0x010F && type == 2 && cnt > 0) {
			/* ASCII: in the entry up to 4 bytes, else at an offset */
			if (cnt <= 4)
				make = (const char *)e + 8, make_len = cnt;
			else if (val < n && cnt <= n - val)
				make = (const char *)h + val, make_len = cnt;
		}
	}
	if (dng)
		return "DNG";
	if (!rawish || !make)
		return NULL;
	for (size_t i = 0; i < sizeof(makers) / sizeof(makers[0]); i++) {
		size_t ml = strlen(makers[i].make);
		if (make_len >= ml && !memcmp(make, makers[i].make, ml))
			return makers[i].name;
	}
	return NULL;
}

enum codec_kind codec_sniff_format(int fd, const char **format)
{
	uint8_t head[SNIFF_BYTES], *big = NULL;
	ssize_t n = pread(fd, head, sizeof(head), 0);
	const char *name;
	enum codec_kind kind = CODEC_KIND_OTHER;

	*format = "";
	if (n < 4)
		return CODEC_KIND_OTHER;
	if (head[0] == 0xFF && head[1] == 0xD8 && head[2] == 0xFF) {
		*format = "JPEG";
		return CODEC_KIND_JPEG;
	}
	/* before the video sniff: a HEIF still is no movie, and CR3 is ISO
	 * BMFF too */
	name = sniff_raw(head, (size_t)n);
	if (!name && tiff_order(head, (size_t)n) >= 0 && n == (ssize_t)sizeof(head)) {
		big = malloc(SNIFF_TIFF_BYTES);
		if (big) {
			ssize_t m = pread(fd, big, SNIFF_TIFF_BYTES, 0);
			if (m > 0)
				name = sniff_raw(big, (size_t)m);
			free(big);
		}
	}
	if (name) {
		*format = name;
		return CODEC_KIND_RAW;
	}
	name = sniff_heif(head, (size_t)n);
	if (name) {
		*format = name;
		return CODEC_KIND_HEIF;
	}
	if (video_sniff(head, (size_t)n)) {
		*format = "video";
		kind = CODEC_KIND_VIDEO;
	}
	return kind;
}

enum codec_kind codec_sniff(int fd)
{
	const char *format;

	return codec_sniff_format(fd, &format);
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

int codec_write_file(const char *path, const uint8_t *buf, size_t len)
{
	size_t off = 0;
	int fd, ret = 0;

	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd == -1) {
		ret = -errno;
		log_msg(LOG_ERR, "codec: creating %s: %s", path, strerror(-ret));
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
		log_msg(LOG_ERR, "codec: writing %s: %s", path, strerror(-ret));
	return ret;
}

int codec_archive(int src_fd, const char *out_path, const char *view_path,
		  const struct codec_opts *opts, struct codec_result *result)
{
	enum codec_kind kind;
	const char *format;
	struct stat st;

	memset(result, 0, sizeof(*result));
	if (fstat(src_fd, &st) == -1)
		return -errno;
	result->orig_bytes = (uint64_t)st.st_size;
	kind = codec_sniff_format(src_fd, &format);
	if (kind == CODEC_KIND_JPEG)
		return photo_archive(src_fd, out_path, view_path, opts, result);
	if (kind == CODEC_KIND_VIDEO)
		return video_archive(src_fd, out_path, opts, result);
	if (kind == CODEC_KIND_HEIF)
		codec_keep(result, "already %s", format);
	else if (kind == CODEC_KIND_RAW)
		codec_keep(result, "camera raw (%s)", format);
	else
		codec_keep(result, "not a photo or video");
	return 0;
}

int codec_retag(int prev_fd, int src_fd, const char *out_path, const char *view_path,
		const struct codec_opts *opts, struct codec_result *result)
{
	struct stat st;

	memset(result, 0, sizeof(*result));
	if (fstat(src_fd, &st) == -1)
		return -errno;
	result->orig_bytes = (uint64_t)st.st_size;
	if (codec_sniff(src_fd) != CODEC_KIND_JPEG) {
		codec_keep(result, "not a JPEG");
		return 0;
	}
	return photo_retag(prev_fd, src_fd, out_path, view_path, opts, result);
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

int codec_view_map(int stored_fd, struct codec_view_map *m)
{
	memset(m, 0, sizeof(*m));
	return photo_view_map(stored_fd, m);
}

void codec_view_map_release(struct codec_view_map *m)
{
	if (!m)
		return;
	free(m->head);
	memset(m, 0, sizeof(*m));
}

void codec_view_map_end(const struct codec_view_map *m, uint64_t off, uint8_t *buf, size_t n)
{
	uint64_t eoi = m->end_off + m->end_len - 1; /* the EOI's second byte */

	memset(buf, 0xFF, n);
	if (m->end_len && eoi >= off && eoi < off + n)
		buf[eoi - off] = 0xD9;
}

int codec_view_map_sum(const struct codec_view_map *m, uint8_t out[SUM_LEN])
{
	struct sum *s;
	int ret;

	if (!m->end_len)
		return sum_buf(m->head, (size_t)m->head_len, out);
	ret = sum_new(&s);
	if (ret)
		return ret;
	ret = sum_update(s, m->head, (size_t)m->head_len);
	for (uint64_t off = m->end_off; !ret && off < m->end_off + m->end_len;) {
		uint8_t buf[4096];
		size_t n = (size_t)(m->end_off + m->end_len - off);

		n = n < sizeof(buf) ? n : sizeof(buf);
		codec_view_map_end(m, off, buf, n);
		ret = sum_update(s, buf, n);
		off += n;
	}
	if (!ret)
		ret = sum_final(s, out);
	sum_free(&s);
	return ret;
}

int codec_view_map_matches(int view_fd, const struct codec_view_map *m)
{
	uint8_t buf[16384], want[16384];
	struct stat st;

	if (fstat(view_fd, &st) == -1 || (uint64_t)st.st_size != m->size)
		return 0;
	for (uint64_t off = 0; off < m->head_len + m->end_len;) {
		/* the head, then the end */
		int head = off < m->head_len;
		uint64_t at = head ? off : m->end_off + (off - m->head_len);
		uint64_t left = head ? m->head_len - off : m->head_len + m->end_len - off;
		size_t n = left < sizeof(buf) ? (size_t)left : sizeof(buf);

		if (pread(view_fd, buf, n, (off_t)at) != (ssize_t)n)
			return 0;
		if (head)
			memcpy(want, m->head + off, n);
		else
			codec_view_map_end(m, at, want, n);
		if (memcmp(buf, want, n))
			return 0;
		off += n;
	}
	return 1;
}

const char *codec_carries_words(uint32_t carries, char *buf, size_t size)
{
	static const char *const words[] = {"motion video", "gain map", "MPF images",
					    "Samsung SEF",  "padding",	"trailer bytes"};
	size_t n = 0;

	buf[0] = '\0';
	for (size_t i = 0; i < sizeof(words) / sizeof(*words); i++)
		if (carries & (1u << i))
			n += (size_t)snprintf(buf + n, n < size ? size - n : 0, "%s%s",
					      n ? ", " : "", words[i]);
	return buf;
}
