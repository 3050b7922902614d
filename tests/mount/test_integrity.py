"""Integrity: every stored file checksummed at commit and checked on every read
and render (damage reads as EIO, never as a plausible file), `hevcfs verify`
(scrub, resumable), checksums that survive `fsck --rebuild`, import and export
without a mount (resumable, sharded), the state directory kept off network
filesystems (state=DIR), saved options, status by kind."""
import errno
import json
import os
import re
import shutil
import signal
import subprocess
import time

import pytest

from conftest import BIN, Mount, hevcfs, make_jpeg

# the photos' own preset (preset= would set theirs too); small clips
OPTS = "crf=18"


def ffmpeg(*args):
    subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args],
                   check=True)


def make_clip(path, seconds=2):
    """A clip that HEVC beats: MPEG-4 part 2 at a high bit rate."""
    ffmpeg("-f", "lavfi", "-i", f"testsrc2=size=320x240:rate=15:duration={seconds}",
           "-c:v", "mpeg4", "-q:v", "2", path)


def flip(path, offset, n=300):
    """Damage n bytes of a stored file in place, as a failing disk would."""
    with open(path, "r+b") as f:
        f.seek(offset)
        data = f.read(n)
        f.seek(offset)
        f.write(bytes(b ^ 0x5A for b in data))


def drop_caches():
    subprocess.run(["sync"])
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def read_errno(path):
    """0 when path reads whole, else the errno of the failed read."""
    try:
        with open(path, "rb") as f:
            while f.read(1 << 20):
                pass
        return 0
    except OSError as e:
        return e.errno


def verify(backing, *args, check=False):
    p = hevcfs("verify", backing, "--json", *args, check=False, timeout=600)
    out = json.loads(p.stdout.strip().splitlines()[-1])
    return p.returncode, out


def files_by_path(backing, *args):
    st = json.loads(hevcfs("status", backing, "--files", "--json", *args).stdout)
    return {e["path"]: e for e in st["entries"]}, st


def ssim_y(a, b):
    p = subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "info", "-i", a, "-i", b,
                        "-lavfi", "[0:v][1:v]ssim", "-f", "null", "-"],
                       capture_output=True, text=True)
    m = re.search(r"SSIM Y:([0-9.]+)", p.stderr)
    assert m, p.stderr[-2000:]
    return float(m.group(1))


def fill(mnt, tmp_path):
    """A photo, a video and a plain file, archived or kept; their originals."""
    src = {"IMG_1.JPG": make_jpeg(None, 640, 480, seed=3),
           "notes.bin": os.urandom(3 * 1024 * 1024 + 5)}
    clip = str(tmp_path / "clip.avi")
    make_clip(clip)
    src["clip.avi"] = open(clip, "rb").read()
    for name, data in src.items():
        with open(os.path.join(mnt, name), "wb") as f:
            f.write(data)
    return src


def test_damage_reads_as_eio_and_verify_names_it(mount_factory, tmp_path):
    m = mount_factory(OPTS).start()
    src = fill(m.mnt, tmp_path)
    m.wait_idle()
    files, st = files_by_path(m.backing)
    assert st["archived"] == 2 and st["kept"] == 1, st
    for name in src:
        assert len(files[name]["sha256"]) == 64 and files[name]["checked"] > 0, files[name]
    assert files["notes.bin"]["sha256"] == files["notes.bin"]["original_sha256"]
    # healthy: everything reads, verify passes (mounted and not)
    for name, data in src.items():
        assert read_errno(os.path.join(m.mnt, name)) == 0
    assert open(os.path.join(m.mnt, "notes.bin"), "rb").read() == src["notes.bin"]
    rc, out = verify(m.backing)
    assert rc == 0 and out["ok"] and out["files"] == 3 and out["damaged"] == 0, out

    heic = os.path.join(m.backing, "IMG_1.JPG.heic")
    mp4 = os.path.join(m.backing, "clip.avi.mp4")
    kept = os.path.join(m.backing, "notes.bin")
    flip(heic, os.path.getsize(heic) // 2)
    flip(mp4, os.path.getsize(mp4) // 2)
    flip(kept, 2 * 1024 * 1024 + 100)  # the third 1 MiB block
    m.stop()
    # the mount no longer has its pages: every read goes to the disk
    for f in os.listdir(os.path.join(m.backing, ".hevcfs", "cache")):
        os.unlink(os.path.join(m.backing, ".hevcfs", "cache", f))
    drop_caches()
    m = mount_factory(OPTS).start()
    assert read_errno(os.path.join(m.mnt, "IMG_1.JPG")) == errno.EIO
    assert read_errno(os.path.join(m.mnt, "clip.avi")) == errno.EIO
    assert read_errno(os.path.join(m.mnt, "notes.bin")) == errno.EIO
    # the blocks before the damaged one still read: only what is damaged fails
    with open(os.path.join(m.mnt, "notes.bin"), "rb") as f:
        assert f.read(2 * 1024 * 1024) == src["notes.bin"][:2 * 1024 * 1024]
    # the rest of the mount keeps working
    with open(os.path.join(m.mnt, "new.txt"), "wb") as f:
        f.write(b"still here")
    assert open(os.path.join(m.mnt, "new.txt"), "rb").read() == b"still here"
    st = m.status()
    assert st["damaged"] == 3, st
    log = open(os.path.join(m.backing, ".hevcfs", "log")).read()
    for name in src:
        assert re.search(rf"damaged: {re.escape(name)}: ", log), log[-3000:]
    rc, out = verify(m.backing)
    assert rc == 1 and not out["ok"], out
    named = {d["path"]: d["what"] for d in out["damaged_files"]}
    assert set(named) == {"IMG_1.JPG", "clip.avi", "notes.bin"}, out
    assert "bytes 2097152-3145727" in named["notes.bin"]
    m.stop()
    rc, out = verify(m.backing, "notes.bin")
    assert rc == 1 and [d["path"] for d in out["damaged_files"]] == ["notes.bin"], out
    # put the kept file back as it was: the next scrub finds it whole again
    flip(kept, 2 * 1024 * 1024 + 100)
    rc, out = verify(m.backing, "notes.bin")
    assert rc == 0 and out["damaged"] == 0, out
    files, st = files_by_path(m.backing)
    assert not files["notes.bin"]["damaged"] and st["damaged"] == 2


def bdi_readahead(mnt):
    """The read_ahead_kb the kernel gives the mount at mnt."""
    st = os.stat(mnt)
    dev = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    with open(f"/sys/class/bdi/{dev}/read_ahead_kb") as f:
        return int(f.read())


def test_sequential_reads_checked_ahead(mount_factory, tmp_path):
    """A sequential reader's next blocks are checked by other threads ahead
    of it (the mount reads 1 MiB ahead): the bytes are the file's, and
    damage ahead of the reader is reported only when the reader gets there,
    once, and not before."""
    MiB = 1 << 20
    data = {"whole.bin": os.urandom(9 * MiB + 77), "hurt.bin": os.urandom(6 * MiB + 3)}
    m = mount_factory(OPTS).start()
    assert bdi_readahead(m.mnt) == 1024
    for name, b in data.items():
        with open(os.path.join(m.mnt, name), "wb") as f:
            f.write(b)
    m.wait_idle()
    m.stop()
    flip(os.path.join(m.backing, "hurt.bin"), 4 * MiB + 10)  # its fifth block
    drop_caches()
    m = mount_factory(OPTS).start()
    for bs in (4096, 128 * 1024, 3 * MiB):
        drop_caches()
        got = bytearray()
        with open(os.path.join(m.mnt, "whole.bin"), "rb") as f:
            while chunk := f.read(bs):
                got += chunk
        assert bytes(got) == data["whole.bin"], bs
    # the reader gets every byte before the damaged block, then EIO there
    with open(os.path.join(m.mnt, "hurt.bin"), "rb") as f:
        assert f.read(4 * MiB) == data["hurt.bin"][:4 * MiB]
        with pytest.raises(OSError) as e:
            f.read(MiB)
        assert e.value.errno == errno.EIO
    assert read_errno(os.path.join(m.mnt, "hurt.bin")) == errno.EIO
    log = open(os.path.join(m.backing, ".hevcfs", "log")).read()
    assert log.count("damaged: hurt.bin: checksum mismatch in bytes 4194304-5242879") == 1, \
        log[-3000:]
    assert "whole.bin" not in re.findall(r"damaged: (\S+):", log)
    assert m.status()["damaged"] == 1
    m.stop()
    # readahead_kb=0 leaves the kernel's own
    m = mount_factory(OPTS + ",readahead_kb=0").start()
    assert bdi_readahead(m.mnt) < 1024
    assert open(os.path.join(m.mnt, "whole.bin"), "rb").read() == data["whole.bin"]
    m.stop()
    # what the kernel would not take, or is no number, is refused up front
    for bad in ("4096", "-1", "1M", ""):
        r = Mount(m.backing, m.mnt, opts=f"readahead_kb={bad}").start(expect_fail=True)
        assert r.proc.wait(timeout=30) != 0
        assert f"readahead_kb={bad}: expected a whole number from 0 to 1024" in r.log(), r.log()
        assert not os.path.ismount(m.mnt)


def test_verify_reads_off_serves_raw_bytes(mount_factory, tmp_path):
    m = mount_factory("verify_reads=off").start()
    data = os.urandom(2 * 1024 * 1024)
    with open(os.path.join(m.mnt, "raw.bin"), "wb") as f:
        f.write(data)
    m.wait_idle()
    m.stop()
    flip(os.path.join(m.backing, "raw.bin"), 1000, 10)
    drop_caches()
    m = mount_factory("verify_reads=off").start()
    got = open(os.path.join(m.mnt, "raw.bin"), "rb").read()
    assert len(got) == len(data) and got != data  # as stored, unchecked
    m.stop()
    m = mount_factory("verify_reads=on").start()
    drop_caches()
    assert read_errno(os.path.join(m.mnt, "raw.bin")) == errno.EIO


def patch_view_size(heic, delta):
    """Change the view size the hevcfs header item of an archived HEIC
    promises (bytes 28..35 after its magic)."""
    data = bytearray(open(heic, "rb").read())
    i = data.index(b"HVFSJPEG")
    size = int.from_bytes(data[i + 28:i + 36], "big")
    data[i + 28:i + 36] = (size + delta).to_bytes(8, "big")
    open(heic, "wb").write(data)
    return size


def test_render_of_another_size_is_refused(mount_factory, tmp_path):
    """A render whose size is not the one stat promised is an error, never
    served cut or padded: the stored HEIC's header is made to promise one
    byte more than the index says (checksums off, so the render is reached)."""
    m = mount_factory().start()
    make_jpeg(os.path.join(m.mnt, "a.jpg"), 320, 240, seed=5)
    m.wait_idle()
    m.stop()
    heic = os.path.join(m.backing, "a.jpg.heic")
    true_size = patch_view_size(heic, 1)
    for f in os.listdir(os.path.join(m.backing, ".hevcfs", "cache")):
        os.unlink(os.path.join(m.backing, ".hevcfs", "cache", f))
    m = mount_factory("verify_reads=off").start()
    p = os.path.join(m.mnt, "a.jpg")
    assert os.stat(p).st_size == true_size
    assert read_errno(p) == errno.EIO
    log = open(os.path.join(m.backing, ".hevcfs", "log")).read()
    assert re.search(rf"damaged: a.jpg: (the view renders to \d+ bytes, {true_size} promised"
                     r"|the stored photo does not render)", log), log[-2000:]
    assert m.status()["damaged"] == 1


def test_render_that_contradicts_the_map_is_refused(mount_factory, tmp_path):
    """A view's header and end are served from its map, the rest from its
    render: a render whose header differs from the map's (here a cached view
    altered on disk, with checksums off so the cache is not re-checked) is
    an error, never a file made of the two."""
    m = mount_factory().start()
    make_jpeg(os.path.join(m.mnt, "a.jpg"), 640, 480, seed=6, quality=97)
    m.wait_idle()
    whole = open(os.path.join(m.mnt, "a.jpg"), "rb").read()
    m.stop()
    cache = os.path.join(m.backing, ".hevcfs", "cache")
    (name,) = os.listdir(cache)
    data = bytearray(open(os.path.join(cache, name), "rb").read())
    assert bytes(data) == whole
    data[3] ^= 0x01  # the first segment's marker byte: in the map's head
    open(os.path.join(cache, name), "wb").write(data)
    m = mount_factory("verify_reads=off").start()
    assert read_errno(os.path.join(m.mnt, "a.jpg")) == errno.EIO
    log = open(os.path.join(m.backing, ".hevcfs", "log")).read()
    assert "a.jpg: its view renders other bytes than its header item says" in log, log[-2000:]


def test_checksums_survive_rebuild(mount_factory, tmp_path):
    m = mount_factory(OPTS).start()
    src = fill(m.mnt, tmp_path)
    m.wait_idle()
    before, _ = files_by_path(m.backing)
    m.stop()
    shutil.rmtree(os.path.join(m.backing, ".hevcfs"))
    hevcfs("fsck", "--rebuild", m.backing)
    after, st = files_by_path(m.backing)
    for name in ("IMG_1.JPG", "clip.avi"):
        assert after[name]["state"] == "archived", after[name]
        assert after[name]["sha256"] == before[name]["sha256"]
        assert after[name]["original_sha256"] == before[name]["original_sha256"], name
        assert not after[name]["damaged"]
    # a kept file is looked at again by the next mount, which sums it anew
    m = mount_factory(OPTS).start()
    m.wait_idle()
    after, st = files_by_path(m.backing)
    assert after["notes.bin"]["sha256"] == before["notes.bin"]["sha256"]
    assert st["archived"] == 2 and st["kept"] == 1 and st["damaged"] == 0
    m.stop()
    # a stored file damaged while the index was gone is caught by its own
    # checksum when the index is built again
    flip(os.path.join(m.backing, "clip.avi.mp4"), 2000)
    shutil.rmtree(os.path.join(m.backing, ".hevcfs"))
    p = hevcfs("fsck", "--rebuild", m.backing)
    after, st = files_by_path(m.backing)
    assert after["clip.avi"]["damaged"], after["clip.avi"]
    assert st["damaged"] == 1


def test_verify_resumes_after_interrupt(mount_factory, tmp_path):
    m = mount_factory().start()
    for i in range(6):
        with open(os.path.join(m.mnt, f"f{i}.bin"), "wb") as f:
            f.write(os.urandom(2 * 1024 * 1024))
    m.wait_idle()
    m.stop()
    # 1 MB/s: the 12 MB take 12 s, stopped after the first two or three
    p = subprocess.Popen([BIN, "verify", m.backing, "--rate", "1", "--json"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(4.5)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130, (p.returncode, out, err)
    first = json.loads(out.strip().splitlines()[-1])
    assert first["interrupted"] and 1 <= first["files"] < 6, first
    rc, second = verify(m.backing)
    assert rc == 0 and second["resumed"], second
    # what the first run checked is not read again
    assert second["bytes"] <= 12 * 1024 * 1024 - first["files"] * 2 * 1024 * 1024 + 1024, \
        (first, second)
    rc, third = verify(m.backing)
    assert rc == 0 and not third["resumed"] and third["bytes"] == 12 * 1024 * 1024, third


def test_background_scrub_finds_damage(mount_factory, tmp_path):
    m = mount_factory().start()
    with open(os.path.join(m.mnt, "x.bin"), "wb") as f:
        f.write(os.urandom(1 << 20))
    m.wait_idle()
    m.stop()
    flip(os.path.join(m.backing, "x.bin"), 500)
    m = mount_factory("scrub_days=30", env={"HEVCFS_SCRUB_NOW": "1"}).start()
    deadline = time.time() + 60
    while time.time() < deadline and m.status()["damaged"] == 0:
        time.sleep(0.2)
    assert m.status()["damaged"] == 1
    assert "damaged: x.bin: checksum mismatch" in open(
        os.path.join(m.backing, ".hevcfs", "log")).read()


def source_tree(root, n_photos=8):
    """A camera folder: photos, a clip, a document, a subfolder."""
    os.makedirs(os.path.join(root, "DCIM", "100"))
    files = {}
    for i in range(n_photos):
        rel = os.path.join("DCIM", "100", f"IMG_{i:04d}.JPG")
        make_jpeg(os.path.join(root, rel), 320, 240, seed=20 + i)
        files[rel] = open(os.path.join(root, rel), "rb").read()
    rel = os.path.join("DCIM", "clip.avi")
    make_clip(os.path.join(root, rel), 1)
    files[rel] = open(os.path.join(root, rel), "rb").read()
    rel = os.path.join("DCIM", "notes.txt")
    with open(os.path.join(root, rel), "wb") as f:
        f.write(b"a note\n" * 100)
    files[rel] = open(os.path.join(root, rel), "rb").read()
    for rel in files:
        os.utime(os.path.join(root, rel), ns=(1_500_000_000_000_000_000,
                                              1_500_000_000_123_456_789))
    return files


def check_mounted_tree(m, srcroot, files):
    """Every file of files reads through the mount: views like their
    originals, kept files byte for byte, mtimes kept."""
    for rel, data in files.items():
        p = os.path.join(m.mnt, rel)
        assert os.stat(p).st_mtime_ns == 1_500_000_000_123_456_789, rel
        got = open(p, "rb").read()
        if rel.endswith(".JPG"):
            assert ssim_y(p, os.path.join(srcroot, rel)) >= 0.985, rel
        elif rel.endswith(".txt"):
            assert got == data, rel
        else:
            assert len(got) > 0


def test_import_interrupted_and_resumed(dirs, mount_factory, tmp_path):
    backing = dirs[0]
    srcroot = str(tmp_path / "card")
    files = source_tree(srcroot, 10)
    cmd = [BIN, "import", os.path.join(srcroot, "DCIM"), backing, "--jobs", "1"]
    # the first run is stopped once it has archived a few files
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in p.stdout:
        if line.startswith("archived:"):
            seen.append(line)
        if len(seen) == 3:
            p.send_signal(signal.SIGINT)
            break
    out, err = p.communicate(timeout=120)
    first = seen + out.splitlines()
    assert p.returncode == 130, (p.returncode, first, err)
    done1 = {l.split(":")[1].split(" (")[0].strip() for l in first
             if l.startswith(("archived:", "kept:"))}
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    done2 = {l.split(":")[1].split(" (")[0].strip() for l in p.stdout.splitlines()
             if l.startswith(("archived:", "kept:"))}
    assert done1 and not done1 & done2, (done1, done2)
    assert done1 | done2 == {f"DCIM/{os.path.relpath(r, 'DCIM')}" for r in files}, \
        (done1, done2)
    assert not os.listdir(os.path.join(backing, ".hevcfs", "work"))
    m = mount_factory(OPTS).start()
    st = m.status()
    assert st["archived"] == 11 and st["kept"] == 1 and st["pending"] == 0, st
    check_mounted_tree(m, srcroot, files)


def test_import_shards_then_rebuild(dirs, mount_factory, tmp_path):
    backing = dirs[0]
    srcroot = str(tmp_path / "card")
    files = source_tree(srcroot, 10)
    procs = [subprocess.Popen([BIN, "import", os.path.join(srcroot, "DCIM"), backing,
                               "--shard", f"{k}/2", "--jobs", "1"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for k in (1, 2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, out + err
    lines = [o[0].splitlines() for o in outs]
    share = [{l.split(":")[1].split(" (")[0].strip() for l in ls
              if l.startswith(("archived:", "kept:"))} for ls in lines]
    assert share[0] and share[1] and not share[0] & share[1], share
    assert len(share[0] | share[1]) == len(files)
    # the shards left the index alone; a rebuild makes it from the tree
    assert not os.path.exists(os.path.join(backing, ".hevcfs", "index"))
    hevcfs("fsck", "--rebuild", backing)
    m = mount_factory(OPTS).start()
    m.wait_idle()
    st = m.status()
    assert st["archived"] == 11 and st["kept"] == 1 and st["damaged"] == 0, st
    check_mounted_tree(m, srcroot, files)


def test_export_matches_originals(mount_factory, tmp_path):
    m = mount_factory(OPTS).start()
    srcroot = str(tmp_path / "card")
    files = source_tree(srcroot, 3)
    subprocess.run(["cp", "-a", os.path.join(srcroot, "DCIM"), m.mnt], check=True)
    os.chmod(os.path.join(m.mnt, "DCIM", "notes.txt"), 0o640)
    os.setxattr(os.path.join(m.mnt, "DCIM", "notes.txt"), "user.tag", b"red")
    os.utime(os.path.join(m.mnt, "DCIM", "notes.txt"),
             ns=(1_500_000_000_000_000_000, 1_500_000_000_123_456_789))
    m.wait_idle()
    assert m.status()["archived"] == 4
    m.stop()
    out = str(tmp_path / "out")
    p = hevcfs("export", m.backing, out)
    assert "5 copied" in p.stdout, p.stdout  # 3 photos, a clip, a note
    for rel, data in files.items():
        e = os.path.join(out, rel)
        s = os.stat(e)
        assert s.st_mtime_ns == 1_500_000_000_123_456_789, rel
        if rel.endswith(".JPG"):
            assert ssim_y(e, os.path.join(srcroot, rel)) >= 0.985
            assert open(e, "rb").read()[:2] == b"\xff\xd8"
        elif rel.endswith(".txt"):
            assert open(e, "rb").read() == data
            assert s.st_mode & 0o777 == 0o640
            assert os.getxattr(e, "user.tag") == b"red"
        else:
            assert open(e, "rb").read() == open(
                os.path.join(m.backing, rel + ".mp4"), "rb").read()
    assert os.stat(os.path.join(out, "DCIM")).st_mtime_ns == \
        os.stat(os.path.join(m.backing, "DCIM")).st_mtime_ns
    # again: nothing to do; native: the stored files as they are
    p = hevcfs("export", m.backing, out)
    assert "0 copied" in p.stdout and "5 already there" in p.stdout, p.stdout
    nat = str(tmp_path / "native")
    hevcfs("export", m.backing, nat, "--view=native")
    for d, _, fs in os.walk(nat):
        for n in fs:
            rel = os.path.relpath(os.path.join(d, n), nat)
            assert open(os.path.join(d, n), "rb").read() == open(
                os.path.join(m.backing, rel), "rb").read()
    # a damaged stored file is reported, not written
    flip(os.path.join(m.backing, "DCIM", "100", "IMG_0000.JPG.heic"), 3000)
    bad = str(tmp_path / "bad")
    p = hevcfs("export", m.backing, bad, check=False)
    assert p.returncode == 1 and "DAMAGED: DCIM/100/IMG_0000.JPG" in p.stdout, p.stdout
    assert not os.path.exists(os.path.join(bad, "DCIM", "100", "IMG_0000.JPG"))


def test_state_dir_for_network_backing(tmp_path):
    """A BACKING on a FUSE filesystem (here, inside another hevcfs mount) is
    refused unless its state lives on a local directory; the two are paired."""
    os.makedirs(str(tmp_path / "outer"))
    outer = Mount(str(tmp_path / "outer"), str(tmp_path / "outer-mnt")).start()
    try:
        backing = os.path.join(outer.mnt, "store")
        os.mkdir(backing)
        mnt = str(tmp_path / "mnt")
        refused = Mount(backing, mnt).start(expect_fail=True)
        assert refused.proc.wait(timeout=30) != 0
        assert "network filesystem (FUSE)" in refused.log() and "state=DIR" in refused.log()
        assert not os.path.ismount(mnt)
        state = str(tmp_path / "state")
        m = Mount(backing, mnt, opts="state=" + state).start()
        try:
            make_jpeg(os.path.join(m.mnt, "a.jpg"), 320, 240, seed=9)
            p = hevcfs("wait", backing, "--state", state, "--timeout", "120", check=False,
                       timeout=200)
            assert p.returncode == 0, p.stderr
            st = json.loads(hevcfs("status", backing, "--state", state, "--json").stdout)
            assert st["archived"] == 1 and st["mounted"], st
            assert os.path.isdir(os.path.join(state, "index"))
            assert not os.path.exists(os.path.join(backing, ".hevcfs", "index"))
        finally:
            m.stop()
        # without the option, or with another BACKING's state: refused
        p = hevcfs("status", backing, check=False)
        assert p.returncode != 0 and "state" in p.stderr, p.stderr
        other = str(tmp_path / "other")
        os.mkdir(other)
        p = hevcfs("fsck", other, "--state", state, check=False)
        assert p.returncode != 0 and "another backing directory" in p.stderr, p.stderr
        rc, out = verify(backing, "--state", state)
        assert rc == 0 and out["files"] == 1, out
    finally:
        outer.stop()


def test_saved_options_and_status_by_kind(mount_factory, tmp_path):
    m = mount_factory("crf=20,x265_params=rc-lookahead=5").start()
    fill(m.mnt, tmp_path)
    with open(os.path.join(m.mnt, "tiny.jpg"), "wb") as f:
        f.write(make_jpeg(None, 16, 16, seed=1, quality=50))
    m.wait_idle()
    st = m.status()
    assert st["by_kind"]["photo"]["files"] == 2 and st["by_kind"]["photo"]["archived"] == 1
    assert st["by_kind"]["video"]["archived"] == 1 and st["by_kind"]["other"]["kept"] == 1
    assert st["bytes_saved"] > 0
    reasons = {r["reason"]: r["files"] for r in st["kept_by_reason"]}
    assert reasons.get("not a photo or video") == 1, reasons
    assert sum(reasons.values()) == st["kept"]
    text = hevcfs("status", m.backing).stdout
    assert "kept, by reason:" in text and "saved" in text
    m.stop()
    cfg = hevcfs("config", m.backing).stdout.split()
    # the mount's own settle_ms and workers come from the tests' defaults
    assert "crf=20" in cfg and "x265_params=rc-lookahead=5" in cfg, cfg
    hevcfs("config", m.backing, "crf=26")
    cfg = hevcfs("config", m.backing).stdout.split()
    assert "crf=26" in cfg and "crf=20" not in cfg, cfg
    p = hevcfs("config", m.backing, "crf=99", check=False)
    assert p.returncode != 0 and "crf=99" in p.stderr
    # a later mount's options apply to it alone
    m = mount_factory("view_quality=80").start()
    m.stop()
    assert "view_quality=80" not in hevcfs("config", m.backing).stdout
