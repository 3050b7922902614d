"""Phone and camera libraries through the mount: JPEGs with data after the
primary's EOI (motion photos, Ultra HDR gain maps, Samsung SEF trailers,
padding) archived as HEIC with everything kept; every view the original's
exact size and layout, so a re-sync copies nothing; the same bytes never
encoded twice; metadata edits that never cost pixels."""
import json
import os
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET

import pytest

import phone
from conftest import hevcfs, make_jpeg


def ssim_y(a, b):
    p = subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "info", "-i", a, "-i", b,
                        "-lavfi", "[0:v][1:v]ssim", "-f", "null", "-"],
                       capture_output=True, text=True)
    m = re.search(r"SSIM Y:([0-9.]+)", p.stderr)
    assert m, p.stderr[-2000:]
    return float(m.group(1))


def exif_tags(path):
    out = subprocess.run(["exiftool", "-a", "-G1", "-s", "-n", path], capture_output=True,
                         text=True, check=True).stdout
    tags = {}
    for line in out.splitlines():
        m = re.match(r"\[([^\]]+)\]\s+(\S+)\s*: ?(.*)$", line)
        if m:
            tags[f"{m.group(1)}:{m.group(2)}"] = m.group(3)
    return tags


def entries(backing):
    st = json.loads(hevcfs("status", backing, "--files", "--json").stdout)
    return {e["path"]: e for e in st["entries"]}


def encodes(mount):
    """Photos the archive children encoded so far (their log lines)."""
    return len(re.findall(r"info: photo: \d+x\d+", mount.log()))


@pytest.mark.parametrize("case", phone.cases(), ids=lambda c: c.name)
def test_phone_photo_archived_with_its_trailer(case, mount, tmp_path):
    src = str(tmp_path / case.filename)
    data = case.build(src)
    shutil.copy2(src, os.path.join(mount.mnt, case.filename))
    mount.wait_idle()
    e = entries(mount.backing)[case.filename]
    assert e["state"] == "archived", e
    assert e["carries"] != 0, e
    words = {"google_motion_photo": "motion video", "mvimg": "motion video",
             "samsung_sef": "Samsung SEF", "mpf_gainmap": "gain map",
             "pixel_ultrahdr_motion": "gain map", "trailing_zeros": "padding",
             "trailing_byte": "padding"}[case.name]  # its byte is a zero
    assert words in e["carried"], e
    stored = os.path.join(mount.backing, case.filename + ".heic")
    assert os.path.getsize(stored) < len(data), (os.path.getsize(stored), len(data))
    p = os.path.join(mount.mnt, case.filename)
    # stat before any read: the original's size and mtime
    st = os.stat(p)
    assert st.st_size == len(data)
    assert st.st_mtime_ns == os.stat(src).st_mtime_ns
    view = open(p, "rb").read()
    assert len(view) == len(data)
    # the layout: the header segments first, the EOI where it was, the
    # trailer byte for byte; only the tables and scan differ
    head = phone.header_segments(data)
    assert view[:2 + len(head)] == data[:2 + len(head)]
    assert phone.eoi_offset(view) == phone.eoi_offset(data)
    assert phone.trailer(view) == phone.trailer(data)
    for what, tag, ee, part in case.parts:
        assert phone.exiftool_extract(p, tag, ee) == part(data), what
    tags = exif_tags(p)
    for tag, value in case.xmp.items():
        assert tags.get(tag) == value, (tag, tags.get(tag))
    if case.from_end:
        assert phone.from_end_video(view) == phone.from_end_video(data)
    if case.mpf:
        assert phone.mpf_images(view)[1:] == phone.mpf_images(data)[1:]
        assert phone.mpf_images(view)[0] == view[:phone.eoi_offset(view)]
    assert ssim_y(p, src) >= 0.985
    # the decoders and tools read the view without a word; ImageMagick 6's
    # XML parser finds fault with the multi-line XMP phones write, so of it
    # only the same words as for the original are asked
    def said(argv):
        r = subprocess.run(argv, capture_output=True, text=True, errors="replace")
        assert r.returncode == 0, (argv, r.stderr)
        return r.stderr.replace(argv[-1], "FILE").strip()

    for argv in (lambda f: ["djpeg", "-outfile", os.devnull, f],
                 lambda f: ["ffmpeg", "-nostdin", "-v", "warning", "-f", "null", "-", "-i", f],
                 lambda f: ["gdk-pixbuf-csource", "--raw", f]):
        assert said(argv(p)) == "", argv(p)
    magick = ["sh", "-c", 'convert "$1" ppm:- >/dev/null', "-"]
    assert said([*magick, p]) == said([*magick, src])
    assert "Warning" not in subprocess.run(["exiftool", "-warning", p], capture_output=True,
                                          text=True).stdout


def heic_motion_video(heic):
    """A HEIC motion photo's video as a reader of the Motion Photo format
    finds it: the XMP's Container:Directory names the video item's Length;
    the video is the file's last Length bytes, in the top-level mpvd box."""
    xmp = subprocess.run(["exiftool", "-b", "-XMP", heic], capture_output=True,
                         check=True).stdout
    root = ET.fromstring(xmp)
    length = None
    for el in root.iter():
        mime = el.attrib.get(f"{{{phone.NS_ITEM}}}Mime")
        if mime is None:
            for child in el:
                if child.tag == f"{{{phone.NS_ITEM}}}Mime":
                    mime = child.text
        if mime == "video/mp4":
            length = el.attrib.get(f"{{{phone.NS_ITEM}}}Length")
            if length is None:
                for child in el:
                    if child.tag == f"{{{phone.NS_ITEM}}}Length":
                        length = child.text
    assert length, xmp[:2000]
    data = open(heic, "rb").read()
    n = int(length)
    assert data[-n - 4:-n] == b"mpvd", data[-n - 8:-n]
    return data[-n:]


@pytest.mark.parametrize("build", [phone.google_motion_photo, phone.mvimg])
def test_stored_heic_is_a_motion_photo(build, mount, tmp_path):
    src = str(tmp_path / "PXL.MP.jpg")
    data = build(src)
    shutil.copy(src, os.path.join(mount.mnt, "PXL.MP.jpg"))
    mount.wait_idle()
    heic = os.path.join(mount.backing, "PXL.MP.jpg.heic")
    assert heic_motion_video(heic) == phone.trailer(data)
    # the video is a whole MP4 on its own
    out = str(tmp_path / "v.mp4")
    open(out, "wb").write(heic_motion_video(heic))
    subprocess.run(["ffprobe", "-v", "error", out], check=True)


def snapshot(backing):
    """Every stored file: inode, size, mtime, bytes."""
    out = {}
    for d, dn, fn in os.walk(backing):
        if d == backing:
            dn.remove(".hevcfs")
        for n in fn:
            p = os.path.join(d, n)
            s = os.stat(p)
            out[os.path.relpath(p, backing)] = (s.st_ino, s.st_size, s.st_mtime_ns,
                                                open(p, "rb").read())
    return out


def rsync(*args):
    p = subprocess.run(["rsync", "--stats", *args], capture_output=True, text=True, check=True)
    m = re.search(r"Number of regular files transferred: (\d+)", p.stdout)
    return int(m.group(1))


def test_resync_and_same_bytes_change_nothing(mount, tmp_path):
    card = tmp_path / "card"
    card.mkdir()
    for c in phone.cases()[:4]:
        c.build(str(card / c.filename))
    for i in range(3):
        make_jpeg(str(card / f"IMG_{i:04d}.JPG"), 320, 240, seed=70 + i)
    n = len(os.listdir(card))
    dest = os.path.join(mount.mnt, "DCIM")
    assert rsync("-a", f"{card}/", dest + "/") == n
    mount.wait_idle()
    assert mount.status()["archived"] == n
    before, made = snapshot(mount.backing), encodes(mount)
    # the quick check (size and mtime) finds every file unchanged
    assert rsync("-a", f"{card}/", dest + "/") == 0
    # the checksum check reads the views, which differ from the originals in
    # their scans: it copies them again, but the bytes are the originals', so
    # every archive goes back in place, nothing is encoded, nothing changes
    assert rsync("-a", "-c", f"{card}/", dest + "/") == n
    mount.wait_idle()
    assert encodes(mount) == made
    assert snapshot(mount.backing) == before
    assert mount.log().count("its archive is back, nothing encoded") == n
    # cp over an archived photo with the same bytes: no encode, same stored
    # file (cp without -p gives it the time of the copy)
    shutil.copyfile(card / "IMG_0000.JPG", os.path.join(dest, "IMG_0000.JPG"))
    mount.wait_idle()
    after = snapshot(mount.backing)
    key = os.path.join("DCIM", "IMG_0000.JPG.heic")
    assert after[key][0] == before[key][0] and after[key][3] == before[key][3]
    assert encodes(mount) == made
    # the same original under a second name: its own stored file, the same
    # bytes, no encode
    shutil.copy2(card / "IMG_0001.JPG", os.path.join(mount.mnt, "copy.jpg"))
    mount.wait_idle()
    after = snapshot(mount.backing)
    assert after["copy.jpg.heic"][3] == before[os.path.join("DCIM", "IMG_0001.JPG.heic")][3]
    assert after["copy.jpg.heic"][0] != before[os.path.join("DCIM", "IMG_0001.JPG.heic")][0]
    assert encodes(mount) == made
    assert open(os.path.join(mount.mnt, "copy.jpg"), "rb").read() == open(
        os.path.join(dest, "IMG_0001.JPG"), "rb").read()
    # other bytes are a new file
    make_jpeg(os.path.join(dest, "IMG_0002.JPG"), 320, 240, seed=99)
    mount.wait_idle()
    assert encodes(mount) == made + 1


def test_tag_edits_never_cost_pixels(mount, tmp_path):
    src = str(tmp_path / "IMG.jpg")
    data = phone.mpf_gainmap(src, seed=5, width=640, height=480)
    shutil.copy2(src, os.path.join(mount.mnt, "IMG.jpg"))
    mount.wait_idle()
    p = os.path.join(mount.mnt, "IMG.jpg")
    first = open(p, "rb").read()
    made = encodes(mount)
    for i in range(10):
        subprocess.run(["exiftool", "-q", "-overwrite_original", f"-Artist=artist {i}",
                        f"-XMP-dc:Subject+=tag{i}", p], check=True)
        mount.wait_idle()
        view = open(p, "rb").read()
        # the pixels are the first archive's, bit for bit: the same scan
        assert phone.scan(view) == phone.scan(first), i
        assert phone.trailer(view) == phone.trailer(data)
        tags = exif_tags(p)
        assert tags.get("IFD0:Artist") == f"artist {i}"
        assert all(f"tag{k}" in tags.get("XMP-dc:Subject", "") for k in range(i + 1)), tags
    assert encodes(mount) == made
    assert entries(mount.backing)["IMG.jpg"]["state"] == "archived"
    assert phone.mpf_images(open(p, "rb").read())[1] == phone.mpf_images(data)[1]


def tiny_dng():
    """A little-endian TIFF whose first IFD has a DNGVersion tag: what a
    camera raw's first bytes say (DNG 1.4, section "DNGVersion")."""
    import struct
    entries = [(0x0100, 3, 1, 16), (0x0101, 3, 1, 16), (0xC612, 1, 4, 0x00000401)]
    ifd = struct.pack("<H", len(entries)) + b"".join(
        struct.pack("<HHII", t, typ, n, v) for t, typ, n, v in entries) + struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + bytes(256)


def test_what_a_file_is(mount, tmp_path):
    """HEIC photos are photos kept as already efficient, HEVC videos are
    videos kept the same way, camera raw is recognised and kept."""
    jpg = str(tmp_path / "a.jpg")
    make_jpeg(jpg, 320, 240, seed=3)
    subprocess.run(["heif-enc", "-q", "50", jpg, "-o", str(tmp_path / "b.heic")], check=True,
                   capture_output=True)
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i",
                    "testsrc2=size=160x120:rate=10:duration=1", "-c:v", "libx265",
                    "-preset", "ultrafast", "-tag:v", "hvc1", "-x265-params", "log-level=error",
                    str(tmp_path / "c.mp4")], check=True)
    (tmp_path / "d.dng").write_bytes(tiny_dng())
    for n in ("b.heic", "c.mp4", "d.dng"):
        shutil.copy(tmp_path / n, os.path.join(mount.mnt, n))
    mount.wait_idle()
    e = entries(mount.backing)
    assert (e["b.heic"]["state"], e["b.heic"]["kind"]) == ("kept", "photo"), e["b.heic"]
    assert e["b.heic"]["reason"] == "already HEIC"
    assert (e["c.mp4"]["state"], e["c.mp4"]["kind"]) == ("kept", "video"), e["c.mp4"]
    assert "HEVC" in e["c.mp4"]["reason"]
    assert (e["d.dng"]["state"], e["d.dng"]["kind"]) == ("kept", "photo"), e["d.dng"]
    assert e["d.dng"]["reason"] == "camera raw (DNG)"
    st = mount.status()
    assert st["by_kind"]["photo"]["kept"] == 2 and st["by_kind"]["video"]["kept"] == 1
    assert st["by_kind"]["other"]["files"] == 0
    for n in ("b.heic", "c.mp4", "d.dng"):
        assert open(os.path.join(mount.mnt, n), "rb").read() == (tmp_path / n).read_bytes()
