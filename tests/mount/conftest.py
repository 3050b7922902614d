"""Mount fixtures: every test here runs the real hevcfs binary on a temporary
backing directory and mount point, and unmounts it afterwards.

HEVCFS_BIN names the binary (default ./hevcfs). A sanitizer build's reports
land in the daemon's stderr, which teardown reads: any report fails the test.
"""
import os
import shutil
import subprocess
import tempfile
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.abspath(os.environ.get("HEVCFS_BIN", os.path.join(REPO, "hevcfs")))
SANITIZER_MARKS = ("AddressSanitizer", "LeakSanitizer", "UndefinedBehaviorSanitizer",
                   "runtime error:", "ThreadSanitizer")


def fuse_available():
    return os.path.exists("/dev/fuse") and shutil.which("fusermount3") is not None


@pytest.fixture(scope="session", autouse=True)
def require_fuse():
    if not fuse_available():
        msg = "FUSE is unavailable (/dev/fuse or fusermount3 missing): mount tests cannot run"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)


def hevcfs(*args, check=True, timeout=120, **kw):
    """Run the hevcfs program (not the mount) and return the CompletedProcess."""
    p = subprocess.run([BIN, *args], capture_output=True, text=True, timeout=timeout, **kw)
    if check and p.returncode != 0:
        raise AssertionError(f"hevcfs {' '.join(args)} -> {p.returncode}\n{p.stderr}")
    return p


class Mount:
    """A running hevcfs mount of backing on mnt (foreground, in a child)."""

    def __init__(self, backing, mnt, opts="", env=None, wrap=()):
        self.backing, self.mnt, self.opts = backing, mnt, opts
        self.wrap = list(wrap)  # a command the daemon runs under (setpriv ...)
        self.env = dict(os.environ, **(env or {}))
        self.proc = None
        self.errlog = None

    def start(self, expect_fail=False):
        os.makedirs(self.mnt, exist_ok=True)
        self.errlog = tempfile.TemporaryFile(mode="w+")
        args = [*self.wrap, BIN, self.backing, self.mnt, "-f"]
        opts = "settle_ms=50,workers=2" + ("," + self.opts if self.opts else "")
        args += ["-o", opts]
        self.proc = subprocess.Popen(args, stderr=self.errlog, stdout=self.errlog, env=self.env)
        deadline = time.time() + 20
        while time.time() < deadline:
            if os.path.ismount(self.mnt):
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        if expect_fail:
            return self
        raise AssertionError(f"mount did not come up:\n{self.log()}")

    def log(self):
        if not self.errlog:
            return ""
        self.errlog.seek(0)
        return self.errlog.read()

    def wait_idle(self, timeout=120):
        """Wait until nothing is staged or pending (hevcfs wait)."""
        p = hevcfs("wait", self.backing, "--timeout", str(timeout), check=False,
                   timeout=timeout + 30)
        assert p.returncode == 0, f"wait: {p.returncode} {p.stderr}\n{self.log()}"

    def status(self):
        import json
        return json.loads(hevcfs("status", self.backing, "--json").stdout)

    def kill9(self):
        if self.proc is None:
            return
        self.proc.kill()
        self.proc.wait()
        subprocess.run(["fusermount3", "-u", "-z", self.mnt], capture_output=True)
        self.proc = None

    def stop(self, check=True):
        if self.proc is None:
            return
        for _ in range(100):
            r = subprocess.run(["fusermount3", "-u", self.mnt], capture_output=True, text=True)
            if r.returncode == 0 or not os.path.ismount(self.mnt):
                break
            time.sleep(0.1)
        else:
            # still busy (a failed test left a descriptor open): detach, so
            # no stale mount outlives the test
            subprocess.run(["fusermount3", "-u", "-z", self.mnt], capture_output=True)
        try:
            rc = self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self.proc = None
        log = self.log()
        if check:
            bad = [m for m in SANITIZER_MARKS if m in log]
            assert not bad, f"sanitizer report from the daemon:\n{log}"
            assert rc == 0, f"daemon exited {rc}:\n{log}"


@pytest.fixture
def dirs(tmp_path):
    backing = tmp_path / "backing"
    mnt = tmp_path / "mnt"
    backing.mkdir()
    mnt.mkdir()
    return str(backing), str(mnt)


@pytest.fixture
def mount(dirs):
    m = Mount(*dirs).start()
    yield m
    m.stop()


@pytest.fixture
def mount_factory(dirs):
    made = []

    def make(opts="", env=None, backing=None, wrap=()):
        m = Mount(backing or dirs[0], dirs[1], opts, env, wrap)
        made.append(m)
        return m

    yield make
    for m in made:
        if m.proc is not None:
            m.stop(check=False)


def make_jpeg(path, width=160, height=120, seed=0, quality=95, extra=(), noise=4):
    """A JPEG made with libjpeg-turbo's cjpeg from a generated PPM: smooth
    gradients with a little noise, so HEVC beats it at SSIM 0.99 and it is
    archived (tiny or noisy low-quality JPEGs are rightly kept)."""
    import random
    rnd = random.Random(seed)
    px = bytearray()
    for y in range(height):
        for x in range(width):
            n = rnd.randrange(noise)
            px += bytes(((x * 255 // max(1, width - 1) + n) % 256,
                         (y * 255 // max(1, height - 1) + n) % 256,
                         ((x + y) * 3 + seed * 40 + n) % 256))
    ppm = f"P6\n{width} {height}\n255\n".encode() + bytes(px)
    p = subprocess.run(["cjpeg", "-quality", str(quality), *extra], input=ppm,
                       capture_output=True, check=True)
    if path:
        with open(path, "wb") as f:
            f.write(p.stdout)
    return p.stdout


def backing_files(backing):
    """Every regular file of the backing tree outside the state directory,
    relative path -> bytes."""
    out = {}
    for d, dn, fn in os.walk(backing):
        if d == backing and ".hevcfs" in dn:
            dn.remove(".hevcfs")
        for n in fn:
            p = os.path.join(d, n)
            if os.path.isfile(p) and not os.path.islink(p):
                out[os.path.relpath(p, backing)] = open(p, "rb").read()
    return out


def traces(backing, needle, timeout=5):
    """Files anywhere below BACKING (its state directory too, but for the
    index) whose bytes contain needle. The kernel sends a release after
    close() returns, not before: the look is repeated until none is left
    or timeout."""
    deadline = time.time() + timeout
    while True:
        found = []
        for root, dirs, files in os.walk(backing):
            if root == os.path.join(backing, ".hevcfs"):
                dirs[:] = [d for d in dirs if d != "index"]
            for name in files:
                p = os.path.join(root, name)
                try:
                    with open(p, "rb") as fh:
                        if needle in fh.read():
                            found.append(p)
                except OSError:
                    pass
        if not found or time.time() > deadline:
            return found
        time.sleep(0.02)
