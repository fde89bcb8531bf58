"""Generate a synthetic 3D-printing library the size of the original one (34,074 files).

Sizes follow what such a library holds (and are printed with the totals):
- 80 % binary STL: 84 + 50 x triangles bytes, triangles log-normal (median 10,000 = 0.5 MB,
  sigma 1.3, at most 1.2 M = 60 MB). The 50-byte grid makes equal sizes common, as in a
  real library, so the size tier alone does not settle everything.
- 8 % 3MF (median 400 KB), 5 % OBJ (median 1.5 MB), 4 % images (median 300 KB),
  3 % small text files (median 3 KB), and 5 giants of 100-250 MB.
Planted on top: 12 groups of true duplicates (10 pairs, a triple and a quadruple, in other
folders under other names) and 80 decoy pairs (same size, same first and last 64 KiB, other
middle) that only a full hash tells apart: the original tool expected ~50-100 collisions and
~5-15 true duplicates.

Content is a unique 64 KiB head and tail per file around a slice of one shared random
buffer: every file differs from every other (unless planted), and the disk, not the
generator, sets the pace. Deterministic for a given --seed.

    python bench/make_library.py DEST [--files 34074] [--scale 1.0] [--seed 1]
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np

K = 1024
HEAD = TAIL = 64 * K


def plan_sizes(rng: np.random.Generator, files: int, scale: float) -> list[tuple[str, int]]:
    kinds = rng.choice(
        ["stl", "3mf", "obj", "img", "txt"], size=files, p=[0.80, 0.08, 0.05, 0.04, 0.03]
    )
    plan = []
    for kind in kinds:
        if kind == "stl":
            tri = int(min(1_200_000, max(12, rng.lognormal(np.log(8_000 * scale), 1.3))))
            plan.append((".stl", 84 + 50 * tri))
        elif kind == "3mf":
            plan.append((".3mf", int(max(2 * K, rng.lognormal(np.log(400 * K * scale), 1.0)))))
        elif kind == "obj":
            plan.append((".obj", int(max(K, rng.lognormal(np.log(1500 * K * scale), 1.0)))))
        elif kind == "img":
            plan.append(
                (
                    rng.choice([".jpg", ".png"]),
                    int(max(K, rng.lognormal(np.log(300 * K * scale), 0.8))),
                )
            )
        else:
            plan.append((".txt", int(max(10, rng.lognormal(np.log(3 * K), 1.0)))))
    for i in range(5):
        plan[i] = (".stl", 84 + 50 * int((100 + 30 * i) * 1e6 * scale / 50))
    return plan


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dest", type=Path)
    ap.add_argument("--files", type=int, default=34_074)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every size by this")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    rng = np.random.default_rng(args.seed)
    shared = rng.bytes(64 * K * K)  # the filler every file takes a slice of
    plan = plan_sizes(rng, args.files, args.scale)
    designers = [f"designer_{i:03d}" for i in range(300)]

    def path_for(i: int, ext: str, tag: str = "") -> Path:
        d = designers[i % len(designers)]
        project = f"project_{(i * 7919) % 2500:04d}"
        return args.dest / d / project / f"model_{i:05d}{tag}{ext}"

    def content(size: int) -> bytes:
        if size <= HEAD + TAIL:
            return rng.bytes(size)
        middle = size - HEAD - TAIL
        start = int(rng.integers(0, len(shared) - min(middle, len(shared)) + 1))
        body = shared[start : start + middle]
        while len(body) < middle:  # giants: repeat the buffer
            body += shared[: middle - len(body)]
        return rng.bytes(HEAD) + body + rng.bytes(TAIL)

    args.dest.mkdir(parents=True, exist_ok=True)
    total = 0
    written: list[Path] = []
    for i, (ext, size) in enumerate(plan):
        path = path_for(i, ext)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content(size))
        written.append(path)
        total += size
        if i % 5000 == 0:
            print(f"{i:,} files, {total / 1e9:.1f} GB", file=sys.stderr)

    # planted duplicates: copies in another designer's folder, under another name
    groups = [2] * 10 + [3, 4]
    picks = rng.choice(range(10, len(written)), size=len(groups), replace=False)
    planted = []
    for n, (group_size, idx) in enumerate(zip(groups, picks)):
        data = written[int(idx)].read_bytes()
        members = [str(written[int(idx)])]
        for c in range(group_size - 1):
            copy = (
                args.dest / "downloads" / f"batch_{n:02d}" / f"copy_{c} of {written[int(idx)].name}"
            )
            copy.parent.mkdir(parents=True, exist_ok=True)
            copy.write_bytes(data)
            members.append(str(copy))
            total += len(data)
        planted.append(sorted(members))

    # decoys: same size, head and tail; another middle
    for n in range(80):
        size = int(rng.integers(HEAD + TAIL + 1, 3 * K * K))
        head, tail = rng.bytes(HEAD), rng.bytes(TAIL)
        for side in "ab":
            path = args.dest / "remixes" / f"decoy_{n:02d}_{side}.stl"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(head + rng.bytes(size - HEAD - TAIL) + tail)
            total += size
    files = len(written) + sum(g - 1 for g in groups) + 160
    manifest = {
        "files": files,
        "bytes": total,
        "planted_duplicate_groups": planted,
        "decoy_pairs": 80,
        "seed": args.seed,
        "scale": args.scale,
    }
    (args.dest.parent / (args.dest.name + ".manifest.json")).write_text(json.dumps(manifest))
    print(f"{files:,} files, {total / 1e9:.2f} GB in {args.dest}", file=sys.stderr)


if __name__ == "__main__":
    main()
