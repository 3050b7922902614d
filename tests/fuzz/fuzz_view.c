/* fuzz_view — libFuzzer target: arbitrary bytes as a stored HEIC whose JPEG
 * view is rendered (photo_render_view: libheif parsing, the hevcfs header
 * item, segment records, decoding, TurboJPEG encoding), and probed
 * (codec_probe_archived). */
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct codec_opts opts = {.threads = 1};
	struct codec_result res;
	const char *out = fuzz_path("view.jpg");
	uint64_t vsize = 0;
	int fd, ret;

	fuzz_init();
	if (size > FUZZ_MAX_INPUT)
		return 0;
	fd = fuzz_memfd(data, size);
	if (fd < 0)
		return 0;
	ret = photo_render_view(fd, out, &opts, &vsize);
	/* a damaged file is -EINVAL, never an I/O error or a crash */
	if (ret != 0 && ret != -EINVAL && ret != -ENOMEM)
		abort();
	ret = codec_probe_archived(fd, &res);
	if (ret != 0 && ret != -ENOMEM)
		abort();
	close(fd);
	unlink(out);
	return 0;
}
