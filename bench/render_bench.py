"""Thumbnail throughput, ours beside f3d's, on the same files in the same run.

    .venv/bin/python bench/render_bench.py                 # both lanes, ours and f3d
    .venv/bin/python bench/render_bench.py --lanes fast --fast-files 400 --no-f3d

For each lane it builds a folder of binary STLs from real corpus models (bench/render_corpus.py:
largest triangles split until the target count, one unique 80-byte header per file so the
content cache never short-cuts a render), reads every file once so both renderers start from
the page cache, then renders the folder:

* ours: `render_files` (the API the Dagster assets call) with a fresh thumbnail folder, the
  lane's worker count, 256 px, transparent background; wall time includes starting the fork
  server and the workers;
* f3d: the `f3d` PyPI package, headless (EGL), in-process: the same number of worker
  processes, each with one f3d Engine reused for its share of the files, +Z up, the same
  three-quarter camera direction, FXAA, transparent background, PNG written per file.

It prints renders/s, CPU seconds per render (this process and all its child processes: fork
server, workers, llvmpipe threads; the same measure for f3d's processes) and peak resident
memory per worker, writes the figures as JSON, and writes a contact sheet of
ours beside f3d's for the same files (docs/render_ours_vs_f3d.png by default).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import resource
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(PROJECT))

from render_corpus import build_lane  # noqa: E402

from dam_dagster.core.render import RenderConfig, RenderTask, render_files  # noqa: E402
from dam_dagster.core.render.framing import AZIMUTH_DEG, ELEVATION_DEG  # noqa: E402

LANES = {
    # name: (target triangles per file, default file count, default workers, timeout)
    "fast": (14_000, 1000, 2, 120.0),
    "slow": (800_000, 16, 1, 600.0),
}


def cpu_seconds() -> float:
    """CPU time of this process and of every child process it has waited for (the fork
    server and, through it, every render worker; f3d's worker processes), threads included."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def busy_cpus(seconds: float = 1.0) -> float:
    """How many CPUs other processes kept busy over the last second (from /proc/stat)."""

    def sample():
        with open("/proc/stat") as f:
            values = [int(x) for x in f.readline().split()[1:]]
        return sum(values), values[3] + values[4]  # total, idle + iowait

    total0, idle0 = sample()
    time.sleep(seconds)
    total1, idle1 = sample()
    cpus = len(os.sched_getaffinity(0))
    return cpus * (1.0 - (idle1 - idle0) / max(1, total1 - total0))


# ---------------------------------------------------------------------------------------
# ours
# ---------------------------------------------------------------------------------------


def run_ours(
    paths: list[Path], thumbs: Path, workers: int, size: int, timeout: float, facts: bool = True
) -> dict:
    shutil.rmtree(thumbs, ignore_errors=True)
    tasks = [RenderTask(i, str(p), p.stat().st_size) for i, p in enumerate(paths)]
    stats: dict = {}
    cpu0 = cpu_seconds()
    started = time.perf_counter()
    config = RenderConfig(size=size, workers=workers, timeout_s=timeout, facts=facts)
    outcomes = render_files(tasks, thumbs, config, stats=stats)
    wall = time.perf_counter() - started
    cpu = cpu_seconds() - cpu0
    ok = sum(o.status == "ok" and o.source == "render" for o in outcomes)
    measured = sum(o.facts is not None and o.facts.get("fingerprint") is not None for o in outcomes)
    if facts and measured != ok:
        print(f"warning: {ok - measured} renders came back without facts", file=sys.stderr)
    return {
        "tool": "ours" if facts else "ours, no facts",
        "files": len(paths),
        "ok": ok,
        "workers": workers,
        "wall_s": round(wall, 3),
        "renders_per_s": round(ok / wall, 2),
        "cpu_s_per_render": round(cpu / max(ok, 1), 4),
        "peak_rss_mb_per_worker": stats["peak_rss_mb"],
        "pool": stats,
        "pngs": {
            str(p): str(thumbs / o.thumbnail_relpath)
            for p, o in zip(paths, outcomes)
            if o.thumbnail_relpath
        },
    }


# ---------------------------------------------------------------------------------------
# f3d
# ---------------------------------------------------------------------------------------


def _f3d_worker(shard: list[str], out_dir: str, size: int, queue) -> None:
    import f3d

    f3d.Log.set_verbose_level(f3d.Log.QUIET)
    engine = f3d.Engine.create_egl()
    engine.options.update(
        {
            "scene.up_direction": [0, 0, 1],
            "render.effect.antialiasing.mode": "fxaa",
            "ui.loader_progress": False,
        }
    )
    engine.window.size = (size, size)
    az, el = math.radians(AZIMUTH_DEG), math.radians(ELEVATION_DEG)
    direction = (math.sin(az) * math.cos(el), -math.cos(az) * math.cos(el), math.sin(el))
    ok = 0
    for path in shard:
        try:
            engine.scene.clear()
            engine.scene.add(path)
            camera = engine.window.camera
            camera.focal_point = (0.0, 0.0, 0.0)
            camera.position = direction
            camera.view_up = (0.0, 0.0, 1.0)
            camera.reset_to_bounds(0.9)
            image = engine.window.render_to_image(no_background=True)
            image.save(os.path.join(out_dir, Path(path).stem + ".png"))
            ok += 1
        except Exception as exc:  # noqa: BLE001
            print(f"f3d failed on {path}: {exc}", file=sys.stderr)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    queue.put({"ok": ok, "cpu_s": time.process_time(), "maxrss_mb": usage.ru_maxrss / 1024})


def run_f3d(paths: list[Path], out_dir: Path, workers: int, size: int) -> dict:
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    shards = [[str(p) for p in paths[i::workers]] for i in range(workers)]
    cpu0 = cpu_seconds()
    started = time.perf_counter()
    procs = [
        ctx.Process(target=_f3d_worker, args=(shard, str(out_dir), size, queue)) for shard in shards
    ]
    for p in procs:
        p.start()
    results = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    wall = time.perf_counter() - started
    cpu = cpu_seconds() - cpu0
    ok = sum(r["ok"] for r in results)
    return {
        "tool": "f3d",
        "files": len(paths),
        "ok": ok,
        "workers": workers,
        "wall_s": round(wall, 3),
        "renders_per_s": round(ok / wall, 2),
        "cpu_s_per_render": round(cpu / max(ok, 1), 4),
        "peak_rss_mb_per_worker": round(max(r["maxrss_mb"] for r in results), 1),
        "pngs": {str(p): str(out_dir / (p.stem + ".png")) for p in paths},
    }


# ---------------------------------------------------------------------------------------
# contact sheet
# ---------------------------------------------------------------------------------------


def contact_sheet(
    pairs: list[tuple[str, str | None, str | None]], out: Path, cell: int = 128
) -> None:
    """Two rows per block: ours above, f3d below, for the same files."""
    from PIL import Image, ImageDraw

    cols = 8
    blocks = math.ceil(len(pairs) / cols)
    label_h = 14
    width, height = cols * cell + 40, blocks * (2 * cell + label_h)
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, (name, ours, theirs) in enumerate(pairs):
        bx, by = 40 + (i % cols) * cell, (i // cols) * (2 * cell + label_h)
        for row, png in enumerate((ours, theirs)):
            y = by + row * cell
            draw.rectangle([bx + 1, y + 1, bx + cell - 2, y + cell - 2], fill=(236, 237, 240))
            if png and os.path.exists(png):
                with Image.open(png) as im:
                    tile = im.convert("RGBA")
                    tile.thumbnail((cell - 4, cell - 4), Image.LANCZOS)
                    offset = (bx + (cell - tile.width) // 2, y + (cell - tile.height) // 2)
                    sheet.paste(tile, offset, tile)
        draw.text((bx + 3, by + 2 * cell), name[:20], fill=(40, 40, 40))
        if i % cols == 0:
            draw.text((3, by + cell // 2 - 6), "ours", fill=(0, 0, 0))
            draw.text((3, by + cell + cell // 2 - 6), "f3d", fill=(0, 0, 0))
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)


# ---------------------------------------------------------------------------------------


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--corpus", type=Path, default=PROJECT.parent / "shared" / "corpus" / "trimesh-models"
    )
    parser.add_argument("--out", type=Path, default=PROJECT / "bench" / "out" / "render")
    parser.add_argument("--lanes", default="fast,slow")
    parser.add_argument("--fast-files", type=int, default=LANES["fast"][1])
    parser.add_argument("--slow-files", type=int, default=LANES["slow"][1])
    parser.add_argument("--fast-workers", type=int, default=LANES["fast"][2])
    parser.add_argument("--slow-workers", type=int, default=LANES["slow"][2])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--no-f3d", action="store_true")
    parser.add_argument(
        "--facts-rounds",
        type=int,
        default=1,
        help="Times ours runs with and without the geometry facts, alternating (the cost of "
        "the facts is the difference; 0 skips the runs without facts).",
    )
    parser.add_argument("--sheet", type=Path, default=PROJECT / "docs" / "render_ours_vs_f3d.png")
    args = parser.parse_args(argv)

    f3d_ok = not args.no_f3d
    if f3d_ok:
        try:
            import f3d

            f3d_version = f3d.__version__
        except ImportError:
            print("f3d is not installed (pip install f3d, the 'bench' extra): ours only")
            f3d_ok, f3d_version = False, None
    results = {
        "machine": {
            "cpus": len(os.sched_getaffinity(0)),
            "python": sys.version.split()[0],
            "f3d": f3d_version if f3d_ok else None,
        },
        "lanes": {},
    }
    rows = []
    sheet_pairs = []
    for lane in [x.strip() for x in args.lanes.split(",") if x.strip()]:
        target, _, _, timeout = LANES[lane]
        count = args.fast_files if lane == "fast" else args.slow_files
        workers = args.fast_workers if lane == "fast" else args.slow_workers
        t0 = time.perf_counter()
        paths = build_lane(args.corpus, args.out / lane, target, count, lane)
        sizes = [p.stat().st_size for p in paths]
        models = sorted({p.stem.split("_", 2)[2] for p in paths})
        print(
            f"[{lane}] {len(paths)} files, {sum(sizes) / len(sizes) / 1e6:.2f} MB average, "
            f"{len(models)} source models, built in {time.perf_counter() - t0:.1f} s"
        )
        load = busy_cpus()
        if load > 0.3:
            print(
                f"[{lane}] warning: {load:.1f} CPUs busy with other work before the run: "
                "figures are only meaningful on an otherwise idle machine"
            )
        for p in paths:  # page cache: both tools read from memory
            with open(p, "rb") as f:
                while f.read(1 << 24):
                    pass
        lane_results = [
            run_ours(paths, args.out / f"{lane}_thumbs_ours", workers, args.size, timeout)
        ]
        for round_ in range(args.facts_rounds):
            thumbs = args.out / f"{lane}_thumbs_ours"
            if round_:
                lane_results.append(run_ours(paths, thumbs, workers, args.size, timeout))
            lane_results.append(run_ours(paths, thumbs, workers, args.size, timeout, facts=False))
        if f3d_ok:
            lane_results.append(run_f3d(paths, args.out / f"{lane}_thumbs_f3d", workers, args.size))
        for r in lane_results:
            rows.append((lane, r))
            print(
                f"[{lane}] {r['tool']:5s} {r['ok']}/{r['files']} in {r['wall_s']:.1f} s: "
                f"{r['renders_per_s']:.1f} renders/s, {r['cpu_s_per_render'] * 1000:.1f} "
                f"ms CPU/render, peak {r['peak_rss_mb_per_worker']:.0f} MB/worker"
            )
        results["lanes"][lane] = {
            "target_triangles": target,
            "files": len(paths),
            "average_mb": round(sum(sizes) / len(sizes) / 1e6, 3),
            "source_models": models,
            "cpus_busy_before": round(load, 2),
            "results": [{k: v for k, v in r.items() if k != "pngs"} for r in lane_results],
        }
        with_facts = [r for r in lane_results if r["tool"] == "ours"]
        without = [r for r in lane_results if r["tool"] == "ours, no facts"]
        if with_facts and without:
            cpu_with = sorted(r["cpu_s_per_render"] for r in with_facts)[len(with_facts) // 2]
            cpu_without = sorted(r["cpu_s_per_render"] for r in without)[len(without) // 2]
            rate_with = sorted(r["renders_per_s"] for r in with_facts)[len(with_facts) // 2]
            rate_without = sorted(r["renders_per_s"] for r in without)[len(without) // 2]
            cost = {
                "cpu_ms_per_file_added": round((cpu_with - cpu_without) * 1000, 2),
                "cpu_added_percent": round(100 * (cpu_with / cpu_without - 1), 1),
                "time_added_percent": round(100 * (rate_without / rate_with - 1), 1),
            }
            results["lanes"][lane]["facts_cost"] = cost
            print(
                f"[{lane}] the facts add {cost['cpu_ms_per_file_added']:.2f} ms CPU per file "
                f"({cost['cpu_added_percent']:+.1f} % CPU, {cost['time_added_percent']:+.1f} % "
                "wall time per render; medians)"
            )
        if lane == "fast" and f3d_ok:
            theirs = next(r for r in lane_results if r["tool"] == "f3d")
            seen = set()
            for p in paths:
                stem = p.stem.split("_", 2)[2]
                if stem not in seen:
                    seen.add(stem)
                    sheet_pairs.append(
                        (stem, lane_results[0]["pngs"].get(str(p)), theirs["pngs"].get(str(p)))
                    )
    if sheet_pairs:
        contact_sheet(sheet_pairs[:16], args.sheet)
        print(f"contact sheet: {args.sheet} ({args.sheet.stat().st_size // 1024} KB)")
    out_json = args.out / "render_bench.json"
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(results, indent=2))
    print(f"figures: {out_json}")
    print("\n| lane | tool | files | workers | renders/s | CPU ms/render | peak MB/worker |")
    print("|---|---|---|---|---|---|---|")
    for lane, r in rows:
        print(
            f"| {lane} | {r['tool']} | {r['ok']}/{r['files']} | {r['workers']} | "
            f"{r['renders_per_s']:.1f} | {r['cpu_s_per_render'] * 1000:.1f} | "
            f"{r['peak_rss_mb_per_worker']:.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
