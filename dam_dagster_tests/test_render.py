"""The thumbnail renderer and its worker pool, on real models: real renders, no mocks.

Every test renders real files (corpus models copied into a temporary library, or files written
here) through `render_files`, the API the Dagster assets call, and looks at the PNGs written.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dam_dagster.core.render import (
    IMAGE_EXTENSIONS,
    MODEL_EXTENSIONS,
    TEST_CRASH_ENV,
    TEST_HANG_ENV,
    RenderConfig,
    RenderTask,
    make_contact_sheet,
    make_contact_sheet_data_uri,
    render_files,
    thumbnail_relpath,
)
from dam_dagster.core.render.loaders import Y_UP_TO_Z_UP

from .conftest import snapshot
from .conftest_render import (
    alpha_bbox,
    binary_ply,
    binary_stl,
    box_triangles,
    copy_into,
    md5_of,
    png_bytes,
    rgba,
    threemf_with_colours,
    threemf_with_thumbnail,
)

SIZE = 256

# Models that must render, with the side files they need in the same folder.
GOOD_MODELS = {
    "box.STL": [],  # binary STL, CAD part
    "1002_tray_bottom.STL": [],  # ASCII STL
    "busted.STL": [],  # binary STL, a scanned tooth (despite its name)
    "multibody.stl": [],  # ASCII STL, two solids
    "two_objects_mixed_case_names.stl": [],
    "featuretype.3MF": [],  # 3MF without an embedded preview
    "pyramids.3mf": [],  # 3MF, several objects
    "fuze.obj": ["fuze.obj.mtl", "fuze uv.jpg"],  # OBJ + MTL + texture with a space in its name
    "bunny.ply": [],
    "cycloidal.ply": [],  # PLY with vertex colours
    "ballA.off": [],
    "Duck.glb": [],  # GLB with a texture
    "cubevc.glb": [],  # GLB with vertex colours
    "TestScene.gltf": ["TestScene.bin"],  # glTF with a .bin side file
    "duck.zae": [],
    "machinist.3DXML": [],
    "points_emptyface.ply": [],  # a point cloud
    "points_agisoft.xyz": [],  # a coloured point cloud
}
POINT_CLOUDS = {"points_emptyface.ply", "points_agisoft.xyz"}
MULTI_BODY = {"two_objects_mixed_case_names.stl"}


def _tasks(paths) -> list[RenderTask]:
    return [
        RenderTask(key=i, path=str(p), size_bytes=os.path.getsize(p)) for i, p in enumerate(paths)
    ]


def _pngs(thumbs: Path) -> list[Path]:
    return sorted(p for p in thumbs.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def corpus_batch(corpus, tmp_path_factory):
    """The GOOD_MODELS rendered once, in one batch of two workers."""
    base = tmp_path_factory.mktemp("render_batch")
    library, thumbs = base / "library", base / "thumbs"
    names = list(GOOD_MODELS) + [side for sides in GOOD_MODELS.values() for side in sides]
    copy_into(library, corpus, names)
    before = snapshot(library)
    paths = [library / name for name in GOOD_MODELS]
    stats: dict = {}
    seen = []
    outcomes = render_files(
        _tasks(paths),
        thumbs,
        RenderConfig(workers=2, timeout_s=60),
        on_outcome=seen.append,
        stats=stats,
    )
    return {
        "library": library,
        "thumbs": thumbs,
        "paths": paths,
        "outcomes": outcomes,
        "before": before,
        "stats": stats,
        "seen": seen,
    }


def test_every_model_renders_framed_on_a_transparent_square(corpus_batch):
    problems = []
    for path, o in zip(corpus_batch["paths"], corpus_batch["outcomes"]):
        name = path.name
        if o.status != "ok" or o.source != "render":
            problems.append(f"{name}: {o.status} {o.source} {o.error_class} {o.error_message}")
            continue
        assert o.content_md5 == md5_of(path), name
        assert (
            o.thumbnail_relpath
            == thumbnail_relpath(o.content_md5)
            == f"{o.content_md5[:2]}/{o.content_md5}.png"
        )
        assert o.error_class is None and o.transient is False and o.seconds > 0
        png = corpus_batch["thumbs"] / o.thumbnail_relpath
        with Image.open(png) as im:
            assert im.format == "PNG" and im.size == (SIZE, SIZE) and im.mode == "RGBA", name
        px = rgba(png)
        corners = [px[:2, :2], px[:2, -2:], px[-2:, :2], px[-2:, -2:]]
        if any(c[..., 3].any() for c in corners):
            problems.append(f"{name}: a corner is not transparent")
        box = alpha_bbox(px)
        if box is None:
            problems.append(f"{name}: empty image")
            continue
        x0, y0, x1, y1 = box
        if min(x0, y0) < 2 or max(x1, y1) > SIZE - 3:
            problems.append(f"{name}: touches the edge {box}")
        span = max(x1 - x0, y1 - y0) + 1
        if span < 0.8 * SIZE:
            problems.append(f"{name}: framed too small (spans {span} px)")
        share = float((px[..., 3] > 0).mean())
        low = 0.01 if name in POINT_CLOUDS else 0.04
        if not low <= share <= 0.92:
            problems.append(f"{name}: covers {share:.1%} of the square")
    assert not problems, "\n".join(problems)


def test_outcomes_come_back_in_order_and_through_the_callback(corpus_batch):
    outcomes = corpus_batch["outcomes"]
    assert [o.key for o in outcomes] == list(range(len(corpus_batch["paths"])))
    assert sorted(o.key for o in corpus_batch["seen"]) == list(range(len(outcomes)))
    stats = corpus_batch["stats"]
    assert stats["workers_started"] == 2 and stats["timeouts"] == 0
    assert stats["worker_crashes"] == 0 and stats["worker_cpu_s"] > 0


def test_nothing_is_written_inside_the_library(corpus_batch):
    assert snapshot(corpus_batch["library"]) == corpus_batch["before"]
    written = _pngs(corpus_batch["thumbs"])
    expected = {
        corpus_batch["thumbs"] / o.thumbnail_relpath
        for o in corpus_batch["outcomes"]
        if o.thumbnail_relpath
    }
    assert set(written) == expected  # no temp file, nothing else


def test_several_bodies_are_framed_together(corpus_batch):
    from scipy import ndimage

    for path, o in zip(corpus_batch["paths"], corpus_batch["outcomes"]):
        if path.name in MULTI_BODY:
            px = rgba(corpus_batch["thumbs"] / o.thumbnail_relpath)
            _, blobs = ndimage.label(px[..., 3] > 0)
            assert blobs >= 2, f"{path.name}: {blobs} body visible"


def _opaque_rgb(corpus_batch, name) -> np.ndarray:
    i = [p.name for p in corpus_batch["paths"]].index(name)
    px = rgba(corpus_batch["thumbs"] / corpus_batch["outcomes"][i].thumbnail_relpath)
    return px[px[..., 3] == 255][:, :3].astype(float)


def test_colours_and_textures_are_used(corpus_batch):
    duck = _opaque_rgb(corpus_batch, "Duck.glb").mean(axis=0)  # a yellow textured duck
    assert duck[0] > duck[2] + 60 and duck[1] > duck[2] + 40, duck
    cube = _opaque_rgb(corpus_batch, "cubevc.glb")  # vertex colours
    assert (cube.max(axis=1) - cube.min(axis=1)).mean() > 40
    plain = _opaque_rgb(corpus_batch, "box.STL")  # no colour: neutral grey
    assert (plain.max(axis=1) - plain.min(axis=1)).mean() < 12
    assert plain.std(axis=0).max() > 8  # faces shaded differently, not a flat silhouette


def test_3mf_colours_are_drawn(tmp_path):
    from scipy import ndimage

    model = tmp_path / "lib" / "painted.3mf"
    model.parent.mkdir()
    model.write_bytes(threemf_with_colours())
    [o] = render_files(_tasks([model]), tmp_path / "thumbs", RenderConfig(workers=1))
    assert (o.status, o.source) == ("ok", "render"), o
    px = rgba(tmp_path / "thumbs" / o.thumbnail_relpath).astype(int)
    opaque = px[..., 3] == 255
    r, g, b = px[..., 0], px[..., 1], px[..., 2]
    red = opaque & (r > g + 60) & (r > b + 60)
    green = opaque & (g > r + 60) & (g > b + 40)
    blue = opaque & (b > r + 60) & (b > g + 40)
    for name, mask in (("red", red), ("green", green), ("blue", blue)):
        assert mask.mean() > 0.02, f"no {name} faces"
    assert ndimage.label(opaque)[1] == 2  # both build items


def test_broken_empty_and_unknown_files_fail_permanently(corpus, tmp_path):
    library = tmp_path / "library"
    copy_into(library, corpus, ["empty.stl", "empty.obj", "empty.ply", "empty_nodes.glb"])
    (library / "zero.stl").write_bytes(b"")
    (library / "truncated.stl").write_bytes(binary_stl(box_triangles())[:-200])
    (library / "noise.stl").write_bytes(np.random.default_rng(1).bytes(3000))
    (library / "noise.glb").write_bytes(b"glTF" + np.random.default_rng(2).bytes(500))
    (library / "not_a_zip.3mf").write_bytes(b"this is not a zip archive" * 10)
    (library / "notes.txt").write_text("not a model")
    (library / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    names = sorted(p.name for p in library.iterdir())
    outcomes = render_files(
        _tasks([library / n for n in names]),
        tmp_path / "thumbs",
        RenderConfig(workers=2, timeout_s=60),
    )
    by_name = dict(zip(names, outcomes))
    for name, o in by_name.items():
        assert o.status in ("failed", "unsupported"), (name, o)
        assert o.transient is False, (name, o)
        assert o.thumbnail_relpath is None and o.error_class and o.error_message, (name, o)
    assert by_name["notes.txt"].status == "unsupported"
    assert by_name["notes.txt"].error_class == "UnsupportedFormat"
    assert by_name["truncated.stl"].error_class == "CorruptFile"
    assert by_name["zero.stl"].error_class == "EmptyFile"
    for name in ("empty.stl", "empty.obj", "empty.ply", "empty_nodes.glb"):
        assert by_name[name].error_class == "EmptyMesh", by_name[name]
    for name in names:
        if name != "notes.txt":
            assert by_name[name].content_md5 == md5_of(library / name)
    assert _pngs(tmp_path / "thumbs") == []


def test_step_renders_out_of_the_box(corpus, tmp_path):
    """cascadio is a main dependency: a STEP file from the corpus renders, Z up as in the CAD,
    and is measured in millimetres (cascadio reads STEP in metres)."""
    copy_into(tmp_path / "lib", corpus, ["featuretype.STEP", "featuretype.STL"])
    paths = [tmp_path / "lib" / "featuretype.STEP", tmp_path / "lib" / "featuretype.STL"]
    step, stl = render_files(_tasks(paths), tmp_path / "thumbs", RenderConfig(workers=1))
    assert (step.status, step.source) == ("ok", "render"), step
    assert (step.facts["size_x_mm"], step.facts["size_y_mm"]) == pytest.approx((127.0, 63.5))
    assert step.facts["watertight"] and step.facts["volume_mm3"] > 0
    # the same part drawn from the STL (in inches, without a unit): the same silhouette
    a = rgba(tmp_path / "thumbs" / step.thumbnail_relpath)[..., 3] > 0
    b = rgba(tmp_path / "thumbs" / stl.thumbnail_relpath)[..., 3] > 0
    assert (a & b).sum() / (a | b).sum() > 0.9


def _height_over_width(png: Path) -> float:
    x0, y0, x1, y1 = alpha_bbox(rgba(png))
    return (y1 - y0 + 1) / (x1 - x0 + 1)


def test_y_up_obj_stands_up_and_z_up_obj_is_not_tipped_over(corpus, tmp_path):
    """Real Y-up exports of the corpus stand up (a Blender bust, a Wings 3D rabbit); a Z-up
    bottle stays standing; and the rabbit written once Y up and once Z up, without any
    exporter comment, gives the same standing picture both times."""
    import trimesh

    lib = tmp_path / "lib"
    copy_into(lib, corpus, ["target.obj", "rabbit.obj", "rabbit.mtl"])
    copy_into(lib, corpus, ["fuze.obj", "fuze.obj.mtl", "fuze uv.jpg"])
    rabbit = trimesh.load(corpus / "rabbit.obj", force="mesh")  # as in the file: Y up
    (lib / "rabbit_y_up.obj").write_text(trimesh.exchange.obj.export_obj(rabbit))
    rabbit.apply_transform(Y_UP_TO_Z_UP)
    (lib / "rabbit_z_up.obj").write_text(trimesh.exchange.obj.export_obj(rabbit))
    names = ["target.obj", "rabbit.obj", "fuze.obj", "rabbit_y_up.obj", "rabbit_z_up.obj"]
    outcomes = dict(
        zip(
            names,
            render_files(_tasks([lib / n for n in names]), tmp_path / "thumbs", RenderConfig()),
        )
    )
    thumbs = tmp_path / "thumbs"
    ratio = {n: _height_over_width(thumbs / o.thumbnail_relpath) for n, o in outcomes.items()}
    up = {n: o.facts["up_axis"] for n, o in outcomes.items()}
    assert up == {
        "target.obj": "Y",  # no flat base: Blender's comment decides
        "rabbit.obj": "Y",  # its feet are its flat base
        "fuze.obj": "Z",
        "rabbit_y_up.obj": "Y",
        "rabbit_z_up.obj": "Z",
    }, up
    assert min(ratio.values()) > 1.0, ratio  # every one of them stands: taller than wide
    a = rgba(thumbs / outcomes["rabbit_y_up.obj"].thumbnail_relpath)[..., 3] > 0
    b = rgba(thumbs / outcomes["rabbit_z_up.obj"].thumbnail_relpath)[..., 3] > 0
    assert (a & b).sum() / (a | b).sum() > 0.95  # the same picture


def test_vertex_colours_are_shaded(tmp_path):
    """A PLY with vertex colours (under trimesh's names, and MeshLab's diffuse_* ones) is
    drawn in its colours and lit: faces of one colour differ in brightness."""
    import trimesh

    sphere = trimesh.creation.icosphere(subdivisions=3, radius=10.0)
    right = sphere.vertices[:, 0] > 0  # red on the right, blue on the left
    colours = np.zeros((len(sphere.vertices), 4), dtype=np.uint8)
    colours[right] = (220, 40, 40, 255)
    colours[~right] = (40, 40, 220, 255)
    sphere.visual = trimesh.visual.ColorVisuals(sphere, vertex_colors=colours)
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "colours.ply").write_bytes(trimesh.exchange.ply.export_ply(sphere))
    header = (
        f"ply\nformat ascii 1.0\nelement vertex {len(sphere.vertices)}\nproperty float x\n"
        "property float y\nproperty float z\nproperty uchar diffuse_red\n"
        "property uchar diffuse_green\nproperty uchar diffuse_blue\n"
        f"element face {len(sphere.faces)}\nproperty list uchar int vertex_indices\nend_header\n"
    )
    body = "".join(
        f"{x} {y} {z} {r} {g} {b}\n" for (x, y, z), (r, g, b, _) in zip(sphere.vertices, colours)
    ) + "".join(f"3 {a} {b} {c}\n" for a, b, c in sphere.faces)
    (lib / "meshlab.ply").write_text(header + body)
    names = ["colours.ply", "meshlab.ply"]
    outcomes = render_files(_tasks([lib / n for n in names]), tmp_path / "t", RenderConfig())
    for name, o in zip(names, outcomes):
        px = rgba(tmp_path / "t" / o.thumbnail_relpath).astype(int)
        opaque = px[px[..., 3] == 255][:, :3]
        red = opaque[(opaque[:, 0] > opaque[:, 2] + 60)]
        blue = opaque[(opaque[:, 2] > opaque[:, 0] + 60)]
        assert len(red) > 0.1 * len(opaque) and len(blue) > 0.1 * len(opaque), name
        # lit, not flat: the red faces span a range of brightness
        assert red[:, 0].std() > 12, name


def test_coloured_point_clouds_keep_their_colours(corpus, tmp_path):
    copy_into(tmp_path / "lib", corpus, ["points_agisoft.xyz"])
    [o] = render_files(
        _tasks([tmp_path / "lib" / "points_agisoft.xyz"]), tmp_path / "t", RenderConfig()
    )
    px = rgba(tmp_path / "t" / o.thumbnail_relpath)
    drawn = px[px[..., 3] > 0][:, :3].astype(int)
    blue = np.array([0.23, 0.36, 0.55]) * 255  # the colour of points without colours
    assert np.abs(drawn - blue).sum(axis=1).mean() > 40  # the file's colours, not ours


def test_a_hung_render_is_killed_at_the_timeout_and_the_batch_completes(
    corpus, tmp_path, monkeypatch
):
    monkeypatch.setenv(TEST_HANG_ENV, ".hang.stl")
    library = tmp_path / "library"
    library.mkdir()
    paths = []
    for i in range(6):
        p = library / (f"part{i}.hang.stl" if i == 1 else f"part{i}.stl")
        p.write_bytes(binary_stl(box_triangles((10 + i, 10, 5)), header=f"part {i}".encode()))
        paths.append(p)
    timeout = 3.0
    stats: dict = {}
    # one worker: the files queued behind the hung one need the replacement worker
    outcomes = render_files(
        _tasks(paths), tmp_path / "thumbs", RenderConfig(workers=1, timeout_s=timeout), stats=stats
    )
    hung = outcomes[1]
    assert (hung.status, hung.error_class, hung.transient) == ("timeout", "Timeout", True)
    assert timeout <= hung.seconds < timeout + 5
    assert hung.thumbnail_relpath is None
    assert [o.status for i, o in enumerate(outcomes) if i != 1] == ["ok"] * 5
    assert stats["timeouts"] == 1 and stats["workers_started"] == 2  # killed and replaced


def test_a_crashed_worker_fails_its_file_only(tmp_path, monkeypatch):
    monkeypatch.setenv(TEST_CRASH_ENV, ".crash.stl")
    paths = []
    for i in range(5):
        p = tmp_path / "lib" / (f"m{i}.crash.stl" if i == 2 else f"m{i}.stl")
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(binary_stl(box_triangles((5, 5 + i, 5)), header=f"m{i}".encode()))
        paths.append(p)
    stats: dict = {}
    outcomes = render_files(
        _tasks(paths), tmp_path / "thumbs", RenderConfig(workers=2, timeout_s=60), stats=stats
    )
    crashed = outcomes[2]
    assert (crashed.status, crashed.error_class, crashed.transient) == (
        "failed",
        "WorkerCrashed",
        True,
    )
    assert "SIGSEGV" in crashed.error_message
    assert [o.status for i, o in enumerate(outcomes) if i != 2] == ["ok"] * 4
    assert stats["worker_crashes"] == 1


def test_an_exploding_model_hits_the_memory_cap_alone(tmp_path):
    lib = tmp_path / "lib"
    lib.mkdir()
    big = lib / "huge.ply"
    big.write_bytes(binary_ply(3_000_000))  # ~50 MB of faces: GBs once parsed by trimesh
    small = [lib / f"small{i}.stl" for i in range(3)]
    for i, p in enumerate(small):
        p.write_bytes(binary_stl(box_triangles((5 + i, 5, 5)), header=f"s{i}".encode()))
    stats: dict = {}
    outcomes = render_files(
        _tasks([big] + small),
        tmp_path / "thumbs",
        RenderConfig(workers=2, timeout_s=120, memory_mb=600),
        stats=stats,
    )
    o = outcomes[0]
    assert (o.status, o.error_class, o.transient) == ("memory", "MemoryLimit", True), o
    assert [x.status for x in outcomes[1:]] == ["ok"] * 3
    assert stats["memory_kills"] == 1


def test_identical_files_share_one_png_and_are_not_rendered_twice(corpus, tmp_path):
    library = tmp_path / "library"
    (library / "sub").mkdir(parents=True)
    names = ["one.stl", "sub/two.STL", "three.stl"]
    for name in names:
        shutil.copy(corpus / "box.STL", library / name)
    thumbs = tmp_path / "thumbs"
    first = render_files(_tasks([library / n for n in names]), thumbs, RenderConfig(workers=1))
    assert {o.status for o in first} == {"ok"}
    assert len({o.thumbnail_relpath for o in first}) == 1
    assert len({o.content_md5 for o in first}) == 1
    assert [o.source for o in first].count("render") == 1  # one worker: the rest are reused
    assert len(_pngs(thumbs)) == 1
    mtime = (thumbs / first[0].thumbnail_relpath).stat().st_mtime_ns
    # a moved/renamed file with the same bytes: reused, never rendered again
    shutil.move(library / "three.stl", library / "renamed.stl")
    again = render_files(
        _tasks([library / "renamed.stl", library / "one.stl"]), thumbs, RenderConfig(workers=2)
    )
    assert [o.source for o in again] == ["cache", "cache"]
    assert {o.thumbnail_relpath for o in again} == {first[0].thumbnail_relpath}
    assert (thumbs / first[0].thumbnail_relpath).stat().st_mtime_ns == mtime
    # after a settings change the caller asks for a fresh render over the old PNG
    redo = render_files(
        _tasks([library / "one.stl"]), thumbs, RenderConfig(workers=1, size=128, overwrite=True)
    )
    assert redo[0].source == "render" and redo[0].thumbnail_relpath == first[0].thumbnail_relpath
    with Image.open(thumbs / redo[0].thumbnail_relpath) as im:
        assert im.size == (128, 128)
    assert len(_pngs(thumbs)) == 1


def test_embedded_3mf_previews_images_and_backgrounds(corpus, tmp_path):
    library = tmp_path / "library"
    copy_into(library, corpus, ["counterX.3MF", "capsule0.jpg"])
    marker = png_bytes((400, 200), (20, 180, 60, 255))
    (library / "sliced.3mf").write_bytes(threemf_with_thumbnail(corpus / "featuretype.3MF", marker))
    (library / "photo.jpeg").write_bytes(png_bytes((90, 300), (30, 60, 200, 255), "JPEG"))
    (library / "art.webp").write_bytes(png_bytes((64, 64), (250, 200, 0, 255), "WEBP"))
    names = ["counterX.3MF", "sliced.3mf", "capsule0.jpg", "photo.jpeg", "art.webp"]
    thumbs = tmp_path / "thumbs"
    outcomes = dict(
        zip(
            names,
            render_files(_tasks([library / n for n in names]), thumbs, RenderConfig(workers=2)),
        )
    )
    assert {n: o.source for n, o in outcomes.items()} == {
        "counterX.3MF": "embedded",
        "sliced.3mf": "embedded",
        "capsule0.jpg": "image",
        "photo.jpeg": "image",
        "art.webp": "image",
    }
    # the slicer's preview, scaled to fit and centred on a transparent square
    px = rgba(thumbs / outcomes["sliced.3mf"].thumbnail_relpath)
    assert px.shape == (SIZE, SIZE, 4)
    assert tuple(px[128, 128]) == (20, 180, 60, 255) and px[5, 128, 3] == 0
    assert alpha_bbox(px) == (0, 64, 255, 191)  # 400x200 -> 256x128, centred
    photo = rgba(thumbs / outcomes["photo.jpeg"].thumbnail_relpath)
    x0, y0, x1, y1 = alpha_bbox(photo)
    assert (y0, y1) == (0, 255) and 70 <= x1 - x0 + 1 <= 80  # 90x300 -> 77x256
    assert abs(int(photo[128, 128, 2]) - 200) < 12
    art = rgba(thumbs / outcomes["art.webp"].thumbnail_relpath)  # upscaled? no: kept small
    assert alpha_bbox(art) == (96, 96, 159, 159)

    # prefer_embedded=False renders the model instead, on a colour background when asked
    rendered = render_files(
        _tasks([library / "sliced.3mf"]),
        tmp_path / "thumbs2",
        RenderConfig(workers=1, prefer_embedded=False, background="#ff0000"),
    )
    assert rendered[0].source == "render"
    with Image.open(tmp_path / "thumbs2" / rendered[0].thumbnail_relpath) as im:
        assert im.mode == "RGB" and im.size == (SIZE, SIZE)
        assert im.getpixel((0, 0)) == (255, 0, 0)
        assert im.getpixel((128, 128)) != (255, 0, 0)


def test_without_egl_models_fail_transiently_and_images_still_work(corpus, tmp_path, monkeypatch):
    # glvnd finds no EGL vendor: what a machine without Mesa's EGL looks like to a worker
    monkeypatch.setenv("__EGL_VENDOR_LIBRARY_FILENAMES", str(tmp_path / "none.json"))
    names = ["box.STL", "capsule0.jpg", "torus.STL"]
    copy_into(tmp_path / "lib", corpus, names)
    outcomes = render_files(
        _tasks([tmp_path / "lib" / n for n in names]), tmp_path / "thumbs", RenderConfig(workers=1)
    )
    for o in (outcomes[0], outcomes[2]):
        assert (o.status, o.error_class, o.transient) == ("failed", "RendererUnavailable", True)
        assert "libegl" in o.error_message
    assert (outcomes[1].status, outcomes[1].source) == ("ok", "image")


def test_paths_that_cannot_be_read_fail_like_they_do_for_hashing(tmp_path):
    """One rule (core/failures.py): a vanished file or a folder where a file was is about the
    file (permanent, kept until it changes), as hashing says too."""
    from dam_dagster.core import hashing

    (tmp_path / "folder.stl").mkdir()
    paths = [tmp_path / "missing.stl", tmp_path / "folder.stl"]
    outcomes = render_files(
        [RenderTask(i, str(p), 0) for i, p in enumerate(paths)],
        tmp_path / "thumbs",
        RenderConfig(workers=1),
    )
    assert [(o.status, o.transient) for o in outcomes] == [("failed", False), ("failed", False)]
    assert outcomes[0].error_class == "FileNotFoundError"
    hashed = [hashing.hash_full(hashing.HashJob(i, str(p), 0, 0)) for i, p in enumerate(paths)]
    assert [h.transient for h in hashed] == [o.transient for o in outcomes]


def test_workers_are_recycled_and_every_task_gets_one_outcome(tmp_path):
    paths = []
    for i in range(9):
        # one name is not UTF-8: Python hands it over with surrogate escapes
        name = os.fsdecode(b"caf\xe9 \xff.stl") if i == 4 else f"b{i}.stl"
        p = tmp_path / "lib" / name
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(binary_stl(box_triangles((3 + i, 4, 5)), header=f"b{i}".encode()))
        paths.append(p)
    stats: dict = {}
    outcomes = render_files(
        _tasks(paths),
        tmp_path / "thumbs",
        RenderConfig(workers=2, max_files_per_worker=2),
        stats=stats,
    )
    assert [o.key for o in outcomes] == list(range(9))
    assert {o.status for o in outcomes} == {"ok"}
    assert stats["recycled"] >= 4 and stats["workers_started"] >= 5
    assert render_files([], tmp_path / "thumbs", RenderConfig()) == []


def test_the_calling_process_never_loads_the_gl_stack(tmp_path):
    model = tmp_path / "cube.stl"
    model.write_bytes(binary_stl(box_triangles()))
    script = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from dam_dagster.core.render import RenderConfig, RenderTask, render_files
        [o] = render_files([RenderTask(1, {str(model)!r}, 0)], Path({str(tmp_path / "t")!r}),
                           RenderConfig(workers=1))
        assert o.status == "ok", o
        loaded = [m for m in ("pyrender", "OpenGL", "trimesh", "numpy") if m in sys.modules]
        print("LOADED", loaded)
    """)
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "LOADED []" in out.stdout


def test_contact_sheet(corpus_batch):
    pngs = [corpus_batch["thumbs"] / o.thumbnail_relpath for o in corpus_batch["outcomes"]]
    sheet = make_contact_sheet(pngs, max_bytes=20_000)
    assert sheet is not None and len(sheet) <= 20_000
    with Image.open(io.BytesIO(sheet)) as im:
        assert im.width >= 4 * 16 and im.height >= 16
    uri = make_contact_sheet_data_uri(pngs, max_chars=30_000)
    assert uri.startswith("data:image/") and ";base64," in uri and len(uri) <= 30_000
    assert make_contact_sheet([]) is None
    assert make_contact_sheet([corpus_batch["library"] / "missing.png"]) is None


def test_config_defaults_are_the_documented_ones():
    c = RenderConfig()
    assert (
        c.size,
        c.background,
        c.workers,
        c.timeout_s,
        c.memory_mb,
        c.max_files_per_worker,
        c.prefer_embedded,
    ) == (256, "transparent", 2, 120.0, 4096, 500, True)


def test_extension_sets():
    assert {
        ".stl",
        ".3mf",
        ".obj",
        ".ply",
        ".off",
        ".glb",
        ".gltf",
        ".dae",
        ".zae",
        ".step",
        ".stp",
    } <= MODEL_EXTENSIONS
    assert IMAGE_EXTENSIONS == {".png", ".jpg", ".jpeg", ".webp"}
    assert all(e == e.lower() and e.startswith(".") for e in MODEL_EXTENSIONS | IMAGE_EXTENSIONS)
    with pytest.raises(ValueError):
        RenderConfig(background="blue-ish")
