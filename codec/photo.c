/* photo — JPEG -> HEIC archiving and the JPEG view (being written). */
#include "internal.h"

#include <errno.h>

int photo_archive(int src_fd, const char *out_path, const char *view_path,
		  const struct codec_opts *opts, struct codec_result *result)
{
	(void)src_fd, (void)out_path, (void)view_path, (void)opts;
	codec_keep(result, "photo archiving not available in this build");
	return 0;
}

int photo_render_view(int stored_fd, const char *out_path, const struct codec_opts *opts,
		      uint64_t *size)
{
	(void)stored_fd, (void)out_path, (void)opts, (void)size;
	return -ENOTSUP;
}
