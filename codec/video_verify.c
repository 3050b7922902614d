/*
 * video_verify — check an archived video against what its transcode logged:
 * demux it whole (every video frame there with its source's pts, every
 * stream as long as its source's), and decode the pictures the SSIM samples
 * need (the sampled frames and every picture used for reference) to compare
 * their luma with the source's planes the transcode kept. The source is not
 * decoded again.
 */
#include "internal.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <libavutil/avstring.h>
#include <libavutil/pixdesc.h>

/* HEVC NAL unit types: VCL below this; up to RSVP_VCL_N14, even types are
 * sub-layer non-reference pictures (H.265 7.4.2.2). */
#define HEVC_NAL_VCL_END 32
#define HEVC_NAL_SLNR_END 14

/* One stream of the result as demuxed. */
struct vspan {
	int started;
	int64_t first, end; /* first start, last end, stream time base */
};

/* The state of one verification. */
struct verify {
	struct video_log *log;
	const struct codec_opts *opts;
	struct codec_result *result;
	AVFormatContext *out;
	AVCodecContext *dec;   /* the result's video */
	AVFrame *frame;
	struct vspan *spans;
	AVRational otb, stb;   /* the result's and the source's video time base */
	int have_first;
	int64_t first_pts;     /* the result's first video packet's pts */
	uint8_t *seen;         /* per source frame: a packet had its pts */
	size_t packets;        /* video packets demuxed */
	size_t bad_pts;        /* first packet whose pts is no source frame's, + 1 */
	int len_size;          /* hvcC NAL length size; 0: decode every picture */
	int top_tid;           /* highest TemporalId of the stream */
	size_t sent, decoded;  /* packets given to the decoder, frames out */
	uint8_t *checked;      /* per sample: compared */
	size_t nb_checked;
	uint8_t *plane;        /* a source sample read back */
	uint8_t *luma;         /* a result frame brought to 8 bits */
	double min_ssim;
	size_t min_at;
};

/* Open a decoder for the result's video. 0 or -errno. */
static int open_dec(const AVStream *st, AVCodecContext **dec)
{
	const AVCodec *codec = avcodec_find_decoder(st->codecpar->codec_id);
	AVCodecContext *c;
	int ret;

	if (!codec)
		return -ENOTSUP;
	c = avcodec_alloc_context3(codec);
	if (!c)
		return -ENOMEM;
	ret = avcodec_parameters_to_context(c, st->codecpar);
	if (ret >= 0) {
		c->pkt_timebase = st->time_base;
		c->thread_count = 0;
		c->err_recognition |= AV_EF_EXPLODE;
		ret = avcodec_open2(c, codec, NULL);
	}
	if (ret < 0) {
		avcodec_free_context(&c);
		return video_averr(ret, "open verify decoder");
	}
	*dec = c;
	return 0;
}

/* Index of key in the increasing array a of n, or -1. */
static long find_i64(const int64_t *a, size_t n, int64_t key)
{
	size_t lo = 0, hi = n;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (a[mid] < key)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < n && a[lo] == key ? (long)lo : -1;
}

/* Index of key in the increasing array a of n, or -1. */
static long find_size(const size_t *a, size_t n, size_t key)
{
	size_t lo = 0, hi = n;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (a[mid] < key)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < n && a[lo] == key ? (long)lo : -1;
}

/* Display index of the source frame whose pts a result pts stands for (the
 * result starts where the source did), or -1 when there is none. */
static long frame_of(const struct verify *v, int64_t pts)
{
	const struct video_log *log = v->log;

	if (pts == AV_NOPTS_VALUE || !v->have_first)
		return -1;
	return find_i64(log->pts, log->nb_pts,
			av_rescale_q(pts - v->first_pts, v->otb, v->stb) + log->pts[0]);
}

/*
 * From the hvcC record of the result: the NAL length size and the number of
 * temporal sub-layers, which say which pictures nothing refers to. Leaves
 * len_size 0 (decode every picture) when the record does not say.
 */
static void parse_hvcc(struct verify *v, const AVCodecParameters *par)
{
	const uint8_t *ed = par->extradata;
	int layers;

	v->len_size = 0;
	if (!ed || par->extradata_size < 23 || ed[0] != 1)
		return;
	layers = (ed[21] >> 3) & 7; /* numTemporalLayers; 0: unknown */
	if (!layers)
		return;
	v->top_tid = layers - 1;
	v->len_size = (ed[21] & 3) + 1;
}

/*
 * Is the picture in pkt one no other picture refers to: a sub-layer
 * non-reference picture of the highest sub-layer (H.265 3.132, 7.4.2.2)?
 * Anything unclear says no, so that it is decoded.
 */
static int unreferenced(const struct verify *v, const AVPacket *pkt)
{
	size_t off = 0, n = (size_t)pkt->size;

	if (!v->len_size)
		return 0;
	while (off + (size_t)v->len_size + 2 <= n) {
		size_t len = 0;
		int type, tid;

		for (int i = 0; i < v->len_size; i++)
			len = len << 8 | pkt->data[off + i];
		off += (size_t)v->len_size;
		if (len < 2 || len > n - off)
			return 0;
		type = (pkt->data[off] >> 1) & 0x3f;
		tid = (pkt->data[off + 1] & 7) - 1;
		if (type < HEVC_NAL_VCL_END)
			return type <= HEVC_NAL_SLNR_END && !(type & 1) && tid == v->top_tid;
		off += len;
	}
	return 0;
}

/* The 8-bit luma of f: its own plane, or a shifted copy in v->luma. */
static const uint8_t *luma8(struct verify *v, const AVFrame *f, int *stride)
{
	const AVPixFmtDescriptor *d = av_pix_fmt_desc_get(f->format);
	int depth = d->comp[0].depth, w = v->log->conv.width, h = v->log->conv.height;

	if (depth <= 8) {
		*stride = f->linesize[0];
		return f->data[0];
	}
	for (int y = 0; y < h; y++) {
		const uint16_t *row = (const uint16_t *)(f->data[0] + (ptrdiff_t)y * f->linesize[0]);
		uint8_t *o = v->luma + (size_t)y * w;
		for (int x = 0; x < w; x++)
			o[x] = (uint8_t)FFMIN(row[x] >> (depth - 8), 255);
	}
	*stride = w;
	return v->luma;
}

/* Read all of sample k back from the samples file. 0 or -errno. */
static int read_sample(const struct video_log *log, size_t k, uint8_t *buf)
{
	size_t len = video_sample_bytes(log);
	off_t off = (off_t)(k * len);

	while (len) {
		ssize_t n = pread(log->sample_fd, buf, len, off);
		if (n == -1 && errno == EINTR)
			continue;
		if (n == -1)
			return -errno;
		if (n == 0)
			return -EIO;
		buf += n;
		len -= (size_t)n;
		off += n;
	}
	return 0;
}

/* One decoded frame of the result: check it, and compare it with the
 * source's plane when it is a sample. 0, VIDEO_KEPT or -errno. */
static int check_frame(struct verify *v, const AVFrame *f)
{
	const struct video_log *log = v->log;
	long i = frame_of(v, f->best_effort_timestamp), k;
	const uint8_t *b;
	double ssim;
	int sb, ret;

	v->decoded++;
	if (f->decode_error_flags || (f->flags & AV_FRAME_FLAG_CORRUPT)) {
		codec_keep(v->result, "verify: decode error at frame %zu", v->decoded - 1);
		return VIDEO_KEPT;
	}
	if (f->width != log->conv.enc_width || f->height != log->conv.enc_height) {
		codec_keep(v->result, "verify: a frame is %dx%d, expected %dx%d", f->width,
			   f->height, log->conv.enc_width, log->conv.enc_height);
		return VIDEO_KEPT;
	}
	if (i < 0) {
		codec_keep(v->result, "verify: a decoded frame has no source frame's timestamp");
		return VIDEO_KEPT;
	}
	k = find_size(log->samples, log->nb_samples, (size_t)i);
	if (k < 0)
		return 0;
	ret = read_sample(log, (size_t)k, v->plane);
	if (ret)
		return ret;
	b = luma8(v, f, &sb);
	ssim = codec_ssim_plane(v->plane, log->conv.width, b, sb, log->conv.width,
				log->conv.height);
	v->nb_checked += !v->checked[k];
	v->checked[k] = 1;
	if (ssim < v->min_ssim) {
		v->min_ssim = ssim;
		v->min_at = (size_t)i;
	}
	return 0;
}

/* Feed pkt (NULL: flush) to the result's video decoder and check frames. */
static int decode_result(struct verify *v, const AVPacket *pkt)
{
	int ret = avcodec_send_packet(v->dec, pkt);

	if (ret < 0 && ret != AVERROR_EOF) {
		codec_keep(v->result, "verify: result does not decode (packet %zu)", v->packets);
		return VIDEO_KEPT;
	}
	if (pkt)
		v->sent++;
	for (;;) {
		ret = avcodec_receive_frame(v->dec, v->frame);
		if (ret == AVERROR(EAGAIN) || ret == AVERROR_EOF)
			return 0;
		if (ret < 0) {
			codec_keep(v->result, "verify: result does not decode (frame %zu)",
				   v->decoded);
			return VIDEO_KEPT;
		}
		ret = check_frame(v, v->frame);
		av_frame_unref(v->frame);
		if (ret)
			return ret;
	}
}

/*
 * A video packet of the result: its pts must be a source frame's, once; it
 * is decoded when it is a sample or may be referred to. 0, VIDEO_KEPT or
 * -errno.
 */
static int video_packet(struct verify *v, const AVPacket *pkt)
{
	const struct video_log *log = v->log;
	long i;

	if (!v->have_first && pkt->pts != AV_NOPTS_VALUE) {
		v->have_first = 1;
		v->first_pts = pkt->pts;
	}
	v->packets++;
	i = frame_of(v, pkt->pts);
	if (i < 0 || v->seen[i]) {
		if (!v->bad_pts)
			v->bad_pts = v->packets;
		return 0;
	}
	v->seen[i] = 1;
	/* past the last sample, or nothing refers to it and it is no sample:
	 * demuxed, not decoded */
	if (v->nb_checked == log->nb_samples)
		return 0;
	if (find_size(log->samples, log->nb_samples, (size_t)i) < 0 && unreferenced(v, pkt))
		return 0;
	return decode_result(v, pkt);
}

/* Every stream of the result must last what its source lasted. */
static int check_spans(struct verify *v)
{
	const struct video_log *log = v->log;

	for (int i = 0; i < log->nb_out; i++) {
		const struct video_out *o = &log->out[i];
		const struct vspan *sp = &v->spans[i];
		const AVStream *st = v->out->streams[i];
		double span, want, tol;

		if (o->type != AVMEDIA_TYPE_VIDEO && o->type != AVMEDIA_TYPE_AUDIO)
			continue;
		if (st->disposition & AV_DISPOSITION_ATTACHED_PIC) {
			/* cover art: one picture, no timestamps */
			if (st->attached_pic.size <= 0) {
				codec_keep(v->result, "verify: stream %d lost its picture", i);
				return VIDEO_KEPT;
			}
			continue;
		}
		if (!sp->started) {
			codec_keep(v->result, "verify: stream %d is empty", i);
			return VIDEO_KEPT;
		}
		span = (double)(sp->end - sp->first) * av_q2d(st->time_base);
		if (i == log->out_vi) {
			want = (double)(log->pts[log->nb_pts - 1] - log->pts[0]) * av_q2d(v->stb) +
			       log->frame_sec;
			tol = log->frame_sec + 0.001;
		} else if (o->type == AVMEDIA_TYPE_VIDEO) {
			continue; /* other video copied as is */
		} else {
			want = o->src_span;
			tol = o->tol;
		}
		if (fabs(span - want) > tol) {
			codec_keep(v->result, "verify: stream %d lasts %.3f s, source %.3f s", i,
				   span, want);
			return VIDEO_KEPT;
		}
		/* audio whose timestamps disagree with its samples (broken Ogg
		 * granules, gaps): keep the original rather than guess */
		if (o->content >= 0 && fabs(span - o->content) > tol) {
			codec_keep(v->result,
				   "verify: audio stream %d lasts %.3f s for %.3f s of samples", i,
				   span, o->content);
			return VIDEO_KEPT;
		}
	}
	return 0;
}

/* Demux the result whole: spans of every stream, the video checked. */
static int walk(struct verify *v)
{
	AVPacket *pkt = av_packet_alloc();
	int ret = 0;

	if (!pkt)
		return -ENOMEM;
	for (;;) {
		if (v->opts->cancel && atomic_load(v->opts->cancel)) {
			ret = -ECANCELED;
			break;
		}
		ret = av_read_frame(v->out, pkt);
		if (ret == AVERROR_EOF) {
			ret = decode_result(v, NULL);
			break;
		}
		if (ret < 0) {
			codec_keep(v->result, "verify: result does not demux");
			ret = VIDEO_KEPT;
			break;
		}
		if (pkt->stream_index < v->log->nb_out && pkt->pts != AV_NOPTS_VALUE) {
			struct vspan *sp = &v->spans[pkt->stream_index];
			if (!sp->started) {
				sp->started = 1;
				sp->first = pkt->pts;
				sp->end = pkt->pts + pkt->duration;
			}
			sp->first = FFMIN(sp->first, pkt->pts);
			sp->end = FFMAX(sp->end, pkt->pts + pkt->duration);
		}
		ret = 0;
		if (pkt->stream_index == v->log->out_vi)
			ret = video_packet(v, pkt);
		av_packet_unref(pkt);
		if (ret)
			break;
	}
	av_packet_free(&pkt);
	return ret;
}

/* After the walk: frames, timestamps, samples, SSIM and spans. 0 or
 * VIDEO_KEPT with the reason. */
static int judge(struct verify *v)
{
	const struct video_log *log = v->log;

	if (v->packets != log->nb_pts) {
		codec_keep(v->result, "verify: %zu frames, source %zu", v->packets, log->nb_pts);
		return VIDEO_KEPT;
	}
	if (v->bad_pts) {
		codec_keep(v->result, "verify: frame %zu has another timestamp than the source's",
			   v->bad_pts - 1);
		return VIDEO_KEPT;
	}
	if (v->decoded != v->sent) {
		codec_keep(v->result, "verify: %zu pictures decoded of %zu", v->decoded, v->sent);
		return VIDEO_KEPT;
	}
	for (size_t k = 0; k < log->nb_samples; k++)
		if (!v->checked[k]) {
			codec_keep(v->result, "verify: sampled frame %zu was not decoded",
				   log->samples[k]);
			return VIDEO_KEPT;
		}
	if (v->min_ssim < v->opts->min_video_ssim) {
		codec_keep(v->result, "verify: SSIM %.4f at frame %zu, under %.4f", v->min_ssim,
			   v->min_at, v->opts->min_video_ssim);
		return VIDEO_KEPT;
	}
	return check_spans(v);
}

int video_verify(const char *out_path, const struct codec_opts *opts, struct video_log *log,
		 struct codec_result *result)
{
	struct verify v = { .log = log, .opts = opts, .result = result, .min_ssim = 2.0 };
	AVStream *ost;
	char *url;
	int ret;

	if (!log->nb_pts || !log->nb_samples || !log->sample_open)
		return -EINVAL;
	url = av_asprintf("file:%s", out_path);
	if (!url)
		return -ENOMEM;
	ret = avformat_open_input(&v.out, url, NULL, NULL);
	av_free(url);
	if (ret < 0) {
		codec_keep(result, "verify: result does not open");
		return VIDEO_KEPT;
	}
	ret = avformat_find_stream_info(v.out, NULL);
	if (ret < 0 || (int)v.out->nb_streams < log->nb_out) {
		codec_keep(result, "verify: result has %u streams, expected %d",
			   v.out->nb_streams, log->nb_out);
		ret = VIDEO_KEPT;
		goto out_close_out;
	}
	ost = v.out->streams[log->out_vi];
	if (ost->codecpar->codec_id != AV_CODEC_ID_HEVC) {
		codec_keep(result, "verify: result video is not HEVC");
		ret = VIDEO_KEPT;
		goto out_close_out;
	}
	v.otb = ost->time_base;
	v.stb = (AVRational){ log->tb_num, log->tb_den };
	parse_hvcc(&v, ost->codecpar);
	v.spans = calloc(log->nb_out, sizeof(*v.spans));
	v.seen = calloc(log->nb_pts, 1);
	v.checked = calloc(log->nb_samples, 1);
	v.plane = malloc(video_sample_bytes(log));
	v.luma = malloc(video_sample_bytes(log));
	v.frame = av_frame_alloc();
	if (!v.spans || !v.seen || !v.checked || !v.plane || !v.luma || !v.frame) {
		ret = -ENOMEM;
		goto out_free;
	}
	ret = open_dec(ost, &v.dec);
	if (ret)
		goto out_free;
	ret = walk(&v);
	if (!ret)
		ret = judge(&v);
	result->ssim = v.min_ssim > 1.0 ? 1.0 : v.min_ssim;
	log_msg(LOG_DEBUG, "video: verify decoded %zu of %zu pictures, %zu samples, SSIM %.4f",
		v.sent, v.packets, log->nb_samples, result->ssim);

out_free:
	avcodec_free_context(&v.dec);
	av_frame_free(&v.frame);
	free(v.luma);
	free(v.plane);
	free(v.checked);
	free(v.seen);
	free(v.spans);
out_close_out:
	avformat_close_input(&v.out);
	return ret;
}
