/*
 * codec — content sniffing, JPEG -> HEIC, video -> HEVC MP4/MKV, metadata
 * transfer, quality metrics and the legacy JPEG view of archived photos.
 *
 * Pure functions over files: nothing here knows about FUSE or LMDB.
 *
 * Ownership: inputs are borrowed file descriptors (never closed, read with
 * pread so their offset is untouched); outputs are paths the caller chose
 * (created or truncated here, written and fsynced; the caller renames them
 * into place). On failure a partial output may remain: the caller unlinks it.
 *
 * Thread safety: every function is reentrant; callers run several archive
 * jobs at once on different files. Cancellation is cooperative: long loops
 * poll opts->cancel and return -ECANCELED when it reads nonzero.
 *
 * Errors: 0 or -errno. A file that cannot or should not be archived is not an
 * error: codec_archive() returns 0 with result->archived == 0 and a reason.
 */
#ifndef HEVCFS_CODEC_H
#define HEVCFS_CODEC_H

#include <stdatomic.h>
#include <stdint.h>

#include "../lib/lib.h"

/* What a file's bytes say it is (never its name). */
enum codec_kind {
	CODEC_KIND_OTHER = 0, /* anything we keep byte for byte */
	CODEC_KIND_JPEG,      /* a JPEG (may still be kept after a closer look) */
	CODEC_KIND_VIDEO,     /* a container libavformat recognises with video */
	/* a HEIF still image or sequence (ftyp brands heic, heix, heim, heis,
	 * hevc, hevx, mif1, msf1, avif, avis...), kept: "already HEIC",
	 * "already HEIF", "already AVIF" */
	CODEC_KIND_HEIF,
	/* camera raw (DNG, CR2, CR3, NEF, ARW, RAF, ORF, RW2, PEF) by its
	 * signature, kept: "camera raw (FORMAT)" */
	CODEC_KIND_RAW,
};

/* Like codec_sniff, and *format says which format (a static string: "JPEG",
 * "HEIC", "HEIF", "AVIF", "DNG", "CR2", "CR3", "NEF", "ARW", "RAF", "ORF",
 * "RW2", "PEF", "video", or "" for CODEC_KIND_OTHER). */
enum codec_kind codec_sniff_format(int fd, const char **format);

/* Knobs, from mount options. Zeroed fields take the documented defaults. */
struct codec_opts {
	int photo_quality;	 /* 0 = auto: lowest q with luma SSIM >= min_ssim */
	double min_ssim;	 /* HEIC vs original luma SSIM floor, default 0.99 */
	int view_quality;	 /* JPEG view quality, default 92 */
	double min_view_ssim;	 /* view vs original floor, default 0.985 */
	int crf;		 /* x265 CRF, default 22 */
	const char *preset;	 /* x265 preset, default "medium" */
	const char *x265_params; /* extra x265 params, may be NULL */
	double min_video_ssim;	 /* default 0.97 */
	int threads;		 /* encoder threads, 0 = all cores */
	uint64_t max_pixels;	 /* photos above this are kept, default 200e6 */
	/* Set nonzero by another thread to abandon the job (-ECANCELED). */
	const atomic_int *cancel;
	/* Progress for long jobs (video frames); may be NULL. Called from the
	 * archiving thread. */
	void (*progress)(void *arg, uint64_t done, uint64_t total, double fps);
	void *progress_arg;
};

/* What a photo carried besides its primary image (codec_result.carries):
 * bytes after the primary's EOI, archived verbatim and put back in its
 * view. */
#define CODEC_CARRIES_MOTION                                                                       \
	(1u << 0) /* a motion photo's video (Google Motion                                         \
		      Photo, MicroVideo, an MP4) */
#define CODEC_CARRIES_GAIN_MAP                                                                     \
	(1u << 1) /* an Ultra HDR (JPEG_R) gain map: MPF                                           \
		      plus the hdrgm XMP namespace */
#define CODEC_CARRIES_MPF                                                                          \
	(1u << 2)			/* other MPF images (previews, stereo                      \
					    pairs) */
#define CODEC_CARRIES_SEF (1u << 3)	/* a Samsung SEF trailer (SEFH..SEFT) */
#define CODEC_CARRIES_PADDING (1u << 4) /* zero bytes only */
#define CODEC_CARRIES_OTHER (1u << 5)	/* trailer bytes of no known kind */

/* The words for what a photo carried (CODEC_CARRIES_* bits), comma
 * separated, into buf: "motion video, gain map". */
const char *codec_carries_words(uint32_t carries, char *buf, size_t size);

/* What codec_archive() decided and measured. */
struct codec_result {
	int archived;	       /* 1: out_path holds the archived file */
	char reason[160];      /* why kept, when archived == 0 */
	char suffix[8];	       /* what the archived file is: ".heic", ".mp4" or
				  ".mkv" (always set when archived; the codec
				  never sees names). The caller appends it to the
				  backing name, except that a video whose name
				  already says .mp4/.mov and whose suffix is
				  ".mp4" keeps its name (the caller's rule) */
	uint64_t orig_bytes;   /* size of the input */
	uint64_t stored_bytes; /* size of out_path */
	uint64_t view_bytes;   /* exact size of the view (photo: JPEG rendered by
				  codec_render_view; video: stored_bytes) */
	int quality;	       /* photo: HEVC quality used; video: CRF */
	double ssim;	       /* luma SSIM archived vs original (min over samples) */
	double view_ssim;      /* photo: luma SSIM of the view vs original */
	uint32_t carries;      /* photo: CODEC_CARRIES_* bits */
	int view_own_size;     /* photo: 1 when the view is not the original's
				  size (its scan does not fit the original's
				  layout at any quality that meets
				  min_view_ssim); view_why says why */
	char view_why[96];
	uint8_t orig_sum[SUM_LEN]; /* photo: SHA-256 of the original JPEG */
	int retagged;		   /* photo: made by codec_retag, nothing encoded */
	uint8_t scan_sum[SUM_LEN]; /* photo: SHA-256 of the view's image data
				      (first table marker through EOI) */
};

/* Look at the first bytes of fd and say what it is. Never fails: unreadable
 * input is CODEC_KIND_OTHER. */
enum codec_kind codec_sniff(int fd);

/*
 * Archive the file open on src_fd (a JPEG or a video) into out_path,
 * verifying the result (decode, SSIM, metadata, size) before returning.
 * When view_path is non-NULL and the input is a photo, the JPEG view is also
 * rendered there (so its exact size is known and the first read is warm).
 * Returns 0 with result filled (archived or kept with reason), or -errno on
 * an operational failure (I/O error, ENOSPC, -ECANCELED): then the job may be
 * retried later and the original is kept.
 */
int codec_archive(int src_fd, const char *out_path, const char *view_path,
		  const struct codec_opts *opts, struct codec_result *result);

/*
 * Archive a metadata edit of an archived photo's view without coding its
 * pixels again. prev_fd: a HEIC codec_archive wrote; src_fd: a JPEG (both
 * borrowed). When src's image data (first table marker through EOI) is
 * byte for byte the view of prev's (its scan_sum) and only its APPn/COM
 * segments and/or its trailer differ, out_path gets a HEIC whose coded
 * pictures are prev's bit for bit, with src's metadata (Exif, XMP, ICC,
 * the header item with src's segments, trailer and digest; quality and
 * SSIMs carried over), verified like any archive: its view is src byte for
 * byte. Then result->archived = 1 (view_path, when not NULL, gets the
 * view). Otherwise result->archived = 0 with a reason and nothing is
 * written: the caller archives src afresh. -errno on operational failures.
 */
int codec_retag(int prev_fd, int src_fd, const char *out_path, const char *view_path,
		const struct codec_opts *opts, struct codec_result *result);

/*
 * Render the legacy view of an archived photo (a HEIC written by
 * codec_archive) to out_path: the original's APPn/COM segments byte for byte,
 * then a baseline scan encoded from the HEIC's decoded planes. Deterministic:
 * the same input and view_quality give the same bytes. Sets *size.
 */
int codec_render_view(int stored_fd, const char *out_path, const struct codec_opts *opts,
		      uint64_t *size);

/*
 * Is the file on fd (borrowed, read with pread) a photo that codec_archive
 * archived? For rebuilding the index from the backing tree alone: cheap, it
 * reads the HEIF boxes and the hevcfs header item, never the coded pixels
 * (a few KB of a file that is not one: only its first bytes).
 * Returns 0 with result zeroed but for: archived (1 when it is one), and
 * then suffix ".heic", orig_bytes (the original JPEG's size), stored_bytes
 * (fd's size), view_bytes (the view's exact size), quality, ssim and
 * view_ssim as measured at archive time (0 in files written before the
 * header recorded them). A file that is not one, or is damaged, is
 * archived == 0 with a reason. -errno on I/O errors, -ENOMEM.
 */
int codec_probe_archived(int fd, struct codec_result *result);

/*
 * Where a view's bytes come from, without rendering it (photo managers read
 * only a view's head, exiftool its last bytes too): its first head_len bytes
 * are exactly head (SOI, the original's APPn/COM segments, the padding and,
 * from header version 5 on, the tables: everything before the entropy-coded
 * data); its bytes [end_off, end_off + end_len) are end_len - 2 fill bytes
 * 0xFF and the EOI that end the image data (codec_view_map_end; end_len is 0
 * before version 5); and
 * its bytes [tail_off, tail_off + tail_len) are the stored file's bytes at
 * offset tail_src (the trailer, which the stored file holds contiguous and
 * which was checked against its digest). tail_len is 0 when there is no
 * trailer or it is not contiguous in the stored file.
 */
struct codec_view_map {
	uint64_t size; /* the view's exact size */
	uint8_t *head; /* malloc'd; codec_view_map_release frees it */
	uint64_t head_len;
	uint64_t end_off, end_len;
	uint64_t tail_off, tail_len, tail_src;
};

/* Bytes [off, off + n) of the view that lie in m's end (fill and EOI) into
 * buf. */
void codec_view_map_end(const struct codec_view_map *m, uint64_t off, uint8_t *buf, size_t n);

/* The digest of what a map serves from itself (head, then end): recorded at
 * archive time and checked before a map is used. 0 or -ENOMEM. */
int codec_view_map_sum(const struct codec_view_map *m, uint8_t out[SUM_LEN]);

/* Does the view on view_fd (a render) hold what m serves from itself, and
 * have m's size? 1 yes, 0 no (or unreadable). */
int codec_view_map_matches(int view_fd, const struct codec_view_map *m);

/*
 * Map the view of an archived photo on stored_fd (borrowed, read with
 * pread: its boxes, metadata items and trailer, never its coded pixels).
 * 0; -EINVAL when it is not an archived photo or is damaged (a trailer that
 * is not where and what the header item says); -ENOTSUP for a photo archived
 * before views had a recorded size; -errno, -ENOMEM.
 */
int codec_view_map(int stored_fd, struct codec_view_map *m);

/* Free what codec_view_map allocated (zeroed maps are fine). */
void codec_view_map_release(struct codec_view_map *m);

/*
 * A JPEG of the primary image of the HEIF photo on fd (borrowed; a phone's
 * HEIC, grids of tiles included), for viewers that
 * open no HEIC: its pixels as stored (irot/imir not applied) with the
 * orientation said by the EXIF Orientation tag (the HEIC's own Exif item
 * carried with the tag set to match irot/imir, or a minimal Exif when it
 * has none), its XMP and its ICC profile (none when its colour is given by
 * nclx only). Its quality is opts->view_quality, raised as a view's is
 * until its luma SSIM against the decoded picture reaches min_view_ssim.
 * Deterministic: the same input gives the same bytes. Writes
 * out_path, sets *size. 0, -EINVAL (not a HEIF photo libheif decodes), or
 * -errno.
 */
int codec_render_heif_jpeg(int fd, const char *out_path, const struct codec_opts *opts,
			   uint64_t *size);

/* The digests a stored file carries about itself (for fsck --rebuild:
 * a stored file checked from the tree alone). */
struct codec_embedded {
	int has;		   /* 1: the fields below are set */
	uint8_t orig_sum[SUM_LEN]; /* SHA-256 of the original the file was made of */
	uint8_t self_sum[SUM_LEN]; /* SHA-256 of the file itself, with the
				      SUM_LEN bytes at self_off counted as zeros */
	uint64_t self_off;	   /* file offset of self_sum */
	uint64_t orig_bytes;	   /* size of the original */
};

/*
 * Read the embedded digests of a stored file on fd (borrowed, read with
 * pread; only its boxes and header, never its coded pixels): for a HEIC
 * written by photo_archive (header item version 4 on), from its header
 * item; for an MP4 written by video_archive, from its last box. e->has = 0
 * for anything else (a file of another kind, an older archive, a damaged
 * one). 0, or -errno on I/O errors, -ENOMEM.
 */
int codec_embedded_sums(int fd, struct codec_embedded *e);

/*
 * Recompute the self-digest of the file on fd (read whole) as e says
 * (e->has must be 1): *ok = 1 when it matches e->self_sum. 0, -EINVAL when
 * e has no digests, or -errno.
 */
int codec_check_self_sum(int fd, const struct codec_embedded *e, int *ok);

/*
 * Decode a stored file whole, as a scrub does after its checksum: a HEIC's
 * every picture and thumbnail (an archived photo's view rendered to exactly
 * the size its header promised), a video's every frame (the decoder told to
 * fail on damage, never to conceal it). 0 when it decodes, 1 with why (len
 * bytes) set when it does not, -errno on I/O or memory errors. Anything else
 * is 0: its checksum is all there is to check.
 */
int codec_check_stored(int fd, const struct codec_opts *opts, char *why, size_t len);

#endif
