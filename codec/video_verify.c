/*
 * video_verify — check an archived video against what its transcode logged,
 * without decoding it: demux it whole (every video frame there with its
 * source's pts, once; the video packets' digest and the parameter sets in
 * hvcC the very ones the transcode's helper decoded and measured; every
 * stream as long as its source's), and judge the SSIM the helper measured.
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

/* Most parameter-set NAL units an hvcC record of ours holds (x265 writes a
 * VPS, an SPS, a PPS and an SEI). */
#define HVCC_MAX_NALS 64
/* hvcC: the fixed header, then numOfArrays. */
#define HVCC_HEADER 22

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
	struct vspan *spans;
	AVRational otb, stb; /* the result's and the source's video time base */
	int have_first;
	int64_t first_pts; /* the result's first video packet's pts */
	uint8_t *seen;	   /* per source frame: a packet had its pts */
	size_t packets;	   /* video packets demuxed */
	size_t bad_pts;	   /* first packet whose pts is no source frame's, + 1 */
	uint64_t digest;   /* video_digest_packet over the video packets */
};

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
 * Does the hvcC record of the result hold exactly x265's parameter sets
 * (its Annex B extradata), each byte for byte, with 4-byte NAL lengths (what
 * the digest assumed)? Order within the record is the muxer's business.
 */
static int hvcc_matches(const uint8_t *hvcc, size_t n, const uint8_t *annexb, size_t m)
{
	const uint8_t *nal[HVCC_MAX_NALS];
	size_t len[HVCC_MAX_NALS], nb = 0, off, found = 0;
	uint8_t used[HVCC_MAX_NALS] = {0};
	struct video_nals it;
	int arrays;

	if (!hvcc || n < HVCC_HEADER + 1 || hvcc[0] != 1 || (hvcc[21] & 3) != 3)
		return 0;
	video_nals_begin(&it, annexb, m);
	while (nb < HVCC_MAX_NALS && video_nals_next(&it, &nal[nb], &len[nb]))
		nb++;
	if (nb == HVCC_MAX_NALS)
		return 0;
	arrays = hvcc[HVCC_HEADER];
	off = HVCC_HEADER + 1;
	for (int a = 0; a < arrays; a++) {
		int count;

		if (n - off < 3)
			return 0;
		count = hvcc[off + 1] << 8 | hvcc[off + 2];
		off += 3;
		for (int k = 0; k < count; k++) {
			size_t l, i;

			if (n - off < 2)
				return 0;
			l = (size_t)(hvcc[off] << 8 | hvcc[off + 1]);
			off += 2;
			if (n - off < l)
				return 0;
			for (i = 0; i < nb; i++)
				if (!used[i] && len[i] == l && !memcmp(nal[i], hvcc + off, l))
					break;
			if (i == nb)
				return 0;
			used[i] = 1;
			found++;
			off += l;
		}
	}
	return found == nb && off == n;
}

/* A video packet of the result: its pts must be a source frame's, once, and
 * its bytes go into the digest. */
static void video_packet(struct verify *v, const AVPacket *pkt)
{
	long i;

	if (!v->have_first && pkt->pts != AV_NOPTS_VALUE) {
		v->have_first = 1;
		v->first_pts = pkt->pts;
	}
	v->packets++;
	i = frame_of(v, pkt->pts);
	v->digest = video_digest_packet(v->digest, i < 0 ? SIZE_MAX : (uint64_t)i, pkt->data,
					(size_t)pkt->size);
	if (i < 0 || v->seen[i]) {
		if (!v->bad_pts)
			v->bad_pts = v->packets;
		return;
	}
	v->seen[i] = 1;
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
			ret = 0;
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
			video_packet(v, pkt);
		av_packet_unref(pkt);
	}
	av_packet_free(&pkt);
	return ret;
}

/* After the walk: frames, timestamps, bytes, samples, SSIM and spans. 0 or
 * VIDEO_KEPT with the reason. */
static int judge(struct verify *v)
{
	const struct video_log *log = v->log;

	if (v->packets != log->nb_pts || v->packets != log->nb_packets) {
		codec_keep(v->result, "verify: %zu frames, source %zu, encoded %zu", v->packets,
			   log->nb_pts, log->nb_packets);
		return VIDEO_KEPT;
	}
	if (v->bad_pts) {
		codec_keep(v->result, "verify: frame %zu has another timestamp than the source's",
			   v->bad_pts - 1);
		return VIDEO_KEPT;
	}
	if (v->digest != log->digest) {
		codec_keep(v->result,
			   "verify: the video's bytes are not the ones checked "
			   "(digest %016llx, encoded %016llx)",
			   (unsigned long long)v->digest, (unsigned long long)log->digest);
		return VIDEO_KEPT;
	}
	if (log->nb_checked != log->nb_samples) {
		codec_keep(v->result, "verify: %zu of %zu sampled frames compared", log->nb_checked,
			   log->nb_samples);
		return VIDEO_KEPT;
	}
	if (log->min_ssim < v->opts->min_video_ssim) {
		codec_keep(v->result, "verify: SSIM %.4f at frame %zu, under %.4f", log->min_ssim,
			   log->min_at, v->opts->min_video_ssim);
		return VIDEO_KEPT;
	}
	return check_spans(v);
}

int video_verify(const char *out_path, const struct codec_opts *opts, struct video_log *log,
		 struct codec_result *result)
{
	struct verify v = {.log = log, .opts = opts, .result = result};
	AVStream *ost;
	char *url;
	int ret;

	if (!log->nb_pts || !log->nb_samples)
		return -EINVAL;
	v.digest = VIDEO_DIGEST_INIT;
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
		codec_keep(result, "verify: result has %u streams, expected %d", v.out->nb_streams,
			   log->nb_out);
		ret = VIDEO_KEPT;
		goto out_close_out;
	}
	ost = v.out->streams[log->out_vi];
	if (ost->codecpar->codec_id != AV_CODEC_ID_HEVC) {
		codec_keep(result, "verify: result video is not HEVC");
		ret = VIDEO_KEPT;
		goto out_close_out;
	}
	if (!hvcc_matches(ost->codecpar->extradata, (size_t)ost->codecpar->extradata_size,
			  log->extradata, (size_t)log->extradata_size)) {
		codec_keep(result, "verify: the hvcC record is not the encoder's parameter sets");
		ret = VIDEO_KEPT;
		goto out_close_out;
	}
	v.otb = ost->time_base;
	v.stb = (AVRational){log->tb_num, log->tb_den};
	v.spans = calloc(log->nb_out, sizeof(*v.spans));
	v.seen = calloc(log->nb_pts, 1);
	if (!v.spans || !v.seen) {
		ret = -ENOMEM;
		goto out_free;
	}
	ret = walk(&v);
	if (!ret)
		ret = judge(&v);
	result->ssim = log->min_ssim;
	log_msg(LOG_DEBUG, "video: verify demuxed %zu video packets, %zu samples, SSIM %.4f",
		v.packets, log->nb_samples, result->ssim);

out_free:
	free(v.seen);
	free(v.spans);
out_close_out:
	avformat_close_input(&v.out);
	return ret;
}
