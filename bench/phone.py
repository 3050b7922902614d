#!/usr/bin/env python3
"""Phone library figures, in one run: a camera card of 12 MP phone photos as
phones write them (a Google motion photo, an MVIMG, a Samsung motion photo
with its SEF trailer, an Ultra HDR photo with its gain map, one with a gain
map and a motion clip, a trailing byte, 4 KiB of zero padding: each built by
tests/mount/phone.py per its published layout, around a real photo's
pixels), the corpus's phone JPEGs and its phones' HEICs.

  a) bytes: originals against what the backing tree stores, by kind of file;
  b) the first copy: `rsync -a` of the card into a mount, then the time until
     `hevcfs wait` returns;
  c) re-syncs of the same card: `rsync -a` (size and mtime), `rsync -a -c`
     (checksums: the views differ from the originals in their scans, so
     every archived photo is sent again, with the original's bytes), and
     `cp -a` over every file; for each the time, the files sent, the photos
     encoded again (the mount's log) and whether any stored file changed.

python3 stdlib only; needs ffmpeg, cjpeg and rsync. Environment: HEVCFS_BIN
(default ../hevcfs), HEVCFS_CORPUS (default ../../shared/corpus), BENCH_TMP
(default /var/tmp), BENCH_PHONE_SIZE (4032x3024), BENCH_PHONE_SEEDS (2: the
number of photos of each phone case).
"""
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import types

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.path.abspath(os.environ.get("HEVCFS_BIN", os.path.join(HERE, "..", "hevcfs")))
CORPUS = os.path.abspath(os.environ.get(
    "HEVCFS_CORPUS", os.path.join(HERE, "..", "..", "shared", "corpus")))
TMP_ROOT = os.environ.get("BENCH_TMP", "/var/tmp")
W, H = (int(v) for v in os.environ.get("BENCH_PHONE_SIZE", "4032x3024").split("x"))
SEEDS = int(os.environ.get("BENCH_PHONE_SEEDS", "2"))
WAIT_TIMEOUT = 3600
# a real photo's pixels for every generated primary (scaled, hue turned and
# grained by seed, so no two photos are alike)
SOURCE = os.path.join(CORPUS, "exif-samples", "jpg", "mobile", "jolla.jpg")

warnings = []


def warn(msg):
    warnings.append(msg)
    print(f"!!! {msg}", file=sys.stderr, flush=True)


def log(msg):
    print(f"[phone bench] {msg}", file=sys.stderr, flush=True)


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, **kw)


def photo_jpeg(path, width, height, seed=0, quality=95, **_):
    """What phone.camera_jpeg takes as a camera's picture: the corpus photo
    at width x height through ffmpeg, then libjpeg-turbo's cjpeg at quality
    (as the tests' make_jpeg does with its generated pixels)."""
    with tempfile.TemporaryDirectory() as d:
        ppm = os.path.join(d, "p.ppm")
        run(["ffmpeg", "-nostdin", "-v", "error", "-i", SOURCE, "-vf",
             f"scale={width}:{height}:flags=lanczos,hue=h={seed * 37 % 360},"
             f"noise=alls=3:allf=t+u:all_seed={seed + 1}", "-frames:v", "1", "-y", ppm])
        data = subprocess.run(["cjpeg", "-quality", str(quality), ppm], check=True,
                              stdout=subprocess.PIPE).stdout
    if path:
        with open(path, "wb") as f:
            f.write(data)
    return data


# The test suite's builders of phone files (tests/mount/phone.py) take their
# pictures from the suite's conftest; here they take photo_jpeg's, and the
# suite's conftest (which needs pytest) is not loaded.
sys.modules["conftest"] = types.SimpleNamespace(make_jpeg=photo_jpeg)
sys.path.insert(0, os.path.join(HERE, "..", "tests", "mount"))
import phone  # noqa: E402


def build_card(card):
    """The card: {name: kind}, kind being the phone case or "corpus"."""
    kinds = {}
    for c in phone.cases():
        for s in range(SEEDS):
            stem, ext = os.path.splitext(c.filename)
            name = f"{stem}_{s}{ext}"
            c.build(os.path.join(card, name), seed=s, width=W, height=H)
            kinds[name] = c.name
    for sub, kind in (("exif-samples/jpg/mobile", "corpus JPEG"),
                      ("exif-samples/heic/mobile", "corpus HEIC"),
                      ("exif-samples/heic", "corpus HEIC")):
        src = os.path.join(CORPUS, sub)
        if not os.path.isdir(src):
            warn(f"corpus folder {src} absent: its files are NOT in the run")
            continue
        for n in sorted(os.listdir(src)):
            if os.path.isfile(os.path.join(src, n)):
                shutil.copy2(os.path.join(src, n), os.path.join(card, n))
                kinds[n] = kind
    return kinds


def snapshot(backing):
    """Every stored file: (inode, size, mtime, SHA-256) by path."""
    out = {}
    for d, dirs, files in os.walk(backing):
        if d == backing:
            dirs[:] = [x for x in dirs if x != ".hevcfs"]
        for f in files:
            p = os.path.join(d, f)
            st = os.stat(p)
            with open(p, "rb") as fh:
                h = hashlib.sha256(fh.read()).hexdigest()
            out[os.path.relpath(p, backing)] = (st.st_ino, st.st_size, st.st_mtime_ns, h)
    return out


def encodes(backing):
    """Archives made so far: one "archived:" line each in the mount's log
    (an archive put back or copied for the same bytes says "nothing
    encoded" instead)."""
    with open(os.path.join(backing, ".hevcfs", "log"), errors="replace") as f:
        return len(re.findall(r" info: archived: ", f.read()))


def rsync(*args):
    """(seconds, files sent, bytes sent) of one rsync."""
    t = time.perf_counter()
    p = run(["rsync", "--stats", *args])
    sec = time.perf_counter() - t
    n = int(re.search(r"Number of regular files transferred: ([\d,]+)", p.stdout)
            .group(1).replace(",", ""))
    b = int(re.search(r"Total transferred file size: ([\d,]+)", p.stdout)
            .group(1).replace(",", ""))
    return sec, n, b


def wait(backing):
    t = time.perf_counter()
    r = subprocess.run([BIN, "wait", backing, "--timeout", str(WAIT_TIMEOUT)])
    if r.returncode != 0:
        raise RuntimeError(f"hevcfs wait returned {r.returncode}")
    return time.perf_counter() - t


def main():
    if not os.access(BIN, os.X_OK):
        print(f"phone bench: {BIN} not built (make)", file=sys.stderr)
        return 2
    for tool in ("ffmpeg", "cjpeg", "rsync"):
        if not shutil.which(tool):
            print(f"phone bench: {tool} missing (sh tools/deps.sh)", file=sys.stderr)
            return 2
    if not os.path.isfile(SOURCE):
        print(f"phone bench: {SOURCE} absent (HEVCFS_CORPUS)", file=sys.stderr)
        return 2
    tmp = tempfile.mkdtemp(prefix="hevcfs-phonebench.", dir=TMP_ROOT)
    card, backing, mnt = (os.path.join(tmp, x) for x in ("card", "backing", "mnt"))
    for d in (card, backing, mnt):
        os.makedirs(d)
    mounted = False
    try:
        log(f"building the card: {len(phone.cases())} phone cases x {SEEDS} at {W}x{H}")
        kinds = build_card(card)
        orig = {n: os.path.getsize(os.path.join(card, n)) for n in kinds}
        log(f"{len(kinds)} files, {sum(orig.values()) / 1e6:.1f} MB")
        run([BIN, backing, mnt, "-o", "settle_ms=100"])
        mounted = True
        dest = os.path.join(mnt, "DCIM") + "/"
        rows = []

        sec, n, b = rsync("-a", card + "/", dest)
        arch = wait(backing)
        first = sec + arch
        rows.append(("first copy: rsync -a", sec, n, b, arch, encodes(backing), "-"))
        made = encodes(backing)
        st = json.loads(run([BIN, "status", backing, "--files", "--json"]).stdout)
        ents = {os.path.basename(e["path"]): e for e in st["entries"]}
        before = snapshot(backing)
        sizes_ok = all(os.stat(os.path.join(mnt, "DCIM", x)).st_size == orig[x] for x in kinds)

        for label, argv in (("re-sync: rsync -a", ["-a"]),
                            ("re-sync: rsync -a -c", ["-a", "-c"])):
            sec, n, b = rsync(*argv, card + "/", dest)
            arch = wait(backing)
            same = snapshot(backing) == before
            rows.append((label, sec, n, b, arch, encodes(backing) - made,
                         "none" if same else "SOME"))
        t = time.perf_counter()
        run(["sh", "-c", 'cp -a "$1"/. "$2"', "-", card, dest])
        sec = time.perf_counter() - t
        arch = wait(backing)
        after = snapshot(backing)
        # cp -a over an open file keeps the inode; only bytes matter here
        same = {k: v[1:] for k, v in after.items()} == {k: v[1:] for k, v in before.items()}
        rows.append(("re-sync: cp -a", sec, len(kinds), sum(orig.values()), arch,
                     encodes(backing) - made, "none" if same else "SOME"))

        # a) bytes by kind
        print(f"\nphone library: {len(kinds)} files, generated photos {W}x{H}, "
              f"load {os.getloadavg()[0]:.2f}")
        print(f"{'kind':<24} {'files':>5} {'archived':>8} {'original MB':>12} "
              f"{'stored MB':>10} {'saved':>6}  carried")
        by = {}
        for x, k in kinds.items():
            e = ents[x]
            g = by.setdefault(k, [0, 0, 0, 0, set()])
            g[0] += 1
            g[1] += e["state"] == "archived"
            g[2] += orig[x]
            g[3] += e["bytes_stored"]
            if e.get("carried"):
                g[4].add(e["carried"] if isinstance(e["carried"], str) else
                         ", ".join(e["carried"]))
            if e["state"] != "archived":
                g[4].add(f"kept: {e.get('reason', '?')}")
        tot = [0, 0, 0, 0]
        for k, (nf, na, o, s, what) in by.items():
            print(f"{k:<24} {nf:>5} {na:>8} {o / 1e6:>12.2f} {s / 1e6:>10.2f} "
                  f"{1 - s / o:>6.1%}  {'; '.join(sorted(what))}")
            tot = [tot[0] + nf, tot[1] + na, tot[2] + o, tot[3] + s]
        print(f"{'all':<24} {tot[0]:>5} {tot[1]:>8} {tot[2] / 1e6:>12.2f} "
              f"{tot[3] / 1e6:>10.2f} {1 - tot[3] / tot[2]:>6.1%}")
        print(f"every view the original's size at stat: {'yes' if sizes_ok else 'NO'}")

        # b, c) copies and re-syncs
        print(f"\n{'run':<22} {'copy s':>7} {'sent':>5} {'sent MB':>8} {'then wait s':>11} "
              f"{'encoded':>7} {'stored files changed':>21} {'÷ first':>8}")
        for label, sec, n, b, arch, enc, changed in rows:
            ratio = (sec + arch) / first
            print(f"{label:<22} {sec:>7.2f} {n:>5} {b / 1e6:>8.1f} {arch:>11.2f} {enc:>7} "
                  f"{changed:>21} {ratio:>8.3f}")
        print("(÷ first: copy + wait of the run over copy + wait of the first copy)")
        for w in warnings:
            print(f"!!! {w}")
        return 0 if sizes_ok and all(r[6] in ("-", "none") for r in rows) else 1
    finally:
        if mounted:
            for _ in range(50):
                if subprocess.run(["fusermount3", "-u", mnt],
                                  stderr=subprocess.DEVNULL).returncode == 0:
                    break
                time.sleep(0.2)
            else:
                subprocess.run(["fusermount3", "-u", "-z", mnt])
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
