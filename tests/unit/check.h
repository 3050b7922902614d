/*
 * check — the unit tests' harness: each TEST is a function; CHECK aborts the
 * current test with file:line on the first broken expectation, the runner
 * goes on with the next test and ends with "NAME: N passed, N failed".
 */
#ifndef HEVCFS_CHECK_H
#define HEVCFS_CHECK_H

#include <setjmp.h>
#include <stdio.h>
#include <string.h>

static jmp_buf check_jmp;
static int check_passed, check_failed, check_skipped;

#define CHECK(cond)                                                                                \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "  FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);          \
			longjmp(check_jmp, 1);                                                     \
		}                                                                                  \
	} while (0)

#define CHECK_EQ(a, b)                                                                             \
	do {                                                                                       \
		long long check_a_ = (long long)(a), check_b_ = (long long)(b);                    \
		if (check_a_ != check_b_) {                                                        \
			fprintf(stderr, "  FAIL %s:%d: %s == %s (%lld != %lld)\n", __FILE__,       \
				__LINE__, #a, #b, check_a_, check_b_);                             \
			longjmp(check_jmp, 1);                                                     \
		}                                                                                  \
	} while (0)

/* Skip the current test, saying why (counted, never silent). */
#define SKIP(why)                                                                                  \
	do {                                                                                       \
		fprintf(stderr, "  SKIP %s: %s\n", __func__, why);                                 \
		longjmp(check_jmp, 2);                                                             \
	} while (0)

static inline void check_run(const char *name, void (*fn)(void))
{
	int r = setjmp(check_jmp);
	if (r == 0) {
		fn();
		check_passed++;
		fprintf(stderr, "  ok   %s\n", name);
	} else if (r == 1) {
		check_failed++;
		fprintf(stderr, "  FAIL %s\n", name);
	} else {
		check_skipped++;
	}
}

#define RUN(fn) check_run(#fn, fn)

/* Print the closing line and return the exit code. */
static inline int check_done(const char *suite)
{
	printf("%s: %d passed, %d failed, %d skipped\n", suite, check_passed, check_failed,
	       check_skipped);
	return check_failed ? 1 : 0;
}

#endif
