"""What a loader gives the renderer: drawables in world space (Z up), the load errors, and the
closed-surface test that lets the GPU cull back faces. Shared by every loader (loaders.py,
threemf.py) and the GL side (gl.py), so none of them imports another.

Runs only in render worker processes (it imports numpy).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

# glTF primitive modes, as pyrender uses them
POINTS, LINES, TRIANGLES = 0, 1, 4

# Neutral material for models that carry no colour of their own (sRGB, 0..1).
NEUTRAL = (0.80, 0.80, 0.82, 1.0)
# Points without colours of their own
POINT_COLOR = (0.23, 0.36, 0.55, 1.0)


class LoadError(Exception):
    """A model file that cannot be drawn; `error_class` names the reason in the outcome."""

    error_class = "LoadError"
    status = "failed"

    def __init__(self, message: str):
        super().__init__(message)


class EmptyMesh(LoadError):
    error_class = "EmptyMesh"


class CorruptFile(LoadError):
    error_class = "CorruptFile"


class UnsupportedFormat(LoadError):
    error_class = "UnsupportedFormat"
    status = "unsupported"


class MissingDependency(LoadError):
    error_class = "MissingDependency"
    status = "unsupported"


class TooLarge(LoadError):
    """The model would need more memory than the worker's cap: known before allocating it."""

    error_class = "MemoryLimit"
    status = "memory"


@dataclass
class Drawable:
    positions: np.ndarray  # (n, 3) float32, world space, Z up
    mode: int = TRIANGLES
    indices: np.ndarray | None = None  # flat uint32 (3 per triangle, 2 per line)
    normals: np.ndarray | None = None  # (n, 3) float32, from the file (smooth shading)
    uv: np.ndarray | None = None  # (n, 2) float32
    colors: np.ndarray | None = None  # (n, 4) float32 0..1 (sRGB)
    texture: object | None = None  # PIL image, RGB or RGBA
    base_color: tuple = NEUTRAL  # (4,) sRGB 0..1
    blend: bool = False  # alpha blending (translucent material or colours)
    double_sided: bool = True  # False: a closed surface, back faces culled

    @property
    def primitive_count(self) -> int:
        n = len(self.indices) if self.indices is not None else len(self.positions)
        return n // 3 if self.mode == TRIANGLES else (n // 2 if self.mode == LINES else n)


@dataclass
class LoadedModel:
    drawables: list[Drawable] = field(default_factory=list)
    triangles: int = 0
    points: int = 0
    # The unit the file declares ('millimeter', 'inch', 'meters', ...), None when its format
    # has none (STL, OBJ, PLY, OFF: read as millimetres, as slicers do); unit_mm is the
    # factor from the file's numbers to millimetres. Drawing ignores both (framing is
    # scale-free); the geometry facts use them.
    unit: str | None = None
    unit_mm: float = 1.0
    # How the model was stood up: 'Z' (as in the file) or 'Y' (a Y-up file turned Z-up).
    up_axis: str = "Z"
    # Names of the objects in the file, when it names them (3MF objects, glTF nodes).
    names: list[str] = field(default_factory=list)


CLOSED_TOLERANCE = 1e-3


def orient_for_culling(d: Drawable, sums: dict | None = None) -> None:
    """Let the GPU skip back faces when that cannot show: for a closed surface the area-
    weighted normals sum to zero (divergence theorem), and the sign of the enclosed volume
    says whether the winding points out (cull back faces) or in (flip the winding, then cull).
    Open or inconsistently wound surfaces, and translucent ones, stay double-sided. With
    culling, llvmpipe rasterises half the triangles: a third of the render time saved.

    `sums` are the drawable's sums from facts.measure (area, area_vector, volume about the
    bounding box's centre, lo, hi): given, nothing is computed again; without them about
    0.5 ms for 14k triangles."""
    if d.mode != TRIANGLES or d.blend:
        return
    if sums is not None:
        total = 2.0 * float(sums["area"])
        net = 2.0 * float(np.linalg.norm(sums["area_vector"]))
        volume = 6.0 * float(sums["volume"])
        lo, hi = sums["lo"], sums["hi"]
        if sums["n"] < 4 or not total > 0 or net > CLOSED_TOLERANCE * total:
            return
        if abs(volume) < 1e-9 * float(np.prod(np.maximum(hi - lo, 1e-30))):
            return
        _orient(d, volume)
        return
    pos = d.positions
    if d.indices is None:
        tris = pos.reshape(-1, 3, 3)
    else:
        tris = pos[d.indices.reshape(-1, 3)]
    if len(tris) < 4:
        return
    lo = np.array([pos[:, k].min() for k in range(3)], dtype=np.float32)
    hi = np.array([pos[:, k].max() for k in range(3)], dtype=np.float32)
    origin = (lo + hi) / 2
    a = tris[:, 0] - origin
    e1 = tris[:, 1] - tris[:, 0]
    e2 = tris[:, 2] - tris[:, 0]
    nx = e1[:, 1] * e2[:, 2] - e1[:, 2] * e2[:, 1]
    ny = e1[:, 2] * e2[:, 0] - e1[:, 0] * e2[:, 2]
    nz = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    total = float(np.sqrt(nx.astype(np.float64) ** 2 + ny**2 + nz**2).sum())
    if not total > 0:
        return
    net = math.sqrt(
        float(nx.sum(dtype=np.float64)) ** 2
        + float(ny.sum(dtype=np.float64)) ** 2
        + float(nz.sum(dtype=np.float64)) ** 2
    )
    if net > CLOSED_TOLERANCE * total:
        return
    volume = float(
        (a[:, 0] * nx).sum(dtype=np.float64)
        + (a[:, 1] * ny).sum(dtype=np.float64)
        + (a[:, 2] * nz).sum(dtype=np.float64)
    )
    extent = float(np.prod(np.maximum(hi - lo, 1e-30)))
    if abs(volume) < 1e-9 * extent:
        return  # a flat closed surface (two coincident sheets): no inside to hide
    _orient(d, volume)


def _orient(d: Drawable, volume: float) -> None:
    if volume < 0:  # wound inside-out: flip every triangle
        if d.indices is None:

            def rev(arr):
                return np.ascontiguousarray(
                    arr.reshape(len(arr) // 3, 3, -1)[:, ::-1].reshape(arr.shape)
                )

            d.positions = rev(d.positions)
            d.normals = None if d.normals is None else rev(d.normals)
            d.uv = None if d.uv is None else rev(d.uv)
            d.colors = None if d.colors is None else rev(d.colors)
        else:
            d.indices = np.ascontiguousarray(d.indices.reshape(-1, 3)[:, ::-1].ravel())
    d.double_sided = False
