/*
 * test_video — the video half of codec/: sniffing, and video_archive() on
 * small clips made at test time with the ffmpeg CLI (preset ultrafast),
 * checked with ffprobe: HEVC/hvc1, every frame and pts, streams, tags,
 * rotation, chapters, cover art, timecode, audio copied byte for byte, and
 * kept files untouched; and that verification catches a changed byte.
 */
#include "../../codec/internal.h"
#include "check.h"

#include <libavformat/avformat.h>
#include <libavutil/mastering_display_metadata.h>

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Tiny synthetic clips at ultrafast need a finer CRF than the default to
 * stay over the SSIM floor; sources are made near-lossless (x264 -crf 8) so
 * the result is still much smaller. */
#define TEST_CRF 18
#define X264 "-c:v libx264 -preset ultrafast -crf 8 "

static char tmpdir[64];
static int progress_calls;

/* Run a shell command built from fmt; its exit status. */
static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int sh(const char *fmt, ...)
{
	char cmd[4096];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	return system(cmd);
}

/* Run a command and return its stdout, malloc'd (NULL on failure). */
static char *out_of(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *out_of(const char *fmt, ...)
{
	char cmd[4096];
	va_list ap;
	FILE *p;
	char *buf = NULL;
	size_t len = 0, cap = 0, n;

	va_start(ap, fmt);
	vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	p = popen(cmd, "r");
	if (!p)
		return NULL;
	do {
		if (cap - len < 4096) {
			cap = cap ? 2 * cap : 8192;
			buf = realloc(buf, cap);
			if (!buf)
				abort();
		}
		n = fread(buf + len, 1, cap - len - 1, p);
		len += n;
	} while (n > 0);
	buf[len] = '\0';
	pclose(p);
	return buf;
}

/* Path of name in the temp dir (16 static buffers in rotation). */
static const char *path(const char *name)
{
	static char bufs[16][256];
	static int i;
	char *b = bufs[i++ & 15];

	snprintf(b, 256, "%s/%s", tmpdir, name);
	return b;
}

/* Make a fixture with the ffmpeg CLI (quiet); the args follow "ffmpeg -y". */
#define MAKE(...) CHECK(sh("ffmpeg -nostdin -hide_banner -loglevel error -y " __VA_ARGS__) == 0)

static void on_progress(void *arg, uint64_t done, uint64_t total, double fps)
{
	(void)arg, (void)fps;
	if (done <= total)
		progress_calls++;
}

/* Archive src into dst with test options; returns video_archive's value. */
static int archive(const char *src, const char *dst, struct codec_result *r)
{
	struct codec_opts o = {.preset = "ultrafast", .crf = TEST_CRF, .progress = on_progress};
	int fd = open(src, O_RDONLY), ret;

	CHECK(fd >= 0);
	memset(r, 0, sizeof(*r));
	ret = video_archive(fd, dst, &o, r);
	close(fd);
	if (!r->archived)
		fprintf(stderr, "  (kept %s: %s)\n", src, r->reason);
	return ret;
}

/* MD5 of a file, for "kept files untouched". */
static char *md5(const char *file)
{
	return out_of("md5sum < '%s'", file);
}

/* ffprobe entries as csv, one line per item (side data lines dropped). */
static char *probe(const char *file, const char *sel, const char *entries)
{
	return out_of("ffprobe -v error %s%s -show_entries %s -of csv=p=0 '%s' | grep -v '^$' | "
		      "sed 's/,*$//'",
		      sel[0] ? "-select_streams " : "", sel, entries, file);
}

/* Number of lines in s. */
static int lines(const char *s)
{
	int n = 0;
	for (; *s; s++)
		n += *s == '\n';
	return n;
}

/* Every video frame's pts of a file as seconds (one per line, sorted by
 * ffprobe's presentation order), to compare source and result. */
static char *frame_times(const char *file)
{
	return out_of("ffprobe -v error -select_streams v:0 -show_entries frame=pts_time "
		      "-of csv=p=0 '%s' | cut -d, -f1 | grep -v '^$' | sort -g",
		      file);
}

/* Relative frame times: subtract the first one, 6 decimals. */
static char *relative(const char *times)
{
	size_t len = strlen(times);
	char *o = calloc(1, len * 2 + 64), *w = o;
	const char *p = times;
	double first = 0;
	int i = 0;

	while (*p) {
		double t = strtod(p, NULL);
		if (!i++)
			first = t;
		w += sprintf(w, "%.6f\n", t - first);
		p = strchr(p, '\n');
		if (!p)
			break;
		p++;
	}
	return o;
}

/* A file's frame times relative to its first frame. */
static char *rel_times(const char *file)
{
	char *t = frame_times(file), *r = relative(t ? t : "");

	free(t);
	return r;
}

/* Set a 90-degree rotation display matrix in the first tkhd of an MP4 (the
 * video track): ffmpeg 5.1's CLI has no option for it. */
static void rotate_mp4(const char *file)
{
	static const uint32_t m[9] = {0, 0x10000, 0, 0xFFFF0000u, 0, 0, 0, 0, 0x40000000};
	uint8_t *buf;
	size_t len;
	int fd = open(file, O_RDWR);

	CHECK(fd >= 0);
	CHECK(codec_read_all(fd, 1 << 26, &buf, &len) == 0);
	for (size_t i = 4; i + 84 < len; i++) {
		if (memcmp(buf + i, "tkhd", 4))
			continue;
		/* version 0: 4+4+4+4+4+4+8+2+2+2+2 bytes after the type */
		size_t off = i + 4 +
			     (buf[i + 4] == 1 ? 4 + 8 + 8 + 4 + 4 + 8 : 4 + 4 + 4 + 4 + 4 + 4) + 8 +
			     8;
		for (int k = 0; k < 9; k++) {
			uint8_t be[4] = {m[k] >> 24, m[k] >> 16, m[k] >> 8, m[k]};
			CHECK(pwrite(fd, be, 4, (off_t)(off + 4 * k)) == 4);
		}
		break;
	}
	free(buf);
	close(fd);
}

static void test_sniff(void)
{
	uint8_t b[4096] = {0};

	memcpy(b,
	       "\0\0\0\x18"
	       "ftypisom",
	       12);
	CHECK(video_sniff(b, 12));
	memcpy(b,
	       "\0\0\0\x18"
	       "ftypheic",
	       12);
	CHECK(!video_sniff(b, 12));
	memcpy(b,
	       "\0\0\0\x18"
	       "ftypmif1",
	       12);
	CHECK(!video_sniff(b, 12));
	memcpy(b,
	       "\0\0\0\x18"
	       "ftypavif",
	       12);
	CHECK(!video_sniff(b, 12));
	memcpy(b,
	       "\0\0\0\x18"
	       "ftypqt  ",
	       12);
	CHECK(video_sniff(b, 12));
	CHECK(!video_sniff(b, 8)); /* never past n */
	memcpy(b, "RIFF\0\0\0\0AVI ", 12);
	CHECK(video_sniff(b, 12));
	memcpy(b, "RIFF\0\0\0\0WAVE", 12);
	CHECK(!video_sniff(b, 12));
	memcpy(b, "\x1A\x45\xDF\xA3", 4);
	CHECK(video_sniff(b, 4));
	memcpy(b, "\0\0\x01\xBA", 4);
	CHECK(video_sniff(b, 4));
	memcpy(b, "OggS", 4);
	CHECK(video_sniff(b, 4));
	memcpy(b, "FLV\x01\x05", 5);
	CHECK(video_sniff(b, 5));
	memcpy(b, "\x30\x26\xB2\x75\x8E\x66\xCF\x11\xA6\xD9\x00\xAA\x00\x62\xCE\x6C", 16);
	CHECK(video_sniff(b, 16));
	memset(b, 0, sizeof(b));
	for (int i = 0; i < 4096; i += 188)
		b[i] = 0x47;
	CHECK(video_sniff(b, sizeof(b)));
	b[376] = 0;
	CHECK(!video_sniff(b, sizeof(b)));
	memset(b, 0, sizeof(b));
	for (int i = 4; i < 4096; i += 192)
		b[i] = 0x47;
	CHECK(video_sniff(b, sizeof(b)));
	memset(b, 0, sizeof(b));
	memcpy(b, "\xFF\xD8\xFF\xE0", 4);
	CHECK(!video_sniff(b, sizeof(b)));
	CHECK(!video_sniff(b, 0));
}

/* H.264 + AAC MP4 with tags and a rotation: archived to HEVC hvc1 with
 * every pts, the matrix, the tags and the audio packets unchanged. */
static void test_mp4_basic(void)
{
	const char *src = path("basic.mp4"), *dst = path("basic.out.mp4");
	struct codec_result r;
	char *before, *after, *s, *d;

	MAKE("-f lavfi -i testsrc2=size=320x240:rate=30 -f lavfi -i sine=f=440:sample_rate=48000 "
	     "-t 2 " X264 "-c:a aac -b:a 96k "
	     "-metadata creation_time=2024-05-01T10:00:00Z -metadata location=+48.8577+002.2950/ "
	     "-metadata make=Apple -metadata model='iPhone 12' "
	     "-metadata com.apple.quicktime.location.ISO6709=+48.8577+002.2950+035.000/ "
	     "-metadata com.android.version=13 -movflags +use_metadata_tags '%s'",
	     src);
	rotate_mp4(src);
	before = md5(src);
	progress_calls = 0;
	CHECK_EQ(archive(src, dst, &r), 0);
	CHECK(r.archived);
	CHECK(!strcmp(r.suffix, ".mp4"));
	CHECK(r.ssim >= CODEC_DEF_MIN_VIDEO_SSIM && r.ssim <= 1.0);
	CHECK_EQ(r.quality, TEST_CRF);
	CHECK(r.stored_bytes > 0 && r.stored_bytes == r.view_bytes);
	CHECK(r.stored_bytes <= r.orig_bytes * 9 / 10);
	CHECK(progress_calls > 0);
	after = md5(src);
	CHECK(!strcmp(before, after));
	free(before), free(after);

	s = probe(dst, "v:0", "stream=codec_name,codec_tag_string");
	CHECK(!strcmp(s, "hevc,hvc1\n"));
	free(s);
	s = rel_times(src);
	d = rel_times(dst);
	CHECK_EQ(lines(s), 60);
	CHECK(!strcmp(s, d));
	free(s), free(d);
	s = out_of("ffprobe -v error -select_streams v:0 -show_streams '%s' | grep -i rotation",
		   src);
	d = out_of("ffprobe -v error -select_streams v:0 -show_streams '%s' | grep -i rotation",
		   dst);
	CHECK(strstr(s, "90"));
	CHECK(!strcmp(s, d));
	free(s), free(d);
	s = probe(dst, "", "format_tags=creation_time,location,make,model,com.android.version");
	CHECK(strstr(s, "2024-05-01T10:00:00"));
	CHECK(strstr(s, "+48.8577+002.2950/"));
	CHECK(strstr(s, "Apple"));
	CHECK(strstr(s, "iPhone 12"));
	CHECK(strstr(s, "13"));
	free(s);
	s = probe(dst, "", "format_tags=com.apple.quicktime.location.ISO6709");
	CHECK(strstr(s, "+48.8577+002.2950+035.000/"));
	free(s);
	s = out_of("ffprobe -v error -select_streams a:0 -show_entries packet=pts,data_hash "
		   "-show_data_hash MD5 -of csv=p=0 '%s'",
		   src);
	d = out_of("ffprobe -v error -select_streams a:0 -show_entries packet=pts,data_hash "
		   "-show_data_hash MD5 -of csv=p=0 '%s'",
		   dst);
	CHECK(lines(s) > 50);
	CHECK(!strcmp(s, d));
	free(s), free(d);
}

/* Variable frame rate, two audio tracks, a mov_text subtitle: every frame
 * keeps its own pts, every stream is there. */
static void test_vfr_multi(void)
{
	const char *src = path("vfr.mp4"), *dst = path("vfr.out.mp4"), *srt = path("s.srt");
	struct codec_result r;
	char *s, *d;
	FILE *f = fopen(srt, "w");

	CHECK(f);
	fprintf(f, "1\n00:00:00,200 --> 00:00:01,000\nhello\n\n2\n00:00:01,200 --> 00:00:02,000\n"
		   "world\n\n");
	fclose(f);
	MAKE("-f lavfi -i testsrc2=size=160x120:rate=30 -f lavfi -i sine=f=440 -f lavfi "
	     "-i sine=f=880:sample_rate=44100 -i '%s' -t 2 -map 0:v -map 1:a -map 2:a -map 3:s "
	     "-vf "
	     "\"settb=1/1000,setpts='N/30/TB+if(gt(N,20),0.25/TB,0)+if(eq(mod(N,7),3),0.011/"
	     "TB,0)'\" "
	     "-fps_mode passthrough " X264 "-c:a aac -c:s mov_text '%s'",
	     srt, src);
	CHECK_EQ(archive(src, dst, &r), 0);
	CHECK(r.archived);
	s = rel_times(src);
	d = rel_times(dst);
	CHECK(lines(s) >= 50);
	CHECK(!strcmp(s, d));
	free(s), free(d);
	s = probe(dst, "", "stream=codec_type,codec_name");
	CHECK(!strcmp(s, "hevc,video\naac,audio\naac,audio\nmov_text,subtitle\n"));
	free(s);
	for (int i = 0; i < 2; i++) {
		s = out_of(
		    "ffprobe -v error -select_streams a:%d -show_entries packet=pts,data_hash "
		    "-show_data_hash MD5 -of csv=p=0 '%s'",
		    i, src);
		d = out_of(
		    "ffprobe -v error -select_streams a:%d -show_entries packet=pts,data_hash "
		    "-show_data_hash MD5 -of csv=p=0 '%s'",
		    i, dst);
		CHECK(!strcmp(s, d));
		free(s), free(d);
	}
	s = probe(src, "s:0", "packet=pts_time,duration_time,size");
	d = probe(dst, "s:0", "packet=pts_time,duration_time,size");
	CHECK(lines(s) >= 2);
	CHECK(!strcmp(s, d));
	free(s), free(d);
}

/* A 10-bit source becomes Main 10. */
static void test_10bit(void)
{
	const char *src = path("ten.mkv"), *dst = path("ten.out.mp4");
	struct codec_result r;
	char *s;

	MAKE("-f lavfi -i testsrc2=size=128x96:rate=25 -t 1 " X264 ""
	     "-pix_fmt yuv420p10le -color_primaries bt2020 -color_trc smpte2084 "
	     "-colorspace bt2020nc '%s'",
	     src);
	CHECK_EQ(archive(src, dst, &r), 0);
	CHECK(r.archived);
	s = probe(dst, "v:0", "stream=pix_fmt,profile,color_primaries,color_transfer,color_space");
	CHECK(!strcmp(s, "Main 10,yuv420p10le,bt2020nc,smpte2084,bt2020\n"));
	free(s);
}

/* Remux src into a Matroska dst whose video track carries HDR10
 * mastering-display (BT.2020 primaries, D65, 1000 / 0.005 cd/m2) and
 * content-light (1000 / 400) metadata, as a container holds them (ffmpeg's
 * command line cannot set them). 0 or a libav error. */
static int remux_with_hdr(const char *src, const char *dst)
{
	AVFormatContext *in = NULL, *out = NULL;
	AVPacket *pkt = av_packet_alloc();
	AVMasteringDisplayMetadata *md;
	AVContentLightMetadata *cl;
	int ret = pkt ? avformat_open_input(&in, src, NULL, NULL) : AVERROR(ENOMEM);

	if (ret >= 0)
		ret = avformat_find_stream_info(in, NULL);
	if (ret >= 0)
		ret = avformat_alloc_output_context2(&out, NULL, "matroska", dst);
	for (unsigned i = 0; ret >= 0 && i < in->nb_streams; i++) {
		AVStream *os = avformat_new_stream(out, NULL);
		ret = os ? avcodec_parameters_copy(os->codecpar, in->streams[i]->codecpar)
			 : AVERROR(ENOMEM);
		if (ret >= 0)
			os->codecpar->codec_tag = 0;
	}
	if (ret >= 0) {
		md = (void *)av_stream_new_side_data(
		    out->streams[0], AV_PKT_DATA_MASTERING_DISPLAY_METADATA, sizeof(*md));
		cl = (void *)av_stream_new_side_data(out->streams[0],
						     AV_PKT_DATA_CONTENT_LIGHT_LEVEL, sizeof(*cl));
		if (!md || !cl)
			ret = AVERROR(ENOMEM);
	}
	if (ret >= 0) {
		static const int prim[3][2] = {{708, 292}, {170, 797}, {131, 46}};
		for (int c = 0; c < 3; c++)
			for (int k = 0; k < 2; k++)
				md->display_primaries[c][k] = av_make_q(prim[c][k], 1000);
		md->white_point[0] = av_make_q(3127, 10000);
		md->white_point[1] = av_make_q(3290, 10000);
		md->max_luminance = av_make_q(1000, 1);
		md->min_luminance = av_make_q(50, 10000);
		md->has_primaries = md->has_luminance = 1;
		cl->MaxCLL = 1000;
		cl->MaxFALL = 400;
		ret = avio_open(&out->pb, dst, AVIO_FLAG_WRITE);
	}
	if (ret >= 0)
		ret = avformat_write_header(out, NULL);
	while (ret >= 0 && (ret = av_read_frame(in, pkt)) >= 0) {
		av_packet_rescale_ts(pkt, in->streams[pkt->stream_index]->time_base,
				     out->streams[pkt->stream_index]->time_base);
		ret = av_interleaved_write_frame(out, pkt);
	}
	if (ret == AVERROR_EOF)
		ret = av_write_trailer(out);
	if (out)
		avio_closep(&out->pb);
	avformat_free_context(out);
	avformat_close_input(&in);
	av_packet_free(&pkt);
	return ret < 0 ? ret : 0;
}

/* HDR10: the mastering display and content light level reach the HEVC
 * stream (x265 writes them as SEI), with the BT.2020/PQ colour. */
static void test_hdr(void)
{
	const char *raw = path("hdr.raw.mkv"), *src = path("hdr.mkv"), *dst = path("hdr.out.mp4");
	struct codec_result r;
	char *s;

	MAKE("-f lavfi -i testsrc2=size=128x96:rate=25 -t 1 " X264 ""
	     "-pix_fmt yuv420p10le -color_primaries bt2020 -color_trc smpte2084 "
	     "-colorspace bt2020nc '%s'",
	     raw);
	CHECK_EQ(remux_with_hdr(raw, src), 0);
	s = out_of("ffprobe -v error -show_streams '%s'", src);
	CHECK(s && strstr(s, "max_luminance=1000/1") && strstr(s, "max_content=1000"));
	free(s);
	CHECK_EQ(archive(src, dst, &r), 0);
	CHECK(r.archived);
	s = probe(dst, "v:0", "stream=codec_name,pix_fmt,color_primaries,color_transfer");
	CHECK(s && !strcmp(s, "hevc,yuv420p10le,smpte2084,bt2020\n"));
	free(s);
	/* the first frame's side data, from the SEI x265 wrote */
	s = out_of("ffprobe -v error -select_streams v:0 -read_intervals %%+#1 -show_frames '%s'",
		   dst);
	CHECK(s && strstr(s, "red_x=35400/50000") && strstr(s, "green_y=39850/50000") &&
	      strstr(s, "white_point_x=15635/50000") && strstr(s, "max_luminance=10000000/10000") &&
	      strstr(s, "min_luminance=50/10000") && strstr(s, "max_content=1000") &&
	      strstr(s, "max_average=400"));
	free(s);
}

/* MPEG-2 + MP2 in MPEG-PS: video to HEVC, MP2 to AAC (MP4 players lack it). */
static void test_mpeg_ps(void)
{
	const char *src = path("ps.mpg"), *dst = path("ps.out");
	struct codec_result r;
	char *s, *d;

	MAKE("-f lavfi -i testsrc2=size=320x240:rate=25 -f lavfi -i sine=sample_rate=48000 -t 2 "
	     "-c:v mpeg2video -q:v 2 -c:a mp2 -b:a 192k -f vob '%s'",
	     src);
	CHECK_EQ(archive(src, dst, &r), 0);
	CHECK(r.archived);
	s = probe(dst, "", "stream=codec_name");
	CHECK(!strcmp(s, "hevc\naac\n"));
	free(s);
	s = rel_times(src);
	d = rel_times(dst);
	CHECK(!strcmp(s, d));
	free(s), free(d);
}

/* Theora + Vorbis in Ogg, and the same with broken audio timestamps (the
 * issue's 102 s MP4 of an 8 s source): the latter is kept. */
static void test_ogg(void)
{
	const char *src = path("t.ogg"), *dst = path("t.out"), *mka = path("a.mka");
	const char *bad = path("bad.ogg"), *badout = path("bad.out");
	struct codec_result r;
	char *s;

	MAKE("-f lavfi -i testsrc2=size=320x240:rate=25 -f lavfi -i sine -t 2 -c:v libtheora "
	     "-q:v 10 -c:a libvorbis '%s'",
	     src);
	CHECK_EQ(archive(src, dst, &r), 0);
	CHECK(r.archived);
	s = probe(dst, "", "stream=codec_name");
	CHECK(!strcmp(s, "hevc\naac\n"));
	free(s);

	MAKE("-f lavfi -i sine -t 2 -c:a libvorbis '%s'", mka);
	MAKE("-i '%s' -i '%s' -map 0:v -map 1:a -c copy -bsf:a setts=pts=PTS*12:dts=DTS*12 '%s'",
	     src, mka, bad);
	s = md5(bad);
	CHECK_EQ(archive(bad, badout, &r), 0);
	CHECK(!r.archived);
	CHECK(strstr(r.reason, "audio") || strstr(r.reason, "lasts"));
	{
		char *t = md5(bad);
		CHECK(!strcmp(s, t));
		free(t);
	}
	free(s);
}

/* ASS subtitles can only live in MKV. */
static void test_mkv_ass(void)
{
	const char *src = path("ass.mkv"), *dst = path("ass.out"), *srt = path("a.srt");
	struct codec_result r;
	char *s;
	FILE *f = fopen(srt, "w");

	CHECK(f);
	fprintf(f, "1\n00:00:00,100 --> 00:00:01,000\n{\\b1}bold{\\b0}\n\n");
	fclose(f);
	MAKE("-f lavfi -i testsrc2=size=160x120:rate=25 -f lavfi -i sine -i '%s' -t 2 "
	     "-map 0:v -map 1:a -map 2:s " X264 "-c:a libvorbis -c:s ass "
	     "-metadata:s:a:0 language=fra '%s'",
	     srt, src);
	CHECK_EQ(archive(src, dst, &r), 0);
	CHECK(r.archived);
	CHECK(!strcmp(r.suffix, ".mkv"));
	s = probe(dst, "", "stream=codec_name:stream_tags=language");
	CHECK(!strcmp(s, "hevc\nvorbis,fra\nass\n"));
	free(s);
}

/* Odd sizes (x265 wants even ones) with an odd SAR. */
static void test_odd_size(void)
{
	const char *src = path("odd.avi"), *dst = path("odd.out");
	struct codec_result r;
	char *s, *d;

	MAKE("-f lavfi -i testsrc2=size=66x50:rate=25 -t 1 -vf scale=65:49,setsar=3/2 -c:v mjpeg "
	     "-q:v 2 "
	     "-pix_fmt yuvj420p '%s'",
	     src);
	CHECK_EQ(archive(src, dst, &r), 0);
	CHECK(r.archived);
	s = probe(dst, "v:0", "stream=width,height,sample_aspect_ratio");
	CHECK(!strcmp(s, "66,50,3:2\n"));
	free(s);
	s = rel_times(src);
	d = rel_times(dst);
	CHECK(!strcmp(s, d));
	free(s), free(d);
}

/* Chapters (from an ffmetadata file) come through with their times and
 * titles, and so does the global title. */
static void test_chapters(void)
{
	const char *src = path("chap.mp4"), *dst = path("chap.out.mp4"), *meta = path("chap.txt");
	struct codec_result r;
	char *s, *d;
	FILE *f = fopen(meta, "w");

	CHECK(f);
	fprintf(f, ";FFMETADATA1\ntitle=Chaptered\n"
		   "[CHAPTER]\nTIMEBASE=1/1000\nSTART=0\nEND=800\ntitle=First part\n"
		   "[CHAPTER]\nTIMEBASE=1/1000\nSTART=800\nEND=2000\ntitle=Second part\n");
	fclose(f);
	MAKE("-f lavfi -i testsrc2=size=160x120:rate=25 -f lavfi -i sine -i '%s' -t 2 "
	     "-map 0:v -map 1:a -map_metadata 2 -map_chapters 2 " X264 "-c:a aac '%s'",
	     meta, src);
	CHECK_EQ(archive(src, dst, &r), 0);
	CHECK(r.archived);
	s = probe(src, "", "chapter=start_time,end_time:chapter_tags=title");
	d = probe(dst, "", "chapter=start_time,end_time:chapter_tags=title");
	CHECK(!strcmp(s, "0.000000,0.800000,First part\n0.800000,2.000000,Second part\n"));
	CHECK(!strcmp(s, d));
	free(s), free(d);
	s = probe(dst, "", "format_tags=title");
	CHECK(!strcmp(s, "Chaptered\n"));
	free(s);
}

/* Cover art (an attached PNG picture in MP4) stays a cover, byte for byte. */
static void test_cover_art(void)
{
	const char *src = path("cover.mp4"), *dst = path("cover.out.mp4"), *png = path("cover.png");
	struct codec_result r;
	char *s, *d;

	MAKE("-f lavfi -i testsrc2=size=64x48 -frames:v 1 '%s'", png);
	MAKE(
	    "-f lavfi -i testsrc2=size=160x120:rate=25 -i '%s' -t 2 -map 0:v -map 1:v "
	    "-c:v:0 libx264 -preset ultrafast -crf 8 -c:v:1 png -disposition:v:1 attached_pic '%s'",
	    png, src);
	CHECK_EQ(archive(src, dst, &r), 0);
	CHECK(r.archived);
	s = probe(dst, "", "stream=codec_name:stream_disposition=attached_pic");
	CHECK(!strcmp(s, "hevc,0\npng,1\n"));
	free(s);
	s = out_of("ffprobe -v error -select_streams v:1 -show_entries packet=size,data_hash "
		   "-show_data_hash MD5 -of csv=p=0 '%s'",
		   src);
	d = out_of("ffprobe -v error -select_streams v:1 -show_entries packet=size,data_hash "
		   "-show_data_hash MD5 -of csv=p=0 '%s'",
		   dst);
	CHECK_EQ(lines(s), 1);
	CHECK(!strcmp(s, d));
	free(s), free(d);
}

/* A timecode track (tmcd) is rebuilt from the video's timecode. */
static void test_timecode(void)
{
	const char *src = path("tc.mp4"), *dst = path("tc.out.mp4");
	struct codec_result r;
	char *s;

	MAKE("-f lavfi -i testsrc2=size=160x120:rate=25 -t 1 " X264 "-timecode 01:00:00:00 '%s'",
	     src);
	CHECK_EQ(archive(src, dst, &r), 0);
	CHECK(r.archived);
	s = probe(dst, "", "stream=codec_type,codec_tag_string:stream_tags=timecode");
	CHECK(!strcmp(s, "video,hvc1,01:00:00:00\ndata,tmcd,01:00:00:00\n"));
	free(s);
}

/* What is kept: HEVC already, audio only, truncated, corrupt. Never
 * touched, never a crash. */
static void test_kept(void)
{
	const char *hevc = path("h.mp4"), *aud = path("a.m4a"), *dst = path("k.out");
	const char *full = path("full.mp4"), *cut = path("cut.mp4"), *fs = path("fs.mp4");
	const char *bad = path("corrupt.mp4");
	struct codec_result r;
	struct stat st;
	char *s, *t;

	MAKE("-f lavfi -i testsrc2=size=96x64:rate=25 -t 1 -c:v libx265 -preset ultrafast "
	     "-x265-params log-level=error '%s'",
	     hevc);
	s = md5(hevc);
	CHECK_EQ(archive(hevc, dst, &r), 0);
	CHECK(!r.archived);
	CHECK(!strcmp(r.reason, "already HEVC"));
	t = md5(hevc);
	CHECK(!strcmp(s, t));
	free(s), free(t);

	MAKE("-f lavfi -i sine -t 1 -c:a aac '%s'", aud);
	CHECK_EQ(archive(aud, dst, &r), 0);
	CHECK(!r.archived);
	CHECK(strstr(r.reason, "no video"));

	MAKE("-f lavfi -i testsrc2=size=320x240:rate=25 -f lavfi -i sine -t 3 -c:v libx264 "
	     "-preset ultrafast -c:a aac '%s'",
	     full);
	MAKE("-i '%s' -c copy -movflags +faststart '%s'", full, fs);
	CHECK(stat(full, &st) == 0);
	CHECK(sh("head -c %lld '%s' > '%s'", (long long)st.st_size / 2, full, cut) == 0);
	CHECK_EQ(archive(cut, dst, &r), 0); /* moov at the end: gone */
	CHECK(!r.archived);
	CHECK(sh("head -c %lld '%s' > '%s'", (long long)st.st_size / 2, fs, cut) == 0);
	CHECK_EQ(archive(cut, dst, &r), 0); /* moov first, half the samples missing */
	CHECK(!r.archived);

	CHECK(sh("cp '%s' '%s'", fs, bad) == 0);
	for (int k = 1; k < 8; k++)
		CHECK(sh("dd if=/dev/urandom of='%s' bs=1 count=2000 seek=%lld conv=notrunc "
			 "status=none",
			 bad, (long long)st.st_size * k / 8) == 0);
	s = md5(bad);
	CHECK_EQ(archive(bad, dst, &r), 0);
	CHECK(!r.archived);
	t = md5(bad);
	CHECK(!strcmp(s, t));
	free(s), free(t);
}

/* An SSIM floor no encode reaches keeps the original, saying so: the
 * sampled frames really are compared. */
static void test_ssim_floor(void)
{
	const char *src = path("basic.mp4"), *dst = path("floor.out");
	struct codec_opts o = {.preset = "ultrafast", .crf = TEST_CRF, .min_video_ssim = 0.99999};
	struct codec_result r = {0};
	int fd = open(src, O_RDONLY);

	CHECK(fd >= 0);
	CHECK_EQ(video_archive(fd, dst, &o, &r), 0);
	close(fd);
	CHECK(!r.archived);
	CHECK(strstr(r.reason, "SSIM"));
	CHECK(r.ssim > 0.9 && r.ssim < 0.99999);
}

/* The digest of a packet as x265 gives it (Annex B: 4- and 3-byte start
 * codes) is the digest of the same packet as the muxers write it (4-byte
 * lengths); one changed byte changes it. */
static void test_digest(void)
{
	static const uint8_t annexb[] = {0, 0,	  0,	1,    0x40, 0x01, 0x0c, 0,
					 0, 1,	  0x42, 0x01, 0x01, 0x60, 0,	0,
					 1, 0x26, 0x01, 0xaf, 0x00, 0x03};
	static const uint8_t mp4[] = {0, 0, 0, 3,    0x40, 0x01, 0x0c, 0,
				      0, 0, 4, 0x42, 0x01, 0x01, 0x60, 0,
				      0, 0, 5, 0x26, 0x01, 0xaf, 0x00, 0x03};
	uint8_t copy[sizeof(mp4)];
	uint64_t h = video_digest_annexb(VIDEO_DIGEST_INIT, 7, annexb, sizeof(annexb));

	CHECK(h == video_digest_packet(VIDEO_DIGEST_INIT, 7, mp4, sizeof(mp4)));
	CHECK(h != video_digest_packet(VIDEO_DIGEST_INIT, 8, mp4, sizeof(mp4)));
	for (size_t i = 0; i < sizeof(mp4); i++) {
		memcpy(copy, mp4, sizeof(mp4));
		copy[i] ^= 0x10;
		CHECK(h != video_digest_packet(VIDEO_DIGEST_INIT, 7, copy, sizeof(copy)));
	}
}

/* Verification reads the written file: one flipped byte in its video data
 * (demuxing still fine), or parameter sets other than the encoder's, and
 * the result is kept. */
static void test_verify_bytes(void)
{
	const char *src = path("basic.mp4"), *dst = path("flip.out.mp4");
	struct codec_opts o = {.preset = "ultrafast", .crf = TEST_CRF, .min_video_ssim = 0.9};
	struct codec_result r = {0};
	struct video_log log = {0};
	struct AVFormatContext *in = NULL;
	long long pos = 0, size = 0;
	uint8_t b;
	char *s;
	int fd = open(src, O_RDONLY), out;

	CHECK(fd >= 0);
	CHECK_EQ(video_open_input(fd, &in, &r), 0);
	CHECK_EQ(video_transcode(in, dst, &o, &log, &r), 0);
	video_close_input(&in);
	close(fd);
	CHECK(log.nb_samples >= 8 && log.nb_checked == log.nb_samples);
	CHECK_EQ(video_verify(dst, &o, &log, &r), 0);

	/* the 20th video packet: a byte in the middle of its payload */
	s = out_of("ffprobe -v error -select_streams v:0 -show_entries packet=pos,size "
		   "-of csv=p=0 '%s' | sed -n 20p",
		   dst);
	CHECK(s && sscanf(s, "%lld,%lld", &pos, &size) == 2 && size > 16);
	free(s);
	out = open(dst, O_RDWR);
	CHECK(out >= 0);
	CHECK(pread(out, &b, 1, pos + size / 2) == 1);
	b ^= 0x01;
	CHECK(pwrite(out, &b, 1, pos + size / 2) == 1);
	CHECK_EQ(video_verify(dst, &o, &log, &r), VIDEO_KEPT);
	CHECK(strstr(r.reason, "bytes"));
	b ^= 0x01;
	CHECK(pwrite(out, &b, 1, pos + size / 2) == 1);
	close(out);
	CHECK_EQ(video_verify(dst, &o, &log, &r), 0);

	log.extradata[log.extradata_size - 2] ^= 0x01; /* in the last parameter set */
	CHECK_EQ(video_verify(dst, &o, &log, &r), VIDEO_KEPT);
	CHECK(strstr(r.reason, "hvcC"));
	video_log_release(&log);
}

/* A set cancel flag stops the job with -ECANCELED. */
static void test_cancel(void)
{
	const char *src = path("basic.mp4"), *dst = path("cancel.out");
	struct codec_opts o = {.preset = "ultrafast"};
	struct codec_result r = {0};
	atomic_int stop = 1;
	int fd = open(src, O_RDONLY);

	CHECK(fd >= 0);
	o.cancel = &stop;
	CHECK_EQ(video_archive(fd, dst, &o, &r), -ECANCELED);
	close(fd);
}

int main(void)
{
	int ret;

	if (sh("ffmpeg -hide_banner -loglevel error -f lavfi -i nullsrc -t 0.04 -f null - "
	       ">/dev/null 2>&1") != 0) {
		fprintf(stderr, "ffmpeg CLI missing\n");
		return 77;
	}
	snprintf(tmpdir, sizeof(tmpdir), "/tmp/test_video.XXXXXX");
	if (!mkdtemp(tmpdir))
		return 1;
	RUN(test_sniff);
	RUN(test_mp4_basic);
	RUN(test_vfr_multi);
	RUN(test_10bit);
	RUN(test_hdr);
	RUN(test_mpeg_ps);
	RUN(test_ogg);
	RUN(test_mkv_ass);
	RUN(test_odd_size);
	RUN(test_chapters);
	RUN(test_cover_art);
	RUN(test_timecode);
	RUN(test_kept);
	RUN(test_ssim_floor);
	RUN(test_digest);
	RUN(test_verify_bytes);
	RUN(test_cancel);
	ret = check_done("test_video");
	if (getenv("TEST_VIDEO_KEEP")) /* for a post-mortem of the fixtures */
		fprintf(stderr, "fixtures kept in %s\n", tmpdir);
	else
		sh("rm -rf '%s'", tmpdir);
	return ret;
}
