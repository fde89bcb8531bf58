"""A small sample library of real meshes, so a newcomer sees every part of the pipeline work.

Made with trimesh, deterministic, a few hundred KB: models in the common formats, an exact
duplicate pair in two folders, a same-size stranger (same size as the pair, other content),
a broken STL, an empty file and a nested folder.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import trimesh

MARKER = ".dam-sample-library"


def _stl(mesh: trimesh.Trimesh) -> bytes:
    return trimesh.exchange.stl.export_stl(mesh)


def make_sample_library(dest: str | Path, overwrite: bool = False) -> Path:
    """Create the sample library at `dest` (idempotent: an existing one is kept)."""
    dest = Path(dest)
    if (dest / MARKER).exists() and not overwrite:
        return dest
    if dest.exists() and any(dest.iterdir()) and not (dest / MARKER).exists():
        raise FileExistsError(f"{dest} exists and is not a sample library: not touching it")
    if dest.exists():
        shutil.rmtree(dest)
    (dest / "parts").mkdir(parents=True)
    (dest / "backup" / "2024").mkdir(parents=True)
    (dest / "figures").mkdir()
    (dest / "misc").mkdir()

    bracket = trimesh.creation.annulus(r_min=4, r_max=12, height=6, sections=48)
    data = _stl(bracket)
    (dest / "parts" / "bracket.stl").write_bytes(data)
    # The duplicate: the same bytes, elsewhere, under another name.
    (dest / "backup" / "2024" / "bracket (copy).stl").write_bytes(data)
    # The same-size stranger: the same number of triangles, so the same binary STL size,
    # but another shape: tier 0 groups it with the pair, the partial hash tells it apart.
    stranger = bracket.copy()
    stranger.apply_scale((1.0, 1.0, 2.5))
    stranger_bytes = _stl(stranger)
    assert len(stranger_bytes) == len(data)
    (dest / "parts" / "bracket_tall.stl").write_bytes(stranger_bytes)

    (dest / "parts" / "cube_20mm.stl").write_bytes(_stl(trimesh.creation.box((20, 20, 20))))
    cylinder = trimesh.creation.cylinder(radius=8, height=25, sections=64)
    (dest / "parts" / "spacer.obj").write_bytes(trimesh.exchange.obj.export_obj(cylinder).encode())
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=15)
    (dest / "figures" / "ball.ply").write_bytes(trimesh.exchange.ply.export_ply(sphere))
    cone = trimesh.creation.cone(radius=10, height=30, sections=48)
    cone.apply_transform(
        trimesh.transformations.rotation_matrix(-np.pi / 2, [1, 0, 0])
    )  # glTF is Y-up
    cone.apply_scale(0.001)  # glTF is in metres: 20 x 20 x 30 mm, like the other models
    cone.visual.face_colors = np.tile([200, 60, 40, 255], (len(cone.faces), 1))
    (dest / "figures" / "red_cone.glb").write_bytes(trimesh.Scene(cone).export(file_type="glb"))
    capsule = trimesh.creation.capsule(height=30, radius=8)
    (dest / "figures" / "capsule.3mf").write_bytes(trimesh.Scene(capsule).export(file_type="3mf"))
    torus = trimesh.creation.torus(major_radius=20, minor_radius=6)
    (dest / "figures" / "ring.stl").write_bytes(
        trimesh.exchange.stl.export_stl_ascii(torus).encode()
    )

    # A broken STL: a binary header that promises more triangles than the file holds.
    broken = bytearray(_stl(trimesh.creation.box((5, 5, 5))))
    broken[80:84] = (5000).to_bytes(4, "little")
    (dest / "misc" / "broken.stl").write_bytes(bytes(broken[:300]))
    (dest / "misc" / "empty.stl").write_bytes(b"")
    (dest / "misc" / "notes.txt").write_text("Print the bracket in PETG, 0.2 mm layers.\n")
    (dest / MARKER).write_text("made by dam_dagster; safe to delete\n")
    return dest
