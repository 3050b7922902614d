/* fuzz_index — libFuzzer target: arbitrary bytes as an index record
 * (idx_entry_decode: what the daemon reads back from LMDB, where a torn or
 * damaged page may hand it anything). A record decodes or is refused,
 * never read past its end; one that decodes encodes within IDX_ENTRY_MAX
 * and decodes again to the same entry, its strings terminated. */
#include "../../index/index.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct idx_entry e, again;
	uint8_t buf[IDX_ENTRY_MAX], buf2[IDX_ENTRY_MAX];
	size_t n, n2;
	/* a copy of exactly size bytes, so ASan sees any read past the end */
	uint8_t *in = malloc(size ? size : 1);

	if (!in)
		return 0;
	memcpy(in, data, size);
	if (idx_entry_decode(in, size, &e) == 0) {
		if (!memchr(e.suffix, '\0', sizeof(e.suffix)) ||
		    !memchr(e.reason, '\0', sizeof(e.reason)))
			abort(); /* a string the daemon would print past its end */
		n = idx_entry_encode(&e, buf);
		if (n > IDX_ENTRY_MAX || idx_entry_decode(buf, n, &again) != 0)
			abort();
		n2 = idx_entry_encode(&again, buf2);
		if (n2 != n || memcmp(buf, buf2, n))
			abort(); /* not a fixed point: a record that changes as it is kept */
	}
	free(in);
	return 0;
}
