"""The file-system calls of a traced daemon, as operations on one directory.

strace -f -y -xx -ttt records every call; parse() turns the calls that touch
files under ROOT into a list of Op, in the order the calls returned, with the
bytes each write put down (a copy_file_range or sendfile is resolved from the
model's own bytes of its source, which the trace built). Anything that could
change a file under ROOT and is not understood (a splice into a file, a
shared writable mapping of one) is an error: a state built without it would
be wrong.
"""
import os
import re
import stat as st_mod

# what strace must record (-e trace=...)
SYSCALLS = ("open,openat,creat,write,pwrite64,writev,pwritev,pwritev2,ftruncate,truncate,"
            "rename,renameat,renameat2,unlink,unlinkat,mkdir,mkdirat,rmdir,link,linkat,"
            "symlink,symlinkat,fsync,fdatasync,syncfs,sync,sync_file_range,close,dup,dup2,dup3,"
            "fcntl,lseek,fallocate,copy_file_range,sendfile,splice,fsetxattr,setxattr,lsetxattr,"
            "fremovexattr,removexattr,lremovexattr,fchmod,fchmodat,utimensat,mknodat,mmap,"
            "clone,clone3,fork,vfork")


def strace_cmd(out):
    """The strace prefix that records a daemon into the file out."""
    return ["strace", "-f", "-qq", "-y", "-xx", "-ttt", "-s", str(64 << 20), "-o", out,
            "-e", "trace=" + SYSCALLS]


class TraceError(Exception):
    pass


class Op:
    """One operation on the tree.

    kind: 'mkdir' path | 'create' path ino | 'link' path ino | 'unlink' path |
    'rmdir' path | 'rename' src dst | 'exchange' a b | 'write' ino off data |
    'trunc' ino size | 'xattr' ino name value (None: removed) | 'mtime' ino t |
    'chmod' ino mode | 'fsync' ino | 'sync' (everything)."""
    __slots__ = ("kind", "args", "t", "line")

    def __init__(self, kind, args, t, line):
        self.kind, self.args, self.t, self.line = kind, args, t, line

    def __repr__(self):
        a = []
        for x in self.args:
            a.append(f"<{len(x)} bytes>" if isinstance(x, (bytes, bytearray)) else repr(x))
        return f"{self.kind}({', '.join(a)})"


# ---- strace's text ------------------------------------------------------

LINE = re.compile(r"^(\d+) +(\d+\.\d+) (.*)$")
UNFINISHED = " <unfinished ...>"
RESUMED = re.compile(r"^<\.\.\. (\w+) resumed>(.*)$")
CALL = re.compile(r"^(\w+)\((.*)\) += (.*)$", re.S)
HEX = re.compile(r"\\x([0-9a-f]{2})")


def unhex(s):
    """strace -xx's "\\x41\\x42" as bytes."""
    return bytes.fromhex(s.replace("\\x", "")) if s else b""


def split_args(s):
    """The top-level arguments of a call's text."""
    out, depth, cur, q = [], 0, [], False
    i = 0
    while i < len(s):
        c = s[i]
        if q:
            cur.append(c)
            if c == "\\":
                cur.append(s[i + 1])
                i += 1
            elif c == '"':
                q = False
        elif c == '"':
            q = True
            cur.append(c)
        elif c in "([{<":
            depth += 1
            cur.append(c)
        elif c in ")]}>":
            depth -= 1
            cur.append(c)
        elif c == "," and depth == 0:
            out.append("".join(cur).strip())
            cur = []
        else:
            cur.append(c)
        i += 1
    if cur or out:
        out.append("".join(cur).strip())
    return out


def string_arg(a):
    """The bytes of a quoted argument ("..."), or None (NULL)."""
    a = a.strip()
    if a == "NULL":
        return None
    m = re.match(r'^"((?:\\x[0-9a-f]{2})*)"(\.\.\.)?$', a)
    if not m:
        raise TraceError(f"not a string: {a[:80]}")
    if m.group(2):
        raise TraceError("a string was cut short: raise strace -s")
    return unhex(m.group(1))


def fd_arg(a):
    """(fd, path or None) of an argument like 5<\\x2f...>; AT_FDCWD too."""
    m = re.match(r"^(-?\d+|AT_FDCWD)(?:<([^>]*)>(\(deleted\))?)?$", a.strip())
    if not m:
        raise TraceError(f"not a descriptor: {a[:80]}")
    fd = -100 if m.group(1) == "AT_FDCWD" else int(m.group(1))
    path = None
    if m.group(2) is not None:
        path = unhex(m.group(2)).decode("utf-8", "surrogateescape")
        if m.group(3):
            path += " (deleted)"
    return fd, path


def ret_value(r):
    """(value, path) of a return like 3<\\x2f..>, 0, or (-1, errno name)."""
    r = r.strip()
    m = re.match(r"^(-1) (E\w+)", r)
    if m:
        return -1, m.group(2)
    m = re.match(r"^(-?\d+|0x[0-9a-f]+)(?:<(.*?)>)?", r)
    if not m:
        return None, None
    v = int(m.group(1), 0)
    return v, (unhex(m.group(2)).decode("utf-8", "surrogateescape") if m.group(2) else None)


def calls(path):
    """(tid, time, name, args text, return text) of every finished call, in
    the order they returned (unfinished and resumed halves joined)."""
    pending = {}
    with open(path, "r", encoding="latin-1") as f:
        for raw in f:
            raw = raw.rstrip("\n")
            m = LINE.match(raw)
            if not m:
                continue
            tid, t, rest = int(m.group(1)), float(m.group(2)), m.group(3)
            if rest.startswith("+++") or rest.startswith("---"):
                continue
            if rest.endswith(UNFINISHED):
                pending[tid] = rest[: -len(UNFINISHED)]
                continue
            r = RESUMED.match(rest)
            if r:
                head = pending.pop(tid, None)
                if head is None:
                    continue
                rest = head + r.group(2)
            c = CALL.match(rest)
            if not c:
                continue
            yield tid, t, c.group(1), c.group(2), c.group(3)


# ---- the model the operations are replayed on ---------------------------

class Tree:
    """Names and inodes of one directory tree, in memory."""

    def __init__(self):
        self.names = {"": 0}  # relative path -> inode ("" is the root)
        self.inodes = {0: {"dir": True}}
        self.next = 1

    def copy(self):
        t = Tree()
        t.names = dict(self.names)
        t.inodes = {}
        for k, v in self.inodes.items():
            n = dict(v)
            if "data" in n:
                n["data"] = bytearray(n["data"])
            if "xattrs" in n:
                n["xattrs"] = dict(n["xattrs"])
            t.inodes[k] = n
        t.next = self.next
        return t

    def new_inode(self, is_dir=False):
        i = self.next
        self.next += 1
        self.inodes[i] = {"dir": True} if is_dir else {"data": bytearray(), "xattrs": {},
                                                          "mtime": None, "mode": 0o644}
        return i

    @staticmethod
    def snapshot(root):
        """The tree of a directory on disk (files, directories, xattrs)."""
        t = Tree()
        seen = {}
        for d, dns, fns in os.walk(root):
            rd = os.path.relpath(d, root)
            rd = "" if rd == "." else rd
            for n in sorted(dns):
                p = os.path.join(rd, n)
                t.names[p] = t.new_inode(True)
            for n in sorted(fns):
                p = os.path.join(rd, n)
                s = os.lstat(os.path.join(root, p))
                if not st_mod.S_ISREG(s.st_mode):
                    continue
                if (s.st_dev, s.st_ino) in seen:
                    t.names[p] = seen[(s.st_dev, s.st_ino)]
                    continue
                i = t.new_inode()
                seen[(s.st_dev, s.st_ino)] = i
                node = t.inodes[i]
                with open(os.path.join(root, p), "rb") as f:
                    node["data"] = bytearray(f.read())
                node["mtime"] = s.st_mtime_ns
                node["mode"] = st_mod.S_IMODE(s.st_mode)
                for x in os.listxattr(os.path.join(root, p)):
                    node["xattrs"][x] = os.getxattr(os.path.join(root, p), x)
                t.names[p] = i
        return t

    def parent_ok(self, path):
        par = os.path.dirname(path)
        return par in self.names and self.inodes[self.names[par]].get("dir")

    def apply(self, op):
        """Replay one operation; one that cannot apply in this state (its
        source was never made, say) does nothing, as on a disk that lost the
        operations it depended on."""
        k, a = op.kind, op.args
        if k in ("create", "write", "trunc", "xattr", "mtime", "chmod"):
            ino = a[1] if k == "create" else a[0]
            if ino not in self.inodes:  # made by an operation this state has
                self.inodes[ino] = {"data": bytearray(), "xattrs": {}, "mtime": None,
                                    "mode": 0o644}
        if k == "mkdir":
            if a[0] not in self.names and self.parent_ok(a[0]):
                self.names[a[0]] = a[1]
                self.inodes.setdefault(a[1], {"dir": True})
        elif k in ("create", "link"):
            if self.parent_ok(a[0]) and a[1] in self.inodes:
                self.names[a[0]] = a[1]
        elif k in ("unlink", "rmdir"):
            if a[0] in self.names:
                if k == "rmdir" and any(p.startswith(a[0] + "/") for p in self.names):
                    return
                del self.names[a[0]]
        elif k == "rename":
            src, dst = a
            if src not in self.names or not self.parent_ok(dst) or src == dst:
                return
            ino = self.names[src]
            if self.inodes[ino].get("dir"):
                moved = {p: v for p, v in self.names.items()
                         if p == src or p.startswith(src + "/")}
                for p in moved:
                    del self.names[p]
                for p in [p for p in self.names if p == dst or p.startswith(dst + "/")]:
                    del self.names[p]
                for p, v in moved.items():
                    self.names[dst + p[len(src):]] = v
            else:
                del self.names[src]
                self.names[dst] = ino
        elif k == "exchange":
            x, y = a
            if x in self.names and y in self.names:
                self.names[x], self.names[y] = self.names[y], self.names[x]
        elif k == "write":
            ino, off, data = a
            node = self.inodes.get(ino)
            if node is None or node.get("dir"):
                return
            buf = node["data"]
            if len(buf) < off:
                buf.extend(b"\0" * (off - len(buf)))
            buf[off:off + len(data)] = data
            if op.t is not None:
                node["mtime"] = int(op.t * 1e9)
        elif k == "trunc":
            ino, size = a
            node = self.inodes.get(ino)
            if node is None or node.get("dir"):
                return
            buf = node["data"]
            if len(buf) > size:
                del buf[size:]
            else:
                buf.extend(b"\0" * (size - len(buf)))
            if op.t is not None:
                node["mtime"] = int(op.t * 1e9)
        elif k == "xattr":
            ino, name, value = a
            node = self.inodes.get(ino)
            if node is None or node.get("dir"):
                return
            if value is None:
                node["xattrs"].pop(name, None)
            else:
                node["xattrs"][name] = value
        elif k == "mtime":
            node = self.inodes.get(a[0])
            if node is not None and not node.get("dir"):
                node["mtime"] = a[1]
        elif k == "chmod":
            node = self.inodes.get(a[0])
            if node is not None and not node.get("dir"):
                node["mode"] = a[1]

    def write_out(self, dest):
        """Make the tree on disk under dest (which must not exist)."""
        os.makedirs(dest)
        for p in sorted(self.names, key=lambda p: (p.count("/"), p)):
            if not p:
                continue
            node = self.inodes[self.names[p]]
            full = os.path.join(dest, p)
            if node.get("dir"):
                os.makedirs(full, exist_ok=True)
        links = {}
        for p in sorted(self.names):
            ino = self.names[p]
            node = self.inodes[ino]
            if not p or node.get("dir"):
                continue
            full = os.path.join(dest, p)
            if ino in links:
                os.link(links[ino], full)
                continue
            with open(full, "wb") as f:
                f.write(node["data"])
            os.chmod(full, node.get("mode", 0o644))
            for x, v in node["xattrs"].items():
                try:
                    os.setxattr(full, x, v)
                except OSError:
                    pass
            if node.get("mtime") is not None:
                os.utime(full, ns=(node["mtime"], node["mtime"]))
            links[ino] = full


# ---- from calls to operations --------------------------------------------

def parse(path, root, initial):
    """The operations of trace file path on the tree under root, whose state
    before the trace began is initial (a Tree, left unchanged). Returns the
    list of Op; a model replayed with all of them is returned as well, so a
    caller can compare it with the tree the daemon really left."""
    root = os.path.realpath(root)
    model = initial.copy()
    ops = []
    tgid = {}  # tid -> process
    fds = {}  # (process, fd) -> [ino or None, pos, append, path]

    def proc(tid):
        return tgid.setdefault(tid, tid)

    def rel(p):
        if p is None:
            return None
        if p.endswith(" (deleted)"):
            return None
        p = os.path.normpath(p)
        if p == root:
            return ""
        if p.startswith(root + "/"):
            return p[len(root) + 1:]
        return None

    def join(dirarg, name):
        fd, dpath = fd_arg(dirarg)
        if name.startswith(b"/"):
            return rel(name.decode("utf-8", "surrogateescape"))
        if dpath is None:
            if fd == -100:
                raise TraceError("a relative name against the working directory")
            return None
        base = rel(dpath)
        if base is None:
            return None
        return os.path.normpath(os.path.join(base, name.decode("utf-8", "surrogateescape")))

    def emit(kind, args, t, line):
        op = Op(kind, args, t, line)
        ops.append(op)
        model.apply(op)

    def fd_ino(pid, farg):
        """The inode a descriptor argument stands for, or None (outside)."""
        fd, p = fd_arg(farg)
        e = fds.get((pid, fd))
        if e is not None:
            return e[0], e
        r = rel(p)
        if r is None:
            return None, None
        return model.names.get(r), None

    for n, (tid, t, name, argtext, rettext) in enumerate(calls(path)):
        line = n
        pid = proc(tid)
        val, rpath = ret_value(rettext)
        if val is None or val == -1:
            continue
        a = split_args(argtext)
        if name in ("clone", "clone3", "fork", "vfork"):
            thread = "CLONE_THREAD" in argtext
            tgid[val] = pid if thread else val
            if not thread:
                for (p, fd), e in list(fds.items()):
                    if p == pid:
                        fds[(val, fd)] = list(e)
            continue
        if name in ("open", "openat", "creat"):
            if name == "openat":
                target, flags = join(a[0], string_arg(a[1])), a[2]
            else:
                target = rel(string_arg(a[0]).decode("utf-8", "surrogateescape"))
                flags = "O_CREAT|O_WRONLY|O_TRUNC" if name == "creat" else a[1]
            r = rel(rpath) if rpath else target
            if r is None:
                fds.pop((pid, val), None)
                continue
            ino = model.names.get(r)
            if ino is None and ("O_CREAT" in flags or "O_TMPFILE" in flags):
                if "O_TMPFILE" in flags:
                    raise TraceError("O_TMPFILE under the backing directory")
                ino = model.new_inode()
                emit("create", (r, ino), t, line)
            elif ino is not None and "O_TRUNC" in flags and not model.inodes[ino].get("dir"):
                emit("trunc", (ino, 0), t, line)
            fds[(pid, val)] = [ino, 0, "O_APPEND" in flags, r]
            continue
        if name == "lseek":
            fd, _ = fd_arg(a[0])
            if (pid, fd) in fds:
                fds[(pid, fd)][1] = val
            continue
        if name == "close":
            fd, _ = fd_arg(a[0])
            fds.pop((pid, fd), None)
            continue
        if name in ("dup", "dup2", "dup3") or (name == "fcntl" and "F_DUPFD" in a[1]):
            fd, _ = fd_arg(a[0])
            if (pid, fd) in fds:
                fds[(pid, val)] = fds[(pid, fd)]
            continue
        if name in ("write", "pwrite64", "writev", "pwritev", "pwritev2"):
            ino, e = fd_ino(pid, a[0])
            if ino is None:
                continue
            if name in ("write", "pwrite64"):
                data = string_arg(a[1])
            else:
                data = b"".join(unhex(m) for m in
                                re.findall(r'iov_base="((?:\\x[0-9a-f]{2})*)"', a[1]))
            data = data[:val]
            if name in ("pwrite64", "pwritev", "pwritev2"):
                off = int(a[3] if name == "pwrite64" else a[3], 0)
            else:
                if e is None:
                    raise TraceError(f"a write to an unknown descriptor: {argtext[:60]}")
                off = len(model.inodes[ino]["data"]) if e[2] else e[1]
                e[1] = off + len(data)
            emit("write", (ino, off, bytes(data)), t, line)
            continue
        if name in ("copy_file_range", "sendfile"):
            if name == "copy_file_range":
                fin, oin, fout, oout = a[0], a[1], a[2], a[3]
            else:
                fout, fin, oin, oout = a[0], a[1], a[2], "NULL"
            ino_out, eo = fd_ino(pid, fout)
            if ino_out is None:
                continue
            ino_in, ei = fd_ino(pid, fin)
            if ino_in is None:
                raise TraceError("a copy from outside the backing directory")

            def offset(arg, e):
                m = re.match(r"^\[(\d+) => (\d+)\]$", arg.strip())
                if m:
                    return int(m.group(1)), None
                m = re.match(r"^\[(\d+)\]$", arg.strip())
                if m:
                    return int(m.group(1)), None
                if e is None:
                    raise TraceError("a copy at an unknown position")
                return e[1], e
            src_off, se = offset(oin, ei)
            dst_off, de = offset(oout, eo)
            data = bytes(model.inodes[ino_in]["data"][src_off:src_off + val])
            if se is not None:
                se[1] += val
            if de is not None:
                de[1] += val
            emit("write", (ino_out, dst_off, data), t, line)
            continue
        if name == "splice":
            ino, _ = fd_ino(pid, a[2])
            if ino is not None:
                raise TraceError("a splice into a file under the backing directory "
                                 "(mount with -o splice=off)")
            continue
        if name in ("ftruncate", "truncate", "fallocate"):
            if name == "truncate":
                r = rel(string_arg(a[0]).decode("utf-8", "surrogateescape"))
                ino = model.names.get(r) if r is not None else None
            else:
                ino, _ = fd_ino(pid, a[0])
            if ino is None:
                continue
            if name == "fallocate":
                if "KEEP_SIZE" in a[1] or "PUNCH_HOLE" in a[1]:
                    continue
                size = max(len(model.inodes[ino]["data"]), int(a[2], 0) + int(a[3], 0))
            else:
                size = int(a[1], 0)
            emit("trunc", (ino, size), t, line)
            continue
        if name in ("rename", "renameat", "renameat2"):
            if name == "rename":
                src = rel(string_arg(a[0]).decode("utf-8", "surrogateescape"))
                dst = rel(string_arg(a[1]).decode("utf-8", "surrogateescape"))
                flags = ""
            else:
                src, dst = join(a[0], string_arg(a[1])), join(a[2], string_arg(a[3]))
                flags = a[4] if len(a) > 4 else ""
            if src is None and dst is None:
                continue
            if src is None or dst is None:
                raise TraceError(f"a rename across the backing directory's edge: {src} {dst}")
            emit("exchange" if "RENAME_EXCHANGE" in flags else "rename", (src, dst), t, line)
            continue
        if name in ("unlink", "unlinkat", "rmdir"):
            if name == "unlinkat":
                p, rmd = join(a[0], string_arg(a[1])), "AT_REMOVEDIR" in a[2]
            else:
                p, rmd = rel(string_arg(a[0]).decode("utf-8", "surrogateescape")), name == "rmdir"
            if p is not None:
                emit("rmdir" if rmd else "unlink", (p,), t, line)
            continue
        if name in ("mkdir", "mkdirat"):
            p = (join(a[0], string_arg(a[1])) if name == "mkdirat" else
                 rel(string_arg(a[0]).decode("utf-8", "surrogateescape")))
            if p is not None:
                emit("mkdir", (p, model.new_inode(True)), t, line)
            continue
        if name in ("link", "linkat"):
            if name == "link":
                src = rel(string_arg(a[0]).decode("utf-8", "surrogateescape"))
                dst = rel(string_arg(a[1]).decode("utf-8", "surrogateescape"))
                ino = model.names.get(src) if src is not None else None
            else:
                dst = join(a[2], string_arg(a[3]))
                if "AT_EMPTY_PATH" in a[4]:
                    ino, _ = fd_ino(pid, a[0])
                else:
                    src = join(a[0], string_arg(a[1]))
                    ino = model.names.get(src) if src is not None else None
            if dst is not None:
                if ino is None:
                    raise TraceError("a link of a file the trace does not know")
                emit("link", (dst, ino), t, line)
            continue
        if name in ("symlink", "symlinkat", "mknodat"):
            tgt = a[-1] if name != "mknodat" else a[1]
            p = None
            if name == "symlink":
                p = rel(string_arg(a[1]).decode("utf-8", "surrogateescape"))
            elif name == "symlinkat":
                p = join(a[1], string_arg(a[2]))
            else:
                p = join(a[0], string_arg(a[1]))
            if p is not None:
                raise TraceError(f"{name} under the backing directory is not modelled ({tgt})")
            continue
        if name in ("fsync", "fdatasync", "sync_file_range"):
            ino, _ = fd_ino(pid, a[0])
            if ino is not None:
                emit("fsync", (ino,), t, line)
            continue
        if name in ("syncfs", "sync"):
            emit("sync", (), t, line)
            continue
        if name in ("fsetxattr", "setxattr", "lsetxattr", "fremovexattr", "removexattr",
                    "lremovexattr"):
            if name.startswith("f"):
                ino, _ = fd_ino(pid, a[0])
            else:
                r = rel(string_arg(a[0]).decode("utf-8", "surrogateescape"))
                ino = model.names.get(r) if r is not None else None
            if ino is None:
                continue
            key = string_arg(a[1]).decode()
            value = string_arg(a[2]) if "set" in name else None
            if value is not None:
                value = value[:int(a[3], 0)]
            emit("xattr", (ino, key, value), t, line)
            continue
        if name in ("fchmod", "fchmodat"):
            if name == "fchmod":
                ino, _ = fd_ino(pid, a[0])
                mode = a[1]
            else:
                r = join(a[0], string_arg(a[1]))
                ino = model.names.get(r) if r is not None else None
                mode = a[2]
            if ino is not None and not model.inodes[ino].get("dir"):
                emit("chmod", (ino, int(mode, 8) & 0o7777), t, line)
            continue
        if name == "utimensat":
            if a[1] == "NULL":
                ino, _ = fd_ino(pid, a[0])
            else:
                r = join(a[0], string_arg(a[1]))
                ino = model.names.get(r) if r is not None else None
            if ino is None or model.inodes[ino].get("dir"):
                continue
            times = re.findall(r"tv_sec=(\d+), tv_nsec=(\d+|UTIME_NOW|UTIME_OMIT)", a[2])
            if len(times) == 2 and times[1][1] not in ("UTIME_OMIT",):
                if times[1][1] == "UTIME_NOW":
                    mt = int(t * 1e9)
                else:
                    mt = int(times[1][0]) * 10**9 + int(times[1][1])
                emit("mtime", (ino, mt), t, line)
            elif a[2] == "NULL":
                emit("mtime", (ino, int(t * 1e9)), t, line)
            continue
        if name == "mmap":
            if "MAP_SHARED" in argtext and "PROT_WRITE" in argtext and len(a) > 4:
                ino, e = fd_ino(pid, a[4])
                if ino is not None and not (e and e[3].endswith("lock.mdb")):
                    raise TraceError(f"a shared writable mapping of {e[3] if e else ino}")
            continue
    return ops, model
