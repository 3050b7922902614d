/*
 * video_verify — decode an archived video whole and check it against its
 * source: same frames with the same timestamps, every stream's duration,
 * luma SSIM on sampled frames (the source re-decoded in lock-step).
 */
#include "internal.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <libavutil/avstring.h>
#include <libavutil/pixdesc.h>

/* At least this many SSIM samples over a clip, and at least one a second. */
#define SSIM_SAMPLES_MIN 8
#define SSIM_PERIOD_MAX 1.0

/* One stream of the result as demuxed. */
struct vspan {
	int started;
	int64_t first, end; /* first start, last end, stream time base */
};

/* A decoder on one stream of a file, for the lock-step walk. */
struct vdec {
	AVFormatContext *fmt;
	AVCodecContext *dec;
	int index;   /* stream decoded */
	AVPacket *pkt;
	AVFrame *frame;
	int eof;     /* no more packets */
	size_t count;/* frames returned so far */
};

/* A luma plane brought to 8 bits when the frame has more. */
struct vluma {
	uint8_t *buf;
	size_t size;
};

/* The state of one verification. */
struct verify {
	struct video_log *log;
	const struct codec_opts *opts;
	struct codec_result *result;
	AVFormatContext *out;
	struct vdec src;       /* the source's video, re-decoded */
	AVCodecContext *dec;   /* the result's video */
	AVFrame *frame, *conv;
	struct vspan *spans;
	size_t frames;         /* result frames seen */
	int64_t first_pts;     /* the result's first video pts */
	size_t bad_pts;        /* first frame whose pts differs, + 1 */
	double period, next_sample;
	double min_ssim;
	size_t min_at;
	struct vluma la, lb;
};

/* Open a decoder for stream st of a file being verified. 0 or -errno. */
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

/* Next decoded frame of the source's video into d->frame. 0, -ENODATA at
 * the end, VIDEO_KEPT on a decode error, or -errno. */
static int vdec_next(struct vdec *d)
{
	int ret;

	for (;;) {
		ret = avcodec_receive_frame(d->dec, d->frame);
		if (ret >= 0) {
			d->count++;
			return 0;
		}
		if (ret == AVERROR_EOF)
			return -ENODATA;
		if (ret != AVERROR(EAGAIN))
			return VIDEO_KEPT;
		if (d->eof)
			return -ENODATA;
		ret = av_read_frame(d->fmt, d->pkt);
		if (ret == AVERROR_EOF) {
			d->eof = 1;
			avcodec_send_packet(d->dec, NULL);
			continue;
		}
		if (ret < 0)
			return video_input_errno(d->fmt) ? -video_input_errno(d->fmt) : VIDEO_KEPT;
		if (d->pkt->stream_index == d->index)
			ret = avcodec_send_packet(d->dec, d->pkt);
		av_packet_unref(d->pkt);
		if (ret < 0)
			return VIDEO_KEPT;
	}
}

/* The 8-bit luma of f: its own plane, or a shifted copy in l. NULL on ENOMEM. */
static const uint8_t *luma8(const AVFrame *f, struct vluma *l, int *stride)
{
	const AVPixFmtDescriptor *d = av_pix_fmt_desc_get(f->format);
	int depth = d->comp[0].depth;
	size_t need = (size_t)f->width * f->height;

	if (depth <= 8) {
		*stride = f->linesize[0];
		return f->data[0];
	}
	if (l->size < need) {
		free(l->buf);
		l->buf = malloc(need);
		l->size = l->buf ? need : 0;
		if (!l->buf)
			return NULL;
	}
	for (int y = 0; y < f->height; y++) {
		const uint16_t *row = (const uint16_t *)(f->data[0] + (ptrdiff_t)y * f->linesize[0]);
		uint8_t *o = l->buf + (size_t)y * f->width;
		for (int x = 0; x < f->width; x++)
			o[x] = (uint8_t)FFMIN(row[x] >> (depth - 8), 255);
	}
	*stride = f->width;
	return l->buf;
}

/* SSIM of result frame f (index v->frames) against source frame of the same
 * index, decoded now. 0, VIDEO_KEPT or -errno. */
static int sample(struct verify *v, const AVFrame *f)
{
	struct video_conv *conv = &v->log->conv;
	const AVFrame *s;
	const uint8_t *a, *b;
	int sa, sb, ret;
	double ssim;

	while (v->src.count <= v->frames) {
		ret = vdec_next(&v->src);
		if (ret == -ENODATA) {
			codec_keep(v->result, "verify: source ends before frame %zu", v->frames);
			return VIDEO_KEPT;
		}
		if (ret)
			return ret;
		if (v->src.count <= v->frames)
			av_frame_unref(v->src.frame);
	}
	s = v->src.frame;
	if (conv->sws || conv->enc_width != conv->width || conv->enc_height != conv->height) {
		ret = video_conv_frame(conv, s, v->conv);
		if (ret)
			return ret;
		s = v->conv;
	}
	a = luma8(s, &v->la, &sa);
	b = luma8(f, &v->lb, &sb);
	if (!a || !b)
		return -ENOMEM;
	ssim = codec_ssim_plane(a, sa, b, sb, conv->width, conv->height);
	av_frame_unref(v->src.frame);
	av_frame_unref(v->conv);
	if (ssim < v->min_ssim) {
		v->min_ssim = ssim;
		v->min_at = v->frames;
	}
	return 0;
}

/* One decoded frame of the result: count it, compare its pts, sample it. */
static int check_frame(struct verify *v, const AVFrame *f)
{
	const struct video_log *log = v->log;
	AVRational otb = v->out->streams[log->out_vi]->time_base;
	AVRational stb = { log->tb_num, log->tb_den };
	int64_t pts = f->best_effort_timestamp;
	double t;
	int ret;

	if (f->decode_error_flags || (f->flags & AV_FRAME_FLAG_CORRUPT)) {
		codec_keep(v->result, "verify: decode error at frame %zu", v->frames);
		return VIDEO_KEPT;
	}
	if (f->width != log->conv.enc_width || f->height != log->conv.enc_height) {
		codec_keep(v->result, "verify: frame %zu is %dx%d, expected %dx%d", v->frames,
			   f->width, f->height, log->conv.enc_width, log->conv.enc_height);
		return VIDEO_KEPT;
	}
	if (!v->frames)
		v->first_pts = pts;
	if (v->frames < log->nb_pts && !v->bad_pts &&
	    (pts == AV_NOPTS_VALUE ||
	     av_rescale_q(pts - v->first_pts, otb, stb) != log->pts[v->frames] - log->pts[0]))
		v->bad_pts = v->frames + 1;
	if (v->frames < log->nb_pts) {
		t = (double)(log->pts[v->frames] - log->pts[0]) * av_q2d(stb);
		if (t >= v->next_sample) {
			ret = sample(v, f);
			if (ret)
				return ret;
			while (v->next_sample <= t)
				v->next_sample += v->period;
		}
	}
	v->frames++;
	return 0;
}

/* Feed pkt (NULL: flush) to the result's video decoder and check frames. */
static int decode_result(struct verify *v, const AVPacket *pkt)
{
	int ret = avcodec_send_packet(v->dec, pkt);

	if (ret < 0 && ret != AVERROR_EOF) {
		codec_keep(v->result, "verify: result does not decode (frame %zu)", v->frames);
		return VIDEO_KEPT;
	}
	for (;;) {
		ret = avcodec_receive_frame(v->dec, v->frame);
		if (ret == AVERROR(EAGAIN) || ret == AVERROR_EOF)
			return 0;
		if (ret < 0) {
			codec_keep(v->result, "verify: result does not decode (frame %zu)",
				   v->frames);
			return VIDEO_KEPT;
		}
		ret = check_frame(v, v->frame);
		av_frame_unref(v->frame);
		if (ret)
			return ret;
	}
}

/* Every stream of the result must last what its source lasted. */
static int check_spans(struct verify *v)
{
	const struct video_log *log = v->log;
	AVRational stb = { log->tb_num, log->tb_den };

	for (int i = 0; i < log->nb_out; i++) {
		const struct video_out *o = &log->out[i];
		const struct vspan *sp = &v->spans[i];
		double span, want, tol;

		if (o->type != AVMEDIA_TYPE_VIDEO && o->type != AVMEDIA_TYPE_AUDIO)
			continue;
		if (!sp->started) {
			codec_keep(v->result, "verify: stream %d is empty", i);
			return VIDEO_KEPT;
		}
		span = (double)(sp->end - sp->first) * av_q2d(v->out->streams[i]->time_base);
		if (i == log->out_vi) {
			want = (double)(log->pts[log->nb_pts - 1] - log->pts[0]) * av_q2d(stb) +
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

/* Demux the result whole: spans of every stream, the video decoded. */
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
			ret = decode_result(v, pkt);
		av_packet_unref(pkt);
		if (ret)
			break;
	}
	av_packet_free(&pkt);
	return ret;
}

int video_verify(int src_fd, const char *out_path, const struct codec_opts *opts,
		 struct video_log *log, struct codec_result *result)
{
	struct verify v = { .log = log, .opts = opts, .result = result, .min_ssim = 2.0 };
	AVStream *ost;
	char *url;
	double dur;
	int ret;

	if (!log->nb_pts)
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
	v.spans = calloc(log->nb_out, sizeof(*v.spans));
	v.frame = av_frame_alloc();
	v.conv = av_frame_alloc();
	v.src.pkt = av_packet_alloc();
	v.src.frame = av_frame_alloc();
	if (!v.spans || !v.frame || !v.conv || !v.src.pkt || !v.src.frame) {
		ret = -ENOMEM;
		goto out_free;
	}
	ret = open_dec(ost, &v.dec);
	if (ret)
		goto out_free;
	ret = video_open_input(src_fd, &v.src.fmt, result);
	if (ret)
		goto out_free;
	v.src.index = log->vi;
	for (unsigned i = 0; i < v.src.fmt->nb_streams; i++)
		if ((int)i != log->vi)
			v.src.fmt->streams[i]->discard = AVDISCARD_ALL;
	ret = open_dec(v.src.fmt->streams[log->vi], &v.src.dec);
	if (ret)
		goto out_close_src;

	dur = (double)(log->pts[log->nb_pts - 1] - log->pts[0]) * log->tb_num / log->tb_den;
	v.period = FFMIN(SSIM_PERIOD_MAX, dur / SSIM_SAMPLES_MIN);
	ret = walk(&v);
	if (ret)
		goto out_close_src;
	if (v.frames != log->nb_pts) {
		codec_keep(result, "verify: %zu frames, source %zu", v.frames, log->nb_pts);
		ret = VIDEO_KEPT;
	} else if (v.bad_pts) {
		codec_keep(result, "verify: frame %zu has another timestamp than the source's",
			   v.bad_pts - 1);
		ret = VIDEO_KEPT;
	} else if (v.min_ssim < opts->min_video_ssim) {
		codec_keep(result, "verify: SSIM %.4f at frame %zu, under %.4f", v.min_ssim,
			   v.min_at, opts->min_video_ssim);
		ret = VIDEO_KEPT;
	} else {
		ret = check_spans(&v);
	}
	result->ssim = v.min_ssim > 1.0 ? 1.0 : v.min_ssim;

out_close_src:
	avcodec_free_context(&v.src.dec);
	video_close_input(&v.src.fmt);
out_free:
	avcodec_free_context(&v.dec);
	av_frame_free(&v.frame);
	av_frame_free(&v.conv);
	av_packet_free(&v.src.pkt);
	av_frame_free(&v.src.frame);
	free(v.la.buf);
	free(v.lb.buf);
	free(v.spans);
out_close_out:
	avformat_close_input(&v.out);
	return ret;
}
