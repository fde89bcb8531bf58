"""Geometry facts and the geometry fingerprint of a model, from the drawables already loaded
for its thumbnail: the same read and the same parse (docs/MODELS.md).

Facts, in millimetres (the file's declared unit, or millimetres for formats without one):
triangles, bodies (groups of triangles connected through shared vertices), the bounding box,
surface area, volume (closed meshes only), watertight (every edge shared by exactly two
triangles), consistently wound (every edge two triangles share is run once each way), and
a "probably inches" hint for unit-less files whose size makes sense times 25.4.

Two corners are the same vertex when their float32 coordinates are identical, coordinates
within a millionth of the model's size of zero counting as zero (CAD exporters write -0.0,
1e-16 and 0 for the same plane). So a triangle soup, as STL stores it, is joined up the way
its author meant it, and texture seams are not holes.

The fingerprint describes the mesh, not the file: the number of triangles (exact) and,
each quantised to a thousandth of the model's size, the size of the cloud of triangle
centroids, the enclosed volume, the mean squared edge length (which tells two
triangulations of one surface apart), and the second and third moments of the centroids
about their mean, in the orientation (of the 24 quarter-turn orientations about the axes)
that orders them first; then hashed. Centroids count every triangle alike: unlike areas,
they do not weigh noise by the size of small triangles, and unlike vertices they do not
depend on which nearly coincident corners a writer joined. Averaged over every triangle,
float noise far below a print's resolution moves them by far less than a step. So the
fingerprint does not change with the order of the triangles, the vertex a triangle starts
at, the file format or its header, a translation, a quarter turn about any axis (Y-up or
Z-up), or such noise; it changes with a mirror image, a scale, or a remesh.

The per-drawable sums are also what the renderer needs to decide whether back faces can be
culled (model.orient_for_culling), and the joined-up vertices let it draw a triangle soup
as an indexed mesh (loaders.prepare_for_drawing): measuring costs the render nothing twice.

Runs only in render worker processes (numpy, scipy, pyarrow).
"""

from __future__ import annotations

import hashlib
import math
from itertools import permutations, product

import numpy as np

from .model import TRIANGLES, LoadedModel

FINGERPRINT_VERSION = 1
# Quantisation step of every measure in the fingerprint: a thousandth of the model's size,
# and never finer than a micrometre, far below any print's resolution, so float noise in a
# model sized below a millimetre (a file in metres read as mm) does not cross a step either
# (docs/MODELS.md says how they were chosen)
STEP = 1e-3
FLOOR_MM = 1e-3
CHUNK = 8192  # triangles per pass of the sums: the temporaries stay in the CPU's cache
# "Probably inches": for files without a unit, a largest dimension in this range (read as mm)
INCH_RANGE_MM = (0.5, 10.0)

_PAIRS = [(0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2)]
_TRIPLES = [(i, j, k) for i in range(3) for j in range(i, 3) for k in range(j, 3)]


def _axis_rotations() -> list[tuple[list[int], np.ndarray]]:
    """The 24 rotations that take the axes onto the axes, as (permutation, signs): row i of
    the matrix is signs[i] * e_perm[i]. Determinant +1 only: no mirror among them."""
    out = []
    for perm in permutations(range(3)):
        for signs in product((1.0, -1.0), repeat=3):
            m = np.eye(3)[list(perm)] * np.array(signs)[:, None]
            if np.linalg.det(m) > 0:
                out.append((list(perm), np.array(signs)))
    return out


ROTATIONS = _axis_rotations()


def _rotation_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For every rotation, where each component of the rotated moments comes from and its
    sign: rotated[i, j] = s_i s_j m[perm_i, perm_j], likewise with three indices."""
    src2 = np.array([[3 * perm[i] + perm[j] for i, j in _PAIRS] for perm, _ in ROTATIONS])
    sign2 = np.array([[signs[i] * signs[j] for i, j in _PAIRS] for _, signs in ROTATIONS])
    src3 = np.array(
        [[9 * perm[i] + 3 * perm[j] + perm[k] for i, j, k in _TRIPLES] for perm, _ in ROTATIONS]
    )
    sign3 = np.array(
        [[signs[i] * signs[j] * signs[k] for i, j, k in _TRIPLES] for _, signs in ROTATIONS]
    )
    return src2, sign2, src3, sign3


_SRC2, _SIGN2, _SRC3, _SIGN3 = _rotation_tables()


def measure(model: LoadedModel) -> tuple[dict, list[dict | None]]:
    """The facts of a loaded model (plain Python values, ready for the catalogue) and, per
    drawable, the sums of its triangles (None for points and lines)."""
    s = float(model.unit_mm) if model.unit_mm and math.isfinite(model.unit_mm) else 1.0
    sums: list[dict | None] = []
    lows, highs = [], []
    for d in model.drawables:
        part = _triangle_part(d) if d.mode == TRIANGLES and len(d.positions) else None
        sums.append(part)
        if part is not None:
            lows.append(part["lo"])
            highs.append(part["hi"])
        elif len(d.positions):
            lo, hi = _lo_hi(d.positions)
            lows.append(lo)
            highs.append(hi)
    parts = [p for p in sums if p is not None]
    facts: dict = {
        "triangles": int(sum(p["n"] for p in parts)),
        "points": int(model.points),
        "bodies": None,
        "size_x_mm": None,
        "size_y_mm": None,
        "size_z_mm": None,
        "area_mm2": None,
        "volume_mm3": None,
        "watertight": None,
        "winding_consistent": None,
        "unit": model.unit,
        "probably_inches": None,
        "up_axis": model.up_axis,
        "fingerprint": None,
    }
    if lows:
        size = (np.max(np.stack(highs), axis=0) - np.min(np.stack(lows), axis=0)) * s
        facts["size_x_mm"], facts["size_y_mm"], facts["size_z_mm"] = (float(v) for v in size)
        largest = float(size.max())
        facts["probably_inches"] = bool(
            model.unit is None and INCH_RANGE_MM[0] <= largest <= INCH_RANGE_MM[1]
        )
    if not parts:
        return facts, sums
    watertight = all(p["watertight"] for p in parts)
    consistent = all(p["consistent"] for p in parts)
    volume = sum(abs(p["volume"]) for p in parts) * s**3  # mirrored instances count too
    facts["bodies"] = int(sum(p["bodies"] for p in parts))
    facts["area_mm2"] = float(sum(p["area"] for p in parts) * s**2)
    facts["watertight"] = bool(watertight)
    facts["winding_consistent"] = bool(consistent)
    if watertight and consistent:
        facts["volume_mm3"] = float(volume)
    facts["fingerprint"] = _fingerprint(parts, s)
    return facts, sums


def model_facts(model: LoadedModel) -> dict:
    return measure(model)[0]


def _lo_hi(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # per-column reductions: numpy's min(axis=0) on (n, 3) arrays is much slower
    lo = np.array([float(points[:, k].min()) for k in range(3)])
    hi = np.array([float(points[:, k].max()) for k in range(3)])
    return lo, hi


def _vertex_ids(points: np.ndarray, lo: np.ndarray, hi: np.ndarray):
    """One id per distinct position (see the module's docstring), and the distinct positions
    ((k, 3) float32). Exact, hashed by Arrow: a sort costs several times more."""
    import pyarrow as pa

    p = np.ascontiguousarray(points, dtype=np.float32)
    if not len(p):
        return np.zeros(0, dtype=np.int32), np.zeros((0, 3), dtype=np.float32)
    tiny = np.float32(max(float(np.abs(lo).max()), float(np.abs(hi).max())) * 2.0**-20)
    near_zero = np.abs(p) <= tiny
    if near_zero.any():
        p = p.copy()
        p[near_zero] = 0.0  # -0.0 becomes 0.0 too
    rows = pa.Array.from_buffers(pa.binary(12), len(p), [None, pa.py_buffer(p)])
    encoded = rows.dictionary_encode()
    dictionary = encoded.dictionary
    values = np.frombuffer(dictionary.buffers()[1], dtype=np.float32)
    unique = values[3 * dictionary.offset : 3 * (dictionary.offset + len(dictionary))]
    return np.asarray(encoded.indices), unique.reshape(-1, 3)


def _triangle_part(d) -> dict | None:
    """Topology, bounds, area, volume and moment sums of one triangle drawable, in its own
    coordinates (the file's unit; the caller scales)."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    positions = d.positions
    if d.indices is not None:
        faces = np.asarray(d.indices, dtype=np.int64).reshape(-1, 3)
        if not len(faces):
            return None
        referenced = np.zeros(len(positions), dtype=bool)
        referenced[faces.ravel()] = True
        lo, hi = _lo_hi(positions[referenced] if not referenced.all() else positions)
        ids, unique = _vertex_ids(positions, lo, hi)
        f = ids[faces]
        indexed = None
    else:
        n_corners = len(positions) - len(positions) % 3
        if not n_corners:
            return None
        lo, hi = _lo_hi(positions[:n_corners])
        ids, unique = _vertex_ids(positions[:n_corners], lo, hi)
        f = ids.reshape(-1, 3)
        indexed = None
        if d.normals is None and d.colors is None and d.uv is None and len(positions) == n_corners:
            # what the renderer can draw instead of the soup: each vertex once
            indexed = (np.ascontiguousarray(unique), ids.astype(np.uint32))
    n = len(f)
    n_ids = len(unique)

    # One sort of the half-edges, keyed (undirected edge, direction). Watertight: every
    # undirected edge comes exactly twice. Consistently wound: every edge two triangles share
    # is run once each way (edges of three or more triangles are a flaw of their own:
    # they make the mesh not watertight; trimesh's definitions, the same).
    a = f.ravel()
    b = f[:, [1, 2, 0]].ravel()
    # 32-bit keys while they fit (2 V^2 < 2^32: under 46,340 vertices), else 64-bit
    key_type = np.uint32 if 2 * n_ids * n_ids < (1 << 32) else np.int64
    keys = np.minimum(a, b).astype(key_type)
    keys *= key_type(n_ids)
    keys += np.maximum(a, b).astype(key_type)
    keys *= key_type(2)
    keys += (a > b).astype(key_type)
    keys.sort()
    edges = keys >> 1
    paired = len(edges) % 2 == 0 and bool((edges[0::2] == edges[1::2]).all())
    if paired and bool((edges[1:-1:2] != edges[2::2]).all()):  # the usual closed mesh
        watertight = True
        consistent = bool(((keys[0::2] ^ keys[1::2]) & 1).all())
        unique_edges = edges[0::2]
    else:
        watertight = False
        first = np.empty(len(edges), dtype=bool)
        first[0] = True
        np.not_equal(edges[1:], edges[:-1], out=first[1:])
        starts = np.flatnonzero(first)
        lengths = np.diff(np.append(starts, len(edges)))
        pairs = starts[lengths == 2]
        consistent = not bool((((keys[pairs] ^ keys[pairs + 1]) & 1) == 0).any())
        unique_edges = edges[first]
    del keys, edges, a, b

    # bodies: components of the vertex graph. The edges come sorted by (lower vertex, upper
    # vertex): they are already the rows of a sparse matrix, nothing to sort. Vertices no
    # triangle uses (indexed formats keep them) are no body.
    lower = (unique_edges // key_type(n_ids)).astype(np.int64)
    upper = (unique_edges.astype(np.int64) - lower * n_ids).astype(np.int32)
    indptr = np.zeros(n_ids + 1, dtype=np.int32)
    np.cumsum(np.bincount(lower, minlength=n_ids), out=indptr[1:])
    # in the types scipy works in (float64 weights, int32 indices): no conversion inside
    graph = csr_matrix((np.ones(len(upper)), upper, indptr), (n_ids, n_ids))
    graph.has_sorted_indices = True
    components = connected_components(graph, directed=True, connection="weak")[0]
    unused = 0
    if d.indices is not None:
        used = np.zeros(n_ids, dtype=bool)
        used[f.ravel()] = True
        unused = n_ids - int(used.sum())
    bodies = int(components - unused)
    del graph, indptr, lower, upper, unique_edges, f, ids

    origin = (lo + hi) / 2.0
    return {
        "indexed": indexed,  # (positions, indices) for a soup without attributes, or None
        "n": n,
        "lo": lo,
        "hi": hi,
        "bodies": bodies,
        "watertight": watertight,
        "consistent": consistent,
        "origin": origin,
        **_sums(d, origin),
    }


def _corner_columns(d, start: int, stop: int, origin: np.ndarray) -> np.ndarray:
    """(9, m) float32, C order: x0 y0 z0 x1 y1 z1 x2 y2 z2 of triangles start..stop, about
    origin (every later operation then runs on contiguous rows)."""
    if d.indices is not None:
        corners = np.asarray(d.positions)[np.asarray(d.indices[3 * start : 3 * stop])]
    else:
        corners = d.positions[3 * start : 3 * stop]
    cols = np.array(corners.reshape(-1, 9).T, dtype=np.float32, order="C")
    cols -= np.tile(origin, 3).astype(np.float32)[:, None]
    return cols


def _sums(d, origin: np.ndarray) -> dict:
    """About `origin`: the area, the signed volume, the area vector (of length zero for a
    closed surface), the squared edge lengths, and the sums of the triangle centroids g, of
    g g^T and of g_i g_j g_k.
    Per triangle in float32 (the coordinates' own precision: edge vectors of nearby float32
    points are exact), summed in float64."""
    n = (len(d.indices) if d.indices is not None else len(d.positions)) // 3
    area = volume6 = edge2 = 0.0
    area_vector = np.zeros(3)
    s1 = np.zeros(3)
    s2 = np.zeros(6)  # (pair ij)
    s3 = np.zeros((6, 3))  # (pair ij, k)
    for start in range(0, n, CHUNK):
        c = _corner_columns(d, start, min(n, start + CHUNK), origin)
        m = c.shape[1]
        v0, v1, v2 = c[0:3], c[3:6], c[6:9]
        e1 = v1 - v0
        e2 = v2 - v0
        cross = np.empty((3, m), dtype=np.float32)
        np.multiply(e1[1], e2[2], out=cross[0])
        cross[0] -= e1[2] * e2[1]
        np.multiply(e1[2], e2[0], out=cross[1])
        cross[1] -= e1[0] * e2[2]
        np.multiply(e1[0], e2[1], out=cross[2])
        cross[2] -= e1[1] * e2[0]
        e3 = e2 - e1
        edge2 += sum(float(np.einsum("ij,ij->", e, e, dtype=np.float64)) for e in (e1, e2, e3))
        del e1, e2, e3
        a = np.einsum("ij,ij->j", cross, cross)
        np.sqrt(a, out=a)
        area += 0.5 * float(a.sum(dtype=np.float64))
        volume6 += float(np.einsum("ij,ij->", v0, cross, dtype=np.float64))
        area_vector += 0.5 * cross.sum(axis=1, dtype=np.float64)
        del cross, a
        g = (v0 + v1 + v2).astype(np.float64)
        g /= 3.0
        x, y, z = g
        pairs = np.stack([x * x, y * y, z * z, x * y, x * z, y * z])
        s1 += g.sum(axis=1)
        s2 += pairs.sum(axis=1)
        s3 += pairs @ g.T
        del c, v0, v1, v2, g, pairs
    return {
        "area": area,
        "volume": volume6 / 6.0,
        "area_vector": area_vector,
        "edge2": edge2,  # sum of the three squared edge lengths of every triangle
        "s1": s1,
        "s2": s2,
        "s3": s3,
    }


def _tensor2(flat: np.ndarray) -> np.ndarray:
    t = np.zeros((3, 3))
    for row, (i, j) in enumerate(_PAIRS):
        t[i, j] = t[j, i] = flat[row]
    return t


def _tensor3(table: np.ndarray) -> np.ndarray:
    t = np.zeros((3, 3, 3))
    for row, (i, j) in enumerate(_PAIRS):
        for k in range(3):
            for p, q, r in set(permutations((i, j, k))):
                t[p, q, r] = table[row, k]
    return t


def _central_moments(parts: list[dict]):
    """The centroid count, mean, and second and third central moments (sums) of the
    centroids of all parts together, in the file's unit, about a common origin o (returned
    too: the mean is about it)."""
    o = parts[0]["origin"]  # every part's sums are about its own origin: bring them to one
    count = 0.0
    m1 = np.zeros(3)
    m2 = np.zeros((3, 3))
    m3 = np.zeros((3, 3, 3))
    for p in parts:
        d = p["origin"] - o  # a point x about o is y + d, y about the part's origin
        a, p1, p2, p3 = float(p["n"]), p["s1"], _tensor2(p["s2"]), _tensor3(p["s3"])
        dd = np.outer(d, d)
        count += a
        m1 += p1 + a * d
        m2 += p2 + np.outer(p1, d) + np.outer(d, p1) + a * dd
        m3 += (
            p3
            + np.einsum("ij,k->ijk", p2, d)
            + np.einsum("ik,j->ijk", p2, d)
            + np.einsum("jk,i->ijk", p2, d)
            + np.einsum("i,jk->ijk", p1, dd)
            + np.einsum("j,ik->ijk", p1, dd)
            + np.einsum("k,ij->ijk", p1, dd)
            + a * np.einsum("i,jk->ijk", d, dd)
        )
    c = m1 / count
    i2 = m2 - count * np.outer(c, c)
    i3 = (
        m3
        - np.einsum("i,jk->ijk", c, m2)
        - np.einsum("j,ik->ijk", c, m2)
        - np.einsum("k,ij->ijk", c, m2)
        + 2.0 * count * np.einsum("i,j,k->ijk", c, c, c)
    )
    return count, c + o, i2, i3


def _fingerprint(parts: list[dict], s: float) -> str | None:
    """See the module's docstring."""
    count, mean, i2, i3 = _central_moments(parts)
    if count < 1:
        return None
    scale = math.sqrt(max(float(np.trace(i2)), 0.0) / count)  # RMS radius, file unit
    if not scale > 0 or not math.isfinite(scale):
        return None
    n2 = i2 / count / scale**2
    n3 = i3 / count / scale**3
    # the signed volume about the centroids' mean, every part together
    volume = 0.0
    for part in parts:
        offset = mean - part["origin"]
        volume += part["volume"] - float(offset @ part["area_vector"]) / 3.0
    step = max(STEP, FLOOR_MM / (scale * s))
    size = round(math.log(scale * s) / step)
    enclosed = round(abs(volume) / scale**3 / step)
    # edges: noise moves a squared length by about 2 x noise / length, hence the wider step
    mean_edge2 = sum(p["edge2"] for p in parts) / (3.0 * count) * s**2
    edges = None
    if mean_edge2 > 0:
        edge_step = max(STEP, 20.0 * FLOOR_MM / math.sqrt(mean_edge2))
        edges = round(math.log(mean_edge2) / edge_step)
    # every orientation at once: (24, 16) integer keys; the lexicographically first wins
    keys = np.rint(
        np.hstack([n2.ravel()[_SRC2] * _SIGN2, n3.ravel()[_SRC3] * _SIGN3]) / step
    ).astype(np.int64)
    best = tuple(int(q) for q in keys[np.lexsort(keys.T[::-1])[0]])
    text = repr((FINGERPRINT_VERSION, int(count), size, enclosed, edges, best))
    return hashlib.blake2b(text.encode(), digest_size=10).hexdigest()
