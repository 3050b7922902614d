/*
 * Private to codec/: the entry points codec.c dispatches to, and helpers
 * shared by the photo and video halves.
 */
#ifndef HEVCFS_CODEC_INTERNAL_H
#define HEVCFS_CODEC_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "codec.h"

/* Defaults for zeroed codec_opts fields. */
#define CODEC_DEF_MIN_SSIM 0.99
#define CODEC_DEF_VIEW_QUALITY 92
#define CODEC_DEF_MIN_VIEW_SSIM 0.985
#define CODEC_DEF_CRF 22 /* the seed's balance of size and quality */
#define CODEC_DEF_PRESET "medium"
#define CODEC_DEF_MIN_VIDEO_SSIM 0.97
#define CODEC_DEF_MAX_PIXELS 200000000ull
/* A view's quality is raised in these steps up to VIEW_Q_MAX to meet the
 * floor (min_view_ssim). */
#define VIEW_Q_STEP 3
#define VIEW_Q_MAX 98

/* Archive a JPEG (photo.c). Same contract as codec_archive(). */
int photo_archive(int src_fd, const char *out_path, const char *view_path,
		  const struct codec_opts *opts, struct codec_result *result);

/* Retag an archived photo (photo.c). Same contract as codec_retag(). */
int photo_retag(int prev_fd, int src_fd, const char *out_path, const char *view_path,
		const struct codec_opts *opts, struct codec_result *result);

/* Render the JPEG view of a HEIC written by photo_archive (photo.c). */
int photo_render_view(int stored_fd, const char *out_path, const struct codec_opts *opts,
		      uint64_t *size);

/* Is fd a HEIC written by photo_archive? Same contract as
 * codec_probe_archived() (photo.c). */
int photo_probe_archived(int fd, struct codec_result *result);

/* A HEIC written by photo_archive: its embedded digests. Same contract as
 * codec_embedded_sums() (photo.c). */
int photo_embedded_sums(int fd, struct codec_embedded *e);

/* The map of the view of a HEIC written by photo_archive. Same contract
 * as codec_view_map() (photo.c). */
int photo_view_map(int fd, struct codec_view_map *m);

/* Does this head of a file look like a video container? (video.c) */
int video_sniff(const uint8_t *head, size_t n);

/* The digests an archived MP4 carries in its last box (video.c): the
 * original's size and SHA-256, and the file's own with its 32 bytes at
 * *self_off counted as zeros. 1 when fd has them, 0 when not, -errno. */
int video_embedded_sums(int fd, uint8_t orig[SUM_LEN], uint8_t self[SUM_LEN], uint64_t *self_off,
			uint64_t *orig_bytes);

/* Archive a video (video.c). Same contract as codec_archive(). */
int video_archive(int src_fd, const char *out_path, const struct codec_opts *opts,
		  struct codec_result *result);

/* Set result to "kept" with a printf-style reason. */
void codec_keep(struct codec_result *result, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Create or truncate path, write buf, fsync and close. 0 or -errno
 * (logged). */
int codec_write_file(const char *path, const uint8_t *buf, size_t len);

/* Read all of fd (up to max bytes) into a malloc'd buffer. 0 or -errno;
 * -EFBIG when larger than max. */
int codec_read_all(int fd, size_t max, uint8_t **buf, size_t *len);

/* Luma SSIM of two 8-bit planes of equal size (ssim.c): 8x8 windows on a
 * 4-pixel grid, the usual constants for L = 255. Returns a value in [-1, 1]. */
double codec_ssim_plane(const uint8_t *a, int a_stride, const uint8_t *b, int b_stride, int width,
			int height);

/* ---- photo half (photo.c, jpeg.c, heic.c) ---- */

struct heif_context;
struct heif_image_handle;

/* Test hook (photo.c): added to the quality photo_archive predicts for a
 * large photo, so tests can force a miss and the re-encode that follows.
 * 0 in the product; set only while no archive job runs. */
extern int photo_test_q_offset;

/* Largest JPEG we read whole into memory; bigger files are kept. */
#define PHOTO_MAX_JPEG_BYTES (512ull << 20)

/*
 * Y'CbCr planes of a photo at the JPEG's own sampling, in TurboJPEG's layout:
 * plane i is pw[i] x ph[i] bytes (tjPlaneWidth/Height, so padded to whole
 * chroma samples), rows stride[i] = pw[i] apart, all in one allocation.
 * Padding columns and rows repeat the last real sample. Grayscale has one
 * plane.
 */
struct photo_planes {
	int width, height; /* image size in luma samples */
	int subsamp;	   /* TJSAMP_444, TJSAMP_422, TJSAMP_420 or TJSAMP_GRAY */
	int nplanes;	   /* 1 or 3 */
	uint8_t *plane[3];
	int stride[3];
	int pw[3], ph[3];
	uint8_t *buf; /* the one allocation, owned */
};

/* Allocate planes for a w x h image at subsamp. 0 or -ENOMEM/-EINVAL. */
int photo_planes_alloc(struct photo_planes *pl, int width, int height, int subsamp);

/* The samples of plane i that hold the picture (no MCU padding): the
 * luma size, or the chroma size of the subsampling (grayscale is coded as
 * 4:2:0 with flat chroma). */
void photo_plane_size(const struct photo_planes *pl, int i, int *w, int *h);

/* Free the planes (NULL and zeroed structs are fine). */
void photo_planes_release(struct photo_planes *pl);

/* Sources a header segment can be rebuilt from (the HEIC holds them as
 * items already, so the hevcfs header need not store them twice). */
enum jpeg_src {
	JPEG_SRC_NONE = 0, /* stored verbatim */
	JPEG_SRC_EXIF,	   /* the Exif payload ("Exif\0\0" + TIFF) */
	JPEG_SRC_XMP,	   /* the main XMP packet */
	JPEG_SRC_XMP_EXT,  /* the reassembled Extended XMP */
	JPEG_SRC_ICC,	   /* the reassembled ICC profile */
	JPEG_SRC_COUNT
};

/* A segment of jpeg_info.segs whose payload is prefix bytes then len bytes
 * of a source at src_off. */
struct jpeg_ref {
	size_t seg_off; /* of the segment's 0xFF in segs */
	int src;	/* enum jpeg_src */
	size_t prefix;	/* payload bytes before the source's bytes */
	size_t src_off, len;
};

/*
 * What the marker walk of a JPEG found (jpeg.c). Pointers exif and xmp point
 * into segs; segs, xmp_ext, icc and refs are owned (jpeg_info_release).
 */
struct jpeg_info {
	int width, height; /* from the frame header */
	int ncomp, precision;
	int sof;		/* SOFn marker byte (0xC0..0xCF) */
	int scans;		/* SOS count: 1 baseline, more when progressive */
	int adobe_transform;	/* APP14 "Adobe" transform, -1 when absent */
	int mpf, motion;	/* MPF APP2 seen; XMP names a motion photo */
	int mpf_images;		/* images the MPF index points to besides the first */
	int hdrgm;		/* XMP uses the gain map namespace (Ultra HDR) */
	size_t eoi_end;		/* offset just past the real EOI */
	size_t head_end;	/* offset of the first marker that is not APPn/COM */
	int head_in_place;	/* every APPn/COM segment comes before it, with no
				   fill bytes: the view's head is the original's */
	const uint8_t *trailer; /* the bytes after the EOI (into the parsed buffer) */
	size_t trailer_len;
	uint8_t *segs; /* every APPn and COM segment, verbatim, in order */
	size_t segs_len;
	const uint8_t *exif; /* "Exif\0\0" + TIFF, the first Exif APP1 */
	size_t exif_len;
	const uint8_t *xmp; /* main XMP packet */
	size_t xmp_len;
	uint8_t *xmp_ext; /* Extended XMP reassembled, or NULL */
	size_t xmp_ext_len;
	uint8_t *icc; /* ICC profile reassembled, or NULL */
	size_t icc_len;
	int orientation;       /* EXIF orientation 1..8 (1 when absent or bad) */
	struct jpeg_ref *refs; /* segments rebuilt from a source (owned) */
	size_t nrefs;
	char why[128]; /* why this JPEG cannot be archived */
};

/*
 * Walk the markers of the JPEG in buf and collect what photo archiving needs.
 * Returns 0 when the file is a JPEG we can archive (bytes after the EOI are
 * its trailer, ji->trailer borrows them from buf), -ENOTSUP (unsupported
 * coding) or -EINVAL (malformed, truncated) with ji->why
 * set, -ENOMEM.
 */
int jpeg_parse(const uint8_t *buf, size_t len, struct jpeg_info *ji);

/* Store the segments drawn from src verbatim (the HEIC's item for it will
 * not hold the same bytes). */
void jpeg_info_drop_source(struct jpeg_info *ji, int src);

/* Free what jpeg_parse allocated (NULL is fine). */
void jpeg_info_release(struct jpeg_info *ji);

/*
 * Decode a JPEG straight to its Y'CbCr planes (no colour conversion, no
 * chroma upsampling). Returns 0, -ENOTSUP/-EINVAL with why set when the data
 * cannot be decoded cleanly (so the photo is kept), or -ENOMEM.
 */
int jpeg_decode_planes(const uint8_t *buf, size_t len, struct photo_planes *pl, char *why,
		       size_t why_len);

/*
 * Encode planes as a baseline JPEG at quality and splice in segs: SOI, segs
 * verbatim, then TurboJPEG's output after its own APPn segments. Same input,
 * same bytes. *out is malloc'd. 0 or -errno.
 */
int jpeg_encode_view(const struct photo_planes *pl, int quality, const uint8_t *segs,
		     size_t segs_len, uint8_t **out, size_t *out_len);

/* Encode planes as a baseline JPEG at quality: what follows TurboJPEG's SOI
 * and APPn segments, tables through EOI (the view's image data). Same input,
 * same bytes. *scan is malloc'd. 0 or -errno. */
int jpeg_encode_scan(const struct photo_planes *pl, int quality, uint8_t **scan, size_t *scan_len);

/* Padding segments (jpeg.c says which and why): each at least this long
 * (marker, length, 4 payload bytes), at most a whole segment. */
#define JPEG_PAD_MIN 8
#define JPEG_PAD_SEG_MAX 65537
/* Can gap bytes be padding (0, or at least JPEG_PAD_MIN)? */
int jpeg_pad_ok(size_t gap);

/* A view: SOI, segs, pad bytes of padding (jpeg_pad_ok), scan with fill
 * bytes 0xFF before its EOI (a scan that ends with one when fill > 0),
 * trailer. *out is malloc'd. 0, -EINVAL (pad, fill) or -ENOMEM. */
int jpeg_view_layout(const uint8_t *segs, size_t segs_len, size_t pad, const uint8_t *scan,
		     size_t scan_len, size_t fill, const uint8_t *trailer, size_t trailer_len,
		     uint8_t **out, size_t *out_len);

/* Where the entropy-coded data of scan (jpeg_encode_scan's: table and frame
 * segments, SOS, data, EOI) begins: the offset just past its SOS segment
 * (len for the tables alone), or -EINVAL. */
long jpeg_scan_data_off(const uint8_t *scan, size_t len);

/* The tables jpeg_encode_scan writes before the entropy-coded data of a
 * width x height picture at quality and subsamp (quantisation and Huffman
 * tables, frame header, SOS), made without coding it: the picture changes
 * only the frame header's size. *out is malloc'd (a caller that serves
 * them checks them against a real coding once). 0 or -errno. */
int jpeg_view_tables(int quality, int subsamp, int width, int height, uint8_t **out, size_t *len);

/* The size of an mpvd box header (Motion Photo format 1.0 for HEIC: the
 * video in a top-level box after all others). */
#define MPVD_HEADER 8

/* A JPEG's trailer: what it carries and where it goes (trailer.c). */
struct photo_trailer {
	uint32_t carries; /* CODEC_CARRIES_* */
	size_t video_len; /* a motion photo's MP4 that ends the file, where its
			     XMP says: the HEIC's mpvd box (0: none) */
	size_t item_len;  /* the bytes before it: the trailer item */
};

/* Classify ji's trailer. 0 (never fails). */
int trailer_classify(const struct jpeg_info *ji, struct photo_trailer *t);

/* The XMP the HEIC's own XMP item gets when the original's describes the
 * JPEG's layout or t has a video (*xmp malloc'd), or *xmp NULL when the
 * original's serves as it is. 0 or -ENOMEM. */
int trailer_heic_xmp(const struct jpeg_info *ji, const struct photo_trailer *t, uint8_t **xmp,
		     size_t *xmp_len);

/* How heic_encode codes the picture. */
struct heic_params {
	int quality;	    /* libheif lossy quality 0..100 */
	const char *preset; /* x265 preset */
	const char *tune;   /* x265 tune, or NULL */
	int threads;	    /* x265 worker threads, 0 = x265 decides */
	int no_thumbnail;   /* 1: no thumbnail (trial encodes) */
	const char *x265;   /* more x265 settings, "key=value,key=value", or
			       NULL: applied after libheif's own */
};

/*
 * Encode planes as the primary image of a new HEIF context with ji's
 * metadata (Exif, XMP, Extended XMP, ICC + nclx, orientation as irot/imir)
 * and a thumbnail. 0 or -errno; *ctx is freed with heif_context_free.
 */
int heic_encode(const struct photo_planes *pl, const struct jpeg_info *ji,
		const struct heic_params *hp, struct heif_context **ctx);

/* Attach a generic metadata item to the primary image. 0 or -errno. */
int heic_add_item(struct heif_context *ctx, const char *item_type, const char *content_type,
		  const uint8_t *data, size_t len);

/* Serialise ctx into a malloc'd buffer. 0 or -errno. */
int heic_write_mem(struct heif_context *ctx, uint8_t **buf, size_t *len);

/* Make libheif decode HEVC with libde265 on every core (hevcdec.c): once
 * per process, before the first decode (heic_decode_planes calls it). */
void hevcdec_init(void);

/* A picture taken from the decoder as it decoded it, into planes allocated
 * for the picture expected (see hevcdec_capture). */
struct hevcdec_capture {
	struct photo_planes *pl; /* allocated at the expected size and subsampling */
	int w[3], h[3];		 /* the samples of each plane the picture filled */
	int done;		 /* 1: pl holds the picture */
};

/* While c is set (for the whole process: one decode at a time), the
 * decoder copies the next picture it decodes into c->pl (when it has the expected size and format)
 * and ends that decode with an error: libheif 1.15 would turn the picture into RGB and back
 * (decode_image_planar), which moves ~2% of luma and ~5% of chroma samples by up to 6 and 21
 * levels, and costs a quarter of the decode time. NULL ends the capture. */
void hevcdec_capture(struct hevcdec_capture *c);

/* The coded data of a picture as libheif hands it to a decoder: NAL units
 * (parameter sets from hvcC, then the item's data) each behind a 4-byte
 * big-endian length. */
struct hevcdec_nals {
	uint8_t *data; /* malloc'd */
	size_t len, cap;
	int done; /* 1: the whole picture was handed over */
};

/* While c is set (for the whole process, like hevcdec_capture), the decoder
 * keeps what it is given in c and decodes nothing: the decode ends with an
 * error once the picture's data is in. NULL ends the capture. */
void hevcdec_capture_nals(struct hevcdec_nals *c);

/* The copy encoder (hevccopy.c): libheif's name for it. */
#define HEVCCOPY_ID "hevcfs-copy"

/* Register the copy encoder once per process. 0 or -ENOTSUP. */
int hevccopy_init(void);

/* What the copy encoder hands libheif at its next encode (a complete
 * capture, borrowed until then). One encode at a time: heic.c holds a lock
 * around the pair. */
void hevccopy_source(const struct hevcdec_nals *src);

/* A HEIC's pictures as coded: the primary's and its thumbnail's NAL units
 * (thumb.len 0: none), and the size and sampling they were coded from. */
struct heic_coded {
	struct hevcdec_nals main, thumb;
	int width, height, subsamp;
};

/* Take the coded pictures of the primary image handle (width x height
 * samples before irot, at subsamp, with the thumbnail heic_encode gives
 * such a photo) without decoding them. 0, -EINVAL, -ENOMEM. */
int heic_capture_coded(const struct heif_image_handle *handle, int width, int height, int subsamp,
		       struct heic_coded *c);

/* Free a capture (zeroed ones are fine). */
void heic_coded_release(struct heic_coded *c);

/* As heic_encode, with the pictures of c bit for bit instead of an
 * encode (the copy encoder, hevccopy.c). 0 or -errno. */
int heic_encode_coded(const struct heic_coded *c, const struct jpeg_info *ji,
		      struct heif_context **ctx);

/* Pictures the threaded decoder has decoded in this process. */
unsigned long hevcdec_pictures(void);

/* Open a HEIF file held in buf (borrowed until *ctx is freed) and get its
 * primary image; threads > 0 caps libheif's decoding threads. 0, -ENOMEM or
 * -EINVAL. */
int heic_open(const uint8_t *buf, size_t len, int threads, struct heif_context **ctx,
	      struct heif_image_handle **handle);

/* Has the primary image (width x height samples, before irot) the one
 * thumbnail heic_encode gives a photo larger than the thumbnail box, of
 * the size it gives it, and none otherwise? 0 or -EIO. */
int heic_check_thumbnail(const struct heif_image_handle *handle, int width, int height);

/* A HEIF file read in place from a file descriptor (heic_open_fd). Must
 * outlive the context opened on it. err: -errno of a failed read, else 0. */
struct heic_fd {
	int fd;
	int64_t pos, size;
	int err;
};

/* Open the HEIF file on fd (borrowed, read with pread) without reading it
 * whole: libheif reads the boxes, and items' data only when asked for. 0,
 * -errno of a failed read, -ENOMEM or -EINVAL (not a HEIF file we can read).
 * *ctx is freed with heif_context_free before f goes. */
int heic_open_fd(struct heic_fd *f, int fd, struct heif_context **ctx,
		 struct heif_image_handle **handle);

/* Largest metadata item heic_get_item copies out: more than any photo we
 * archive carries (its APPn/COM segments are capped at half of it). */
#define HEIC_MAX_ITEM_BYTES (64ull << 20)

/* The meta box's payload (after its header) of the HEIF file in buf (len
 * bytes), or when buf is NULL on fd (read with pread). *meta is malloc'd.
 * 0, -ENOENT (none), -EINVAL (damaged, or over 16 MiB), -ENOMEM, -errno. */
int heic_meta_read(int fd, const uint8_t *buf, size_t len, uint8_t **meta, size_t *meta_len);

/* Where item id's data lies in the file, from the iloc box of meta (a meta
 * box's payload): its offset and size. 0; -ENOTSUP when the data is not
 * one extent of the file itself; -ENOENT, -EINVAL. */
int heic_iloc_find(const uint8_t *meta, size_t len, uint32_t id, uint64_t *off, uint64_t *size);

/* Copy out the first metadata item of item_type (and content_type, when not
 * NULL). 0, -ENOENT, -ENOMEM or -EINVAL (also when larger than
 * HEIC_MAX_ITEM_BYTES). *data is malloc'd. */
int heic_get_item(const struct heif_image_handle *handle, const char *item_type,
		  const char *content_type, uint8_t **data, size_t *len);

/* Decode the primary image without applying irot/imir into planes at
 * subsamp, which must match how it was encoded; the size must be
 * width x height. raw: the planes as the HEVC decoder produced them
 * (hevcdec_capture); else as libheif 1.15 hands them out, through RGB and
 * back (what views of archives written before raw planes were made of).
 * 0 or -errno. */
int heic_decode_planes(const struct heif_image_handle *handle, int subsamp, int width, int height,
		       int raw, struct photo_planes *pl);

/* ---- video half (video.c, video_xcode.c, video_verify.c) ---- */

struct AVFormatContext;
struct AVFrame;
struct SwsContext;

/* Returned (instead of 0) by the video steps when the source or the result
 * is unfit to archive: result says why (codec_keep). Not an error. */
#define VIDEO_KEPT 1

/* Open the file on fd (borrowed, read with pread at our own offset) with
 * libavformat and read its stream info. 0, VIDEO_KEPT when libavformat
 * cannot make sense of it, or -errno. */
int video_open_input(int fd, struct AVFormatContext **fmt, struct codec_result *result);

/* Close what video_open_input opened and NULL *fmt (NULL is fine). */
void video_close_input(struct AVFormatContext **fmt);

/* errno of the last failed read of fmt's input (0: none), to tell an I/O
 * error from a damaged file when libavformat fails. */
int video_input_errno(const struct AVFormatContext *fmt);

/* Translate a libav AVERROR to -errno, logging what failed and why. */
int video_averr(int averr, const char *what);

/*
 * How decoded source frames become the frames given to x265: converted only
 * when x265 cannot take the source's pixel format, and padded by edge copies
 * to even sizes (x265 drops an odd last row or column).
 */
struct video_conv {
	int src_fmt, dst_fmt;	   /* enum AVPixelFormat */
	int width, height;	   /* source size */
	int enc_width, enc_height; /* size given to x265 */
	struct SwsContext *sws;	   /* NULL when the pixels are copied as they are */
};

/* Fill dst (format, size and buffers set here) from src. 0 or -errno. */
int video_conv_frame(struct video_conv *conv, const struct AVFrame *src, struct AVFrame *dst);

/* Free conv's scaler (zeroed structs are fine). */
void video_conv_release(struct video_conv *conv);

/* One output stream as the transcode wrote it (index = output index). */
struct video_out {
	int src_index;	 /* input stream it came from */
	int type;	 /* enum AVMediaType */
	int reencoded;	 /* audio re-encoded to AAC */
	double src_span; /* source timestamps: last end - first start, seconds */
	double content;	 /* seconds of content: decoded samples or packet durations */
	double tol;	 /* allowed difference of the result's span, seconds */
};

/* SSIM samples: at least one frame a second (and at least this many over a
 * clip, but never more than ten a second). */
#define VIDEO_SAMPLE_PERIOD_MAX 1.0
#define VIDEO_SAMPLE_PERIOD_MIN 0.1
#define VIDEO_SAMPLES_MIN 8

/*
 * Source planes held at once for the in-flight SSIM check (video_check.c).
 * A plane is held from the frame's going to x265 until the helper has
 * decoded it: x265's delay (rc-lookahead + bframes + frame threads, about
 * 30 frames at preset medium, at most ~280 whatever the params) plus the
 * packet queue and the decoder's reorder, so about 2 planes a second of a
 * long clip at 30 fps and at most VIDEO_SAMPLES_MIN + 1 for a short one;
 * no more than this many ever (a deferred sample waits for a free one):
 * 66 MB of 1080p, 265 MB of 2160p at worst, 6 MB / 25 MB at the defaults.
 */
#define VIDEO_CHECK_PLANES 32

/*
 * What video_transcode did, for video_verify. Owned: video_log_release.
 *
 * The source is decoded once, by the transcode, and so is the result: a
 * helper thread decodes x265's packets as they go to the muxer and compares
 * the luma of each sampled frame (as x265 got it, brought to 8 bits) with
 * its decoded twin, so nothing is kept on disk; the digest of the packets,
 * as the muxer writes them, lets verify tell that the file holds those
 * bytes without decoding it again.
 */
struct video_log {
	int vi, out_vi;	    /* the re-encoded video: source and output index */
	int tb_num, tb_den; /* its source time base */
	int64_t *pts;	    /* source pts of every frame, display order */
	size_t nb_pts, cap_pts;
	double frame_sec; /* nominal frame duration, seconds */
	struct video_conv conv;
	struct video_out *out;
	int nb_out;
	int mkv;	 /* output is Matroska */
	size_t *samples; /* display index of each sampled frame, increasing */
	size_t nb_samples, cap_samples;
	double sample_period, next_sample; /* seconds from the first frame */
	/* filled when the transcode ends (video_check_end) */
	uint64_t digest; /* video_digest_annexb over x265's packets, in order */
	size_t nb_packets;
	uint8_t *extradata; /* x265's parameter sets, Annex B (av_malloc'd) */
	int extradata_size;
	size_t nb_checked; /* samples compared */
	double min_ssim;   /* the lowest of their SSIMs */
	size_t min_at;	   /* display index of the frame it was measured on */
};

/* Free what the log owns (zeroed logs are fine). */
void video_log_release(struct video_log *log);

/* ---- the in-flight check (video_check.c) ---- */

struct AVCodecContext;
struct AVPacket;
struct video_check;

/* FNV-1a (64 bits) offset basis: the digest of nothing. */
#define VIDEO_DIGEST_INIT 0xcbf29ce484222325ull

/* Go on with FNV-1a digest h over len bytes. Any one changed byte changes
 * the result. */
uint64_t video_digest(uint64_t h, const void *data, size_t len);

/* One video packet of the file in the digest: the display index of its
 * frame, its bytes, its size. */
uint64_t video_digest_packet(uint64_t h, uint64_t index, const uint8_t *data, size_t size);

/* The same for a packet as x265 gives it (Annex B): digested as the MP4
 * and Matroska muxers write it, each NAL unit behind a 4-byte big-endian
 * length instead of its start code. */
uint64_t video_digest_annexb(uint64_t h, uint64_t index, const uint8_t *data, size_t size);

/* The NAL units of Annex B data, cut where libavformat's muxers cut them
 * (ff_avc_parse_nal_units). */
struct video_nals {
	const uint8_t *pos, *end;
};
void video_nals_begin(struct video_nals *it, const uint8_t *data, size_t size);
/* The next unit (borrowed from the data): 1, or 0 at the end. */
int video_nals_next(struct video_nals *it, const uint8_t **nal, size_t *len);

/*
 * Start checking the output of enc (libx265, open: its extradata and time
 * base are used) on a helper thread: an HEVC decoder, one thread. Luma is
 * compared over width x height. 0 or -errno; *vc is freed with
 * video_check_free.
 */
int video_check_new(const struct AVCodecContext *enc, int width, int height,
		    struct video_check **vc);

/*
 * Hold the luma of f (a frame about to go to x265, f->pts set as x265 gets
 * it; display index index) until its decoded twin is compared. 1 when held;
 * 0 when all VIDEO_CHECK_PLANES are held even after the helper has used up
 * every packet given so far (try again with a later frame); -ECANCELED,
 * -ENOMEM.
 */
int video_check_hold(struct video_check *vc, const struct AVFrame *f, size_t index,
		     const atomic_int *cancel);

/*
 * A packet from x265 (before the muxer has it): digest it, and queue a
 * reference for the helper, waiting while the queue is full. 0; VIDEO_KEPT
 * with result's reason when the helper found fault; -ECANCELED, -errno.
 */
int video_check_packet(struct video_check *vc, const struct AVPacket *pkt, size_t index,
		       const atomic_int *cancel, struct codec_result *result);

/* x265 is flushed: no more packets (the helper drains its decoder). */
void video_check_eof(struct video_check *vc);

/*
 * Wait for the helper to finish and put what it found in log (digest,
 * samples compared, lowest SSIM). 0, VIDEO_KEPT with result's reason,
 * -ECANCELED or -errno.
 */
int video_check_end(struct video_check *vc, const atomic_int *cancel, struct video_log *log,
		    struct codec_result *result);

/* Stop the helper (at once), join it and free everything (NULL is fine). */
void video_check_free(struct video_check **vc);

/* Transcode in (opened by video_open_input) to out_path, filling log.
 * 0, VIDEO_KEPT (reason in result), or -errno (-ECANCELED). */
int video_transcode(struct AVFormatContext *in, const char *out_path, const struct codec_opts *opts,
		    struct video_log *log, struct codec_result *result);

/* Check out_path against log without decoding it: demux it whole (every
 * frame with the source's pts, once; the digest of the video packets and
 * the parameter sets in hvcC are x265's; every stream's span), and judge
 * the SSIM the transcode measured. Sets result->ssim. 0 when the result is
 * good, VIDEO_KEPT with the reason, or -errno. */
int video_verify(const char *out_path, const struct codec_opts *opts, struct video_log *log,
		 struct codec_result *result);

#endif
