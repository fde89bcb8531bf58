"""Where a fast-lane render's time goes, and what the renderer's choices are worth.

    .venv/bin/python bench/render_profile.py        # after render_bench.py built the fast lane

One process, no pool, LP_NUM_THREADS=0 (as each of two workers on two CPUs runs):
1. per-file time of the worker's whole job (read, MD5, parse, geometry facts, cull test,
   framing, GL, PNG), with the facts and without them (alternating rounds, CPU time of this
   process), and a cProfile breakdown by stage;
2. a 3MF with a slicer's preview (corpus counterX.3MF, counterXP.3MF): its preview is the
   thumbnail, and its mesh is parsed for the facts; per file with the facts and without;
3. the GL frame alone, for the variants that were measured while building the renderer:
   stock pyrender (its PBR shaders, 4x MSAA, colour + depth read-back), our shaders with
   pyrender's 4x MSAA, our shaders with 2x2 supersampling, then with back faces culled.
"""

from __future__ import annotations

import cProfile
import glob
import os
import pstats
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ["LP_NUM_THREADS"] = os.environ.get("LP_NUM_THREADS", "0")
PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from dam_dagster.core.render import framing, gl  # noqa: E402
from dam_dagster.core.render import worker as worker_module  # noqa: E402  (sets EGL first)
from dam_dagster.core.render.loaders import load_model, prepare_for_drawing  # noqa: E402

STAGES = {
    "GL frame (pyrender forward pass, llvmpipe)": ("renderer.py", "render"),
    "PNG encode + atomic write": ("images.py", "write_png"),
    "MD5 of the bytes": ("~", "<built-in method _hashlib.openssl_md5>"),
    "2x2 box filter (Pillow reduce)": ("Image.py", "reduce"),
    "parse (binary STL as numpy)": ("loaders.py", "load_binary_stl"),
    "geometry facts and fingerprint (facts.measure)": ("facts.py", "measure"),
    "closed-surface test for culling (from the facts' sums)": ("model.py", "orient_for_culling"),
    "framing (projected bounds)": ("framing.py", "frame"),
    "read the file": ("worker.py", "read_file"),
}


def files(n: int) -> list[str]:
    paths = sorted(glob.glob(str(PROJECT / "bench" / "out" / "render" / "fast" / "*.stl")))
    if not paths:
        sys.exit("run bench/render_bench.py first (it builds bench/out/render/fast)")
    for p in paths[:n]:
        Path(p).read_bytes()
    return paths[:n]


def whole_job(paths: list[str], rounds: int = 3) -> None:
    thumbs = Path(tempfile.mkdtemp(prefix="dam_profile_"))

    def worker(facts: bool):
        return worker_module.Worker(
            {
                "thumbs_dir": str(thumbs),
                "size": 256,
                "background": "transparent",
                "prefer_embedded": True,
                "memory_mb": 4096,
                "facts": facts,
                "overwrite": True,
            }
        )

    try:
        workers = {True: worker(True), False: worker(False)}
        for w in workers.values():
            w.process(paths[0], 0)  # context and shaders
        per_file = {True: [], False: []}
        for _ in range(rounds):
            for facts, w in workers.items():
                t = time.process_time()
                for p in paths[1:]:
                    w.process(p, 0)
                per_file[facts].append((time.process_time() - t) / (len(paths) - 1) * 1000)
        med = {k: sorted(v)[len(v) // 2] for k, v in per_file.items()}
        print(
            f"whole job, one process, CPU ms per file (median of {rounds}): "
            f"{med[True]:.2f} with the facts, {med[False]:.2f} without "
            f"(+{med[True] - med[False]:.2f} ms, {100 * (med[True] / med[False] - 1):+.1f} %)\n"
        )
        w = workers[True]
        profile = cProfile.Profile()
        profile.enable()
        for p in paths[1:]:
            w.process(p, 0)
        profile.disable()
        stats = pstats.Stats(profile).stats
        print("| stage | ms per file (profiled) |\n|---|---|")
        for label, (filename, func) in STAGES.items():
            cum = sum(
                v[3]
                for (f, _, name), v in stats.items()
                if name == func and (filename == "~" or f.endswith(filename))
            )
            print(f"| {label} | {cum / (len(paths) - 1) * 1000:.2f} |")
        for w in workers.values():
            w.close()
    finally:
        shutil.rmtree(thumbs, ignore_errors=True)


def gl_variants(paths: list[str]) -> None:
    import numpy as np
    import pyrender
    from OpenGL import GL
    from pyrender import renderer as pr

    models = [prepare_for_drawing(load_model(Path(p).read_bytes(), ".stl", p)) for p in paths[:60]]

    def timed(render_one) -> float:
        render_one(models[0])
        t = time.perf_counter()
        for m in models:
            render_one(m)
        return (time.perf_counter() - t) / len(models) * 1000

    results = []
    # 1. stock pyrender: its PBR shader, MSAA 4x, colour and depth read back
    stock = pyrender.OffscreenRenderer(256, 256)
    scene = pyrender.Scene(bg_color=[0, 0, 0, 0], ambient_light=[0.2, 0.2, 0.2])
    cam = framing.frame([models[0].drawables[0].positions], 256)
    cam_node = scene.add(pyrender.PerspectiveCamera(yfov=np.radians(30)), pose=cam.pose)
    scene.add(pyrender.DirectionalLight(intensity=3.0), pose=cam.pose)
    material = pyrender.MetallicRoughnessMaterial(
        baseColorFactor=[0.8, 0.8, 0.82, 1.0],
        metallicFactor=0.0,
        roughnessFactor=0.7,
        doubleSided=True,
    )

    def stock_one(m):
        pos = m.drawables[0].positions
        c = framing.frame([pos], 256)
        scene.set_pose(cam_node, c.pose)
        node = scene.add(pyrender.Mesh([pyrender.Primitive(positions=pos, material=material)]))
        stock.render(scene, flags=pyrender.RenderFlags.RGBA)
        scene.remove_node(node)

    results.append(("stock pyrender (PBR shader, 4x MSAA, depth read)", timed(stock_one)))
    stock.delete()

    # 2-4. ours, varying anti-aliasing and culling
    def ours(supersample: int, cull: bool):
        r = gl.ThumbnailRenderer(256, (0, 0, 0, 0))
        if supersample == 1:  # put pyrender's MSAA framebuffer back
            r._renderer.__class__ = type(
                "MSAA",
                (gl._ThumbRenderer,),
                {
                    "_configure_main_framebuffer": pr.Renderer._configure_main_framebuffer,
                    "_delete_main_framebuffer": pr.Renderer._delete_main_framebuffer,
                    "_read_main_framebuffer": _msaa_read,
                },
            )
            r.supersample = 1
            r._renderer.viewport_width = r._renderer.viewport_height = 256
        original = r._primitive

        def primitive(d):
            p = original(d)
            p.material.doubleSided = not cull
            return p

        r._primitive = primitive
        try:
            return timed(r.render)
        finally:
            r.close()

    def _msaa_read(self, scene, flags):
        w, h = self._main_fb_dims
        GL.glBindFramebuffer(GL.GL_READ_FRAMEBUFFER, self._main_fb_ms)
        GL.glBindFramebuffer(GL.GL_DRAW_FRAMEBUFFER, self._main_fb)
        GL.glBlitFramebuffer(0, 0, w, h, 0, 0, w, h, GL.GL_COLOR_BUFFER_BIT, GL.GL_LINEAR)
        GL.glBindFramebuffer(GL.GL_READ_FRAMEBUFFER, self._main_fb)
        return GL.glReadPixels(0, 0, w, h, GL.GL_RGBA, GL.GL_UNSIGNED_BYTE), None

    results.append(("our shaders, pyrender's 4x MSAA, double-sided", ours(1, False)))
    results.append(("our shaders, 2x2 supersampling, double-sided", ours(2, False)))
    results.append(("our shaders, 2x2 supersampling, back faces culled (shipped)", ours(2, True)))
    print("\n| GL frame variant (framing + draw + read-back, 14k triangles, 256 px) | ms |")
    print("|---|---|")
    for label, ms in results:
        print(f"| {label} | {ms:.2f} |")


def embedded_previews(corpus: Path, repeats: int = 5) -> None:
    thumbs = Path(tempfile.mkdtemp(prefix="dam_profile_"))
    print("\n| 3MF with a preview (one process) | CPU ms with the facts | without |")
    print("|---|---|---|")
    try:
        rows = {}
        for facts in (True, False):
            w = worker_module.Worker(
                {
                    "thumbs_dir": str(thumbs),
                    "size": 256,
                    "background": "transparent",
                    "prefer_embedded": True,
                    "memory_mb": 4096,
                    "facts": facts,
                    "overwrite": True,
                }
            )
            for name in ("counterX.3MF", "counterXP.3MF"):
                path = str(corpus / name)
                assert w.process(path, 0)["source"] == "embedded"
                t = time.process_time()
                for _ in range(repeats):
                    w.process(path, 0)
                rows.setdefault(name, {})[facts] = (time.process_time() - t) / repeats * 1000
            w.close()
        for name, ms in rows.items():
            print(f"| {name} | {ms[True]:.1f} | {ms[False]:.1f} |")
    finally:
        shutil.rmtree(thumbs, ignore_errors=True)


if __name__ == "__main__":
    paths = files(int(os.environ.get("FILES", "301")))
    whole_job(paths)
    embedded_previews(PROJECT.parent / "shared" / "corpus" / "trimesh-models")
    gl_variants(paths)
