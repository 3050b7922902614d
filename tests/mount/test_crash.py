"""Nothing written is lost: kill -9 of the daemon at every step of the
commit protocol and at random moments, and a full backing disk."""
import errno
import hashlib
import os
import random
import subprocess
import threading
import time

import pytest

from conftest import Mount, backing_files, hevcfs, make_jpeg, traces

COMMIT_POINTS = ["commit-intent", "commit-renamed", "commit-indexed", "commit-unlinked"]


def is_jpeg(data):
    return data[:3] == b"\xff\xd8\xff" and data.rstrip(b"\0")[-2:] == b"\xff\xd9"


def check_consistent(m, expect):
    """Every expected logical file is readable; plain files byte for byte,
    photos as a JPEG; the index counts exactly the files of the tree; no
    unfinished output is left behind."""
    for rel, data in expect.items():
        got = open(os.path.join(m.mnt, rel), "rb").read()
        if rel.endswith(".jpg"):
            assert is_jpeg(got), rel
            assert os.stat(os.path.join(m.mnt, rel)).st_size == len(got)
        else:
            assert got == data, rel
    names = set()
    for d, dn, fn in os.walk(m.mnt):
        names.update(os.path.relpath(os.path.join(d, n), m.mnt) for n in fn)
    assert names == set(expect), names ^ set(expect)
    st = m.status()
    assert st["files"] == len(expect), st
    assert st["staged"] == 0 and st["pending"] == 0 and st["queue"] == 0, st
    assert os.listdir(os.path.join(m.backing, ".hevcfs", "work")) == []
    # one backing file per logical file: never both original and archive
    assert len(backing_files(m.backing)) == len(expect)


@pytest.mark.parametrize("point", COMMIT_POINTS)
def test_kill_inside_commit(point, dirs, tmp_path):
    m = Mount(*dirs, env={"HEVCFS_CRASH_AT": point}).start()
    expect = {}
    os.makedirs(os.path.join(m.mnt, "cam"))
    for i in range(3):
        data = make_jpeg(str(tmp_path / f"p{i}.jpg"), 64, 48, seed=i)
        rel = f"cam/p{i}.jpg"
        with open(os.path.join(m.mnt, rel), "wb") as f:
            f.write(data)
        expect[rel] = data
    with open(os.path.join(m.mnt, "note.txt"), "wb") as f:
        f.write(b"plain")
    expect["note.txt"] = b"plain"
    try:
        m.proc.wait(timeout=120)  # the crash point kills it
    except subprocess.TimeoutExpired:
        log = m.log()
        m.kill9()
        pytest.fail(f"crash point {point} never reached:\n{log}")
    rc = m.proc.returncode
    m.kill9()
    assert rc == -9, m.log()
    # nothing can progress unmounted: wait says so at once
    p = hevcfs("wait", dirs[0], "--timeout", "30", check=False)
    assert p.returncode == 69 and "not mounted" in p.stderr, p
    m2 = Mount(*dirs).start()
    try:
        m2.wait_idle()
        check_consistent(m2, expect)
        assert m2.status()["archived"] == 3
    finally:
        m2.stop()


def test_kill_at_random_moments(dirs, tmp_path):
    """Writers and workers busy; SIGKILL at random times, several rounds.
    Every file whose close() returned must survive byte for byte."""
    rnd = random.Random(7)
    jpegs = [make_jpeg(str(tmp_path / f"r{i}.jpg"), seed=10 + i) for i in range(4)]
    expect = {}
    n = 0
    for rnd_round in range(6):
        m = Mount(*dirs).start()
        stop = threading.Event()

        def killer():
            time.sleep(rnd.uniform(0.05, 0.6))
            stop.set()
            m.proc.kill()

        t = threading.Thread(target=killer)
        t.start()
        written = 0
        while not stop.is_set() and written < 40:
            written += 1
            n += 1
            rel = f"f{n}.jpg" if n % 3 == 0 else f"f{n}.bin"
            data = jpegs[n % 4] if rel.endswith(".jpg") else os.urandom(rnd.randrange(1, 50000))
            try:
                with open(os.path.join(m.mnt, rel), "wb") as f:
                    f.write(data)
            except OSError:
                break
            expect[rel] = data
            time.sleep(0.01)
        t.join()
        m.proc.wait()
        m.kill9()
    m = Mount(*dirs).start()
    try:
        m.wait_idle()
        # a file being written when the daemon died may exist, partially:
        # it is not in expect; remove such extras before comparing
        for d, dn, fn in os.walk(m.mnt):
            for name in fn:
                rel = os.path.relpath(os.path.join(d, name), m.mnt)
                if rel not in expect:
                    os.unlink(os.path.join(m.mnt, rel))
        m.wait_idle()
        check_consistent(m, expect)
    finally:
        m.stop()


def test_kill_with_files_removed_while_open(dirs, tmp_path):
    """Files removed while open are gone after a kill -9 and remount, as
    on a local disk after a crash; everything else is there."""
    m = Mount(*dirs).start()
    jpeg = make_jpeg(str(tmp_path / "p.jpg"), seed=3)
    expect = {"keep.bin": os.urandom(30000), "photo.jpg": jpeg}
    for rel, data in expect.items():
        with open(os.path.join(m.mnt, rel), "wb") as f:
            f.write(data)
    m.wait_idle()
    fds, gone = [], []
    for i in range(3):
        p = os.path.join(m.mnt, f"tmp{i}")
        fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
        gone.append(os.urandom(5000))
        os.write(fd, gone[-1])
        os.unlink(p)
        fds.append(fd)
    # a rename over an open file leaves the old one open, nameless
    gone.append(os.urandom(3000))
    with open(os.path.join(m.mnt, "over"), "wb") as f:
        f.write(gone[-1])
    fds.append(os.open(os.path.join(m.mnt, "over"), os.O_RDONLY))
    with open(os.path.join(m.mnt, "new"), "wb") as f:
        f.write(b"second")
    os.rename(os.path.join(m.mnt, "new"), os.path.join(m.mnt, "over"))
    expect["over"] = b"second"
    for fd, data in zip(fds, gone):
        assert os.pread(fd, len(data), 0) == data
    m.kill9()
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
    m = Mount(*dirs).start()
    try:
        m.wait_idle()
        for data in gone:
            assert traces(m.backing, data[:64]) == []
        check_consistent(m, expect)
    finally:
        m.stop()


@pytest.fixture
def small_tmpfs(tmp_path):
    d = tmp_path / "small"
    d.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(d)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"cannot mount a tmpfs for the full-disk test: {r.stderr}")
        pytest.skip(f"cannot mount a tmpfs: {r.stderr}")
    yield str(d)
    subprocess.run(["umount", "-l", str(d)])


def test_full_disk(small_tmpfs, tmp_path):
    backing = os.path.join(small_tmpfs, "b")
    os.mkdir(backing)
    m = Mount(backing, str(tmp_path / "mnt")).start()
    try:
        kept = {}
        for i in range(5):
            data = os.urandom(1 << 20)
            with open(os.path.join(m.mnt, f"ok{i}"), "wb") as f:
                f.write(data)
            kept[f"ok{i}"] = data
        m.wait_idle()
        with pytest.raises(OSError) as e:
            with open(os.path.join(m.mnt, "huge"), "wb") as f:
                for _ in range(64):
                    f.write(os.urandom(1 << 20))
                    f.flush()
        assert e.value.errno == errno.ENOSPC
        for name, data in kept.items():
            assert open(os.path.join(m.mnt, name), "rb").read() == data
        os.unlink(os.path.join(m.mnt, "huge"))
        with open(os.path.join(m.mnt, "after"), "wb") as f:
            f.write(b"room again")
        m.wait_idle()
        assert open(os.path.join(m.mnt, "after"), "rb").read() == b"room again"
    finally:
        m.stop()
    m = Mount(backing, str(tmp_path / "mnt")).start()
    try:
        for name, data in kept.items():
            assert open(os.path.join(m.mnt, name), "rb").read() == data
    finally:
        m.stop()


def test_existing_tree_is_indexed_and_fsck(dirs, tmp_path):
    """A backing directory that already holds files: the first mount indexes
    them (photos get archived). After a kill, `hevcfs fsck` repairs offline."""
    os.makedirs(os.path.join(dirs[0], "old"))
    make_jpeg(os.path.join(dirs[0], "old", "photo.jpg"), seed=40)
    with open(os.path.join(dirs[0], "old", "notes.txt"), "w") as f:
        f.write("kept")
    m = Mount(*dirs).start()
    try:
        m.wait_idle()
        st = m.status()
        assert st["files"] == 2 and st["archived"] == 1 and st["kept"] == 1, st
        assert sorted(os.listdir(os.path.join(m.mnt, "old"))) == ["notes.txt", "photo.jpg"]
    finally:
        m.stop()
    m = Mount(*dirs, env={"HEVCFS_CRASH_AT": "commit-renamed"}).start()
    try:
        make_jpeg(os.path.join(m.mnt, "new.jpg"), seed=41)
        m.proc.wait(timeout=120)
    finally:
        m.kill9()  # (never left mounted, even when the crash point is not reached)
    p = hevcfs("fsck", dirs[0])
    assert "consistent" in p.stdout
    assert hevcfs("status", dirs[0], "--json").stdout.count('"files":3')
    m = Mount(*dirs).start()
    try:
        m.wait_idle()
        st = m.status()
        assert st["files"] == 3 and st["archived"] == 2, st
        assert sorted(backing_files(m.backing)) == ["new.jpg.heic", "old/notes.txt",
                                                    "old/photo.jpg.heic"]
    finally:
        m.stop()


def test_fsck_rebuild_from_the_tree_alone(dirs, tmp_path):
    """Lose .hevcfs entirely: `hevcfs fsck --rebuild` finds the archived
    photos and videos again; the mount shows the same files, same views."""
    import json
    import shutil
    m = Mount(*dirs, opts="preset=ultrafast,crf=18").start()
    try:
        make_jpeg(os.path.join(m.mnt, "p.jpg"), seed=50)
        subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i",
                        "testsrc2=size=160x120:rate=25", "-t", "1", "-c:v", "mjpeg", "-q:v", "2",
                        os.path.join(str(tmp_path), "v.avi")], check=True)
        shutil.copy(os.path.join(str(tmp_path), "v.avi"), os.path.join(m.mnt, "v.avi"))
        with open(os.path.join(m.mnt, "t.txt"), "w") as f:
            f.write("text")
        m.wait_idle()
        before = {e["path"]: e for e in json.loads(
            hevcfs("status", m.backing, "--files", "--json").stdout)["entries"]}
        view = open(os.path.join(m.mnt, "p.jpg"), "rb").read()
    finally:
        m.stop()
    assert before["p.jpg"]["state"] == before["v.avi"]["state"] == "archived", before
    shutil.rmtree(os.path.join(dirs[0], ".hevcfs"))
    hevcfs("fsck", dirs[0], "--rebuild")
    m = Mount(*dirs).start()
    try:
        m.wait_idle()
        after = {e["path"]: e for e in json.loads(
            hevcfs("status", m.backing, "--files", "--json").stdout)["entries"]}
        assert sorted(after) == ["p.jpg", "t.txt", "v.avi"]
        for k in ("p.jpg", "v.avi"):
            assert after[k]["state"] == "archived"
            assert after[k]["view_bytes"] == before[k]["view_bytes"]
        assert after["p.jpg"]["bytes_original"] == before["p.jpg"]["bytes_original"]
        assert after["t.txt"]["state"] == "kept"
        assert open(os.path.join(m.mnt, "p.jpg"), "rb").read() == view
        assert sorted(os.listdir(m.mnt)) == ["p.jpg", "t.txt", "v.avi"]
    finally:
        m.stop()


def _archive_two(dirs, tmp_path):
    """Mount dirs, write a photo (archived) and a text file (kept); return
    the views read back and the status entries."""
    import json
    m = Mount(*dirs).start()
    try:
        make_jpeg(os.path.join(m.mnt, "p.jpg"), seed=51)
        with open(os.path.join(m.mnt, "t.txt"), "w") as f:
            f.write("text")
        m.wait_idle()
        got = {n: open(os.path.join(m.mnt, n), "rb").read() for n in ("p.jpg", "t.txt")}
        st = {e["path"]: e for e in json.loads(
            hevcfs("status", m.backing, "--files", "--json").stdout)["entries"]}
    except BaseException:
        m.stop()
        raise
    assert st["p.jpg"]["state"] == "archived" and st["t.txt"]["state"] == "kept", st
    return m, got


def _same_after(dirs, got, needle, said=""):
    """Mount again: the same files, the same bytes, and the daemon (or said,
    what fsck printed) says why the index was rebuilt."""
    import json
    m = Mount(*dirs).start()
    try:
        m.wait_idle()
        assert sorted(os.listdir(m.mnt)) == ["p.jpg", "t.txt"]
        for n, data in got.items():
            assert open(os.path.join(m.mnt, n), "rb").read() == data, n
        st = json.loads(hevcfs("status", m.backing, "--json").stdout)
        assert st["files"] == 2 and st["archived"] == 1 and st["kept"] == 1, st
        assert st["damaged"] == 0 and st["staged"] == 0 and st["pending"] == 0, st
        assert needle in said + m.log(), said + m.log()
    finally:
        m.stop()


def test_index_of_a_copied_tree_is_rebuilt(dirs, tmp_path):
    """The index is keyed by inode numbers, which a copy of BACKING (cp -a,
    a restore from a backup) does not keep: the copy's mount finds its index
    names another tree and rebuilds it, so counts, views and checksums are
    the copy's own (a stale index would check each file against another's
    digests)."""
    import shutil
    m, got = _archive_two(dirs, tmp_path)
    m.stop()
    copy = os.path.join(str(tmp_path), "copy")
    shutil.copytree(dirs[0], copy, symlinks=True)
    shutil.rmtree(dirs[0])
    os.rename(copy, dirs[0])
    _same_after(dirs, got, "is not the tree its index was made on")


def test_mark_of_another_boot_rebuilds_a_torn_index(dirs, tmp_path):
    """A crash of the machine while mounted may leave the index (committed
    without a sync between sync points) torn. The mount's mark names the
    boot it was made in; a mark of another boot sets the index aside and
    rebuilds it from the tree, never reading the torn one (here: cut to half
    its size, which made LMDB fault)."""
    m, got = _archive_two(dirs, tmp_path)
    m.kill9()
    mark = os.path.join(dirs[0], ".hevcfs", "dirty")
    with open("/proc/sys/kernel/random/boot_id") as f:
        assert open(mark).read().strip() == f.read().strip()  # this boot's
    with open(mark, "w") as f:
        f.write("00000000-0000-0000-0000-000000000000")
    data = os.path.join(dirs[0], ".hevcfs", "index", "data.mdb")
    os.truncate(data, os.path.getsize(data) // 2)
    p = hevcfs("fsck", dirs[0])
    _same_after(dirs, got, "was mounted when the machine stopped", p.stdout + p.stderr)


def test_rebuild_settles_an_archive_beside_a_plain_file(dirs, tmp_path):
    """What a crash of the machine mid-commit can leave, rebuilt from the
    tree alone: an archive with, under its logical name, (p) the very
    original it was made of: the original goes; (q) that original but the
    archive damaged: the archive goes, the original stays byte for byte;
    (r) another file: it is the newer one, the archive goes."""
    import shutil
    m = Mount(*dirs).start()
    orig = {}
    try:
        for i, n in enumerate(("p.jpg", "q.jpg", "r.jpg")):
            orig[n] = make_jpeg(os.path.join(m.mnt, n), seed=70 + i)
        m.wait_idle()
    finally:
        m.stop()
    b = dirs[0]
    assert sorted(os.listdir(b)) == [".hevcfs", "p.jpg.heic", "q.jpg.heic", "r.jpg.heic"]
    for n in ("p.jpg", "q.jpg"):
        with open(os.path.join(b, n), "wb") as f:
            f.write(orig[n])
    newer = make_jpeg(None, seed=90)
    with open(os.path.join(b, "r.jpg"), "wb") as f:
        f.write(newer)
    q = os.path.join(b, "q.jpg.heic")
    data = bytearray(open(q, "rb").read())
    mid = len(data) // 2
    data[mid:mid + 64] = bytes(x ^ 0x5A for x in data[mid:mid + 64])
    with open(q, "wb") as f:
        f.write(data)
    shutil.rmtree(os.path.join(b, ".hevcfs"))
    hevcfs("fsck", b, "--rebuild")
    assert sorted(os.listdir(b)) == [".hevcfs", "p.jpg.heic", "q.jpg", "r.jpg"]
    assert open(os.path.join(b, "q.jpg"), "rb").read() == orig["q.jpg"]
    assert open(os.path.join(b, "r.jpg"), "rb").read() == newer
    m = Mount(*dirs).start()
    try:
        m.wait_idle()
        assert sorted(os.listdir(m.mnt)) == ["p.jpg", "q.jpg", "r.jpg"]
        assert is_jpeg(open(os.path.join(m.mnt, "p.jpg"), "rb").read())
        # q and r are archived again; their views come from whole files
        st = m.status()
        assert st["files"] == 3 and st["damaged"] == 0, st
    finally:
        m.stop()
