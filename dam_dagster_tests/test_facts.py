"""Geometry facts and the geometry fingerprint, on the corpus: facts against trimesh's own
computation on the same meshes, and the fingerprint against variants of every corpus mesh
written here (other triangle order, other starting vertex, ASCII, OBJ, PLY, 3MF, GLB, a
translation, float noise), and against an independent test of which corpus files hold the
same mesh.

The facts are computed as the render worker computes them (loaders.load_model, then
facts.measure) but in this process: the pool adds nothing to what is measured, and the
thumbnail tests check the same facts arrive in the catalogue through it.
"""

from __future__ import annotations

import struct
import warnings
from pathlib import Path

import numpy as np
import pytest

from dam_dagster.core.render.capabilities import FORMATS
from dam_dagster.core.render.facts import ROTATIONS, measure
from dam_dagster.core.render.loaders import Y_UP_TO_Z_UP, load_model
from dam_dagster.core.render.model import TRIANGLES, LoadError

MESH_FORMATS = {
    e for e, (name, _, _) in FORMATS.items() if name not in ("image", "gcode", "bgcode")
}
MAX_TRIANGLES = 60_000  # variants of larger corpus meshes cost time and prove nothing more


def _load(path: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_model(path.read_bytes(), path.suffix.lower(), str(path))


def _facts(path: Path) -> dict:
    return measure(_load(path))[0]


def world_triangles(model) -> np.ndarray:
    """(n, 3, 3) float64 triangles of a loaded model, in millimetres, Z up: the mesh."""
    tris = []
    for d in model.drawables:
        if d.mode != TRIANGLES:
            continue
        p = d.positions.astype(np.float64) * model.unit_mm
        tris.append(p[d.indices.reshape(-1, 3)] if d.indices is not None else p.reshape(-1, 3, 3))
    return np.concatenate(tris) if tris else np.zeros((0, 3, 3))


def _corpus_meshes(corpus: Path) -> dict[str, np.ndarray]:
    out = {}
    for path in sorted(corpus.iterdir()):
        if path.suffix.lower() not in MESH_FORMATS or not path.is_file():
            continue
        try:
            model = _load(path)
        except (LoadError, Exception):  # noqa: BLE001 - files the renderer refuses
            continue
        tris = world_triangles(model)
        if 4 <= len(tris) <= MAX_TRIANGLES:  # a triangle or two is no model to group
            out[path.name] = tris
    return out


@pytest.fixture(scope="module")
def meshes(corpus) -> dict[str, np.ndarray]:
    return _corpus_meshes(corpus)


# -- writers of variants --------------------------------------------------------------------


def _binary_stl(tris: np.ndarray, header: bytes = b"variant") -> bytes:
    rec = np.zeros(len(tris), dtype=[("n", "<f4", (3,)), ("v", "<f4", (3, 3)), ("a", "<u2")])
    rec["v"] = tris
    rec["a"] = 0xBEEF  # attribute bytes some exporters fill with colour
    return header.ljust(80, b"\0") + struct.pack("<I", len(tris)) + rec.tobytes()


def _ascii_stl(tris: np.ndarray) -> bytes:
    lines = ["solid variant"]
    for t in tris:
        lines.append("  facet normal 0 0 0\n    outer loop")
        lines += [f"      vertex {x:.9e} {y:.9e} {z:.9e}" for x, y, z in t]
        lines.append("    endloop\n  endfacet")
    lines.append("endsolid variant")
    return "\n".join(lines).encode()


def _indexed(tris: np.ndarray):
    """Vertices and faces of a soup, identical corners merged (as exporters write them)."""
    flat = np.ascontiguousarray(tris.reshape(-1, 3).astype(np.float32))
    unique, inverse = np.unique(flat.view("V12").ravel(), return_inverse=True)
    return unique.view(np.float32).reshape(-1, 3).astype(np.float64), inverse.reshape(-1, 3)


def _trimesh_export(tris: np.ndarray, file_type: str, transform=None) -> bytes:
    import trimesh

    vertices, faces = _indexed(tris)
    mesh = trimesh.Trimesh(vertices, faces, process=False)
    if transform is not None:
        mesh.apply_transform(transform)
    data = mesh.export(file_type=file_type)
    return data.encode() if isinstance(data, str) else data


Z_UP_TO_Y_UP_METRES = np.linalg.inv(Y_UP_TO_Z_UP) @ np.diag([1e-3, 1e-3, 1e-3, 1.0])


def variants(tris: np.ndarray, seed: int = 7) -> dict[str, tuple[str, bytes]]:
    """name: (extension, bytes) of the same mesh written in other ways."""
    rng = np.random.default_rng(seed)
    vertices, faces = _indexed(tris)
    noisy = vertices + rng.uniform(-1e-6, 1e-6, vertices.shape)
    return {
        "binary STL": (".stl", _binary_stl(tris)),
        "shuffled triangles": (".stl", _binary_stl(tris[rng.permutation(len(tris))])),
        "rotated vertex order": (".stl", _binary_stl(np.roll(tris, 1, axis=1))),
        "other STL header": (".stl", _binary_stl(tris, b"solid but binary, exported by X")),
        "ASCII STL": (".stl", _ascii_stl(tris)),
        "OBJ": (".obj", _trimesh_export(tris, "obj")),
        "PLY": (".ply", _trimesh_export(tris, "ply")),
        "3MF": (".3mf", _trimesh_export(tris, "3mf")),
        "GLB (metres, Y up)": (".glb", _trimesh_export(tris, "glb", Z_UP_TO_Y_UP_METRES)),
        "translated": (".stl", _binary_stl(tris + np.array([123.25, -56.5, 8.75]))),
        "1e-6 noise": (".stl", _binary_stl(noisy[faces])),
    }


def _fingerprint_of(data: bytes, ext: str, tmp: Path) -> str | None:
    path = tmp / f"variant{ext}"
    path.write_bytes(data)
    return _facts(path)["fingerprint"]


# -- fingerprint -----------------------------------------------------------------------------


def test_every_variant_of_every_corpus_mesh_gets_its_fingerprint(corpus, meshes, tmp_path):
    assert len(meshes) >= 80, sorted(meshes)
    problems = []
    for name, tris in meshes.items():
        original = _facts(corpus / name)["fingerprint"]
        assert original, name
        for variant, (ext, data) in variants(tris).items():
            got = _fingerprint_of(data, ext, tmp_path)
            if got != original:
                problems.append(f"{name}: {variant} -> {got}, not {original}")
    assert not problems, f"{len(problems)} variants differ:\n" + "\n".join(problems)


def _triangle_keys(tris: np.ndarray) -> np.ndarray:
    """(n, 6): each triangle's centroid and its sorted edge lengths: the same for a triangle
    whatever vertex it starts at."""
    edges = np.linalg.norm(tris - np.roll(tris, 1, axis=1), axis=2)
    return np.hstack([tris.mean(axis=1), np.sort(edges, axis=1)])


def _same_mesh(a: np.ndarray, b: np.ndarray) -> bool:
    """Independent of the fingerprint: the same triangles. Each mesh moved to the centre of
    its bounding box; for some quarter-turn rotation of one, every triangle of each has a
    triangle of the other within 1e-5 of the model's size (centroid and edge lengths)."""
    from scipy.spatial import cKDTree

    if len(a) != len(b):
        return False
    pa, pb = a.reshape(-1, 3), b.reshape(-1, 3)
    ca, cb = (pa.min(0) + pa.max(0)) / 2, (pb.min(0) + pb.max(0)) / 2
    tol = 1e-5 * max(float(np.linalg.norm(pa.max(0) - pa.min(0))), 1e-12)
    keys_b = _triangle_keys(b - cb)
    tree_b = cKDTree(keys_b)
    for perm, signs in ROTATIONS:
        keys_a = _triangle_keys(((a - ca)[..., perm]) * signs)
        if np.isfinite(tree_b.query(keys_a, distance_upper_bound=tol)[0]).all():
            if np.isfinite(cKDTree(keys_a).query(keys_b, distance_upper_bound=tol)[0]).all():
                return True
    return False


def test_no_two_different_corpus_meshes_share_a_fingerprint(corpus, meshes):
    prints = {name: _facts(corpus / name)["fingerprint"] for name in meshes}
    names = sorted(meshes)
    shared, wrong = [], []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            same = _same_mesh(meshes[a], meshes[b])
            if prints[a] == prints[b]:
                shared.append((a, b))
                if not same:
                    wrong.append(f"{a} and {b} share {prints[a]} but are different meshes")
            elif same:
                wrong.append(f"{a} and {b} are the same mesh but differ: {prints[a]} {prints[b]}")
    assert not wrong, "\n".join(wrong)
    # the corpus does hold the same mesh in different files: they are found
    assert ("featuretype.STL", "featuretype.ply") in shared


def test_a_mirror_image_is_another_model(meshes):
    tris = meshes["featuretype.STL"]
    mirrored = tris * np.array([-1.0, 1.0, 1.0])
    model_a, model_b = _soup_model(tris), _soup_model(mirrored[:, ::-1])  # keep it outward
    assert measure(model_a)[0]["fingerprint"] != measure(model_b)[0]["fingerprint"]


def _soup_model(tris: np.ndarray):
    from dam_dagster.core.render.model import Drawable, LoadedModel

    d = Drawable(positions=np.ascontiguousarray(tris.reshape(-1, 3), dtype=np.float32))
    return LoadedModel([d], triangles=len(tris))


# -- facts against trimesh --------------------------------------------------------------------

FACT_CASES = [
    "box.STL",
    "featuretype.STL",
    "torus.STL",
    "busted.STL",
    "unit_cube.STL",
    "soup.stl",
    "multibody.stl",
    "two_objects_mixed_case_names.stl",
    "1002_tray_bottom.STL",
    "bunny.ply",
    "cycloidal.ply",
    "fuze.obj",
    "pyramids.3mf",
    "featuretype.3MF",
    "Duck.glb",
    "ballA.off",
]


@pytest.mark.parametrize("name", FACT_CASES)
def test_facts_agree_with_trimesh(corpus, name):
    import trimesh

    path = corpus / name
    model = _load(path)
    facts = measure(model)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mesh = trimesh.load(str(path), force="mesh", process=False)
    # trimesh keeps every drawn triangle; we join vertices by position, so must it
    mesh.merge_vertices(merge_tex=True, merge_norm=True, digits_vertex=6)
    if model.up_axis == "Y":
        mesh.apply_transform(Y_UP_TO_Z_UP)
    s = model.unit_mm
    assert facts["triangles"] == len(mesh.faces)
    assert facts["area_mm2"] == pytest.approx(mesh.area * s**2, rel=1e-5)
    assert [facts[f"size_{a}_mm"] for a in "xyz"] == pytest.approx(list(mesh.extents * s), rel=1e-5)
    assert facts["watertight"] == mesh.is_watertight, "watertight"
    assert facts["winding_consistent"] == mesh.is_winding_consistent, "winding"
    if facts["watertight"] and facts["winding_consistent"]:
        assert facts["volume_mm3"] == pytest.approx(abs(mesh.volume) * s**3, rel=1e-4)
    else:
        assert facts["volume_mm3"] is None
    # bodies: triangles connected through shared vertices (unused vertices are no body)
    used = np.unique(mesh.faces)
    bodies = trimesh.graph.connected_components(mesh.edges, nodes=used, min_len=1)
    assert facts["bodies"] == len(bodies)


def test_units_and_the_inches_hint(corpus):
    stl = _facts(corpus / "featuretype.STL")  # a part drawn in inches, saved without a unit
    threemf = _facts(corpus / "featuretype.3MF")  # the same part in a 3MF that says inch
    step = _facts(corpus / "featuretype.STEP")  # and in a STEP (cascadio reads it in metres)
    assert stl["unit"] is None and stl["probably_inches"] is True
    assert (stl["size_x_mm"], stl["size_y_mm"]) == pytest.approx((5.0, 2.5))
    assert threemf["unit"] == "inch" and threemf["probably_inches"] is False
    assert (threemf["size_x_mm"], threemf["size_y_mm"]) == pytest.approx((127.0, 63.5))
    assert step["probably_inches"] is False
    assert (step["size_x_mm"], step["size_y_mm"]) == pytest.approx((127.0, 63.5), rel=1e-5)
    assert step["watertight"] and step["volume_mm3"] > 0
    pyramids = _facts(corpus / "pyramids.3mf")  # millimetres, a plate of pyramids
    assert pyramids["unit"] == "millimeter" and pyramids["probably_inches"] is False
    assert pyramids["bodies"] == 12


def test_points_have_a_size_and_no_surface(corpus):
    facts = _facts(corpus / "points_agisoft.xyz")
    assert facts["triangles"] == 0 and facts["points"] > 0
    assert facts["size_x_mm"] > 0 and facts["area_mm2"] is None and facts["fingerprint"] is None


def test_printers_from_the_environment(monkeypatch):
    from dam_dagster.core.config import ConfigError
    from dam_dagster.core.printers import parse_printers

    default = parse_printers()
    assert {p.name for p in default} >= {"Prusa MK4", "Prusa MINI", "Bambu Lab X1/P1/A1"}
    mk4 = next(p for p in default if p.name == "Prusa MK4")
    assert (mk4.x_mm, mk4.y_mm, mk4.z_mm) == (250, 210, 220)
    assert mk4.fits(240, 200, 220) and mk4.fits(200, 240, 100)  # turned a quarter on the plate
    assert not mk4.fits(240, 200, 221) and not mk4.fits(251, 100, 10)
    monkeypatch.setenv("DAM_PRINTERS", "Voron 2.4 350=350x350x340 , Tiny=100x80x100mm")
    assert [(p.name, p.y_mm) for p in parse_printers()] == [("Voron 2.4 350", 350), ("Tiny", 80)]
    for bad in ("Voron=350x350", "A=0x1x1", "A=1x1x1,A=2x2x2"):
        monkeypatch.setenv("DAM_PRINTERS", bad)
        with pytest.raises(ConfigError, match="DAM_PRINTERS"):
            parse_printers()
