"""Scale on one machine: what people run (`dam run`, `dam status`) against jdupes, on a
million small files and on the 34,000-file library, with peak memory and the Dagster cost.

    make bench-scale                          # both sizes (makes the libraries if missing)
    python bench/scale_bench.py --sizes 34k   # or 1m, or 250k,500k,1m for the memory curve

For each size, in one run and on the same tree (warm page cache unless --cold, which drops
the caches before each measured command; needs root):
- jdupes -r -q (the reference), twice;
- `dam run --skip-thumbnails` on an empty data folder (the first run);
- the same again, unchanged (no Dagster run: `dam run` walks and finds nothing to do);
- `dam run --skip-thumbnails --force` unchanged (the chain runs as one Dagster run: its cost
  over the core stages is the per-run cost of the Dagster path, which the UI's runs pay too);
- `dam status`;
- at 34k also the whole `dam run` (thumbnails included) on an unchanged library;
- with --pairs N, N more pairs (jdupes, then a first `dam run --skip-thumbnails` on an empty
  data folder) one after the other: this machine's speed drifts by 20-30 % from one minute to
  the next, so the ratio of each pair and their median say more than one pair.
Wall time and peak resident memory of each command: the whole tree of processes summed
(`dam` and its hashing helpers), sampled from /proc every 0.1 s. Results: a markdown table
on stdout and bench/out/scale_results.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
BIN = Path(sys.executable).parent
# The million-file library is the (1,000,323 files, 7 GB): 7.62 GB here. It was 14.66
# GB (scale 0.015) until 2026-12-02, when this machine's page cache stopped holding it whole
# and "warm" runs read from the disk (docs/BENCHMARKS.md, "Scale on one machine").
SIZES = {
    "34k": {"files": 34_074, "scale": 0.05},
    "250k": {"files": 250_000, "scale": 0.0075},
    "500k": {"files": 500_000, "scale": 0.0075},
    "1m": {"files": 1_000_000, "scale": 0.0075},
}


def drop_caches() -> None:
    subprocess.run(["sync"], check=False)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def _tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants (the hashing helpers, the render
    workers), from /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
        rss[int(entry)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += rss.get(p, 0)
        todo.extend(children.get(p, []))
    return total / 2**20


def measure(cmd: list[str], env: dict, cold: bool) -> dict:
    """Wall seconds and peak resident memory (MB) of one command: the largest process, and
    the whole tree of processes summed (sampled every 0.1 s)."""
    if cold:
        drop_caches()
    started = time.perf_counter()
    proc = subprocess.Popen(
        cmd, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    peak_tree = 0.0
    out: dict = {}
    reader = threading.Thread(target=lambda: out.update(zip(("stdout", "stderr"),
                                                            proc.communicate())))  # fmt: skip
    reader.start()
    while reader.is_alive():
        peak_tree = max(peak_tree, _tree_rss_mb(proc.pid))
        reader.join(0.1)
    wall = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} exited {proc.returncode}:\n{out.get('stderr', '')[-3000:]}")
    return {"seconds": round(wall, 2), "peak_tree_mb": round(peak_tree, 1),
            "largest_process_mb_so_far": round(usage.ru_maxrss / 1024, 1),
            "stdout": out.get("stdout", ""), "stderr": out.get("stderr", "")}  # fmt: skip


def ensure_library(size: str, root: Path) -> Path:
    lib = root / f"lib{size}"
    made = root / f"lib{size}.made"  # beside the library, not in it: the spec it was made with
    spec = SIZES[size]
    if not made.exists() or made.read_text().strip() != json.dumps(spec):  # made otherwise
        shutil.rmtree(lib, ignore_errors=True)
        subprocess.run(
            [sys.executable, str(HERE / "make_library.py"), str(lib), "--files",
             str(spec["files"]), "--scale", str(spec["scale"])],
            check=True,
        )  # fmt: skip
        made.write_text(json.dumps(spec))
    return lib


def bench_size(size: str, root: Path, cold: bool, catalogue_url: str = "", pairs: int = 0) -> dict:
    lib = ensure_library(size, root)
    data = root / f"data{size}"
    shutil.rmtree(data, ignore_errors=True)
    env = {"DAM_LIBRARY_ROOTS": str(lib), "DAM_DATA_DIR": str(data), "DAGSTER_HOME": "",
           "DAM_CATALOGUE_URL": catalogue_url}  # fmt: skip
    dam = str(BIN / "dam")
    res: dict = {"size": size}
    res["jdupes"] = [measure(["jdupes", "-r", "-q", str(lib)], {}, cold) for _ in range(2)]
    res["first"] = measure([dam, "run", "--skip-thumbnails"], env, cold)
    res["rescan"] = measure([dam, "run", "--skip-thumbnails"], env, cold)
    res["forced"] = measure([dam, "run", "--skip-thumbnails", "--force"], env, cold)
    res["status"] = measure([dam, "status"], env, cold)
    if size == "34k":
        measure([dam, "run"], env, False)  # the thumbnails once (fake STLs fail fast)
        res["unchanged_full"] = measure([dam, "run"], env, cold)
    res["pairs"] = []
    for _ in range(pairs):
        j = measure(["jdupes", "-r", "-q", str(lib)], {}, cold)
        shutil.rmtree(data, ignore_errors=True)
        d = measure([dam, "run", "--skip-thumbnails"], env, cold)
        res["pairs"].append({"jdupes": j["seconds"], "dam": d["seconds"],
                             "ratio": round(d["seconds"] / j["seconds"], 2),
                             "dam_peak_tree_mb": d["peak_tree_mb"]})  # fmt: skip
    status = json.loads(measure([dam, "status", "--json"], env, False)["stdout"])
    res["files"], res["duplicate_groups"] = status["files"], status["duplicate_groups"]
    res["jdupes_groups"] = sum(
        1 for block in res["jdupes"][0]["stdout"].split("\n\n") if block.strip()
    )
    for key in ("jdupes", "first", "rescan", "forced", "status", "unchanged_full"):
        for m in res.get(key, []) if key == "jdupes" else [res[key]] if key in res else []:
            m.pop("stdout", None)
            m.pop("stderr", None)
    return res


def table(results: list[dict]) -> str:
    lines = [
        "| files | jdupes | first `dam run --skip-thumbnails` | unchanged rescan | "
        "forced rescan (one Dagster run) | `dam status` | unchanged `dam run` |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        j = min(r["jdupes"], key=lambda m: m["seconds"])

        def cell(key, r=r):
            if key not in r:
                return "-"
            m = r[key]
            return f"{m['seconds']} s, {m['peak_tree_mb']:.0f} MB"

        ratio = r["first"]["seconds"] / j["seconds"]
        lines.append(
            f"| {r['files']:,} | {j['seconds']} s, {j['peak_tree_mb']:.0f} MB | {cell('first')} "
            f"({ratio:.2f}x jdupes) | {cell('rescan')} | {cell('forced')} | {cell('status')} | "
            f"{cell('unchanged_full')} |"
        )
    return "\n".join(lines)


def catalogue_urls(stack: contextlib.ExitStack):
    """A PostgreSQL server of the test suite's kind (dam_dagster_tests/cluster.py), and a new
    database in it for each size."""
    sys.path.insert(0, str(HERE.parent))
    from dam_dagster_tests.cluster import postgres

    pg = stack.enter_context(postgres())
    for n in range(1, 100):
        yield pg.database(f"bench_{n}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="34k,1m")
    ap.add_argument("--root", type=Path, default=OUT / "scale")
    ap.add_argument("--cold", action="store_true", help="drop the page cache before each run")
    ap.add_argument("--pairs", type=int, default=0,
                    help="N more (jdupes, first dam run) pairs, one after the other")  # fmt: skip
    ap.add_argument(
        "--catalogue",
        choices=("duckdb", "postgres"),
        default="duckdb",
        help="postgres: the catalogue in a PostgreSQL server this bench starts on this machine "
        "(DAM_CATALOGUE_URL, a new database per size); its memory is not in the figures",
    )
    args = ap.parse_args()
    if not shutil.which("jdupes"):
        if os.geteuid() == 0 and shutil.which("apt-get"):
            subprocess.run(["apt-get", "install", "-y", "-q", "jdupes"], check=False,
                           stdout=subprocess.DEVNULL)  # fmt: skip
        if not shutil.which("jdupes"):
            sys.exit("jdupes is missing: sudo apt-get install -y jdupes")
    args.root.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        urls = catalogue_urls(stack) if args.catalogue == "postgres" else iter(lambda: "", None)
        results = [
            bench_size(s.strip(), args.root, args.cold, next(urls), args.pairs)
            for s in args.sizes.split(",")
        ]
    OUT.mkdir(exist_ok=True)
    suffix = "" if args.catalogue == "duckdb" else f"_{args.catalogue}"
    (OUT / f"scale_results{suffix}.json").write_text(json.dumps(results, indent=2))
    print(table(results))
    for r in results:
        if r.get("pairs"):
            median = statistics.median(p["ratio"] for p in r["pairs"])
            print(f"\n{r['files']:,} files, pairs (jdupes s, first dam run s, ratio): "
                  + "; ".join(f"{p['jdupes']} / {p['dam']} / {p['ratio']}x" for p in r["pairs"])
                  + f"; median ratio {median:.2f}x")  # fmt: skip
    print(f"\nload average at the end: {os.getloadavg()}; cold={args.cold}")


if __name__ == "__main__":
    main()
