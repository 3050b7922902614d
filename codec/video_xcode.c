/*
 * video_xcode — the transcode: map the source's streams to an MP4 (or MKV
 * when a stream can only live there), re-encode the video with libx265 frame
 * for frame, copy or convert every other stream, and mux.
 */
#include "internal.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <libavutil/audio_fifo.h>
#include <libavutil/avstring.h>
#include <libavutil/display.h>
#include <libavutil/imgutils.h>
#include <libavutil/mastering_display_metadata.h>
#include <libavutil/opt.h>
#include <libavutil/pixdesc.h>
#include <libswresample/swresample.h>
#include <libswscale/swscale.h>

/* Re-encoded audio: AAC at this many bits per second per channel (so 128
 * kb/s per stereo pair), never less than AUDIO_MIN_RATE in all. */
#define AUDIO_RATE_PER_CHANNEL 64000
#define AUDIO_MIN_RATE 128000
/* Sample rate for re-encoded audio when AAC cannot take the source's. */
#define AUDIO_FALLBACK_RATE 48000
/* Largest mov_text/SubRip packet we produce from one subtitle event. */
#define SUB_BUF (64 << 10)
/* Progress callback period. */
#define PROGRESS_NS 1000000000LL

enum xmode {
	XM_DROP = 0, /* not written (reason logged) */
	XM_COPY,     /* packets as they are */
	XM_VIDEO,    /* the video: decoded, re-encoded with libx265 */
	XM_AUDIO,    /* decoded, re-encoded to AAC */
	XM_SUBS,     /* text subtitles converted to mov_text (or SubRip in MKV) */
};

/* One source stream and what becomes of it. */
struct xstream {
	enum xmode mode;
	int out;       /* output stream index */
	int64_t shift; /* the global start, in this stream's time base */
	AVCodecContext *dec;
	AVCodecContext *enc;
	SwrContext *swr;
	AVAudioFifo *fifo;
	int64_t next_pts;   /* re-encoded audio: next pts, 1/sample_rate */
	int started;	    /* first/end valid */
	int64_t first, end; /* source timestamps seen: first start, last end */
	int64_t content;    /* copy: sum of durations (tb); audio: samples */
	int no_duration;    /* copy: some packet had no duration */
};

/* The transcode of one file. */
struct xcode {
	AVFormatContext *in, *out;
	const struct codec_opts *opts;
	struct video_log *log;
	struct codec_result *result;
	struct xstream *xs; /* one per source stream */
	int vi;		    /* the source video stream */
	int mp4;	    /* output is MP4 (else Matroska) */
	int conv_needed;    /* frames go through log->conv */
	AVFrame *frame, *cframe, *aframe, *sframe;
	AVPacket *pkt;
	uint8_t *subbuf;
	struct video_check *check; /* the in-flight check of the video */
	char *src_encoder;	   /* the source's "encoder" tag, restored on output */
	uint64_t frames, total;
	struct timespec t0, last_progress;
};

/* Audio codecs MP4 holds that we copy as they are. */
static const enum AVCodecID mp4_audio_copy[] = {
    AV_CODEC_ID_AAC,  AV_CODEC_ID_MP3,	AV_CODEC_ID_AC3,  AV_CODEC_ID_EAC3,
    AV_CODEC_ID_ALAC, AV_CODEC_ID_OPUS, AV_CODEC_ID_FLAC,
};

/* Global tags the MP4 muxer writes in its standard atoms; any other key
 * needs movflags +use_metadata_tags (mdta keys) to survive. */
static const char *const mp4_std_tags[] = {
    "title",	   "artist",	 "author",	  "album_artist", "album",	 "composer",
    "date",	   "comment",	 "genre",	  "copyright",	  "grouping",	 "lyrics",
    "description", "synopsis",	 "show",	  "episode_id",	  "network",	 "track",
    "disc",	   "encoder",	 "creation_time", "location",	  "compilation", "gapless_playback",
    "hd_video",	   "media_type", "podcast",	  "category",	  "keywords",
};

/* Tags never carried over: the source container's own (the muxer writes its
 * brands) and Matroska statistics that would be stale. */
static const char *const dropped_tags[] = {
    "major_brand",     "minor_version", "compatible_brands", "DURATION", "NUMBER_OF_FRAMES",
    "NUMBER_OF_BYTES", "BPS",		"_STATISTICS_",
};

/* Does key name one of list (whole, or followed by '-' and a language)? */
static int tag_in(const char *key, const char *const *list, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		size_t len = strlen(list[i]);
		if (!av_strncasecmp(key, list[i], len) &&
		    (!key[len] || key[len] == '-' || list[i][len - 1] == '_'))
			return 1;
	}
	return 0;
}

/*
 * Copy tags from src to *dst, leaving out container and statistics tags and
 * "location-eng"-style duplicates of "location". 0 or -ENOMEM.
 */
static int copy_tags(AVDictionary **dst, const AVDictionary *src, int drop_encoder)
{
	const AVDictionaryEntry *e = NULL, *loc = av_dict_get(src, "location", NULL, 0);

	while ((e = av_dict_get(src, "", e, AV_DICT_IGNORE_SUFFIX))) {
		if (tag_in(e->key, dropped_tags, sizeof(dropped_tags) / sizeof(*dropped_tags)))
			continue;
		if (drop_encoder && !av_strcasecmp(e->key, "encoder"))
			continue;
		if (loc && e != loc && !av_strncasecmp(e->key, "location-", 9) &&
		    !strcmp(e->value, loc->value))
			continue;
		if (av_dict_set(dst, e->key, e->value, 0) < 0)
			return -ENOMEM;
	}
	return 0;
}

/* Does any global tag need MP4's mdta keys (movflags +use_metadata_tags)? */
static int needs_mdta(const AVDictionary *tags)
{
	const AVDictionaryEntry *e = NULL;

	while ((e = av_dict_get(tags, "", e, AV_DICT_IGNORE_SUFFIX)))
		if (!tag_in(e->key, mp4_std_tags, sizeof(mp4_std_tags) / sizeof(*mp4_std_tags)))
			return 1;
	return 0;
}

/* Can the muxer of of store codec id as it is? */
static int fits(const AVOutputFormat *of, enum AVCodecID id)
{
	return id != AV_CODEC_ID_NONE && avformat_query_codec(of, id, FF_COMPLIANCE_NORMAL) == 1;
}

/* A text subtitle codec (decodable to ASS events)? */
static int text_sub(enum AVCodecID id)
{
	const AVCodecDescriptor *d = avcodec_descriptor_get(id);

	return d && (d->props & AV_CODEC_PROP_TEXT_SUB);
}

/* Is the stream's display matrix something other than "as is"? */
static int rotated(const AVStream *st)
{
	const int32_t *m =
	    (const int32_t *)av_stream_get_side_data(st, AV_PKT_DATA_DISPLAYMATRIX, NULL);
	static const int32_t identity[9] = {1 << 16, 0, 0, 0, 1 << 16, 0, 0, 0, 1 << 30};

	return m && memcmp(m, identity, sizeof(identity));
}

/* Is st a data track the output muxer writes anew from what we give it: a
 * QuickTime timecode (from the video's "timecode" tag) or chapter text track
 * (from the chapters)? */
static int rebuilt(const struct xcode *x, const AVStream *st)
{
	uint32_t tag = st->codecpar->codec_tag;

	if (st->codecpar->codec_type != AVMEDIA_TYPE_DATA)
		return 0;
	if (tag == MKTAG('t', 'm', 'c', 'd'))
		return av_dict_get(x->in->streams[x->vi]->metadata, "timecode", NULL, 0) != NULL;
	return tag == MKTAG('t', 'e', 'x', 't') && x->in->nb_chapters > 0;
}

/*
 * Decide each stream's fate and the container: MP4 unless some stream can
 * only live in Matroska (ASS/SSA or bitmap subtitles MP4 lacks, attachments,
 * a second video MP4 cannot hold). Logs what is dropped. 0 or VIDEO_KEPT.
 */
static int plan(struct xcode *x)
{
	const AVOutputFormat *mp4 = av_guess_format("mp4", NULL, NULL);
	const AVOutputFormat *mkv = av_guess_format("matroska", NULL, NULL);
	const AVOutputFormat *of;
	int need_mkv = 0;

	for (int pass = 0; pass < 2; pass++) {
		of = pass == 0 ? mp4 : mkv;
		for (unsigned i = 0; i < x->in->nb_streams; i++) {
			const AVStream *st = x->in->streams[i];
			const AVCodecParameters *par = st->codecpar;
			struct xstream *xs = &x->xs[i];

			xs->mode = XM_DROP;
			switch (par->codec_type) {
			case AVMEDIA_TYPE_VIDEO:
				if ((int)i == x->vi)
					xs->mode = XM_VIDEO;
				else if (fits(of, par->codec_id))
					xs->mode = XM_COPY;
				else if (pass == 0)
					need_mkv = 1;
				break;
			case AVMEDIA_TYPE_AUDIO:
				xs->mode = XM_AUDIO;
				if (pass == 0) {
					for (size_t k = 0;
					     k < sizeof(mp4_audio_copy) / sizeof(*mp4_audio_copy);
					     k++)
						if (par->codec_id == mp4_audio_copy[k])
							xs->mode = XM_COPY;
				} else if (fits(of, par->codec_id)) {
					xs->mode = XM_COPY;
				}
				break;
			case AVMEDIA_TYPE_SUBTITLE:
				if (par->codec_id == AV_CODEC_ID_ASS ||
				    par->codec_id == AV_CODEC_ID_SSA) {
					if (pass == 0)
						need_mkv = 1;
					else
						xs->mode = XM_COPY;
				} else if (fits(of, par->codec_id)) {
					xs->mode = XM_COPY;
				} else if (text_sub(par->codec_id)) {
					xs->mode = XM_SUBS;
				} else if (pass == 0) {
					need_mkv = 1;
				}
				break;
			case AVMEDIA_TYPE_DATA:
				/* GoPro GPMF rides in MP4; tmcd is rebuilt by the MP4
				 * muxer from the video's "timecode" tag */
				if (pass == 0 && par->codec_tag == MKTAG('g', 'p', 'm', 'd'))
					xs->mode = XM_COPY;
				break;
			case AVMEDIA_TYPE_ATTACHMENT:
				if (pass == 0)
					need_mkv = 1;
				else
					xs->mode = XM_COPY;
				break;
			default:
				break;
			}
		}
		if (!need_mkv)
			break;
	}
	x->mp4 = !need_mkv;
	x->log->mkv = need_mkv;
	if (need_mkv && rotated(x->in->streams[x->vi])) {
		codec_keep(x->result,
			   "needs MKV (a stream MP4 cannot hold), which has no rotation");
		return VIDEO_KEPT;
	}
	for (unsigned i = 0; i < x->in->nb_streams; i++)
		if (x->xs[i].mode == XM_DROP && rebuilt(x, x->in->streams[i]))
			log_msg(LOG_DEBUG, "video: stream %u (%s) rebuilt by the muxer", i,
				avcodec_get_name(x->in->streams[i]->codecpar->codec_id));
		else if (x->xs[i].mode == XM_DROP)
			log_msg(LOG_INFO, "video: stream %u (%s %s) not kept: %s cannot hold it", i,
				av_get_media_type_string(x->in->streams[i]->codecpar->codec_type),
				avcodec_get_name(x->in->streams[i]->codecpar->codec_id),
				x->mp4 ? "MP4" : "MKV");
	return 0;
}

/* Open a decoder for st. 0 or -errno. */
static int open_decoder(const AVStream *st, AVCodecContext **dec, int threads)
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
	if (ret < 0)
		goto out_free;
	c->pkt_timebase = st->time_base;
	c->thread_count = threads;
	/* a decoder's complaint is a damaged source: we keep those */
	c->err_recognition |= AV_EF_EXPLODE;
	ret = avcodec_open2(c, codec, NULL);
	if (ret < 0)
		goto out_free;
	*dec = c;
	return 0;

out_free:
	avcodec_free_context(&c);
	return video_averr(ret, "open decoder");
}

/* The even-sized 8- or 10-bit planar format x265 gets for src_fmt: same
 * chroma sampling where x265 can take it, 4:2:0 for RGB and the rest. */
static enum AVPixelFormat x265_format(const AVCodec *codec, enum AVPixelFormat src)
{
	const AVPixFmtDescriptor *d = av_pix_fmt_desc_get(src);
	int high = d->comp[0].depth > 8;
	enum AVPixelFormat want;

	if (d->flags & (AV_PIX_FMT_FLAG_RGB | AV_PIX_FMT_FLAG_PAL))
		want = high ? AV_PIX_FMT_YUV420P10 : AV_PIX_FMT_YUV420P;
	else if (d->nb_components <= 2)
		want = high ? AV_PIX_FMT_GRAY10 : AV_PIX_FMT_GRAY8;
	else if (d->log2_chroma_w == 0 && d->log2_chroma_h == 0)
		want = high ? AV_PIX_FMT_YUV444P10 : AV_PIX_FMT_YUV444P;
	else if (d->log2_chroma_w == 1 && d->log2_chroma_h == 0)
		want = high ? AV_PIX_FMT_YUV422P10 : AV_PIX_FMT_YUV422P;
	else
		want = high ? AV_PIX_FMT_YUV420P10 : AV_PIX_FMT_YUV420P;
	for (const enum AVPixelFormat *p = codec->pix_fmts; p && *p != AV_PIX_FMT_NONE; p++)
		if (*p == want)
			return want;
	return high ? AV_PIX_FMT_YUV420P10 : AV_PIX_FMT_YUV420P;
}

/* The yuv* twin of a deprecated full-range yuvj* format (else fmt). */
static enum AVPixelFormat unj(enum AVPixelFormat fmt)
{
	switch (fmt) {
	case AV_PIX_FMT_YUVJ420P:
		return AV_PIX_FMT_YUV420P;
	case AV_PIX_FMT_YUVJ422P:
		return AV_PIX_FMT_YUV422P;
	case AV_PIX_FMT_YUVJ444P:
		return AV_PIX_FMT_YUV444P;
	case AV_PIX_FMT_YUVJ440P:
		return AV_PIX_FMT_YUV440P;
	case AV_PIX_FMT_YUVJ411P:
		return AV_PIX_FMT_YUV411P;
	default:
		return fmt;
	}
}

/* Repeat the last real column and row of each plane of f (w x h of content)
 * into the even padding up to f's own size. */
static void pad_edges(AVFrame *f, int w, int h)
{
	const AVPixFmtDescriptor *d = av_pix_fmt_desc_get(f->format);
	int bps = d->comp[0].depth > 8 ? 2 : 1;

	for (int p = 0; p < d->nb_components && f->data[p]; p++) {
		int sx = (p == 1 || p == 2) ? d->log2_chroma_w : 0;
		int sy = (p == 1 || p == 2) ? d->log2_chroma_h : 0;
		int cw = AV_CEIL_RSHIFT(w, sx), ch = AV_CEIL_RSHIFT(h, sy);
		int tw = AV_CEIL_RSHIFT(f->width, sx), th = AV_CEIL_RSHIFT(f->height, sy);

		for (int y = 0; y < ch; y++) {
			uint8_t *row = f->data[p] + (ptrdiff_t)y * f->linesize[p];
			for (int xx = cw; xx < tw; xx++)
				memcpy(row + xx * bps, row + (cw - 1) * bps, bps);
		}
		for (int y = ch; y < th; y++)
			memcpy(f->data[p] + (ptrdiff_t)y * f->linesize[p],
			       f->data[p] + (ptrdiff_t)(ch - 1) * f->linesize[p], (size_t)tw * bps);
	}
}

int video_conv_frame(struct video_conv *conv, const AVFrame *src, AVFrame *dst)
{
	int ret;

	av_frame_unref(dst);
	dst->format = conv->dst_fmt;
	dst->width = conv->enc_width;
	dst->height = conv->enc_height;
	ret = av_frame_get_buffer(dst, 0);
	if (ret < 0)
		return -ENOMEM;
	if (conv->sws) {
		ret = sws_scale(conv->sws, (const uint8_t *const *)src->data, src->linesize, 0,
				conv->height, dst->data, dst->linesize);
		if (ret <= 0)
			return -EINVAL;
	} else {
		av_image_copy(dst->data, dst->linesize, (const uint8_t **)src->data, src->linesize,
			      conv->dst_fmt, conv->width, conv->height);
	}
	if (conv->enc_width != conv->width || conv->enc_height != conv->height)
		pad_edges(dst, conv->width, conv->height);
	ret = av_frame_copy_props(dst, src);
	return ret < 0 ? -ENOMEM : 0;
}

void video_conv_release(struct video_conv *conv)
{
	sws_freeContext(conv->sws);
	conv->sws = NULL;
}

void video_log_release(struct video_log *log)
{
	av_free(log->extradata);
	free(log->samples);
	free(log->pts);
	free(log->out);
	video_conv_release(&log->conv);
	memset(log, 0, sizeof(*log));
}

/* Append a from the mastering-display and content-light side data of st to
 * the x265 params in buf, in x265's units (0.00002 for chromaticity, 0.0001
 * cd/m2 for luminance). */
static void hdr_params(const AVStream *st, char *buf, size_t len)
{
	const AVMasteringDisplayMetadata *md =
	    (const void *)av_stream_get_side_data(st, AV_PKT_DATA_MASTERING_DISPLAY_METADATA, NULL);
	const AVContentLightMetadata *cl =
	    (const void *)av_stream_get_side_data(st, AV_PKT_DATA_CONTENT_LIGHT_LEVEL, NULL);
	size_t n = strlen(buf);

#define CHROMA(q) ((int)lrint(av_q2d(q) * 50000))
	if (md && md->has_primaries && md->has_luminance)
		n += snprintf(
		    buf + n, n < len ? len - n : 0,
		    ":master-display=G(%d,%d)B(%d,%d)R(%d,%d)WP(%d,%d)L(%lld,%lld)",
		    CHROMA(md->display_primaries[1][0]), CHROMA(md->display_primaries[1][1]),
		    CHROMA(md->display_primaries[2][0]), CHROMA(md->display_primaries[2][1]),
		    CHROMA(md->display_primaries[0][0]), CHROMA(md->display_primaries[0][1]),
		    CHROMA(md->white_point[0]), CHROMA(md->white_point[1]),
		    (long long)llrint(av_q2d(md->max_luminance) * 10000),
		    (long long)llrint(av_q2d(md->min_luminance) * 10000));
#undef CHROMA
	if (cl)
		snprintf(buf + n, n < len ? len - n : 0, ":max-cll=%u,%u", cl->MaxCLL, cl->MaxFALL);
}

/* Copy the side data of ist (display matrix, HDR, ...) to ost. 0 or -ENOMEM. */
static int copy_side_data(const AVStream *ist, AVStream *ost)
{
	for (int i = 0; i < ist->nb_side_data; i++) {
		const AVPacketSideData *sd = &ist->side_data[i];
		uint8_t *p = av_stream_new_side_data(ost, sd->type, sd->size);
		if (!p)
			return -ENOMEM;
		memcpy(p, sd->data, sd->size);
	}
	return 0;
}

/* Seconds between SSIM samples: a second, or less for short clips so that
 * there are VIDEO_SAMPLES_MIN of them (from the duration the headers say). */
static double sample_period(const AVFormatContext *in, const AVStream *ist)
{
	double dur = 0;

	if (ist->duration > 0 && ist->duration != AV_NOPTS_VALUE)
		dur = (double)ist->duration * av_q2d(ist->time_base);
	else if (in->duration > 0)
		dur = (double)in->duration / AV_TIME_BASE;
	if (dur <= 0)
		return VIDEO_SAMPLE_PERIOD_MAX;
	return FFMAX(VIDEO_SAMPLE_PERIOD_MIN,
		     FFMIN(VIDEO_SAMPLE_PERIOD_MAX, dur / VIDEO_SAMPLES_MIN));
}

/*
 * Set up the video stream: decoder, the format conversion (if any), libx265
 * with the source's time base, colour, SAR and HDR, and the output stream
 * tagged hvc1 with the source's display matrix. 0, VIDEO_KEPT or -errno.
 */
static int setup_video(struct xcode *x, AVStream *ist, AVStream *ost)
{
	struct xstream *xs = &x->xs[x->vi];
	struct video_conv *conv = &x->log->conv;
	const AVCodec *codec = avcodec_find_encoder_by_name("libx265");
	AVCodecContext *dec, *enc;
	AVRational fr;
	enum AVPixelFormat src_fmt;
	char params[1024];
	int full, ret;

	if (!codec) {
		log_msg(LOG_ERR, "video: libavcodec has no libx265 encoder");
		return -ENOTSUP;
	}
	ret = open_decoder(ist, &xs->dec, 0);
	if (ret == -ENOTSUP) {
		codec_keep(x->result, "no decoder for %s video",
			   avcodec_get_name(ist->codecpar->codec_id));
		return VIDEO_KEPT;
	}
	if (ret)
		return ret;
	dec = xs->dec;
	if (dec->pix_fmt == AV_PIX_FMT_NONE || dec->width <= 0 || dec->height <= 0) {
		codec_keep(x->result, "video of unknown size or pixel format");
		return VIDEO_KEPT;
	}
	src_fmt = dec->pix_fmt;
	full = dec->color_range == AVCOL_RANGE_JPEG || unj(src_fmt) != src_fmt;
	conv->src_fmt = src_fmt;
	conv->dst_fmt = x265_format(codec, unj(src_fmt));
	conv->width = dec->width;
	conv->height = dec->height;
	conv->enc_width = (dec->width + 1) & ~1;
	conv->enc_height = (dec->height + 1) & ~1;
	x->conv_needed = conv->dst_fmt != unj(src_fmt) || conv->enc_width != conv->width ||
			 conv->enc_height != conv->height;
	if (conv->dst_fmt != unj(src_fmt)) {
		const AVPixFmtDescriptor *d = av_pix_fmt_desc_get(src_fmt);
		int rgb = d->flags & (AV_PIX_FMT_FLAG_RGB | AV_PIX_FMT_FLAG_PAL);
		int cs = dec->height >= 720 ? SWS_CS_ITU709 : SWS_CS_ITU601;

		conv->sws =
		    sws_getContext(conv->width, conv->height, src_fmt, conv->width, conv->height,
				   conv->dst_fmt, SWS_BICUBIC | SWS_ACCURATE_RND, NULL, NULL, NULL);
		if (!conv->sws) {
			codec_keep(x->result, "cannot convert %s video",
				   av_get_pix_fmt_name(src_fmt));
			return VIDEO_KEPT;
		}
		/* YUV keeps its range; RGB becomes limited-range Y'CbCr */
		sws_setColorspaceDetails(conv->sws, sws_getCoefficients(cs), rgb ? 1 : full,
					 sws_getCoefficients(cs), rgb ? 0 : full, 0, 1 << 16,
					 1 << 16);
		if (rgb) {
			full = 0;
			dec->colorspace = dec->height >= 720 ? AVCOL_SPC_BT709 : AVCOL_SPC_BT470BG;
		}
	}

	enc = avcodec_alloc_context3(codec);
	if (!enc)
		return -ENOMEM;
	xs->enc = enc;
	enc->width = conv->enc_width;
	enc->height = conv->enc_height;
	enc->pix_fmt = conv->dst_fmt;
	enc->time_base = ist->time_base;
	fr = av_guess_frame_rate(x->in, ist, NULL);
	enc->framerate = fr.num > 0 && fr.den > 0 ? fr : (AVRational){25, 1};
	enc->sample_aspect_ratio =
	    ist->sample_aspect_ratio.num ? ist->sample_aspect_ratio : dec->sample_aspect_ratio;
	enc->color_primaries = dec->color_primaries;
	enc->color_trc = dec->color_trc;
	enc->colorspace = dec->colorspace;
	enc->color_range = full ? AVCOL_RANGE_JPEG : dec->color_range;
	enc->chroma_sample_location = dec->chroma_sample_location;
	enc->field_order = dec->field_order;
	if (x->out->oformat->flags & AVFMT_GLOBALHEADER)
		enc->flags |= AV_CODEC_FLAG_GLOBAL_HEADER;
	av_opt_set_double(enc->priv_data, "crf", x->opts->crf, 0);
	av_opt_set(enc->priv_data, "preset", x->opts->preset, 0);
	/* frame-dup=0: every source frame is coded, none dropped or doubled */
	snprintf(params, sizeof(params), "log-level=error:frame-dup=0");
	if (x->opts->threads > 0)
		snprintf(params + strlen(params), sizeof(params) - strlen(params), ":pools=%d",
			 x->opts->threads);
	hdr_params(ist, params, sizeof(params));
	if (x->opts->x265_params && x->opts->x265_params[0])
		snprintf(params + strlen(params), sizeof(params) - strlen(params), ":%s",
			 x->opts->x265_params);
	av_opt_set(enc->priv_data, "x265-params", params, 0);
	ret = avcodec_open2(enc, codec, NULL);
	if (ret < 0)
		return video_averr(ret, "open libx265");
	if (enc->extradata_size > 0) {
		x->log->extradata = av_memdup(enc->extradata, (size_t)enc->extradata_size);
		if (!x->log->extradata)
			return -ENOMEM;
		x->log->extradata_size = enc->extradata_size;
	}
	ret = video_check_new(enc, conv->width, conv->height, &x->check);
	if (ret)
		return ret;

	ret = avcodec_parameters_from_context(ost->codecpar, enc);
	if (ret < 0)
		return -ENOMEM;
	ost->codecpar->codec_tag = x->mp4 ? MKTAG('h', 'v', 'c', '1') : 0;
	ost->codecpar->field_order = dec->field_order;
	ost->time_base = ist->time_base;
	ost->avg_frame_rate = ist->avg_frame_rate;
	ost->r_frame_rate = ist->r_frame_rate;
	ost->sample_aspect_ratio = enc->sample_aspect_ratio;
	x->log->tb_num = ist->time_base.num;
	x->log->tb_den = ist->time_base.den;
	x->log->frame_sec = 1 / av_q2d(enc->framerate);
	x->frame = av_frame_alloc();
	x->cframe = av_frame_alloc();
	if (!x->frame || !x->cframe)
		return -ENOMEM;
	if (ist->nb_frames > 0)
		x->total = (uint64_t)ist->nb_frames;
	else if (x->in->duration > 0)
		x->total = (uint64_t)(x->in->duration * av_q2d(enc->framerate) / AV_TIME_BASE);
	x->log->sample_period = sample_period(x->in, ist);
	return copy_side_data(ist, ost);
}

/* AAC's sample rate for a source rate: the same when AAC has it. */
static int aac_rate(const AVCodec *codec, int rate)
{
	for (const int *r = codec->supported_samplerates; r && *r; r++)
		if (*r == rate)
			return rate;
	return AUDIO_FALLBACK_RATE;
}

/* Set up re-encoding of an audio stream to AAC (native encoder), keeping its
 * channel layout where AAC has it (else stereo). 0, VIDEO_KEPT or -errno. */
static int setup_audio(struct xcode *x, struct xstream *xs, AVStream *ist, AVStream *ost)
{
	const AVCodec *codec = avcodec_find_encoder(AV_CODEC_ID_AAC);
	AVCodecContext *enc;
	const AVChannelLayout *l;
	int ret;

	ret = open_decoder(ist, &xs->dec, 1);
	if (ret == -ENOTSUP) {
		codec_keep(x->result, "no decoder for %s audio",
			   avcodec_get_name(ist->codecpar->codec_id));
		return VIDEO_KEPT;
	}
	if (ret)
		return ret;
	if (!codec)
		return -ENOTSUP;
	enc = avcodec_alloc_context3(codec);
	if (!enc)
		return -ENOMEM;
	xs->enc = enc;
	enc->sample_fmt = AV_SAMPLE_FMT_FLTP;
	enc->sample_rate =
	    aac_rate(codec, xs->dec->sample_rate > 0 ? xs->dec->sample_rate : AUDIO_FALLBACK_RATE);
	/* PCM in AVI and the like says only how many channels: give them the
	 * usual order for that count (mono, stereo, ...) */
	if (xs->dec->ch_layout.order == AV_CHANNEL_ORDER_UNSPEC) {
		int n = xs->dec->ch_layout.nb_channels;
		av_channel_layout_uninit(&xs->dec->ch_layout);
		av_channel_layout_default(&xs->dec->ch_layout, n);
	}
	for (l = codec->ch_layouts; l && l->nb_channels; l++)
		if (!av_channel_layout_compare(l, &xs->dec->ch_layout))
			break;
	if (l && l->nb_channels)
		ret = av_channel_layout_copy(&enc->ch_layout, l);
	else
		ret = av_channel_layout_copy(&enc->ch_layout,
					     &(AVChannelLayout)AV_CHANNEL_LAYOUT_STEREO);
	if (ret < 0)
		return -ENOMEM;
	enc->bit_rate = FFMAX(AUDIO_MIN_RATE, AUDIO_RATE_PER_CHANNEL * enc->ch_layout.nb_channels);
	enc->time_base = (AVRational){1, enc->sample_rate};
	if (x->out->oformat->flags & AVFMT_GLOBALHEADER)
		enc->flags |= AV_CODEC_FLAG_GLOBAL_HEADER;
	ret = avcodec_open2(enc, codec, NULL);
	if (ret < 0)
		return video_averr(ret, "open AAC encoder");
	ret = swr_alloc_set_opts2(&xs->swr, &enc->ch_layout, enc->sample_fmt, enc->sample_rate,
				  &xs->dec->ch_layout, xs->dec->sample_fmt, xs->dec->sample_rate, 0,
				  NULL);
	if (ret < 0 || swr_init(xs->swr) < 0) {
		codec_keep(x->result, "cannot resample %s audio",
			   avcodec_get_name(ist->codecpar->codec_id));
		return VIDEO_KEPT;
	}
	xs->fifo = av_audio_fifo_alloc(enc->sample_fmt, enc->ch_layout.nb_channels,
				       enc->frame_size > 0 ? enc->frame_size : 1024);
	if (!xs->fifo)
		return -ENOMEM;
	ret = avcodec_parameters_from_context(ost->codecpar, enc);
	if (ret < 0)
		return -ENOMEM;
	ost->time_base = enc->time_base;
	if (!x->aframe && !(x->aframe = av_frame_alloc()))
		return -ENOMEM;
	if (!x->sframe && !(x->sframe = av_frame_alloc()))
		return -ENOMEM;
	return 0;
}

/* Set up conversion of text subtitles to mov_text (MP4) or SubRip (MKV). */
static int setup_subs(struct xcode *x, struct xstream *xs, AVStream *ist, AVStream *ost)
{
	const AVCodec *codec =
	    avcodec_find_encoder(x->mp4 ? AV_CODEC_ID_MOV_TEXT : AV_CODEC_ID_SUBRIP);
	AVCodecContext *enc;
	int ret;

	ret = open_decoder(ist, &xs->dec, 1);
	if (ret == -ENOTSUP) {
		codec_keep(x->result, "no decoder for %s subtitles",
			   avcodec_get_name(ist->codecpar->codec_id));
		return VIDEO_KEPT;
	}
	if (ret)
		return ret;
	if (!codec)
		return -ENOTSUP;
	enc = avcodec_alloc_context3(codec);
	if (!enc)
		return -ENOMEM;
	xs->enc = enc;
	enc->time_base = AV_TIME_BASE_Q;
	if (xs->dec->subtitle_header) {
		enc->subtitle_header = av_mallocz(xs->dec->subtitle_header_size + 1);
		if (!enc->subtitle_header)
			return -ENOMEM;
		memcpy(enc->subtitle_header, xs->dec->subtitle_header,
		       xs->dec->subtitle_header_size);
		enc->subtitle_header_size = xs->dec->subtitle_header_size;
	}
	ret = avcodec_open2(enc, codec, NULL);
	if (ret < 0)
		return video_averr(ret, "open subtitle encoder");
	ret = avcodec_parameters_from_context(ost->codecpar, enc);
	if (ret < 0)
		return -ENOMEM;
	ost->time_base = ist->time_base;
	if (!x->subbuf && !(x->subbuf = av_malloc(SUB_BUF)))
		return -ENOMEM;
	return 0;
}

/* Set up a stream copied as it is: parameters, and the tag when the output
 * muxer knows it for this codec (data tracks keep theirs). */
static int setup_copy(struct xcode *x, AVStream *ist, AVStream *ost)
{
	const struct AVCodecTag *const *tags = x->out->oformat->codec_tag;
	uint32_t tag = ist->codecpar->codec_tag;
	int ret = avcodec_parameters_copy(ost->codecpar, ist->codecpar);

	if (ret < 0)
		return -ENOMEM;
	if (ist->codecpar->codec_type != AVMEDIA_TYPE_DATA &&
	    (!tags || av_codec_get_id(tags, tag) != ist->codecpar->codec_id))
		ost->codecpar->codec_tag = 0;
	ost->time_base = ist->time_base;
	ost->avg_frame_rate = ist->avg_frame_rate;
	ost->r_frame_rate = ist->r_frame_rate;
	ost->sample_aspect_ratio = ist->sample_aspect_ratio;
	return copy_side_data(ist, ost);
}

/* Copy the chapters, moved by the same start offset as the streams. */
static int copy_chapters(struct xcode *x)
{
	AVFormatContext *in = x->in, *out = x->out;
	int64_t start = in->start_time != AV_NOPTS_VALUE ? in->start_time : 0;

	if (!in->nb_chapters)
		return 0;
	out->chapters = av_calloc(in->nb_chapters, sizeof(*out->chapters));
	if (!out->chapters)
		return -ENOMEM;
	for (unsigned i = 0; i < in->nb_chapters; i++) {
		const AVChapter *ic = in->chapters[i];
		AVChapter *oc = av_mallocz(sizeof(*oc));
		int64_t off = av_rescale_q(start, AV_TIME_BASE_Q, ic->time_base);

		if (!oc)
			return -ENOMEM;
		out->chapters[out->nb_chapters++] = oc;
		oc->id = ic->id;
		oc->time_base = ic->time_base;
		oc->start = FFMAX(ic->start - off, 0);
		oc->end = FFMAX(ic->end - off, oc->start);
		if (av_dict_copy(&oc->metadata, ic->metadata, 0) < 0)
			return -ENOMEM;
	}
	return 0;
}

/*
 * Create the output context, its streams (in source order, dropped ones
 * left out), encoders, tags and chapters, and write the header with
 * faststart (and mdta keys when tags need them). 0, VIDEO_KEPT or -errno.
 */
static int open_output(struct xcode *x, const char *out_path)
{
	AVDictionary *mux_opts = NULL;
	char *url = NULL;
	int ret, nb_out = 0, flac = 0;
	int64_t start = x->in->start_time != AV_NOPTS_VALUE ? x->in->start_time : 0;
	const AVDictionaryEntry *enc_tag;

	ret = avformat_alloc_output_context2(&x->out, NULL, x->mp4 ? "mp4" : "matroska", NULL);
	if (ret < 0)
		return video_averr(ret, "output context");
	x->log->out = calloc(x->in->nb_streams, sizeof(*x->log->out));
	if (!x->log->out)
		return -ENOMEM;
	for (unsigned i = 0; i < x->in->nb_streams; i++) {
		AVStream *ist = x->in->streams[i], *ost;
		struct xstream *xs = &x->xs[i];

		xs->out = -1;
		if (xs->mode == XM_DROP)
			continue;
		ost = avformat_new_stream(x->out, NULL);
		if (!ost)
			return -ENOMEM;
		xs->out = ost->index;
		xs->shift = av_rescale_q(start, AV_TIME_BASE_Q, ist->time_base);
		switch (xs->mode) {
		case XM_VIDEO:
			x->log->vi = (int)i;
			x->log->out_vi = ost->index;
			ret = setup_video(x, ist, ost);
			break;
		case XM_AUDIO:
			ret = setup_audio(x, xs, ist, ost);
			break;
		case XM_SUBS:
			ret = setup_subs(x, xs, ist, ost);
			break;
		default:
			ret = setup_copy(x, ist, ost);
			flac |= ist->codecpar->codec_id == AV_CODEC_ID_FLAC;
			break;
		}
		if (ret)
			return ret;
		ost->disposition = ist->disposition;
		ret = copy_tags(&ost->metadata, ist->metadata, xs->mode == XM_VIDEO);
		if (ret)
			return ret;
		x->log->out[ost->index].src_index = (int)i;
		x->log->out[ost->index].type = ist->codecpar->codec_type;
		x->log->out[ost->index].reencoded = xs->mode == XM_AUDIO;
		nb_out++;
	}
	x->log->nb_out = nb_out;
	ret = copy_tags(&x->out->metadata, x->in->metadata, 0);
	if (ret)
		return ret;
	enc_tag = av_dict_get(x->in->metadata, "encoder", NULL, 0);
	if (enc_tag && !(x->src_encoder = av_strdup(enc_tag->value)))
		return -ENOMEM;
	ret = copy_chapters(x);
	if (ret)
		return ret;

	url = av_asprintf("file:%s", out_path); /* a ':' in the name is no protocol */
	if (!url)
		return -ENOMEM;
	ret = avio_open(&x->out->pb, url, AVIO_FLAG_WRITE);
	if (ret < 0) {
		av_free(url);
		return video_averr(ret, "create output");
	}
	x->out->url = url; /* owned by the context now; faststart reopens it */
	if (x->mp4) {
		av_dict_set(&mux_opts, "movflags",
			    needs_mdta(x->out->metadata) ? "+faststart+use_metadata_tags"
							 : "+faststart",
			    0);
		/* FLAC in MP4 is still "experimental" to libavformat 59 */
		if (flac)
			x->out->strict_std_compliance = FF_COMPLIANCE_EXPERIMENTAL;
	}
	ret = avformat_write_header(x->out, &mux_opts);
	av_dict_free(&mux_opts);
	if (ret < 0)
		return video_averr(ret, "write header");
	/* the muxer stamps its own "encoder"; MP4 writes tags at the trailer, so
	 * the source's one can still go back in */
	if (x->src_encoder)
		av_dict_set(&x->out->metadata, "encoder", x->src_encoder, 0);
	return 0;
}

/* Write one packet for source stream xs (pkt in tb, already shifted). */
static int mux(struct xcode *x, struct xstream *xs, AVPacket *pkt, AVRational tb)
{
	int ret;

	pkt->stream_index = xs->out;
	av_packet_rescale_ts(pkt, tb, x->out->streams[xs->out]->time_base);
	pkt->pos = -1;
	ret = av_interleaved_write_frame(x->out, pkt);
	return ret < 0 ? video_averr(ret, "write packet") : 0;
}

/* Index of pts in the source's frames (log->pts), or -1. */
static long find_pts(const struct video_log *log, int64_t pts)
{
	size_t lo = 0, hi = log->nb_pts;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (log->pts[mid] < pts)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < log->nb_pts && log->pts[lo] == pts ? (long)lo : -1;
}

/* Take every packet enc has ready and mux it. 0 or -errno. */
static int drain_encoder(struct xcode *x, struct xstream *xs)
{
	AVPacket *pkt = av_packet_alloc();
	int ret;

	if (!pkt)
		return -ENOMEM;
	for (;;) {
		ret = avcodec_receive_packet(xs->enc, pkt);
		if (ret == AVERROR(EAGAIN) || ret == AVERROR_EOF) {
			ret = 0;
			break;
		}
		if (ret < 0) {
			ret = video_averr(ret, "encode");
			break;
		}
		if (xs->mode == XM_VIDEO) {
			/* pts as given to x265: the source's, shifted */
			long i = find_pts(x->log, pkt->pts + xs->shift);
			ret = video_check_packet(x->check, pkt, i < 0 ? SIZE_MAX : (size_t)i,
						 x->opts->cancel, x->result);
			if (ret)
				break;
		}
		ret = mux(x, xs, pkt, xs->enc->time_base);
		if (ret)
			break;
	}
	av_packet_free(&pkt);
	return ret;
}

/* Call opts->progress about once a second. */
static void progress(struct xcode *x)
{
	struct timespec now;
	double elapsed;

	if (!x->opts->progress)
		return;
	clock_gettime(CLOCK_MONOTONIC, &now);
	if ((now.tv_sec - x->last_progress.tv_sec) * 1000000000LL +
		(now.tv_nsec - x->last_progress.tv_nsec) <
	    PROGRESS_NS)
		return;
	x->last_progress = now;
	elapsed = (double)(now.tv_sec - x->t0.tv_sec) + (now.tv_nsec - x->t0.tv_nsec) / 1e9;
	x->opts->progress(x->opts->progress_arg, x->frames,
			  x->total > x->frames ? x->total : x->frames,
			  elapsed > 0 ? (double)x->frames / elapsed : 0);
}

/* Has another thread asked us to stop? */
static int cancelled(const struct xcode *x)
{
	return x->opts->cancel && atomic_load(x->opts->cancel);
}

/*
 * Hold the luma of frame f (as x265 gets it, display index log->nb_pts - 1,
 * t seconds from the first frame) for the in-flight check when a sample is
 * due. A sample that finds every plane held waits for a later frame, but
 * never a whole period: then the job is kept rather than checked more
 * thinly. 0, VIDEO_KEPT or -errno.
 */
static int sample_frame(struct xcode *x, const AVFrame *f, double t)
{
	struct video_log *log = x->log;
	int ret;

	if (t < log->next_sample)
		return 0;
	if (log->nb_samples == log->cap_samples) {
		size_t cap = log->cap_samples ? 2 * log->cap_samples : 64;
		size_t *p = realloc(log->samples, cap * sizeof(*p));
		if (!p)
			return -ENOMEM;
		log->samples = p;
		log->cap_samples = cap;
	}
	ret = video_check_hold(x->check, f, log->nb_pts - 1, x->opts->cancel);
	if (ret < 0)
		return ret;
	if (!ret) {
		if (t < log->next_sample + log->sample_period)
			return 0;
		codec_keep(x->result, "cannot hold SSIM samples: %d frames' planes in flight",
			   VIDEO_CHECK_PLANES);
		return VIDEO_KEPT;
	}
	while (log->next_sample <= t)
		log->next_sample += log->sample_period;
	log->samples[log->nb_samples++] = log->nb_pts - 1;
	return 0;
}

/*
 * One decoded video frame: check it (clean, same size, increasing pts),
 * log its pts, convert if needed and give it to x265 with its own pts.
 * 0, VIDEO_KEPT or -errno.
 */
static int encode_video_frame(struct xcode *x, AVFrame *f)
{
	struct xstream *xs = &x->xs[x->vi];
	struct video_log *log = x->log;
	AVFrame *ef = f;
	int64_t pts = f->best_effort_timestamp;
	int ret;

	if (f->decode_error_flags || (f->flags & AV_FRAME_FLAG_CORRUPT)) {
		codec_keep(x->result, "source has decode errors (video frame %zu)", log->nb_pts);
		return VIDEO_KEPT;
	}
	if (f->width != log->conv.width || f->height != log->conv.height ||
	    f->format != log->conv.src_fmt) {
		codec_keep(x->result, "video size or format changes at frame %zu", log->nb_pts);
		return VIDEO_KEPT;
	}
	if (pts == AV_NOPTS_VALUE) {
		codec_keep(x->result, "video frame %zu has no timestamp", log->nb_pts);
		return VIDEO_KEPT;
	}
	if (log->nb_pts && pts <= log->pts[log->nb_pts - 1]) {
		codec_keep(x->result, "video timestamps do not increase at frame %zu", log->nb_pts);
		return VIDEO_KEPT;
	}
	if (log->nb_pts == log->cap_pts) {
		size_t cap = log->cap_pts ? 2 * log->cap_pts : 1024;
		int64_t *p = realloc(log->pts, cap * sizeof(*p));
		if (!p)
			return -ENOMEM;
		log->pts = p;
		log->cap_pts = cap;
	}
	log->pts[log->nb_pts++] = pts;
	if (x->conv_needed) {
		ret = video_conv_frame(&log->conv, f, x->cframe);
		if (ret)
			return ret;
		ef = x->cframe;
	} else {
		ef->format = log->conv.dst_fmt; /* yuvj* -> yuv*, same bytes */
	}
	ef->pts = pts - xs->shift;
	ret = sample_frame(x, ef, (double)(pts - log->pts[0]) * av_q2d(xs->dec->pkt_timebase));
	if (ret) {
		av_frame_unref(x->cframe);
		return ret;
	}
	ef->pict_type = AV_PICTURE_TYPE_NONE;
	ef->color_range = xs->enc->color_range;
	ret = avcodec_send_frame(xs->enc, ef);
	if (ef == x->cframe)
		av_frame_unref(x->cframe);
	if (ret < 0)
		return video_averr(ret, "libx265");
	x->frames++;
	progress(x);
	return drain_encoder(x, xs);
}

/* Feed pkt (NULL: flush) to stream xs's decoder and hand every frame out.
 * 0, VIDEO_KEPT (decode error) or -errno. */
static int decode(struct xcode *x, struct xstream *xs, const AVPacket *pkt,
		  int (*frame_fn)(struct xcode *, struct xstream *, AVFrame *))
{
	AVFrame *f = x->frame;
	int ret;

	ret = avcodec_send_packet(xs->dec, pkt);
	if (ret < 0 && ret != AVERROR_EOF) {
		char msg[AV_ERROR_MAX_STRING_SIZE];
		av_strerror(ret, msg, sizeof(msg));
		codec_keep(x->result, "source has decode errors (%s: %s)",
			   av_get_media_type_string(xs->dec->codec_type), msg);
		return VIDEO_KEPT;
	}
	for (;;) {
		ret = avcodec_receive_frame(xs->dec, f);
		if (ret == AVERROR(EAGAIN) || ret == AVERROR_EOF)
			return 0;
		if (ret < 0) {
			char msg[AV_ERROR_MAX_STRING_SIZE];
			av_strerror(ret, msg, sizeof(msg));
			codec_keep(x->result, "source has decode errors (%s: %s)",
				   av_get_media_type_string(xs->dec->codec_type), msg);
			return VIDEO_KEPT;
		}
		ret = frame_fn(x, xs, f);
		av_frame_unref(f);
		if (ret)
			return ret;
	}
}

/* decode() callback for the video stream. */
static int on_video_frame(struct xcode *x, struct xstream *xs, AVFrame *f)
{
	(void)xs;
	if (cancelled(x))
		return -ECANCELED;
	return encode_video_frame(x, f);
}

/* Encode whole AAC frames from xs's FIFO (the rest too when flushing). */
static int encode_audio_fifo(struct xcode *x, struct xstream *xs, int flush)
{
	AVCodecContext *enc = xs->enc;
	AVFrame *f = x->aframe;
	int ret;

	while (av_audio_fifo_size(xs->fifo) >= enc->frame_size ||
	       (flush && av_audio_fifo_size(xs->fifo) > 0)) {
		av_frame_unref(f);
		f->nb_samples = FFMIN(enc->frame_size, av_audio_fifo_size(xs->fifo));
		f->format = enc->sample_fmt;
		f->sample_rate = enc->sample_rate;
		if (av_channel_layout_copy(&f->ch_layout, &enc->ch_layout) < 0 ||
		    av_frame_get_buffer(f, 0) < 0)
			return -ENOMEM;
		if (av_audio_fifo_read(xs->fifo, (void **)f->extended_data, f->nb_samples) <
		    f->nb_samples)
			return -EIO;
		f->pts = xs->next_pts;
		xs->next_pts += f->nb_samples;
		ret = avcodec_send_frame(enc, f);
		av_frame_unref(f);
		if (ret < 0)
			return video_averr(ret, "AAC encoder");
		ret = drain_encoder(x, xs);
		if (ret)
			return ret;
	}
	return 0;
}

/* Resample f (NULL: flush the resampler) into xs's FIFO. */
static int resample(struct xcode *x, struct xstream *xs, const AVFrame *f)
{
	AVFrame *s = x->sframe;
	int ret;

	av_frame_unref(s);
	s->format = xs->enc->sample_fmt;
	s->sample_rate = xs->enc->sample_rate;
	if (av_channel_layout_copy(&s->ch_layout, &xs->enc->ch_layout) < 0)
		return -ENOMEM;
	if (f && f->ch_layout.order == AV_CHANNEL_ORDER_UNSPEC &&
	    f->ch_layout.nb_channels == xs->dec->ch_layout.nb_channels) {
		/* the same normalisation as the decoder's (see the encoder setup) */
		AVFrame *g = av_frame_clone(f);
		if (!g)
			return -ENOMEM;
		av_channel_layout_uninit(&g->ch_layout);
		av_channel_layout_copy(&g->ch_layout, &xs->dec->ch_layout);
		ret = swr_convert_frame(xs->swr, s, g);
		av_frame_free(&g);
	} else {
		ret = swr_convert_frame(xs->swr, s, f);
	}
	if (ret < 0) {
		codec_keep(x->result, "cannot resample audio (layout changes?)");
		return VIDEO_KEPT;
	}
	if (s->nb_samples > 0 &&
	    av_audio_fifo_write(xs->fifo, (void **)s->extended_data, s->nb_samples) < s->nb_samples)
		return -ENOMEM;
	av_frame_unref(s);
	return 0;
}

/*
 * decode() callback for re-encoded audio: timestamps of the output follow
 * the samples from the first frame's pts on (the source's own timestamps
 * are logged, and verify compares the two spans).
 */
static int on_audio_frame(struct xcode *x, struct xstream *xs, AVFrame *f)
{
	AVRational tb = xs->dec->pkt_timebase;
	int64_t pts = f->best_effort_timestamp;
	int ret;

	if (f->decode_error_flags || (f->flags & AV_FRAME_FLAG_CORRUPT)) {
		codec_keep(x->result, "source has decode errors (audio)");
		return VIDEO_KEPT;
	}
	if (pts != AV_NOPTS_VALUE) {
		int64_t end =
		    pts + av_rescale_q(f->nb_samples, (AVRational){1, f->sample_rate}, tb);
		if (!xs->started) {
			xs->started = 1;
			xs->first = pts;
			xs->end = end;
			xs->next_pts = av_rescale_q(pts - xs->shift, tb,
						    (AVRational){1, xs->enc->sample_rate});
		}
		xs->first = FFMIN(xs->first, pts);
		xs->end = FFMAX(xs->end, end);
	} else if (!xs->started) {
		xs->started = 1;
		xs->first = xs->end = 0;
	}
	xs->content += f->nb_samples;
	ret = resample(x, xs, f);
	if (ret)
		return ret;
	return encode_audio_fifo(x, xs, 0);
}

/* Convert one subtitle packet to the output's text format and mux it. */
static int convert_subtitle(struct xcode *x, struct xstream *xs, AVPacket *pkt)
{
	AVRational itb = x->in->streams[pkt->stream_index]->time_base;
	AVSubtitle sub;
	AVPacket *op;
	int got = 0, ret, n;

	ret = avcodec_decode_subtitle2(xs->dec, &sub, &got, pkt);
	if (ret < 0) {
		codec_keep(x->result, "source has decode errors (subtitles)");
		return VIDEO_KEPT;
	}
	if (!got)
		return 0;
	if (!sub.num_rects || pkt->pts == AV_NOPTS_VALUE) {
		avsubtitle_free(&sub);
		return 0;
	}
	sub.pts = av_rescale_q(pkt->pts - xs->shift, itb, AV_TIME_BASE_Q);
	n = avcodec_encode_subtitle(xs->enc, x->subbuf, SUB_BUF, &sub);
	if (n < 0) {
		avsubtitle_free(&sub);
		codec_keep(x->result, "cannot convert a subtitle event");
		return VIDEO_KEPT;
	}
	op = av_packet_alloc();
	if (!op || av_new_packet(op, n) < 0) {
		avsubtitle_free(&sub);
		av_packet_free(&op);
		return -ENOMEM;
	}
	memcpy(op->data, x->subbuf, n);
	op->pts = op->dts =
	    pkt->pts - xs->shift + av_rescale_q(sub.start_display_time, (AVRational){1, 1000}, itb);
	op->duration = sub.end_display_time > sub.start_display_time
			   ? av_rescale_q(sub.end_display_time - sub.start_display_time,
					  (AVRational){1, 1000}, itb)
			   : pkt->duration;
	avsubtitle_free(&sub);
	ret = mux(x, xs, op, itb);
	av_packet_free(&op);
	return ret;
}

/* Track the span and durations of a copied packet, shift it and mux it. */
static int copy_packet(struct xcode *x, struct xstream *xs, AVPacket *pkt)
{
	AVRational tb = x->in->streams[pkt->stream_index]->time_base;
	int64_t ts = pkt->pts != AV_NOPTS_VALUE ? pkt->pts : pkt->dts;

	if (ts != AV_NOPTS_VALUE) {
		if (!xs->started) {
			xs->started = 1;
			xs->first = ts;
			xs->end = ts + pkt->duration;
		}
		xs->first = FFMIN(xs->first, ts);
		xs->end = FFMAX(xs->end, ts + pkt->duration);
	}
	xs->content += pkt->duration;
	xs->no_duration |= pkt->duration <= 0;
	if (pkt->pts != AV_NOPTS_VALUE)
		pkt->pts -= xs->shift;
	if (pkt->dts != AV_NOPTS_VALUE)
		pkt->dts -= xs->shift;
	return mux(x, xs, pkt, tb);
}

/* Read every source packet and route it; flush at the end. */
static int run(struct xcode *x)
{
	AVPacket *pkt = x->pkt;
	int ret;

	clock_gettime(CLOCK_MONOTONIC, &x->t0);
	x->last_progress = x->t0;
	for (;;) {
		struct xstream *xs;

		if (cancelled(x))
			return -ECANCELED;
		ret = av_read_frame(x->in, pkt);
		if (ret == AVERROR_EOF)
			break;
		if (ret < 0) {
			char msg[AV_ERROR_MAX_STRING_SIZE];
			if (video_input_errno(x->in))
				return -video_input_errno(x->in);
			av_strerror(ret, msg, sizeof(msg));
			codec_keep(x->result, "source damaged: %s", msg);
			return VIDEO_KEPT;
		}
		xs = &x->xs[pkt->stream_index];
		if (xs->mode != XM_DROP && (pkt->flags & AV_PKT_FLAG_CORRUPT)) {
			codec_keep(x->result, "source damaged: corrupt packet in stream %d",
				   pkt->stream_index);
			av_packet_unref(pkt);
			return VIDEO_KEPT;
		}
		switch (xs->mode) {
		case XM_VIDEO:
			ret = decode(x, xs, pkt, on_video_frame);
			break;
		case XM_AUDIO:
			ret = decode(x, xs, pkt, on_audio_frame);
			break;
		case XM_SUBS:
			ret = convert_subtitle(x, xs, pkt);
			break;
		case XM_COPY:
			ret = copy_packet(x, xs, pkt);
			break;
		default:
			ret = 0;
			break;
		}
		av_packet_unref(pkt);
		if (ret)
			return ret;
	}
	if (video_input_errno(x->in))
		return -video_input_errno(x->in);
	for (unsigned i = 0; i < x->in->nb_streams; i++) {
		struct xstream *xs = &x->xs[i];

		if (xs->mode == XM_VIDEO) {
			ret = decode(x, xs, NULL, on_video_frame);
			if (!ret)
				ret = avcodec_send_frame(xs->enc, NULL) < 0 ? -EIO : 0;
			if (!ret)
				ret = drain_encoder(x, xs);
			if (!ret)
				video_check_eof(x->check);
		} else if (xs->mode == XM_AUDIO) {
			ret = decode(x, xs, NULL, on_audio_frame);
			if (!ret)
				ret = resample(x, xs, NULL);
			if (!ret)
				ret = encode_audio_fifo(x, xs, 1);
			if (!ret)
				ret = avcodec_send_frame(xs->enc, NULL) < 0 ? -EIO : 0;
			if (!ret)
				ret = drain_encoder(x, xs);
		}
		if (ret)
			return ret;
	}
	return 0;
}

/*
 * Empty the encoders of a job abandoned because the source proved unfit:
 * libavcodec 59's libx265 wrapper leaks a few bytes per frame still inside
 * x265 at close. Not done on cancellation, which must be prompt.
 */
static void drop_encoders(struct xcode *x)
{
	AVPacket *pkt = av_packet_alloc();

	if (!pkt)
		return;
	for (unsigned i = 0; i < x->in->nb_streams; i++) {
		AVCodecContext *enc = x->xs[i].enc;
		if (!enc || x->xs[i].mode != XM_VIDEO || avcodec_send_frame(enc, NULL) < 0)
			continue;
		while (avcodec_receive_packet(enc, pkt) >= 0)
			av_packet_unref(pkt);
	}
	av_packet_free(&pkt);
}

/* What verify needs to know of each output stream's durations. */
static void fill_log(struct xcode *x)
{
	for (unsigned i = 0; i < x->in->nb_streams; i++) {
		struct xstream *xs = &x->xs[i];
		struct video_out *o;
		AVRational tb = x->in->streams[i]->time_base;

		if (xs->out < 0)
			continue;
		o = &x->log->out[xs->out];
		o->src_span = xs->started ? (double)(xs->end - xs->first) * av_q2d(tb) : 0;
		o->content = -1;
		o->tol = 0.05; /* 50 ms */
		if (xs->mode == XM_AUDIO) {
			o->content = (double)xs->content / xs->dec->sample_rate;
			/* the AAC encoder pads its last frame (and primes) */
			o->tol += 2.0 * xs->enc->frame_size / xs->enc->sample_rate;
		} else if (xs->mode == XM_COPY && !xs->no_duration) {
			o->content = (double)xs->content * av_q2d(tb);
		}
	}
}

int video_transcode(struct AVFormatContext *in, const char *out_path, const struct codec_opts *opts,
		    struct video_log *log, struct codec_result *result)
{
	struct xcode x = {.in = in, .opts = opts, .log = log, .result = result, .vi = -1};
	int ret;
	int64_t best = -1;

	/* the largest non-picture video stream is the one we re-encode */
	for (unsigned i = 0; i < in->nb_streams; i++) {
		const AVCodecParameters *par = in->streams[i]->codecpar;
		if (par->codec_type == AVMEDIA_TYPE_VIDEO &&
		    !(in->streams[i]->disposition & AV_DISPOSITION_ATTACHED_PIC) &&
		    (int64_t)par->width * par->height > best) {
			best = (int64_t)par->width * par->height;
			x.vi = (int)i;
		}
	}
	if (x.vi < 0) {
		codec_keep(result, "no video stream");
		return VIDEO_KEPT;
	}
	x.xs = calloc(in->nb_streams, sizeof(*x.xs));
	x.pkt = av_packet_alloc();
	if (!x.xs || !x.pkt) {
		ret = -ENOMEM;
		goto out_free;
	}
	ret = plan(&x);
	if (ret)
		goto out_free;
	ret = open_output(&x, out_path);
	if (ret)
		goto out_free_output;
	ret = run(&x);
	if (ret)
		goto out_free_output;
	if (x.frames < 2) {
		codec_keep(result, "a single picture, not a video");
		ret = VIDEO_KEPT;
		goto out_free_output;
	}
	if (log->next_sample <= (double)(log->pts[log->nb_pts - 1] - log->pts[0]) *
				    av_q2d(x.xs[x.vi].dec->pkt_timebase)) {
		/* the last sample due found no plane free before the end */
		codec_keep(result, "cannot hold SSIM samples: %d frames' planes in flight",
			   VIDEO_CHECK_PLANES);
		ret = VIDEO_KEPT;
		goto out_free_output;
	}
	/* the helper decodes its last packets while faststart moves the index */
	ret = av_write_trailer(x.out);
	if (ret < 0) {
		ret = video_averr(ret, "write trailer");
		goto out_free_output;
	}
	ret = video_check_end(x.check, opts->cancel, log, result);
	if (ret)
		goto out_free_output;
	fill_log(&x);
	if (x.opts->progress) {
		x.last_progress.tv_sec = 0; /* force the last call */
		progress(&x);
	}

out_free_output:
	video_check_free(&x.check);
	if (ret == VIDEO_KEPT)
		drop_encoders(&x);
	if (x.out) {
		if (x.out->pb && avio_closep(&x.out->pb) < 0 && !ret)
			ret = -EIO;
		avformat_free_context(x.out);
	}
out_free:
	if (x.xs)
		for (unsigned i = 0; i < in->nb_streams; i++) {
			avcodec_free_context(&x.xs[i].dec);
			avcodec_free_context(&x.xs[i].enc);
			swr_free(&x.xs[i].swr);
			if (x.xs[i].fifo)
				av_audio_fifo_free(x.xs[i].fifo);
		}
	free(x.xs);
	av_packet_free(&x.pkt);
	av_frame_free(&x.frame);
	av_frame_free(&x.cframe);
	av_frame_free(&x.aframe);
	av_frame_free(&x.sframe);
	av_free(x.subbuf);
	av_free(x.src_encoder);
	return ret;
}
