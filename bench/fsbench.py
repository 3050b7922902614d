#!/usr/bin/env python3
"""Filesystem figures: sequential write and read of a large file and
create/stat/unlink of many small files, through a hevcfs mount and directly
on its backing directory, in one run. Prints MB/s, ops/s and the ratios."""
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.path.abspath(os.environ.get("HEVCFS_BIN", os.path.join(HERE, "..", "hevcfs")))
SIZE = int(os.environ.get("BENCH_BIG_MB", "1024")) << 20
NSMALL = int(os.environ.get("BENCH_SMALL", "10000"))
CHUNK = 1 << 20


def drop_caches():
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        pass


def seq_write(path):
    buf = os.urandom(CHUNK)
    t = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    for _ in range(SIZE // CHUNK):
        os.write(fd, buf)
    os.fsync(fd)
    os.close(fd)
    return SIZE / (time.perf_counter() - t) / 1e6


def seq_read(path):
    drop_caches()
    buf = bytearray(CHUNK)
    t = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    total = 0
    while n := os.readv(fd, [buf]):
        total += n
    os.close(fd)
    assert total == SIZE
    return SIZE / (time.perf_counter() - t) / 1e6


def small_files(d):
    os.makedirs(d, exist_ok=True)
    names = [os.path.join(d, f"f{i:05d}") for i in range(NSMALL)]
    data = b"x" * 100
    out = {}
    t = time.perf_counter()
    for n in names:
        fd = os.open(n, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, data)
        os.close(fd)
    out["create"] = NSMALL / (time.perf_counter() - t)
    t = time.perf_counter()
    for n in names:
        os.stat(n)
    out["stat"] = NSMALL / (time.perf_counter() - t)
    t = time.perf_counter()
    for n in names:
        os.unlink(n)
    out["unlink"] = NSMALL / (time.perf_counter() - t)
    return out


def main():
    work = tempfile.mkdtemp(prefix="hevcfs-bench-", dir=os.environ.get("BENCH_DIR", "/var/tmp"))
    backing, mnt = os.path.join(work, "backing"), os.path.join(work, "mnt")
    os.mkdir(backing)
    os.mkdir(mnt)
    subprocess.run([BIN, backing, mnt, "-o", os.environ.get("BENCH_MOUNT_OPTS", "settle_ms=1000")], check=True)
    try:
        runs = {"direct": [], "mount": []}
        reps = int(os.environ.get("BENCH_REPS", "3"))
        for rep in range(reps):  # interleaved, medians reported
            for label, root in (("direct", os.path.join(backing, "d")),
                                ("mount", os.path.join(mnt, "m"))):
                os.makedirs(root, exist_ok=True)
                big = os.path.join(root, "big")
                r = {"write": seq_write(big), "read": seq_read(big)}
                os.unlink(big)
                subprocess.run([BIN, "wait", backing, "--timeout", "600"], check=True)
                r.update(small_files(os.path.join(root, "small")))
                subprocess.run([BIN, "wait", backing, "--timeout", "600"], check=True)
                runs[label].append(r)
        med = lambda label, k: sorted(r[k] for r in runs[label])[len(runs[label]) // 2]
        print(f"{'':8} {'direct':>12} {'mount':>12} {'ratio':>7}")
        for k, unit in (("write", "MB/s"), ("read", "MB/s"), ("create", "op/s"), ("stat", "op/s"),
                        ("unlink", "op/s")):
            d, m = med("direct", k), med("mount", k)
            print(f"{k:8} {d:9.0f} {unit} {m:9.0f} {unit} {m / d:6.0%}")
        print(f"(medians of {reps} interleaved runs; big file {SIZE >> 20} MiB written with "
              f"fsync, read after dropping caches; {NSMALL} small files of 100 bytes "
              f"created, stat'ed, unlinked)")
    finally:
        subprocess.run(["fusermount3", "-u", mnt])
        time.sleep(0.5)
        subprocess.run(["rm", "-rf", work])


if __name__ == "__main__":
    sys.exit(main())
