"""The cost of several machines: the celery executor against the in-process one, on this machine.

    .venv/bin/python bench/cluster_bench.py                # 400 fast-lane files, 3 repeats
    .venv/bin/python bench/cluster_bench.py --files 1000 --repeat 5

Starts a real PostgreSQL (Dagster's storage, for both configurations, so that only the executor
differs) and Redis, builds a library of fast-lane STLs (bench/render_corpus.py: 0.7 MB, ~14k
triangles, every file's content different), and runs the same runs as the head launches them
(`dagster job execute -m dam_dagster.definitions`, a fresh process per run, as the daemon's
run launcher does), timed from the command's start to its exit:

1. DAM_EXECUTOR=in_process: every step in the run's process;
2. DAM_EXECUTOR=celery with two `dam worker` processes (one step at a time each) on the
   queues io,render_cpu.

Runs, in order, in each configuration (its own data folder): the dedup chain on the new
library (7 steps), the render partition `<1MB` (all the files; DAM_FAST_WORKERS render
processes), `similar_models` (1 step), then `--repeat` times each of an unchanged dedup chain
and `similar_models`: their difference between the two configurations is the per-run and
per-step cost of the celery path. Writes bench/out/cluster/cluster_bench.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(PROJECT))

from render_corpus import build_lane  # noqa: E402

from dam_dagster_tests.cluster import BIN, Worker, postgres, redis  # noqa: E402
from dam_dagster_tests.conftest import CORPUS  # noqa: E402


def timed_run(env: dict, cwd: Path, job: str, partition: str | None, log: Path) -> float:
    command = [str(BIN / "dagster"), "job", "execute", "-m", "dam_dagster.definitions", "-j", job]
    if partition:
        command += ["--tags", json.dumps({"dagster/partition": partition})]
    started = time.perf_counter()
    with open(log, "ab") as out:
        code = subprocess.call(command, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"{job} failed ({code}): see {log}")
    return seconds


def step_seconds(env: dict, job: str) -> dict[str, float]:
    """Seconds inside the steps of the last run of `job` (STEP_START to STEP_SUCCESS)."""
    code = f"""
import json, dagster as dg
with dg.DagsterInstance.get() as i:
    [run] = i.get_runs(filters=dg.RunsFilter(job_name={job!r}), limit=1)
    start, out = {{}}, {{}}
    for r in i.all_logs(run.run_id):
        e = r.dagster_event
        if e is None: continue
        if e.event_type_value == "STEP_START": start[e.step_key] = r.timestamp
        if e.event_type_value == "STEP_SUCCESS": out[e.step_key] = r.timestamp - start[e.step_key]
    print(json.dumps(out))
"""
    text = subprocess.check_output([str(BIN / "python"), "-c", code], env=env, text=True)
    return json.loads(text.strip().splitlines()[-1])


def configuration(name: str, base: Path, library: Path, pg, broker: str, args) -> dict:
    data = base / f"data-{name}"
    shutil.rmtree(data, ignore_errors=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DAM_")}
    env.update(
        DAM_LIBRARY_ROOTS=str(library),
        DAM_DATA_DIR=str(data),
        DAGSTER_HOME=str(data / "dagster_home"),
        DAM_EXECUTOR=name,
        DAM_CELERY_BROKER=broker,
        DAM_DAGSTER_STORAGE_URL=pg.url,
        DAM_FAST_WORKERS=str(args.render_workers),
        PYTHONUNBUFFERED="1",
    )
    subprocess.check_call(
        [str(BIN / "python"), "-c", "from dam_dagster.home import prepare_dagster_home as p; p()"],
        env=env,
        cwd=base,
    )
    log = base / f"runs-{name}.log"
    result: dict = {"executor": name}
    with ExitStack() as stack:
        if name == "celery":
            workers = [
                Worker(n, "io,render_cpu", env, base, base / f"worker-{n}.log")
                for n in ("alpha", "beta")
            ]
            stack.callback(lambda: [w.stop() for w in workers])
            for w in workers:
                w.wait_ready()
        result["dedup, first run (s)"] = timed_run(env, base, "dedup", None, log)
        result["render <1MB (s)"] = timed_run(env, base, "thumbnails_fast_job", "<1MB", log)
        result["render step (s)"] = step_seconds(env, "thumbnails_fast_job")["thumbnails_fast"]
        result["similar_models, first (s)"] = timed_run(env, base, "similar_models_job", None, log)
        unchanged = [timed_run(env, base, "dedup", None, log) for _ in range(args.repeat)]
        result["dedup unchanged (s)"] = unchanged
        result["dedup unchanged, steps (s)"] = sum(step_seconds(env, "dedup").values())
        result["similar_models unchanged (s)"] = [
            timed_run(env, base, "similar_models_job", None, log) for _ in range(args.repeat)
        ]
        if name == "celery":
            result["workers used"] = sorted(
                w.name for w in workers if "Task execute_plan" in w.text()
            )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=400)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--render-workers", type=int, default=2)
    parser.add_argument(
        "--order", default="in_process,celery", help="which configuration runs first"
    )
    parser.add_argument("--out", type=Path, default=PROJECT / "bench" / "out" / "cluster")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    library = args.out / "library"
    build_lane(CORPUS, library, 14_000, args.files, "fast")
    for path in library.iterdir():  # from the page cache, for both configurations alike
        path.read_bytes()
    results = []
    with postgres() as pg, redis(args.out / "redis") as broker:
        for name in args.order.split(","):
            print(f"{name} ...", file=sys.stderr, flush=True)
            results.append(configuration(name, args.out, library, pg, broker, args))
    inproc, celery = sorted(results, key=lambda r: r["executor"] != "in_process")
    median = statistics.median
    summary = {
        "order": args.order,
        "files": args.files,
        "render processes": args.render_workers,
        "per run, 1 step (similar_models unchanged), s": [
            median(inproc["similar_models unchanged (s)"]),
            median(celery["similar_models unchanged (s)"]),
        ],
        "per run, 7 steps (dedup unchanged), s": [
            median(inproc["dedup unchanged (s)"]),
            median(celery["dedup unchanged (s)"]),
        ],
        "render partition, s": [inproc["render <1MB (s)"], celery["render <1MB (s)"]],
        "render step alone, s": [inproc["render step (s)"], celery["render step (s)"]],
    }
    extra_7 = summary["per run, 7 steps (dedup unchanged), s"]
    extra_1 = summary["per run, 1 step (similar_models unchanged), s"]
    summary["celery: extra per step, s"] = round(
        ((extra_7[1] - extra_7[0]) - (extra_1[1] - extra_1[0])) / 6, 2
    )
    summary["celery: extra per run (1 step), s"] = round(extra_1[1] - extra_1[0], 2)
    (args.out / "cluster_bench.json").write_text(
        json.dumps({"summary": summary, "runs": results}, indent=2)
    )
    print(json.dumps(summary, indent=2))
    print(json.dumps(results, indent=2), file=sys.stderr)


if __name__ == "__main__":
    main()
