#!/bin/sh
# The programs make bench measures hevcfs against that Debian ships only as
# source, built at bench time under /tmp (never in the repository) and kept
# there between runs, one build per version:
#   passthrough_hp  libfuse's own high-performance passthrough example, from
#                   Debian's fuse3 source package of the installed
#                   libfuse3-dev's version, compiled with g++ against it;
#   fsx             xfstests' file system exerciser, from an xfstests source
#                   tree named by BENCH_XFSTESTS, or from a Debian source
#                   package that carries it, if any does (see fsx_probe).
# Debian 12 configures no deb-src lines: apt runs here on a private sources
# list and private lists, leaving the system's apt state as it was.
# Prints shell assignments on stdout (PASSTHROUGH_HP, FSX, FSX_NOTE); says
# what it does on stderr. Needs root (apt-get).
set -eu

PEERS=${BENCH_PEERS_DIR:-/tmp/hevcfs-bench-peers}
APTDIR=$PEERS/apt
MIRROR=${BENCH_DEBIAN_MIRROR:-http://deb.debian.org/debian}
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
# shellcheck disable=SC1091
CODENAME=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")

say() { echo "[peers] $*" >&2; }

# apt-get and apt-cache on the private sources list, lists and caches.
apt_private() {
	cmd=$1
	shift
	"$cmd" -q -o Dir::Etc::SourceList="$APTDIR/sources.list" \
		-o Dir::Etc::SourceParts=/nonexistent -o Dir::State::Lists="$APTDIR/lists" \
		-o Dir::Cache="$APTDIR/cache" -o APT::Sandbox::User=root "$@"
}

# Fetch the source indexes once per run (cheap: a few MB).
apt_private_update() {
	[ -f "$APTDIR/updated.$$" ] && return 0
	mkdir -p "$APTDIR/lists/partial" "$APTDIR/cache/archives/partial"
	{
		echo "deb-src [signed-by=$KEYRING] $MIRROR $CODENAME main"
		echo "deb-src [signed-by=$KEYRING] $MIRROR $CODENAME-updates main"
		echo "deb-src [signed-by=$KEYRING] ${MIRROR%/debian}/debian-security $CODENAME-security main"
	} >"$APTDIR/sources.list"
	say "apt-get update (deb-src of $CODENAME, private lists in $APTDIR)"
	apt_private apt-get update >/dev/null
	rm -f "$APTDIR"/updated.*
	: >"$APTDIR/updated.$$"
}

# passthrough_hp for the installed libfuse3-dev; prints its path.
passthrough_hp() {
	ver=$(dpkg-query -W -f='${Version}' libfuse3-dev)
	bin=$PEERS/passthrough_hp-$ver
	if [ -x "$bin" ]; then
		say "passthrough_hp: $bin (cached)"
		echo "$bin"
		return 0
	fi
	apt_private_update
	build=$(mktemp -d "$PEERS/fuse3-src.XXXXXX")
	say "passthrough_hp: apt-get source fuse3=$ver in $build"
	(cd "$build" && { apt_private apt-get source "fuse3=$ver" >/dev/null 2>&1 ||
		apt_private apt-get source fuse3 >/dev/null; })
	ex=$(echo "$build"/fuse3-*/example)
	say "passthrough_hp: g++ $ex/passthrough_hp.cc (libfuse3-dev $ver)"
	# shellcheck disable=SC2046
	g++ -std=c++17 -O2 -o "$bin.tmp" "$ex/passthrough_hp.cc" \
		$(pkg-config --cflags --libs fuse3) -lpthread
	mv "$bin.tmp" "$bin"
	rm -rf "$build"
	echo "$bin"
}

# fsx from an xfstests source tree (BENCH_XFSTESTS: a checkout or a
# snapshot of xfstests-dev): ltp/fsx.c compiled alone, with the few
# config.h answers it asks for written here (xfstests' configure needs
# autotools and the XFS headers, which fsx does not use). Prints the path.
fsx_from_source() {
	src=$1
	id=$(sha256sum "$src/ltp/fsx.c" | cut -c1-12)
	bin=$PEERS/fsx-$id
	if [ ! -x "$bin" ]; then
		cfg=$(mktemp -d "$PEERS/fsx-cfg.XXXXXX")
		for h in SYS_TYPES_H SYS_STAT_H SYS_STATVFS_H SYS_TIME_H SYS_IOCTL_H SYS_WAIT_H \
			MALLOC_H DIRENT_H STDLIB_H UNISTD_H ERRNO_H STRING_H SYS_FCNTL_H \
			SYS_PARAM_H LIBGEN_H ASSERT_H ERR_H LINUX_FALLOC_H COPY_FILE_RANGE; do
			echo "#define HAVE_$h 1"
		done >"$cfg/config.h"
		echo "#include <getopt.h>" >>"$cfg/config.h"
		say "fsx: cc $src/ltp/fsx.c"
		cc -O2 -D_GNU_SOURCE -I"$cfg" -I"$src/src" -I"$src/include" \
			-o "$bin.tmp" "$src/ltp/fsx.c" >&2
		mv "$bin.tmp" "$bin"
		rm -rf "$cfg"
	fi
	echo "$bin"
}

# fsx from xfstests: BENCH_FSX names a binary built elsewhere, BENCH_XFSTESTS
# an xfstests source tree to build it from; otherwise a Debian source
# package named for xfstests or LTP would carry ltp/fsx.c (no value printed
# below may hold a single quote).
# Prints "path" or "" and the reason on the next line.
fsx_probe() {
	if [ -z "${BENCH_FSX:-}" ] && [ -n "${BENCH_XFSTESTS:-}" ]; then
		if [ -f "$BENCH_XFSTESTS/ltp/fsx.c" ] && BENCH_FSX=$(fsx_from_source "$BENCH_XFSTESTS"); then
			echo "$BENCH_FSX"
			echo "built from $BENCH_XFSTESTS/ltp/fsx.c"
		else
			echo ""
			echo "BENCH_XFSTESTS=$BENCH_XFSTESTS: no ltp/fsx.c there, or it did not build"
		fi
		return 0
	fi
	if [ -n "${BENCH_FSX:-}" ]; then
		if [ -x "$BENCH_FSX" ] && "$BENCH_FSX" 2>&1 | grep -q -- "-N numops"; then
			echo "$BENCH_FSX"
			echo "given by BENCH_FSX"
		else
			echo ""
			echo "BENCH_FSX=$BENCH_FSX is not an fsx binary"
		fi
		return 0
	fi
	apt_private_update
	found=""
	for p in xfstests fstests xfstests-dev ltp; do
		if apt_private apt-cache showsrc --only-source "$p" 2>/dev/null | grep -q "^Package: $p\$"; then
			found="$found $p"
		fi
	done
	echo ""
	if [ -n "$found" ]; then
		echo "source package(s)$found found, building fsx from them is not automated yet"
	else
		echo "xfstests is not packaged in Debian $CODENAME (no source package xfstests," \
			"fstests or ltp), so its fsx cannot be built here; BENCH_XFSTESTS=/path/to/xfstests builds it from a source tree, BENCH_FSX=/path/to/fsx times one built elsewhere"
	fi
}

mkdir -p "$PEERS"
pthp=$(passthrough_hp)
probe=$(fsx_probe)
fsx=$(echo "$probe" | sed -n 1p)
note=$(echo "$probe" | sed -n 2p)
rm -f "$APTDIR"/updated.*
echo "PASSTHROUGH_HP='$pthp'"
echo "FSX='$fsx'"
echo "FSX_NOTE='$note'"
