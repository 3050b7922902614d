#!/bin/bash
# The whole suite, as `make test` runs it: unit tests and mount tests against
# the release build, then again against the ASan+UBSan build, then the core's
# unit tests and the mount tests that race the daemon's threads against the
# ThreadSanitizer build, then the fuzzers. Ends with one line "N passed, N
# failed, N skipped". TEST_STAGES picks stages (default "release asan tsan
# fuzz").
set -u
cd "$(dirname "$0")/.."

export ASAN_OPTIONS="halt_on_error=1:detect_leaks=1:abort_on_error=0:exitcode=86"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
export TSAN_OPTIONS="exitcode=66:second_deadlock_stack=1:suppressions=$PWD/tests/tsan.supp"
[ -f tests/lsan.supp ] && export LSAN_OPTIONS="suppressions=$PWD/tests/lsan.supp:print_suppressions=0"
PYTEST="/usr/bin/python3 -m pytest"

passed=0 failed=0 skipped=0
failures=()

# add "passed failed skipped" counts read from a summary line
count() {
	local line=$1 what=$2 p=0 f=0 s=0 n
	for n in $(grep -oE '[0-9]+ passed' <<<"$line" | grep -oE '^[0-9]+'); do p=$((p + n)); done
	for n in $(grep -oE '[0-9]+ (failed|errors?)' <<<"$line" | grep -oE '^[0-9]+'); do f=$((f + n)); done
	for n in $(grep -oE '[0-9]+ skipped' <<<"$line" | grep -oE '^[0-9]+'); do s=$((s + n)); done
	passed=$((passed + p))
	failed=$((failed + f))
	skipped=$((skipped + s))
	[ "$f" -gt 0 ] && failures+=("$what")
	return 0
}

run_unit() { # dir label
	local t out rc line
	for t in "$1"/test_*; do
		[ -x "$t" ] || continue
		echo "== $2 $(basename "$t")"
		out=$("$t" 2>&1)
		rc=$?
		echo "$out" | tail -n 30
		line=$(grep -E '[0-9]+ passed, [0-9]+ failed' <<<"$out" | tail -n 1)
		# a crash, a sanitizer report or a nonzero exit that the line does
		# not account for is one more failure
		if [ -z "$line" ] || { [ $rc -ne 0 ] && ! grep -qE '[1-9][0-9]* failed' <<<"$line"; }; then
			line="$line, 1 failed"
		fi
		count "$line" "$2 $(basename "$t")"
	done
}

run_mount() { # binary label [test files...]
	local out line bin=$1 label=$2
	shift 2
	echo "== $label mount tests ($bin)"
	out=$(HEVCFS_BIN="$bin" $PYTEST -q -p no:cacheprovider -rs "${@:-tests/mount}" 2>&1)
	echo "$out" | tail -n 60
	line=$(grep -E '^[0-9=]* ?[0-9]+ (passed|failed|error|skipped)' <<<"$out" | tail -n 1)
	[ -n "$line" ] || line=$(tail -n 1 <<<"$out")
	grep -qE '[0-9]+ (passed|failed)' <<<"$line" || line="0 passed, 1 failed"
	count "$line" "$label mount tests"
}

for stage in ${TEST_STAGES:-release asan tsan fuzz}; do
	case $stage in
	release)
		# the code follows the checked-in .clang-format
		echo "== format"
		if out=$(clang-format --dry-run -Werror $(git ls-files '*.c' '*.h' 2>/dev/null ||
			ls */*.c */*.h tests/*/*.c tests/*/*.h) 2>&1); then
			count "1 passed" format
		else
			echo "$out" | grep 'error:' | head -n 20
			count "1 failed" format
		fi
		run_unit build/tests release
		run_mount "$PWD/hevcfs" release
		;;
	asan)
		run_unit build/asan/tests asan
		# every 4th crash state: the release stage checks them all
		HEVCFS_CRASH_EVERY=4 run_mount "$PWD/build/asan/hevcfs" asan
		;;
	tsan)
		# the threads: node, queue and commit driven directly, then
		# the mount tests whose requests race the workers
		run_unit build/tsan/tests tsan
		run_mount "$PWD/build/tsan/hevcfs" tsan tests/mount/test_stress.py \
			tests/mount/test_files.py tests/mount/test_posix.py \
			tests/mount/test_photos.py tests/mount/test_integrity.py \
			tests/mount/test_faults.py
		;;
	fuzz)
		# hostile input: each fuzzer FUZZ_TIME seconds (10: 40 s in all)
		# after replaying its regressions; one test per target
		echo "== fuzz"
		out=$(FUZZ_TIME=${FUZZ_TIME:-10} sh tests/fuzz/run.sh 2>&1)
		echo "$out" | tail -n 40
		n=$(grep -c '^fuzz_[a-z]*: [0-9]* s$' <<<"$out")
		if grep -q '^fuzz: no crash$' <<<"$out" && [ "$n" -eq 4 ]; then
			count "4 passed" fuzz
		else
			count "1 failed" fuzz
		fi
		;;
	*)
		echo "unknown stage $stage"
		failures+=("stage $stage")
		failed=$((failed + 1))
		;;
	esac
done

echo
[ ${#failures[@]} -gt 0 ] && printf 'failed in: %s\n' "${failures[@]}"
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
