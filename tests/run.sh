#!/bin/bash
# The whole suite, as `make test` runs it: unit tests and mount tests against
# the release build, then again against the ASan+UBSan build. Ends with one
# line "N passed, N failed, N skipped".
set -u
cd "$(dirname "$0")/.."

export ASAN_OPTIONS="halt_on_error=1:detect_leaks=1:abort_on_error=0:exitcode=86"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
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

run_mount() { # binary label
	local out line
	echo "== $2 mount tests ($1)"
	out=$(HEVCFS_BIN="$1" $PYTEST -q -p no:cacheprovider -rs tests/mount 2>&1)
	echo "$out" | tail -n 60
	line=$(grep -E '^[0-9=]* ?[0-9]+ (passed|failed|error|skipped)' <<<"$out" | tail -n 1)
	[ -n "$line" ] || line=$(tail -n 1 <<<"$out")
	grep -qE '[0-9]+ (passed|failed)' <<<"$line" || line="0 passed, 1 failed"
	count "$line" "$2 mount tests"
}

run_unit build/tests release
run_mount "$PWD/hevcfs" release
run_unit build/asan/tests asan
run_mount "$PWD/build/asan/hevcfs" asan

echo
[ ${#failures[@]} -gt 0 ] && printf 'failed in: %s\n' "${failures[@]}"
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
