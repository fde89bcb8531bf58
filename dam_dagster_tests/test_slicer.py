"""Slicer files through the renderer: G-code and binary G-code thumbnails from their embedded
previews (the largest wins), print facts from G-code and 3MF projects, and broken files as
recorded failures. The files are written by slicer_files.py from the formats' published
descriptions; the renderer is the pool the lanes use."""

from __future__ import annotations

import os

import numpy as np
import pytest

from dam_dagster.core.render import RenderConfig, RenderTask, render_files
from dam_dagster.core.render.slicer import gcode_previews, read_bgcode

from . import slicer_files as sf
from .conftest_render import rgba


def _render(tmp_path, files: dict[str, bytes]) -> dict:
    lib = tmp_path / "lib"
    lib.mkdir(exist_ok=True)
    for name, data in files.items():
        (lib / name).write_bytes(data)
    names = list(files)
    tasks = [RenderTask(i, str(lib / n), os.path.getsize(lib / n)) for i, n in enumerate(names)]
    outcomes = render_files(tasks, tmp_path / "thumbs", RenderConfig(workers=2))
    return dict(zip(names, outcomes))


def _colour(tmp_path, outcome) -> tuple[int, int, int]:
    px = rgba(tmp_path / "thumbs" / outcome.thumbnail_relpath)
    return tuple(int(c) for c in px[128, 128, :3])


def test_gcode_and_bgcode_thumbnails_are_their_largest_preview(tmp_path):
    out = _render(
        tmp_path,
        {
            "prusa.gcode": sf.prusa_gcode(),  # 16x16 QOI (red) and 313x173 PNG (green)
            "bambu.gcode": sf.bambu_gcode(),  # 50x50 PNG (magenta) and 300x300 PNG (blue)
            "qoi_only.gcode": sf.prusa_gcode(
                previews=((16, 16, "PNG", (255, 0, 0, 255)), (200, 150, "QOI", (0, 200, 200, 255)))
            ),
            "jpg.gco": sf.prusa_gcode(
                previews=((16, 16, "PNG", (255, 0, 0, 255)), (120, 90, "JPG", (40, 40, 200)))
            ),
            "part.bgcode": sf.bgcode(),  # 16x16 QOI (red) and 220x124 PNG (yellow)
            "plain.bgcode": sf.bgcode(checksum=False, deflate_metadata=False),
        },
    )
    for name, o in out.items():
        assert (o.status, o.source) == ("ok", "embedded"), (name, o)
    assert _colour(tmp_path, out["prusa.gcode"]) == (20, 180, 60)
    assert _colour(tmp_path, out["bambu.gcode"]) == (30, 60, 220)
    assert _colour(tmp_path, out["qoi_only.gcode"]) == (0, 200, 200)
    r, g, b = _colour(tmp_path, out["jpg.gco"])
    assert b > 150 and r < 80 and g < 80  # JPEG: nearly the colour it was written with
    assert _colour(tmp_path, out["part.bgcode"]) == (240, 200, 0)
    assert _colour(tmp_path, out["plain.bgcode"]) == (240, 200, 0)
    # the 313x173 preview keeps its shape on the square (scaled to 256 wide)
    px = rgba(tmp_path / "thumbs" / out["prusa.gcode"].thumbnail_relpath)
    ys = np.nonzero(px[:, 128, 3])[0]
    assert abs((ys.max() - ys.min() + 1) - round(173 * 256 / 313)) <= 1


def test_print_facts_of_gcode(tmp_path):
    out = _render(
        tmp_path,
        {
            "prusa.gcode": sf.prusa_gcode(),
            "bambu.gcode": sf.bambu_gcode(),
            "part.bgcode": sf.bgcode(),
            "cura.gcode": sf.cura_gcode(),
        },
    )
    prusa = out["prusa.gcode"].facts
    assert prusa["slicer"] == "PrusaSlicer 2.8.1"
    assert (prusa["printer"], prusa["nozzle_mm"]) == ("MK4S", 0.4)
    assert prusa["filament_types"] == ["PLA", "PETG"]
    assert prusa["filament_colours"] == ["#FF8000", "#FFFFFF"]
    assert prusa["object_names"] == ["Shape-Box", "Bracket"]
    assert prusa["print_time_s"] == 3723.0  # 1h 2m 3s
    assert prusa["filament_g"] == pytest.approx(12.34)
    bambu = out["bambu.gcode"].facts
    assert bambu["slicer"] == "BambuStudio 01.08.04.51"
    assert bambu["printer"] == "Bambu Lab X1 Carbon"
    assert bambu["print_time_s"] == 6242.0  # the total estimate, 1h 44m 2s
    assert bambu["filament_g"] == pytest.approx(6.89)
    assert bambu["filament_colours"] == ["#00AE42", "#FFFFFF"]
    assert bambu["object_names"] == ["cube_id_0_copy_0"]
    binary = out["part.bgcode"].facts
    assert (binary["slicer"], binary["printer"], binary["nozzle_mm"]) == (
        "PrusaSlicer 2.8.1",
        "MK4S",
        0.6,
    )
    assert binary["filament_types"] == ["PETG"] and binary["filament_colours"] == ["#3D3D3D"]
    assert binary["print_time_s"] == 1540.0 and binary["filament_g"] == pytest.approx(2.41)
    assert binary["object_names"] == ["Gear"]
    # Cura without a thumbnail plugin: no preview, a recorded outcome, and its facts
    cura = out["cura.gcode"]
    assert (cura.status, cura.error_class, cura.transient) == ("unsupported", "NoPreview", False)
    assert "thumbnail" in cura.error_message
    assert cura.facts["print_time_s"] == 3725.0
    assert cura.facts["printer"] == "Creality Ender-3"
    assert cura.facts["object_names"] == ["calibration cube.stl"]


def test_broken_binary_gcode_is_a_failure_and_a_damaged_block_is_left_out(tmp_path):
    out = _render(
        tmp_path,
        {
            "junk.bgcode": b"this is not binary G-code at all",
            "cut.bgcode": sf.bgcode()[:200],  # a block header runs past the end
            "damaged.bgcode": sf.bgcode(corrupt_block=3),  # the big preview's checksum fails
        },
    )
    for name in ("junk.bgcode", "cut.bgcode"):
        o = out[name]
        assert (o.status, o.error_class, o.transient) == ("failed", "CorruptFile", False), o
    damaged = out["damaged.bgcode"]
    assert (damaged.status, damaged.source) == ("ok", "embedded")
    assert _colour(tmp_path, damaged) == (255, 0, 0)  # the small preview that is intact
    previews, _ = read_bgcode(sf.bgcode(corrupt_block=3))
    assert [(w, h) for w, h, _, _ in previews] == [(16, 16)]


def test_previews_in_text_gcode_are_found_whatever_their_order():
    data = sf.prusa_gcode(
        previews=(
            (300, 300, "PNG", (1, 2, 3, 255)),
            (16, 16, "QOI", (4, 5, 6, 255)),
            (200, 100, "JPG", (7, 8, 9)),
        )
    )
    found = gcode_previews(data)
    assert [(w, h, f) for w, h, f, _ in found] == [
        (300, 300, "PNG"),
        (16, 16, "QOI"),
        (200, 100, "JPG"),
    ]


def test_print_facts_of_3mf_projects_with_their_geometry(corpus, tmp_path):
    import trimesh

    mesh = trimesh.load(corpus / "featuretype.STL")
    out = _render(
        tmp_path,
        {
            "sliced.3mf": sf.bambu_project(mesh.vertices, mesh.faces),
            "unsliced.3mf": sf.bambu_project(mesh.vertices, mesh.faces, sliced=False),
            "prusa.3mf": sf.prusa_project(mesh.vertices, mesh.faces),
        },
    )
    sliced, unsliced, prusa = out["sliced.3mf"], out["unsliced.3mf"], out["prusa.3mf"]
    assert sliced.source == "embedded" and unsliced.source == "render"  # plate preview
    assert _colour(tmp_path, sliced) == (250, 120, 0)
    f = sliced.facts
    assert f["slicer"] == "BambuStudio 02.02.01.60" and f["printer"] == "Bambu Lab P1S"
    assert f["print_time_s"] == 5421.0 and f["filament_g"] == pytest.approx(17.25)
    assert f["filament_types"] == ["PLA", "PETG"]  # the filaments the plate uses
    assert f["filament_colours"] == ["#FFFFFF", "#FF0000"]
    assert f["object_names"] == ["Benchy hull"]
    u = unsliced.facts
    assert u["print_time_s"] is None and u["filament_g"] is None  # not sliced
    assert u["filament_types"] == ["PLA", "PLA", "PETG", "TPU"]  # every slot of the project
    p = prusa.facts
    assert (p["slicer"], p["printer"], p["nozzle_mm"]) == ("PrusaSlicer 2.7.1+win64", "MINIIS", 0.4)
    assert p["filament_types"] == ["PETG"] and p["object_names"] == ["Wall hook"]
    # the geometry is measured too, and it is the same mesh in all three
    for o in (sliced, unsliced, prusa):
        assert o.facts["triangles"] == len(mesh.faces)
        assert o.facts["volume_mm3"] == pytest.approx(mesh.volume, rel=1e-5)
    assert len({o.facts["fingerprint"] for o in (sliced, unsliced, prusa)}) == 1
