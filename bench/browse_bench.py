"""The library browser at a million catalogue rows: server time per request, with a render
writing to the catalogue at the same time; the replica's refresh cost; the server's memory.

    .venv/bin/python bench/browse_bench.py [--files 1000000] [--requests 60]   (make bench-browse)

1. Generates the catalogue rows directly (no files): 1,000,000 files in two roots and ~8,000
   folders, 80 % models; hashes for the 30 % whose size is shared, 24,000 duplicate groups,
   thumbnail rows for the models (92 % ok, 3 % failed, 1 % unsupported, the rest not yet);
   a few hundred real PNGs (the rows' other PNGs do not exist: thumbnails may be few).
2. Starts `dam serve` (the command people run) on it and waits for its first replica.
3. Starts a writer process that does what a render lane does: OutcomeWriter batches of 500
   thumbnail rows into the catalogue, one every --write-every seconds, under the lock.
4. Times each page over HTTP on 127.0.0.1: the client's round trip and the server's own time
   (its Server-Timing header); median and 95th percentile. Then the server's memory (VmRSS,
   VmHWM) and the replica refreshes it made meanwhile (copy and build seconds).

Results go to bench/out/browse.json and are printed as the table of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import requests

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT))

from dam_dagster.core.printers import parse_printers, sync_printers  # noqa: E402
from dam_dagster.core.store import FACTS_VERSION, Catalogue  # noqa: E402

WORDS = ["bracket", "gear", "dragon", "benchy", "mount", "clip", "hinge", "vase", "case", "knob"]


def generate(data: Path, files: int) -> dict:
    """The catalogue of a big library, written with SQL (seconds, not hours)."""
    cat = Catalogue(data)
    t0 = time.monotonic()
    words = "[" + ", ".join(f"'{w}'" for w in WORDS) + "]"
    with cat.connect() as con:
        con.execute(f"""
            CREATE TEMP TABLE gen AS
            SELECT i AS file_id,
                   CASE WHEN i % 10 < 7 THEN '/nas/models' ELSE '/home/me/prints' END AS root,
                   'collection ' || (i % 40) || '/' || {words}[1 + (i // 7) % 10] || 's/'
                       || 'set ' || (i % 200) AS folder,
                   {words}[1 + i % 10] || '_' || i || ' v' || (i % 7) AS stem,
                   CASE WHEN i % 20 < 14 THEN '.stl' WHEN i % 20 < 16 THEN '.3mf'
                        WHEN i % 20 = 16 THEN '.obj' WHEN i % 20 = 17 THEN '.png'
                        WHEN i % 20 = 18 THEN '.txt' ELSE '.step' END AS extension,
                   CAST(50 * (1 + hash(i) % 400000) AS BIGINT) AS size_bytes,
                   1700000000000000000 + (hash(i * 3) % 100000000) * 1000000000 AS mtime_ns
            FROM range(1, {files} + 1) t(i)
        """)
        # BY NAME: the schema gains columns from release to release (ctime_ns in v3)
        con.execute("""
            INSERT INTO file_inventory BY NAME
            SELECT file_id, root || '/' || folder || '/' || stem || extension AS path,
                   NULL AS raw_path, root, folder || '/' || stem || extension AS rel_path,
                   extension, size_bytes, mtime_ns, mtime_ns AS ctime_ns, true AS present,
                   TIMESTAMP '2026-01-01' + INTERVAL (file_id % 10000) MINUTE AS first_seen_at,
                   TIMESTAMP '2026-01-01' + INTERVAL (file_id % 10000) MINUTE AS changed_at,
                   NULL AS gone_at
            FROM gen
        """)
        con.execute(f"SELECT setval('file_id_seq', {files} + 1)")
        # 24,000 groups of 2-5 identical files: the copies take the size of their original
        con.execute("""
            CREATE TEMP TABLE grp AS
            SELECT file_id, (file_id % 24000) AS g FROM gen WHERE file_id % 13 = 0
        """)
        con.execute("""
            UPDATE file_inventory f SET size_bytes = o.size_bytes
            FROM (SELECT g, min(file_id) AS first FROM grp GROUP BY g) m,
                 grp, file_inventory o
            WHERE grp.g = m.g AND f.file_id = grp.file_id AND o.file_id = m.first
        """)
        con.execute("""
            INSERT INTO partial_hashes BY NAME
            SELECT f.file_id, f.size_bytes, f.mtime_ns, f.ctime_ns,
                   md5(f.file_id::VARCHAR) AS prefix_hash,
                   md5('p' || COALESCE(grp.g::VARCHAR, f.file_id::VARCHAR)) AS partial_hash,
                   now() AS hashed_at
            FROM file_inventory f LEFT JOIN grp USING (file_id)
            WHERE f.file_id % 10 < 3 OR grp.g IS NOT NULL
        """)
        con.execute("""
            INSERT INTO collision_candidates
            SELECT grp.file_id, f.size_bytes, md5('p' || grp.g), count(*) OVER (PARTITION BY grp.g)
            FROM grp JOIN file_inventory f USING (file_id)
        """)
        con.execute("""
            INSERT INTO full_hashes BY NAME
            SELECT grp.file_id, f.size_bytes, f.mtime_ns, f.ctime_ns,
                   md5('f' || grp.g) AS full_hash, 'full_read' AS source, now() AS hashed_at
            FROM grp JOIN file_inventory f USING (file_id)
        """)
        con.execute("""
            INSERT INTO duplicates
            SELECT file_id, full_hash, size_bytes, original_id,
                   CASE WHEN file_id = original_id THEN NULL ELSE original_id END, group_size
            FROM (SELECT h.file_id, h.full_hash, h.size_bytes,
                         min(h.file_id) OVER w AS original_id, count(*) OVER w AS group_size
                  FROM full_hashes h WINDOW w AS (PARTITION BY h.size_bytes, h.full_hash))
            WHERE group_size > 1
        """)
        con.execute("""
            INSERT INTO thumbnails BY NAME
            SELECT f.file_id, f.size_bytes, f.mtime_ns, f.ctime_ns,
                   CASE WHEN f.size_bytes < 30 * 1048576 THEN 'fast' ELSE 'slow' END AS lane,
                   CASE WHEN f.size_bytes < 1048576 THEN '<1MB' WHEN f.size_bytes < 5242880
                        THEN '1-5MB' ELSE '5-30MB' END AS bucket,
                   s.status, CASE WHEN s.status = 'ok' THEN 'render' END AS source,
                   s.md5 AS content_md5,
                   CASE WHEN s.status = 'ok' THEN substr(s.md5, 1, 2) || '/' || s.md5 || '.png'
                   END AS thumbnail_relpath,
                   256 AS thumbnail_size, 'transparent' AS background,
                   CASE WHEN s.status = 'failed' THEN 'LoadError' WHEN s.status = 'unsupported'
                        THEN 'UnsupportedFormat' END AS error_class,
                   CASE WHEN s.status = 'failed' THEN 'the mesh has no faces' END
                       AS error_message,
                   false AS transient, 0.2 AS render_seconds, now() AS rendered_at
            FROM file_inventory f,
                 LATERAL (SELECT md5(f.file_id::VARCHAR) AS md5,
                          CASE WHEN f.file_id % 100 < 92 THEN 'ok' WHEN f.file_id % 100 < 95
                               THEN 'failed' WHEN f.file_id % 100 < 96 THEN 'unsupported'
                          END AS status) s
            WHERE f.extension IN ('.stl', '.3mf', '.obj', '.png', '.step') AND s.status IS NOT NULL
        """)
        # geometry facts for 60 % of the models (the rest not measured yet: they sort last),
        # the printers of DAM_PRINTERS, and 5,000 "same model, different file" groups of 2
        con.execute(f"""
            INSERT INTO model_facts BY NAME
            SELECT t.file_id, t.size_bytes, t.mtime_ns, t.ctime_ns,
                   {int(FACTS_VERSION)} AS facts_version, t.content_md5,
                   100 + hash(t.file_id * 5) % 2000000 AS triangles, 1 AS bodies,
                   1 + (hash(t.file_id * 7) % 40000) / 100.0 AS size_x_mm,
                   1 + (hash(t.file_id * 11) % 30000) / 100.0 AS size_y_mm,
                   1 + (hash(t.file_id * 13) % 30000) / 100.0 AS size_z_mm,
                   1000.0 + hash(t.file_id * 17) % 100000 AS area_mm2,
                   CASE WHEN t.file_id % 4 <> 0 THEN 10.0 + hash(t.file_id * 19) % 900000
                   END AS volume_mm3,
                   t.file_id % 4 <> 0 AS watertight, t.file_id % 4 <> 0 AS winding_consistent,
                   t.file_id % 50 = 0 AS probably_inches, 'Z' AS up_axis,
                   substr(md5('fp' || CASE WHEN t.file_id % 97 = 0 AND t.file_id < 970000
                                           THEN t.file_id // 194 ELSE t.file_id END), 1, 20)
                       AS fingerprint,
                   now() AS measured_at
            FROM thumbnails t JOIN file_inventory f USING (file_id)
            WHERE t.status = 'ok' AND f.extension <> '.png' AND hash(t.file_id * 23) % 10 < 6
        """)
        sync_printers(con, parse_printers())
        con.execute("""
            INSERT INTO similar_models
            SELECT file_id, fingerprint,
                   min(file_id) OVER (PARTITION BY fingerprint) AS group_id,
                   count(*) OVER (PARTITION BY fingerprint) AS group_size, NULL
            FROM model_facts
            QUALIFY count(*) OVER (PARTITION BY fingerprint) > 1
        """)
        con.execute("""
            INSERT INTO inventory_scans BY NAME
            SELECT now() - INTERVAL 3 MINUTE AS started_at, now() AS finished_at,
                   '/nas/models:/home/me/prints' AS roots, count(*) AS files_seen,
                   sum(size_bytes) AS bytes_seen, 0 AS new_files, 0 AS changed_files,
                   0 AS gone_files, 3 AS issues
            FROM file_inventory
        """)
        con.execute("""
            INSERT INTO walk_issues VALUES
              ('/nas/models/locked', 'permission_denied', 'PermissionError', 'denied', now()),
              ('/nas/models/loop', 'symlink_loop', NULL, 'a link to its own folder', now()),
              ('/nas/models/bad\\xff', 'undecodable_name', NULL, 'not UTF-8', now())
        """)
        keys = [
            r[0]
            for r in con.execute(
                "SELECT content_md5 FROM thumbnails WHERE status = 'ok' ORDER BY file_id LIMIT 300"
            ).fetchall()
        ]
    made = time.monotonic() - t0
    # a few real PNGs for the first rows (the server serves what exists)
    from PIL import Image

    tile = Image.new("RGBA", (256, 256), (120, 140, 200, 255))
    for key in keys:
        path = cat.thumbs_dir / key[:2] / f"{key}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        tile.save(path)
    size = cat.path.stat().st_size
    return {"generate_seconds": round(made, 1), "db_bytes": size, "png_key": keys[0]}


WRITER = r"""
import sys, time, random
from dam_dagster.core.render.api import RenderOutcome, thumbnail_relpath
from dam_dagster.core.store import Catalogue
from dam_dagster.core.thumbnails import OutcomeWriter, Plan, size_buckets
data, files, every = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
cat = Catalogue(data, who="bench render writer")
bucket = size_buckets(30)[0]
with cat.connect(write=False) as con:
    ids = [r[0] for r in con.execute(
        "SELECT file_id FROM file_inventory WHERE extension = '.stl' AND file_id % 100 >= 96 "
        "ORDER BY file_id").fetchall()]
    states = {r[0]: (r[1], r[2], r[3]) for r in con.execute(
        "SELECT file_id, size_bytes, mtime_ns, ctime_ns FROM file_inventory WHERE file_id IN "
        "(SELECT unnest(?))", [ids]).fetchall()}
plan = Plan(states=states)
writer = OutcomeWriter(cat, bucket, plan, 256, "transparent", batch=500, every_s=1e9)
batches = 0
print("writing", flush=True)
while True:
    for fid in ids[batches * 500:(batches + 1) * 500]:
        md5 = "%032x" % random.getrandbits(128)
        outcome = RenderOutcome(fid, "ok", "render", md5, thumbnail_relpath(md5), None, None,
                                0.2, False)
        writer.add(outcome)
    writer.flush()
    batches += 1
    print(batches, flush=True)
    time.sleep(every)
"""


def rss(pid: int) -> dict:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS", "VmHWM")):
            out[line.split(":")[0]] = int(line.split()[1]) // 1024
    return out


def measure(session, url: str, n: int) -> dict:
    client, server = [], []
    for _ in range(n):
        t0 = time.perf_counter()
        r = session.get(url(), timeout=30)
        client.append((time.perf_counter() - t0) * 1000)
        assert r.status_code == 200, (r.status_code, r.text[:300])
        timing = r.headers.get("server-timing", "")
        if "dur=" in timing:
            server.append(float(timing.split("dur=")[1]))
    q = lambda xs, p: statistics.quantiles(xs, n=100)[p - 1] if len(xs) > 1 else xs[0]  # noqa: E731
    return {
        "n": n,
        "client_median_ms": round(statistics.median(client), 1),
        "client_p95_ms": round(q(client, 95), 1),
        "server_median_ms": round(statistics.median(server), 1) if server else None,
        "server_p95_ms": round(q(server, 95), 1) if server else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--write-every", type=float, default=5.0)
    parser.add_argument("--out", default=str(HERE / "out" / "browse"))
    args = parser.parse_args()
    out = Path(args.out)
    data = out / "data"
    if data.exists():
        import shutil

        shutil.rmtree(data)
    data.mkdir(parents=True)
    result = {"files": args.files, **generate(data, args.files)}
    print(
        f"catalogue: {args.files:,} files in {result['generate_seconds']} s, "
        f"{result['db_bytes'] / 1e6:,.0f} MB",
        flush=True,
    )

    import socket

    with socket.socket() as sock:  # a free port: never another server's
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "DAM_DATA_DIR": str(data), "DAGSTER_HOME": str(data / "dagster_home")}
    env.pop("DAM_LIBRARY_ROOTS", None)
    server = subprocess.Popen(
        [str(BIN / "dam"), "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    writer = None
    try:
        t0 = time.monotonic()
        while True:
            try:
                if requests.get(base + "/healthz", timeout=2).json()["replica_ready"]:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() - t0 > 300:
                raise SystemExit("the server did not come up")
            time.sleep(0.2)
        first = requests.get(base + "/api/status", timeout=30).json()["replica"]
        result["first_replica"] = {
            "ready_after_s": round(time.monotonic() - t0, 2),
            "copy_seconds": round(first["copy_seconds"], 2),
            "build_seconds": round(first["build_seconds"], 2),
        }
        result["memory_idle_mb"] = rss(server.pid)

        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(data), str(args.files), str(args.write_every)],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert writer.stdout.readline().strip() == "writing"
        time.sleep(2)
        session = requests.Session()
        rng = random.Random(7)
        page = session.get(base + "/api/models", timeout=30).json()
        cursors = [page["next_cursor"]]
        for _ in range(args.requests):
            page = session.get(
                base + "/api/models", params={"cursor": cursors[-1]}, timeout=30
            ).json()
            cursors.append(page["next_cursor"])
        largest = session.get(
            base + "/api/models", params={"sort": "largest", "order": "desc"}, timeout=30
        ).json()
        by_largest = [largest["next_cursor"]]
        for _ in range(args.requests):
            largest = session.get(
                base + "/api/models",
                params={"sort": "largest", "order": "desc", "cursor": by_largest[-1]},
                timeout=30,
            ).json()
            by_largest.append(largest["next_cursor"])
        dup = session.get(base + "/api/duplicates", timeout=30).json()
        next_groups = dup["next_cursor"]
        it = iter(cursors * 2)
        it_largest = iter(by_largest * 2)
        cases = {
            "Library, first page": lambda: base + "/",
            "Library, next page (keyset)": lambda: base + "/?cursor=" + next(it),
            "Library, search": lambda: (
                base + "/?q=" + rng.choice(WORDS) + "+v" + str(rng.randrange(7))
            ),
            "Library, filter (format + thumbnail)": lambda: (
                base
                + "/?format="
                + rng.choice(["3mf", "obj", "stl"])
                + "&thumbnail="
                + rng.choice(["failed", "ok", "none"])
            ),
            "Library, filter (folder)": lambda: (
                base + "/?root=/nas/models&folder=collection+" + str(rng.randrange(40))
            ),
            "Library, filter (facts: max X + watertight)": lambda: (
                base + f"/?max_x={rng.randrange(50, 300)}&watertight=" + rng.choice(["yes", "no"])
            ),
            "Library, filter (facts: fits a printer)": lambda: (
                base + "/?fits=" + rng.choice(["Prusa MINI", "Prusa MK4", "Creality Ender-3"])
            ),
            "Library, sort (facts: largest side, next page)": lambda: (
                base + "/?sort=largest&order=desc&cursor=" + next(it_largest)
            ),
            "Library, sort (facts: triangles)": lambda: base + "/?sort=triangles",
            "Model page": lambda: base + f"/models/{rng.randrange(1, args.files)}",
            "Duplicates, first page": lambda: base + "/duplicates",
            "Duplicates, next page": lambda: base + "/duplicates?cursor=" + (next_groups or ""),
            "Problems": lambda: base + "/problems",
            "Status": lambda: base + "/status",
            "Folders": lambda: base + "/folders?root=/nas/models",
        }
        result["requests"] = {}
        for name, url in cases.items():
            measure(session, url, 3)  # warm
            result["requests"][name] = measure(session, url, args.requests)
            print(name, result["requests"][name], flush=True)
        key = result.pop("png_key")
        result["requests"]["Thumbnail PNG"] = measure(
            session, lambda: base + f"/thumbs/{key}.png", args.requests
        )
        state = session.get(base + "/api/status", timeout=30).json()["replica"]
        result["during_writes"] = {
            "writer_batches": None,
            "replica_generation": state["generation"],
            "last_copy_seconds": round(state["copy_seconds"], 2),
            "last_build_seconds": round(state["build_seconds"], 2),
        }
        result["memory_after_mb"] = rss(server.pid)
    finally:
        if writer is not None:
            writer.terminate()
            batches = writer.stdout.read().split()
            result.setdefault("during_writes", {})["writer_batches"] = (
                int(batches[-1]) if batches else 0
            )
        server.terminate()
        server.wait(timeout=30)
    (out / "browse.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print("\n| request | median (ms) | p95 (ms) | server median (ms) | server p95 (ms) |")
    print("|---|---|---|---|---|")
    for name, r in result["requests"].items():
        print(
            f"| {name} | {r['client_median_ms']} | {r['client_p95_ms']} | "
            f"{r['server_median_ms']} | {r['server_p95_ms']} |"
        )


if __name__ == "__main__":
    main()
