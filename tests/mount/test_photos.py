"""Photos through the mount: JPEGs archived as HEIC on the backing tree,
read back as JPEG views that keep every metadata byte, the right way up."""
import json
import os
import re
import shutil
import subprocess
import threading
import time

import pytest

from conftest import Mount, hevcfs, make_jpeg

CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "shared",
                      "corpus", "exif-samples", "jpg")


def header_segments(data):
    """The APPn/COM segments between SOI and the first other marker, less a
    view's padding: the APP15 segments of zeros after them that fill the
    room the regenerated tables and scan leave, so that the view keeps the
    original's layout."""
    assert data[:2] == b"\xff\xd8"
    i, segs = 2, []
    while data[i] == 0xFF and (0xE0 <= data[i + 1] <= 0xEF or data[i + 1] == 0xFE):
        n = 2 + int.from_bytes(data[i + 2:i + 4], "big")
        segs.append(data[i:i + n])
        i += n
    while segs and segs[-1][1] == 0xEF and not segs[-1][4:].strip(b"\0"):
        segs.pop()
    return b"".join(segs)


def ssim_y(a, b):
    """Luma SSIM of two images of equal size, by ffmpeg's ssim filter."""
    p = subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "info", "-i", a, "-i", b,
                        "-lavfi", "[0:v][1:v]ssim", "-f", "null", "-"],
                       capture_output=True, text=True)
    m = re.search(r"SSIM Y:([0-9.]+)", p.stderr)
    assert m, p.stderr[-2000:]
    return float(m.group(1))


def exif_tags(path):
    """Every tag exiftool reads, as "Group:Name" -> value, leaving out what
    describes the file rather than the photo (File, System, Composite)."""
    out = subprocess.run(["exiftool", "-a", "-G1", "-s", "-n", path],
                         capture_output=True, text=True, check=True).stdout
    keep = {}
    for line in out.splitlines():
        m = re.match(r"\[([^\]]+)\]\s+(\S+)\s*: ?(.*)$", line)
        if m and m.group(1) not in ("ExifTool", "System", "File", "Composite"):
            keep[f"{m.group(1)}:{m.group(2)}"] = m.group(3)
    return keep


def tagged_jpeg(path, orientation=1, seed=0, **kw):
    make_jpeg(path, seed=seed, **kw)
    subprocess.run(["exiftool", "-q", "-overwrite_original", f"-Orientation#={orientation}",
                    "-Make=Testcam", "-Model=T-1", "-DateTimeOriginal=2003:05:17 10:11:12",
                    "-GPSLatitude=48.8577", "-GPSLatitudeRef=N", "-GPSLongitude=2.295",
                    "-GPSLongitudeRef=E", "-XMP:Title=hello", "-IPTC:Keywords=test",
                    "-Comment=a comment", path], check=True)
    return open(path, "rb").read()


@pytest.fixture(scope="module", autouse=True)
def tools_present():
    for t in ("exiftool", "ffmpeg", "cjpeg", "heif-convert"):
        if not shutil.which(t):
            pytest.fail(f"{t} is needed by the photo tests (make deps installs it)")


def test_photo_archived_and_viewed(mount, tmp_path):
    src = str(tmp_path / "IMG_0001.JPG")
    orig = tagged_jpeg(src)
    os.utime(src, ns=(1_000_000_000_000_000_000, 1_052_000_000_123_456_789))
    shutil.copy2(src, os.path.join(mount.mnt, "IMG_0001.JPG"))
    mount.wait_idle()
    # backing: the HEIC alone, under the suffixed name, with the mtime
    assert sorted(os.listdir(mount.backing)) == [".hevcfs", "IMG_0001.JPG.heic"]
    heic = os.path.join(mount.backing, "IMG_0001.JPG.heic")
    assert open(heic, "rb").read(12)[4:12] == b"ftypheic"
    assert os.stat(heic).st_mtime_ns == 1_052_000_000_123_456_789
    st = mount.status()
    assert st["archived"] == 1 and st["bytes_stored"] < st["bytes_original"] * 0.9
    entry = hevcfs("status", mount.backing, "--files", "--json").stdout
    import json
    e = json.loads(entry)["entries"][0]
    assert e["path"] == "IMG_0001.JPG" and e["ssim"] >= 0.99 and e["quality"] > 0
    # the mount: the JPEG view under the original name
    assert os.listdir(mount.mnt) == ["IMG_0001.JPG"]
    view_path = os.path.join(mount.mnt, "IMG_0001.JPG")
    size = os.stat(view_path).st_size
    view = open(view_path, "rb").read()
    assert size == len(view) == e["view_bytes"]
    assert os.stat(view_path).st_mtime_ns == 1_052_000_000_123_456_789
    assert view[:2] == b"\xff\xd8" and view[-2:] == b"\xff\xd9"
    assert header_segments(view) == header_segments(orig)
    out = str(tmp_path / "view.jpg")
    open(out, "wb").write(view)
    assert ssim_y(src, out) >= 0.985
    assert exif_tags(src) == exif_tags(out)
    # the HEIC itself decodes and is visually the original. Its luma SSIM
    # (>= 0.99, checked above as recorded by verify on the decoded planes) is
    # measured here independently through heif-convert's RGB PNG, whose two
    # colour conversions cost a few thousandths: hence the lower bound.
    png = str(tmp_path / "heic.png")
    subprocess.run(["heif-convert", heic, png], check=True, capture_output=True)
    assert ssim_y(src, png) >= 0.985
    # st_blocks is what is really stored
    assert os.stat(view_path).st_blocks == os.stat(heic).st_blocks


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_orientation_as_irot_never_twice(mount, tmp_path, orientation):
    src = str(tmp_path / "o.jpg")
    orig = tagged_jpeg(src, orientation=orientation, seed=orientation)
    shutil.copy(src, os.path.join(mount.mnt, "o.jpg"))
    mount.wait_idle()
    heic = os.path.join(mount.backing, "o.jpg.heic")
    info = subprocess.run(["heif-info", heic], capture_output=True, text=True, check=True).stdout
    want = "image: 120x160" if orientation in (6, 8) else "image: 160x120"
    assert want in info, info
    # the view keeps the EXIF orientation and unrotated pixels (no double rotation)
    view = open(os.path.join(mount.mnt, "o.jpg"), "rb").read()
    out = str(tmp_path / "v.jpg")
    open(out, "wb").write(view)
    assert exif_tags(out)["IFD0:Orientation"] == str(orientation)
    assert exif_tags(out) == exif_tags(src)
    assert header_segments(view) == header_segments(orig)
    assert ssim_y(src, out) >= 0.985


def test_bad_and_odd_jpegs_kept_byte_exact(mount, tmp_path):
    """(Data after the EOI is archived with the photo: test_phone.py.)"""
    good = make_jpeg(None, seed=5)
    cases = {
        "truncated.jpg": good[: len(good) // 2],
        "garbage.jpg": b"\xff\xd8\xff\xe0" + os.urandom(5000),
        "bomb.jpg": bytes.fromhex("ffd8ffc0001108ffffffff03012200021101031101ffd9"),
        "empty.jpg": b"",
        "notes.txt": b"not a photo",
        "tiny.jpg": make_jpeg(None, 8, 8, seed=1),
    }
    for name, data in cases.items():
        with open(os.path.join(mount.mnt, name), "wb") as f:
            f.write(data)
    mount.wait_idle()
    import json
    entries = {e["path"]: e for e in json.loads(
        hevcfs("status", mount.backing, "--files", "--json").stdout)["entries"]}
    for name, data in cases.items():
        assert open(os.path.join(mount.mnt, name), "rb").read() == data, name
        assert open(os.path.join(mount.backing, name), "rb").read() == data, name
        assert entries[name]["state"] == "kept", entries[name]
        assert entries[name]["reason"], name


def test_native_view_shows_stored_files(dirs, tmp_path):
    src = str(tmp_path / "a.jpg")
    make_jpeg(src, seed=3)
    m = Mount(*dirs).start()
    try:
        shutil.copy(src, os.path.join(m.mnt, "a.jpg"))
        m.wait_idle()
    finally:
        m.stop()
    m = Mount(*dirs, opts="view=native").start()
    try:
        assert os.listdir(m.mnt) == ["a.jpg.heic"]
        assert open(os.path.join(m.mnt, "a.jpg.heic"), "rb").read() == open(
            os.path.join(m.backing, "a.jpg.heic"), "rb").read()
        assert not os.path.exists(os.path.join(m.mnt, "a.jpg"))
    finally:
        m.stop()


def test_edit_archived_photo(mount, tmp_path):
    src = str(tmp_path / "e.jpg")
    make_jpeg(src, seed=4)
    shutil.copy(src, os.path.join(mount.mnt, "e.jpg"))
    mount.wait_idle()
    p = os.path.join(mount.mnt, "e.jpg")
    view = open(p, "rb").read()
    # in place, without O_TRUNC: the view is materialised, the write applies
    with open(p, "r+b") as f:
        f.seek(len(view) - 2)
        f.write(b"\xff\xd9" + b"TRAILER")
    assert open(p, "rb").read() == view + b"TRAILER"
    mount.wait_idle()
    # data after EOI: archived with it, and the view has the edited file's
    # size, header and trailer
    assert sorted(os.listdir(mount.backing)) == [".hevcfs", "e.jpg.heic"]
    edited = open(p, "rb").read()
    assert len(edited) == len(view) + 7 and edited.endswith(b"\xff\xd9TRAILER")
    assert header_segments(edited) == header_segments(view)
    # replaced wholesale (O_TRUNC): archived again
    new = make_jpeg(None, seed=9)
    with open(p, "wb") as f:
        f.write(new)
    mount.wait_idle()
    assert sorted(os.listdir(mount.backing)) == [".hevcfs", "e.jpg.heic"]
    again = open(p, "rb").read()
    assert header_segments(again) == header_segments(new)
    # truncate(2) on an archived photo
    os.truncate(p, 10)
    assert open(p, "rb").read() == again[:10]
    mount.wait_idle()
    assert open(os.path.join(mount.backing, "e.jpg"), "rb").read() == again[:10]


def test_rename_and_unlink_archived(mount, tmp_path):
    for i in range(2):
        make_jpeg(os.path.join(mount.mnt, f"p{i}.jpg"), seed=20 + i)
    mount.wait_idle()
    v0 = open(os.path.join(mount.mnt, "p0.jpg"), "rb").read()
    os.mkdir(os.path.join(mount.mnt, "album"))
    os.rename(os.path.join(mount.mnt, "p0.jpg"), os.path.join(mount.mnt, "album", "renamed.jpg"))
    assert os.path.exists(os.path.join(mount.backing, "album", "renamed.jpg.heic"))
    assert open(os.path.join(mount.mnt, "album", "renamed.jpg"), "rb").read() == v0
    # rename over another archived photo
    os.rename(os.path.join(mount.mnt, "album", "renamed.jpg"), os.path.join(mount.mnt, "p1.jpg"))
    assert open(os.path.join(mount.mnt, "p1.jpg"), "rb").read() == v0
    assert sorted(os.listdir(mount.backing)) == [".hevcfs", "album", "p1.jpg.heic"]
    with pytest.raises(FileExistsError):
        os.open(os.path.join(mount.mnt, "p1.jpg"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    os.unlink(os.path.join(mount.mnt, "p1.jpg"))
    assert sorted(os.listdir(mount.backing)) == [".hevcfs", "album"]
    assert mount.status()["files"] == 0
    assert os.listdir(os.path.join(mount.backing, ".hevcfs", "cache")) == []


def test_archived_photo_removed_while_open(mount, tmp_path):
    """A photo read as its view, removed while open: fstat still gives the
    view's size, the rest of the view reads, and nothing is left after."""
    make_jpeg(os.path.join(mount.mnt, "p.jpg"), seed=31)
    mount.wait_idle()
    assert mount.status()["archived"] == 1
    view = open(os.path.join(mount.mnt, "p.jpg"), "rb").read()
    fd = os.open(os.path.join(mount.mnt, "p.jpg"), os.O_RDONLY)
    head = os.read(fd, 1000)
    os.unlink(os.path.join(mount.mnt, "p.jpg"))
    st = os.fstat(fd)
    assert (st.st_size, st.st_nlink) == (len(view), 0)
    rest = b""
    while chunk := os.read(fd, 65536):
        rest += chunk
    assert head + rest == view
    assert os.listdir(mount.mnt) == []
    os.close(fd)
    assert sorted(os.listdir(mount.backing)) == [".hevcfs"]
    cache = os.path.join(mount.backing, ".hevcfs", "cache")
    for _ in range(500):
        if not os.listdir(cache):
            break
        time.sleep(0.01)
    assert os.listdir(cache) == []
    assert mount.status()["files"] == 0


def test_photo_not_archived_under_a_reader(mount):
    """A reader holding the original while its archive is ready: the archive
    waits for the last close (the kernel keeps one size per name, so the
    reader would see the archived view's size), and the reader reads the
    original whole even after the name was looked at."""
    original = make_jpeg(None, seed=32)
    p = os.path.join(mount.mnt, "p.jpg")
    with open(p, "wb") as f:
        f.write(original)
    fd = os.open(p, os.O_RDONLY)
    try:
        assert os.pread(fd, 100, 0) == original[:100]
        r = hevcfs("wait", mount.backing, "--timeout", "3", check=False)
        assert r.returncode == 1
        assert "is open: archived after it is closed" in mount.log()
        st = mount.status()
        assert st["pending"] == 1 and st["archived"] == 0
        assert os.stat(p).st_size == len(original)
        assert os.pread(fd, len(original) + 10, 0) == original
    finally:
        os.close(fd)
    mount.wait_idle()
    assert mount.status()["archived"] == 1
    assert os.path.exists(os.path.join(mount.backing, "p.jpg.heic"))
    # the archive made while it was open is the one committed: no second encode
    assert len(re.findall(r"info: photo: \d+x\d+", mount.log())) == 1, mount.log()
    assert os.listdir(os.path.join(mount.backing, ".hevcfs", "work")) == []
    view = open(p, "rb").read()
    assert view[:3] == b"\xff\xd8\xff" and os.stat(p).st_size == len(view)


def test_photo_renamed_while_archived(mount):
    """rsync writes a temporary name and renames it when done; a file
    renamed while its archive is being made is committed under its new
    name, not kept as "moved"."""
    import json
    original = make_jpeg(None, width=1600, height=1200, seed=35, noise=24)
    tmp = os.path.join(mount.mnt, ".p.jpg.Ab12Cd")
    with open(tmp, "wb") as f:
        f.write(original)
    deadline = time.time() + 60
    while not json.loads(hevcfs("status", mount.backing, "--json").stdout)["running"]:
        assert time.time() < deadline, mount.log()
        time.sleep(0.01)
    os.rename(tmp, os.path.join(mount.mnt, "p.jpg"))
    mount.wait_idle()
    assert "renamed while archived: committed as p.jpg" in mount.log(), mount.log()
    st = mount.status()
    assert st["archived"] == 1 and st["kept"] == 0, st
    assert os.listdir(mount.mnt) == ["p.jpg"]
    assert sorted(os.listdir(mount.backing)) == [".hevcfs", "p.jpg.heic"]
    view = open(os.path.join(mount.mnt, "p.jpg"), "rb").read()
    assert view[:3] == b"\xff\xd8\xff"
    assert len(view) == os.stat(os.path.join(mount.mnt, "p.jpg")).st_size


def test_photo_rewritten_while_its_archive_waits(mount, tmp_path):
    """The archive waiting for a reader is dropped when the file is written
    meanwhile: the newer bytes are archived, nothing is left in work/."""
    first, second = make_jpeg(None, seed=33), make_jpeg(None, seed=34, width=200)
    p = os.path.join(mount.mnt, "p.jpg")
    with open(p, "wb") as f:
        f.write(first)
    fd = os.open(p, os.O_RDONLY)
    try:
        assert hevcfs("wait", mount.backing, "--timeout", "3", check=False).returncode == 1
        assert "is open: archived after it is closed" in mount.log()
        with open(p, "wb") as f:
            f.write(second)
    finally:
        os.close(fd)
    mount.wait_idle()
    st = mount.status()
    assert st["archived"] == 1 and st["bytes_original"] == len(second)
    assert os.listdir(os.path.join(mount.backing, ".hevcfs", "work")) == []
    (tmp_path / "view.jpg").write_bytes(open(p, "rb").read())
    (tmp_path / "second.jpg").write_bytes(second)
    assert ssim_y(str(tmp_path / "view.jpg"), str(tmp_path / "second.jpg")) > 0.98


def test_random_and_concurrent_reads_render_once(mount, tmp_path):
    src = str(tmp_path / "big.jpg")
    make_jpeg(src, 640, 480, seed=6)
    shutil.copy(src, os.path.join(mount.mnt, "big.jpg"))
    mount.wait_idle()
    cache = os.path.join(mount.backing, ".hevcfs", "cache")
    for f in os.listdir(cache):
        os.unlink(os.path.join(cache, f))
    p = os.path.join(mount.mnt, "big.jpg")
    size = os.stat(p).st_size
    # Samba reads the last 64 KiB first
    with open(p, "rb") as f:
        f.seek(max(0, size - 65536))
        tail = f.read()
    results = []

    def reader():
        results.append(open(p, "rb").read())

    threads = [threading.Thread(target=reader) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r == results[0] for r in results) and len(results[0]) == size
    assert results[0].endswith(tail)
    assert len(os.listdir(cache)) == 1
    log = open(os.path.join(mount.backing, ".hevcfs", "log")).read()
    assert "render failed" not in log


def test_view_cache_is_bounded(dirs, tmp_path):
    m = Mount(*dirs, opts="cache_mb=0").start()
    try:
        for i in range(3):
            make_jpeg(os.path.join(m.mnt, f"c{i}.jpg"), seed=30 + i)
        m.wait_idle()
        views = [open(os.path.join(m.mnt, f"c{i}.jpg"), "rb").read() for i in range(3)]
        assert len(os.listdir(os.path.join(m.backing, ".hevcfs", "cache"))) <= 1
        # evicted views render again, identically
        assert [open(os.path.join(m.mnt, f"c{i}.jpg"), "rb").read() for i in range(3)] == views
    finally:
        m.stop()


@pytest.mark.skipif(not os.path.isdir(CORPUS), reason="../shared/corpus is absent")
def test_real_camera_corpus(mount):
    """Real camera files, every orientation and the broken ones: no crash,
    each archived or kept with a reason, views the size getattr says."""
    files = []
    for sub in ("orientation", "invalid", "gps", "xmp", ""):
        d = os.path.join(CORPUS, sub)
        for n in sorted(os.listdir(d)):
            p = os.path.join(d, n)
            if os.path.isfile(p) and os.path.getsize(p) < 400_000:
                files.append(p)
    files = files[:40]
    os.mkdir(os.path.join(mount.mnt, "corpus"))
    for i, p in enumerate(files):
        shutil.copy(p, os.path.join(mount.mnt, "corpus", f"{i:02d}-{os.path.basename(p)}"))
    mount.wait_idle(timeout=600)
    import json
    entries = json.loads(hevcfs("status", mount.backing, "--files", "--json").stdout)["entries"]
    assert len(entries) == len(files)
    for e in entries:
        assert e["state"] in ("archived", "kept"), e
        p = os.path.join(mount.mnt, e["path"])
        data = open(p, "rb").read()
        assert len(data) == os.stat(p).st_size
        if e["state"] == "kept":
            assert e["reason"]
            src = files[int(os.path.basename(e["path"])[:2])]
            assert data == open(src, "rb").read()
        else:
            assert e["ssim"] >= 0.99 and e["view_ssim"] >= 0.985


def test_archiving_keeps_directory_times(mount, tmp_path):
    """cp -a sets a folder's times after its files: archiving them later
    must not move them."""
    src = tmp_path / "DCIM"
    src.mkdir()
    for i in range(2):
        make_jpeg(str(src / f"IMG_{i}.JPG"), seed=60 + i)
    os.utime(src, ns=(1_100_000_000_000_000_000, 1_200_000_000_000_000_000))
    subprocess.run(["cp", "-a", str(src), os.path.join(mount.mnt, "DCIM")], check=True)
    mount.wait_idle()
    assert mount.status()["archived"] == 2
    for d in (mount.mnt, mount.backing):
        st = os.stat(os.path.join(d, "DCIM"))
        assert (st.st_atime_ns, st.st_mtime_ns) == (1_100_000_000_000_000_000,
                                                    1_200_000_000_000_000_000)


def test_name_too_long_for_suffix_is_kept(mount):
    """A 255-byte photo name has no room for ".heic": kept, with the reason."""
    name = "n" * 251 + ".jpg"
    data = make_jpeg(os.path.join(mount.mnt, name), seed=70)
    mount.wait_idle()
    import json
    e = json.loads(hevcfs("status", mount.backing, "--files", "--json").stdout)["entries"][0]
    assert e["state"] == "kept" and "too long" in e["reason"], e
    assert open(os.path.join(mount.mnt, name), "rb").read() == data
    assert os.listdir(mount.backing) == [".hevcfs", name] or sorted(
        os.listdir(mount.backing)) == sorted([".hevcfs", name])


@pytest.mark.parametrize("view", ["legacy", "native"])
def test_heic_photo_has_a_jpeg_sibling(mount_factory, tmp_path, view):
    """heic_view=jpeg: a phone's HEIC (kept as it is) also shows a read-only
    JPEG sibling X.HEIC.jpg, in either view; it opens, reads as a JPEG of
    the size stat gives, and goes with its photo."""
    # a HEIC of our own: a JPEG archived by a first mount
    first = tmp_path / "first"
    first.mkdir()
    m = mount_factory(backing=str(first)).start()
    make_jpeg(os.path.join(m.mnt, "p.jpg"), seed=36)
    m.wait_idle()
    heic = (first / "p.jpg.heic").read_bytes()
    m.stop()

    m = mount_factory(f"heic_view=jpeg,view={view}").start()
    with open(os.path.join(m.mnt, "IMG_0001.HEIC"), "wb") as f:
        f.write(heic)
    m.wait_idle()
    assert sorted(os.listdir(m.mnt)) == ["IMG_0001.HEIC", "IMG_0001.HEIC.jpg"]
    sib = os.path.join(m.mnt, "IMG_0001.HEIC.jpg")
    data = open(sib, "rb").read()
    assert data[:3] == b"\xff\xd8\xff" and data[-2:] == b"\xff\xd9"
    assert os.stat(sib).st_size == len(data)
    (tmp_path / "sib.jpg").write_bytes(data)
    subprocess.run(["djpeg", "-outfile", os.devnull, str(tmp_path / "sib.jpg")], check=True)
    assert open(os.path.join(m.mnt, "IMG_0001.HEIC"), "rb").read() == heic
    with pytest.raises(OSError):
        open(sib, "r+b")
    with pytest.raises(OSError):
        os.unlink(sib)
    os.unlink(os.path.join(m.mnt, "IMG_0001.HEIC"))
    assert os.listdir(m.mnt) == []
    m.stop()


PHONE_HEICS = os.path.join(os.path.dirname(CORPUS), "heic")


@pytest.mark.skipif(not os.path.isdir(PHONE_HEICS), reason="../shared/corpus is absent")
def test_phone_heics_have_jpeg_siblings(mount_factory, tmp_path):
    """heic_view=jpeg on real phones' HEICs (an iPhone 13 Pro Max, a Nokia
    8.3 whose picture is turned by irot alone, its 10-bit HDR shot): each
    sibling has the size stat gives before any read, shows upright (its
    EXIF orientation applied by ImageMagick) at libheif's size, matches
    libheif's own decode, and refuses every change with a clear errno."""
    import errno
    names = ["mobile/iphone_13_pro_max.HEIC", "mobile/HMD_Nokia_8.3_5G.heif",
             "mobile/HMD_Nokia_8.3_5G_hdr.heif"]
    m = mount_factory("heic_view=jpeg").start()
    for n in names:
        shutil.copy(os.path.join(PHONE_HEICS, n), m.mnt)
    m.wait_idle(timeout=300)
    m.stop()
    # a fresh mount: what stat says was learnt at ingest, not at a read
    m = mount_factory("heic_view=jpeg", backing=m.backing).start()
    for n in names:
        base = os.path.basename(n)
        sib = os.path.join(m.mnt, base + ".jpg")
        size = os.stat(sib).st_size
        data = open(sib, "rb").read()
        assert len(data) == size, base
        assert open(os.path.join(m.mnt, base), "rb").read() == open(
            os.path.join(PHONE_HEICS, n), "rb").read()
        ref, got = str(tmp_path / (base + ".ref.png")), str(tmp_path / (base + ".png"))
        subprocess.run(["heif-convert", os.path.join(PHONE_HEICS, n), ref], check=True,
                       capture_output=True)
        (tmp_path / "sib.jpg").write_bytes(data)
        subprocess.run(["convert", str(tmp_path / "sib.jpg"), "-auto-orient", got], check=True)
        dims = [subprocess.run(["identify", "-format", "%wx%h", f], capture_output=True,
                               text=True, check=True).stdout for f in (ref, got)]
        assert dims[0] == dims[1], (base, dims)
        p = subprocess.run(["ffmpeg", "-nostdin", "-i", got, "-i", ref, "-lavfi",
                            "[0:v]format=yuv444p[a];[1:v]format=yuv444p[b];[a][b]ssim",
                            "-f", "null", "-"], capture_output=True, text=True)
        s = re.search(r"SSIM Y:([0-9.]+)", p.stderr)
        assert s and float(s.group(1)) >= 0.98, (base, p.stderr[-500:])
        for change, want in ((lambda: open(sib, "r+b"), errno.EROFS),
                             (lambda: os.truncate(sib, 0), errno.EROFS),
                             (lambda: os.unlink(sib), errno.EPERM),
                             (lambda: os.rename(sib, sib + ".x"), errno.EPERM)):
            with pytest.raises(OSError) as e:
                change()
            assert e.value.errno == want, (base, e.value)
        assert open(sib, "rb").read() == data
    st = json.loads(hevcfs("status", m.backing, "--json").stdout)
    assert st["files"] == len(names), st
    m.stop()


def test_stored_names_of_archives_are_never_overwritten(mount, tmp_path):
    """In the legacy view an archived photo a.jpg is stored as a.jpg.heic,
    a name the mount does not show. Creating or renaming onto that name
    through the mount must not touch the archive (open(O_CREAT|O_TRUNC) used
    to open the stored file and truncate it), and a file the user named
    b.jpg.heic is not replaced when an archived c.jpg is renamed to b.jpg
    (its stored name would be b.jpg.heic)."""
    original = make_jpeg(os.path.join(mount.mnt, "a.jpg"), seed=37)
    make_jpeg(os.path.join(mount.mnt, "c.jpg"), seed=38)
    mount.wait_idle()
    stored = open(os.path.join(mount.backing, "a.jpg.heic"), "rb").read()
    view = open(os.path.join(mount.mnt, "a.jpg"), "rb").read()
    assert len(view) == len(original)
    hidden = os.path.join(mount.mnt, "a.jpg.heic")
    with pytest.raises(FileExistsError):
        open(hidden, "wb")
    with pytest.raises(FileExistsError):
        os.open(hidden, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    with open(os.path.join(mount.mnt, "x.txt"), "wb") as f:
        f.write(b"x")
    with pytest.raises(FileExistsError):
        os.rename(os.path.join(mount.mnt, "x.txt"), hidden)
    assert open(os.path.join(mount.backing, "a.jpg.heic"), "rb").read() == stored
    # a user's own file named like a stored one, and an archive renamed
    # so that its stored name would land on it
    with open(os.path.join(mount.mnt, "b.jpg.heic"), "wb") as f:
        f.write(b"mine")
    with pytest.raises(FileExistsError):
        os.rename(os.path.join(mount.mnt, "c.jpg"), os.path.join(mount.mnt, "b.jpg"))
    assert open(os.path.join(mount.mnt, "b.jpg.heic"), "rb").read() == b"mine"
    assert sorted(os.listdir(mount.mnt)) == ["a.jpg", "b.jpg.heic", "c.jpg", "x.txt"]
    assert open(os.path.join(mount.mnt, "a.jpg"), "rb").read() == view


def test_names_are_never_listed_twice(mount_factory):
    """Through the native view a file can be given an archived copy's
    logical name (a.jpg beside a.jpg.heic). The legacy view then lists the
    file as a.jpg and the copy as stored, each once, each opening to its own
    bytes (it used to list a.jpg twice, the second never reachable)."""
    m = mount_factory("view=native").start()
    make_jpeg(os.path.join(m.mnt, "a.jpg"), seed=44)
    m.wait_idle()
    assert os.listdir(m.mnt) == ["a.jpg.heic"]
    with open(os.path.join(m.mnt, "a.jpg"), "w") as f:
        f.write("not the photo")
    m.wait_idle()
    heic = open(os.path.join(m.mnt, "a.jpg.heic"), "rb").read()
    m.stop()
    m = mount_factory("view=legacy").start()
    assert sorted(os.listdir(m.mnt)) == ["a.jpg", "a.jpg.heic"]
    assert open(os.path.join(m.mnt, "a.jpg"), "rb").read() == b"not the photo"
    assert open(os.path.join(m.mnt, "a.jpg.heic"), "rb").read() == heic
    m.stop()


def test_metadata_scan_renders_nothing(mount, tmp_path):
    """exiftool over cold archived photos (view cache emptied, page cache
    dropped) prints what it prints over the originals and renders no view:
    it reads 8 KiB blocks up to the SOS segment, then the last 64 bytes, and
    a view's tables end on a 64, 16 or 8 KiB boundary (as the room its
    original's scan leaves allows) with fill before its EOI. Read
    whole afterwards, each view is the render, and a private map of it reads
    the same bytes; once rendered, a shared map does too."""
    import mmap
    names = []
    for i in range(3):
        n = f"scan{i}.jpg"
        tagged_jpeg(str(tmp_path / n), seed=40 + i, width=960, height=720, quality=97,
                    noise=2)
        shutil.copy(str(tmp_path / n), os.path.join(mount.mnt, n))
        names.append(n)
    mount.wait_idle()
    st = json.loads(hevcfs("status", mount.backing, "--json", "--files").stdout)
    assert sorted(e["path"].lstrip("/") for e in st["entries"]
                  if e["state"] == "archived") == names
    cache = os.path.join(mount.backing, ".hevcfs", "cache")
    mount.stop()
    for f in os.listdir(cache):
        os.unlink(os.path.join(cache, f))
    subprocess.run(["sync"], check=True)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")
    mount.start()

    def scan(paths):
        out = subprocess.run(["exiftool", "-s", "-DateTimeOriginal", "-Model", "-Make",
                              "-GPSLatitude", "-XMP:Title", *paths],
                             capture_output=True, text=True, check=True).stdout
        return re.sub(r"=+ \S+/", "", out)

    got = scan([os.path.join(mount.mnt, n) for n in names])
    want = scan([str(tmp_path / n) for n in names])
    assert got == want and "2003:05:17 10:11:12" in got and "T-1" in got
    if os.listdir(cache):
        v = open(os.path.join(mount.mnt, names[0]), "rb").read()
        q = 2
        while v[q + 1] != 0xDA:
            q += 2 + int.from_bytes(v[q + 2:q + 4], "big")
        raise AssertionError(f"rendered {os.listdir(cache)}; data at {q} of {len(v)}")
    # what the map serves: the head up to the image data, the last 64 bytes
    ends = {}
    for n in names:
        fd = os.open(os.path.join(mount.mnt, n), os.O_RDONLY)
        size = os.fstat(fd).st_size
        ends[n] = (os.pread(fd, 8192, 0), os.pread(fd, 64, size - 64))
        os.close(fd)
    assert os.listdir(cache) == []
    for n in names:
        p = os.path.join(mount.mnt, n)
        whole = open(p, "rb").read()
        assert whole.startswith(ends[n][0]) and whole.endswith(ends[n][1])
        q = 2  # the entropy-coded data starts on an 8 KiB boundary at least
        while whole[q + 1] != 0xDA:
            q += 2 + int.from_bytes(whole[q + 2:q + 4], "big")
        assert (q + 2 + int.from_bytes(whole[q + 2:q + 4], "big")) % 8192 == 0
        assert len(whole) == os.stat(str(tmp_path / n)).st_size
        assert whole.endswith(b"\xff\xd9")
        with open(p, "rb") as f, mmap.mmap(f.fileno(), 0, flags=mmap.MAP_PRIVATE,
                                           prot=mmap.PROT_READ) as mm:
            assert mm[:] == whole
        # rendered now: read through the page cache, a shared map works too
        with open(p, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            assert mm[:] == whole
    assert len(os.listdir(cache)) == len(names)
