/*
 * scrub — a stored file decoded whole, as a scrub does after its checksum:
 * every picture of a HEIC (an archived photo's view rendered to the size its
 * header promised), every frame of a video. The decoders are asked to
 * report damage rather than conceal it.
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <libheif/heif.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>

/* Largest HEIC read whole to check (a photo we wrote is far smaller). */
#define SCRUB_MAX_HEIC (1ull << 30)

/* Decode the picture of handle h (a top-level image or a thumbnail). 0, 1
 * with why set when it does not decode, -ENOMEM. */
static int decode_handle(const struct heif_image_handle *h, const char *what, char *why, size_t len)
{
	struct heif_image *img = NULL;
	struct heif_error e =
	    heif_decode_image(h, &img, heif_colorspace_undefined, heif_chroma_undefined, NULL);

	heif_image_release(img);
	if (e.code == heif_error_Memory_allocation_error)
		return -ENOMEM;
	if (e.code) {
		snprintf(why, len, "%s does not decode: %s", what, e.message);
		return 1;
	}
	return 0;
}

/* Every top-level picture of the HEIF file in buf, and their thumbnails. */
static int check_heif_pictures(const uint8_t *buf, size_t n, char *why, size_t len)
{
	struct heif_context *ctx = heif_context_alloc();
	heif_item_id *ids = NULL;
	int count, ret = 0;

	if (!ctx)
		return -ENOMEM;
	if (heif_context_read_from_memory_without_copy(ctx, buf, n, NULL).code) {
		snprintf(why, len, "not a readable HEIF file");
		ret = 1;
		goto out_free;
	}
	count = heif_context_get_number_of_top_level_images(ctx);
	ids = calloc(count > 0 ? (size_t)count : 1, sizeof(*ids));
	if (!ids) {
		ret = -ENOMEM;
		goto out_free;
	}
	count = heif_context_get_list_of_top_level_image_IDs(ctx, ids, count);
	for (int i = 0; !ret && i < count; i++) {
		struct heif_image_handle *h = NULL;
		heif_item_id th[8];
		int nth;

		if (heif_context_get_image_handle(ctx, ids[i], &h).code) {
			snprintf(why, len, "picture %d cannot be read", i + 1);
			ret = 1;
			break;
		}
		ret = decode_handle(h, "a picture", why, len);
		nth = heif_image_handle_get_list_of_thumbnail_IDs(h, th, 8);
		for (int t = 0; !ret && t < nth; t++) {
			struct heif_image_handle *tn = NULL;
			if (heif_image_handle_get_thumbnail(h, th[t], &tn).code) {
				snprintf(why, len, "a thumbnail cannot be read");
				ret = 1;
			} else {
				ret = decode_handle(tn, "a thumbnail", why, len);
			}
			heif_image_handle_release(tn);
		}
		heif_image_handle_release(h);
	}
out_free:
	free(ids);
	heif_context_free(ctx);
	return ret;
}

/* A HEIC: a photo hevcfs archived renders its view to exactly the size its
 * header item promised (that decodes its primary picture); every other
 * picture and thumbnail decodes. */
static int check_heif(int fd, const struct codec_opts *opts, char *why, size_t len)
{
	struct codec_result probe;
	uint8_t *buf = NULL;
	size_t n;
	int ret;

	ret = codec_probe_archived(fd, &probe);
	if (ret)
		return ret;
	if (probe.archived) {
		char tmp[] = "/tmp/hevcfs-scrub-XXXXXX";
		uint64_t size = 0;
		int t = mkstemp(tmp);
		if (t < 0)
			return -errno;
		close(t);
		ret = photo_render_view(fd, tmp, opts, &size);
		unlink(tmp);
		if (ret == -EINVAL || ret == -EIO || ret == -EPROTO) {
			snprintf(why, len, "the photo does not render (%s)", strerror(-ret));
			return 1;
		}
		if (ret)
			return ret;
		if (size != probe.view_bytes) {
			snprintf(why, len, "its view renders to %llu bytes, %llu promised",
				 (unsigned long long)size, (unsigned long long)probe.view_bytes);
			return 1;
		}
	}
	ret = codec_read_all(fd, SCRUB_MAX_HEIC, &buf, &n);
	if (ret)
		return ret;
	ret = check_heif_pictures(buf, n, why, len);
	free(buf);
	return ret;
}

/* Decode every frame of every video stream of the file on fd, with
 * libavcodec told to fail on bitstream errors instead of concealing them. */
static int check_video(int fd, char *why, size_t len)
{
	struct codec_result res = {0};
	AVFormatContext *in = NULL;
	AVCodecContext **dec = NULL;
	AVPacket *pkt = NULL;
	AVFrame *frame = NULL;
	uint64_t frames = 0;
	int ret, n;

	ret = video_open_input(fd, &in, &res);
	if (ret == VIDEO_KEPT) {
		snprintf(why, len, "not a readable video: %s", res.reason);
		return 1;
	}
	if (ret)
		return ret;
	n = (int)in->nb_streams;
	dec = calloc((size_t)n, sizeof(*dec));
	pkt = av_packet_alloc();
	frame = av_frame_alloc();
	if (!dec || !pkt || !frame) {
		ret = -ENOMEM;
		goto out_free;
	}
	for (int i = 0; i < n; i++) {
		const AVCodecParameters *par = in->streams[i]->codecpar;
		const AVCodec *c;
		if (par->codec_type != AVMEDIA_TYPE_VIDEO ||
		    (in->streams[i]->disposition & AV_DISPOSITION_ATTACHED_PIC))
			continue;
		c = avcodec_find_decoder(par->codec_id);
		if (!c || !(dec[i] = avcodec_alloc_context3(c)) ||
		    avcodec_parameters_to_context(dec[i], par) < 0) {
			snprintf(why, len, "no decoder for stream %d", i);
			ret = 1;
			goto out_free;
		}
		dec[i]->err_recognition = AV_EF_CRCCHECK | AV_EF_BITSTREAM | AV_EF_EXPLODE;
		dec[i]->thread_count = 0; /* every core */
		if (avcodec_open2(dec[i], c, NULL) < 0) {
			snprintf(why, len, "the decoder of stream %d does not open", i);
			ret = 1;
			goto out_free;
		}
	}
	for (;;) {
		int r = av_read_frame(in, pkt);
		int s = r < 0 ? -1 : pkt->stream_index;
		if (r == AVERROR_EOF)
			break;
		if (r < 0) {
			if (video_input_errno(in)) {
				ret = -video_input_errno(in);
				goto out_free;
			}
			snprintf(why, len, "the file does not demux to its end (%s)",
				 av_err2str(r));
			ret = 1;
			goto out_free;
		}
		if (s >= 0 && s < n && dec[s]) {
			r = avcodec_send_packet(dec[s], pkt);
			while (r >= 0 && (r = avcodec_receive_frame(dec[s], frame)) >= 0) {
				if (frame->decode_error_flags ||
				    (frame->flags & AV_FRAME_FLAG_CORRUPT))
					r = AVERROR_INVALIDDATA;
				else
					frames++;
				av_frame_unref(frame);
			}
			if (r < 0 && r != AVERROR(EAGAIN)) {
				snprintf(why, len, "frame %llu of stream %d does not decode (%s)",
					 (unsigned long long)frames + 1, s, av_err2str(r));
				ret = 1;
				goto out_free;
			}
		}
		av_packet_unref(pkt);
	}
	/* the frames still inside the decoders */
	for (int i = 0; i < n; i++) {
		int r;
		if (!dec[i])
			continue;
		avcodec_send_packet(dec[i], NULL);
		while ((r = avcodec_receive_frame(dec[i], frame)) >= 0) {
			if (frame->decode_error_flags || (frame->flags & AV_FRAME_FLAG_CORRUPT)) {
				snprintf(why, len, "the last frames of stream %d do not decode", i);
				ret = 1;
				goto out_free;
			}
			frames++;
			av_frame_unref(frame);
		}
		if (r != AVERROR_EOF) {
			snprintf(why, len, "the last frames of stream %d do not decode (%s)", i,
				 av_err2str(r));
			ret = 1;
			goto out_free;
		}
	}
	if (!frames) {
		snprintf(why, len, "no video frame decodes");
		ret = 1;
	}
out_free:
	for (int i = 0; dec && i < n; i++)
		avcodec_free_context(&dec[i]);
	free(dec);
	av_frame_free(&frame);
	av_packet_free(&pkt);
	video_close_input(&in);
	return ret;
}

int codec_check_stored(int fd, const struct codec_opts *opts, char *why, size_t len)
{
	uint8_t head[16];
	ssize_t n = pread(fd, head, sizeof(head), 0);

	why[0] = '\0';
	if (n < 0)
		return -errno;
	if (n >= 12 && !memcmp(head + 4, "ftyp", 4) &&
	    (!memcmp(head + 8, "heic", 4) || !memcmp(head + 8, "mif1", 4) ||
	     !memcmp(head + 8, "heix", 4)))
		return check_heif(fd, opts, why, len);
	if (codec_sniff(fd) == CODEC_KIND_VIDEO)
		return check_video(fd, why, len);
	return 0; /* nothing hevcfs made: its checksum is all there is */
}
