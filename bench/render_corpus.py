"""Benchmark inputs for the render lanes, built from real models of the shared corpus.

Every benchmark file is a binary STL made from a real model (CAD parts, scans, printable
objects of ../shared/corpus/trimesh-models) brought to a target triangle count by splitting
its largest triangles 1 -> 4 at the edge midpoints (the shape is unchanged: the new triangles
lie in the old ones' planes), then written N times with a different 80-byte header each, so
every file's bytes (and MD5) are unique and the renderer's content cache cannot short-cut it.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

# Real 3D-printing-like models of the corpus (CAD parts, printables, scans), loaded by trimesh.
SOURCE_MODELS = (
    "20mm-xyz-cube.stl",
    "7_8ths_cube.stl",
    "angle_block.STL",
    "idler_riser.STL",
    "plate_holes.STL",
    "octagonal_pocket.stl",
    "featuretype.STL",
    "box.STL",
    "torus.STL",
    "ADIS16480.STL",
    "1002_tray_bottom.STL",
    "teapot.stl",
    "busted.STL",
    "round.stl",
    "bunny.ply",
    "counter.unitsmm.STL",
    "cycloidal.ply",
    "fixed_top.ply",
    "quadknot.obj",
)


def load_faces(corpus: Path, name: str) -> np.ndarray:
    """(n, 3, 3) float64 triangles of one corpus model, every instance, Z up as in the file."""
    import trimesh

    scene = trimesh.load_scene(str(corpus / name), process=False)
    tris = []
    for node in scene.graph.nodes_geometry:
        transform, geom = scene.graph[node]
        mesh = scene.geometry[geom]
        if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
            continue
        v = trimesh.transform_points(mesh.vertices, transform)
        tris.append(v[mesh.faces])
    return np.concatenate(tris)


def split_largest(tris: np.ndarray, target: int) -> np.ndarray:
    """Split the largest triangles 1 -> 4 until there are at least `target` (shape unchanged)."""
    while len(tris) < target:
        need = math.ceil((target - len(tris)) / 3)
        k = min(len(tris), need)
        area = np.linalg.norm(np.cross(tris[:, 1] - tris[:, 0], tris[:, 2] - tris[:, 0]), axis=1)
        order = np.argsort(-area)
        big, keep = tris[order[:k]], tris[order[k:]]
        a, b, c = big[:, 0], big[:, 1], big[:, 2]
        ab, bc, ca = (a + b) / 2, (b + c) / 2, (c + a) / 2
        new = np.concatenate(
            [np.stack(t, axis=1) for t in ((a, ab, ca), (ab, b, bc), (ca, bc, c), (ab, bc, ca))]
        )
        tris = np.concatenate([keep, new])
    return tris


def stl_body(tris: np.ndarray) -> bytes:
    """Binary STL after the 80-byte header: count, then (normal, 3 vertices, attribute)."""
    tris = tris.astype(np.float32)
    normals = np.cross(tris[:, 1] - tris[:, 0], tris[:, 2] - tris[:, 0])
    length = np.linalg.norm(normals, axis=1, keepdims=True)
    normals = np.divide(normals, length, out=np.zeros_like(normals), where=length > 0)
    rec = np.zeros(len(tris), dtype=[("n", "<f4", (3,)), ("v", "<f4", (3, 3)), ("a", "<u2")])
    rec["n"], rec["v"] = normals, tris
    return len(tris).to_bytes(4, "little") + rec.tobytes()


def build_lane(
    corpus: Path, out: Path, target_triangles: int, copies: int, lane: str, models=SOURCE_MODELS
) -> list[Path]:
    """`copies` files per lane, round-robin over the models, each with a unique header."""
    out.mkdir(parents=True, exist_ok=True)
    bodies = []
    for name in models:
        tris = load_faces(corpus, name)
        if len(tris) < target_triangles:
            tris = split_largest(tris, target_triangles)
        elif len(tris) > 1.5 * target_triangles:
            continue  # too big for this lane's size: skip rather than decimate
        bodies.append((Path(name).stem, stl_body(tris)))
    paths = []
    for i in range(copies):
        stem, body = bodies[i % len(bodies)]
        header = f"dam render bench {lane} {i:06d} {stem}".encode()[:80].ljust(80, b" ")
        path = out / f"{lane}_{i:06d}_{stem}.stl"
        if not path.exists() or path.stat().st_size != 80 + len(body):
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(header + body)
            os.replace(tmp, path)
        paths.append(path)
    return paths
