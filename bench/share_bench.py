"""Dedup on a library behind a slow share: `dam run` against jdupes, then our reads tuned.

    make bench-share                 # = .venv/bin/python bench/share_bench.py
    .venv/bin/python bench/share_bench.py [--library PATH] [--latency-ms 1] [--read-mb-s 110]
        [--read-latency-ms 1] [--repeats 2] [--parts headline,tuning] [--out PATH]

The share is dam_dagster_tests/slowshare.py (FUSE, read-only): every metadata request costs
--latency-ms, every read request --read-latency-ms and its bytes at --read-mb-s on one link
shared by all readers. The library (34,249 files, 1.9 GB) is made by bench/make_library.py
with `--files 34074 --scale 0.05` the first time (bench/out/share-library, git-ignored).

Every run is cold: the page cache dropped (as root) and the share mounted afresh, so nothing
is cached on the client side, and every run of ours starts from an empty data folder.
- headline: `dam run --skip-thumbnails` (what people run, Dagster included) against
  `jdupes -r -q` on the same share, --repeats times each, alternating; the answers compared.
- tuning: the core chain in one process (inventory, prefix + partial hashes, candidates, full
  hashes, duplicates), stage by stage, with one setting changed at a time: DAM_IO_THREADS, the
  walk's threads, the read advice for the small reads, the full-hash chunk size and the sizes
  of the 4 KiB prefix and 64 KiB head/tail reads. Each row also says what reached the share
  (requests, bytes, the share server's own CPU time).
Results: markdown tables on stdout, and JSON in bench/out/share_results.json.
"""

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

from dam_dagster.core.config import DEFAULTS  # noqa: E402
from dam_dagster_tests.slowshare import ShareUnavailable, SlowShare, fuse_problem  # noqa: E402

IO_THREADS = int(DEFAULTS["DAM_IO_THREADS"])

PY = sys.executable
BIN = Path(PY).parent

STAGES = """
import json, sys, time
from pathlib import Path
settings = json.loads(sys.argv[3])
from dam_dagster.core import dedup, hashing
for name in ("PREFIX_BYTES", "HEAD_BYTES", "TAIL_BYTES", "CHUNK_BYTES", "SMALL_READ_ADVICE"):
    if name in settings:
        setattr(hashing, name, settings[name])
hashing.SMALL_FILE_MAX = hashing.HEAD_BYTES + hashing.TAIL_BYTES
from dam_dagster.core.inventory import update_inventory
from dam_dagster.core.store import Catalogue
cat = Catalogue(sys.argv[2])
io, walk = settings["io_threads"], settings.get("walk_threads", settings["io_threads"])
t = {}
def timed(name, fn, *a, **kw):
    s = time.perf_counter()
    out = fn(*a, **kw)
    t[name] = time.perf_counter() - s
    return out
inv = timed("inventory", update_inventory, cat, [Path(sys.argv[1])], io_threads=walk)
p = timed("partial_hashes", dedup.update_partial_hashes, cat, io_threads=io)
c = timed("collision_candidates", dedup.update_collision_candidates, cat)
f = timed("full_hashes", dedup.update_full_hashes, cat, io_threads=io)
d = timed("duplicates", dedup.update_duplicates, cat)
print(json.dumps({"stages": t, "files": inv.files_seen, "prefix_reads": p.prefix_reads,
    "partial_files_read": p.files_read, "full_files_read": f.files_read,
    "bytes_read": p.bytes_read + f.bytes_read,
    "groups": sorted(sorted([g.original, *g.duplicates]) for g in dedup.duplicate_groups(cat))}))
"""


def drop_caches() -> bool:
    try:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def ensure_library(path: Path) -> None:
    if not path.exists():
        subprocess.run(
            [PY, str(HERE / "make_library.py"), str(path), "--files", "34074", "--scale", "0.05"],
            check=True,
        )


def ensure_jdupes() -> None:
    if not shutil.which("jdupes") and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "jdupes"],
            check=False,
            stdout=subprocess.DEVNULL,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
    if not shutil.which("jdupes"):
        sys.exit("jdupes is missing: sudo apt-get install -y jdupes")


def children_cpu() -> float:
    usage = os.times()
    return usage.children_user + usage.children_system


class Run:
    """One cold run: caches dropped, the share mounted afresh, one command, then unmounted."""

    def __init__(self, args, library: Path, mountpoint: Path):
        self.args, self.library, self.mountpoint = args, library, mountpoint

    def __call__(self, command) -> dict:
        drop_caches()
        share = SlowShare(
            self.library,
            self.mountpoint,
            latency_ms=self.args.latency_ms,
            read_mb_s=self.args.read_mb_s,
            read_latency_ms=self.args.read_latency_ms,
        )
        share.mount()
        try:
            cpu, load = children_cpu(), os.getloadavg()[0]
            started = time.perf_counter()
            result = command(share.path)
            result["load_before"] = load
            result["seconds"] = time.perf_counter() - started
        finally:
            share.unmount()
        result["client_cpu_s"] = children_cpu() - cpu - share.stats.cpu_s
        result["share"] = {
            "requests": share.stats.requests,
            "read_mb": share.stats.read_bytes / 1e6,
            "link_busy_s": share.stats.link_busy_s,
            "server_cpu_s": share.stats.cpu_s,
            "max_in_flight": share.stats.max_in_flight,
        }
        share.close()
        return result


def local_run(library: Path, cold: bool):
    """The same stage script on the library itself (no share), cold or warm: what a default
    tuned for shares costs on a local disk."""

    def call(command) -> dict:
        if cold:
            drop_caches()
        else:
            command(library)  # a first pass fills the page cache
        cpu, load = children_cpu(), os.getloadavg()[0]
        started = time.perf_counter()
        result = command(library)
        result["load_before"] = load
        result["seconds"] = time.perf_counter() - started
        result["client_cpu_s"] = children_cpu() - cpu
        return result

    return call


def run_checked(cmd, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}): {proc.stderr[-3000:]}")
    return proc


def relative_groups(groups, root) -> list[list[str]]:
    return sorted(sorted(os.path.relpath(p, root) for p in g) for g in groups)


def jdupes(mount: Path) -> dict:
    out = run_checked(["jdupes", "-r", "-q", str(mount)]).stdout
    groups = [b.splitlines() for b in out.strip().split("\n\n") if b.strip()]
    return {"groups": relative_groups(groups, mount)}


def dam_run(scratch: Path, env_extra: dict):
    def command(mount: Path) -> dict:
        data = scratch / "data"
        shutil.rmtree(data, ignore_errors=True)
        env = {
            **os.environ,
            "DAM_LIBRARY_ROOTS": str(mount),
            "DAM_DATA_DIR": str(data),
            "DAGSTER_HOME": str(scratch / "dagster_home"),
            **env_extra,
        }
        shutil.rmtree(scratch / "dagster_home", ignore_errors=True)
        (scratch / "dagster_home").mkdir()
        run_checked([str(BIN / "dam"), "run", "--skip-thumbnails"], env=env, cwd=scratch)
        dups = run_checked(
            [str(BIN / "dam"), "duplicates", "--format", "json"], env=env, cwd=scratch
        ).stdout
        groups = [[g["original"], *g["duplicates"]] for g in json.loads(dups)]
        return {"groups": relative_groups(groups, mount)}

    return command


def stages(scratch: Path, settings: dict):
    def command(mount: Path) -> dict:
        data = scratch / "data"
        shutil.rmtree(data, ignore_errors=True)
        out = run_checked([PY, "-c", STAGES, str(mount), str(data), json.dumps(settings)]).stdout
        result = json.loads(out)
        result["groups"] = relative_groups(result["groups"], mount)
        return result

    return command


# One setting changed at a time, from the defaults (DAM_IO_THREADS, the walk on as many).
def tuning_matrix(defaults: dict) -> list[tuple[str, dict]]:
    rows = [("defaults", {})]
    rows += [
        (f"DAM_IO_THREADS={n}", {"io_threads": n, "walk_threads": n})
        for n in (4, 8, 16, 32, 64)
        if n != defaults["io_threads"]
    ]
    rows += [
        (f"walk threads {n}", {"walk_threads": n})
        for n in (4, 8, 16, 32)
        if n != defaults["io_threads"]
    ]
    rows += [
        ("small reads: kernel readahead", {"SMALL_READ_ADVICE": False}),
        ("full-hash chunk 256 KiB", {"CHUNK_BYTES": 256 * 1024}),
        ("full-hash chunk 4 MiB", {"CHUNK_BYTES": 4 * 1024 * 1024}),
        ("prefix 16 KiB", {"PREFIX_BYTES": 16 * 1024}),
        ("prefix 64 KiB", {"PREFIX_BYTES": 64 * 1024}),
        ("head/tail 16 KiB", {"HEAD_BYTES": 16 * 1024, "TAIL_BYTES": 16 * 1024}),
        ("head/tail 256 KiB", {"HEAD_BYTES": 256 * 1024, "TAIL_BYTES": 256 * 1024}),
    ]
    return [(name, {**defaults, **change}) for name, change in rows]


def spread(runs: list[dict], key: str) -> str:
    """Median of the runs, with the range when there are several: `2.1 (1.9-2.4)`."""
    values = [r[key] if key in r else r["stages"][key] for r in runs]
    med = statistics.median(values)
    if len(values) == 1:
        return f"{med:.1f}"
    return f"{med:.1f} ({min(values):.1f}-{max(values):.1f})"


def fmt_requests(req: dict) -> str:
    meta = sum(v for k, v in req.items() if k != "read")
    return f"{meta / 1000:.1f}k / {req.get('read', 0) / 1000:.1f}k"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--library", type=Path, default=HERE / "out" / "share-library")
    ap.add_argument("--latency-ms", type=float, default=1.0)
    ap.add_argument("--read-mb-s", type=float, default=110.0)
    ap.add_argument("--read-latency-ms", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--parts", default="headline,tuning,local")
    ap.add_argument("--io-threads", type=int, default=None, help="DAM_IO_THREADS for the rows")
    ap.add_argument(
        "--also-io-threads",
        default="8",
        help="headline: dam run also with these DAM_IO_THREADS (comma-separated; '' for none)",
    )
    ap.add_argument("--rows", default="", help="tuning rows to run (names, comma-separated)")
    ap.add_argument("--out", type=Path, default=HERE / "out" / "share_results.json")
    args = ap.parse_args()
    problem = fuse_problem()
    if problem:
        sys.exit(f"cannot mount the test share: {problem}")
    ensure_library(args.library)
    ensure_jdupes()
    if not drop_caches():
        print(
            "note: the page cache cannot be dropped (not root): runs are not cold", file=sys.stderr
        )
    parts = set(args.parts.split(","))
    scratch = Path(tempfile.mkdtemp(prefix="dam-share-bench-"))
    run = Run(args, args.library, scratch / "mnt")
    results: dict = {
        "config": {
            "library": str(args.library),
            "latency_ms": args.latency_ms,
            "read_mb_s": args.read_mb_s,
            "read_latency_ms": args.read_latency_ms,
        }
    }
    answers = {}
    try:
        if "headline" in parts:
            env = {} if args.io_threads is None else {"DAM_IO_THREADS": str(args.io_threads)}
            tools = [("jdupes", jdupes), ("dam run --skip-thumbnails", dam_run(scratch, env))]
            for n in (int(x) for x in args.also_io_threads.split(",") if x):
                if n != (args.io_threads or IO_THREADS):
                    name = f"dam run --skip-thumbnails, DAM_IO_THREADS={n}"
                    tools.append((name, dam_run(scratch, {"DAM_IO_THREADS": str(n)})))
            rows = results["headline"] = {tool: [] for tool, _ in tools}
            for i in range(args.repeats):
                for tool, command in tools:
                    r = run(command)
                    answers[tool] = r.pop("groups")
                    rows[tool].append(r)
                    print(f"[{i + 1}] {tool}: {r['seconds']:.1f} s", file=sys.stderr, flush=True)
            print(
                "\n| tool (cold, same share) | seconds | client CPU s | requests meta / read |"
                " MB over the link | share server CPU s |"
            )
            print("|---|---|---|---|---|---|")
            for tool, runs in rows.items():
                secs = " / ".join(f"{r['seconds']:.1f}" for r in runs)
                cpu = " / ".join(f"{r['client_cpu_s']:.1f}" for r in runs)
                last = runs[-1]["share"]
                print(
                    f"| {tool} | {secs} | {cpu} | {fmt_requests(last['requests'])} |"
                    f" {last['read_mb']:.0f} | {last['server_cpu_s']:.1f} |"
                )
            med = {t: statistics.median(r["seconds"] for r in runs) for t, runs in rows.items()}
            ratio = med["dam run --skip-thumbnails"] / med["jdupes"]
            print(f"\ndam / jdupes (medians): {ratio:.2f}")
            results["headline_ratio"] = ratio
        if "tuning" in parts:
            defaults = {"io_threads": args.io_threads or IO_THREADS}
            table = results["tuning"] = []
            print(
                "\n| setting (cold) | total s | walk s | partial s | full s |"
                " requests meta / read | MB over the link | server CPU s |"
            )
            print("|---|---|---|---|---|---|---|---|")
            wanted = [w for w in args.rows.split(",") if w]
            for name, settings in tuning_matrix(defaults):
                if wanted and name not in wanted:
                    continue
                runs = []
                for _ in range(args.repeats):
                    r = run(stages(scratch, settings))
                    answers[f"ours ({name})"] = r.pop("groups")
                    runs.append(r)
                table.append({"setting": name, "settings": settings, "runs": runs})
                share = runs[-1]["share"]
                print(
                    f"| {name} | {spread(runs, 'seconds')} | {spread(runs, 'inventory')} |"
                    f" {spread(runs, 'partial_hashes')} | {spread(runs, 'full_hashes')} |"
                    f" {fmt_requests(share['requests'])} | {share['read_mb']:.0f} |"
                    f" {spread([r['share'] for r in runs], 'server_cpu_s')} |",
                    flush=True,
                )
        if "local" in parts:
            table = results["local"] = []
            print(
                "\n| on the local disk (no share) | cache | total s | walk s | partial s | full s |"
            )
            print("|---|---|---|---|---|---|")
            for threads in sorted({8, 16, IO_THREADS}):
                for cold in (True, False):
                    runs = []
                    for _ in range(args.repeats):
                        r = local_run(args.library, cold)(stages(scratch, {"io_threads": threads}))
                        answers[f"local {threads} {cold}"] = r.pop("groups")
                        runs.append(r)
                    row = {"io_threads": threads, "cold": cold, "runs": runs}
                    table.append(row)
                    print(
                        f"| DAM_IO_THREADS={threads} | {'cold' if cold else 'warm'} |"
                        f" {spread(runs, 'seconds')} | {spread(runs, 'inventory')} |"
                        f" {spread(runs, 'partial_hashes')} | {spread(runs, 'full_hashes')} |",
                        flush=True,
                    )
    except ShareUnavailable as exc:
        sys.exit(f"the share did not mount: {exc}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    distinct = {json.dumps(v) for v in answers.values()}
    results["same_answer"] = len(distinct) == 1
    results["duplicate_groups"] = len(next(iter(answers.values()), []))
    print(
        f"\nsame duplicate groups from every run: {results['same_answer']} "
        f"({results['duplicate_groups']} groups)"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
