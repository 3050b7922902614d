#!/bin/sh
# Install what is missing, build hevcfs and mount a demo archive:
#   backing directory  $HEVCFS_DEMO/Archive.store  (default ~/hevcfs-demo)
#   mount point        $HEVCFS_DEMO/Archive
# A couple of photos and a short clip are copied in, and their archiving is
# shown as it happens, ending with the space saved.
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
		# a camera-like photo: a test pattern saved at a camera's quality
		ffmpeg -loglevel error -f lavfi -i testsrc2=size=2048x1536 -frames:v 1 -q:v 2 \
			"$MNT/samples/IMG_0001.JPG"
	fi
	# a clip as an older camera writes it (MPEG-4 at a high bit rate, with
	# sound): what HEVC stores in a fraction of the space
	ffmpeg -loglevel error -f lavfi -i testsrc2=size=640x360:rate=30 -f lavfi \
		-i sine=frequency=440 -t 4 -c:v mpeg4 -q:v 2 -c:a aac -shortest \
		"$MNT/samples/MVI_0002.AVI"
fi
echo
echo "Archiving in the background (hevcfs status $STORE):"
n=0
while ! ./hevcfs wait "$STORE" --timeout 2 >/dev/null 2>&1; do
	./hevcfs status "$STORE" --json | python3 -c '
import json, sys
s = json.load(sys.stdin)
jobs = ", ".join("%s %.0f%%" % (j["path"], j["percent"]) for j in s["running"]) or "settling"
print("  %d archived, %d waiting; running: %s" % (s["archived"], s["pending"] + s["staged"], jobs))'
	n=$((n + 1))
	[ "$n" -lt 150 ] || break
done
echo
./hevcfs status "$STORE"
cat <<MSG

hevcfs demo archive mounted.
  Copy photos and videos into:  $MNT
  Stored (HEIC/MP4) files in:   $STORE
  Progress:                     ./hevcfs status $STORE
  Unmount:                      fusermount3 -u $MNT
MSG
