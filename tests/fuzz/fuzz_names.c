/* fuzz_names — libFuzzer target: arbitrary bytes as a file name (names.c:
 * the rules that map a logical name to its backing name and back). A name
 * is accepted only when it is one (non-empty, at most NAME_MAX bytes, no
 * '/', not "." or ".."); the backing name of an archive is the name with
 * the suffix appended (or, for an MP4 whose name says MP4/MOV/M4V, the name
 * itself), at most NAME_MAX bytes, and says it is an archive; stripping the
 * suffix gives the name back. */
#include "../../fs/internal.h"

#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char *const sfx[] = {".heic", ".mp4", ".mkv"};
	char name[2 * NAME_MAX], out[NAME_MAX + 16], joined[3 * NAME_MAX + 2];
	size_t n = size < sizeof(name) - 1 ? size : sizeof(name) - 1;

	memcpy(name, data, n);
	name[n] = '\0';
	n = strlen(name);
	if (fs_name_ok(name) != (n > 0 && n <= NAME_MAX && !strchr(name, '/') &&
				 strcmp(name, ".") && strcmp(name, "..")))
		abort();
	if (!fs_name_ok(name))
		return 0;
	for (size_t i = 0; i < sizeof(sfx) / sizeof(*sfx); i++) {
		size_t s = strlen(sfx[i]);
		if (fs_stored_name(name, sfx[i], out, sizeof(out)) != 0) {
			if (n + s <= NAME_MAX)
				abort(); /* refused a name that fits */
			continue;
		}
		if (strlen(out) > NAME_MAX || !fs_name_ok(out))
			abort();
		if (!strcmp(out, name)) {
			if (strcmp(sfx[i], ".mp4"))
				abort(); /* only an MP4 keeps its name */
			continue;
		}
		if (strlen(out) != n + s || strncmp(out, name, n) || strcmp(out + n, sfx[i]) ||
		    !fs_has_archive_suffix(out))
			abort();
	}
	if (fs_path_join("", name, joined, sizeof(joined)) != 0 || strcmp(joined, name) ||
	    fs_path_join("dir/sub", name, joined, sizeof(joined)) != 0 ||
	    strcmp(fs_basename(joined), name))
		abort();
	if (fs_name_reserved(0, name) || fs_path_reserved(name) != !strcmp(name, FS_STATE_DIR))
		abort();
	return 0;
}
