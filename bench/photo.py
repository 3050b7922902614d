#!/usr/bin/env python3
"""Photo figures, in one run, on a folder of 8-12 MP photos (the corpus's phone
photos plus a few generated 4000x3000 JPEGs):

  a) photos per minute through a real mount (copy in, time until `hevcfs wait`
     returns), with the default workers and with workers=1;
  b) the same files through `convert -quality 62` + `exiftool -tagsFromFile`,
     two at a time (xargs -P2);
  c) stored/original bytes of both;
  d) min and median luma SSIM: hevcfs's HEIC (from status, and through
     heif-convert like the pipeline's), its JPEG view, the pipeline's HEIC;
  e) cold view latency of a 12 MP photo vs `heif-convert -q 92`;
  f) warm view read throughput vs a plain file of the same size.

python3 stdlib only; installs nothing. ImageMagick, exiftool, heif-convert and
ffmpeg are used when present: a missing one skips only its comparison, loudly.
Environment: HEVCFS_BIN (default ../hevcfs), HEVCFS_CORPUS (default
../../shared/corpus), BENCH_TMP (default /var/tmp), BENCH_GENERATED (3).
"""
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.path.abspath(os.environ.get("HEVCFS_BIN", os.path.join(HERE, "..", "hevcfs")))
CORPUS = os.path.abspath(os.environ.get(
    "HEVCFS_CORPUS", os.path.join(HERE, "..", "..", "shared", "corpus")))
TMP_ROOT = os.environ.get("BENCH_TMP", "/var/tmp")
NGEN = int(os.environ.get("BENCH_GENERATED", "3"))
WAIT_TIMEOUT = 3600
PIPE_QUALITY = 62   # the pipeline the product issue compares against
VIEW_QUALITY = 92   # hevcfs's default view quality, and heif-convert's -q
COLD_REPS = 3
WARM_MIN_SEC = 2.0
CHUNK = 1 << 20

# The aims of the product issue.
AIM_SPEEDUP = 2.0
AIM_SSIM = 0.99
AIM_RATIO = 0.40
AIM_COLD_S = 0.5
AIM_WARM = 0.80
# The aim of the performance issue: photos/min against the same pipeline.
AIM_PERF_SPEEDUP = 3.0
AIMS_FILE = os.environ.get("BENCH_AIMS", "")

# Generated photos, 12 MP: ffmpeg input arguments (a lavfi source, or a corpus
# phone photo scaled up with grain; a ffmpeg noise field alone makes 20 MB
# JPEGs no camera writes).
GEN_SOURCES = [
    ("gen_testsrc2.jpg", ["-f", "lavfi", "-i", "testsrc2=size=4000x3000"]),
    ("gen_mandelbrot.jpg", ["-f", "lavfi", "-i", "mandelbrot=size=4000x3000"]),
    ("gen_jolla_12mp.jpg", ["-i", "{corpus}/exif-samples/jpg/mobile/jolla.jpg", "-vf",
                            "scale=4000:3000:flags=lanczos,noise=alls=4:allf=u"]),
]

warnings = []


def warn(msg):
    """Say loudly that a part is skipped, and repeat it under the table."""
    warnings.append(msg)
    print(f"!!! {msg}", file=sys.stderr, flush=True)


def log(msg):
    print(f"[photo bench] {msg}", file=sys.stderr, flush=True)


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, **kw)


# ---- tools ----

def have_imagemagick():
    """A real ImageMagick convert that writes HEIC (not a stand-in)."""
    if not shutil.which("convert"):
        return False
    try:
        v = run(["convert", "-version"]).stdout
        f = run(["convert", "-list", "format"]).stdout
    except (subprocess.CalledProcessError, OSError):
        return False
    return "ImageMagick" in v and re.search(r"^\s*HEIC\*?\s+HEIC\s+rw", f, re.M) is not None


# ---- JPEG and PNG headers (enough to know sizes and orientation) ----

def jpeg_info(path):
    """(width, height, EXIF orientation) of a JPEG; orientation 1 when absent."""
    with open(path, "rb") as f:
        data = f.read(1 << 20)
    w = h = 0
    orient = 1
    p = 2
    while p + 4 <= len(data) and data[p] == 0xFF:
        m = data[p + 1]
        n = int.from_bytes(data[p + 2:p + 4], "big")
        seg = data[p + 4:p + 2 + n]
        if m == 0xE1 and seg[:6] == b"Exif\0\0" and orient == 1:
            orient = exif_orientation(seg[6:])
        if 0xC0 <= m <= 0xCF and m not in (0xC4, 0xC8, 0xCC):
            h = int.from_bytes(seg[1:3], "big")
            w = int.from_bytes(seg[3:5], "big")
            break
        p += 2 + n
    return w, h, orient


def exif_orientation(t):
    try:
        le = t[:2] == b"II"
        bo = "little" if le else "big"
        ifd = int.from_bytes(t[4:8], bo)
        count = int.from_bytes(t[ifd:ifd + 2], bo)
        for i in range(count):
            e = t[ifd + 2 + 12 * i:ifd + 14 + 12 * i]
            if int.from_bytes(e[0:2], bo) == 0x0112:
                v = int.from_bytes(e[8:10], bo)
                return v if 1 <= v <= 8 else 1
    except (IndexError, ValueError):
        pass
    return 1


def png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


# ---- measurements ----

def drop_caches():
    """Drop the page cache; False when not allowed (not root)."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def ssim_y(ref, dist, vf=None):
    """Luma SSIM of dist against ref with ffmpeg's ssim filter. Both go
    through format=gray: a JPEG's Y plane as it is, an RGB PNG's luma by
    BT.601, so JPEGs and PNGs are measured with one ruler. FFmpeg would turn
    a JPEG by its EXIF orientation: -noautorotate compares stored pixels."""
    pre = f"{vf}," if vf else ""
    graph = f"[0:v]format=gray[a];[1:v]{pre}format=gray[b];[a][b]ssim"
    r = subprocess.run(["ffmpeg", "-hide_banner", "-nostdin", "-noautorotate", "-i", ref,
                        "-noautorotate", "-i", dist,
                        "-lavfi", graph, "-f", "null", "-"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    m = re.search(r"SSIM Y:([0-9.]+)", r.stderr)
    if r.returncode != 0 or not m:
        raise RuntimeError(f"ffmpeg ssim {ref} {dist}: {r.stderr[-400:]}")
    return float(m.group(1))


def ssim_decoded(ref, png, orient):
    """SSIM of a decoded (display-oriented) PNG against the stored pixels of
    the original JPEG: heif-convert applies irot/imir, so undo whichever turn
    or flip matches best (the wrong ones score near 0)."""
    w, h, _ = jpeg_info(ref)
    pw, ph = png_size(png)
    if (pw, ph) == (w, h):
        cands = [None] + (["hflip", "vflip", "hflip,vflip"] if orient in (2, 3, 4) else [])
    elif (pw, ph) == (h, w):
        cands = ["transpose=cclock", "transpose=clock", "transpose=clock_flip",
                 "transpose=cclock_flip"]
    else:
        raise RuntimeError(f"{png} is {pw}x{ph}, {ref} is {w}x{h}")
    best = -1.0
    for vf in cands:
        best = max(best, ssim_y(ref, png, vf))
        if best > 0.9:
            break
    return best


def read_all(path):
    n = 0
    buf = bytearray(CHUNK)
    fd = os.open(path, os.O_RDONLY)
    try:
        while True:
            k = os.readv(fd, [buf])
            if not k:
                break
            n += k
    finally:
        os.close(fd)
    return n


def warm_rate(path):
    """MB/s of reading path whole, again and again for WARM_MIN_SEC, after one
    read to warm it."""
    size = read_all(path)
    reps = 0
    t = time.perf_counter()
    while True:
        assert read_all(path) == size
        reps += 1
        el = time.perf_counter() - t
        if el >= WARM_MIN_SEC and reps >= 5:
            return size * reps / el / 1e6, reps


# ---- the mount ----

class Mount:
    """A hevcfs mount in tmp; always unmounted by close()."""

    def __init__(self, tmp, tag, extra):
        self.backing = os.path.join(tmp, f"backing-{tag}")
        self.mnt = os.path.join(tmp, f"mnt-{tag}")
        os.makedirs(self.backing)
        os.makedirs(self.mnt)
        opts = "settle_ms=100" + ("," + extra if extra else "")
        run([BIN, self.backing, self.mnt, "-o", opts])
        self.mounted = True

    def wait(self):
        r = subprocess.run([BIN, "wait", self.backing, "--timeout", str(WAIT_TIMEOUT)])
        if r.returncode != 0:
            raise RuntimeError(f"hevcfs wait returned {r.returncode}")

    def status(self):
        return json.loads(run([BIN, "status", self.backing, "--files", "--json"]).stdout)

    def close(self):
        if not self.mounted:
            return
        for _ in range(50):
            if subprocess.run(["fusermount3", "-u", self.mnt],
                              stderr=subprocess.DEVNULL).returncode == 0:
                break
            time.sleep(0.2)
        else:
            subprocess.run(["fusermount3", "-u", "-z", self.mnt])
        self.mounted = False


def hevcfs_run(tmp, photos, tag, extra):
    """Copy photos into a new mount and time until wait returns. Returns
    (mount, seconds, status); the caller closes the mount."""
    m = Mount(tmp, tag, extra)
    try:
        log(f"hevcfs ({extra or 'default workers'}): copying {len(photos)} photos in")
        t = time.perf_counter()
        for p in photos:
            shutil.copyfile(p, os.path.join(m.mnt, os.path.basename(p)))
        m.wait()
        sec = time.perf_counter() - t
        st = m.status()
        log(f"hevcfs ({extra or 'default workers'}): {sec:.1f} s")
        return m, sec, st
    except BaseException:
        m.close()
        raise


def pipeline_run(tmp, photos, can_exif):
    """convert + exiftool on copies, two at a time. Returns (seconds, heics)."""
    d = os.path.join(tmp, "pipeline")
    os.makedirs(d)
    copies = []
    for p in photos:
        c = os.path.join(d, os.path.basename(p))
        shutil.copyfile(p, c)
        copies.append(c)
    step = f'convert -quality {PIPE_QUALITY} "$1" "$1.heic"'
    if can_exif:
        step += ' && exiftool -q -q -tagsFromFile "$1" -all:all -overwrite_original "$1.heic"'
    log(f"pipeline: {step} (xargs -P2)")
    t = time.perf_counter()
    subprocess.run(["xargs", "-0", "-n1", "-P2", "sh", "-c", step, "sh"],
                   input="\0".join(copies).encode(), check=True)
    sec = time.perf_counter() - t
    return sec, {os.path.basename(c): c + ".heic" for c in copies}


# ---- the corpus ----

def collect(tmp):
    """The photos: the corpus's phone photos and generated 12 MP ones."""
    d = os.path.join(tmp, "photos")
    os.makedirs(d)
    out = []
    for sub in ("exif-samples/jpg/mobile", "exif-samples/jpg/hdr"):
        src = os.path.join(CORPUS, sub)
        if not os.path.isdir(src):
            warn(f"corpus folder {src} absent: its photos are NOT in the run")
            continue
        for n in sorted(os.listdir(src)):
            if n.lower().endswith((".jpg", ".jpeg")):
                dst = os.path.join(d, n)
                shutil.copyfile(os.path.join(src, n), dst)
                out.append(dst)
    if not shutil.which("ffmpeg"):
        warn("ffmpeg missing: no generated photos, no SSIM of views or the pipeline")
        return out
    for name, args in GEN_SOURCES[:NGEN]:
        dst = os.path.join(d, name)
        args = [a.replace("{corpus}", CORPUS) for a in args]
        if "-i" in args and args[args.index("-i") - 1] != "lavfi" and \
                not os.path.exists(args[args.index("-i") + 1]):
            warn(f"{name} NOT generated: {args[args.index('-i') + 1]} absent")
            continue
        run(["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", *args,
             "-frames:v", "1", "-q:v", "2", "-y", dst])
        out.append(dst)
    return out


# ---- report ----

def mmed(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return "n/a"
    return f"{min(xs):.4f} / {statistics.median(xs):.4f}"


def perf_aim(verdict_, detail):
    """The performance issue's photo aim, for make bench's closing lines."""
    if AIMS_FILE:
        with open(AIMS_FILE, "a") as f:
            f.write(f"photos >= {AIM_PERF_SPEEDUP:g}x the convert + exiftool pipeline"
                    f"\t{verdict_}\t{detail}\n")


def verdict(ok):
    return "MET" if ok else "NOT MET"


def main():
    if not os.access(BIN, os.X_OK):
        print(f"photo bench: {BIN} not built (make)", file=sys.stderr)
        return 2
    load0 = run(["uptime"]).stdout.strip()
    ncpu = os.cpu_count()
    has_im = have_imagemagick()
    has_exif = shutil.which("exiftool") is not None
    has_heifc = shutil.which("heif-convert") is not None
    has_ff = shutil.which("ffmpeg") is not None
    if not has_im:
        warn("ImageMagick convert with HEIC missing (apt-get install imagemagick): "
             "pipeline comparison (b, c, d) SKIPPED")
    if not has_exif:
        warn("exiftool missing (apt-get install libimage-exiftool-perl): pipeline runs "
             "WITHOUT its metadata step, so its time is flattered")
    if not has_heifc:
        warn("heif-convert missing (apt-get install libheif-examples): pipeline SSIM "
             "and the heif-convert latency SKIPPED")

    tmp = tempfile.mkdtemp(prefix="hevcfs-photobench.", dir=TMP_ROOT)
    mounts = []
    R = {}
    try:
        photos = collect(tmp)
        if not photos:
            print("photo bench: no photos", file=sys.stderr)
            return 2
        info = {os.path.basename(p): jpeg_info(p) for p in photos}
        orig = {os.path.basename(p): os.path.getsize(p) for p in photos}
        total_orig = sum(orig.values())
        log(f"{len(photos)} photos, {total_orig / 1e6:.1f} MB: " +
            ", ".join(f"{n} {w}x{h}" for n, (w, h, _) in info.items()))

        # (a) workers=1 first and unmounted; then the default, kept for d, e, f
        m1, sec1, st1 = hevcfs_run(tmp, photos, "w1", "workers=1")
        m1.close()
        md, secd, std = hevcfs_run(tmp, photos, "wd", "")
        mounts.append(md)
        ents = {e["path"]: e for e in std["entries"]}
        arch = [n for n, e in ents.items() if e["state"] == "archived"]
        kept = {n: e["reason"] for n, e in ents.items() if e["state"] != "archived"}
        R["hv_ppm_d"] = len(photos) / secd * 60
        R["hv_ppm_1"] = len(photos) / sec1 * 60
        R["hv_bytes"] = sum(e["bytes_stored"] for e in ents.values())
        R["hv_ssim"] = [ents[n]["ssim"] for n in arch]
        R["hv_view_ssim_status"] = [ents[n]["view_ssim"] for n in arch]
        bytes1 = sum(e["bytes_stored"] for e in st1["entries"])

        # (d) the view (through the mount) and the HEIC through heif-convert
        R["hv_view_ssim"] = []
        R["hv_heifc_ssim"] = []
        if has_ff:
            for n in arch:
                ref = os.path.join(tmp, "photos", n)
                R["hv_view_ssim"].append(ssim_y(ref, os.path.join(md.mnt, n)))
                if has_heifc:
                    png = os.path.join(tmp, "dec.png")
                    run(["heif-convert", os.path.join(md.backing, ents[n]["stored"]), png])
                    R["hv_heifc_ssim"].append(ssim_decoded(ref, png, info[n][2]))
                    os.unlink(png)

        # (e) cold view of the largest archived photo vs heif-convert
        # (the most pixels; of equals, the biggest JPEG: the most photo-like)
        big = max(arch, key=lambda n: (info[n][0] * info[n][1], orig[n])) if arch else None
        R["cold"] = R["heifc"] = None
        dropped = True
        if big:
            cache = os.path.join(md.backing, ".hevcfs", "cache")
            cold = []
            for _ in range(COLD_REPS):
                for c in os.listdir(cache):
                    os.unlink(os.path.join(cache, c))
                dropped &= drop_caches()
                t = time.perf_counter()
                read_all(os.path.join(md.mnt, big))
                cold.append(time.perf_counter() - t)
            R["cold"] = statistics.median(cold)
            if has_heifc:
                hc = []
                out = os.path.join(tmp, "heifc.jpg")
                for _ in range(COLD_REPS):
                    dropped &= drop_caches()
                    t = time.perf_counter()
                    run(["heif-convert", "-q", str(VIEW_QUALITY),
                         os.path.join(md.backing, ents[big]["stored"]), out])
                    hc.append(time.perf_counter() - t)
                    os.unlink(out)
                R["heifc"] = statistics.median(hc)
            if not dropped:
                warn("could not drop the page cache (not root): 'cold' is only "
                     "cache-cold for the view, not for the disk")

            # (f) warm reads of the view vs a plain file of its size
            view = os.path.join(md.mnt, big)
            vsize = os.path.getsize(view)
            plain = os.path.join(tmp, "plain.bin")
            with open(plain, "wb") as f:
                f.write(os.urandom(vsize))
            R["warm_view"], R["warm_view_reps"] = warm_rate(view)
            R["warm_plain"], R["warm_plain_reps"] = warm_rate(plain)
            # the same bytes as a plain (kept) file through the same mount
            plain_mnt = os.path.join(md.mnt, "plain.bin")
            shutil.copyfile(plain, plain_mnt)
            R["warm_plain_mnt"], _ = warm_rate(plain_mnt)
            R["vsize"] = vsize
        md.close()

        # (b) the pipeline
        R["pipe_ppm"] = R["pipe_bytes"] = None
        R["pipe_ssim"] = []
        if has_im:
            psec, heics = pipeline_run(tmp, photos, has_exif)
            R["pipe_ppm"] = len(photos) / psec * 60
            R["pipe_bytes"] = sum(os.path.getsize(h) for h in heics.values())
            if has_ff and has_heifc:
                for n, h in heics.items():
                    png = os.path.join(tmp, "dec.png")
                    run(["heif-convert", h, png])
                    R["pipe_ssim"].append(ssim_decoded(os.path.join(tmp, "photos", n), png,
                                                       info[n][2]))
                    os.unlink(png)
    finally:
        for m in mounts:
            m.close()
        shutil.rmtree(tmp, ignore_errors=True)

    load1 = run(["uptime"]).stdout.strip()
    # ---- the table ----
    n = len(photos)
    hv_ratio = R["hv_bytes"] / total_orig
    print(f"\nPhoto bench: {n} photos ({total_orig / 1e6:.1f} MB of JPEG), {ncpu} cores")
    print(f"  load before: {load0}\n  load after:  {load1}")
    if kept:
        for k, why in kept.items():
            print(f"  hevcfs kept {k}: {why}")
    rows = [("", "hevcfs", "pipeline (convert+exiftool, -P2)")]
    pp = R["pipe_ppm"]
    rows.append(("photos/min", f"{R['hv_ppm_d']:.2f} (workers={ncpu}), "
                 f"{R['hv_ppm_1']:.2f} (workers=1)", f"{pp:.2f}" if pp else "SKIPPED"))
    rows.append(("stored/original bytes",
                 f"{hv_ratio:.3f} ({R['hv_bytes']} B; workers=1: {bytes1 / total_orig:.3f})",
                 f"{R['pipe_bytes'] / total_orig:.3f} ({R['pipe_bytes']} B)"
                 if R["pipe_bytes"] else "SKIPPED"))
    rows.append(("HEIC luma SSIM min/median (status)", mmed(R["hv_ssim"]), ""))
    rows.append(("HEIC luma SSIM min/median (heif-convert PNG, ffmpeg)",
                 mmed(R["hv_heifc_ssim"]), mmed(R["pipe_ssim"])))
    rows.append(("JPEG view luma SSIM min/median (ffmpeg)", mmed(R["hv_view_ssim"]), ""))
    rows.append(("JPEG view luma SSIM min/median (status)", mmed(R["hv_view_ssim_status"]),
                 ""))
    if R.get("cold") is not None:
        w, h, _ = info[big]
        rows.append((f"cold view, {big} {w}x{h} (median of {COLD_REPS})",
                     f"{R['cold']:.3f} s",
                     f"heif-convert -q {VIEW_QUALITY}: {R['heifc']:.3f} s"
                     if R["heifc"] is not None else "SKIPPED"))
        rows.append((f"warm view read, {R['vsize']} B",
                     f"{R['warm_view']:.0f} MB/s ({R['warm_view_reps']} reads)",
                     f"plain file: {R['warm_plain']:.0f} MB/s ({R['warm_plain_reps']} reads)"))
    wid = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print("  " + "  ".join(c.ljust(wid[i]) for i, c in enumerate(r)).rstrip())

    # ---- the aims ----
    print("\nAims of the product issue:")
    best_ppm = max(R["hv_ppm_d"], R["hv_ppm_1"])
    if pp:
        print(f"  >= {AIM_SPEEDUP:.0f}x the pipeline's photos/min at no more bytes: "
              f"{best_ppm / pp:.2f}x (default workers {R['hv_ppm_d'] / pp:.2f}x, "
              f"workers=1 {R['hv_ppm_1'] / pp:.2f}x), bytes {R['hv_bytes'] / R['pipe_bytes']:.2f}x"
              f" -> {verdict(best_ppm >= AIM_SPEEDUP * pp and R['hv_bytes'] <= R['pipe_bytes'])}")
    else:
        print("  >= 2x the pipeline's photos/min: NOT MEASURED (pipeline skipped)")
    if pp:
        perf_aim("met" if best_ppm >= AIM_PERF_SPEEDUP * pp else "NOT met",
                 f"{best_ppm / pp:.2f}x ({best_ppm:.2f} vs {pp:.2f} photos/min; bytes "
                 f"{R['hv_bytes'] / R['pipe_bytes']:.2f}x the pipeline's; SSIM min/median "
                 f"{mmed(R['hv_heifc_ssim'])} vs {mmed(R['pipe_ssim'])})")
    else:
        perf_aim("not measured", "pipeline skipped (ImageMagick with HEIC missing)")
    all_ssim = R["hv_ssim"]
    print(f"  every photo >= {AIM_SSIM} luma SSIM: min {min(all_ssim) if all_ssim else 0:.4f} "
          f"over {len(all_ssim)} archived ({len(kept)} kept as they are) -> "
          f"{verdict(all_ssim and min(all_ssim) >= AIM_SSIM)}")
    print(f"  total <= {AIM_RATIO:.2f}x the JPEGs: {hv_ratio:.3f}x -> "
          f"{verdict(hv_ratio <= AIM_RATIO)}")
    if R.get("cold") is not None:
        print(f"  cold 12 MP view <= {AIM_COLD_S} s: {R['cold']:.3f} s -> "
              f"{verdict(R['cold'] <= AIM_COLD_S)}")
        print(f"  (warm reads of a plain file of that size through the mount: "
              f"{R['warm_plain_mnt']:.0f} MB/s; the view reads at "
              f"{R['warm_view'] / R['warm_plain_mnt']:.0%} of it)")
        print(f"  warm view reads >= {AIM_WARM:.0%} of plain reads: "
              f"{R['warm_view'] / R['warm_plain']:.0%} -> "
              f"{verdict(R['warm_view'] >= AIM_WARM * R['warm_plain'])}")
    for w_ in warnings:
        print(f"  !!! {w_}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
