"""Videos through the mount: HEVC MP4 (or MKV) on the backing tree with every
frame, stream and tag; the original kept whenever the result is not right.
Clips are generated here, tiny; the mount encodes with preset=ultrafast."""
import hashlib
import json
import os
import shutil
import subprocess
import threading
import time

import pytest

from conftest import Mount, hevcfs, make_jpeg

OPTS = "preset=ultrafast,crf=18"
X264 = ["-c:v", "libx264", "-preset", "ultrafast", "-crf", "8"]


@pytest.fixture(scope="module", autouse=True)
def tools_present():
    for t in ("ffmpeg", "ffprobe"):
        if not shutil.which(t):
            pytest.fail(f"{t} is needed by the video tests (make deps installs it)")


@pytest.fixture
def vmount(dirs):
    m = Mount(*dirs, opts=OPTS).start()
    yield m
    m.stop()


def ffmpeg(*args):
    subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args],
                   check=True)


def probe(path, *args):
    p = subprocess.run(["ffprobe", "-v", "error", "-of", "json", *args, path],
                       capture_output=True, text=True, check=True)
    return json.loads(p.stdout)


def video_pts(path):
    d = probe(path, "-select_streams", "v:0", "-show_entries", "packet=pts,pts_time")
    return sorted(float(p["pts_time"]) for p in d["packets"])


def stream_md5(path, sel):
    p = subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", path, "-map", sel,
                        "-c", "copy", "-f", "md5", "-"], capture_output=True, text=True,
                       check=True)
    return p.stdout.strip()


def rotate_mp4(path):
    """Give the first track a 90-degree display matrix (tkhd)."""
    data = bytearray(open(path, "rb").read())
    i = data.index(b"tkhd")
    version = data[i + 4]
    off = i + 4 + (4 + 8 + 8 + 4 + 4 + 8 if version == 1 else 4 + 4 + 4 + 4 + 4 + 4) + 8 + 8
    m = [0, 0x10000, 0, 0xFFFF0000, 0, 0, 0, 0, 0x40000000]
    for k, v in enumerate(m):
        data[off + 4 * k:off + 4 * k + 4] = v.to_bytes(4, "big")
    open(path, "wb").write(bytes(data))


def entries(m):
    return {e["path"]: e for e in json.loads(
        hevcfs("status", m.backing, "--files", "--json").stdout)["entries"]}


def test_phone_clip_archived_with_everything(vmount, tmp_path):
    src = str(tmp_path / "VID_0001.mp4")
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30", "-f", "lavfi", "-i",
           "sine=f=440:sample_rate=48000", "-t", "2", *X264, "-c:a", "aac", "-b:a", "96k",
           "-metadata", "creation_time=2024-05-01T10:00:00Z",
           "-metadata", "location=+48.8577+002.2950/", "-metadata", "make=Apple",
           "-movflags", "+use_metadata_tags", src)
    rotate_mp4(src)
    os.utime(src, ns=(1, 1_700_000_000_000_000_000))
    shutil.copy2(src, os.path.join(vmount.mnt, "VID_0001.mp4"))
    vmount.wait_idle()
    e = entries(vmount)["VID_0001.mp4"]
    assert e["state"] == "archived", e
    # the name already said MP4: kept; the stored bytes are the view
    stored = os.path.join(vmount.backing, "VID_0001.mp4")
    assert sorted(os.listdir(vmount.backing)) == [".hevcfs", "VID_0001.mp4"]
    via = os.path.join(vmount.mnt, "VID_0001.mp4")
    assert open(via, "rb").read() == open(stored, "rb").read()
    assert os.stat(via).st_size == os.path.getsize(stored) == e["bytes_stored"]
    assert os.stat(stored).st_mtime_ns == 1_700_000_000_000_000_000
    v = probe(stored, "-show_streams", "-show_format")
    vs = [s for s in v["streams"] if s["codec_type"] == "video"][0]
    assert vs["codec_name"] == "hevc" and vs["codec_tag_string"] == "hvc1"
    rot = [sd for sd in vs.get("side_data_list", []) if "rotation" in sd]
    assert rot and abs(rot[0]["rotation"]) == 90
    assert vs["width"] == 320 and vs["height"] == 240  # pixels not rotated
    tags = v["format"]["tags"]
    assert tags["creation_time"].startswith("2024-05-01T10:00:00")
    assert tags["location"] == "+48.8577+002.2950/"
    assert tags.get("make") == "Apple"
    assert video_pts(src) == video_pts(stored)
    assert stream_md5(src, "0:a") == stream_md5(stored, "0:a")  # audio copied
    assert e["ssim"] >= 0.97


def test_avi_gets_mp4_suffix_and_reads_back(vmount, tmp_path):
    src = str(tmp_path / "clip.avi")
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=160x120:rate=25", "-f", "lavfi", "-i", "sine",
           "-t", "1", "-c:v", "mjpeg", "-q:v", "2", "-c:a", "pcm_s16le", src)
    shutil.copy(src, os.path.join(vmount.mnt, "clip.avi"))
    vmount.wait_idle()
    assert sorted(os.listdir(vmount.backing)) == [".hevcfs", "clip.avi.mp4"]
    assert os.listdir(vmount.mnt) == ["clip.avi"]
    data = open(os.path.join(vmount.mnt, "clip.avi"), "rb").read()
    assert data == open(os.path.join(vmount.backing, "clip.avi.mp4"), "rb").read()
    s = probe(os.path.join(vmount.backing, "clip.avi.mp4"), "-show_streams")["streams"]
    assert [x["codec_name"] for x in s] == ["hevc", "aac"]
    assert len(video_pts(src)) == len(video_pts(os.path.join(vmount.backing, "clip.avi.mp4")))


def test_mkv_for_ass_subtitles(vmount, tmp_path):
    srt = tmp_path / "s.srt"
    srt.write_text("1\n00:00:00,000 --> 00:00:00,900\nhello\n")
    src = str(tmp_path / "subs.mkv")
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=160x120:rate=25", "-f", "lavfi", "-i", "sine",
           "-i", str(srt), "-t", "1", "-map", "0:v", "-map", "1:a", "-map", "2:s", *X264,
           "-c:a", "libvorbis", "-c:s", "ass", src)
    shutil.copy(src, os.path.join(vmount.mnt, "subs.mkv"))
    vmount.wait_idle()
    assert sorted(os.listdir(vmount.backing)) == [".hevcfs", "subs.mkv.mkv"]
    s = probe(os.path.join(vmount.backing, "subs.mkv.mkv"), "-show_streams")["streams"]
    assert [x["codec_name"] for x in s] == ["hevc", "vorbis", "ass"]


def test_bad_and_unsuitable_videos_kept_byte_exact(vmount, tmp_path):
    cases = {}
    hevc = str(tmp_path / "hevc.mp4")
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=96x64:rate=25", "-t", "1", "-c:v", "libx265",
           "-preset", "ultrafast", "-x265-params", "log-level=error", hevc)
    cases["already-hevc.mp4"] = open(hevc, "rb").read()
    full = str(tmp_path / "full.mp4")
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=160x120:rate=25", "-t", "2", *X264,
           "-movflags", "+faststart", full)
    data = open(full, "rb").read()
    cases["truncated.mp4"] = data[: len(data) // 2]
    corrupt = bytearray(data)
    for i in range(len(corrupt) // 2, len(corrupt) // 2 + 4000, 7):
        corrupt[i] ^= 0x5A
    cases["corrupt.mp4"] = bytes(corrupt)
    aud = str(tmp_path / "a.m4a")
    ffmpeg("-f", "lavfi", "-i", "sine", "-t", "1", "-c:a", "aac", aud)
    cases["audio.m4a"] = open(aud, "rb").read()
    for name, d in cases.items():
        with open(os.path.join(vmount.mnt, name), "wb") as f:
            f.write(d)
    vmount.wait_idle()
    es = entries(vmount)
    for name, d in cases.items():
        assert es[name]["state"] == "kept" and es[name]["reason"], es[name]
        assert open(os.path.join(vmount.mnt, name), "rb").read() == d
        assert open(os.path.join(vmount.backing, name), "rb").read() == d


def longer_clip(path, seconds=6):
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=640x480:rate=30", "-f", "lavfi", "-i", "sine",
           "-t", str(seconds), *X264, "-c:a", "aac", path)


def test_progress_cancel_and_photos_beside(dirs, tmp_path):
    """A slower encode shows progress in status; photos are archived while it
    runs; deleting the file cancels the job at once and leaves nothing."""
    src = str(tmp_path / "long.mp4")
    longer_clip(src)
    m = Mount(*dirs, opts="preset=medium,crf=18,workers=2").start()
    try:
        shutil.copy(src, os.path.join(m.mnt, "long.mp4"))
        seen = None
        deadline = time.time() + 60
        while time.time() < deadline and not seen:
            st = json.loads(hevcfs("status", m.backing, "--json").stdout)
            for r in st["running"]:
                if 0 < r["done"] < r["total"]:
                    seen = r
            time.sleep(0.1)
        assert seen and seen["path"] == "long.mp4" and seen["fps"] > 0, st
        make_jpeg(os.path.join(m.mnt, "photo.jpg"), seed=2)
        deadline = time.time() + 60
        while time.time() < deadline:
            e = entries(m)
            if e.get("photo.jpg", {}).get("state") == "archived":
                break
            time.sleep(0.1)
        assert e["photo.jpg"]["state"] == "archived"
        assert e["long.mp4"]["state"] == "pending"  # the video is still running
        t = time.time()
        os.unlink(os.path.join(m.mnt, "long.mp4"))
        m.wait_idle(timeout=30)
        assert time.time() - t < 10
        time.sleep(0.3)
        assert os.listdir(os.path.join(m.backing, ".hevcfs", "work")) == []
        assert sorted(os.listdir(m.backing)) == [".hevcfs", "photo.jpg.heic"]
    finally:
        m.stop()


def test_unmount_mid_encode_resumes(dirs, tmp_path):
    src = str(tmp_path / "resume.mp4")
    longer_clip(src, 4)
    m = Mount(*dirs, opts="preset=medium,crf=18").start()
    shutil.copy(src, os.path.join(m.mnt, "resume.mp4"))
    deadline = time.time() + 60
    while time.time() < deadline:
        if json.loads(hevcfs("status", m.backing, "--json").stdout)["running"]:
            break
        time.sleep(0.1)
    t = time.time()
    m.stop()
    assert time.time() - t < 15  # the running encode is abandoned, not finished
    assert open(os.path.join(m.backing, "resume.mp4"), "rb").read() == open(src, "rb").read()
    m = Mount(*dirs, opts=OPTS).start()
    try:
        m.wait_idle()
        assert entries(m)["resume.mp4"]["state"] == "archived"
        assert video_pts(src) == video_pts(os.path.join(m.backing, "resume.mp4"))
    finally:
        m.stop()
