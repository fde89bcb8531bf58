"""Dedup speed: our core chain against jdupes and rdfind on the same tree, cold and warm.

    make bench-dedup                       # generates bench/out/library first if missing
    python bench/dedup_bench.py [--library PATH] [--repeats 3]

For each tool: a cold run (page cache dropped, where permitted: root on Linux) and a warm run,
each as the whole command a person would type (our chain as a fresh Python process with an
empty catalogue). Then our unchanged rescan (the catalogue kept), cold and warm; then the
Dagster overhead of one run (the same rescan through `dg.materialize`, and through the
`dagster asset materialize` command). The three tools' answers are compared group by group.
Results: printed as a markdown table, and bench/out/dedup_results.json.
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
PY = sys.executable
BIN = Path(PY).parent


def drop_caches() -> bool:
    try:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def ensure_tools() -> None:
    missing = [t for t in ("jdupes", "rdfind") if not shutil.which(t)]
    if missing and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(
            ["apt-get", "install", "-y", "-q", *missing],
            check=False,
            stdout=subprocess.DEVNULL,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
    missing = [t for t in ("jdupes", "rdfind") if not shutil.which(t)]
    if missing:
        sys.exit(f"missing {', '.join(missing)}: sudo apt-get install -y {' '.join(missing)}")


def timed(cmd: list[str], cwd=None, env=None) -> tuple[float, str]:
    started = time.perf_counter()
    proc = subprocess.run(
        cmd, capture_output=True, text=True, cwd=cwd, env={**os.environ, **(env or {})}
    )
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed: {proc.stderr[-2000:]}")
    return elapsed, proc.stdout


CORE_CHAIN = """
import json, sys, time
from pathlib import Path
from dam_dagster.core import dedup
from dam_dagster.core.inventory import update_inventory
from dam_dagster.core.store import Catalogue
cat = Catalogue(sys.argv[2])
t = {}
s = time.perf_counter(); inv = update_inventory(cat, [Path(sys.argv[1])]); t["inventory"] = time.perf_counter() - s
s = time.perf_counter(); p = dedup.update_partial_hashes(cat); t["partial_hashes"] = time.perf_counter() - s
s = time.perf_counter(); c = dedup.update_collision_candidates(cat); t["collision_candidates"] = time.perf_counter() - s
s = time.perf_counter(); f = dedup.update_full_hashes(cat); t["full_hashes"] = time.perf_counter() - s
s = time.perf_counter(); d = dedup.update_duplicates(cat); t["duplicates"] = time.perf_counter() - s
print(json.dumps({"stages": t, "files": inv.files_seen, "partial_files_read": p.files_read,
    "partial_bytes_read": p.bytes_read, "candidate_groups": c.groups,
    "full_files_read": f.files_read, "full_bytes_read": f.bytes_read,
    "groups": [sorted([g.original, *g.duplicates]) for g in dedup.duplicate_groups(cat)]}))
"""


def ours(library: Path, data: Path) -> tuple[float, dict]:
    elapsed, out = timed([PY, "-c", CORE_CHAIN, str(library), str(data)])
    return elapsed, json.loads(out)


def jdupes(library: Path) -> tuple[float, list[list[str]]]:
    elapsed, out = timed(["jdupes", "-r", "-q", str(library)])
    groups = [sorted(block.splitlines()) for block in out.strip().split("\n\n") if block.strip()]
    return elapsed, groups


def rdfind(library: Path, scratch: Path) -> tuple[float, list[list[str]]]:
    results = scratch / "rdfind.txt"
    elapsed, _ = timed(["rdfind", "-outputname", str(results), str(library)], cwd=scratch)
    by_id: dict[int, list[str]] = {}
    for line in results.read_text().splitlines():
        if line.startswith("#"):
            continue
        fields = line.split(" ", 7)
        by_id.setdefault(abs(int(fields[1])), []).append(fields[7])
    return elapsed, [sorted(v) for v in by_id.values()]


def canon(groups) -> set[frozenset[str]]:
    return {frozenset(g) for g in groups}


def dagster_overhead(library: Path, data: Path, repeats: int) -> dict:
    """The same unchanged rescan as core calls and as a Dagster run, in one warm process."""
    code = f"""
import json, statistics, time
from pathlib import Path
import dagster as dg
from dam_dagster import dedup_assets
from dam_dagster.resources import CatalogueResource, LibraryResource
from dam_dagster.core import dedup
from dam_dagster.core.inventory import update_inventory
from dam_dagster.core.store import Catalogue
lib, data = Path({str(library)!r}), {str(data)!r}
res = {{"library": LibraryResource(roots=str(lib)), "catalogue": CatalogueResource(data_dir=data)}}
instance = dg.DagsterInstance.ephemeral()
def core():
    cat = Catalogue(data)
    update_inventory(cat, [lib]); dedup.update_partial_hashes(cat)
    dedup.update_collision_candidates(cat); dedup.update_full_hashes(cat); dedup.update_duplicates(cat)
def run():
    assert dg.materialize(dedup_assets.ASSETS + dedup_assets.CHECKS, resources=res,
                          instance=instance).success
core(); run()  # warm both paths
c, r = [], []
for _ in range({repeats}):
    s = time.perf_counter(); core(); c.append(time.perf_counter() - s)
    s = time.perf_counter(); run(); r.append(time.perf_counter() - s)
print(json.dumps({{"core_s": statistics.median(c), "materialize_s": statistics.median(r)}}))
"""
    _, out = timed([PY, "-c", code])
    result = json.loads(out)
    home = Path(tempfile.mkdtemp(prefix="dam-bench-home-"))
    cli = []
    for _ in range(repeats):
        elapsed, _ = timed(
            [
                str(BIN / "dagster"),
                "asset",
                "materialize",
                "-m",
                "dam_dagster.definitions",
                "--select",
                "*duplicates",
            ],
            env={
                "DAM_LIBRARY_ROOTS": str(library),
                "DAM_DATA_DIR": str(data),
                "DAGSTER_HOME": str(home),
            },
        )
        cli.append(elapsed)
    shutil.rmtree(home, ignore_errors=True)
    result["dagster_cli_s"] = statistics.median(cli)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description="dedup benchmark: ours vs jdupes vs rdfind")
    ap.add_argument("--library", type=Path, default=HERE / "out" / "library")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if not args.library.exists():
        subprocess.run([PY, str(HERE / "make_library.py"), str(args.library)], check=True)
    ensure_tools()
    scratch = Path(tempfile.mkdtemp(prefix="dam-bench-"))
    can_drop = drop_caches()
    rows, answers, detail = {}, {}, {}
    for mode in ("cold", "warm"):
        if mode == "warm":  # fill the cache with a pass of each tool first
            jdupes(args.library), rdfind(args.library, scratch)
        for tool in ("ours", "jdupes", "rdfind"):
            if mode == "cold" and not drop_caches():
                continue
            if tool == "ours":
                data = scratch / f"data-{mode}"
                shutil.rmtree(data, ignore_errors=True)
                elapsed, stats = ours(args.library, data)
                detail[mode] = stats
                groups = stats["groups"]
            elif tool == "jdupes":
                elapsed, groups = jdupes(args.library)
            else:
                elapsed, groups = rdfind(args.library, scratch)
            rows[(tool, mode)] = elapsed
            answers[tool] = canon(groups)
        # the unchanged rescan: the catalogue of the first run is kept
        if mode == "warm" or drop_caches():
            elapsed, stats = ours(args.library, scratch / f"data-{mode}")
            rows[("rescan", mode)] = elapsed
            detail[f"rescan-{mode}"] = stats
    overhead = dagster_overhead(args.library, scratch / "data-warm", args.repeats)
    shutil.rmtree(scratch, ignore_errors=True)

    same = answers["ours"] == answers["jdupes"] == answers["rdfind"]
    print(f"\nlibrary: {args.library} ({detail['warm']['files']:,} files)")
    print(f"page cache dropped for cold runs: {'yes' if can_drop else 'no (not root)'}\n")
    print("| run | ours (s) | jdupes (s) | rdfind (s) | jdupes / ours | rdfind / ours |")
    print("|---|---|---|---|---|---|")
    for mode in ("cold", "warm"):
        if ("ours", mode) not in rows:
            continue
        o, j, r = rows[("ours", mode)], rows[("jdupes", mode)], rows[("rdfind", mode)]
        print(f"| first run, {mode} | {o:.2f} | {j:.2f} | {r:.2f} | {j / o:.2f} | {r / o:.2f} |")
    for mode in ("cold", "warm"):
        if ("rescan", mode) in rows:
            o = rows[("rescan", mode)]
            j, r = rows[("jdupes", mode)], rows[("rdfind", mode)]
            print(
                f"| unchanged rescan, {mode} | {o:.2f} | {j:.2f} | {r:.2f} | {j / o:.1f} | "
                f"{r / o:.1f} |"
            )
    print(
        f"\nidentical answers: {same} ({len(answers['ours'])} groups; jdupes "
        f"{len(answers['jdupes'])}, rdfind {len(answers['rdfind'])})"
    )
    w = detail["warm"]
    print(
        f"ours, first run: {w['partial_files_read']:,} files partially read "
        f"({w['partial_bytes_read'] / 1e9:.2f} GB), {w['candidate_groups']} candidate groups, "
        f"{w['full_files_read']} files fully read ({w['full_bytes_read'] / 1e9:.2f} GB)"
    )
    print(
        "ours, stage seconds (warm first run): "
        + ", ".join(f"{k} {v:.2f}" for k, v in w["stages"].items())
    )
    r = detail["rescan-warm"]
    print(f"ours, unchanged rescan: {r['partial_bytes_read'] + r['full_bytes_read']} bytes read")
    print(
        f"Dagster overhead per run (unchanged rescan, warm process): core "
        f"{overhead['core_s']:.2f} s, dg.materialize {overhead['materialize_s']:.2f} s "
        f"(+{overhead['materialize_s'] - overhead['core_s']:.2f} s); `dagster asset "
        f"materialize` command {overhead['dagster_cli_s']:.2f} s"
    )
    out = HERE / "out" / "dedup_results.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "rows": {f"{k[0]}-{k[1]}": v for k, v in rows.items()},
                "identical": same,
                "overhead": overhead,
                "detail": {
                    k: {kk: vv for kk, vv in v.items() if kk != "groups"} for k, v in detail.items()
                },
            },
            indent=2,
        )
    )
    if not same:
        sys.exit("the tools disagree: see bench/out/dedup_results.json")


if __name__ == "__main__":
    main()
