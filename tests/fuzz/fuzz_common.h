/*
 * fuzz_common — what the photo fuzzers share: the input as a memfd (the
 * codec reads borrowed file descriptors), a per-process scratch directory
 * for the outputs, and quiet logs.
 */
#ifndef HEVCFS_FUZZ_COMMON_H
#define HEVCFS_FUZZ_COMMON_H

#include "../../codec/internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

/* Inputs above this are skipped: the interesting parsing fits well under it,
 * and it bounds the time of one run. */
#define FUZZ_MAX_INPUT (1u << 20)

/* x265 3.5 leaks per encoder (see tests/unit/test_photo.c): not ours. */
const char *__lsan_default_suppressions(void);
const char *__lsan_default_suppressions(void)
{
	return "leak:libx265.so\n";
}

/* A memfd holding data, or -1. */
static int fuzz_memfd(const uint8_t *data, size_t size)
{
	int fd = memfd_create("fuzz-input", MFD_CLOEXEC);
	size_t off = 0;

	if (fd < 0)
		return -1;
	while (off < size) {
		ssize_t n = write(fd, data + off, size - off);
		if (n <= 0) {
			close(fd);
			return -1;
		}
		off += (size_t)n;
	}
	return fd;
}

/* An output path in /tmp unique to this process (the same every run). */
static const char *fuzz_path(const char *what)
{
	static char p[4][64];
	static int i;

	i = (i + 1) % 4;
	snprintf(p[i], sizeof(p[i]), "/tmp/hevcfs-fuzz.%d.%s", (int)getpid(), what);
	return p[i];
}

/* Once per process: only errors worth a look would reach stderr, and the
 * libraries' own chatter is not what the fuzzer is after. */
static void fuzz_init(void)
{
	static int done;

	if (!done) {
		log_set_level(getenv("FUZZ_LOG") ? LOG_DEBUG : LOG_CRIT);
		done = 1;
	}
}

#endif
