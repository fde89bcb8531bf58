"""What `facts.measure` costs per file, and its parts, in one process (no render, no pool).

    .venv/bin/python bench/facts_parts.py [--files 200] [--folder bench/out/render/fast]

The files are the fast lane's benchmark STLs that bench/render_bench.py builds (run it once
first). Each figure is the best of 5 passes over the files, in ms per file.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from dam_dagster.core.render import facts as F  # noqa: E402
from dam_dagster.core.render.loaders import load_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--folder", type=Path, default=HERE / "out" / "render" / "fast")
    ap.add_argument("--files", type=int, default=200)
    args = ap.parse_args()
    paths = sorted(args.folder.glob("*.stl"))[: args.files]
    if not paths:
        sys.exit(f"no STL files in {args.folder}: run bench/render_bench.py --lanes fast first")
    models = [load_model(p.read_bytes(), ".stl", str(p)) for p in paths]
    first = [m.drawables[0] for m in models]

    def best(fn) -> float:
        times = []
        for _ in range(5):
            started = time.perf_counter()
            for i in range(len(models)):
                fn(i)
            times.append((time.perf_counter() - started) / len(models) * 1e3)
        return min(times)

    def vertex_ids(i):
        d = first[i]
        lo, hi = F._lo_hi(d.positions)
        F._vertex_ids(d.positions, lo, hi)

    triangles = np.mean([len(d.positions) // 3 for d in first])
    print(f"{len(models)} files, {triangles:,.0f} triangles on average")
    print(f"measure (all the facts)  {best(lambda i: F.measure(models[i])):.2f} ms")
    print(f"  one triangle part      {best(lambda i: F._triangle_part(first[i])):.2f} ms")
    print(f"  vertex ids             {best(vertex_ids):.2f} ms")
    print(f"  sums (area, volume...) {best(lambda i: F._sums(first[i], np.zeros(3))):.2f} ms")


if __name__ == "__main__":
    main()
