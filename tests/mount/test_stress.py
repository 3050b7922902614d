"""Races: several threads create, write, read, rename, truncate and unlink
photos and plain files in shared directories while the workers archive them,
and every answer is checked against a model of each file's bytes.

Each thread owns its names (so its model is exact) but shares the directories,
the daemon's locks, its queue and its workers with the others. A photo the
workers archived reads back as its view: the original's size and layout, a
JPEG, never the stored HEIC. Knobs: HEVCFS_STRESS_SEED, HEVCFS_STRESS_OPS
(per thread), HEVCFS_STRESS_THREADS.
"""
import errno
import os
import random
import threading
import time

from conftest import hevcfs, make_jpeg

SEED = int(os.environ.get("HEVCFS_STRESS_SEED", "1"))
OPS = int(os.environ.get("HEVCFS_STRESS_OPS", "400"))
THREADS = int(os.environ.get("HEVCFS_STRESS_THREADS", "4"))
DIRS = ("s0", "s1", "s2")


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def fd_names(pid):
    """What the daemon's descriptors point at, but for libfuse's splice
    pipes: each of its worker threads holds both ends of one, and it starts
    threads as the load asks."""
    out = []
    for n in os.listdir(f"/proc/{pid}/fd"):
        try:
            out.append(os.readlink(f"/proc/{pid}/fd/{n}"))
        except OSError:
            pass
    return [t for t in out if not (t.startswith("pipe:") and out.count(t) == 2)]


class Model:
    """What one thread wrote: logical path -> (bytes, photo?)."""

    def __init__(self):
        self.files = {}

    def check(self, path, data, why):
        want, photo = self.files[path]
        if data == want:
            return
        # an archived photo reads as its view: a JPEG of the original's size
        assert photo, f"{why} {path}: {len(data)} bytes read, {len(want)} written, and it is no photo"
        assert data[:2] == b"\xff\xd8", f"{why} {path}: not a JPEG view (starts {data[:12]!r})"
        assert b"ftyp" not in data[:16], f"{why} {path}: the stored HEIC was served"
        assert len(data) == len(want), f"{why} {path}: view of {len(data)} bytes for a {len(want)}-byte photo"


def keep_log(m):
    """The daemon's whole log beside the backing directory (pytest keeps the
    last runs' directories): its path, for a failure's message."""
    path = os.path.join(os.path.dirname(m.backing), "daemon.log")
    with open(path, "w") as f:
        f.write(m.log())
    return path


def worker(mnt, t, photos, failures):
    rnd = random.Random(SEED * 1000 + t)
    model = Model()
    serial = 0

    def fresh_name():
        nonlocal serial
        serial += 1
        ext = rnd.choice((".JPG", ".jpg", ".bin", ".txt"))
        return os.path.join(rnd.choice(DIRS), f"t{t}-{serial}{ext}")

    def full(rel):
        return os.path.join(mnt, rel)

    def pick():
        return rnd.choice(sorted(model.files)) if model.files else None

    def read_all(fd):
        out = bytearray()
        while True:
            b = os.pread(fd, 1 << 20, len(out))
            if not b:
                return bytes(out)
            out += b

    i, op, rel = 0, "start", None
    try:
        for i in range(OPS):
            op = rnd.choices(
                ("create", "read", "stat", "rename", "unlink", "patch", "truncate", "list", "append"),
                (24, 20, 10, 10, 6, 10, 8, 6, 6))[0]
            rel = pick()
            if op == "create" or rel is None:
                rel = fresh_name()
                photo = rel.lower().endswith(".jpg")
                data = rnd.choice(photos) if photo else rnd.randbytes(rnd.randrange(0, 40000))
                with open(full(rel), "wb") as f:
                    f.write(data)
                model.files[rel] = (data, photo)
            elif op == "read":
                with open(full(rel), "rb") as f:
                    model.check(rel, f.read(), f"op {i} read")
            elif op == "stat":
                st = os.stat(full(rel))
                want, photo = model.files[rel]
                assert st.st_size == len(want), \
                    f"op {i} stat {rel}: size {st.st_size}, {len(want)} written"
            elif op == "rename":
                dst = fresh_name()
                # a photo stays a photo: its model may be a view
                if model.files[rel][1] != dst.lower().endswith(".jpg"):
                    dst = os.path.splitext(dst)[0] + os.path.splitext(rel)[1]
                os.rename(full(rel), full(dst))
                model.files[dst] = model.files.pop(rel)
            elif op == "unlink":
                os.unlink(full(rel))
                del model.files[rel]
            elif op in ("patch", "append"):
                # the descriptor is open while it reads and writes, so an
                # archive cannot commit in between: what it reads is the base
                fd = os.open(full(rel), os.O_RDWR)
                try:
                    cur = read_all(fd)
                    model.check(rel, cur, f"op {i} {op} base")
                    if op == "append":
                        extra = rnd.randbytes(rnd.randrange(1, 3000))
                        os.pwrite(fd, extra, len(cur))
                        new = cur + extra
                    else:
                        off = rnd.randrange(0, len(cur) + 1)
                        extra = rnd.randbytes(rnd.randrange(1, 2000))
                        os.pwrite(fd, extra, off)
                        new = cur[:off] + extra + cur[off + len(extra):]
                    assert read_all(fd) == new, f"op {i} {op} {rel}: read after write"
                finally:
                    os.close(fd)
                # still a JPEG if its start was left alone: may be archived again
                model.files[rel] = (new, model.files[rel][1] and new[:2] == b"\xff\xd8")
            elif op == "truncate":
                fd = os.open(full(rel), os.O_RDONLY)
                try:
                    cur = read_all(fd)
                    model.check(rel, cur, f"op {i} truncate base")
                    n = rnd.randrange(0, len(cur) + 100)
                    os.truncate(full(rel), n)
                finally:
                    os.close(fd)
                new = cur[:n] + b"\0" * max(0, n - len(cur))
                model.files[rel] = (new, model.files[rel][1] and new[:2] == b"\xff\xd8")
                st = os.stat(full(rel))
                assert st.st_size == n, f"op {i} truncate {rel}: size {st.st_size}, want {n}"
            elif op == "list":
                d = rnd.choice(DIRS)
                seen = {n for n in os.listdir(os.path.join(mnt, d)) if n.startswith(f"t{t}-")}
                want = {os.path.basename(p) for p in model.files if os.path.dirname(p) == d}
                assert seen == want, f"op {i} list {d}: extra {seen - want}, missing {want - seen}"
    except AssertionError as e:
        failures.append(f"thread {t}: {e!r}")
    except OSError as e:
        failures.append(f"thread {t}: op {i} {op} {rel}: {e!r}")
    return model


def test_stress_many_writers_while_archiving(mount_factory):
    m = mount_factory().start()
    mnt = m.mnt
    for d in DIRS:
        os.mkdir(os.path.join(mnt, d))
    photos = [make_jpeg(None, 160 + 16 * k, 120 + 8 * k, seed=k) for k in range(4)]
    drop_caches()
    fds_before = fd_names(m.proc.pid)

    failures, models = [], [None] * THREADS

    def run(t):
        models[t] = worker(mnt, t, photos, failures)

    threads = [threading.Thread(target=run, args=(t,)) for t in range(THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert failures == [], "\n".join(failures) + "\nlog: " + keep_log(m)

    # nothing is staged forever, and every file reads as its model says
    w = hevcfs("wait", m.backing, "--timeout", "60", check=False, timeout=120)
    if w.returncode != 0:
        busy = [ln for ln in hevcfs("status", m.backing, "--files").stdout.splitlines()
                if not ln.startswith(("kept", "archived"))]
        assert False, w.stderr + "\n".join(busy) + "\nlog: " + keep_log(m)
    drop_caches()
    everything = {}
    for mod in models:
        everything.update(mod.files)
    for d in DIRS:
        listed = set(os.listdir(os.path.join(mnt, d)))
        want = {os.path.basename(p) for p in everything if os.path.dirname(p) == d}
        assert listed == want, f"{d}: extra {listed - want}, missing {want - listed}"
    for mod in models:
        for rel in mod.files:
            with open(os.path.join(mnt, rel), "rb") as f:
                mod.check(rel, f.read(), "after wait")
    st = m.status()
    if st["files"] != len(everything):
        import json
        entries = json.loads(hevcfs("status", m.backing, "--files", "--json").stdout)["entries"]
        listed = {e["path"] for e in entries}
        missing = [p for p in everything if p not in listed and p + ".heic" not in listed]
        assert False, f"index has {st['files']} files, {len(everything)} written; " \
                      f"not in it: {missing}\nlog: {keep_log(m)}"
    # the kernel forgets the inodes it no longer caches (FORGET is sent
    # after the drop returns): then the daemon holds what it held before
    deadline = time.time() + 10
    while True:
        drop_caches()
        fds_after = fd_names(m.proc.pid)
        if len(fds_after) <= len(fds_before) or time.time() > deadline:
            break
        time.sleep(0.2)
    assert len(fds_after) <= len(fds_before), \
        f"descriptors: {sorted(fds_before)} before, {sorted(fds_after)} after"
    m.stop()
    # the index and the tree agree once it is unmounted
    fsck = hevcfs("fsck", m.backing, check=False)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    m2 = mount_factory().start()
    for mod in models:
        for rel in mod.files:
            with open(os.path.join(m2.mnt, rel), "rb") as f:
                mod.check(rel, f.read(), "after remount")
    m2.stop()


def test_stress_rename_over_while_archiving(mount_factory):
    """Threads rename photos over each other's targets in one directory while
    they are archived: every rename either happens whole or fails cleanly,
    and what is left is one of the photos, whole."""
    m = mount_factory().start()
    mnt = m.mnt
    photos = [make_jpeg(None, 160 + 16 * k, 120 + 8 * k, seed=10 + k) for k in range(4)]
    failures = []

    def run(t):
        rnd = random.Random(SEED * 77 + t)
        try:
            for i in range(OPS // 4):
                src = os.path.join(mnt, f"src{t}-{i}.jpg")
                with open(src, "wb") as f:
                    f.write(photos[t % len(photos)])
                dst = os.path.join(mnt, f"dst{rnd.randrange(3)}.jpg")
                os.rename(src, dst)
        except OSError as e:
            if e.errno != errno.ENOENT:
                failures.append(f"thread {t}: {e!r}")

    threads = [threading.Thread(target=run, args=(t,)) for t in range(THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert failures == [], "\n".join(failures)
    m.wait_idle(timeout=60)
    names = sorted(os.listdir(mnt))
    assert names == ["dst0.jpg", "dst1.jpg", "dst2.jpg"], names
    for n in names:
        with open(os.path.join(mnt, n), "rb") as f:
            data = f.read()
        assert data[:2] == b"\xff\xd8" and b"ftyp" not in data[:16], n
        assert len(data) in {len(p) for p in photos}, (n, len(data))
    assert m.status()["files"] == 3
    m.stop()
    fsck = hevcfs("fsck", m.backing, check=False)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
