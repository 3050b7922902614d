/* embedded — the digests a stored file carries inside it (an archived MP4's
 * last box; an archived HEIC's header item), so the backing tree alone says
 * whether a file is whole. */
#include "internal.h"

#include <errno.h>
#include <string.h>

int codec_embedded_sums(int fd, struct codec_embedded *e)
{
	int ret;

	memset(e, 0, sizeof(*e));
	ret = video_embedded_sums(fd, e->orig_sum, e->self_sum, &e->self_off, &e->orig_bytes);
	if (ret < 0)
		return ret;
	e->has = ret == 1;
	return 0;
}

int codec_check_self_sum(int fd, const struct codec_embedded *e, int *ok)
{
	struct sum_file f;
	int ret;

	*ok = 0;
	if (!e->has)
		return 0;
	ret = sum_file(fd, 0, e->self_off, SUM_LEN, NULL, NULL, &f);
	if (ret)
		return ret;
	*ok = memcmp(f.whole, e->self_sum, SUM_LEN) == 0;
	return 0;
}
