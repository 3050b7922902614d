#!/usr/bin/env python3
"""Every crash state of a commit, checked.

For each scenario (a photo archived, a video archived, an archived photo
edited, a rename, a move to another directory and an unlink racing an
archive) the daemon runs under
strace (mount option splice=off, so every write it makes is a plain write
the trace shows whole). The trace becomes a list of operations on BACKING
(trace.py); from it come the on-disk states a crash may leave (states.py).
Each state is built in a scratch directory and recovered the way a user
would: `hevcfs fsck`, a mount, `hevcfs wait`. Then:

  - recovery succeeds: fsck exits 0, the mount comes up, wait returns 0;
  - nothing is lost: a file whose bytes were whole on disk in the state (as
    written, or as a complete archive) reads back whole: its bytes, or for
    an archived photo a JPEG of its size and dimensions, or for a video a
    complete MP4;
  - nothing is there twice: each file under one of its names only, and one
    backing file per logical file;
  - index and tree agree: status counts the files listed, nothing staged or
    pending is left, and fsck after unmounting changes nothing.

Usage: check.py [--scenario NAME,...] [--every N] [--jobs N] [--keep DIR]
Exit status 0 when every state passes. Needs root (mounts), strace, ffmpeg.
"""
import argparse
import concurrent.futures
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import states  # noqa: E402
import trace  # noqa: E402

BIN = os.path.abspath(os.environ.get("HEVCFS_BIN", os.path.join(HERE, "..", "..", "hevcfs")))
# fast encodes; the video floor low enough that the tiny clip is archived,
# not kept (a kept clip would leave no commit to crash in)
OPTS = "settle_ms=50,workers=1,preset=ultrafast,crf=18,min_video_ssim=0.9,splice=off"
ARCHIVE_SUFFIXES = (".heic", ".mp4", ".mkv")


def run(*args, timeout=120, check=True, **kw):
    p = subprocess.run(list(args), capture_output=True, timeout=timeout, **kw)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, args))}: exit {p.returncode}: "
                           f"{p.stderr.decode(errors='replace')[-2000:]}")
    return p


def make_jpeg(width, height, seed):
    """A JPEG that HEVC beats (smooth gradients, a little noise)."""
    import random
    rnd = random.Random(seed)
    px = bytearray()
    for y in range(height):
        for x in range(width):
            n = rnd.randrange(4)
            px += bytes(((x * 255 // (width - 1) + n) % 256, (y * 255 // (height - 1) + n) % 256,
                         ((x + y) * 3 + seed * 40 + n) % 256))
    ppm = f"P6\n{width} {height}\n255\n".encode() + bytes(px)
    return run("cjpeg", "-quality", "95", input=ppm).stdout


def make_video(path):
    run("ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
        "testsrc2=size=96x64:rate=25", "-t", "1", "-c:v", "mjpeg", "-q:v", "2", path)
    with open(path, "rb") as f:
        return f.read()


def jpeg_dims(data):
    """(width, height) of a JPEG's frame header, or None."""
    i = 2
    if data[:2] != b"\xff\xd8":
        return None
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        m = data[i + 1]
        if m in (0xD8, 0x01) or 0xD0 <= m <= 0xD7:
            i += 2
            continue
        ln = int.from_bytes(data[i + 2:i + 4], "big")
        if m in (0xC0, 0xC1, 0xC2) and i + 9 <= len(data):
            return (int.from_bytes(data[i + 7:i + 9], "big"),
                    int.from_bytes(data[i + 5:i + 7], "big"))
        i += 2 + ln
    return None


class Mount:
    def __init__(self, backing, mnt, wrap=()):
        self.backing, self.mnt, self.wrap = backing, mnt, list(wrap)
        self.proc = None
        self.log = tempfile.TemporaryFile()

    def start(self):
        os.makedirs(self.mnt, exist_ok=True)
        env = dict(os.environ)
        if self.wrap:
            # LeakSanitizer cannot run under ptrace; the untraced mounts
            # that recover each state still look for leaks
            env["ASAN_OPTIONS"] = env.get("ASAN_OPTIONS", "") + ":detect_leaks=0"
        self.proc = subprocess.Popen(self.wrap + [BIN, self.backing, self.mnt, "-f", "-o", OPTS],
                                     stdout=self.log, stderr=self.log, env=env)
        deadline = time.time() + 30
        while time.time() < deadline:
            if os.path.ismount(self.mnt):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        raise RuntimeError("the mount did not come up: " + self.text())

    def text(self):
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-3000:]

    def wait(self, timeout=60):
        p = run(BIN, "wait", self.backing, "--timeout", str(timeout), timeout=timeout + 30,
                check=False)
        if p.returncode != 0:
            raise RuntimeError(f"wait: exit {p.returncode}: {p.stderr.decode()[-500:]}")

    def stop(self):
        if self.proc is None:
            return
        for _ in range(100):
            r = subprocess.run(["fusermount3", "-u", self.mnt], capture_output=True)
            if r.returncode == 0 or not os.path.ismount(self.mnt):
                break
            time.sleep(0.1)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            subprocess.run(["fusermount3", "-u", "-z", self.mnt], capture_output=True)
            raise RuntimeError("the daemon did not end after unmount")
        rc = self.proc.returncode
        self.proc = None
        if rc != 0:
            raise RuntimeError(f"the daemon exited {rc}: " + self.text())

    def kill(self):
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None
        subprocess.run(["fusermount3", "-u", "-z", self.mnt], capture_output=True)


# ---- scenarios --------------------------------------------------------------

class Scenario:
    """files: logical file -> {"names": allowed names, "versions": [bytes],
    "kind": photo|video|plain}. prepare(mnt) runs untraced on a mount,
    act(mnt) traced."""

    def __init__(self, name, files, prepare, act, archives=True):
        self.name, self.files, self.prepare, self.act = name, files, prepare, act
        self.archives = archives  # the trace must hold an archive commit


def put(path, data):
    with open(path, "wb") as f:
        f.write(data)


def scenarios(tmp):
    p1, p2 = make_jpeg(96, 64, 1), make_jpeg(96, 64, 2)
    video = make_video(os.path.join(tmp, "clip.avi"))

    def nothing(mnt):
        pass

    def photo(mnt):
        put(os.path.join(mnt, "p.jpg"), p1)

    def archived(mnt):
        put(os.path.join(mnt, "p.jpg"), p1)

    def edit(mnt):
        with open(os.path.join(mnt, "p.jpg"), "r+b") as f:
            f.truncate(0)
            f.write(p2)

    def rename_race(mnt):
        put(os.path.join(mnt, "p.jpg"), p1)
        time.sleep(0.08)  # settled and queued: the archive is under way
        os.rename(os.path.join(mnt, "p.jpg"), os.path.join(mnt, "q.jpg"))

    def subdir(mnt):
        os.mkdir(os.path.join(mnt, "sub"))

    def move_race(mnt):
        put(os.path.join(mnt, "p.jpg"), p1)
        time.sleep(0.08)
        os.rename(os.path.join(mnt, "p.jpg"), os.path.join(mnt, "sub", "q.jpg"))

    def unlink_race(mnt):
        put(os.path.join(mnt, "p.jpg"), p1)
        put(os.path.join(mnt, "keep.txt"), b"plain bytes\n")
        time.sleep(0.08)
        os.unlink(os.path.join(mnt, "p.jpg"))

    def clip(mnt):
        put(os.path.join(mnt, "clip.avi"), video)

    return [
        Scenario("photo", {"p": {"names": ["p.jpg"], "versions": [p1], "kind": "photo"}},
                 nothing, photo),
        Scenario("video", {"v": {"names": ["clip.avi"], "versions": [video], "kind": "video"}},
                 nothing, clip),
        Scenario("edit", {"p": {"names": ["p.jpg"], "versions": [p1, p2], "kind": "photo",
                                "rewrite": p2}},
                 archived, edit),
        Scenario("rename", {"p": {"names": ["p.jpg", "q.jpg"], "versions": [p1],
                                  "kind": "photo"}}, nothing, rename_race),
        Scenario("move", {"p": {"names": ["p.jpg", "sub/q.jpg"], "versions": [p1],
                                "kind": "photo"}}, subdir, move_race),
        Scenario("unlink", {"p": {"names": ["p.jpg"], "versions": [p1], "kind": "photo",
                                  "may_go": True},
                            "k": {"names": ["keep.txt"], "versions": [b"plain bytes\n"],
                                  "kind": "plain"}}, nothing, unlink_race, archives=False),
    ]


def record(sc, work):
    """Run sc under strace: (initial Tree, ops, whole archives seen)."""
    backing, mnt = os.path.join(work, "backing"), os.path.join(work, "mnt")
    os.makedirs(backing)
    m = Mount(backing, mnt)
    m.start()
    try:
        sc.prepare(mnt)
        m.wait()
    finally:
        m.stop()
    initial = trace.Tree.snapshot(backing)
    out = os.path.join(work, "trace.txt")
    m = Mount(backing, mnt, wrap=trace.strace_cmd(out))
    m.start()
    try:
        sc.act(mnt)
        m.wait()
    finally:
        m.stop()
    ops, model = trace.parse(out, backing, initial)
    real = trace.Tree.snapshot(backing)
    # the model must be what the daemon really left (LMDB's lock file is a
    # shared mapping, not modelled)
    for t in (real, model):
        t.names.pop(".hevcfs/index/lock.mdb", None)
    diff = [p for p in set(real.names) | set(model.names)
            if (p in real.names) != (p in model.names) or
            (not real.inodes[real.names[p]].get("dir") and
             real.inodes[real.names[p]]["data"] != model.inodes[model.names[p]]["data"])]
    if diff:
        raise RuntimeError(f"{sc.name}: the trace's model differs from the tree in {diff}")
    # every archive as it was when renamed into place
    whole = set()
    t = initial.copy()
    for op in ops:
        if op.kind == "rename" and op.args[1].endswith(ARCHIVE_SUFFIXES) and \
                op.args[0] in t.names:
            whole.add(hashlib.sha256(bytes(t.inodes[t.names[op.args[0]]]["data"])).digest())
        t.apply(op)
    if sc.archives and not whole:
        raise RuntimeError(f"{sc.name}: nothing was archived while traced, so no commit "
                           "was crashed in")
    for p, i in initial.names.items():
        if p.endswith(ARCHIVE_SUFFIXES):
            whole.add(hashlib.sha256(bytes(initial.inodes[i]["data"])).digest())
    return initial, ops, whole


# ---- one state ----------------------------------------------------------------

def whole_in(sc, tree, whole):
    """The logical files whose bytes are whole in tree (before recovery)."""
    out = set()
    for key, f in sc.files.items():
        digests = {hashlib.sha256(v).digest() for v in f["versions"]}
        for n in f["names"]:
            for p in [n] + [n + s for s in ARCHIVE_SUFFIXES]:
                i = tree.names.get(p)
                if i is None or tree.inodes[i].get("dir"):
                    continue
                d = hashlib.sha256(bytes(tree.inodes[i]["data"])).digest()
                if d in digests or (p != n and d in whole):
                    out.add(key)
    return out


def crash_states(ops, initial):
    """(description, Tree) of every state to check: those a crash of the
    machine may leave (the mark of the mount then names an earlier boot), and
    every prefix as a crash of the daemon alone leaves it (the page cache
    keeps every write; the mark names this boot)."""
    other = b"00000000-0000-0000-0000-000000000000"
    for desc, t in states.generate(ops, initial):
        i = t.names.get(".hevcfs/dirty")
        if i is not None:
            t.inodes[i]["data"] = bytearray(other)
        yield "machine: " + desc, t
    t = initial.copy()
    for k in range(len(ops) + 1):
        if k:
            t.apply(ops[k - 1])
        if k < len(ops) and ops[k].kind in states.DATA and k and \
                ops[k - 1].kind in states.DATA and ops[k].args[0] == ops[k - 1].args[0]:
            continue
        yield f"daemon: all of the first {k}" + (f" (crash after #{k - 1} {ops[k - 1]!r})"
                                                  if k else ""), t.copy()


def check_state(sc, tree, whole, scratch):
    """The problems found recovering tree (a list of strings)."""
    problems = []
    backing, mnt = os.path.join(scratch, "backing"), os.path.join(scratch, "mnt")
    shutil.rmtree(scratch, ignore_errors=True)
    os.makedirs(scratch)
    tree.write_out(backing)
    must = whole_in(sc, tree, whole)
    p = run(BIN, "fsck", backing, check=False)
    if p.returncode != 0:
        return [f"fsck exit {p.returncode}: {p.stderr.decode(errors='replace')[-400:]}"]
    m = Mount(backing, mnt)
    try:
        m.start()
        m.wait()
        listed = {}
        for d, dns, fns in os.walk(mnt):
            for n in fns:
                rel = os.path.relpath(os.path.join(d, n), mnt)
                listed[rel] = listed.get(rel, 0) + 1
        for rel, c in listed.items():
            if c > 1:
                problems.append(f"{rel} listed {c} times")
        known = set()
        for key, f in sc.files.items():
            present = [n for n in f["names"] if n in listed]
            known.update(f["names"])
            if len(present) > 1:
                problems.append(f"{key} under two names: {present}")
            if not present:
                if key in must and not f.get("may_go"):
                    problems.append(f"{key} lost: whole on disk at the crash, gone after "
                                    "recovery")
                continue
            path = os.path.join(mnt, present[0])
            try:
                with open(path, "rb") as fh:
                    data = fh.read()
                size = os.stat(path).st_size
            except OSError as e:
                problems.append(f"{present[0]}: read: {e}")
                continue
            if size != len(data):
                problems.append(f"{present[0]}: stat says {size} bytes, read {len(data)}")
            if data in f["versions"]:
                continue
            # a file the user was rewriting: any state of that rewrite
            if f.get("rewrite") is not None and f["rewrite"].startswith(data):
                continue
            if f["kind"] == "photo" and jpeg_dims(data) is not None and \
                    jpeg_dims(data) in {jpeg_dims(v) for v in f["versions"]} and \
                    data.rstrip(b"\0").endswith(b"\xff\xd9"):
                continue
            if f["kind"] == "video" and data[4:8] == b"ftyp" and len(data) > 1000:
                pr = run("ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0",
                         "-show_entries", "stream=nb_read_frames", "-of", "csv=p=0", path,
                         check=False)
                if pr.returncode == 0 and pr.stdout.strip() == b"25":
                    continue
                problems.append(f"{present[0]}: not a whole video ({pr.stdout.strip()!r})")
                continue
            if key in must:
                problems.append(f"{present[0]}: {len(data)} bytes, neither a version "
                                "written nor a whole archive of one")
        for rel in listed:
            if rel not in known:
                problems.append(f"{rel}: a file nobody wrote")
        st = json.loads(run(BIN, "status", backing, "--json").stdout)
        if st.get("files") != len(listed):
            problems.append(f"status counts {st.get('files')} files, the mount lists "
                            f"{len(listed)}")
        if st.get("staged") or st.get("pending") or st.get("queue"):
            problems.append(f"left to do: staged {st.get('staged')} pending "
                            f"{st.get('pending')} queue {st.get('queue')}")
        m.stop()
    except Exception as e:  # noqa: BLE001 - a failed recovery is a finding
        problems.append(f"recovery: {e}")
        m.kill()
        return problems
    stored = [os.path.relpath(os.path.join(d, n), backing)
              for d, dns, fns in os.walk(backing) for n in fns
              if not os.path.relpath(d, backing).startswith(".hevcfs")]
    if len(stored) != len(listed):
        problems.append(f"{len(stored)} backing files for {len(listed)} files: {stored}")
    before = trace.Tree.snapshot(backing)
    p = run(BIN, "fsck", backing, check=False)
    if p.returncode != 0:
        problems.append(f"fsck after recovery: exit {p.returncode}")
    after = trace.Tree.snapshot(backing)
    if sorted(p for p in before.names if not p.startswith(".hevcfs")) != \
            sorted(p for p in after.names if not p.startswith(".hevcfs")):
        problems.append("a second fsck changed the tree")
    return problems


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenario", default="photo,video,edit,rename,move,unlink")
    ap.add_argument("--every", type=int, default=1,
                    help="check every Nth state only (a quicker pass)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--keep", help="copy each failing state here")
    ap.add_argument("--work", default=None)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("crash check: needs root (mounts)", file=sys.stderr)
        return 2
    if not shutil.which("strace"):
        print("crash check: needs strace (sh tools/deps.sh)", file=sys.stderr)
        return 2
    work = args.work or tempfile.mkdtemp(prefix="hevcfs-crash.", dir="/var/tmp")
    os.makedirs(work, exist_ok=True)
    wanted = args.scenario.split(",")
    total = bad = 0
    lock = threading.Lock()
    t0 = time.time()
    for sc in scenarios(work):
        if sc.name not in wanted:
            continue
        sw = os.path.join(work, sc.name)
        initial, ops, whole = record(sc, sw)
        todo = list(crash_states(ops, initial))[::args.every]
        print(f"{sc.name}: {len(ops)} operations traced, {len(todo)} distinct crash states",
              flush=True)
        failed = []

        def one(item):
            n, (desc, tree) = item
            scratch = os.path.join(sw, f"s{threading.get_ident()}")
            probs = check_state(sc, tree, whole, scratch)
            if probs:
                with lock:
                    failed.append((n, desc, probs))
                    if args.keep:
                        dest = os.path.join(args.keep, f"{sc.name}-{n}")
                        shutil.rmtree(dest, ignore_errors=True)
                        tree.write_out(dest)
            return probs

        with concurrent.futures.ThreadPoolExecutor(args.jobs) as ex:
            list(ex.map(one, enumerate(todo)))
        total += len(todo)
        bad += len(failed)
        for n, desc, probs in sorted(failed)[:20]:
            print(f"  UNSAFE state {n}: {desc}")
            for p in probs:
                print(f"    - {p}")
        print(f"{sc.name}: {len(todo) - len(failed)} of {len(todo)} states recovered safely",
              flush=True)
    print(f"crash states checked: {total}, unsafe: {bad} ({time.time() - t0:.0f} s)")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
