"""Memory flat in the number of files: the daemon's own memory (RssAnon: no
pages of the mapped index) after ten times the files is at most 1.5 times
what it was. The figures from 10,000 to 1,000,000 files are the scale group
of `make bench` (HEVCFS_BENCH_SCALE=1); this is their CI-sized form, with
the nodes the kernel may keep looked up (max_nodes) scaled down as the
files are: past that many, the kernel is asked to forget the oldest."""
import os

import pytest

from conftest import BIN, hevcfs, make_jpeg

FEW, MANY, PER_DIR = 2000, 20000, 1000
MAX_NODES = 1000
MAX_GROWTH = 1.5


def sanitized():
    """A sanitizer build keeps freed memory in quarantine and shadow: its
    resident set says nothing about the daemon's."""
    with open(BIN, "rb") as f:
        data = f.read()
    return b"__asan_init" in data or b"__tsan_init" in data


def rss_anon_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    raise AssertionError(f"no RssAnon for {pid}")


def make_files(root, start, end):
    for n in range(start, end):
        d = os.path.join(root, f"d{n // PER_DIR:03d}")
        if n % PER_DIR == 0:
            os.mkdir(d)
        with open(os.path.join(d, f"f{n:06d}.txt"), "wb") as f:
            f.write(b"%06d" % n)


@pytest.mark.skipif(sanitized(), reason="memory figures of a sanitizer build mean nothing; "
                    "the release stage runs this test")
def test_memory_flat_in_files(mount_factory):
    mount = mount_factory(f"max_nodes={MAX_NODES}").start()
    make_files(mount.mnt, 0, FEW)
    mount.wait_idle()
    few = rss_anon_kb(mount.proc.pid)
    make_files(mount.mnt, FEW, MANY)
    mount.wait_idle()
    assert mount.status()["files"] == MANY
    # every file listed and read once more: the kernel asks for each again
    seen = 0
    for d, _, files in os.walk(mount.mnt):
        for name in files:
            with open(os.path.join(d, name), "rb") as f:
                assert f.read() == name[1:7].encode()
            seen += 1
    assert seen == MANY
    many = rss_anon_kb(mount.proc.pid)
    assert many <= MAX_GROWTH * few, (few, many)
    assert hevcfs("status", mount.backing, "--json").returncode == 0
    mount.stop()


def test_queue_taken_in_by_batches(dirs, mount_factory):
    """A tree the index does not know (an fsck --rebuild queues every file
    of it) is taken in a batch at a time while the mount serves writes: a
    file written meanwhile and a queued file rewritten meanwhile come out
    as written, every queued file is settled, nothing is left queued."""
    import json
    backing = dirs[0]
    n = 1500
    for i in range(n):
        d = os.path.join(backing, f"q{i // 500}")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"f{i:05d}.txt"), "w") as f:
            f.write(f"file {i}\n")
    make_jpeg(os.path.join(backing, "q0", "p.jpg"), seed=61)
    hevcfs("fsck", backing, "--rebuild")
    st = json.loads(hevcfs("status", backing, "--json").stdout)
    assert st["files"] == n + 1 and st["staged"] + st["pending"] == n + 1, st
    m = mount_factory().start()
    with open(os.path.join(m.mnt, "new.txt"), "w") as f:
        f.write("written while the queue is taken in\n")
    with open(os.path.join(m.mnt, "q2", "f01499.txt"), "w") as f:
        f.write("rewritten\n")
    m.wait_idle(timeout=300)
    st = m.status()
    assert (st["files"], st["kept"], st["archived"], st["queue"]) == (n + 2, n + 1, 1, 0), st
    assert open(os.path.join(m.mnt, "q2", "f01499.txt")).read() == "rewritten\n"
    assert open(os.path.join(m.mnt, "q1", "f00700.txt")).read() == "file 700\n"
    assert "taking in the files the index has queued" in m.log()
    m.stop()
