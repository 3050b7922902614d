#!/usr/bin/env python3
"""Filesystem figures of the performance issue, in one run: hevcfs against
the backing disk itself (direct), bindfs and libfuse's passthrough_hp, each
FUSE filesystem mounted from its own backing directory on the same disk onto
its own temporary directory under /tmp.

Groups (one table each; rounds interleave the filesystems, a new order each
round, so drift hits all alike; medians of BENCH_REPS rounds; ratios to
direct are computed within the run):
  small    create+write+close, cold stat, open+read+close, readdir + lstat
           each, unlink of BENCH_SMALL files of 100 bytes
  large    sequential write of BENCH_BIG_MB MiB with fsync, cold read
  ls       ls -lR of BENCH_LS_FILES files in BENCH_LS_DIRS directories, cold
           and warm
  fsx      xfstests' fsx, BENCH_FSX_OPS operations, one seed for all (when a
           binary is there: bench/peers.sh says why it is not): once with
           the operations every filesystem here supports (fallocate's modes
           off: bindfs and passthrough_hp have none, and fsx counts an
           operation it skips as done), once with all each supports
  rss      peak RSS (VmHWM) of each daemon after BENCH_RSS_FILES files
  scan     exiftool -DateTimeOriginal -Model over BENCH_PHOTOS cold photos
           (archived ones through hevcfs, the original JPEGs elsewhere), and
           how many views the scan made hevcfs render
  readers  BENCH_PHOTOS cold reads of different photos at once vs one after
           another (through hevcfs: view renders)
  verify   hevcfs with -o verify_reads=on vs off: cold view, cold large read
  scale    (HEVCFS_BENCH_SCALE=1 only) hevcfs from 10,000 to 1,000,000
           files: ingest rate, status, remount, fsck --rebuild, RSS

Needs root (mounts, /proc/sys/vm/drop_caches). "Cold" means the page cache
dropped (echo 3 > /proc/sys/vm/drop_caches) and every FUSE filesystem
remounted (hevcfs's view cache emptied too). Environment: HEVCFS_BIN,
PASSTHROUGH_HP, FSX, FSX_NOTE (from bench/peers.sh), BENCH_DIR (backing
directories, /var/tmp), BENCH_GROUPS (comma list, all by default),
BENCH_MOUNT_OPTS (extra hevcfs -o), BENCH_AIMS (file the aims' verdicts are
appended to), and the sizes above. python3 stdlib only.
"""
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.abspath(os.environ.get(
    "HEVCFS_CORPUS", os.path.join(HERE, "..", "..", "shared", "corpus")))
BIN = os.path.abspath(os.environ.get("HEVCFS_BIN", os.path.join(HERE, "..", "hevcfs")))
PTHP = os.environ.get("PASSTHROUGH_HP", "")
FSX = os.environ.get("FSX", "")
FSX_NOTE = os.environ.get("FSX_NOTE", "no fsx binary (run through make bench)")
WORK_ROOT = os.environ.get("BENCH_DIR", "/var/tmp")
MOUNT_OPTS = os.environ.get("BENCH_MOUNT_OPTS", "")
AIMS_FILE = os.environ.get("BENCH_AIMS", "")


def env_int(name, default):
    return int(os.environ.get(name, default))


REPS = env_int("BENCH_REPS", 3)
NSMALL = env_int("BENCH_SMALL", 5000)
BIG = env_int("BENCH_BIG_MB", 512) << 20
LS_FILES = env_int("BENCH_LS_FILES", 20000)
LS_DIRS = env_int("BENCH_LS_DIRS", 20)
FSX_OPS = env_int("BENCH_FSX_OPS", 30000)
FSX_SEED = env_int("BENCH_FSX_SEED", 20260)
RSS_FILES = [int(x) for x in os.environ.get("BENCH_RSS_FILES", "5000,50000").split(",")]
NPHOTOS = env_int("BENCH_PHOTOS", 16)
PHOTO_SIZE = os.environ.get("BENCH_PHOTO_SIZE", "4000x3000")  # 12 MP, a phone's
SCALE = os.environ.get("HEVCFS_BENCH_SCALE", "0") == "1"
SCALE_SIZES = [int(x) for x in
               os.environ.get("BENCH_SCALE_SIZES", "10000,100000,1000000").split(",")]
GROUPS = os.environ.get("BENCH_GROUPS", "small,large,ls,fsx,rss,scan,readers,verify,scale")
GROUPS = set(GROUPS.split(","))

CHUNK = 1 << 20
SMALL_DATA = b"x" * 100
PER_DIR = 1000          # files per directory when many are made (rss, scale)
WAIT_TIMEOUT = 7200     # seconds hevcfs wait may take to archive what it got
# the aims of the performance issue
AIM_CREATE = 0.3        # create+write+close, fraction of direct
AIM_LARGE = 0.8         # large write and cold read, fraction of direct
AIM_LS_WARM = 2.0       # warm ls -lR, multiple of direct's time
AIM_SCAN = 1.5          # metadata scan, multiple of the originals' time
AIM_RSS_GROWTH = 2.0    # RSS after 1M files, multiple of RSS after 10k

PEERS = ("bindfs", "passthrough_hp")
NAMES = ("direct",) + PEERS + ("hevcfs",)


def log(msg):
    print(f"[fsbench] {msg}", file=sys.stderr, flush=True)


def loadavg():
    return "%.2f %.2f %.2f" % os.getloadavg()


def drop_caches():
    """Write back, then drop the page cache, dentries and inodes."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def read_all(path):
    """Read path whole in 1 MiB reads; returns the bytes read."""
    buf = bytearray(CHUNK)
    n = 0
    fd = os.open(path, os.O_RDONLY)
    try:
        while k := os.readv(fd, [buf]):
            n += k
    finally:
        os.close(fd)
    return n


def timed(fn, *args, **kw):
    t = time.perf_counter()
    fn(*args, **kw)
    return time.perf_counter() - t


def make_files(root, n, start=0):
    """Files start..n-1 of 100 bytes in directories of PER_DIR (untimed setup)."""
    for i in range(start, n):
        d = os.path.join(root, f"d{i // PER_DIR:04d}")
        if i % PER_DIR == 0 or i == start:
            os.makedirs(d, exist_ok=True)
        fd = os.open(os.path.join(d, f"f{i:07d}"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, SMALL_DATA)
        os.close(fd)


# ---- the filesystems ----

class Direct:
    """The backing disk itself: a plain directory."""
    name = "direct"
    fuse = False

    def __init__(self, work):
        self.backing = os.path.join(work, self.name)
        os.makedirs(self.backing, exist_ok=True)
        self.root = self.backing

    def start(self, extra=None):
        return True

    def stop(self):
        pass

    def cold(self):
        """Make the next access cold: drop the page cache (and remount)."""
        drop_caches()

    def settle(self):
        pass

    def pid(self):
        return None


class Fuse(Direct):
    """A FUSE filesystem over its own backing directory, mounted on a temp
    directory under /tmp; always unmounted by stop()."""
    fuse = True

    def __init__(self, work):
        super().__init__(work)
        self.mnt = tempfile.mkdtemp(prefix=f"hevcfs-bench-{self.name}-", dir="/tmp")
        self.root = self.mnt
        self.daemon = None
        self.mounted = False

    def command(self, extra):
        raise NotImplementedError

    def start(self, extra=None):
        """Mount; False when the filesystem refuses (an unknown option)."""
        r = subprocess.run(self.command(extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
        if r.returncode != 0:
            self.refusal = (r.stderr or r.stdout).strip().splitlines()[:1]
            return False
        for _ in range(200):  # passthrough_hp daemonizes before it mounts
            if os.path.ismount(self.mnt):
                break
            time.sleep(0.05)
        else:
            raise RuntimeError(f"{self.name}: {self.mnt} did not get mounted")
        self.mounted = True
        self.daemon = self.find_daemon()
        return True

    def find_daemon(self):
        """The pid whose command line names our mount point (not a job child)."""
        me = self.mnt.encode()
        for p in os.listdir("/proc"):
            if not p.isdigit():
                continue
            try:
                with open(f"/proc/{p}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            if me in argv and b"__archive" not in argv and not argv[0].endswith(b"fusermount3"):
                return int(p)
        return None

    def stop(self):
        if not self.mounted:
            return
        for _ in range(50):
            if subprocess.run(["fusermount3", "-u", self.mnt],
                              stderr=subprocess.DEVNULL).returncode == 0:
                break
            time.sleep(0.2)
        else:
            subprocess.run(["fusermount3", "-u", "-z", self.mnt], stderr=subprocess.DEVNULL)
        self.mounted = False
        # the daemon exits after the unmount; a new mount of the same backing
        # (hevcfs's lock) waits for it
        for _ in range(300):
            if self.daemon is None or not os.path.exists(f"/proc/{self.daemon}"):
                break
            try:
                with open(f"/proc/{self.daemon}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                        break
            except OSError:
                break
            time.sleep(0.1)
        self.daemon = None

    def cold(self):
        self.stop()
        drop_caches()
        if not self.start():
            raise RuntimeError(f"{self.name}: remount failed: {self.refusal}")

    def pid(self):
        return self.daemon


class Bindfs(Fuse):
    name = "bindfs"

    def command(self, extra):
        return ["bindfs", self.backing, self.mnt]


class PassthroughHp(Fuse):
    name = "passthrough_hp"

    def command(self, extra):
        return [PTHP, self.backing, self.mnt]


class Hevcfs(Fuse):
    """hevcfs with its defaults and BENCH_MOUNT_OPTS; settle() returns once
    nothing is staged or pending (hevcfs wait)."""
    name = "hevcfs"

    def __init__(self, work, tag=""):
        self.name = "hevcfs" + tag
        super().__init__(work)
        self.opts = MOUNT_OPTS

    def command(self, extra):
        opts = ",".join(o for o in (self.opts, extra) if o)
        return [BIN, self.backing, self.mnt] + (["-o", opts] if opts else [])

    def settle(self):
        r = subprocess.run([BIN, "wait", self.backing, "--timeout", str(WAIT_TIMEOUT)])
        if r.returncode != 0:
            raise RuntimeError(f"hevcfs wait returned {r.returncode}")

    @property
    def cache_dir(self):
        return os.path.join(self.backing, ".hevcfs", "cache")

    def views_cached(self):
        try:
            return len(os.listdir(self.cache_dir))
        except FileNotFoundError:
            return 0

    def cold(self, extra=None):
        """Unmounted: empty the view cache; drop the page cache; mount."""
        self.stop()
        if os.path.isdir(self.cache_dir):
            for c in os.listdir(self.cache_dir):
                os.unlink(os.path.join(self.cache_dir, c))
        drop_caches()
        if not self.start(extra):
            raise RuntimeError(f"{self.name}: remount failed: {self.refusal}")

    def status(self, files=False):
        cmd = [BIN, "status", self.backing, "--json"] + (["--files"] if files else [])
        return json.loads(subprocess.run(cmd, check=True, stdout=subprocess.PIPE,
                                         text=True).stdout)


def raise_nofile():
    """RLIMIT_NOFILE of the bench, and so of the daemons it starts: fs.nr_open,
    soft and hard, where root may (CAP_SYS_RESOURCE); else the hard limit."""
    with open("/proc/sys/fs/nr_open") as f:
        n = int(f.read())
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))
    except (ValueError, OSError):
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def vm_hwm_kb(pid, field="VmHWM"):
    """Peak resident set (VmHWM, kB) of pid, or another field of its
    /proc status (RssAnon: its private memory, without the pages of mapped
    files such as the index, which the kernel may drop and read again)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


# ---- results ----

class Table:
    """One group's figures: per row, per filesystem, the values of each round."""

    def __init__(self, title, note=""):
        self.title = title
        self.note = note
        self.rows = []  # (figure, unit, higher_is_better, speed, {fs: [values]})
        self.failures = []  # what went wrong, printed under the table

    def add(self, figure, fs, value, unit, higher=True, speed=True):
        for r in self.rows:
            if r[0] == figure:
                r[4].setdefault(fs, []).append(value)
                return
        self.rows.append((figure, unit, higher, speed, {fs: [value]}))

    def median(self, figure, fs):
        """The median of the rounds; a word (n/a, FAIL) when a round has one."""
        for r in self.rows:
            if r[0] == figure and r[4].get(fs):
                words = [v for v in r[4][fs] if isinstance(v, str)]
                if words:
                    return words[0]
                vals = [v for v in r[4][fs] if v is not None]
                return statistics.median(vals) if vals else None
        return None

    def best_peer(self, figure):
        """The best peer's median (max for rates, min for times) and its name."""
        row = next(r for r in self.rows if r[0] == figure)
        cand = [(self.median(figure, p), p) for p in PEERS
                if isinstance(self.median(figure, p), (int, float))]
        if not cand:
            return None, None
        return (max if row[2] else min)(cand)

    def print(self):
        print(f"\n== {self.title}")
        if self.note:
            print(f"   {self.note}")
        head = ("figure", "direct", "bindfs", "passthrough_hp", "hevcfs", "hevcfs/direct",
                "best peer/direct")
        lines = [head]
        for figure, unit, higher, speed, vals in self.rows:
            cells = [f"{figure} ({unit})"]
            for fs in NAMES:
                cells.append(fmt(self.median(figure, fs)))
            d = self.median(figure, "direct")
            h = self.median(figure, "hevcfs")
            b, _ = self.best_peer(figure)
            cells.append(ratio(h, d))
            cells.append(ratio(b, d))
            lines.append(cells)
        wid = [max(len(r[i]) for r in lines) for i in range(len(head))]
        for r in lines:
            print("  " + r[0].ljust(wid[0]) + "  " +
                  "  ".join(c.rjust(wid[i + 1]) for i, c in enumerate(r[1:])))
        for f in self.failures:
            print(f"   FAIL: {f}")

    def fail(self, fs, figures, err):
        """fs could not do this group: FAIL in its cells, the error below."""
        for figure, unit, higher, speed in figures:
            self.add(figure, fs.name, "FAIL", unit, higher, speed)
        self.failures.append(f"{fs.name}: {err}")
        log(f"{self.title}: {fs.name} failed: {err}")


def fmt(v):
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    if isinstance(v, int) or float(v).is_integer() and v < 1000:
        return f"{v:,.0f}"
    if v >= 100:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.3f}"


def ratio(a, b):
    if a is None or b is None or isinstance(a, str) or isinstance(b, str) or b == 0:
        return "-"
    return f"{a / b:.2f}"


AIMS = []


def aim(text, verdict, detail):
    """One aim's line: met, NOT met or not measured, and the figures behind it."""
    AIMS.append((text, verdict, detail))
    if AIMS_FILE:
        with open(AIMS_FILE, "a") as f:
            f.write(f"{text}\t{verdict}\t{detail}\n")


def met(ok):
    return "met" if ok else "NOT met"


# ---- small files ----

def small_create(root, names):
    """create+write+close: open(O_CREAT|O_EXCL), write 100 bytes, close, per
    file, in one directory. Returns files per second."""
    os.makedirs(root, exist_ok=True)
    t = time.perf_counter()
    for n in names:
        fd = os.open(n, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, SMALL_DATA)
        os.close(fd)
    return len(names) / (time.perf_counter() - t)


def small_stat(names):
    """stat() of each file, right after the caller made them cold."""
    t = time.perf_counter()
    for n in names:
        os.stat(n)
    return len(names) / (time.perf_counter() - t)


def small_read(names):
    """open+read+close of each file (100 bytes, data not cached yet)."""
    t = time.perf_counter()
    for n in names:
        fd = os.open(n, os.O_RDONLY)
        os.read(fd, 4096)
        os.close(fd)
    return len(names) / (time.perf_counter() - t)


def small_readdir_lstat(root):
    """readdir of the directory, lstat() of each entry. Entries per second."""
    t = time.perf_counter()
    k = 0
    with os.scandir(root) as it:
        for e in it:
            os.lstat(e.path)
            k += 1
    return k / (time.perf_counter() - t)


def small_unlink(names):
    """unlink() of each file."""
    t = time.perf_counter()
    for n in names:
        os.unlink(n)
    return len(names) / (time.perf_counter() - t)


def group_small(fss):
    t = Table(f"small files: {NSMALL:,} files of 100 bytes in one directory",
              "op/s, higher is better; stat cold = page cache dropped and FUSE remounted "
              "after the files were made (hevcfs: after hevcfs wait)")
    for rnd in range(REPS):
        for fs in rotate(fss, rnd):
            root = os.path.join(fs.root, f"small{rnd}")
            names = [os.path.join(root, f"f{i:05d}") for i in range(NSMALL)]
            t.add("create+write+close", fs.name, small_create(root, names), "op/s")
            fs.settle()
            fs.cold()
            t.add("stat, cold", fs.name, small_stat(names), "op/s")
            t.add("open+read+close", fs.name, small_read(names), "op/s")
            t.add("readdir + lstat each", fs.name, small_readdir_lstat(root), "op/s")
            t.add("unlink", fs.name, small_unlink(names), "op/s")
            os.rmdir(root)
            fs.settle()
        log(f"small files: round {rnd + 1}/{REPS} done (load {loadavg()})")
    return t


# ---- a large file ----

def large_write(path):
    """Sequential write of BIG bytes in 1 MiB writes, fsync, close. MB/s."""
    buf = os.urandom(CHUNK)
    t = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    for _ in range(BIG // CHUNK):
        os.write(fd, buf)
    os.fsync(fd)
    os.close(fd)
    return BIG / (time.perf_counter() - t) / 1e6


def large_read_cold(fs, path):
    """Sequential read in 1 MiB reads after the caller's fs.cold(). MB/s."""
    t = time.perf_counter()
    n = read_all(path)
    sec = time.perf_counter() - t
    assert n == BIG, f"{path}: read {n} of {BIG} bytes"
    return BIG / sec / 1e6


def group_large(fss):
    t = Table(f"large file: {BIG >> 20} MiB",
              "MB/s, higher is better; write ends with fsync; read after dropping the "
              "page cache and remounting (hevcfs: after hevcfs wait)")
    for rnd in range(REPS):
        for fs in rotate(fss, rnd):
            path = os.path.join(fs.root, "big")
            t.add("sequential write + fsync", fs.name, large_write(path), "MB/s")
            fs.settle()
            fs.cold()
            t.add("sequential read, cold", fs.name, large_read_cold(fs, path), "MB/s")
            os.unlink(path)
            fs.settle()
        log(f"large file: round {rnd + 1}/{REPS} done (load {loadavg()})")
    return t


# ---- ls -lR ----

def ls_lR(root):
    """`ls -lR` of the tree, output to /dev/null. Seconds."""
    t = time.perf_counter()
    subprocess.run(["ls", "-lR", root], stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t


def group_ls(fss):
    per = LS_FILES // LS_DIRS
    t = Table(f"ls -lR: {per * LS_DIRS:,} files in {LS_DIRS} directories",
              "seconds, lower is better; cold = page cache dropped and FUSE remounted; "
              "warm = right after")
    figures = [("ls -lR, cold", "s", False, True), ("ls -lR, warm", "s", False, True)]
    failed = set()
    for fs in fss:  # the trees, made through each filesystem, untimed
        try:
            for d in range(LS_DIRS):
                sub = os.path.join(fs.root, "tree", f"dir{d:02d}")
                os.makedirs(sub)
                for i in range(per):
                    with open(os.path.join(sub, f"IMG_{i:05d}.txt"), "wb") as f:
                        f.write(SMALL_DATA)
            fs.settle()
        except OSError as e:
            t.fail(fs, figures, f"making the tree: {e}")
            failed.add(fs.name)
    for rnd in range(REPS):
        for fs in rotate(fss, rnd):
            if fs.name in failed:
                continue
            try:
                fs.cold()
                t.add("ls -lR, cold", fs.name, ls_lR(os.path.join(fs.root, "tree")), "s", False)
                t.add("ls -lR, warm", fs.name, ls_lR(os.path.join(fs.root, "tree")), "s", False)
            except subprocess.CalledProcessError as e:
                t.fail(fs, figures, f"ls -lR exited {e.returncode}")
                failed.add(fs.name)
        log(f"ls -lR: round {rnd + 1}/{REPS} done (load {loadavg()})")
    for fs in fss:
        clear(fs, "tree")
    return t


def clear(fs, sub):
    """Remove fs.root/sub through a fresh mount (a daemon that ran out of
    descriptors gets its own back), and let hevcfs settle."""
    fs.stop()
    fs.start()
    shutil.rmtree(os.path.join(fs.root, sub), ignore_errors=True)
    fs.settle()


# ---- fsx ----

# fsx's switches for fallocate (-F), keep size, punch hole, zero range,
# collapse and insert range, unshare: what bindfs and passthrough_hp lack
FSX_COMMON = ("-F", "-K", "-H", "-z", "-C", "-I", "-u")


def fsx_run(fs, rnd, flags=()):
    """xfstests' fsx: FSX_OPS operations on one file with seed FSX_SEED
    (-q quiet, its logs kept out of the filesystem). Seconds, or "FAIL"."""
    logs = tempfile.mkdtemp(prefix="hevcfs-bench-fsxlog-", dir=WORK_ROOT)
    path = os.path.join(fs.root, f"fsx{rnd}")
    t = time.perf_counter()
    r = subprocess.run([FSX, "-q", *flags, "-N", str(FSX_OPS), "-S", str(FSX_SEED), "-P", logs,
                        path],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sec = time.perf_counter() - t
    if r.returncode != 0:
        log(f"fsx on {fs.name} failed ({r.returncode}): {r.stdout[-2000:]}")
    shutil.rmtree(logs, ignore_errors=True)
    if os.path.exists(path):
        os.unlink(path)
    fs.settle()
    return sec if r.returncode == 0 else "FAIL"


def group_fsx(fss):
    t = Table(f"fsx: {FSX_OPS:,} operations, seed {FSX_SEED}", "seconds, lower is better")
    if not FSX:
        t.note = f"NOT RUN: {FSX_NOTE}"
        for fs in fss:
            t.add("fsx, same operations", fs.name, "n/a", "s", False)
        return t
    t.note = ("same operations: fallocate's modes off for all (" + " ".join(FSX_COMMON) +
              "); own: all each supports (fsx counts an operation a filesystem lacks as "
              "done, so bindfs and passthrough_hp skip about 18% of them)")
    for rnd in range(REPS):
        for fs in rotate(fss, rnd):
            t.add("fsx, same operations", fs.name, fsx_run(fs, rnd, FSX_COMMON), "s", False)
            t.add("fsx, own operations", fs.name, fsx_run(fs, rnd), "s", False)
        log(f"fsx: round {rnd + 1}/{REPS} done (load {loadavg()})")
    return t


# ---- daemon memory ----

def group_rss(fss):
    """Each FUSE daemon, mounted afresh, gets RSS_FILES files (100 bytes, in
    directories of 1,000) made through it; its VmHWM once they settled."""
    t = Table("daemon peak RSS (VmHWM) as files are created",
              "MB, lower is better; a fresh mount each; files of 100 bytes in directories "
              "of 1,000; read after hevcfs wait")
    for fs in fss:
        if not fs.fuse:
            continue
        fs.stop()
        fs.start()
        root = os.path.join(fs.root, "rss")
        made = 0
        try:
            for n in RSS_FILES:
                make_files(root, n, made)
                made = n
                fs.settle()
                t.add(f"after {n:,} files", fs.name, vm_hwm_kb(fs.pid()) / 1024, "MB",
                      False, False)
        except OSError as e:
            t.fail(fs, [(f"after {n:,} files", "MB", False, False) for n in RSS_FILES
                        if n > made], f"making file {made:,} and up: {e}")
        clear(fs, "rss")
        log(f"rss: {fs.name} done (load {loadavg()})")
    return t


# ---- scale (hevcfs only) ----

def group_scale(work):
    """hevcfs from 10,000 to 1,000,000 files (SCALE_SIZES, cumulative): at
    each size the ingest rate (files made, until hevcfs wait returns), the
    time of `hevcfs status`, of a remount (unmount, mount until the root
    answers), of `hevcfs fsck --rebuild` (unmounted), and the daemon's VmHWM
    at the end of the ingest (the daemon mounted after the previous size's
    fsck, holding the index of every file so far)."""
    hv = Hevcfs(work, "-scale")
    REGISTRY.append(hv)
    hv.start()
    rows = []
    made = 0
    try:
        for n in SCALE_SIZES:
            t0 = time.perf_counter()
            make_files(os.path.join(hv.root, "scale"), n, made)
            t_made = time.perf_counter() - t0
            hv.settle()
            t_ingest = time.perf_counter() - t0
            rss = vm_hwm_kb(hv.pid()) / 1024
            anon = vm_hwm_kb(hv.pid(), "RssAnon") / 1024
            t_status = timed(subprocess.run, [BIN, "status", hv.backing],
                             stdout=subprocess.DEVNULL, check=True)
            t0 = time.perf_counter()
            hv.stop()
            hv.start()
            os.stat(hv.root)
            t_remount = time.perf_counter() - t0
            hv.stop()
            t_fsck = timed(subprocess.run, [BIN, "fsck", "--rebuild", hv.backing],
                           stdout=subprocess.DEVNULL, check=True)
            hv.start()
            rows.append((n, (n - made) / t_made, (n - made) / t_ingest, t_status, t_remount,
                         t_fsck, rss, anon))
            log(f"scale: {n:,} files (load {loadavg()})")
            made = n
    finally:
        hv.stop()
    print(f"\n== hevcfs at scale (HEVCFS_BENCH_SCALE=1): files of 100 bytes, "
          f"{PER_DIR:,} a directory")
    print("  %10s %12s %16s %10s %11s %13s %9s %12s" % (
        "files", "create/s", "ingest/s (wait)", "status s", "remount s", "fsck --rebuild s",
        "RSS MB", "RssAnon MB"))
    for r in rows:
        print("  %10s %12.0f %16.0f %10.3f %11.3f %16.3f %9.1f %12.1f" % (
            (f"{r[0]:,}",) + r[1:]))
    print("  (RSS: VmHWM, with the index's mapped pages the daemon touched; RssAnon: its "
          "own memory)")
    first, last = rows[0], rows[-1]
    aim(f"RSS after {last[0]:,} files <= {AIM_RSS_GROWTH:g}x RSS after {first[0]:,}",
        met(last[6] <= AIM_RSS_GROWTH * first[6]),
        f"VmHWM {last[6]:.1f} MB vs {first[6]:.1f} MB ({last[6] / first[6]:.2f}x); "
        f"RssAnon {last[7]:.1f} MB vs {first[7]:.1f} MB ({last[7] / first[7]:.2f}x)")


# ---- photos: metadata scan, many readers, verify_reads ----

def source_photos():
    """Corpus JPEGs with a camera model and a capture time, biggest first."""
    dirs = [os.path.join(CORPUS, "exif-samples", "jpg", d) for d in
            ("mobile", "hdr", "gps", "exif-org", "tests")]
    dirs = [d for d in dirs if os.path.isdir(d)]
    if not dirs:
        return []
    r = subprocess.run(["exiftool", "-q", "-q", "-m", "-if", "$Model and $DateTimeOriginal",
                        "-p", "$ImageWidth $Directory/$FileName", "-ext", "jpg", "-ext", "jpeg"]
                       + dirs, stdout=subprocess.PIPE, text=True)
    found = [ln.split(" ", 1) for ln in r.stdout.splitlines() if " " in ln]
    return [p for _, p in sorted(found, key=lambda x: -int(x[0]))]


def make_photos(dst, count):
    """count JPEGs of PHOTO_SIZE: corpus camera photos scaled up with a
    little grain (a camera's noise; flat upscales would be unlike photos), their
    EXIF and XMP copied from the source (so the scan finds a date and a model);
    testsrc2 frames tagged by exiftool when there is no corpus."""
    os.makedirs(dst)
    w, h = PHOTO_SIZE.split("x")
    srcs = source_photos()
    out = []
    for i in range(count):
        p = os.path.join(dst, f"IMG_{i + 1:04d}.JPG")
        vf = f"scale={w}:{h}:flags=lanczos,noise=alls=4:allf=u"
        inp = ["-i", srcs[i % len(srcs)]] if srcs else \
            ["-f", "lavfi", "-i", f"testsrc2=size={w}x{h}"]
        subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error",
                        "-noautorotate"] + inp + ["-vf", vf, "-frames:v", "1", "-q:v", "2",
                                                  "-y", p], check=True)
        if srcs:
            tags = ["-TagsFromFile", srcs[i % len(srcs)], "-EXIF:all", "-XMP:all"]
        else:
            tags = ["-Model=bench", f"-DateTimeOriginal=2026:01:01 00:00:{i % 60:02d}"]
        subprocess.run(["exiftool", "-q", "-q", "-m", "-overwrite_original"] + tags + [p],
                       check=True)
        out.append(p)
    return out


def scan_metadata(paths):
    """exiftool -DateTimeOriginal -Model over the photos, one process.
    Returns (seconds, the tag lines it printed)."""
    t = time.perf_counter()
    r = subprocess.run(["exiftool", "-DateTimeOriginal", "-Model"] + paths,
                       stdout=subprocess.PIPE, text=True, check=True)
    sec = time.perf_counter() - t
    return sec, [ln for ln in r.stdout.splitlines() if ":" in ln and not ln.startswith("=")]


def reads_sequential(paths):
    """Each photo read whole, one after another. Wall seconds."""
    t = time.perf_counter()
    for p in paths:
        read_all(p)
    return time.perf_counter() - t


def reads_concurrent(paths):
    """Every photo read whole at once, one thread each, started together.
    Wall seconds from the start to the last reader's end."""
    go = threading.Barrier(len(paths) + 1)
    errors = []

    def reader(p):
        go.wait()
        try:
            read_all(p)
        except OSError as e:
            errors.append(e)

    threads = [threading.Thread(target=reader, args=(p,)) for p in paths]
    for th in threads:
        th.start()
    go.wait()
    t = time.perf_counter()
    for th in threads:
        th.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - t


def photo_setup(fss, work):
    """The photos, made once, copied through every filesystem (untimed);
    hevcfs archives them. A quarter more are made than the figures use, as
    hevcfs keeps a photo whose HEIC would not be smaller. Returns the names of
    the first NPHOTOS that hevcfs archived."""
    originals = make_photos(os.path.join(work, "photos-src"), NPHOTOS + max(1, NPHOTOS // 4))
    for fs in fss:
        d = os.path.join(fs.root, "photos")
        os.makedirs(d)
        for p in originals:
            shutil.copyfile(p, os.path.join(d, os.path.basename(p)))
    hv = next(fs for fs in fss if fs.name == "hevcfs")
    log(f"photos: {len(originals)} of {PHOTO_SIZE} copied in, hevcfs archiving them")
    t = time.perf_counter()
    hv.settle()
    log(f"photos: archived in {time.perf_counter() - t:.1f} s")
    st = hv.status(files=True)
    arch = sorted(os.path.basename(e["path"]) for e in st["entries"]
                  if e["state"] == "archived" and "/photos/" in "/" + e["path"].lstrip("/"))
    kept = [(e["path"], e["reason"]) for e in st["entries"]
            if "/photos/" in "/" + e["path"].lstrip("/") and e["state"] != "archived"]
    for p, why in kept:
        log(f"photos: hevcfs did not archive {p}: {why}")
    if len(arch) < NPHOTOS:
        print(f"!!! hevcfs archived {len(arch)} of {len(originals)} photos, "
              f"fewer than BENCH_PHOTOS={NPHOTOS}")
    return arch[:NPHOTOS]


def group_scan(fss, names):
    t = Table(f"metadata scan: exiftool -DateTimeOriginal -Model over {len(names)} photos, cold",
              "seconds, lower is better; hevcfs: archived photos through the mount (view "
              "cache emptied); the others: the original JPEGs")
    ref = None
    for rnd in range(REPS):
        for fs in rotate(fss, rnd):
            fs.cold()
            before = fs.views_cached() if fs.name == "hevcfs" else 0
            paths = [os.path.join(fs.root, "photos", n) for n in names]
            sec, tags = scan_metadata(paths)
            t.add("exiftool scan", fs.name, sec, "s", False)
            if fs.name == "hevcfs":  # files in BACKING/.hevcfs/cache, after - before
                t.add("views rendered by the scan", fs.name, fs.views_cached() - before,
                      "files", False, False)
            if ref is None and fs.name == "direct":
                ref = tags
            elif ref is not None and tags != ref:
                log(f"scan: {fs.name} printed other tags than the originals: {tags[:4]}")
        log(f"scan: round {rnd + 1}/{REPS} done (load {loadavg()})")
    return t


def group_readers(fss, names):
    t = Table(f"many readers: {len(names)} different photos read whole, cold",
              "wall seconds, lower is better; hevcfs renders each view (cache emptied); "
              "the others read the original JPEGs")
    for rnd in range(REPS):
        for fs in rotate(fss, rnd):
            paths = [os.path.join(fs.root, "photos", n) for n in names]
            order = [("at once", reads_concurrent), ("one after another", reads_sequential)]
            for label, fn in (order if rnd % 2 == 0 else order[::-1]):
                fs.cold()
                t.add(label, fs.name, fn(paths), "s", False)
        log(f"readers: round {rnd + 1}/{REPS} done (load {loadavg()})")
    return t


def group_verify(hv, names):
    """hevcfs mounted with -o verify_reads=on and =off, rounds alternating:
    the median cold view time of the photos read one by one, and a cold read
    of a large kept file. n/a when the mount refuses the option."""
    print("\n== integrity cost: hevcfs -o verify_reads=on vs off")
    hv.stop()
    for v in ("on", "off"):
        if not hv.start(f"verify_reads={v}"):
            print(f"   n/a (option unsupported: {' '.join(hv.refusal)})")
            hv.start()
            return
        hv.stop()
    hv.start()
    big = os.path.join(hv.root, "big")
    with open(big, "wb") as f:
        buf = os.urandom(CHUNK)
        for _ in range(BIG // CHUNK):
            f.write(buf)
    hv.settle()
    res = {"on": {"view": [], "read": []}, "off": {"view": [], "read": []}}
    for rnd in range(REPS):
        for v in (("on", "off") if rnd % 2 == 0 else ("off", "on")):
            views = []
            for n in names:
                hv.cold(f"verify_reads={v}")
                views.append(timed(read_all, os.path.join(hv.root, "photos", n)))
            res[v]["view"].append(statistics.median(views))
            hv.cold(f"verify_reads={v}")
            res[v]["read"].append(large_read_cold(hv, big))
        log(f"verify: round {rnd + 1}/{REPS} done (load {loadavg()})")
    os.unlink(big)
    hv.cold()
    on_v, off_v = (statistics.median(res[v]["view"]) for v in ("on", "off"))
    on_r, off_r = (statistics.median(res[v]["read"]) for v in ("on", "off"))
    print("  %-36s %10s %10s %8s" % ("figure", "off", "on", "on/off"))
    print("  %-36s %10.3f %10.3f %8.2f" % ("cold view, median of the photos (s)", off_v, on_v,
                                           on_v / off_v))
    print("  %-36s %10.0f %10.0f %8.2f" % (f"cold read, {BIG >> 20} MiB kept file (MB/s)",
                                           off_r, on_r, on_r / off_r))


# ---- the run ----

REGISTRY = []


def rotate(fss, rnd):
    """The filesystems in a new order each round."""
    k = rnd % len(fss)
    return fss[k:] + fss[:k]


def aims_fs(tables):
    """The filesystem aims, from the tables of this run."""
    slower = []
    for t in tables.values():
        for figure, unit, higher, speed, vals in t.rows:
            h = t.median(figure, "hevcfs")
            b, who = t.best_peer(figure)
            if speed and h == "FAIL":
                slower.append(f"{figure} (hevcfs FAIL)")
                continue
            if not speed or h is None or b is None or isinstance(h, str) or isinstance(b, str):
                continue
            if (h < b) if higher else (h > b):
                slower.append(f"{figure} ({fmt(h)} vs {who} {fmt(b)} {unit})")
    measured = any(t.rows for t in tables.values())
    if measured:
        aim("every row at least as fast as the best of bindfs and passthrough_hp",
            met(not slower), "; ".join(slower) if slower else "all rows")

    def rel(group, figure):
        t = tables.get(group)
        if not t:
            return None, None, None
        h, d = t.median(figure, "hevcfs"), t.median(figure, "direct")
        if h is None or d is None or isinstance(h, str) or isinstance(d, str):
            return h, d, None
        return h, d, h / d

    h, d, r = rel("small", "create+write+close")
    if r is not None:
        aim(f"create >= {AIM_CREATE:g} of direct", met(r >= AIM_CREATE),
            f"{r:.2f} ({fmt(h)} vs {fmt(d)} op/s)")
    for fig in ("sequential write + fsync", "sequential read, cold"):
        h, d, r = rel("large", fig)
        if r is not None:
            aim(f"large {fig} >= {AIM_LARGE:g} of direct", met(r >= AIM_LARGE),
                f"{r:.2f} ({fmt(h)} vs {fmt(d)} MB/s)")
    h, d, r = rel("ls", "ls -lR, warm")
    if r is not None:
        aim(f"warm ls -lR <= {AIM_LS_WARM:g}x direct", met(r <= AIM_LS_WARM),
            f"{r:.2f}x ({fmt(h)} vs {fmt(d)} s)")
    if "ls" in tables:
        t = tables["ls"]
        h, b = t.median("ls -lR, cold", "hevcfs"), t.median("ls -lR, cold", "bindfs")
        if h is not None and b is not None:
            aim("cold ls -lR <= bindfs", met(h <= b), f"{fmt(h)} vs {fmt(b)} s")
    if "fsx" in tables:
        t = tables["fsx"]
        h, b = t.median("fsx, same operations", "hevcfs"), t.median("fsx, same operations",
                                                                    "bindfs")
        if h is None or b is None or isinstance(h, str) or isinstance(b, str):
            aim("fsx <= bindfs", "not measured" if not FSX else "NOT met",
                FSX_NOTE if not FSX else f"hevcfs {h}, bindfs {b}")
        else:
            aim("fsx <= bindfs", met(h <= b), f"{fmt(h)} vs {fmt(b)} s")
    h, d, r = rel("scan", "exiftool scan")
    if r is not None:
        views = tables["scan"].rows[1][4]["hevcfs"] if len(tables["scan"].rows) > 1 else [None]
        most = max(views)
        aim(f"metadata scan <= {AIM_SCAN:g}x originals and 0 views rendered",
            met(r <= AIM_SCAN and most == 0),
            f"{r:.2f}x ({fmt(h)} vs {fmt(d)} s), views rendered per scan {views}")
    if "readers" in tables:
        t = tables["readers"]
        c, s = t.median("at once", "hevcfs"), t.median("one after another", "hevcfs")
        if c is not None and s is not None:
            aim("many readers: at once <= one after another", met(c <= s),
                f"{fmt(c)} vs {fmt(s)} s")


def main():
    if os.geteuid() != 0:
        print("fsbench: needs root (mounts, drop_caches)", file=sys.stderr)
        return 77
    if not os.access(BIN, os.X_OK):
        print(f"fsbench: {BIN} not built (make)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = tempfile.mkdtemp(prefix="hevcfs-bench-", dir=WORK_ROOT)
    print(f"fsbench: backing directories in {work}; mount points under /tmp; "
          f"{REPS} rounds; load {loadavg()}")
    print(f"  hevcfs {BIN} (-o {MOUNT_OPTS or 'defaults'}); bindfs "
          f"{shutil.which('bindfs') or 'MISSING'}; passthrough_hp {PTHP or 'MISSING'}")
    # passthrough_hp holds a descriptor per inode the kernel knows: at a hard
    # limit of 20,000 the ls -lR tree fails (EBADF) before it is made
    raise_nofile()
    print(f"  open files a daemon may hold: "
          f"{resource.getrlimit(resource.RLIMIT_NOFILE)[0]:,} (passthrough_hp needs one per "
          f"inode the kernel knows)")
    tables = {}
    fss = []
    try:
        fss.append(Direct(work))
        if shutil.which("bindfs"):
            fss.append(Bindfs(work))
        else:
            print("!!! bindfs missing (tools/deps.sh bench): its column is empty")
        if PTHP and os.access(PTHP, os.X_OK):
            fss.append(PassthroughHp(work))
        else:
            print("!!! passthrough_hp missing (bench/peers.sh): its column is empty")
        fss.append(Hevcfs(work))
        REGISTRY.extend(fss)
        for fs in fss:
            if not fs.start():
                raise RuntimeError(f"{fs.name} would not mount: {fs.refusal}")
        for g, fn in (("small", group_small), ("large", group_large), ("ls", group_ls),
                      ("fsx", group_fsx), ("rss", group_rss)):
            if g in GROUPS:
                tables[g] = fn(fss)
                tables[g].print()
                sys.stdout.flush()
        if GROUPS & {"scan", "readers", "verify"}:
            names = photo_setup(fss, work)
            if not names:
                print("\n!!! hevcfs archived none of the photos: no scan, readers, verify")
            else:
                if "scan" in GROUPS:
                    tables["scan"] = group_scan(fss, names)
                    tables["scan"].print()
                if "readers" in GROUPS:
                    tables["readers"] = group_readers(fss, names)
                    tables["readers"].print()
                if "verify" in GROUPS:
                    group_verify(fss[-1], names)
        aims_fs(tables)
        if "scale" in GROUPS:
            if SCALE:
                group_scale(work)
            else:
                aim(f"RSS after 1M files <= {AIM_RSS_GROWTH:g}x RSS after 10k (scale mode)",
                    "not measured", "HEVCFS_BENCH_SCALE=1 runs it")
        print(f"\n(load at the end: {loadavg()})")
    finally:
        for fs in REGISTRY:
            fs.stop()
        for fs in REGISTRY:
            if fs.fuse and not os.path.ismount(fs.mnt):
                try:
                    os.rmdir(fs.mnt)
                except OSError as e:
                    log(f"left {fs.mnt}: {e}")
        shutil.rmtree(work, ignore_errors=True)
    if not AIMS_FILE:
        print("\nAims:")
        for text, verdict, detail in AIMS:
            print(f"  {text}: {verdict} ({detail})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
