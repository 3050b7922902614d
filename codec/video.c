/* video — video -> HEVC MP4/MKV archiving (being written). */
#include "internal.h"

int video_sniff(const uint8_t *head, size_t n)
{
	(void)head, (void)n;
	return 0;
}

int video_archive(int src_fd, const char *out_path, const struct codec_opts *opts,
		  struct codec_result *result)
{
	(void)src_fd, (void)out_path, (void)opts;
	codec_keep(result, "video archiving not available in this build");
	return 0;
}
