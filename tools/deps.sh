#!/bin/sh
# Install the Debian/Ubuntu packages hevcfs needs to build and test
# (`deps.sh bench`: also what the benchmarks compare against). Idempotent and
# quiet when everything is there; uses sudo when not root.
set -eu

PKGS="build-essential pkg-config
libfuse3-dev fuse3
libheif-dev libheif-examples libde265-dev
libavcodec-dev libavformat-dev libavutil-dev libswscale-dev libswresample-dev ffmpeg
libturbojpeg0-dev libjpeg-turbo-progs
liblmdb-dev lmdb-utils libssl-dev
python3 python3-pytest libimage-exiftool-perl attr acl rsync strace
imagemagick libgdk-pixbuf2.0-bin
clang-14 libclang-rt-14-dev clang-format"
# what the benchmarks measure against: the equal-quality shell pipeline
# (ImageMagick), bindfs, and the tools to build libfuse's passthrough_hp from
# Debian's fuse3 source package (g++, dpkg-dev for apt-get source)
[ "${1:-}" = bench ] && PKGS="$PKGS time bindfs g++ dpkg-dev xz-utils"
# libFuzzer for `make fuzz`

missing=""
for p in $PKGS; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "hevcfs: installing:$missing"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
