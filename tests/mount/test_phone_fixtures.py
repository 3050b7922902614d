"""The phone fixtures themselves, without a mount: each file decodes clean,
exiftool reads its metadata and takes out the part after the EOI that we
put there, byte for byte, and phone.py's helpers split it where exiftool
does. The negative tests break one field of a layout and expect the check
that guards it to notice."""
import json
import re
import shutil
import struct
import subprocess

import pytest

import phone
from conftest import make_jpeg

CASES = {c.name: c for c in phone.cases()}


@pytest.fixture(scope="module", autouse=True)
def tools_present():
    for t in ("exiftool", "ffmpeg", "ffprobe", "cjpeg", "djpeg"):
        if not shutil.which(t):
            pytest.fail(f"{t} is needed by the phone fixture tests (make deps installs it)")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Every case built once: name -> (path, bytes)."""
    d = tmp_path_factory.mktemp("phone")
    out = {}
    assert len({c.filename for c in CASES.values()}) == len(CASES)
    for name, c in CASES.items():
        path = str(d / c.filename)
        data = c.build(path)
        assert open(path, "rb").read() == data
        out[name] = (path, data)
    return out


def exif_tags(path, *extra):
    """exiftool -a -G1 -n -s: "Group:Tag" -> value (the last one wins)."""
    out = subprocess.run(["exiftool", "-a", "-G1", "-n", "-s", *extra, path],
                         capture_output=True, text=True, check=True).stdout
    tags = {}
    for line in out.splitlines():
        m = re.match(r"\[([^\]]+)\]\s+(\S+)\s*: ?(.*)$", line)
        if m:
            tags[f"{m.group(1)}:{m.group(2)}"] = m.group(3)
    return tags


def probe_mp4(data, tmp_path, codec):
    """ffprobe and ffmpeg open data as an MP4 without a warning: one video
    stream of the given codec at the clip's size and frame count, one AAC
    stream, about 1 s."""
    p = tmp_path / "probe.mp4"
    p.write_bytes(data)
    r = subprocess.run(["ffprobe", "-v", "warning", "-count_frames", "-show_entries",
                        "stream=codec_type,codec_name,width,height,nb_read_frames:"
                        "format=format_name,duration", "-of", "json", str(p)],
                       capture_output=True, text=True)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    info = json.loads(r.stdout)
    assert "mp4" in info["format"]["format_name"]
    assert abs(float(info["format"]["duration"]) - 1.0) < 0.1
    streams = {s["codec_type"]: s for s in info["streams"]}
    assert len(info["streams"]) == 2
    v, a = streams["video"], streams["audio"]
    assert (v["codec_name"], v["width"], v["height"]) == (codec, phone.CLIP_W, phone.CLIP_H)
    assert int(v["nb_read_frames"]) == phone.CLIP_FPS
    assert a["codec_name"] == "aac"
    r = subprocess.run(["ffmpeg", "-nostdin", "-v", "warning", "-i", str(p), "-f", "null", "-"],
                       capture_output=True, text=True)
    assert r.returncode == 0 and r.stderr == "", r.stderr


# --- every case --------------------------------------------------------------

@pytest.mark.parametrize("name", CASES)
def test_decodes_clean(built, name):
    """djpeg and ffmpeg decode the primary picture, 320x240, and say nothing."""
    path, data = built[name]
    r = subprocess.run(["djpeg", "-pnm", path], capture_output=True)
    assert r.returncode == 0 and r.stderr == b"", r.stderr
    assert r.stdout.startswith(b"P6\n320 240\n255\n")
    assert len(r.stdout) == len(b"P6\n320 240\n255\n") + 320 * 240 * 3
    r = subprocess.run(["ffmpeg", "-nostdin", "-v", "warning", "-i", path, "-f", "null", "-"],
                       capture_output=True, text=True)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    r = subprocess.run(["ffprobe", "-v", "warning", "-show_entries",
                        "stream=codec_name,width,height", "-of", "csv=p=0", path],
                       capture_output=True, text=True)
    assert r.returncode == 0 and r.stderr == "" and r.stdout.strip() == "mjpeg,320,240"


@pytest.mark.parametrize("name", CASES)
def test_exiftool_validates(built, name):
    """exiftool -validate finds nothing wrong: the Exif IFDs, the XMP and
    the trailer are where and what they claim to be."""
    out = subprocess.run(["exiftool", "-a", "-G1", "-s", "-validate", "-warning", "-error",
                          built[name][0]], capture_output=True, text=True, check=True).stdout
    assert re.findall(r"^\[ExifTool\]\s+(\w+)\s*: (.*)$", out, re.M) == [("Validate", "OK")], out


@pytest.mark.parametrize("name", CASES)
def test_split_matches_exiftool(built, name):
    """SOI + header_segments + scan + trailer is the file, and the trailer is
    exactly what exiftool finds after the EOI (-Trailer), not at a
    thumbnail's EOI inside the Exif APP1 nor at one inside the trailer."""
    path, data = built[name]
    head, body, tail = phone.header_segments(data), phone.scan(data), phone.trailer(data)
    assert b"\xff\xd8" + head + body + tail == data
    assert len(tail) > 0
    assert phone.exiftool_extract(path, "Trailer") == tail
    assert body[:2] == b"\xff\xdb" and body[-2:] == b"\xff\xd9"
    # the header is the phone's APPn segments: Exif first (Exif 2.32
    # §4.5.4), then XMP, then MPF; the tables follow
    c = CASES[name]
    want = [0xE1] + ([0xE1] if phone.xmp_of(data) is not None else []) + ([0xE2] if c.mpf else [])
    markers = [m for m, _, _ in phone.segments(data)]
    assert markers[:len(want)] == want and markers[len(want)] == 0xDB
    assert len(head) == sum(ln for _, _, ln in phone.segments(data)[:len(want)])
    assert head[:2] == b"\xff\xe1" and head[4:10] == phone.EXIF_SIG
    # the Exif thumbnail's EOI comes first: a search for FFD9 would stop there
    assert data.find(b"\xff\xd9") < phone.eoi_offset(data) - 2
    thumb = phone.exiftool_extract(path, "ThumbnailImage")
    assert thumb[:2] == b"\xff\xd8" and thumb in head


@pytest.mark.parametrize("name", CASES)
def test_case_expectations_hold(built, name):
    """What cases() promises the mount tests holds on the original: each
    part comes out of exiftool as described, the XMP reads back, and
    from_end_video / mpf_images find something exactly when it says so."""
    c = CASES[name]
    path, data = built[name]
    assert c.parts[0][1] == "Trailer"
    for what, tag, ee, part in c.parts:
        want = part(data)
        assert want and data.find(want, phone.eoi_offset(data)) >= 0, what
        assert phone.exiftool_extract(path, tag, ee) == want, what
    tags = exif_tags(path)
    for k, v in c.xmp.items():
        assert tags.get(k) == v, (k, tags.get(k))
    assert (phone.from_end_video(data) is not None) == c.from_end
    assert (phone.mpf_images(data) is not None) == c.mpf


def test_deterministic():
    """The same arguments give the same bytes (the clips re-encoded, not
    cached); another seed gives another picture and clip."""
    first = phone.google_motion_photo(), phone.mvimg(), phone.mpf_gainmap()
    phone.clip.cache_clear()
    assert (phone.google_motion_photo(), phone.mvimg(), phone.mpf_gainmap()) == first
    other = phone.google_motion_photo(seed=1)
    assert other != first[0]
    assert phone.trailer(other) != phone.trailer(first[0])


# --- Google Motion Photo ------------------------------------------------------

def test_google_motion_photo(built, tmp_path):
    path, data = built["google_motion_photo"]
    mp4 = phone.clip(0, "hevc")
    assert phone.trailer(data) == mp4
    assert phone.exiftool_extract(path, "EmbeddedVideo", embedded=True) == mp4
    assert phone.from_end_video(data) == mp4
    probe_mp4(mp4, tmp_path, "hevc")
    tags = exif_tags(path)
    assert tags["XMP-GCamera:MotionPhoto"] == "1"
    assert tags["XMP-GCamera:MotionPhotoVersion"] == "1"
    assert tags["XMP-GCamera:MotionPhotoPresentationTimestampUs"] == "500000"
    assert phone.container_items(data) == [
        {"Mime": "image/jpeg", "Semantic": "Primary", "Length": "0", "Padding": "0"},
        {"Mime": "video/mp4", "Semantic": "MotionPhoto", "Length": str(len(mp4))}]
    # exiftool's own reading of the directory agrees
    out = subprocess.run(["exiftool", "-a", "-n", "-s", "-s", "-s", "-XMP-Container:all", path],
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == ["image/jpeg", "Primary", "0", "0", "video/mp4", "MotionPhoto", str(len(mp4))]


# --- MVIMG --------------------------------------------------------------------

def test_mvimg(built, tmp_path):
    path, data = built["mvimg"]
    mp4 = phone.clip(0, "h264")
    assert phone.trailer(data) == mp4
    tags = exif_tags(path)
    assert tags["XMP-GCamera:MicroVideo"] == "1"
    assert tags["XMP-GCamera:MicroVideoVersion"] == "1"
    assert tags["XMP-GCamera:MicroVideoOffset"] == str(len(mp4))
    assert tags["XMP-GCamera:MicroVideoPresentationTimestampUs"] == "500000"
    assert "XMP-GCamera:MotionPhoto" not in tags
    assert data[len(data) - int(tags["XMP-GCamera:MicroVideoOffset"]):] == mp4
    assert phone.exiftool_extract(path, "EmbeddedVideo", embedded=True) == mp4
    assert phone.from_end_video(data) == mp4
    probe_mp4(mp4, tmp_path, "h264")


# --- Samsung ------------------------------------------------------------------

def test_samsung_sef(built, tmp_path):
    path, data = built["samsung_sef"]
    mp4 = phone.clip(0, "h264")
    tail = phone.trailer(data)
    # the block ExifTool names EmbeddedVideoType/EmbeddedVideoFile, first
    # after the EOI, then the SEF directory closing the file
    assert tail.startswith(b"\x00\x00\x30\x0a" + struct.pack("<I", 16) + b"MotionPhoto_Data" + mp4)
    assert tail.endswith(b"SEFT")
    tags = exif_tags(path)
    assert tags["Samsung:EmbeddedVideoType"] == "MotionPhoto_Data"
    assert tags["Samsung:TimeStamp"] == "2024:05:17 10:11:12.000+00:00"
    assert phone.exiftool_extract(path, "EmbeddedVideoFile") == mp4
    # no ftyp right after the EOI: the Google reading finds nothing there
    assert phone.exiftool_extract(path, "EmbeddedVideo", embedded=True) == b""
    probe_mp4(mp4, tmp_path, "h264")
    # the SEF directory, read field by field
    dlen = struct.unpack("<I", tail[-8:-4])[0]
    sefh = len(tail) - 8 - dlen
    assert tail[sefh:sefh + 4] == b"SEFH"
    version, count = struct.unpack("<II", tail[sefh + 4:sefh + 12])
    assert (version, count, dlen) == (phone.SEF_VERSION, 2, 12 + 12 * count)
    blocks = [struct.unpack("<HHII", tail[sefh + 12 + 12 * k:sefh + 24 + 12 * k])
              for k in range(count)]
    assert blocks[0] == (0, phone.SEF_MOTION_PHOTO, sefh, 24 + len(mp4))
    utc = str(phone.SEF_UTC_MS).encode()
    assert blocks[1] == (0, phone.SEF_UTC, sefh - 24 - len(mp4), 22 + len(utc))
    assert tail[24 + len(mp4):sefh] == b"\x00\x00\x01\x0a" + struct.pack("<I", 14) \
        + b"Image_UTC_Data" + utc
    # the XMP a from-the-end reader uses: the MP4 starts right after the
    # block header and runs, with the SEF blocks after it, to the end
    items = phone.container_items(data)
    assert items[0]["Padding"] == "24" and items[1]["Semantic"] == "MotionPhoto"
    found = phone.from_end_video(data)
    assert found == tail[24:] and found.startswith(mp4)
    probe_mp4(found, tmp_path, "h264")
    # without the XMP it is still Samsung's trailer, and no from-the-end video
    bare = phone.samsung_sef(xmp=False)
    assert phone.trailer(bare) == tail and phone.from_end_video(bare) is None


# --- MPF / Ultra HDR ----------------------------------------------------------

def check_ultrahdr(path, data, tmp_path):
    """The MPF index, the Container directory and exiftool agree on where
    the gain map is; the gain map is a grayscale JPEG with hdrgm XMP."""
    images = phone.mpf_images(data)
    eoi = phone.eoi_offset(data)
    assert len(images) == 2 and images[0] == data[:eoi]
    gain = images[1]
    assert data[eoi:eoi + len(gain)] == gain
    assert phone.exiftool_extract(path, "MPImage2") == gain
    tags = exif_tags(path)
    assert tags["MPF0:MPFVersion"] == "0100" and tags["MPF0:NumberOfImages"] == "2"
    assert tags["MPImage1:MPImageType"] == str(0x030000) and tags["MPImage1:MPImageStart"] == "0"
    assert tags["MPImage1:MPImageLength"] == str(eoi)
    assert tags["MPImage2:MPImageType"] == "0" and tags["MPImage2:MPImageStart"] == str(eoi)
    assert tags["XMP-hdrgm:Version"] == "1.0"
    items = phone.container_items(data)
    assert items[:2] == [{"Semantic": "Primary", "Mime": "image/jpeg"},
                         {"Semantic": "GainMap", "Mime": "image/jpeg", "Length": str(len(gain))}]
    # the MPF segment is one of the header segments a view keeps
    head = phone.header_segments(data)
    assert b"\xff\xe2" + struct.pack(">H", 2 + 4 + 8 + 2 + 3 * 12 + 4 + 32) + b"MPF\x00" in head
    # the gain map itself
    assert phone.eoi_offset(gain) == len(gain)
    g = tmp_path / "gain.jpg"
    g.write_bytes(gain)
    r = subprocess.run(["djpeg", "-pnm", str(g)], capture_output=True)
    assert r.returncode == 0 and r.stderr == b"" and r.stdout.startswith(b"P5\n80 60\n255\n")
    gt = exif_tags(str(g))
    for k, v in phone.GAIN_MAP_META:
        assert gt[f"XMP-hdrgm:{k}"] == v, k
    assert not any(k.startswith("XMP-Container") for k in gt)
    return gain


def test_mpf_gainmap(built, tmp_path):
    path, data = built["mpf_gainmap"]
    gain = check_ultrahdr(path, data, tmp_path)
    assert phone.trailer(data) == gain
    assert len(phone.container_items(data)) == 2
    assert phone.from_end_video(data) is None


def test_mpf_little_endian(tmp_path):
    """The MP Endian field decides the byte order; exiftool and mpf_images
    read the little-endian index as well."""
    path = str(tmp_path / "le.jpg")
    data = phone.mpf_gainmap(path, byteorder="<")
    assert b"MPF\x00II*\x00" in data
    assert phone.trailer(data) == check_ultrahdr(path, data, tmp_path)


def test_mpf_before_sos(tmp_path):
    """The MPF segment among the tables (newer libultrahdr): still found by
    exiftool and mpf_images, no longer a header segment, the header being
    Exif and XMP alone."""
    path = str(tmp_path / "late.jpg")
    data = phone.mpf_gainmap(path, mpf_before_sos=True)
    markers = [m for m, _, _ in phone.segments(data)]
    assert markers[:3] == [0xE1, 0xE1, 0xDB] and markers[-1] == 0xE2
    assert b"MPF\x00" not in phone.header_segments(data)
    assert b"MPF\x00" in phone.scan(data)
    gain = phone.trailer(data)
    assert phone.mpf_images(data) == [data[:phone.eoi_offset(data)], gain]
    assert phone.exiftool_extract(path, "MPImage2") == gain
    assert gain == phone.trailer(phone.mpf_gainmap())


def test_pixel_ultrahdr_motion(built, tmp_path):
    path, data = built["pixel_ultrahdr_motion"]
    gain = check_ultrahdr(path, data, tmp_path)
    mp4 = phone.clip(0, "hevc")
    assert phone.trailer(data) == gain + mp4
    assert phone.container_items(data)[2] == {"Semantic": "MotionPhoto", "Mime": "video/mp4",
                                              "Length": str(len(mp4))}
    assert phone.from_end_video(data) == mp4
    probe_mp4(mp4, tmp_path, "hevc")


# --- padding ------------------------------------------------------------------

def test_trailing_byte_and_zeros(built):
    _, one = built["trailing_byte"]
    _, zeros = built["trailing_zeros"]
    assert phone.trailer(one) == b"\x00"
    assert phone.trailer(zeros) == bytes(4096)
    for d in (one, zeros):
        assert phone.from_end_video(d) is None and phone.mpf_images(d) is None
        assert phone.xmp_of(d) is None


# --- eoi_offset on what a scan can hold ----------------------------------------

@pytest.mark.parametrize("extra,what", [
    ((), "baseline"),
    (("-progressive",), "progressive: several scans, tables between them"),
    (("-restart", "1"), "RSTn markers every MCU row"),
    (("-optimize", "-restart", "1B"), "RSTn markers every MCU"),
])
def test_eoi_offset_walks_scans(extra, what):
    jpeg = make_jpeg(None, 96, 64, seed=7, extra=extra)
    body = phone.scan(jpeg + b"x")
    assert b"\xff\x00" in body, "no stuffed byte to step over"
    if "-restart" in extra:
        assert re.search(rb"\xff[\xd0-\xd7]", body), what
    if "-progressive" in extra:
        assert body.count(b"\xff\xda") > 1, what
    for tail in (b"", b"\xff", b"\xff\xd9", b"\xff\xff\xd9\xff\xd9", jpeg, bytes(4096),
                 phone.clip(0, "h264")):
        assert phone.eoi_offset(jpeg + tail) == len(jpeg), (what, tail[:8])


def test_eoi_offset_fill_bytes_before_markers():
    """T.81 B.1.1.2: any marker may be preceded by 0xFF fill bytes."""
    jpeg = make_jpeg(None, 64, 48, seed=8)
    filled = jpeg[:-2] + b"\xff\xff\xff" + jpeg[-2:]
    assert phone.eoi_offset(filled + b"tail") == len(filled)
    segs = phone.segments(jpeg)
    m, off, ln = segs[1]
    filled = jpeg[:off] + b"\xff\xff" + jpeg[off:]
    assert phone.eoi_offset(filled) == len(filled)


def test_eoi_offset_refuses_truncated(built):
    _, data = built["google_motion_photo"]
    eoi = phone.eoi_offset(data)
    for cut in (eoi - 1, eoi - 2, eoi // 2, 3, 1):
        with pytest.raises(ValueError):
            phone.eoi_offset(data[:cut])
    with pytest.raises(ValueError):
        phone.eoi_offset(b"\x89PNG\r\n\x1a\n")


# --- the checks notice a broken layout -------------------------------------------

def _replace_once(data, old, new):
    assert data.count(old) == 1 and len(old) == len(new)
    return data.replace(old, new)


def test_broken_item_length_is_noticed(built):
    _, data = built["google_motion_photo"]
    n = len(phone.clip(0, "hevc"))
    bad = _replace_once(data, f'Item:Length="{n}"'.encode(), f'Item:Length="{n - 1}"'.encode())
    assert phone.from_end_video(bad) != phone.trailer(bad)


def test_broken_micro_video_offset_is_noticed(built):
    _, data = built["mvimg"]
    n = len(phone.clip(0, "h264"))
    bad = _replace_once(data, f'MicroVideoOffset="{n}"'.encode(),
                        f'MicroVideoOffset="{n + 1}"'.encode())
    assert phone.from_end_video(bad) != phone.clip(0, "h264")


def test_broken_sef_offset_is_noticed(built, tmp_path):
    _, data = built["samsung_sef"]
    sefh = data.rindex(b"SEFH")
    at = sefh + 12 + 4   # the first entry's offset back from SEFH
    back = struct.unpack("<I", data[at:at + 4])[0]
    bad = data[:at] + struct.pack("<I", back - 1) + data[at + 4:]
    p = tmp_path / "bad.jpg"
    p.write_bytes(bad)
    assert phone.exiftool_extract(str(p), "EmbeddedVideoFile") != phone.clip(0, "h264")


def test_broken_mpf_offset_is_noticed(built, tmp_path):
    _, data = built["mpf_gainmap"]
    gain = phone.trailer(data)
    m, off, ln = [s for s in phone.segments(data) if data[s[1] + 4:s[1] + 8] == b"MPF\x00"][0]
    at = off + ln - 16 + 8   # the second MP Entry's offset field
    o = struct.unpack(">I", data[at:at + 4])[0]
    bad = data[:at] + struct.pack(">I", o + 1) + data[at + 4:]
    p = tmp_path / "bad.jpg"
    p.write_bytes(bad)
    assert phone.mpf_images(bad)[1] != gain
    assert phone.exiftool_extract(str(p), "MPImage2") != gain


# --- from_end_video reads XMP as other writers put it ------------------------------

def test_from_end_video_reads_elements_and_shared_items():
    """Properties written as elements (as exiftool rewrites them), a video
    item of Length 0 sharing the resource before it (GContainer), and
    MotionPhoto 0 (not a motion photo, video or not)."""
    mp4 = phone.clip(0, "h264")
    ns = [("GCamera", phone.NS_GCAMERA), ("Container", phone.NS_CONTAINER),
          ("Item", phone.NS_ITEM)]

    def item(**kw):
        return ('<rdf:li rdf:parseType="Resource"><Container:Item rdf:parseType="Resource">'
                + "".join(f"<Item:{k}>{v}</Item:{k}>" for k, v in kw.items())
                + "</Container:Item></rdf:li>")

    def build(flag, *items):
        inner = (f"<GCamera:MotionPhoto>{flag}</GCamera:MotionPhoto>"
                 "<Container:Directory><rdf:Seq>" + "".join(items)
                 + "</rdf:Seq></Container:Directory>")
        return phone.camera_jpeg(xmp=phone.xmp_app1([], inner, ns)) + mp4

    plain = build(1, item(Mime="image/jpeg", Semantic="Primary"),
                  item(Mime="video/mp4", Semantic="MotionPhoto", Length=len(mp4)))
    assert phone.from_end_video(plain) == mp4
    shared = build(1, item(Mime="image/jpeg", Semantic="Primary"),
                   item(Mime="application/octet-stream", Semantic="Other", Length=len(mp4)),
                   item(Mime="video/mp4", Semantic="MotionPhoto", Length=0))
    assert phone.from_end_video(shared) == mp4
    off = build(0, item(Mime="image/jpeg", Semantic="Primary"),
                item(Mime="video/mp4", Semantic="MotionPhoto", Length=len(mp4)))
    assert phone.from_end_video(off) is None
