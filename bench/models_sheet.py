"""The picture of docs/MODELS.md: thumbnails the renderer makes of corpus files and of the
slicer files the tests write, labelled.

    .venv/bin/python bench/models_sheet.py [--out docs/models_examples.png]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from dam_dagster.core.render import RenderConfig, RenderTask, render_files  # noqa: E402


def build(corpus: Path, lib: Path) -> list[tuple[str, Path]]:
    import numpy as np
    import trimesh

    from dam_dagster.core.render.loaders import Y_UP_TO_Z_UP
    from dam_dagster_tests import slicer_files as sf

    for name in ("target.obj", "rabbit.mtl", "fuze.obj", "fuze.obj.mtl", "fuze uv.jpg"):
        shutil.copy(corpus / name, lib / name)
    for name in ("points_agisoft.xyz", "featuretype.STEP", "cycloidal.ply"):
        shutil.copy(corpus / name, lib / name)
    rabbit = trimesh.load(corpus / "rabbit.obj", force="mesh")
    (lib / "rabbit_y_up.obj").write_text(trimesh.exchange.obj.export_obj(rabbit))
    rabbit.apply_transform(Y_UP_TO_Z_UP)
    (lib / "rabbit_z_up.obj").write_text(trimesh.exchange.obj.export_obj(rabbit))
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=10.0)
    t = (sphere.vertices[:, 0] + 10.0) / 20.0
    colours = np.stack(
        [40 + 200 * t, 60 + 120 * (1 - abs(2 * t - 1)), 240 - 200 * t, np.full_like(t, 255)],
        axis=1,
    ).astype(np.uint8)
    sphere.visual = trimesh.visual.ColorVisuals(sphere, vertex_colors=colours)
    (lib / "vertex_colours.ply").write_bytes(trimesh.exchange.ply.export_ply(sphere))
    # a slicer's preview is its own render of the plate: make ours stand in for it
    previews = {}
    for name in ("idler_riser.STL", "torus.STL"):
        shutil.copy(corpus / name, lib / name)
    done = render_files(
        [RenderTask(n, str(lib / n), 0) for n in ("idler_riser.STL", "torus.STL")],
        lib.parent / "previews",
        RenderConfig(workers=1, size=220, background="#3c4450"),
    )
    for o in done:
        previews[o.key] = (lib.parent / "previews" / o.thumbnail_relpath).read_bytes()
        (lib / o.key).unlink()
    (lib / "prusa.gcode").write_bytes(
        sf.prusa_gcode(
            previews=((16, 16, "QOI", (255, 0, 0, 255)), (220, 220, "PNG", previews["torus.STL"]))
        )
    )
    (lib / "part.bgcode").write_bytes(
        sf.bgcode(
            previews=(
                (16, 16, "QOI", (255, 0, 0, 255)),
                (220, 220, "PNG", previews["idler_riser.STL"]),
            )
        )
    )
    mesh = trimesh.load(corpus / "featuretype.STL")
    (lib / "bambu_project.3mf").write_bytes(sf.bambu_project(mesh.vertices, mesh.faces))
    return [
        ("rabbit, Y-up OBJ", lib / "rabbit_y_up.obj"),
        ("rabbit, Z-up OBJ", lib / "rabbit_z_up.obj"),
        ("Blender bust (Y up)", lib / "target.obj"),
        ("bottle, Z-up OBJ", lib / "fuze.obj"),
        ("PLY vertex colours", lib / "vertex_colours.ply"),
        ("PLY (cycloidal)", lib / "cycloidal.ply"),
        ("coloured points", lib / "points_agisoft.xyz"),
        ("STEP (cascadio)", lib / "featuretype.STEP"),
        ("PrusaSlicer G-code", lib / "prusa.gcode"),
        ("binary G-code", lib / "part.bgcode"),
        ("Bambu project (preview)", lib / "bambu_project.3mf"),
    ]


def main(argv=None) -> int:
    from PIL import Image, ImageDraw

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--corpus", type=Path, default=PROJECT.parent / "shared" / "corpus" / "trimesh-models"
    )
    parser.add_argument("--out", type=Path, default=PROJECT / "docs" / "models_examples.png")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="dam_sheet_"))
    lib = work / "lib"
    lib.mkdir()
    items = build(args.corpus, lib)
    tasks = [RenderTask(i, str(p), p.stat().st_size) for i, (_, p) in enumerate(items)]
    outcomes = render_files(tasks, work / "thumbs", RenderConfig(workers=2))
    cell, label = 176, 18
    cols = 6
    rows = -(-len(items) // cols)
    sheet = Image.new("RGB", (cols * cell, rows * (cell + label)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, ((title, _), o) in enumerate(zip(items, outcomes)):
        x, y = (i % cols) * cell, (i // cols) * (cell + label)
        draw.rectangle([x + 2, y + 2, x + cell - 3, y + cell - 3], fill=(238, 239, 242))
        if o.ok:
            with Image.open(work / "thumbs" / o.thumbnail_relpath) as im:
                tile = im.convert("RGBA").resize((cell - 8, cell - 8), Image.LANCZOS)
                sheet.paste(tile, (x + 4, y + 4), tile)
        draw.text((x + 4, y + cell), title, fill=(30, 30, 30))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(args.out, optimize=True)
    print(f"{args.out} ({args.out.stat().st_size // 1024} KB)")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
