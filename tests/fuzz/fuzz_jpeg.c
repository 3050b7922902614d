/* fuzz_jpeg — libFuzzer target: arbitrary bytes as a JPEG to archive
 * (photo_archive: marker walk, metadata, TurboJPEG decode, one x265 encode,
 * the read-back checks and the view). */
#include "fuzz_common.h"

/* Small enough that one encode stays well under a second. */
#define FUZZ_MAX_PIXELS 4000000ull
/* One fixed quality: one encode per input, not a search. */
#define FUZZ_QUALITY 50

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct codec_opts opts = {
	    .photo_quality = FUZZ_QUALITY,
	    .preset = "ultrafast",
	    .threads = 1,
	    .max_pixels = FUZZ_MAX_PIXELS,
	};
	struct codec_result res = {0};
	const char *out = fuzz_path("heic"), *view = fuzz_path("view.jpg");
	int fd, ret;

	fuzz_init();
	if (size > FUZZ_MAX_INPUT)
		return 0;
	fd = fuzz_memfd(data, size);
	if (fd < 0)
		return 0;
	ret = photo_archive(fd, out, view, &opts, &res);
	/* bad input is never an operational error, and what is archived keeps
	 * the promises */
	if (ret != 0 && ret != -ENOMEM)
		abort();
	if (res.archived && (res.ssim < 0.99 || res.stored_bytes == 0 || res.view_bytes == 0))
		abort();
	if (!res.archived && !res.reason[0])
		abort();
	/* FUZZ_SAVE_HEIC=dir keeps what was archived: seeds for fuzz_view */
	if (res.archived && getenv("FUZZ_SAVE_HEIC")) {
		char dst[512];
		snprintf(dst, sizeof(dst), "%s/%zu-%llu.heic", getenv("FUZZ_SAVE_HEIC"), size,
			 (unsigned long long)res.stored_bytes);
		if (rename(out, dst) != 0)
			abort();
	}
	close(fd);
	unlink(out);
	unlink(view);
	return 0;
}
