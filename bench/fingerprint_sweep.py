"""How often float noise and a translation change a geometry fingerprint, over the corpus.

    .venv/bin/python bench/fingerprint_sweep.py [--seeds 10]

For every corpus mesh the fingerprint test uses (4 to 60,000 triangles), writes --seeds
copies with 1e-6 mm of uniform noise on every vertex and --seeds copies moved by a random
translation of up to 300 mm along each axis, as binary STLs, and counts the copies whose
fingerprint differs from the original file's. Prints the count and the files concerned.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from dam_dagster_tests.test_facts import (  # noqa: E402
    _binary_stl,
    _corpus_meshes,
    _facts,
    _indexed,
)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--corpus", type=Path, default=PROJECT.parent / "shared" / "corpus" / "trimesh-models"
    )
    parser.add_argument("--seeds", type=int, default=10)
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    meshes = _corpus_meshes(args.corpus)
    tmp = Path(tempfile.mkdtemp(prefix="dam_sweep_"))
    changed: dict[str, list[str]] = {"noise": [], "move": []}
    tried = {"noise": 0, "move": 0}
    for name, tris in meshes.items():
        original = _facts(args.corpus / name)["fingerprint"]
        vertices, faces = _indexed(tris)
        for seed in range(args.seeds):
            rng = np.random.default_rng(1000 + seed)
            copies = {
                "noise": (vertices + rng.uniform(-1e-6, 1e-6, vertices.shape))[faces],
                "move": tris + rng.uniform(-300.0, 300.0, 3),
            }
            for kind, t in copies.items():
                path = tmp / "copy.stl"
                path.write_bytes(_binary_stl(t))
                tried[kind] += 1
                if _facts(path)["fingerprint"] != original:
                    changed[kind].append(f"{name} (seed {seed})")
    print(f"{len(meshes)} corpus meshes, {args.seeds} copies of each kind per mesh")
    for kind in ("noise", "move"):
        print(f"{kind}: {len(changed[kind])} of {tried[kind]} copies changed fingerprint")
        for line in changed[kind]:
            print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
