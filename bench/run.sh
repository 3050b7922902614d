#!/bin/sh
# make bench: every figure of the performance issue in one run, ending with
# one line per aim (met, NOT met, not measured). Needs root (mounts,
# drop_caches) and a quiet machine for figures worth reporting. Sizes scale
# down through the environment for a quick check (see bench/fsbench.py), e.g.
#   BENCH_REPS=1 BENCH_SMALL=500 BENCH_BIG_MB=32 BENCH_LS_FILES=1000 \
#   BENCH_RSS_FILES=500,2000 BENCH_PHOTOS=3 BENCH_PHOTO_SIZE=1600x1200 \
#   BENCH_GENERATED=1 BENCH_VIDEO_SECONDS=2 BENCH_VIDEO_RUNS=1 make bench
set -eu
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
	echo "make bench: needs root (mounts, /proc/sys/vm/drop_caches)" >&2
	exit 77
fi
sh tools/deps.sh bench
export HEVCFS_BIN="$PWD/hevcfs"
# passthrough_hp and fsx, built under /tmp at bench time (bench/peers.sh)
peers=$(sh bench/peers.sh)
eval "$peers"
export PASSTHROUGH_HP FSX FSX_NOTE
export BENCH_VIDEO_RUNS="${BENCH_VIDEO_RUNS:-3}"
BENCH_AIMS=$(mktemp /tmp/hevcfs-bench-aims.XXXXXX)
export BENCH_AIMS
trap 'rm -f "$BENCH_AIMS"' EXIT

echo "== machine: $(nproc) cores, $(free -g | awk '/^Mem:/ {print $2}') GiB," \
	"load $(cut -d' ' -f1-3 /proc/loadavg); $(uname -sr); $(git describe --always --dirty 2>/dev/null || echo '?')"
echo "== peers: bindfs $(bindfs --version 2>/dev/null | head -1 | awk '{print $2}')," \
	"passthrough_hp ${PASSTHROUGH_HP:-MISSING} (libfuse3-dev $(dpkg-query -W -f='${Version}' libfuse3-dev))," \
	"fsx ${FSX:-none: $FSX_NOTE}"
failed=""
echo "== filesystem (bench/fsbench.py)"
python3 bench/fsbench.py || failed="$failed fsbench"
for b in photo video phone; do
	echo
	echo "== ${b}s (bench/$b.py)"
	python3 "bench/$b.py" || failed="$failed $b"
done

echo
echo "== aims (load now $(cut -d' ' -f1-3 /proc/loadavg))"
awk -F"\t" '{ printf "  %-12s %s (%s)\n", $2, $1, $3 }' "$BENCH_AIMS"
if [ -n "$failed" ]; then
	echo "!!! failed:$failed (their aims above are missing or partial)"
	exit 1
fi
