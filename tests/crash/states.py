"""The states a crash may leave on disk, from a list of operations.

A crash after the first k operations leaves them done, except those the
disk had not yet been made to keep: POSIX makes a file's data durable at its
fsync, and a name (create, link, unlink, rename, mkdir) durable at the fsync
of the directory it is in; until then either may be lost, and in any order
(the persistence model of the ALICE study, Pillai et al., OSDI 2014, without
the extras ext4 gives). So for every k the states are: all of the first k
done; all of them but one unit that was not yet durable (a unit is one name
operation, or a run of data operations on one file with nothing else in
between); all but every data operation not yet durable (delayed allocation
writing names before data); and all but every name operation not yet
durable. States equal on disk are checked once.
"""
import hashlib
import os

DATA = {"write", "trunc", "xattr", "mtime", "chmod"}
NAMES = {"create", "link", "unlink", "rmdir", "rename", "exchange", "mkdir"}


def units(ops):
    """The ops grouped: a unit is a list of indices."""
    out = []
    for i, op in enumerate(ops):
        if (out and op.kind in DATA and ops[out[-1][-1]].kind in DATA and
                ops[out[-1][-1]].args[0] == op.args[0]):
            out[-1].append(i)
        else:
            out.append([i])
    return out


def parents(op):
    """The directories (relative paths) a name operation changes."""
    return [os.path.dirname(p) for p in
            (op.args[:2] if op.kind in ("rename", "exchange") else op.args[:1])]


def annotate(ops, initial):
    """For each op, the index of the first later op that makes it durable
    (len(ops) when none does). Directories are named by inode, resolved on
    the model replayed alongside."""
    model = initial.copy()
    where = []  # per op: ('data', ino) or ('names', {dir inodes})
    for op in ops:
        if op.kind in DATA:
            where.append(("data", op.args[0]))
        elif op.kind in NAMES:
            dirs = set()
            for d in parents(op):
                if d in model.names:
                    dirs.add(model.names[d])
            where.append(("names", dirs))
        else:
            where.append(("barrier", None))
        model.apply(op)
    durable = [len(ops)] * len(ops)
    open_data = {}  # ino -> [op indices not yet durable]
    open_names = {}  # dir ino -> [...]
    for i, op in enumerate(ops):
        kind, what = where[i]
        if kind == "data":
            open_data.setdefault(what, []).append(i)
        elif kind == "names":
            for d in what:
                open_names.setdefault(d, []).append(i)
        elif op.kind == "fsync":
            ino = op.args[0]
            for j in open_data.pop(ino, []):
                durable[j] = min(durable[j], i)
            for j in open_names.pop(ino, []):
                durable[j] = min(durable[j], i)
        elif op.kind == "sync":
            for lst in list(open_data.values()) + list(open_names.values()):
                for j in lst:
                    durable[j] = min(durable[j], i)
            open_data, open_names = {}, {}
    # a name operation on several directories is durable when all are synced
    for i, (kind, what) in enumerate(where):
        if kind == "names" and len(what) > 1:
            last = 0
            for d in what:
                syncs = [k for k in range(i + 1, len(ops)) if ops[k].kind == "sync" or
                         (ops[k].kind == "fsync" and ops[k].args[0] == d)]
                last = max(last, syncs[0] if syncs else len(ops))
            durable[i] = last
    return durable


def tree_key(tree):
    h = hashlib.sha256()
    for p in sorted(tree.names):
        node = tree.inodes[tree.names[p]]
        h.update(p.encode("utf-8", "surrogateescape") + b"\0")
        if node.get("dir"):
            h.update(b"d")
        else:
            h.update(hashlib.sha256(bytes(node["data"])).digest())
            h.update(repr(sorted(node["xattrs"].items())).encode())
            h.update(repr((node.get("mode"), node.get("mtime"))).encode())
        h.update(repr(tree.names[p]).encode())
    return h.hexdigest()


def generate(ops, initial, points=None):
    """Yield (description, Tree) of every distinct crash state. points, if
    given, limits the crash points k considered."""
    durable = annotate(ops, initial)
    groups = units(ops)
    seen = set()
    # the prefix trees, built incrementally
    prefix = initial.copy()
    ks = range(len(ops) + 1) if points is None else sorted(points)
    kset = set(ks)
    done = 0

    def replay(k, skip):
        t = initial.copy()
        for i in range(k):
            if i not in skip:
                t.apply(ops[i])
        return t

    for k in range(len(ops) + 1):
        if k > done:
            for i in range(done, k):
                prefix.apply(ops[i])
            done = k
        if k not in kset:
            continue
        # a unit at the boundary counts only once it is whole
        if k < len(ops) and k > 0 and ops[k - 1].kind in DATA and ops[k].kind in DATA and \
                ops[k].args[0] == ops[k - 1].args[0]:
            continue
        pending = [g for g in groups if g[-1] < k and any(durable[i] >= k for i in g)]
        variants = [("all of the first %d" % k, set())]
        for g in pending:
            op = ops[g[0]]
            variants.append((f"the first {k} but #{g[0]} {op!r}" +
                             (f" (and {len(g) - 1} more)" if len(g) > 1 else ""),
                             {i for i in g if durable[i] >= k}))
        data = {i for g in pending for i in g if ops[i].kind in DATA and durable[i] >= k}
        names = {i for g in pending for i in g if ops[i].kind in NAMES and durable[i] >= k}
        if data:
            variants.append((f"the first {k} but all {len(data)} data operations not "
                             "synced", data))
        if names:
            variants.append((f"the first {k} but all {len(names)} name operations not "
                             "synced", names))
        for desc, skip in variants:
            t = prefix.copy() if not skip else replay(k, skip)
            key = tree_key(t)
            if key in seen:
                continue
            seen.add(key)
            last = ops[k - 1] if k else None
            yield f"{desc} (crash after #{k - 1} {last!r})" if k else desc, t
