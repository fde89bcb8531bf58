"""3MF with colours: the core spec's <basematerials> and the materials extension's
<colorgroup>, per object (pid/pindex) and per triangle (pid/p1).

trimesh's 3MF loader reads the geometry but drops every colour, so a 3MF whose model declares
colour resources is read here instead (geometry, components, build items with their
transforms, and the production extension's objects in other model parts of the archive);
a 3MF without colours still goes through trimesh. Texture groups are not drawn (their
triangles take the object's colour, or the neutral one).
"""

from __future__ import annotations

import io
import posixpath
import re
import zipfile

import numpy as np

from .model import NEUTRAL, Drawable, LoadedModel

_CORE_MODEL_REL = "/3dmodel"
_MAX_DEPTH = 32


def has_colours(data: bytes) -> bool:
    """Cheap test on the archive: does a model part declare colour resources?"""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            for info in z.infolist():
                name = info.filename.lower()
                if name.endswith(".model") and info.file_size < (2 << 30):
                    with z.open(info) as f:
                        head = f.read(1 << 20)
                        while True:
                            if b"basematerials" in head or b"colorgroup" in head:
                                return True
                            chunk = f.read(1 << 22)
                            if not chunk:
                                break
                            head = head[-64:] + chunk
    except (zipfile.BadZipFile, OSError, RuntimeError, NotImplementedError, EOFError):
        return False
    return False


def _color(text: str) -> tuple[float, float, float, float] | None:
    m = re.fullmatch(r"\s*#([0-9a-fA-F]{6})([0-9a-fA-F]{2})?\s*", text or "")
    if not m:
        return None
    rgb = m.group(1)
    alpha = int(m.group(2), 16) / 255.0 if m.group(2) else 1.0
    if alpha < 0.05:
        alpha = 1.0  # exporters (SolidWorks among them) write #RRGGBB00 for an opaque colour
    return (int(rgb[0:2], 16) / 255.0, int(rgb[2:4], 16) / 255.0, int(rgb[4:6], 16) / 255.0, alpha)


def _transform(attrib) -> np.ndarray:
    matrix = np.eye(4)
    text = attrib.get("transform")
    if text:
        values = np.array(text.split(), dtype=np.float64)
        if values.size == 12:
            matrix[:3, :4] = values.reshape(4, 3).T
    return matrix


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _path_attr(attrib) -> str | None:
    for key, value in attrib.items():
        if _local(key) == "path":
            return value
    return None


class _Part:
    """One parsed model part: colour groups and objects, keyed by id."""

    def __init__(self):
        self.groups: dict[str, list] = {}
        self.objects: dict[str, dict] = {}
        self.build: list[tuple[str, np.ndarray, str | None]] = []
        self.unit: str | None = None


def _parse_part(stream) -> _Part:
    from lxml import etree

    part = _Part()
    for _, el in etree.iterparse(
        stream, events=("end",), resolve_entities=False, no_network=True, load_dtd=False
    ):
        tag = _local(el.tag)
        if tag == "basematerials":
            part.groups[el.get("id")] = [
                _color(b.get("displaycolor", "")) for b in el if _local(b.tag) == "base"
            ]
            el.clear()
        elif tag == "colorgroup":
            part.groups[el.get("id")] = [
                _color(c.get("color", "")) for c in el if _local(c.tag) == "color"
            ]
            el.clear()
        elif tag == "object":
            obj = {
                "pid": el.get("pid"),
                "pindex": el.get("pindex"),
                "mesh": None,
                "components": [],
                "name": el.get("name"),
            }
            mesh = next((c for c in el if _local(c.tag) == "mesh"), None)
            if mesh is not None:
                obj["mesh"] = _read_mesh(mesh)
            for comps in (c for c in el if _local(c.tag) == "components"):
                for comp in comps:
                    if _local(comp.tag) == "component":
                        obj["components"].append(
                            (comp.get("objectid"), _transform(comp.attrib), _path_attr(comp.attrib))
                        )
            part.objects[el.get("id")] = obj
            el.clear()
        elif tag == "item":
            part.build.append((el.get("objectid"), _transform(el.attrib), _path_attr(el.attrib)))
        elif tag == "model":
            part.unit = el.get("unit")
    return part


# The 3MF core specification's units, and their size in millimetres (millimeter by default)
UNITS_MM = {
    "micron": 0.001,
    "millimeter": 1.0,
    "centimeter": 10.0,
    "inch": 25.4,
    "foot": 304.8,
    "meter": 1000.0,
}


def _read_mesh(mesh):
    vertices = next((c for c in mesh if _local(c.tag) == "vertices"), None)
    triangles = next((c for c in mesh if _local(c.tag) == "triangles"), None)
    if vertices is None or triangles is None:
        return None
    v = np.array(
        [(float(e.get("x")), float(e.get("y")), float(e.get("z"))) for e in vertices],
        dtype=np.float64,
    ).reshape(-1, 3)
    rows = [(t.get("v1"), t.get("v2"), t.get("v3"), t.get("pid"), t.get("p1")) for t in triangles]
    if not rows:
        return None
    faces = np.array([(int(a), int(b), int(c)) for a, b, c, _, _ in rows], dtype=np.int64).reshape(
        -1, 3
    )
    tri_props = [(pid, p1) for _, _, _, pid, p1 in rows]
    return v, faces, tri_props


def load_3mf_with_colours(data: bytes):
    """A LoadedModel of the 3MF's build, with its colours; raises ValueError for archives
    this reader cannot follow (the caller then falls back to trimesh)."""

    with zipfile.ZipFile(io.BytesIO(data)) as z:
        names = {i.filename.lstrip("/").lower(): i for i in z.infolist()}
        root = _root_model(z, names)
        parts: dict[str, _Part] = {}

        def part(path: str) -> _Part:
            key = path.lstrip("/").lower()
            if key not in parts:
                info = names.get(key)
                if info is None:
                    raise ValueError(f"3MF part {path} is missing")
                with z.open(info) as f:
                    parts[key] = _parse_part(f)
            return parts[key]

        model = LoadedModel()
        root_part = part(root)

        def emit(part_key: str, object_id: str, matrix: np.ndarray, depth: int) -> None:
            if depth > _MAX_DEPTH:
                raise ValueError("3MF components nest too deep (a cycle?)")
            p = part(part_key)
            obj = p.objects.get(object_id)
            if obj is None:
                return
            if obj["mesh"] is not None:
                d = _drawable(obj, p, matrix, NEUTRAL, Drawable)
                if d is not None:
                    model.drawables.append(d)
                    model.triangles += d.primitive_count
                    if obj["name"] and obj["name"] not in model.names:
                        model.names.append(obj["name"])
            for child_id, child_matrix, child_path in obj["components"]:
                emit(child_path or part_key, child_id, matrix @ child_matrix, depth + 1)

        for object_id, matrix, path in root_part.build:
            emit(path or root, object_id, matrix, 0)
        unit = (root_part.unit or "millimeter").strip().lower()
        model.unit, model.unit_mm = unit, UNITS_MM.get(unit, 1.0)
        return model


def _root_model(z: zipfile.ZipFile, names: dict) -> str:
    rels = names.get("_rels/.rels")
    if rels is not None:
        text = z.read(rels).decode("utf-8", "replace")
        for tag in re.findall(r"<Relationship\b[^>]*>", text):
            rtype = re.search(r'Type\s*=\s*"([^"]*)"', tag)
            target = re.search(r'Target\s*=\s*"([^"]*)"', tag)
            if rtype and target and rtype.group(1).endswith(_CORE_MODEL_REL):
                return posixpath.normpath("/" + target.group(1).lstrip("/"))
    for name in names:
        if name.endswith("3dmodel.model"):
            return "/" + name
    raise ValueError("no 3D model part in the archive")


def _drawable(obj: dict, part: _Part, matrix: np.ndarray, neutral, Drawable):
    v, faces, tri_props = obj["mesh"]
    if len(v) == 0 or len(faces) == 0:
        return None
    ok = (faces >= 0).all(axis=1) & (faces < len(v)).all(axis=1)
    positions = v @ matrix[:3, :3].T + matrix[:3, 3]
    finite = np.isfinite(positions).all(axis=1)
    ok &= finite[np.clip(faces, 0, len(v) - 1)].all(axis=1)
    default = _lookup(part, obj["pid"], obj["pindex"]) or neutral
    memo: dict = {}

    def colour(props):
        if props not in memo:
            pid, p1 = props
            memo[props] = (
                _lookup(part, pid or obj["pid"], p1 if pid else (p1 or obj["pindex"])) or default
            )
        return memo[props]

    colours = np.array([colour(props) for props in tri_props], dtype=np.float32)
    faces, colours = faces[ok], colours[ok]
    if len(faces) == 0:
        return None
    positions = positions.astype(np.float32)
    if (colours == colours[0]).all():
        return Drawable(
            positions=np.ascontiguousarray(positions),
            indices=faces.astype(np.uint32).ravel(),
            base_color=tuple(float(c) for c in colours[0]),
            blend=bool(colours[0][3] < 0.999),
        )
    flat = faces.ravel()
    return Drawable(
        positions=np.ascontiguousarray(positions[flat]),
        colors=np.ascontiguousarray(np.repeat(colours, 3, axis=0)),
        base_color=(1.0, 1.0, 1.0, 1.0),
        blend=bool((colours[:, 3] < 0.999).any()),
    )


def _lookup(part: _Part, pid: str | None, index: str | None):
    if pid is None:
        return None
    group = part.groups.get(pid)
    if not group:
        return None
    try:
        i = int(index) if index is not None else 0
    except ValueError:
        return None
    return group[i] if 0 <= i < len(group) else None
