"""Faults from below: a stored file or a directory the daemon cannot read
fails that file or directory only, with a log line naming it, and the rest
of the mount keeps working. The daemon runs here without CAP_DAC_OVERRIDE
and CAP_DAC_READ_SEARCH, so modes bind it as they bind any user."""
import os
import shutil

import pytest

from conftest import make_jpeg

NO_DAC = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]


def read(p):
    with open(p, "rb") as f:
        return f.read()


def empty_view_cache(backing):
    cache = os.path.join(backing, ".hevcfs", "cache")
    for n in os.listdir(cache):
        os.unlink(os.path.join(cache, n))


def test_unreadable_stored_files(mount_factory):
    if os.geteuid() != 0:
        pytest.skip("needs root to run the daemon without its DAC capabilities")
    m = mount_factory(wrap=NO_DAC).start()
    make_jpeg(os.path.join(m.mnt, "a.jpg"), seed=40)
    make_jpeg(os.path.join(m.mnt, "b.jpg"), seed=41)
    for n in ("t.txt", "u.txt"):
        with open(os.path.join(m.mnt, n), "w") as f:
            f.write(n * 100)
    m.wait_idle()
    assert m.status()["archived"] == 2
    view_b = read(os.path.join(m.mnt, "b.jpg"))
    m.stop()
    empty_view_cache(m.backing)
    os.chmod(os.path.join(m.backing, "a.jpg.heic"), 0)
    os.chmod(os.path.join(m.backing, "u.txt"), 0)

    m = mount_factory(wrap=NO_DAC).start()
    with pytest.raises(OSError) as e:
        read(os.path.join(m.mnt, "a.jpg"))
    assert e.value.errno in (13, 5), e.value  # EACCES or EIO, never bytes
    with pytest.raises(PermissionError):
        read(os.path.join(m.mnt, "u.txt"))
    # the rest is served
    assert read(os.path.join(m.mnt, "b.jpg")) == view_b
    assert read(os.path.join(m.mnt, "t.txt")) == b"t.txt" * 100
    assert sorted(os.listdir(m.mnt)) == ["a.jpg", "b.jpg", "t.txt", "u.txt"]
    log = m.log()
    assert "a.jpg: cannot open its stored file: Permission denied" in log, log
    assert "u.txt: cannot open: Permission denied" in log, log
    # not damage: readable again, it reads again, and nothing was marked
    os.chmod(os.path.join(m.backing, "a.jpg.heic"), 0o644)
    os.chmod(os.path.join(m.backing, "u.txt"), 0o644)
    assert read(os.path.join(m.mnt, "a.jpg"))[:3] == b"\xff\xd8\xff"
    assert read(os.path.join(m.mnt, "u.txt")) == b"u.txt" * 100
    assert m.status()["damaged"] == 0
    m.stop()


def test_unreadable_directory(mount_factory):
    if os.geteuid() != 0:
        pytest.skip("needs root to run the daemon without its DAC capabilities")
    m = mount_factory(wrap=NO_DAC).start()
    for d in ("d1", "d2"):
        os.mkdir(os.path.join(m.mnt, d))
        make_jpeg(os.path.join(m.mnt, d, "p.jpg"), seed=42)
        with open(os.path.join(m.mnt, d, "t.txt"), "w") as f:
            f.write(d)
    m.wait_idle()
    os.chmod(os.path.join(m.backing, "d1"), 0)
    try:
        with pytest.raises(PermissionError):
            os.listdir(os.path.join(m.mnt, "d1"))
        assert sorted(os.listdir(os.path.join(m.mnt, "d2"))) == ["p.jpg", "t.txt"]
        assert read(os.path.join(m.mnt, "d2", "t.txt")) == b"d2"
        assert read(os.path.join(m.mnt, "d2", "p.jpg"))[:3] == b"\xff\xd8\xff"
        # new files beside it are kept and archived as ever
        make_jpeg(os.path.join(m.mnt, "d2", "q.jpg"), seed=43)
        m.wait_idle()
        assert os.path.exists(os.path.join(m.backing, "d2", "q.jpg.heic"))
    finally:
        os.chmod(os.path.join(m.backing, "d1"), 0o755)
    assert sorted(os.listdir(os.path.join(m.mnt, "d1"))) == ["p.jpg", "t.txt"]
    m.stop()
