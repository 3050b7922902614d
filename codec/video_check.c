/*
 * video_check — in-flight verification of the re-encoded video: a helper
 * thread decodes x265's packets (references to the very packets the muxer
 * gets) and compares the luma of sampled frames with the source's, held in
 * RAM from the moment the frame goes to x265 until its decoded twin comes
 * out; and the digest of the video as the muxer writes it, which
 * video_verify recomputes from the file.
 *
 * Threads: the transcode's thread (the producer) calls every video_check_*
 * function; the helper only runs check_main. vc->lock protects the queue,
 * the flags and the slots' state; a slot's plane belongs to the producer
 * while the slot is free and to the helper while it is busy.
 */
#include "internal.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include <libavcodec/avcodec.h>
#include <libavutil/pixdesc.h>

/* Packets between x265 and the helper: a few frames' worth, so the helper
 * trails the encoder closely (a full queue blocks the transcode). */
#define CHECK_QUEUE 16
/* How often a transcode waiting for the helper looks at opts->cancel. */
#define CHECK_POLL_NS 50000000L
/* FNV-1a, 64 bits. */
#define FNV_PRIME 0x100000001b3ull
/* HEVC NAL unit types: VCL below this; up to RSV_VCL_N14, even types are
 * sub-layer non-reference pictures (H.265 7.4.2.2); the SPS. */
#define HEVC_NAL_VCL_END 32
#define HEVC_NAL_SLNR_END 14
#define HEVC_NAL_SPS 33

enum slot_state {
	SLOT_FREE = 0, /* plane owned by the producer */
	SLOT_HELD,     /* waiting for its frame to come out of the decoder */
	SLOT_BUSY,     /* plane owned by the helper, comparing */
};

/* A source plane kept for a sampled frame. */
struct check_slot {
	enum slot_state state;
	int64_t pts;	/* the frame's pts as x265 got it */
	size_t index;	/* its display index */
	uint8_t *plane; /* 8-bit luma, width x height packed; allocated on first use */
};

/* The check of one transcode. */
struct video_check {
	int width, height; /* the source's luma size, compared */
	int top_tid;	   /* highest TemporalId, from the SPS; -1: unknown */
	pthread_mutex_t lock;
	pthread_cond_t more; /* to the helper: a packet, eof or stop */
	pthread_cond_t room; /* to the producer: queue space, a free slot, idle, done */
	pthread_t thread;
	int started; /* thread is joinable */
	/* protected by lock */
	AVPacket *queue[CHECK_QUEUE];
	size_t head, count;
	int busy;	     /* the helper is working on a packet it took */
	int eof, stop, done; /* no more packets; abandon; the helper has finished */
	int ret;	     /* the helper's verdict once done: 0, VIDEO_KEPT, -errno */
	char why[160];	     /* the reason when ret == VIDEO_KEPT */
	struct check_slot slot[VIDEO_CHECK_PLANES];
	int held, peak; /* slots not free: now, at most */
	/* the helper's, read by the producer once done */
	AVCodecContext *dec;
	AVFrame *frame;
	uint8_t *luma; /* a decoded deep frame brought to 8 bits */
	size_t sent, decoded, checked, skipped;
	double min_ssim;
	size_t min_at;
	double cpu; /* the helper's CPU seconds */
	/* the producer's */
	uint64_t digest;
	size_t packets;
};

uint64_t video_digest(uint64_t h, const void *data, size_t len)
{
	const uint8_t *p = data;

	for (size_t i = 0; i < len; i++) {
		h ^= p[i];
		h *= FNV_PRIME;
	}
	return h;
}

/* Digest a 64-bit count, little-endian. */
static uint64_t digest_u64(uint64_t h, uint64_t v)
{
	uint8_t b[8];

	for (int i = 0; i < 8; i++)
		b[i] = (uint8_t)(v >> (8 * i));
	return video_digest(h, b, sizeof(b));
}

uint64_t video_digest_packet(uint64_t h, uint64_t index, const uint8_t *data, size_t size)
{
	h = digest_u64(h, index);
	h = video_digest(h, data, size);
	return digest_u64(h, size);
}

/* The first 00 00 01 inside [p, end), moved back over one zero byte before
 * it; end when there is none (libavformat's ff_avc_find_startcode). */
static const uint8_t *find_startcode(const uint8_t *p, const uint8_t *end)
{
	const uint8_t *q = p;

	while (end - q >= 3 && !(q[0] == 0 && q[1] == 0 && q[2] == 1))
		q++;
	if (end - q < 3)
		return end;
	if (q > p && !q[-1])
		q--;
	return q;
}

void video_nals_begin(struct video_nals *it, const uint8_t *data, size_t size)
{
	it->end = data + size;
	it->pos = find_startcode(data, it->end);
}

int video_nals_next(struct video_nals *it, const uint8_t **nal, size_t *len)
{
	const uint8_t *s = it->pos, *e;

	/* zeros, then the start code's 01 */
	while (s < it->end && !*s++)
		;
	if (s == it->end)
		return 0;
	e = find_startcode(s, it->end);
	*nal = s;
	*len = (size_t)(e - s);
	it->pos = e;
	return 1;
}

uint64_t video_digest_annexb(uint64_t h, uint64_t index, const uint8_t *data, size_t size)
{
	struct video_nals it;
	const uint8_t *nal;
	size_t len, total = 0;

	h = digest_u64(h, index);
	video_nals_begin(&it, data, size);
	while (video_nals_next(&it, &nal, &len)) {
		uint8_t be[4] = {(uint8_t)(len >> 24), (uint8_t)(len >> 16), (uint8_t)(len >> 8),
				 (uint8_t)len};
		h = video_digest(h, be, sizeof(be));
		h = video_digest(h, nal, len);
		total += sizeof(be) + len;
	}
	return digest_u64(h, total);
}

/* Bring the top-left width x height of f's luma to 8 bits in out (packed
 * rows), or point at it when it is 8-bit already. Returns the plane. */
static const uint8_t *luma8(const AVFrame *f, int width, int height, uint8_t *out, int *stride)
{
	const AVPixFmtDescriptor *d = av_pix_fmt_desc_get(f->format);
	int depth = d->comp[0].depth;

	if (depth <= 8) {
		*stride = f->linesize[0];
		return f->data[0];
	}
	for (int y = 0; y < height; y++) {
		const uint16_t *row =
		    (const uint16_t *)(f->data[0] + (ptrdiff_t)y * f->linesize[0]);
		uint8_t *o = out + (size_t)y * width;
		for (int x = 0; x < width; x++)
			o[x] = (uint8_t)FFMIN(row[x] >> (depth - 8), 255);
	}
	*stride = width;
	return out;
}

/* Record the helper's failure (VIDEO_KEPT with a reason) and return it. */
static int check_fail(struct video_check *vc, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static int check_fail(struct video_check *vc, const char *fmt, ...)
{
	va_list ap;

	pthread_mutex_lock(&vc->lock);
	va_start(ap, fmt);
	vsnprintf(vc->why, sizeof(vc->why), fmt, ap);
	va_end(ap);
	pthread_mutex_unlock(&vc->lock);
	return VIDEO_KEPT;
}

/* A decoded frame: clean, the right size, and compared with the source's
 * plane when it is a sample. Helper thread. 0 or VIDEO_KEPT. */
static int check_frame(struct video_check *vc, const AVFrame *f)
{
	const AVPixFmtDescriptor *d = av_pix_fmt_desc_get(f->format);
	struct check_slot *s = NULL;
	int64_t pts = f->best_effort_timestamp;
	const uint8_t *b;
	double ssim;
	int sb;

	vc->decoded++;
	if (f->decode_error_flags || (f->flags & AV_FRAME_FLAG_CORRUPT))
		return check_fail(vc, "verify: decode error at frame %zu", vc->decoded - 1);
	if (f->width < vc->width || f->height < vc->height || !d)
		return check_fail(vc, "verify: a frame is %dx%d, expected %dx%d", f->width,
				  f->height, vc->width, vc->height);
	pthread_mutex_lock(&vc->lock);
	for (int i = 0; i < VIDEO_CHECK_PLANES; i++)
		if (vc->slot[i].state == SLOT_HELD && vc->slot[i].pts == pts) {
			s = &vc->slot[i];
			s->state = SLOT_BUSY;
			break;
		}
	pthread_mutex_unlock(&vc->lock);
	if (!s)
		return 0;
	b = luma8(f, vc->width, vc->height, vc->luma, &sb);
	ssim = codec_ssim_plane(s->plane, vc->width, b, sb, vc->width, vc->height);
	vc->checked++;
	if (ssim < vc->min_ssim) {
		vc->min_ssim = ssim;
		vc->min_at = s->index;
	}
	pthread_mutex_lock(&vc->lock);
	s->state = SLOT_FREE;
	vc->held--;
	pthread_cond_signal(&vc->room);
	pthread_mutex_unlock(&vc->lock);
	return 0;
}

/* Feed pkt (NULL: flush) to the decoder and check what comes out. Helper
 * thread. 0, VIDEO_KEPT or -errno. */
static int check_decode(struct video_check *vc, const AVPacket *pkt)
{
	int ret = avcodec_send_packet(vc->dec, pkt);

	if (ret < 0 && ret != AVERROR_EOF)
		return check_fail(vc, "verify: the encoded video does not decode (packet %zu)",
				  vc->sent);
	vc->sent += pkt != NULL;
	for (;;) {
		ret = avcodec_receive_frame(vc->dec, vc->frame);
		if (ret == AVERROR(EAGAIN) || ret == AVERROR_EOF)
			return 0;
		if (ret < 0)
			return check_fail(vc,
					  "verify: the encoded video does not decode (frame %zu)",
					  vc->decoded);
		ret = check_frame(vc, vc->frame);
		av_frame_unref(vc->frame);
		if (ret)
			return ret;
	}
}

/* After the flush: every packet gave its picture, every sample compared. */
static int check_final(struct video_check *vc)
{
	int left = -1;

	if (vc->decoded != vc->sent)
		return check_fail(vc, "verify: %zu pictures decoded of %zu", vc->decoded, vc->sent);
	pthread_mutex_lock(&vc->lock);
	for (int i = 0; i < VIDEO_CHECK_PLANES && left < 0; i++)
		if (vc->slot[i].state != SLOT_FREE)
			left = i;
	pthread_mutex_unlock(&vc->lock);
	if (left >= 0)
		return check_fail(vc, "verify: sampled frame %zu was not decoded",
				  vc->slot[left].index);
	return 0;
}

/*
 * Is the picture in pkt (Annex B) one no other picture refers to: a
 * sub-layer non-reference picture of the highest sub-layer (H.265 3.132,
 * 7.4.2.2)? Anything unclear says no, so that it is decoded.
 */
static int unreferenced(const struct video_check *vc, const AVPacket *pkt)
{
	struct video_nals it;
	const uint8_t *nal;
	size_t len;

	if (vc->top_tid < 0)
		return 0;
	video_nals_begin(&it, pkt->data, (size_t)pkt->size);
	while (video_nals_next(&it, &nal, &len)) {
		int type, tid;

		if (len < 2)
			return 0;
		type = (nal[0] >> 1) & 0x3f;
		tid = (nal[1] & 7) - 1;
		if (type < HEVC_NAL_VCL_END)
			return type <= HEVC_NAL_SLNR_END && !(type & 1) && tid == vc->top_tid;
	}
	return 0;
}

/* With vc->lock held: is a source plane waiting for the frame of pts? */
static int slot_held(const struct video_check *vc, int64_t pts)
{
	for (int i = 0; i < VIDEO_CHECK_PLANES; i++)
		if (vc->slot[i].state == SLOT_HELD && vc->slot[i].pts == pts)
			return 1;
	return 0;
}

/*
 * The helper: take packets in order, decode, compare; then say done. A
 * picture that is no sample and that nothing refers to is not decoded (the
 * samples decode the same without it; the digest covers its bytes).
 */
static void *check_main(void *arg)
{
	struct video_check *vc = arg;
	struct rusage ru;
	AVPacket *pkt;
	int ret = 0;

	for (;;) {
		int sample = 0;

		pthread_mutex_lock(&vc->lock);
		vc->busy = 0;
		pthread_cond_signal(&vc->room);
		while (!vc->count && !vc->eof && !vc->stop)
			pthread_cond_wait(&vc->more, &vc->lock);
		if (vc->stop) {
			pthread_mutex_unlock(&vc->lock);
			return NULL;
		}
		pkt = NULL;
		if (vc->count) {
			pkt = vc->queue[vc->head];
			vc->queue[vc->head] = NULL;
			vc->head = (vc->head + 1) % CHECK_QUEUE;
			vc->count--;
			vc->busy = 1;
			sample = slot_held(vc, pkt->pts);
			pthread_cond_signal(&vc->room);
		}
		pthread_mutex_unlock(&vc->lock);
		if (pkt && !sample && unreferenced(vc, pkt)) {
			vc->skipped++;
			av_packet_free(&pkt);
			continue;
		}
		ret = check_decode(vc, pkt);
		if (ret || !pkt)
			break;
		av_packet_free(&pkt);
	}
	if (!ret)
		ret = check_final(vc);
	if (!getrusage(RUSAGE_THREAD, &ru))
		vc->cpu = (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
			  (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
	pthread_mutex_lock(&vc->lock);
	vc->ret = ret;
	vc->done = 1;
	vc->busy = 0;
	pthread_cond_broadcast(&vc->room);
	pthread_mutex_unlock(&vc->lock);
	av_packet_free(&pkt);
	return NULL;
}

/* With vc->lock held: wait on room for at most CHECK_POLL_NS.
 * -ECANCELED when cancel is set, else 0. */
static int wait_room(struct video_check *vc, const atomic_int *cancel)
{
	struct timespec ts;

	if (cancel && atomic_load(cancel))
		return -ECANCELED;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	ts.tv_nsec += CHECK_POLL_NS;
	if (ts.tv_nsec >= 1000000000L) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000L;
	}
	pthread_cond_timedwait(&vc->room, &vc->lock, &ts);
	return 0;
}

/* With vc->lock held: the helper's verdict when it stopped early (the
 * reason goes to result), else 0. */
static int helper_failed(const struct video_check *vc, struct codec_result *result)
{
	if (!vc->done)
		return 0;
	if (vc->ret == VIDEO_KEPT)
		codec_keep(result, "%s", vc->why);
	return vc->ret ? vc->ret : -EPROTO; /* done before eof: cannot be */
}

/* The highest TemporalId of the stream, from sps_max_sub_layers_minus1 of
 * the SPS in Annex B extradata (the byte after the NAL header, which no
 * emulation prevention can precede); -1 when there is none. */
static int sps_top_tid(const uint8_t *data, size_t size)
{
	struct video_nals it;
	const uint8_t *nal;
	size_t len;

	if (!data)
		return -1;
	video_nals_begin(&it, data, size);
	while (video_nals_next(&it, &nal, &len))
		if (len >= 3 && ((nal[0] >> 1) & 0x3f) == HEVC_NAL_SPS)
			return (nal[2] >> 1) & 7;
	return -1;
}

int video_check_new(const struct AVCodecContext *enc, int width, int height,
		    struct video_check **out)
{
	const AVCodec *codec = avcodec_find_decoder(AV_CODEC_ID_HEVC);
	struct video_check *vc;
	pthread_condattr_t attr;
	int ret;

	if (!codec) {
		log_msg(LOG_ERR, "video: libavcodec has no HEVC decoder");
		return -ENOTSUP;
	}
	vc = calloc(1, sizeof(*vc));
	if (!vc)
		return -ENOMEM;
	vc->width = width;
	vc->height = height;
	vc->min_ssim = 2.0;
	vc->digest = VIDEO_DIGEST_INIT;
	pthread_mutex_init(&vc->lock, NULL);
	pthread_condattr_init(&attr);
	pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
	pthread_cond_init(&vc->more, NULL);
	pthread_cond_init(&vc->room, &attr);
	pthread_condattr_destroy(&attr);

	vc->frame = av_frame_alloc();
	vc->luma = malloc((size_t)width * (size_t)height);
	vc->dec = avcodec_alloc_context3(codec);
	if (!vc->frame || !vc->luma || !vc->dec) {
		ret = -ENOMEM;
		goto out_free;
	}
	if (enc->extradata_size > 0) {
		vc->dec->extradata =
		    av_mallocz((size_t)enc->extradata_size + AV_INPUT_BUFFER_PADDING_SIZE);
		if (!vc->dec->extradata) {
			ret = -ENOMEM;
			goto out_free;
		}
		memcpy(vc->dec->extradata, enc->extradata, (size_t)enc->extradata_size);
		vc->dec->extradata_size = enc->extradata_size;
	}
	vc->top_tid = sps_top_tid(enc->extradata, (size_t)FFMAX(enc->extradata_size, 0));
	vc->dec->pkt_timebase = enc->time_base;
	/* one thread, no frame delay: it lives off the cores x265 leaves idle */
	vc->dec->thread_count = 1;
	vc->dec->err_recognition |= AV_EF_EXPLODE;
	ret = avcodec_open2(vc->dec, codec, NULL);
	if (ret < 0) {
		ret = video_averr(ret, "open check decoder");
		goto out_free;
	}
	ret = pthread_create(&vc->thread, NULL, check_main, vc);
	if (ret) {
		ret = -ret;
		goto out_free;
	}
	vc->started = 1;
	*out = vc;
	return 0;

out_free:
	video_check_free(&vc);
	return ret;
}

int video_check_hold(struct video_check *vc, const struct AVFrame *f, size_t index,
		     const atomic_int *cancel)
{
	const AVPixFmtDescriptor *d = av_pix_fmt_desc_get(f->format);
	struct check_slot *s = NULL;
	int depth = d->comp[0].depth, ret = 0;

	pthread_mutex_lock(&vc->lock);
	/* full: let the helper use up what x265 has given so far (it cannot
	 * free more without frames yet to be sent), so that whether a sample
	 * is taken does not depend on how the threads ran */
	while (vc->held == VIDEO_CHECK_PLANES && (vc->count || vc->busy) && !vc->done && !ret)
		ret = wait_room(vc, cancel);
	for (int i = 0; i < VIDEO_CHECK_PLANES && !ret; i++)
		if (vc->slot[i].state == SLOT_FREE) {
			s = &vc->slot[i];
			break;
		}
	pthread_mutex_unlock(&vc->lock);
	if (ret || !s)
		return ret;
	if (!s->plane && !(s->plane = malloc((size_t)vc->width * (size_t)vc->height)))
		return -ENOMEM;
	for (int y = 0; y < vc->height; y++) {
		const uint8_t *row = f->data[0] + (ptrdiff_t)y * f->linesize[0];
		uint8_t *o = s->plane + (size_t)y * vc->width;

		if (depth <= 8) {
			memcpy(o, row, (size_t)vc->width);
			continue;
		}
		for (int i = 0; i < vc->width; i++)
			o[i] = (uint8_t)FFMIN(((const uint16_t *)row)[i] >> (depth - 8), 255);
	}
	pthread_mutex_lock(&vc->lock);
	s->pts = f->pts;
	s->index = index;
	s->state = SLOT_HELD;
	vc->held++;
	vc->peak = FFMAX(vc->peak, vc->held);
	pthread_mutex_unlock(&vc->lock);
	return 1;
}

int video_check_packet(struct video_check *vc, const struct AVPacket *pkt, size_t index,
		       const atomic_int *cancel, struct codec_result *result)
{
	AVPacket *ref;
	int ret = 0;

	vc->digest = video_digest_annexb(vc->digest, index, pkt->data, (size_t)pkt->size);
	vc->packets++;
	ref = av_packet_clone(pkt); /* a reference: the muxer's bytes, not a copy */
	if (!ref)
		return -ENOMEM;
	pthread_mutex_lock(&vc->lock);
	while (vc->count == CHECK_QUEUE && !vc->done && !ret)
		ret = wait_room(vc, cancel);
	if (!ret)
		ret = helper_failed(vc, result);
	if (!ret) {
		vc->queue[(vc->head + vc->count) % CHECK_QUEUE] = ref;
		vc->count++;
		ref = NULL;
		pthread_cond_signal(&vc->more);
	}
	pthread_mutex_unlock(&vc->lock);
	av_packet_free(&ref);
	return ret;
}

void video_check_eof(struct video_check *vc)
{
	pthread_mutex_lock(&vc->lock);
	vc->eof = 1;
	pthread_cond_signal(&vc->more);
	pthread_mutex_unlock(&vc->lock);
}

int video_check_end(struct video_check *vc, const atomic_int *cancel, struct video_log *log,
		    struct codec_result *result)
{
	int ret = 0;

	pthread_mutex_lock(&vc->lock);
	vc->eof = 1;
	pthread_cond_signal(&vc->more);
	while (!vc->done && !ret)
		ret = wait_room(vc, cancel);
	if (!ret)
		ret = vc->ret;
	if (ret == VIDEO_KEPT)
		codec_keep(result, "%s", vc->why);
	pthread_mutex_unlock(&vc->lock);
	if (ret)
		return ret;
	pthread_join(vc->thread, NULL);
	vc->started = 0;
	log->digest = vc->digest;
	log->nb_packets = vc->packets;
	log->nb_checked = vc->checked;
	log->min_ssim = vc->min_ssim > 1.0 ? 1.0 : vc->min_ssim;
	log->min_at = vc->min_at;
	log_msg(LOG_DEBUG,
		"video: decoded %zu pictures in flight (%zu unreferenced skipped, "
		"%.2f s CPU), %zu samples, SSIM %.4f, at most %d planes held (%zu bytes each)",
		vc->decoded, vc->skipped, vc->cpu, vc->checked, log->min_ssim, vc->peak,
		(size_t)vc->width * (size_t)vc->height);
	return 0;
}

void video_check_free(struct video_check **pvc)
{
	struct video_check *vc = *pvc;

	if (!vc)
		return;
	if (vc->started) {
		pthread_mutex_lock(&vc->lock);
		vc->stop = 1;
		pthread_cond_signal(&vc->more);
		pthread_mutex_unlock(&vc->lock);
		pthread_join(vc->thread, NULL);
	}
	for (size_t i = 0; i < vc->count; i++)
		av_packet_free(&vc->queue[(vc->head + i) % CHECK_QUEUE]);
	for (int i = 0; i < VIDEO_CHECK_PLANES; i++)
		free(vc->slot[i].plane);
	avcodec_free_context(&vc->dec);
	av_frame_free(&vc->frame);
	free(vc->luma);
	pthread_cond_destroy(&vc->more);
	pthread_cond_destroy(&vc->room);
	pthread_mutex_destroy(&vc->lock);
	free(vc);
	*pvc = NULL;
}
