"""Helpers for test_render.py (imported from it; pytest does not load this file
by itself). Real files only: corpus models copied into a temporary library, and small files
written here with numpy and Pillow."""

from __future__ import annotations

import hashlib
import io
import shutil
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image


def md5_of(path: Path) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def copy_into(library: Path, corpus: Path, names) -> dict[str, Path]:
    """Copy corpus files (and the side files they need) into a library folder."""
    library.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in names:
        dst = library / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(corpus / name, dst)
        out[name] = dst
    return out


def rgba(png: Path) -> np.ndarray:
    with Image.open(png) as im:
        assert im.mode == "RGBA", f"{png.name} is {im.mode}, expected RGBA"
        return np.asarray(im.convert("RGBA"))


def alpha_bbox(pixels: np.ndarray) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) inclusive bounds of the pixels that are not fully transparent."""
    ys, xs = np.nonzero(pixels[..., 3] > 0)
    if len(xs) == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


def binary_stl(triangles: np.ndarray, header: bytes = b"dam test") -> bytes:
    tris = np.asarray(triangles, dtype=np.float32).reshape(-1, 3, 3)
    rec = np.zeros(len(tris), dtype=[("n", "<f4", (3,)), ("v", "<f4", (3, 3)), ("a", "<u2")])
    rec["v"] = tris
    return header[:80].ljust(80, b" ") + len(tris).to_bytes(4, "little") + rec.tobytes()


def box_triangles(size=(20.0, 10.0, 5.0)) -> np.ndarray:
    """A closed, outward-wound box (12 triangles)."""
    sx, sy, sz = size
    v = np.array(
        [
            [0, 0, 0],
            [sx, 0, 0],
            [sx, sy, 0],
            [0, sy, 0],
            [0, 0, sz],
            [sx, 0, sz],
            [sx, sy, sz],
            [0, sy, sz],
        ],
        dtype=np.float64,
    )
    faces = [
        (0, 2, 1),
        (0, 3, 2),
        (4, 5, 6),
        (4, 6, 7),
        (0, 1, 5),
        (0, 5, 4),
        (1, 2, 6),
        (1, 6, 5),
        (2, 3, 7),
        (2, 7, 6),
        (3, 0, 4),
        (3, 4, 7),
    ]
    return v[np.array(faces)]


def binary_ply(n_faces: int) -> bytes:
    """A binary PLY with n_faces triangles (a strip): big enough to burst a small memory cap."""
    n_vertices = n_faces + 2
    xs = np.arange(n_vertices, dtype=np.float32)
    vertices = np.stack([xs, (xs % 2), np.zeros_like(xs)], axis=1).astype("<f4")
    faces = np.zeros(n_faces, dtype=[("n", "u1"), ("i", "<i4", (3,))])
    faces["n"] = 3
    idx = np.arange(n_faces, dtype=np.int32)
    faces["i"] = np.stack([idx, idx + 1, idx + 2], axis=1)
    header = (
        "ply\nformat binary_little_endian 1.0\n"
        f"element vertex {n_vertices}\nproperty float x\nproperty float y\nproperty float z\n"
        f"element face {n_faces}\nproperty list uchar int vertex_indices\nend_header\n"
    ).encode()
    return header + vertices.tobytes() + faces.tobytes()


def png_bytes(size=(300, 150), color=(200, 40, 40, 255), fmt="PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGBA", size, color).convert("RGB" if fmt == "JPEG" else "RGBA").save(buf, fmt)
    return buf.getvalue()


def threemf_with_thumbnail(source_3mf: Path, thumbnail: bytes) -> bytes:
    """A copy of a 3MF archive with Metadata/thumbnail.png added, as slicers save them."""
    buf = io.BytesIO()
    with zipfile.ZipFile(source_3mf) as src, zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            if info.filename.lower() != "metadata/thumbnail.png":
                dst.writestr(info, src.read(info))
        dst.writestr("Metadata/thumbnail.png", thumbnail)
    return buf.getvalue()


def threemf_with_colours() -> bytes:
    """Two instances of a cube whose object colour is red (<basematerials>), with a blue top
    (a triangle-level base material) and a green front (a materials-extension colorgroup)."""
    quads = {
        "bottom": (0, 3, 2, 1),
        "top": (4, 5, 6, 7),
        "front": (0, 1, 5, 4),
        "right": (1, 2, 6, 5),
        "back": (2, 3, 7, 6),
        "left": (3, 0, 4, 7),
    }
    props = {"top": ' pid="1" p1="1"', "front": ' pid="5" p1="0"'}
    corners = [
        (0, 0, 0),
        (10, 0, 0),
        (10, 10, 0),
        (0, 10, 0),
        (0, 0, 10),
        (10, 0, 10),
        (10, 10, 10),
        (0, 10, 10),
    ]
    vertices = "".join(f'<vertex x="{x}" y="{y}" z="{z}"/>' for x, y, z in corners)
    triangles = "".join(
        f'<triangle v1="{a}" v2="{b}" v3="{c}"{props.get(side, "")}/>'
        for side, (p, q, r, s) in quads.items()
        for a, b, c in ((p, q, r), (p, r, s))
    )
    model = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<model unit="millimeter" '
        'xmlns="http://schemas.microsoft.com/3dmanufacturing/core/2015/02" '
        'xmlns:m="http://schemas.microsoft.com/3dmanufacturing/material/2015/02">'
        '<resources><basematerials id="1"><base name="red" displaycolor="#D02020"/>'
        '<base name="blue" displaycolor="#2040D0FF"/></basematerials>'
        '<m:colorgroup id="5"><m:color color="#20C040"/></m:colorgroup>'
        f'<object id="2" type="model" pid="1" pindex="0"><mesh><vertices>{vertices}</vertices>'
        f"<triangles>{triangles}</triangles></mesh></object></resources>"
        '<build><item objectid="2" transform="1 0 0 0 1 0 0 0 1 0 0 0"/>'
        '<item objectid="2" transform="1 0 0 0 1 0 0 0 1 20 0 0"/></build></model>'
    )
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("[Content_Types].xml", "<Types/>")
        z.writestr(
            "_rels/.rels",
            (
                '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
                '<Relationship Target="/3D/3dmodel.model" Id="rel0" '
                'Type="http://schemas.microsoft.com/3dmanufacturing/2013/01/3dmodel"/>'
                "</Relationships>"
            ),
        )
        z.writestr("3D/3dmodel.model", model)
    return buf.getvalue()
