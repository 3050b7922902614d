"""What a file manager, cp -a, rsync -a and tar do, through the mount, and
nothing lost across unmount and remount."""
import hashlib
import os
import random
import shutil
import subprocess
import time

import pytest

from conftest import Mount, traces


def write_bytes(p, data):
    with open(p, "wb") as f:
        f.write(data)


def read_bytes(p):
    with open(p, "rb") as f:
        return f.read()


def make_mixed_tree(root, seed=1):
    """A tree with unicode and 255-byte names, deep paths, symlinks, empty
    files, odd modes and old mtimes."""
    rnd = random.Random(seed)
    j = lambda *p: os.path.join(root, *p)
    os.makedirs(j("photos", "2003 trip ✈", "día 1"))
    os.makedirs(j("empty dir"))
    names = ["plain.txt", "ünïcødé 文件.bin", "x" * 255, "spaces  and\ttab", "-dash",
             "a.JPG.heic", "UPPER.MP4", ".hidden", "emoji 😀.dat"]
    for i, n in enumerate(names):
        with open(j("photos", "2003 trip ✈", n), "wb") as f:
            f.write(rnd.randbytes(rnd.randrange(0, 70000)))
    open(j("photos", "empty"), "wb").close()
    with open(j("photos", "odd-mode"), "wb") as f:
        f.write(b"odd")
    os.chmod(j("photos", "odd-mode"), 0o4711)
    os.chmod(j("empty dir"), 0o700)
    os.symlink("2003 trip ✈/plain.txt", j("photos", "link"))
    os.symlink("/nonexistent/dangling", j("photos", "dangling"))
    # deep: ~3800 bytes below the tree (tools like cp and diff need the
    # absolute path under PATH_MAX; test_longest_path goes to 4095)
    deep = j("deep")
    comp = "d" * 200
    rel = 0
    while rel + len(comp) + 1 < 3800:
        deep = os.path.join(deep, comp)
        rel += len(comp) + 1
    os.makedirs(deep)
    with open(os.path.join(deep, "leaf"), "wb") as f:
        f.write(b"deep leaf")
    for dirpath, dirnames, filenames in os.walk(root):
        for n in filenames + dirnames:
            p = os.path.join(dirpath, n)
            if not os.path.islink(p):
                os.utime(p, ns=(946684800_123456789, 1000000000_987654321 + len(n)))
    os.utime(j("photos", "link"), ns=(5, 6), follow_symlinks=False)


def listing(root):
    out = subprocess.run(["find", ".", "-printf", r"%p %y %m %s %T@ %l\n"], cwd=root,
                         capture_output=True, text=True, check=True).stdout
    # a directory's size is the file system's business, not ours
    lines = []
    for line in out.splitlines():
        parts = line.split(" ")
        lines.append(line)
    return sorted(lines)


def listing_nodirsize(root):
    out = subprocess.run(["find", ".", "-printf", r"%p %y %m %T@ %l\n"], cwd=root,
                         capture_output=True, text=True, check=True).stdout
    return sorted(out.splitlines())


def test_cp_a_round_trip(mount, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    make_mixed_tree(str(src))
    dst = os.path.join(mount.mnt, "in")
    subprocess.run(["cp", "-a", str(src), dst], check=True)
    mount.wait_idle()
    back = tmp_path / "back"
    subprocess.run(["cp", "-a", dst, str(back)], check=True)
    subprocess.run(["diff", "-r", "--no-dereference", str(src), str(back)], check=True)
    assert listing_nodirsize(str(src)) == listing_nodirsize(str(back))
    assert listing_nodirsize(str(src)) == listing_nodirsize(dst)
    # and the backing tree holds the same plain files
    subprocess.run(["diff", "-r", "--no-dereference", str(src),
                    os.path.join(mount.backing, "in")], check=True)


def test_rsync_and_tar(mount, tmp_path):
    if not shutil.which("rsync"):
        pytest.skip("rsync is not installed")
    src = tmp_path / "src"
    src.mkdir()
    make_mixed_tree(str(src), seed=2)
    subprocess.run(["rsync", "-a", str(src) + "/", os.path.join(mount.mnt, "r") + "/"],
                   check=True)
    subprocess.run(["diff", "-r", "--no-dereference", str(src), os.path.join(mount.mnt, "r")],
                   check=True)
    # rsync sets neither the top directory's nor a symlink's time here, on a
    # local disk either: compare with what it does on one
    local = tmp_path / "local"
    subprocess.run(["rsync", "-a", str(src) + "/", str(local) + "/"], check=True)
    strip = lambda ls: [l for l in ls if not l.startswith(". ") and " l " not in l]
    assert strip(listing_nodirsize(str(local))) == strip(
        listing_nodirsize(os.path.join(mount.mnt, "r")))
    tarball = tmp_path / "t.tar"
    subprocess.run(["tar", "--format=posix", "-C", str(src), "-cf", str(tarball), "."],
                   check=True)
    for root in (os.path.join(mount.mnt, "t"), str(tmp_path / "t")):
        os.mkdir(root)
        subprocess.run(["tar", "-C", root, "-xpf", str(tarball)], check=True)
    assert listing_nodirsize(str(tmp_path / "t")) == listing_nodirsize(
        os.path.join(mount.mnt, "t"))
    assert strip(listing_nodirsize(str(src))) == strip(
        listing_nodirsize(os.path.join(mount.mnt, "t")))


def test_remount_keeps_everything(dirs, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    make_mixed_tree(str(src), seed=3)
    m = Mount(*dirs).start()
    subprocess.run(["cp", "-a", str(src), os.path.join(m.mnt, "in")], check=True)
    m.stop()
    m = Mount(*dirs).start()
    try:
        subprocess.run(["diff", "-r", "--no-dereference", str(src), os.path.join(m.mnt, "in")],
                       check=True)
        assert listing_nodirsize(str(src)) == listing_nodirsize(os.path.join(m.mnt, "in"))
        m.wait_idle()
        st = m.status()
        assert st["staged"] == 0 and st["pending"] == 0 and st["failed"] == 0
        nfiles = sum(len(f) for _, _, f in os.walk(str(src)))
        nlinks = 2
        assert st["files"] == nfiles - nlinks
    finally:
        m.stop()


def test_big_directory_streams(mount):
    """readdir hands out a large directory in pieces, every name once."""
    d = os.path.join(mount.backing, "big")
    os.mkdir(d)
    n = int(os.environ.get("HEVCFS_TEST_BIGDIR", "100000"))
    for i in range(n):
        open(os.path.join(d, f"file-{i:06d}"), "wb").close()
    names = os.listdir(os.path.join(mount.mnt, "big"))
    assert len(names) == n and len(set(names)) == n


def test_large_file_over_4gib(mount):
    f = os.path.join(mount.mnt, "large.bin")
    fd = os.open(f, os.O_WRONLY | os.O_CREAT, 0o644)
    block = hashlib.sha256(b"seed").digest() * 32768  # 1 MiB
    os.pwrite(fd, block, 0)
    os.pwrite(fd, block, (4 << 30) + 1)
    os.close(fd)
    assert os.path.getsize(f) == (4 << 30) + 1 + len(block)
    with open(f, "rb") as fh:
        fh.seek((4 << 30) + 1)
        assert fh.read(len(block)) == block
        fh.seek(len(block))
        assert fh.read(4096) == b"\0" * 4096


def test_write_while_reading_and_overwrite(mount):
    f = os.path.join(mount.mnt, "f")
    with open(f, "wb") as fh:
        fh.write(b"a" * 100000)
    with open(f, "rb") as r, open(f, "r+b") as w:
        w.seek(50000)
        w.write(b"b" * 10)
        w.flush()
        r.seek(50000)
        assert r.read(10) == b"b" * 10
    mount.wait_idle()
    with open(f, "ab") as fh:
        fh.write(b"tail")
    mount.wait_idle()
    data = open(f, "rb").read()
    assert data == b"a" * 50000 + b"b" * 10 + b"a" * 49990 + b"tail"
    assert open(os.path.join(mount.backing, "f"), "rb").read() == data


def test_unlink_while_open(mount):
    f = os.path.join(mount.mnt, "gone")
    fd = os.open(f, os.O_RDWR | os.O_CREAT, 0o644)
    os.write(fd, b"still here")
    os.unlink(f)
    assert not os.path.exists(f)
    assert os.pread(fd, 10, 0) == b"still here"
    os.close(fd)
    mount.wait_idle()
    st = mount.status()
    assert st["files"] == 0


def test_removed_while_open_leaves_nothing(mount):
    """A file removed while open answers fstat() and I/O, shows in no
    listing, lets its directory go, and leaves nothing behind at its last
    close: no file in BACKING, no index entry."""
    mnt, backing = mount.mnt, mount.backing
    os.mkdir(os.path.join(mnt, "d"))
    f = os.path.join(mnt, "d", "tmp")
    fd = os.open(f, os.O_RDWR | os.O_CREAT, 0o600)
    os.write(fd, b"scratch")
    os.unlink(f)
    assert os.fstat(fd).st_nlink == 0
    assert os.listdir(os.path.join(mnt, "d")) == []
    assert os.listdir(os.path.join(backing, "d")) == []
    os.rmdir(os.path.join(mnt, "d"))
    os.write(fd, b" and more")
    assert os.pread(fd, 100, 0) == b"scratch and more"
    assert os.fstat(fd).st_size == 16
    os.close(fd)
    assert traces(backing, b"scratch") == []
    # a rename over an open file: the old file's bytes stay readable
    write_bytes(os.path.join(mnt, "t"), b"old bytes")
    write_bytes(os.path.join(mnt, "s"), b"new")
    fd = os.open(os.path.join(mnt, "t"), os.O_RDONLY)
    os.rename(os.path.join(mnt, "s"), os.path.join(mnt, "t"))
    assert os.pread(fd, 10, 0) == b"old bytes"
    assert os.fstat(fd).st_nlink == 0
    os.close(fd)
    assert traces(backing, b"old bytes") == []
    mount.wait_idle()
    st = mount.status()
    assert st["files"] == 1 and st["bytes_original"] == 3
    assert sorted(os.listdir(mnt)) == ["t"]
    assert read_bytes(os.path.join(mnt, "t")) == b"new"


def test_close_then_unlink_from_many_threads(mount):
    """close() then unlink() at once, from several threads: the release of
    the handle and the removal race inside the daemon; every unlink must
    succeed and nothing may be left behind."""
    import threading
    errors = []

    def churn(t):
        for i in range(300):
            p = os.path.join(mount.mnt, f"t{t}-{i}")
            try:
                fd = os.open(p, os.O_WRONLY | os.O_CREAT, 0o644)
                os.write(fd, b"churned " * 12)
                os.close(fd)
                os.unlink(p)
            except OSError as e:
                errors.append(e)

    threads = [threading.Thread(target=churn, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert os.listdir(mount.mnt) == []
    assert traces(mount.backing, b"churned") == []
    mount.wait_idle()
    assert mount.status()["files"] == 0


def test_names_like_hidden_ones_are_ordinary(mount):
    """Names of the form libfuse gives files removed while open can still be
    used: created, renamed to, listed, kept across a remount."""
    mnt = mount.mnt
    name = ".fuse_hidden0000000a00000001"
    write_bytes(os.path.join(mnt, "f"), b"renamed")
    os.rename(os.path.join(mnt, "f"), os.path.join(mnt, name))
    os.mkdir(os.path.join(mnt, "d"))
    write_bytes(os.path.join(mnt, "d", name), b"created")
    os.mkdir(os.path.join(mnt, "d", name + "0"))
    assert sorted(os.listdir(mnt)) == [name, "d"]
    assert sorted(os.listdir(os.path.join(mnt, "d"))) == [name, name + "0"]
    assert read_bytes(os.path.join(mnt, name)) == b"renamed"
    assert read_bytes(os.path.join(mnt, "d", name)) == b"created"
    # and unlinked while open like any file
    fd = os.open(os.path.join(mnt, name), os.O_RDONLY)
    os.unlink(os.path.join(mnt, name))
    assert os.fstat(fd).st_nlink == 0 and os.pread(fd, 20, 0) == b"renamed"
    os.close(fd)
    mount.wait_idle()
    mount.stop()
    mount.start()
    assert sorted(os.listdir(mnt)) == ["d"]
    assert read_bytes(os.path.join(mnt, "d", name)) == b"created"
    assert mount.status()["files"] == 1


def test_names_like_hidden_ones_beside_a_removed_open_file(mount):
    """A file removed while open in one directory while another directory
    holds names of the form libfuse's path API gives such files: each is an
    ordinary file, and renaming an open file to such a name loses nothing."""
    mnt, backing = mount.mnt, mount.backing
    for d in ("d", "e"):
        os.mkdir(os.path.join(mnt, d))
    fd = os.open(os.path.join(mnt, "e", "gone"), os.O_RDWR | os.O_CREAT, 0o644)
    os.write(fd, b"removed")
    os.unlink(os.path.join(mnt, "e", "gone"))
    name = ".fuse_hidden0000000100000001"
    write_bytes(os.path.join(mnt, "d", name), b"mine")
    assert read_bytes(os.path.join(mnt, "d", name)) == b"mine"
    assert os.listdir(os.path.join(mnt, "d")) == [name]
    assert os.listdir(os.path.join(mnt, "e")) == []
    assert os.pread(fd, 20, 0) == b"removed"
    os.close(fd)
    assert traces(backing, b"removed") == []
    assert read_bytes(os.path.join(mnt, "d", name)) == b"mine"
    # an open file renamed to such a name by hand stays a file
    mine = ".fuse_hidden0123456789abcdef"
    write_bytes(os.path.join(mnt, "d", "x"), b"kept")
    fd = os.open(os.path.join(mnt, "d", "x"), os.O_RDONLY)
    os.rename(os.path.join(mnt, "d", "x"), os.path.join(mnt, "d", mine))
    assert sorted(os.listdir(os.path.join(mnt, "d"))) == sorted([name, mine])
    assert os.pread(fd, 10, 0) == b"kept"
    os.close(fd)
    mount.wait_idle()
    mount.stop()
    mount.start()
    assert read_bytes(os.path.join(mnt, "d", mine)) == b"kept"
    assert read_bytes(os.path.join(mnt, "d", name)) == b"mine"
    assert mount.status()["files"] == 2

def test_editor_save_pattern(mount):
    """Write a temporary name, fsync, rename over the original."""
    f = os.path.join(mount.mnt, "doc.txt")
    with open(f, "w") as fh:
        fh.write("v1")
    for v in range(2, 6):
        tmp = f + ".swp"
        with open(tmp, "w") as fh:
            fh.write(f"v{v}")
            fh.flush()
            os.fsync(fh.fileno())
        os.rename(tmp, f)
    mount.wait_idle()
    assert open(f).read() == "v5"
    st = mount.status()
    assert st["files"] == 1 and st["kept"] == 1


def test_cli_contract(dirs):
    from conftest import hevcfs, BIN
    assert hevcfs("--version").stdout.startswith("hevcfs ")
    assert "usage" in hevcfs("--help").stdout
    p = hevcfs(check=False)
    assert p.returncode == 64 and "usage" in p.stderr
    p = hevcfs(dirs[0], check=False)
    assert p.returncode == 64 and "missing MOUNTPOINT" in p.stderr
    p = hevcfs(dirs[0], dirs[1], "-o", "bogus_option=1", check=False)
    assert p.returncode != 0 and "bogus_option" in p.stderr
    p = hevcfs(dirs[0], dirs[1], "-o", "view=weird", check=False)
    assert p.returncode == 64 and "view=weird" in p.stderr
    p = hevcfs("status", check=False)
    assert p.returncode == 64
    import json
    st = json.loads(hevcfs("status", dirs[0], "--json").stdout)
    for k in ("files", "staged", "pending", "archived", "kept", "failed", "bytes_original",
              "bytes_stored"):
        assert k in st
    assert hevcfs("wait", dirs[0], "--timeout", "1").returncode == 0


def test_mount_subcommand_and_second_mount_refused(dirs, tmp_path):
    from conftest import BIN
    m = Mount(*dirs).start()
    try:
        other = tmp_path / "mnt2"
        other.mkdir()
        p = subprocess.run([BIN, "mount", dirs[0], str(other), "-f"], capture_output=True,
                           text=True, timeout=30)
        assert p.returncode != 0 and "already mounted" in p.stderr
    finally:
        m.stop()


def test_wait_times_out_while_writer_open(mount):
    from conftest import hevcfs
    fd = os.open(os.path.join(mount.mnt, "open"), os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, b"x")
    p = hevcfs("wait", mount.backing, "--timeout", "0.5", check=False)
    assert p.returncode == 1
    assert mount.status()["staged"] == 1
    os.close(fd)
    mount.wait_idle()


def test_mount_fuse3_helper_and_fstab_form(dirs, tmp_path):
    """mount.fuse3 starts hevcfs as an fstab line would. With hevcfs on root's
    PATH the line reads "BACKING MNT fuse.hevcfs opts"; here the binary is
    named in the source ("PROGRAM#BACKING", the same helper and code path)."""
    import shutil
    import time
    from conftest import BIN, hevcfs
    if not shutil.which("mount.fuse3") and not os.path.exists("/sbin/mount.fuse3"):
        pytest.skip("mount.fuse3 not installed")
    r = subprocess.run(["mount", "-t", "fuse", f"{BIN}#{dirs[0]}", dirs[1], "-o",
                        "settle_ms=50,workers=1,allow_other"], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stderr
    try:
        with open(os.path.join(dirs[1], "via-fstab"), "w") as f:
            f.write("ok")
        assert open(os.path.join(dirs[0], "via-fstab")).read() == "ok"
    finally:
        subprocess.run(["fusermount3", "-u", dirs[1]], check=True)
        # the daemon leaves after the unmount; wait for its lock to go
        for _ in range(100):
            if '"mounted":false' in hevcfs("status", dirs[0], "--json").stdout:
                break
            time.sleep(0.1)


def test_longest_path(mount):
    """A path of 4095 bytes below the mount, 255-byte names along it, walked
    relative to directory fds as the kernel limits a single path string."""
    comps = ["d" * 255] * 15 + ["e" * 70]
    leaf = "L" * (4095 - sum(len(c) + 1 for c in comps))
    assert len("/".join(comps + [leaf])) == 4095 and len(leaf) <= 255
    dfd = os.open(mount.mnt, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for c in comps:
            os.mkdir(c, dir_fd=dfd)
            nfd = os.open(c, os.O_RDONLY | os.O_DIRECTORY, dir_fd=dfd)
            os.close(dfd)
            dfd = nfd
        fd = os.open(leaf, os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=dfd)
        os.write(fd, b"at the limit")
        os.close(fd)
        assert os.stat(leaf, dir_fd=dfd).st_size == 12
        os.rename(leaf, leaf[:-1] + "M", src_dir_fd=dfd, dst_dir_fd=dfd)
    finally:
        os.close(dfd)
    mount.wait_idle()
    st = mount.status()
    assert st["kept"] == 1 and st["files"] == 1


def test_open_rdonly_trunc_is_a_change(mount):
    """Linux truncates on open(O_RDONLY | O_TRUNC): the file settles again
    and the index follows (it kept the old size and digests, so a scrub
    would have called the file damaged)."""
    p = os.path.join(mount.mnt, "t.txt")
    write_bytes(p, b"hello world")
    mount.wait_idle()
    fd = os.open(p, os.O_RDONLY | os.O_TRUNC)
    os.close(fd)
    assert os.stat(p).st_size == 0
    mount.wait_idle()
    st = mount.status()
    assert st["files"] == 1 and st["bytes_original"] == 0, st
    assert read_bytes(p) == b""
    from conftest import hevcfs
    v = hevcfs("verify", mount.backing, check=False)
    assert v.returncode == 0, v.stdout + v.stderr


def _acl(path):
    """getfacl's entries of path (no header)."""
    out = subprocess.run(["getfacl", "-cp", path], capture_output=True, text=True,
                         check=True).stdout
    return [line for line in out.splitlines() if line and not line.startswith("#")]


def test_posix_acls_as_on_a_local_disk(mount_factory, tmp_path):
    """POSIX ACLs work through the mount as on the backing disk: set, read
    back, enforced, inherited from a directory's default ACL, with the
    creator's umask where no default ACL decides; an archived photo keeps
    its ACL."""
    from conftest import make_jpeg
    mount = mount_factory("allow_other").start()  # others may use it at all
    local = tmp_path / "local"
    local.mkdir()
    for root in (mount.mnt, str(local)):
        old = os.umask(0o027)
        try:
            os.mkdir(os.path.join(root, "d"))
            subprocess.run(["setfacl", "-d", "-m", "u:nobody:rwx", os.path.join(root, "d")],
                           check=True)
            for p in ("d/inherits", "plain"):
                with open(os.path.join(root, p), "w") as f:
                    f.write("x")
            os.mkdir(os.path.join(root, "d", "sub"))
        finally:
            os.umask(old)
        subprocess.run(["setfacl", "-m", "u:nobody:r", os.path.join(root, "plain")], check=True)
    for p in ("d", "d/inherits", "d/sub", "plain"):
        m, loc = os.path.join(mount.mnt, p), os.path.join(str(local), p)
        assert _acl(m) == _acl(loc), p
        assert oct(os.stat(m).st_mode) == oct(os.stat(loc).st_mode), p
    assert "user:nobody:r--" in _acl(os.path.join(mount.mnt, "plain"))
    # enforced: nobody may read plain (its ACL says so) but not write it
    # (relative names from the mount: the test's own directories are 0700)
    r = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                        "sh", "-c", "cat plain && echo y >> plain"], cwd=mount.mnt,
                       capture_output=True, text=True)
    assert r.stdout == "x" and "denied" in r.stderr.lower(), (r.stdout, r.stderr)
    # an archived photo keeps the ACL its original had
    photo = os.path.join(mount.mnt, "p.jpg")
    make_jpeg(photo, seed=61)
    subprocess.run(["setfacl", "-m", "u:nobody:rw", photo], check=True)
    mount.wait_idle()
    assert os.path.exists(os.path.join(mount.backing, "p.jpg.heic"))
    assert "user:nobody:rw-" in _acl(photo)
    assert "user:nobody:rw-" in _acl(os.path.join(mount.backing, "p.jpg.heic"))


def test_listing_twice_shows_every_change(mount):
    """A directory listed before (the kernel then holds its entries) and
    listed again after changes through the mount shows every change: mode,
    size, times, owner, ACL, a rename and a new file."""
    d = os.path.join(mount.mnt, "d")
    os.mkdir(d)
    for i in range(40):
        write_bytes(os.path.join(d, f"f{i}"), b"x" * i)
    ls = lambda: subprocess.run(["ls", "-lan", "--time-style=+%s", d], capture_output=True,
                                text=True, check=True).stdout
    before = ls()
    assert ls() == before
    assert _acl(os.path.join(d, "f3")) == _acl(os.path.join(d, "f4"))
    os.chmod(os.path.join(d, "f1"), 0o600)
    with open(os.path.join(d, "f2"), "ab") as f:
        f.write(b"more")
    os.truncate(os.path.join(d, "f3"), 1000)
    os.utime(os.path.join(d, "f4"), (1000000000, 1000000000))
    os.chown(os.path.join(d, "f5"), 65534, 65534)
    subprocess.run(["setfacl", "-m", "u:nobody:r", os.path.join(d, "f6")], check=True)
    os.rename(os.path.join(d, "f7"), os.path.join(d, "g7"))
    write_bytes(os.path.join(d, "new"), b"new")
    after = ls()
    lines = {l.split()[-1]: l.split() for l in after.splitlines()[1:]}
    assert lines["f1"][0] == "-rw-------"
    assert lines["f2"][4] == "6" and lines["f3"][4] == "1000"
    assert lines["f4"][5] == "1000000000"
    assert lines["f5"][2:4] == ["65534", "65534"]
    assert lines["f6"][0].endswith("+"), after
    assert "f7" not in lines and lines["g7"][4] == "7" and lines["new"][4] == "3"
    assert "user:nobody:r--" in _acl(os.path.join(d, "f6"))
    # and what the listing shows is what the backing disk holds
    for name, f in lines.items():
        if name in (".", ".."):
            continue
        st = os.lstat(os.path.join(mount.backing, "d", name))
        assert f[4] == str(st.st_size) and f[5] == str(int(st.st_mtime)), name
    assert ls() == after
