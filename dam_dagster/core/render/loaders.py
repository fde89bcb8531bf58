"""From a file's bytes to what the GL renderer draws: a list of `Drawable` in world space, Z up.

Binary STL (most of a 3D-printing library) takes a fast path: the bytes are viewed as a numpy
structured array (no parsing, no trimesh processing) and drawn as a triangle soup whose flat
normals the fragment shader derives on its own. Every other format goes through trimesh
(`process=False`: no vertex merging, no normals computed), with side files (MTL, textures,
glTF .bin) resolved relative to the model's folder.

Which way is up: Z for STL, 3MF, PLY, OFF (as slicers show them) and STEP, Y for glTF (its
specification), COLLADA's <up_axis>, and for OBJ the rule of `obj_is_y_up` (docs/MODELS.md).
The model also carries the unit its file declares (`LoadedModel.unit`, `unit_mm`).

`load_model` returns the drawables as read; `prepare_for_drawing` then decides, per
drawable, whether back faces can be culled (from the sums facts.measure already made).

Runs only in render worker processes (it imports numpy and, lazily, trimesh).
"""

from __future__ import annotations

import io
import posixpath
import re
import zipfile

import numpy as np

from ..archives import MEMBER_MARK
from .api import Z_UP_EXTENSIONS
from .model import (  # noqa: F401  (re-exported: the loaders' public types)
    LINES,
    NEUTRAL,
    POINT_COLOR,
    POINTS,
    TRIANGLES,
    CorruptFile,
    Drawable,
    EmptyMesh,
    LoadedModel,
    LoadError,
    MissingDependency,
    TooLarge,
    UnsupportedFormat,
    orient_for_culling,
)

# trimesh's placeholder colour for "no colour given" (visual.DEFAULT_COLOR): not the author's
_TRIMESH_DEFAULT_RGBA = (102, 102, 102, 255)
# Largest texture edge uploaded: a thumbnail never needs more.
MAX_TEXTURE_EDGE = 512

# Y up (glTF) to Z up: (x, y, z) -> (x, -z, y); the glTF front (+Z) then faces the camera (-Y).
Y_UP_TO_Z_UP = np.array(
    [[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
)

_STL_DTYPE = np.dtype([("normal", "<f4", (3,)), ("v", "<f4", (3, 3)), ("attr", "<u2")])


# ----------------------------------------------------------------------------------------
# Binary STL, the fast path
# ----------------------------------------------------------------------------------------


def stl_layout(data) -> tuple[str, int]:
    """('binary', n_triangles) or ('ascii', 0) for STL bytes; raises CorruptFile/EmptyMesh."""
    size = len(data)
    head = bytes(data[:512]).lstrip()
    looks_ascii = head[:5].lower() == b"solid"
    if size < 84:
        if looks_ascii:
            return "ascii", 0
        if size == 0:
            raise EmptyMesh("the file is empty (0 bytes)")
        raise CorruptFile(f"{size} bytes is too short for a binary STL (84-byte header)")
    n = int.from_bytes(bytes(data[80:84]), "little")
    expected = 84 + 50 * n
    if size == expected:
        if n == 0:
            raise EmptyMesh("binary STL with 0 triangles")
        return "binary", n
    if looks_ascii:
        return "ascii", 0
    if size > expected and n > 0:
        return "binary", n  # trailing bytes after the triangles: tolerated, as slicers do
    raise CorruptFile(
        f"binary STL header announces {n} triangles ({expected} bytes) "
        f"but the file has {size} bytes"
    )


def load_binary_stl(data, n: int) -> LoadedModel:
    tri = np.frombuffer(data, dtype=_STL_DTYPE, count=n, offset=84)["v"]  # (n, 3, 3) view
    positions = np.ascontiguousarray(tri, dtype=np.float32).reshape(-1, 3)
    positions = _drop_non_finite_triangles(positions)
    if len(positions) == 0:
        raise EmptyMesh("no triangle with finite coordinates")
    d = Drawable(positions=positions)
    return LoadedModel([d], triangles=len(positions) // 3)


def _drop_non_finite_triangles(soup: np.ndarray) -> np.ndarray:
    if np.isfinite(soup.sum(dtype=np.float64)):
        return soup
    keep = np.isfinite(soup.reshape(-1, 9)).all(axis=1)
    return np.ascontiguousarray(soup.reshape(-1, 3, 3)[keep].reshape(-1, 3))


def estimate_stl_memory_mb(n_triangles: int) -> float:
    """A lower bound of the resident memory a binary STL of n triangles adds to a worker
    (measured: ~360 bytes per triangle, the file's bytes included, over a ~200 MB worker;
    measuring it, facts.py, adds ~100 more at its peak: 800k triangles, 533-568 MB peak
    without, 625-631 MB with, bench/render_bench.py). A file over the cap by this bound is
    refused before any allocation; the pool's resident memory watch catches the rest."""
    return 40.0 + n_triangles * 300 / 1e6


# ----------------------------------------------------------------------------------------
# Everything else, through trimesh
# ----------------------------------------------------------------------------------------


def prepare_for_drawing(model: LoadedModel, sums: list | None = None) -> LoadedModel:
    """Decide back-face culling for every drawable (model.orient_for_culling), with the sums
    facts.measure computed for each drawable when given; and draw a triangle soup (binary
    STL) as the indexed mesh the facts joined up: each vertex is then transformed and
    framed once instead of six times (the same triangles, the same picture)."""
    for i, d in enumerate(model.drawables):
        part = sums[i] if sums is not None and i < len(sums) else None
        if part is not None and part.get("indexed") is not None and d.indices is None:
            d.positions, d.indices = part["indexed"]
        orient_for_culling(d, part)
    return model


def load_model(data: bytes, ext: str, path: str, memory_mb: int | None = None) -> LoadedModel:
    """Parse a model from its bytes (side files read through a resolver next to `path`).
    The drawables are as read: call prepare_for_drawing before rendering them."""
    if ext == ".stl":
        layout, n = stl_layout(data)
        if layout == "binary":
            if memory_mb is not None and estimate_stl_memory_mb(n) > memory_mb:
                raise TooLarge(
                    f"{n} triangles would need about {estimate_stl_memory_mb(n):.0f} MB, "
                    f"over the {memory_mb} MB cap per render process"
                )
            return load_binary_stl(data, n)
    if ext == ".3mf":
        from .threemf import has_colours, load_3mf_with_colours

        if has_colours(data):
            try:
                model = load_3mf_with_colours(data)
                if model.drawables:
                    return model
            except Exception:  # noqa: BLE001 - trimesh gets its chance and says what is wrong
                pass
    if ext in (".step", ".stp"):
        try:
            import cascadio  # noqa: F401
        except ImportError:
            raise MissingDependency(
                "STEP files need the package 'cascadio', a dependency of dam-dagster that "
                "cannot be imported here: run `make install` (or pip install cascadio); the "
                "next run renders these files again"
            ) from None
    return _load_with_trimesh(data, ext, path)


def _up_axis_matrix(data: bytes, ext: str, scene=None) -> np.ndarray | None:
    if ext in Z_UP_EXTENSIONS:
        return None
    if ext in (".glb", ".gltf"):
        return Y_UP_TO_Z_UP
    if ext == ".obj":
        return Y_UP_TO_Z_UP if scene is not None and obj_is_y_up(scene, data) else None
    if ext in (".dae", ".zae"):
        text = data
        if ext == ".zae":
            text = b""
            try:
                with zipfile.ZipFile(io.BytesIO(data)) as z:
                    for info in z.infolist():
                        if info.filename.lower().endswith(".dae") and info.file_size < 64 << 20:
                            text = z.read(info)
                            break
            except (zipfile.BadZipFile, OSError):
                return None  # trimesh will say what is wrong with it
        m = re.search(rb"<up_axis>\s*([XYZ])_UP\s*</up_axis>", text[: 1 << 20])
        axis = m.group(1) if m else b"Y"  # COLLADA's default is Y up
        return Y_UP_TO_Z_UP if axis == b"Y" else None
    return None


def _load_with_trimesh(data: bytes, ext: str, path: str) -> LoadedModel:
    import os

    import trimesh
    from trimesh.resolvers import FilePathResolver

    file_type = ext[1:]
    if file_type == "stp":
        file_type = "step"
    if MEMBER_MARK in path:  # an archive member: its side files are members beside it
        archive, member = path.split(MEMBER_MARK, 1)
        resolver = _zip_member_resolver(archive, posixpath.dirname(member))
    else:
        resolver = FilePathResolver(os.path.dirname(os.path.abspath(path)) + os.sep)
    try:
        scene = trimesh.load_scene(
            io.BytesIO(data), file_type=file_type, resolver=resolver, process=False
        )
    except (NotImplementedError, ModuleNotFoundError) as exc:
        if isinstance(exc, ModuleNotFoundError):
            raise MissingDependency(f"{ext} files need the optional package '{exc.name}'") from None
        raise UnsupportedFormat(str(exc)) from None
    up = _up_axis_matrix(data, ext, scene)
    model = scene_to_model(scene, up)
    model.unit, model.unit_mm = _unit(getattr(scene, "units", None))
    model.up_axis = "Y" if up is not None else "Z"
    return model


# Units as trimesh reports them, in the words the catalogue uses
_UNIT_NAMES = {
    "mm": "millimeter",
    "millimeter": "millimeter",
    "millimeters": "millimeter",
    "millimetre": "millimeter",
    "cm": "centimeter",
    "centimeter": "centimeter",
    "centimeters": "centimeter",
    "m": "meter",
    "meter": "meter",
    "meters": "meter",
    "metre": "meter",
    "in": "inch",
    "inch": "inch",
    "inches": "inch",
    "ft": "foot",
    "foot": "foot",
    "feet": "foot",
    "micron": "micron",
    "microns": "micron",
    "um": "micron",
}


def _unit(units) -> tuple[str | None, float]:
    """(the declared unit, the factor to millimetres); (None, 1.0) when none is declared or
    the declaration cannot be read (the numbers are then taken as millimetres)."""
    if not units or not isinstance(units, str):
        return None, 1.0
    try:
        from trimesh.units import unit_conversion

        factor = float(unit_conversion(units, "millimeters"))
    except Exception:  # noqa: BLE001 - an unreadable unit is no unit
        return None, 1.0
    if not (factor > 0 and np.isfinite(factor)):
        return None, 1.0
    text = units.strip().lower()
    return _UNIT_NAMES.get(text, text), factor


# OBJ files whose leading comments name one of these exporters were written Y-up by default
# (the format's own convention, and Blender's); the flat-base test below decides first.
Y_UP_OBJ_EXPORTERS = (
    "blender",
    "wings 3d",
    "zbrush",
    "maya",
    "cinema 4d",
    "cinema4d",
    "3ds max",
    "3dsmax",
    "houdini",
    "modo",
    "meshmixer",
    "sketchfab",
    "mudbox",
    "sculptris",
    "nomad",
)
FLAT_BASE_MIN_SHARE = 0.02  # of the surface: what counts as a base the model stands on
FLAT_BASE_TOLERANCE = 1e-3  # of the largest extent: how flat a base must be


def obj_is_y_up(scene, data: bytes) -> bool:
    """Whether an OBJ should be turned from Y-up to Z-up (docs/MODELS.md, "Which way is up").

    A model made to be printed stands on a flat base. So: the area of the triangles lying in
    the lowest plane across Y (y = min y) and across Z (z = min z); when one of them is at
    least 2 % of the surface and at least twice the other, that side is the bottom. Otherwise
    (no flat base: sculptures, scans) the file's leading comments decide: a known Y-up
    exporter (Blender, ZBrush, Maya...) means Y up; anything else stays Z up, as slicers
    read OBJ files."""
    import trimesh

    tris = []
    for node in scene.graph.nodes_geometry:
        transform, geom_name = scene.graph[node]
        geom = scene.geometry.get(geom_name)
        if not isinstance(geom, trimesh.Trimesh) or not len(geom.faces):
            continue
        vertices = np.asarray(geom.vertices, dtype=np.float64)
        faces = np.asarray(geom.faces).reshape(-1, 3)
        ok = (faces >= 0).all(axis=1) & (faces < len(vertices)).all(axis=1)
        v = vertices @ np.asarray(transform)[:3, :3].T + np.asarray(transform)[:3, 3]
        t = v[faces[ok]]
        tris.append(t[np.isfinite(t).all(axis=(1, 2))])
    tris = [t for t in tris if len(t)]
    if tris:
        lo = np.min([t.reshape(-1, 3).min(axis=0) for t in tris], axis=0)
        hi = np.max([t.reshape(-1, 3).max(axis=0) for t in tris], axis=0)
        tol = FLAT_BASE_TOLERANCE * float((hi - lo).max())
        total = base_y = base_z = 0.0
        for t in tris:
            area = 0.5 * np.linalg.norm(np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0]), axis=1)
            total += float(area.sum())
            base_y += float(area[(np.abs(t[..., 1] - lo[1]) <= tol).all(axis=1)].sum())
            base_z += float(area[(np.abs(t[..., 2] - lo[2]) <= tol).all(axis=1)].sum())
        if total > 0:
            low, high = sorted((base_y, base_z))
            if high >= FLAT_BASE_MIN_SHARE * total and high >= 2.0 * low:
                return base_y > base_z
    head = b"\n".join(
        line for line in data[:4096].splitlines()[:40] if line.lstrip().startswith(b"#")
    ).lower()
    return any(name.encode() in head for name in Y_UP_OBJ_EXPORTERS)


def _zip_member_resolver(archive: str, folder: str):
    """Side files of an archive member (an OBJ's MTL, a glTF's .bin, textures) read from the
    same archive (zip or 7z), in memory, with the archive checks (core/archives.py)."""
    from trimesh.resolvers import Resolver

    from ..archives import list_members, read_member

    class ZipMemberResolver(Resolver):
        def __init__(self, folder: str):
            self.folder = folder

        def get(self, key):
            name = posixpath.normpath(posixpath.join(self.folder, key.replace("\\", "/")))
            return read_member(archive, name)

        def write(self, name, data):
            raise NotImplementedError("a library's archives are never written")

        def namespaced(self, namespace):
            return ZipMemberResolver(posixpath.join(self.folder, namespace))

        def keys(self):
            prefix = f"{self.folder}/" if self.folder else ""
            names = [m.name for m in list_members(archive)]
            return [n[len(prefix) :] for n in names if n.startswith(prefix)]

    return ZipMemberResolver(folder)


def scene_to_model(scene, up: np.ndarray | None = None) -> LoadedModel:
    """Flatten a trimesh Scene (every instance, its transform applied) into drawables."""
    import trimesh

    model = LoadedModel()
    path2d = 0
    for node in scene.graph.nodes_geometry:
        transform, geom_name = scene.graph[node]
        geom = scene.geometry.get(geom_name)
        if geom is None:
            continue
        matrix = np.asarray(transform, dtype=np.float64)
        if up is not None:
            matrix = up @ matrix
        if isinstance(geom, trimesh.Trimesh):
            d = _trimesh_drawable(geom, matrix)
            if d is not None:
                model.drawables.append(d)
                model.triangles += d.primitive_count
                if geom_name not in model.names:
                    model.names.append(str(geom_name))
        elif isinstance(geom, trimesh.PointCloud):
            d = _points_drawable(geom, matrix)
            if d is not None:
                model.drawables.append(d)
                model.points += len(d.positions)
        elif isinstance(geom, trimesh.path.Path3D):
            d = _path_drawable(geom, matrix)
            if d is not None:
                model.drawables.append(d)
        else:
            path2d += 1
    if not model.drawables:
        if path2d:
            raise UnsupportedFormat("a 2D drawing, not a 3D model")
        raise EmptyMesh("no triangles, points or lines in the file")
    return model


def _transform(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    points = np.asarray(points, dtype=np.float64)
    if np.allclose(matrix, np.eye(4)):
        out = points
    else:
        out = points @ matrix[:3, :3].T + matrix[:3, 3]
    return np.ascontiguousarray(out, dtype=np.float32)


def _trimesh_drawable(mesh, matrix: np.ndarray) -> Drawable | None:
    vertices = np.asarray(mesh.vertices)
    all_faces = np.asarray(mesh.faces).reshape(-1, 3)
    if len(vertices) == 0 or len(all_faces) == 0:
        return None
    positions = _transform(vertices, matrix)
    # keep faces whose three indices exist and whose corners are finite
    keep = (all_faces >= 0).all(axis=1) & (all_faces < len(vertices)).all(axis=1)
    finite = np.isfinite(positions).all(axis=1)
    if not finite.all():
        keep &= finite[np.clip(all_faces, 0, len(vertices) - 1)].all(axis=1)
    faces = all_faces if keep.all() else all_faces[keep]
    if len(faces) == 0:
        return None

    normals = None
    cache = getattr(mesh, "_cache", None)
    if cache is not None and "vertex_normals" in cache:
        vn = np.asarray(cache["vertex_normals"], dtype=np.float64)
        if vn.shape == vertices.shape and np.isfinite(vn).all():
            normals = np.ascontiguousarray(vn @ matrix[:3, :3].T, dtype=np.float32)

    d = Drawable(positions=positions, indices=faces.astype(np.uint32).ravel(), normals=normals)
    visual = mesh.visual
    kind = getattr(visual, "kind", None)
    extra = _ply_colours(mesh, len(vertices)) if kind is None else None
    if kind == "vertex" or extra is not None:
        vc = _opaque_zero_alpha(extra if extra is not None else np.asarray(visual.vertex_colors))
        if len(vc) == len(vertices):
            d.colors = np.ascontiguousarray(vc[:, :4], dtype=np.float32) / 255.0
            d.blend = bool((vc[:, 3] < 255).any())
    elif kind == "face":
        fc = _opaque_zero_alpha(np.asarray(visual.face_colors))
        if len(fc) == len(all_faces):
            _unindex_with_face_colors(d, faces, fc if keep.all() else fc[keep])
    elif kind == "texture":
        _apply_material(d, visual, len(vertices))
    return d


# PLY colour properties trimesh does not read (it knows red/green/blue/alpha): MeshLab's and
# older scanners' names
_PLY_COLOUR_NAMES = (
    ("diffuse_red", "diffuse_green", "diffuse_blue", "diffuse_alpha"),
    ("r", "g", "b", "a"),
)


def _ply_colours(geom, n: int) -> np.ndarray | None:
    """(n, 4) uint8 vertex colours from a PLY's raw vertex element, for the property names
    trimesh leaves out; None when there are none."""
    raw = (getattr(geom, "metadata", None) or {}).get("_ply_raw")
    vertex = raw.get("vertex") if isinstance(raw, dict) else None
    data = vertex.get("data") if isinstance(vertex, dict) else None
    if isinstance(data, np.ndarray) and data.dtype.names:  # binary PLY: a structured array
        columns = {name: data[name] for name in data.dtype.names}
    elif isinstance(data, dict):  # ASCII PLY: one array per property
        columns = data
    else:
        return None
    for channels in _PLY_COLOUR_NAMES:
        if not all(c in columns for c in channels[:3]):
            continue
        cols = [np.asarray(columns[c], dtype=np.float64).ravel() for c in channels if c in columns]
        if any(len(c) != n for c in cols[:3]):
            return None
        floats = np.issubdtype(np.asarray(columns[channels[0]]).dtype, np.floating)
        alpha = cols[3] if channels[3] in columns and len(cols[3]) == n else None
        rgba = np.column_stack(cols[:3] + [alpha if alpha is not None else np.full(n, 255.0)])
        if floats and rgba[:, :3].max() <= 1.0:  # colours as floats 0..1
            rgba[:, :3] *= 255.0
            if alpha is not None:
                rgba[:, 3] *= 255.0
        return np.clip(np.rint(rgba), 0, 255).astype(np.uint8)
    return None


def _opaque_zero_alpha(colours: np.ndarray) -> np.ndarray:
    """Colours whose alpha is (nearly) zero are drawn opaque: exporters write 0 where they
    mean 'no alpha' (the same rule as threemf._color)."""
    colours = np.asarray(colours)
    if colours.ndim == 2 and colours.shape[1] >= 4:
        low = colours[:, 3] < 13
        if low.any():
            colours = colours.copy()
            colours[low, 3] = 255
    return colours


def _unindex_with_face_colors(d: Drawable, faces: np.ndarray, face_colors: np.ndarray) -> None:
    flat = faces.ravel()
    d.positions = np.ascontiguousarray(d.positions[flat])
    if d.normals is not None:
        d.normals = np.ascontiguousarray(d.normals[flat])
    d.indices = None
    colors = np.repeat(np.asarray(face_colors[:, :4], dtype=np.float32) / 255.0, 3, axis=0)
    d.colors = np.ascontiguousarray(colors)
    d.blend = bool((face_colors[:, 3] < 255).any())


def _apply_material(d: Drawable, visual, n_vertices: int) -> None:
    material = getattr(visual, "material", None)
    if material is None:
        return
    pbr = hasattr(material, "baseColorFactor") or hasattr(material, "baseColorTexture")
    if pbr:
        image = getattr(material, "baseColorTexture", None)
        factor = getattr(material, "baseColorFactor", None)
        blend = getattr(material, "alphaMode", None) == "BLEND"
    else:  # SimpleMaterial (OBJ/MTL, PLY, DAE)
        image = getattr(material, "image", None)
        factor = getattr(material, "diffuse", None)
        blend = False
    if image is not None and _is_placeholder(image):
        # trimesh stands in a tiny flat image for a texture it could not find
        image = None
    uv = getattr(visual, "uv", None)
    if image is not None and uv is not None and len(uv) == n_vertices:
        d.uv = np.ascontiguousarray(np.asarray(uv)[:, :2], dtype=np.float32)
        d.texture = _prepare_texture(image)
        if d.texture is None:
            d.uv = None
    color = _rgba01(factor) if factor is not None else None
    if d.texture is not None and not pbr:
        # OBJ/MTL: the image is the colour (Kd multiplies it in theory, but exporters write
        # all sorts of Kd); glTF's baseColorFactor does multiply its texture
        color = (1.0, 1.0, 1.0, 1.0)
    if color is not None:
        d.base_color = color
    elif d.texture is not None:
        d.base_color = (1.0, 1.0, 1.0, 1.0)
    d.blend = bool(
        blend and (d.base_color[3] < 0.999 or (d.texture is not None and d.texture.mode == "RGBA"))
    )


def _is_placeholder(image) -> bool:
    try:
        if image.size[0] * image.size[1] > 4:
            return False
        return len(set(image.convert("RGBA").getdata())) == 1
    except Exception:
        return False


def _rgba01(value) -> tuple | None:
    """A colour as sRGB floats 0..1; None for trimesh's grey placeholder."""
    raw = np.asarray(value).ravel()
    if (
        raw.size >= 3
        and np.issubdtype(raw.dtype, np.integer)
        and tuple(int(x) for x in raw[:4]) in (_TRIMESH_DEFAULT_RGBA, _TRIMESH_DEFAULT_RGBA[:3])
    ):
        return None
    arr = np.asarray(value, dtype=np.float64).ravel()
    if arr.size == 3:
        arr = np.append(arr, 255.0 if arr.max() > 1.0 else 1.0)
    arr = arr[:4]
    if arr.max() > 1.0 or np.issubdtype(np.asarray(value).dtype, np.integer):
        arr = arr / 255.0
    return tuple(float(x) for x in np.clip(arr, 0.0, 1.0))


def _prepare_texture(image):
    """A PIL image fit for upload: RGB/RGBA, no larger than MAX_TEXTURE_EDGE."""
    try:
        from PIL import Image

        if not isinstance(image, Image.Image):
            image = Image.fromarray(np.asarray(image))
        if image.mode not in ("RGB", "RGBA"):
            image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
        if max(image.size) > MAX_TEXTURE_EDGE:
            image = image.copy()
            image.thumbnail((MAX_TEXTURE_EDGE, MAX_TEXTURE_EDGE), Image.BILINEAR)
        return image
    except Exception:  # a broken texture is not worth failing the model over
        return None


def _points_drawable(cloud, matrix: np.ndarray) -> Drawable | None:
    vertices = np.asarray(cloud.vertices)
    if len(vertices) == 0:
        return None
    positions = _transform(vertices, matrix)
    finite = np.isfinite(positions).all(axis=1)
    colors = None
    raw = getattr(cloud, "colors", None)
    if raw is None or len(raw) != len(vertices):
        raw = _ply_colours(cloud, len(vertices))
    if raw is not None and len(raw) == len(vertices):
        colors = np.asarray(raw)[:, :4].astype(np.float32)
        if colors.max() > 1.0:
            colors /= 255.0
        if colors.shape[1] == 3:
            colors = np.hstack([colors, np.ones((len(colors), 1), np.float32)])
        colors[colors[:, 3] < 0.05, 3] = 1.0  # see _opaque_zero_alpha
    if not finite.all():
        positions = positions[finite]
        colors = colors[finite] if colors is not None else None
        if len(positions) == 0:
            return None
    return Drawable(
        positions=np.ascontiguousarray(positions),
        mode=POINTS,
        colors=None if colors is None else np.ascontiguousarray(colors),
        base_color=POINT_COLOR if colors is None else (1.0, 1.0, 1.0, 1.0),
    )


def _path_drawable(path, matrix: np.ndarray) -> Drawable | None:
    segments = []
    for polyline in path.discrete:
        polyline = np.asarray(polyline, dtype=np.float64)
        if len(polyline) >= 2:
            segments.append(np.stack([polyline[:-1], polyline[1:]], axis=1).reshape(-1, 3))
    if not segments:
        return None
    positions = _transform(np.concatenate(segments), matrix)
    keep = np.isfinite(positions.reshape(-1, 6)).all(axis=1)
    positions = np.ascontiguousarray(positions.reshape(-1, 6)[keep].reshape(-1, 3))
    if len(positions) == 0:
        return None
    return Drawable(positions=positions, mode=LINES, base_color=(0.25, 0.25, 0.28, 1.0))


# ----------------------------------------------------------------------------------------
# 3MF embedded previews
# ----------------------------------------------------------------------------------------

_THUMBNAIL_REL = "/metadata/thumbnail"
_MAX_PREVIEW_BYTES = 32 << 20


def find_3mf_preview(data: bytes) -> bytes | None:
    """The preview image a slicer saved in a 3MF (OPC thumbnail relationship first, then the
    usual names), or None. Never raises for a broken archive: rendering will report that."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            names = {info.filename.lower(): info for info in z.infolist() if not info.is_dir()}
            candidates = []
            rels = names.get("_rels/.rels")
            if rels is not None and rels.file_size < 1 << 20:
                text = z.read(rels).decode("utf-8", "replace")
                for m in re.finditer(r"<Relationship\b[^>]*>", text):
                    tag = m.group(0)
                    rtype = re.search(r'Type\s*=\s*"([^"]*)"', tag)
                    target = re.search(r'Target\s*=\s*"([^"]*)"', tag)
                    if rtype and target and rtype.group(1).lower().endswith(_THUMBNAIL_REL):
                        candidates.append(target.group(1).lstrip("/").lower())
            candidates += ["metadata/thumbnail.png", "metadata/plate_1.png"]
            aux = sorted(
                n
                for n in names
                if n.startswith("auxiliaries/.thumbnails/")
                and n.endswith((".png", ".jpg", ".jpeg"))
            )
            # PrusaSlicer writes thumbnail_3mf.png, thumbnail_middle.png, thumbnail_small.png
            aux.sort(key=lambda n: (0 if "middle" in n or "3mf" in n else 1, n))
            candidates += aux
            candidates += sorted(
                n
                for n in names
                if n.startswith("metadata/")
                and n.endswith((".png", ".jpg", ".jpeg"))
                and "thumbnail" in n
            )
            for name in candidates:
                info = names.get(name)
                if info is not None and 0 < info.file_size <= _MAX_PREVIEW_BYTES:
                    return z.read(info)
    except (
        zipfile.BadZipFile,
        OSError,
        KeyError,
        ValueError,
        RuntimeError,
        NotImplementedError,
        EOFError,
    ):
        return None
    return None
