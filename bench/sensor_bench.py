"""Change detection on a share: the library sensor's ticks on a million files behind the test
share, and how long a new file and a changed one take to reach the catalogue.

    make bench-sensor        # = .venv/bin/python bench/sensor_bench.py
    .venv/bin/python bench/sensor_bench.py [--library PATH] [--latency-ms 1] [--ticks 5]

The library (a million small files; bench/make_library.py --files 1000000 --scale 0.015,
made the first time under bench/out/scale/lib1m, git-ignored) is mounted behind
dam_dagster_tests/slowshare.py at --latency-ms per metadata request (FUSE, read-only). Then,
as the daemon would, but in this process and timed:
1. the complete walk the sensor asks for on a new catalogue (`file_inventory`, complete);
2. --ticks ticks of `library_sensor` with nothing changed: each tick's time (the goal: none
   over half of Dagster's 60 s sensor limit, whatever the library size);
3. a new file written into a folder of the source: ticks until one asks for an inventory of
   that folder, then that inventory; the time from the write to the file in the catalogue,
   plus the sensor interval a daemon waits between ticks (DAM_SENSOR_INTERVAL_S) at worst;
4. a file rewritten in place (its folder's mtime does not move): the ticks see nothing, and
   the scheduled complete walk (dam_complete_walk) catalogues it: its time.
Results: a table on stdout and bench/out/sensor_results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent
sys.path.insert(0, str(PROJECT))

import dagster as dg  # noqa: E402

from dam_dagster.core.config import env  # noqa: E402
from dam_dagster.core.inventory import update_inventory  # noqa: E402
from dam_dagster.core.store import Catalogue  # noqa: E402
from dam_dagster.resources import CatalogueResource, LibraryResource  # noqa: E402
from dam_dagster.sensors import library_sensor  # noqa: E402
from dam_dagster_tests.slowshare import SlowShare, fuse_problem  # noqa: E402


def tick(share: Path, data: Path, cursor: str | None):
    res = {
        "library": LibraryResource(roots=str(share), io_threads=16),
        "catalogue": CatalogueResource(data_dir=str(data)),
    }
    started = time.perf_counter()
    with dg.build_sensor_context(cursor=cursor, resources=res) as ctx:
        result = library_sensor(ctx)
    seconds = time.perf_counter() - started
    requests = list(getattr(result, "run_requests", None) or [])
    reason = getattr(result, "skip_message", None) or getattr(
        getattr(result, "skip_reason", None), "skip_message", ""
    )
    return seconds, requests, getattr(result, "cursor", cursor), reason


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--library", type=Path, default=HERE / "out" / "scale" / "lib1m")
    ap.add_argument("--latency-ms", type=float, default=1.0)
    ap.add_argument("--ticks", type=int, default=5)
    args = ap.parse_args()
    problem = fuse_problem()
    if problem:
        sys.exit(f"the test share cannot be mounted here: {problem}")
    if not args.library.is_dir():
        subprocess.run([sys.executable, str(HERE / "make_library.py"), str(args.library),
                        "--files", "1000000", "--scale", "0.015"], check=True)  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="dam-sensor-bench-"))
    data = work / "data"
    out: dict = {"latency_ms": args.latency_ms, "library": str(args.library)}
    folder = next(p for p in sorted(args.library.iterdir()) if p.is_dir())
    folder = next(p for p in sorted(folder.iterdir()) if p.is_dir())
    new_file = folder / "new arrival.stl"
    victim = next(p for p in sorted(folder.iterdir()) if p.is_file())
    original = victim.read_bytes()
    try:
        with SlowShare(args.library, work / "share", latency_ms=args.latency_ms) as share:
            root = share.path
            started = time.perf_counter()
            stats = update_inventory(Catalogue(data), [root], io_threads=16)
            out["complete_walk_s"] = round(time.perf_counter() - started, 1)
            out["files"], out["folders"] = stats.files_seen, stats.folders_listed
            print(
                f"complete walk: {stats.files_seen:,} files, {stats.folders_listed:,} "
                f"folders in {out['complete_walk_s']} s",
                flush=True,
            )
            cursor, quiet = None, []
            for _ in range(args.ticks):
                seconds, requests, cursor, reason = tick(root, data, cursor)
                quiet.append(seconds)
                print(f"  tick {seconds:.2f} s: {reason or requests}", flush=True)
            out["quiet_ticks_s"] = [round(s, 2) for s in quiet]

            written = time.perf_counter()
            new_file.write_bytes(b"solid new\nendsolid new\n")
            time.sleep(1.1)  # past the share's 1 s attribute cache, as a later tick would be
            ticks_to_see = 0
            while True:
                seconds, requests, cursor, reason = tick(root, data, cursor)
                ticks_to_see += 1
                if requests or ticks_to_see > 20:
                    break
            [request] = requests
            asked = request.run_config["ops"]["file_inventory"]["config"]["folders"]
            shown = str(root / new_file.relative_to(args.library).parent)
            from dam_dagster.core.changes import decode_folder, folders_by_root

            only = folders_by_root([decode_folder(f) for f in asked], [root])
            started = time.perf_counter()
            partial = update_inventory(Catalogue(data), [root], only=only, io_threads=16)
            out["partial_inventory_s"] = round(time.perf_counter() - started, 2)
            out["new_file_seen_after_ticks"] = ticks_to_see
            out["new_file_catalogued_s"] = round(time.perf_counter() - written, 1)
            out["new_file_new_rows"] = partial.new_files
            assert asked and shown in [decode_folder(f) for f in asked], asked
            print(
                f"new file: asked after {ticks_to_see} tick(s), partial inventory "
                f"{out['partial_inventory_s']} s, {partial.new_files} new",
                flush=True,
            )

            st = os.stat(victim)
            victim.write_bytes(original[::-1])  # same size, new content
            os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
            time.sleep(1.1)
            seconds, requests, cursor, reason = tick(root, data, cursor)
            out["rewrite_seen_by_a_tick"] = bool(requests)
            started = time.perf_counter()
            complete = update_inventory(Catalogue(data), [root], io_threads=16)
            out["scheduled_walk_s"] = round(time.perf_counter() - started, 1)
            out["scheduled_walk_changed"] = complete.changed_files
            print(
                f"rewritten file: tick saw it: {bool(requests)}; complete walk "
                f"{out['scheduled_walk_s']} s, {complete.changed_files} changed",
                flush=True,
            )
            out["share_stats"] = share.stats.__dict__ if share.stats else None
    finally:
        new_file.unlink(missing_ok=True)
        victim.write_bytes(original)
        shutil.rmtree(work, ignore_errors=True)
    interval = int(env("DAM_SENSOR_INTERVAL_S"))
    out["sensor_interval_s"] = interval
    out["new_file_worst_case_s"] = round(interval + max(quiet) + out["partial_inventory_s"], 1)
    (HERE / "out").mkdir(exist_ok=True)
    (HERE / "out" / "sensor_results.json").write_text(json.dumps(out, indent=2, default=str))
    print(f"\nquiet ticks: median {statistics.median(quiet):.2f} s, max {max(quiet):.2f} s "
          f"(limit: 30 s); a new file in the catalogue within {out['new_file_worst_case_s']} s "
          f"at worst ({interval} s between ticks); a rewrite: the scheduled walk, "
          f"{out['scheduled_walk_s']} s; load {os.getloadavg()}")  # fmt: skip


if __name__ == "__main__":
    main()
