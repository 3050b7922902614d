#!/bin/sh
# make bench: every figure the issues ask for, in one run. Needs root (mounts,
# drop_caches) and a quiet machine for figures worth reporting.
set -eu
cd "$(dirname "$0")/.."
sh tools/deps.sh bench
export HEVCFS_BIN="$PWD/hevcfs"
echo "== machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== filesystem (bench/fsbench.py)"
python3 bench/fsbench.py
for b in photo video; do
	if [ -f "bench/$b.py" ]; then
		echo "== ${b}s (bench/$b.py)"
		python3 "bench/$b.py"
	fi
done
