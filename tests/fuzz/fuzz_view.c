/* fuzz_view — libFuzzer target: arbitrary bytes as a stored HEIC whose JPEG
 * view is rendered (photo_render_view: libheif parsing, the hevcfs header
 * item, segment records, decoding, TurboJPEG encoding), mapped without a
 * render (codec_view_map: what the mount serves of a view's head and trailer
 * before any render; the map must lie inside its view. On a damaged file
 * the map and the render may disagree: the mount serves neither unless the
 * head matches the digest recorded at archive time and the render the
 * stored file's and the view's), its
 * embedded digests read and checked (codec_embedded_sums,
 * codec_check_self_sum: what fsck --rebuild trusts), and probed
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
	struct codec_view_map m = {0};
	struct codec_embedded emb;
	int mapped, ok;

	ret = photo_render_view(fd, out, &opts, &vsize);
	/* a damaged file is -EINVAL, never an I/O error or a crash */
	if (ret != 0 && ret != -EINVAL && ret != -ENOMEM)
		abort();
	mapped = codec_view_map(fd, &m);
	if (mapped != 0 && mapped != -EINVAL && mapped != -ENOTSUP && mapped != -ENOMEM)
		abort();
	if (mapped == 0 &&
	    (m.head_len > m.size || m.tail_off > m.size || m.tail_len > m.size - m.tail_off ||
	     m.end_off > m.size || m.end_len > m.size - m.end_off ||
	     (m.end_len && m.end_off < m.head_len)))
		abort(); /* a map outside its own view */
	codec_view_map_release(&m);
	ret = codec_embedded_sums(fd, &emb);
	if (ret != 0 && ret != -ENOMEM)
		abort();
	if (ret == 0 && emb.has) {
		ret = codec_check_self_sum(fd, &emb, &ok);
		if (ret != 0 && ret != -EINVAL && ret != -ENOMEM)
			abort();
	}
	ret = codec_probe_archived(fd, &res);
	if (ret != 0 && ret != -ENOMEM)
		abort();
	close(fd);
	unlink(out);
	return 0;
}
