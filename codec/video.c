/*
 * video — video archiving: the container sniff, libavformat input over a
 * borrowed fd, and video_archive(), which runs transcode (video_xcode.c) and
 * verification (video_verify.c) and decides archived or kept.
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <libavutil/log.h>

/* The result must be at most this share of the source's size to be worth it. */
#define VIDEO_MAX_SIZE_RATIO 0.90
/* libavformat reads the source in chunks of this size. */
#define VIDEO_IO_BUF (256 << 10)
/* An MPEG-TS packet, and an M2TS one (4-byte timecode prefix). */
#define TS_PACKET 188
#define M2TS_PACKET 192

/* The demuxers whose files we archive (libavformat's names). */
static const char *const video_demuxers[] = {
    "mov,mp4,m4a,3gp,3g2,mj2", "avi", "matroska,webm", "mpeg", "mpegts", "ogg", "asf", "flv",
};

/* HEIF-family brands: photos (or photo bursts) kept as they are. */
static const char *const heif_brands[] = {
    "heic", "heix", "heim", "heis", "hevc", "hevx", "mif1", "msf1", "avif", "avis",
};

/* Is there a sync byte every packet bytes from off on, as far as n reaches
 * (and at least twice)? */
static int ts_sync(const uint8_t *head, size_t n, size_t off, size_t packet)
{
	int seen = 0;

	for (size_t i = off; i < n && seen < 8; i += packet, seen++)
		if (head[i] != 0x47)
			return 0;
	return seen >= 2 || (seen == 1 && n < off + packet);
}

/* Does an ISO BMFF / QuickTime head look like a movie (not a HEIF photo)? */
static int bmff_sniff(const uint8_t *head, size_t n)
{
	static const char *const qt_atoms[] = {"moov", "mdat", "wide", "pnot"};

	if (n < 8)
		return 0;
	if (!memcmp(head + 4, "ftyp", 4)) {
		if (n < 12)
			return 0;
		for (size_t i = 0; i < sizeof(heif_brands) / sizeof(*heif_brands); i++)
			if (!memcmp(head + 8, heif_brands[i], 4))
				return 0;
		return 1;
	}
	/* old QuickTime files may start straight with a movie atom */
	for (size_t i = 0; i < sizeof(qt_atoms) / sizeof(*qt_atoms); i++)
		if (!memcmp(head + 4, qt_atoms[i], 4))
			return 1;
	return 0;
}

/*
 * Cheap signature check of a file's first bytes: nonzero when they look like
 * a container that may hold video (libavformat has the last word later).
 * Never reads beyond n.
 */
int video_sniff(const uint8_t *head, size_t n)
{
	static const uint8_t asf_guid[16] = {0x30, 0x26, 0xB2, 0x75, 0x8E, 0x66, 0xCF, 0x11,
					     0xA6, 0xD9, 0x00, 0xAA, 0x00, 0x62, 0xCE, 0x6C};

	if (!head || n < 4)
		return 0;
	if (bmff_sniff(head, n))
		return 1;
	if (n >= 12 && !memcmp(head, "RIFF", 4) && !memcmp(head + 8, "AVI ", 4))
		return 1;
	if (!memcmp(head, "\x1A\x45\xDF\xA3", 4)) /* EBML: Matroska, WebM */
		return 1;
	if (!memcmp(head, "\x00\x00\x01\xBA", 4)) /* MPEG-PS pack header */
		return 1;
	if (!memcmp(head, "OggS", 4))
		return 1;
	if (n >= 16 && !memcmp(head, asf_guid, 16))
		return 1;
	if (!memcmp(head, "FLV\x01", 4))
		return 1;
	if (head[0] == 0x47 && ts_sync(head, n, 0, TS_PACKET))
		return 1;
	if (n > 4 && head[4] == 0x47 && ts_sync(head, n, 4, M2TS_PACKET))
		return 1;
	return 0;
}

/* The source as libavformat sees it: a borrowed fd read with pread. */
struct video_io {
	int fd;
	int64_t pos;
	int err; /* errno of the last failed read */
};

/* AVIOContext read callback: pread at our own offset. */
static int video_io_read(void *opaque, uint8_t *buf, int size)
{
	struct video_io *io = opaque;
	ssize_t n;

	do
		n = pread(io->fd, buf, (size_t)size, (off_t)io->pos);
	while (n == -1 && errno == EINTR);
	if (n == -1) {
		io->err = errno;
		return AVERROR(errno);
	}
	if (n == 0)
		return AVERROR_EOF;
	io->pos += n;
	return (int)n;
}

/* AVIOContext seek callback; AVSEEK_SIZE answers with the file's size. */
static int64_t video_io_seek(void *opaque, int64_t offset, int whence)
{
	struct video_io *io = opaque;
	struct stat st;

	if (whence & AVSEEK_SIZE || (whence & ~AVSEEK_FORCE) == SEEK_END) {
		if (fstat(io->fd, &st) == -1) {
			io->err = errno;
			return AVERROR(errno);
		}
		if (whence & AVSEEK_SIZE)
			return st.st_size;
		offset += st.st_size;
	} else if ((whence & ~AVSEEK_FORCE) == SEEK_CUR) {
		offset += io->pos;
	} else if ((whence & ~AVSEEK_FORCE) != SEEK_SET) {
		return AVERROR(EINVAL);
	}
	if (offset < 0)
		return AVERROR(EINVAL);
	io->pos = offset;
	return offset;
}

/* Route libav's log lines to log_msg. Decoder complaints about damaged input
 * are expected (we keep such files and say why), so they stay below LOG_INFO. */
static void video_av_log(void *avcl, int level, const char *fmt, va_list ap)
{
	char line[512];
	int print = 1;

	if (level > AV_LOG_WARNING)
		return;
	av_log_format_line2(avcl, level, fmt, ap, line, sizeof(line), &print);
	line[strcspn(line, "\n")] = '\0';
	if (line[0])
		log_msg(level <= AV_LOG_FATAL ? LOG_WARNING : LOG_DEBUG, "libav: %s", line);
}

static pthread_once_t video_log_once = PTHREAD_ONCE_INIT;

/* Install the libav log callback (process wide, once). */
static void video_log_init(void)
{
	av_log_set_callback(video_av_log);
}

int video_averr(int averr, const char *what)
{
	char msg[AV_ERROR_MAX_STRING_SIZE];

	if (averr >= 0)
		return 0;
	av_strerror(averr, msg, sizeof(msg));
	log_msg(LOG_WARNING, "video: %s: %s", what, msg);
	if (averr == AVERROR_EOF || averr == AVERROR_INVALIDDATA)
		return -EIO;
	if (averr == AVERROR_EXIT)
		return -ECANCELED;
	if (averr == AVERROR_ENCODER_NOT_FOUND || averr == AVERROR_DECODER_NOT_FOUND ||
	    averr == AVERROR_MUXER_NOT_FOUND || averr == AVERROR_PATCHWELCOME ||
	    averr == AVERROR_EXPERIMENTAL)
		return -ENOTSUP;
	/* AVERROR(e) is -e for system errors; anything else is "bad data" */
	if (averr > -4096)
		return averr;
	return -EIO;
}

int video_input_errno(const struct AVFormatContext *fmt)
{
	const struct video_io *io = fmt && fmt->pb ? fmt->pb->opaque : NULL;

	return io ? io->err : 0;
}

/* Free a custom AVIOContext with its buffer and opaque. */
static void video_io_free(AVIOContext **pb)
{
	if (!*pb)
		return;
	free((*pb)->opaque);
	av_freep(&(*pb)->buffer);
	avio_context_free(pb);
}

void video_close_input(struct AVFormatContext **fmt)
{
	AVIOContext *pb;

	if (!*fmt)
		return;
	pb = (*fmt)->pb;
	avformat_close_input(fmt);
	video_io_free(&pb);
}

int video_open_input(int fd, struct AVFormatContext **fmt, struct codec_result *result)
{
	struct video_io *io;
	AVIOContext *pb = NULL;
	AVFormatContext *in = NULL;
	uint8_t *buf;
	char msg[AV_ERROR_MAX_STRING_SIZE];
	int ret;

	pthread_once(&video_log_once, video_log_init);
	io = calloc(1, sizeof(*io));
	buf = av_malloc(VIDEO_IO_BUF);
	if (!io || !buf) {
		free(io);
		av_free(buf);
		return -ENOMEM;
	}
	io->fd = fd;
	pb = avio_alloc_context(buf, VIDEO_IO_BUF, 0, io, video_io_read, NULL, video_io_seek);
	if (!pb) {
		free(io);
		av_free(buf);
		return -ENOMEM;
	}
	in = avformat_alloc_context();
	if (!in) {
		ret = -ENOMEM;
		goto out_free_io;
	}
	in->pb = pb;
	in->flags |= AVFMT_FLAG_CUSTOM_IO;
	ret = avformat_open_input(&in, NULL, NULL, NULL); /* frees in on failure */
	if (ret < 0) {
		if (io->err) {
			ret = -io->err;
			goto out_free_io;
		}
		av_strerror(ret, msg, sizeof(msg));
		codec_keep(result, "unreadable: %s", msg);
		ret = VIDEO_KEPT;
		goto out_free_io;
	}
	ret = avformat_find_stream_info(in, NULL);
	if (ret < 0) {
		av_strerror(ret, msg, sizeof(msg));
		ret = io->err ? -io->err : VIDEO_KEPT;
		if (ret == VIDEO_KEPT)
			codec_keep(result, "unreadable: %s", msg);
		video_close_input(&in);
		return ret;
	}
	*fmt = in;
	return 0;

out_free_io:
	video_io_free(&pb);
	return ret;
}

/* Apply the documented defaults to zeroed fields of opts (may be NULL). */
static void video_defaults(const struct codec_opts *opts, struct codec_opts *o)
{
	if (opts)
		*o = *opts;
	else
		memset(o, 0, sizeof(*o));
	if (o->crf <= 0)
		o->crf = CODEC_DEF_CRF;
	if (!o->preset || !o->preset[0])
		o->preset = CODEC_DEF_PRESET;
	if (o->min_video_ssim <= 0)
		o->min_video_ssim = CODEC_DEF_MIN_VIDEO_SSIM;
}

/* Name of a codec for reasons ("HEVC", "AV1", ...). */
static const char *video_codec_name(enum AVCodecID id)
{
	const AVCodecDescriptor *d = avcodec_descriptor_get(id);

	return d ? d->name : "unknown";
}

/*
 * Decide from the headers whether the source is one we transcode: a known
 * container with a video stream that is not already HEVC/AV1/VP9 and is not
 * a single picture. 0 to go on, VIDEO_KEPT with the reason.
 */
static int video_check_source(AVFormatContext *in, struct codec_result *result)
{
	const AVStream *st;
	size_t i;
	int vi;

	for (i = 0; i < sizeof(video_demuxers) / sizeof(*video_demuxers); i++)
		if (!strcmp(in->iformat->name, video_demuxers[i]))
			break;
	if (i == sizeof(video_demuxers) / sizeof(*video_demuxers)) {
		codec_keep(result, "not a video container (%s)", in->iformat->name);
		return VIDEO_KEPT;
	}
	/* the largest moving picture is the video (as video_transcode picks it) */
	vi = -1;
	for (i = 0; i < in->nb_streams; i++) {
		const AVCodecParameters *par = in->streams[i]->codecpar;
		if (par->codec_type != AVMEDIA_TYPE_VIDEO ||
		    in->streams[i]->disposition & AV_DISPOSITION_ATTACHED_PIC)
			continue;
		if (vi < 0 ||
		    (int64_t)par->width * par->height > (int64_t)in->streams[vi]->codecpar->width *
							    in->streams[vi]->codecpar->height)
			vi = (int)i;
	}
	if (vi < 0) {
		codec_keep(result, "no video stream (audio only or pictures)");
		return VIDEO_KEPT;
	}
	st = in->streams[vi];
	switch (st->codecpar->codec_id) {
	case AV_CODEC_ID_HEVC:
		codec_keep(result, "already HEVC");
		return VIDEO_KEPT;
	case AV_CODEC_ID_AV1:
		codec_keep(result, "already AV1");
		return VIDEO_KEPT;
	case AV_CODEC_ID_VP9:
		codec_keep(result, "already VP9");
		return VIDEO_KEPT;
	case AV_CODEC_ID_NONE:
		codec_keep(result, "unknown video codec");
		return VIDEO_KEPT;
	default:
		break;
	}
	if (st->nb_frames == 1) {
		codec_keep(result, "a single %s picture, not a video",
			   video_codec_name(st->codecpar->codec_id));
		return VIDEO_KEPT;
	}
	if (st->codecpar->width <= 0 || st->codecpar->height <= 0) {
		codec_keep(result, "video stream without a size");
		return VIDEO_KEPT;
	}
	return 0;
}

/* fsync the file at path and report its size. 0 or -errno. */
static int video_sync(const char *path, uint64_t *size)
{
	struct stat st;
	int fd, ret = 0;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd == -1)
		return -errno;
	if (fsync(fd) == -1 || fstat(fd, &st) == -1)
		ret = -errno;
	else
		*size = (uint64_t)st.st_size;
	close(fd);
	return ret;
}

/*
 * Archive the video on src_fd as HEVC in out_path (MP4, or MKV when a stream
 * can only live there), then verify it; the caller keeps the original unless
 * result->archived. 0 (archived or kept with a reason) or -errno.
 */
/*
 * The digests an archived MP4 carries, so the backing tree alone can tell
 * whether it is whole (`fsck --rebuild`, `verify`): a top-level ISO BMFF
 * 'uuid' box appended after everything else, which players skip as they do
 * any box they do not know. Layout (integers big-endian):
 *   0  4  box size (SUMS_BOX_LEN)      4  4  "uuid"
 *   8 16  SUMS_UUID                   24  1  version (1), 25 3 zero
 *  28  8  size of the original        36 32  SHA-256 of the original
 *  68 32  SHA-256 of the whole file with these 32 bytes counted as zeros
 * Matroska has no place for it that every player skips: MKV outputs carry
 * none, and their digests are learnt from the file by a rebuild.
 */
#define SUMS_BOX_LEN 100
#define SUMS_VERSION 1
#define SUMS_ORIG_OFF 36
#define SUMS_SELF_OFF 68
static const uint8_t SUMS_UUID[16] = {0xdd, 0x5d, 0x88, 0xb1, 0x6b, 0x6b, 0x4d, 0x86,
				      0x8b, 0x06, 0xdf, 0x61, 0x0f, 0xdf, 0xad, 0xa1};

static void be_put(uint8_t *p, uint64_t v, int n)
{
	for (int i = n - 1; i >= 0; i--, v >>= 8)
		p[i] = (uint8_t)v;
}

static uint64_t be_get(const uint8_t *p, int n)
{
	uint64_t v = 0;

	for (int i = 0; i < n; i++)
		v = v << 8 | p[i];
	return v;
}

/* Write all of buf at off. 0 or -errno. */
static int pwrite_all(int fd, const uint8_t *buf, size_t len, off_t off)
{
	while (len) {
		ssize_t n = pwrite(fd, buf, len, off);
		if (n == -1 && errno == EINTR)
			continue;
		if (n == -1)
			return -errno;
		buf += n, len -= (size_t)n, off += n;
	}
	return 0;
}

/* Append the digests box to the MP4 at path (the original on src_fd) and
 * sync it; *size grows by the box. 0 or -errno. */
static int append_sums(int src_fd, const char *path, uint64_t *size)
{
	uint8_t box[SUMS_BOX_LEN] = {0}, self[SUM_LEN];
	struct sum_file orig, whole;
	int fd, ret;

	ret = sum_file(src_fd, 0, 0, 0, NULL, NULL, &orig);
	if (ret)
		return ret;
	be_put(box, SUMS_BOX_LEN, 4);
	memcpy(box + 4, "uuid", 4);
	memcpy(box + 8, SUMS_UUID, sizeof(SUMS_UUID));
	box[24] = SUMS_VERSION;
	be_put(box + 28, orig.size, 8);
	memcpy(box + SUMS_ORIG_OFF, orig.whole, SUM_LEN);
	fd = open(path, O_RDWR | O_CLOEXEC);
	if (fd == -1)
		return -errno;
	ret = pwrite_all(fd, box, sizeof(box), (off_t)*size);
	if (!ret)
		ret = sum_file(fd, 0, *size + SUMS_SELF_OFF, SUM_LEN, NULL, NULL, &whole);
	if (!ret) {
		memcpy(self, whole.whole, SUM_LEN);
		ret = pwrite_all(fd, self, SUM_LEN, (off_t)(*size + SUMS_SELF_OFF));
	}
	if (!ret && fsync(fd) == -1)
		ret = -errno;
	if (close(fd) == -1 && !ret)
		ret = -errno;
	if (!ret)
		*size += SUMS_BOX_LEN;
	return ret;
}

int video_embedded_sums(int fd, uint8_t orig[SUM_LEN], uint8_t self[SUM_LEN], uint64_t *self_off,
			uint64_t *orig_bytes)
{
	uint8_t box[SUMS_BOX_LEN];
	struct stat st;
	ssize_t n;

	if (fstat(fd, &st) == -1)
		return -errno;
	if (st.st_size < SUMS_BOX_LEN)
		return 0;
	n = pread(fd, box, sizeof(box), st.st_size - SUMS_BOX_LEN);
	if (n == -1)
		return -errno;
	if (n != SUMS_BOX_LEN || be_get(box, 4) != SUMS_BOX_LEN || memcmp(box + 4, "uuid", 4) ||
	    memcmp(box + 8, SUMS_UUID, sizeof(SUMS_UUID)) || box[24] != SUMS_VERSION)
		return 0;
	*orig_bytes = be_get(box + 28, 8);
	memcpy(orig, box + SUMS_ORIG_OFF, SUM_LEN);
	memcpy(self, box + SUMS_SELF_OFF, SUM_LEN);
	*self_off = (uint64_t)st.st_size - SUMS_BOX_LEN + SUMS_SELF_OFF;
	return 1;
}

int video_archive(int src_fd, const char *out_path, const struct codec_opts *opts,
		  struct codec_result *result)
{
	struct codec_opts o;
	struct video_log log = {0};
	AVFormatContext *in = NULL;
	struct stat st;
	uint64_t stored = 0;
	int ret;

	video_defaults(opts, &o);
	if (fstat(src_fd, &st) == -1)
		return -errno;
	result->orig_bytes = (uint64_t)st.st_size;
	ret = video_open_input(src_fd, &in, result);
	if (ret)
		goto out;
	ret = video_check_source(in, result);
	if (ret)
		goto out_close_input;
	ret = video_transcode(in, out_path, &o, &log, result);
	video_close_input(&in);
	if (ret)
		goto out_release_log;
	ret = video_sync(out_path, &stored);
	if (ret)
		goto out_release_log;
	if ((double)stored > VIDEO_MAX_SIZE_RATIO * (double)result->orig_bytes) {
		codec_keep(result, "not smaller: %llu bytes for %llu", (unsigned long long)stored,
			   (unsigned long long)result->orig_bytes);
		ret = VIDEO_KEPT;
		goto out_release_log;
	}
	ret = video_verify(out_path, &o, &log, result);
	if (ret)
		goto out_release_log;
	if (!log.mkv && (ret = append_sums(src_fd, out_path, &stored)))
		goto out_release_log;
	result->archived = 1;
	result->reason[0] = '\0';
	snprintf(result->suffix, sizeof(result->suffix), "%s", log.mkv ? ".mkv" : ".mp4");
	result->quality = o.crf;
	result->stored_bytes = stored;
	result->view_bytes = stored;

out_release_log:
	video_log_release(&log);
out_close_input:
	video_close_input(&in);
out:
	return ret == VIDEO_KEPT ? 0 : ret;
}
