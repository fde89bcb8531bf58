"""The per-file cost of the hashing helpers' inner loop, in microseconds a file.

    .venv/bin/python bench/hash_bench.py LIBRARY [--files 20000] [--kind prefix] [--code DIR]

Hashes the first --files files of LIBRARY (warm: each pass reads the same files) with
core.hashing.hash_batch, the loop a helper process runs, best of 7 passes, and, beside it,
the plainest Python loop doing the same system calls and MD5 (what any Python reader pays).
`--code DIR` measures another checkout's dam_dagster (e.g. a `git worktree` of an older
commit) for a before/after. The whole command's figures are bench/scale_bench.py's.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("library")
    ap.add_argument("--files", type=int, default=20_000)
    ap.add_argument("--kind", default="prefix", choices=["prefix", "partial", "full"])
    ap.add_argument("--code", default="", help="a checkout whose dam_dagster to measure")
    args = ap.parse_args()
    if args.code:
        sys.path.insert(0, args.code)
    from dam_dagster.core import hashing

    paths: list[str] = []
    for folder, _dirs, names in os.walk(args.library):
        paths += [os.path.join(folder, n) for n in names]
        if len(paths) >= args.files:
            break
    paths = paths[: args.files]
    stats = [os.stat(p) for p in paths]
    n = len(paths)
    none = [None] * n
    sizes = [s.st_size for s in stats]
    mtimes = [s.st_mtime_ns for s in stats]
    ctimes = [s.st_ctime_ns for s in stats]
    columns = (list(range(n)), paths, none, sizes, mtimes, ctimes, none, none, none)

    def best(f) -> float:
        times = []
        for _ in range(7):
            t = time.perf_counter()
            f()
            times.append(time.perf_counter() - t)
        return min(times) / n * 1e6

    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOFOLLOW | getattr(os, "O_NOATIME", 0)

    def plain() -> None:
        for p in paths:
            fd = os.open(p, flags)
            os.fstat(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
            hashlib.md5(os.pread(fd, hashing.PREFIX_BYTES, 0), usedforsecurity=False).hexdigest()
            os.fstat(fd)
            os.close(fd)

    print(f"code: {os.path.dirname(hashing.__file__)}")
    ours = best(lambda: hashing.hash_batch(args.kind, False, columns))
    print(f"hash_batch {args.kind}: {ours:.2f} us a file ({n:,} files)")
    if args.kind == "prefix":
        print(f"plain Python loop, same calls: {best(plain):.2f} us a file")


if __name__ == "__main__":
    main()
