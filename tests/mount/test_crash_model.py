"""The crash-state checker's own parts (tests/crash): the strace parser
builds what the calls did, and the generator yields the states POSIX allows
(and no state a sync rules out). Without a mount."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "crash"))
import states  # noqa: E402
import trace  # noqa: E402


def hx(s):
    return "".join("\\x%02x" % b for b in s.encode())


def write_trace(path, root, fsync_before_rename):
    f, g, r = hx(root + "/f"), hx(root + "/g"), hx(root)
    lines = [
        f'100  1.000001 openat(AT_FDCWD<{r}>, "{hx(root + "/f")}", O_WRONLY|O_CREAT|O_TRUNC, 0600) = 3<{f}>',
        f'100  1.000002 write(3<{f}>, "{hx("abc")}", 3) = 3',
        f'101  1.000003 pwrite64(3<{f}>, "{hx("Z")}", 1, 5 <unfinished ...>',
        f'100  1.000004 lseek(3<{f}>, 0, SEEK_SET) = 0',
        '101  1.000005 <... pwrite64 resumed>) = 1',
    ]
    if fsync_before_rename:
        lines.append(f'100  1.000006 fsync(3<{f}>) = 0')
    lines += [
        f'100  1.000007 close(3<{f}>) = 0',
        f'100  1.000008 rename("{hx(root + "/f")}", "{hx(root + "/g")}") = 0',
        f'100  1.000009 openat(AT_FDCWD<{r}>, "{r}", O_RDONLY|O_DIRECTORY) = 4<{r}>',
        f'100  1.000010 fsync(4<{r}>) = 0',
        f'100  1.000011 unlinkat(AT_FDCWD<{r}>, "{hx(root + "/nothing")}", 0) = -1 ENOENT (No such file)',
    ]
    with open(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")


def contents(tree):
    return {p: bytes(tree.inodes[i]["data"]) for p, i in tree.names.items()
            if p and not tree.inodes[i].get("dir")}


def test_parse_replays_writes_and_names(tmp_path):
    root = str(tmp_path / "root")
    os.makedirs(root)
    write_trace(str(tmp_path / "t"), root, False)
    ops, model = trace.parse(str(tmp_path / "t"), root, trace.Tree.snapshot(root))
    assert [o.kind for o in ops] == ["create", "write", "write", "rename", "fsync"]
    assert contents(model) == {"g": b"abc\0\0Z"}


def test_states_hold_a_rename_without_its_data_unless_synced(tmp_path):
    root = str(tmp_path / "root")
    os.makedirs(root)
    seen = {}
    for synced in (False, True):
        write_trace(str(tmp_path / "t"), root, synced)
        ops, _ = trace.parse(str(tmp_path / "t"), root, trace.Tree.snapshot(root))
        seen[synced] = [contents(t) for _, t in states.generate(ops, trace.Tree.snapshot(root))]
    # every prefix, and the classic: the new name durable, its data not
    assert {} in seen[False] and {"f": b"abc\0\0Z"} in seen[False]
    assert {"g": b""} in seen[False] and {"g": b"abc\0\0Z"} in seen[False]
    # a data write the fsync made durable is never dropped
    assert {"g": b""} not in seen[True] and {"g": b"abc\0\0Z"} in seen[True]
    assert all(c.get("g", b"abc\0\0Z") == b"abc\0\0Z" for c in seen[True])
