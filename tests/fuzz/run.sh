#!/bin/sh
# Run the fuzzers (built by `make fuzz-build` into build/fuzz) for FUZZ_TIME
# seconds each, first replaying every input in tests/fuzz/regress/TARGET
# (crashes found before, kept as regression tests). Seeds: small JPEGs of
# each kind made here (ffmpeg, cjpeg, exiftool) and, when it is there, the
# camera corpus in ../shared/corpus (FUZZ_CORPUS); the HEICs fuzz_jpeg
# archives from them for fuzz_view; a few names; one byte for the index
# record decoder (its coverage finds the rest). Corpora and crashes stay in
# build/fuzz/; exits nonzero on a crash.
set -eu
B=${FUZZ_DIR:-build/fuzz}
T=${FUZZ_TIME:-60}
S=$B/seeds
R=tests/fuzz/regress
CORPUS=${FUZZ_CORPUS:-../shared/corpus}
mkdir -p $S/jpeg $S/view $S/index $S/names $B/crashes
for t in jpeg view index names; do mkdir -p $B/corpus/$t; done
gen() { size=$1; shift; ffmpeg -hide_banner -nostdin -loglevel error -f lavfi -i "testsrc2=size=$size" \
	-frames:v 1 -q:v 1 -y "$@"; }
J=$S/jpeg
gen 256x192 $J/a420.jpg
ffmpeg -hide_banner -nostdin -loglevel error -f lavfi -i testsrc2=size=254x190 -frames:v 1 \
	-pix_fmt yuvj444p -q:v 1 -y $J/b444.jpg
ffmpeg -hide_banner -nostdin -loglevel error -f lavfi -i testsrc2=size=250x120 -frames:v 1 \
	-pix_fmt yuvj422p -q:v 1 -y $J/c422.jpg
ffmpeg -hide_banner -nostdin -loglevel error -f lavfi -i testsrc2=size=200x150 -frames:v 1 \
	-f image2pipe -vcodec ppm - > $S/t.ppm
cjpeg -progressive -quality 98 $S/t.ppm > $J/d_prog.jpg
cjpeg -grayscale -quality 98 -restart 1 $S/t.ppm > $J/e_gray_rst.jpg
cp $J/a420.jpg $J/f_meta.jpg
exiftool -q -q -overwrite_original -Orientation=6 -n -Make=seed -DateTimeOriginal="2026:01:02 03:04:05" \
	-XMP:Title=seed -IPTC:Caption-Abstract=seed -Comment=seed $J/f_meta.jpg
ICC=$(find /usr/share/color -name '*.icc' -size -10k 2>/dev/null | head -n 1)
if [ -n "$ICC" ]; then
	cp $J/a420.jpg $J/g_icc.jpg
	exiftool -q -q -overwrite_original "-ICC_Profile<=$ICC" $J/g_icc.jpg
fi
rm -f $S/t.ppm $S/view/*
# the camera corpus: its small files (every orientation, GPS, XMP, broken)
if [ -d "$CORPUS" ]; then
	find "$CORPUS" -type f \( -iname '*.jpg' -o -iname '*.jpeg' \) -size -300k \
		-exec cp {} $J/ \;
	find "$CORPUS" -type f \( -iname '*.heic' -o -iname '*.heif' \) -size -1M \
		-exec cp {} $S/view/ \;
fi
FUZZ_SAVE_HEIC=$S/view $B/fuzz_jpeg -runs=0 $J >/dev/null 2>&1
printf 'IMG_0001.JPG' > $S/names/a
printf 'clip.mov' > $S/names/b
printf '.hevcfs' > $S/names/c
printf '\001' > $S/index/a
rc=0
for t in jpeg view index names; do
	if [ -d $R/$t ] && [ -n "$(ls -A $R/$t)" ]; then
		echo "fuzz_$t: regressions"
		$B/fuzz_$t -rss_limit_mb=4096 -timeout=30 $R/$t/* >$B/fuzz_$t.regress.log 2>&1 ||
			{ rc=1; tail -n 30 $B/fuzz_$t.regress.log; }
	fi
	echo "fuzz_$t: ${T} s"
	$B/fuzz_$t -max_total_time=$T -max_len=1048576 -rss_limit_mb=4096 -timeout=30 \
		-print_final_stats=1 -artifact_prefix=$B/crashes/$t- $B/corpus/$t $S/$t \
		2>$B/fuzz_$t.log || rc=1
	grep -E 'stat::number_of_executed_units|SUMMARY' $B/fuzz_$t.log || true
done
[ $rc = 0 ] && echo "fuzz: no crash" || echo "fuzz: CRASH, see $B/crashes and $B/fuzz_*.log"
exit $rc
