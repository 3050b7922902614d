#!/bin/sh
# Install what is missing, build hevcfs and mount a demo archive:
#   backing directory  $HEVCFS_DEMO/Archive.store  (default ~/hevcfs-demo)
#   mount point        $HEVCFS_DEMO/Archive
# A couple of sample photos and a short clip are copied in so there is
# something to watch being archived.
set -eu
cd "$(dirname "$0")/.."
sh tools/deps.sh
make -s
DEMO=${HEVCFS_DEMO:-$HOME/hevcfs-demo}
STORE=$DEMO/Archive.store
MNT=$DEMO/Archive
mkdir -p "$STORE" "$MNT"
if mountpoint -q "$MNT"; then
	echo "hevcfs: $MNT is already mounted"
else
	./hevcfs "$STORE" "$MNT"
fi
if [ ! -e "$MNT/samples" ]; then
	mkdir -p "$MNT/samples"
	i=0
	for f in ../shared/corpus/exif-samples/jpg/mobile/*.jpg ../shared/corpus/exif-samples/jpg/Canon_40D.jpg; do
		[ -f "$f" ] && cp -p "$f" "$MNT/samples/" && i=$((i + 1))
	done
	if [ "$i" -eq 0 ]; then
		ffmpeg -loglevel error -f lavfi -i testsrc2=size=1280x960 -frames:v 1 -q:v 2 \
			"$MNT/samples/test-pattern.jpg"
	fi
	ffmpeg -loglevel error -f lavfi -i testsrc2=size=640x360:rate=30 -f lavfi \
		-i sine=frequency=440 -t 3 -c:v libx264 -c:a aac -shortest \
		"$MNT/samples/clip.mp4" 2>/dev/null || true
fi
cat <<MSG

hevcfs demo archive mounted.
  Copy photos and videos into:  $MNT
  Stored (HEIC/MP4) files in:   $STORE
  Progress:                     ./hevcfs status $STORE
  Unmount:                      fusermount3 -u $MNT
MSG
