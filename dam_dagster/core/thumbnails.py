"""Thumbnails, catalogue side: size buckets, which files of a bucket need a render, and the
outcome rows (thumbnails, and the model facts measured in the same pass). Rendering itself
happens in worker processes (core/render).

A file needs a render when it has no current row (new, or changed since), when its last
attempt failed for a reason that may pass (timeout, memory cap, crashed worker, I/O error),
when its thumbnail was made at another size or background or by older code for its format
(core/render/capabilities.py), when its PNG has gone from the thumbnails folder, or when a
retry was asked for (`dam retry`, the lanes' `retry` config). A permanent failure (corrupt or
empty mesh, unsupported format) is kept until the file changes or the libraries its format
needs do (a loader installed or upgraded). A model whose thumbnail is current but whose facts
are not (made before facts existed, or by older facts code) is read and measured again
without being rendered.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import pyarrow as pa

from .archives import MEMBER_MARK
from .failures import MEMORY_KILLS_PERMANENT
from .render.api import IMAGE_EXTENSIONS, MODEL_EXTENSIONS, RenderOutcome, RenderTask
from .render.capabilities import (
    FACTS_VERSION,
    capabilities_table,
    legacy_renderer_version,
    renderer_version,
)
from .store import MODEL_EXTENSIONS as CATALOGUE_MODEL_EXTENSIONS
from .store import Catalogue
from .store_pg import write_conflict
from .vocabulary import FAILED_STATUSES

MIB = 1024 * 1024
FAST, SLOW = "fast", "slow"
# Files that go through a lane: every model format the catalogue knows, and images.
THUMBNAIL_EXTENSIONS = frozenset(CATALOGUE_MODEL_EXTENSIONS) | IMAGE_EXTENSIONS
RENDERABLE_EXTENSIONS = MODEL_EXTENSIONS | IMAGE_EXTENSIONS
# What `dam retry --status` and the lanes' `retry` config can ask for
RETRY_SCOPES = {
    "failed": FAILED_STATUSES,
    "unsupported": ("unsupported",),
    "all": (*FAILED_STATUSES, "unsupported"),
}
# The columns of model_facts that the render pass fills (core/render/facts.py, slicer.py)
FACT_COLUMNS = {
    "triangles": pa.int64(),
    "points": pa.int64(),
    "bodies": pa.int32(),
    "size_x_mm": pa.float64(),
    "size_y_mm": pa.float64(),
    "size_z_mm": pa.float64(),
    "area_mm2": pa.float64(),
    "volume_mm3": pa.float64(),
    "watertight": pa.bool_(),
    "winding_consistent": pa.bool_(),
    "unit": pa.string(),
    "probably_inches": pa.bool_(),
    "up_axis": pa.string(),
    "fingerprint": pa.string(),
    "slicer": pa.string(),
    "printer": pa.string(),
    "nozzle_mm": pa.float64(),
    "filament_types": pa.list_(pa.string()),
    "filament_colours": pa.list_(pa.string()),
    "object_names": pa.list_(pa.string()),
    "print_time_s": pa.float64(),
    "filament_g": pa.float64(),
}


@dataclass(frozen=True)
class SizeBucket:
    """One partition: files of size in [low, high) bytes; high None means no upper bound.
    With shards > 1, only the files whose path falls in shard `shard` (path_shard)."""

    key: str  # the partition key: the size bucket's, or '<1MB shard 2 of 4'
    lane: str
    low: int
    high: int | None
    shard: int = 0  # 0 .. shards - 1
    shards: int = 1
    size_key: str = ""  # the size bucket's key ('<1MB'); '' when the key is that already

    def holds(self, size: int) -> bool:
        return size >= self.low and (self.high is None or size < self.high)

    @property
    def bucket_key(self) -> str:
        """The size bucket's key, shard or not: what the browser filters by."""
        return self.size_key or self.key

    def sql_args(self) -> dict:
        """The parameters of SHARD_SQL and the size range, for a query over this partition."""
        return {"low": self.low, "high": self.high, "shard": self.shard, "shards": self.shards}


# A file's shard: the first 32 bits of the MD5 of its path (the virtual path for a zip member),
# modulo the shard count. Stable (MD5 is MD5 on every host and every DuckDB), and spread
# evenly whatever the sizes (a file_id, given in walk order, would correlate with folders).
SHARD_SQL = "($shards = 1 OR ('0x' || substr(md5(f.path), 1, 8))::BIGINT % $shards = $shard)"


def path_shard(path: str, shards: int) -> int:
    """The shard of a path: the same figure as SHARD_SQL, in Python."""
    if shards <= 1:
        return 0
    return int(hashlib.md5(path.encode("utf-8", "surrogateescape")).hexdigest()[:8], 16) % shards


def shard_key(bucket_key: str, shard: int, shards: int) -> str:
    return bucket_key if shards <= 1 else f"{bucket_key} shard {shard + 1} of {shards}"


def partition_key(bucket_key: str, path: str, shards: int) -> str:
    """The render partition a file of this size bucket and path belongs to."""
    return shard_key(bucket_key, path_shard(path, shards), shards)


def render_partitions(threshold_mb: int, shards: int = 1) -> tuple[SizeBucket, ...]:
    """The render lanes' partitions: each size bucket, split into `shards` by path
    (DAM_RENDER_SHARDS; 1, the default, keeps the size buckets' own keys). Many machines then
    share one bucket: one run per shard, a failed shard backfilled alone."""
    if int(shards) < 1:
        raise ValueError(f"DAM_RENDER_SHARDS must be at least 1, not {shards}")
    buckets = size_buckets(threshold_mb)
    if shards == 1:
        return buckets
    return tuple(
        dataclasses.replace(
            b, key=shard_key(b.key, i, shards), shard=i, shards=shards, size_key=b.key
        )
        for b in buckets
        for i in range(shards)
    )


def size_buckets(threshold_mb: int) -> tuple[SizeBucket, ...]:
    """The partitions of both lanes. MB here is MiB (2^20 bytes), as file managers count.

    threshold 30: <1MB 1-5MB 5-30MB (fast lane) | 30-100MB 100-500MB >=500MB (slow lane)
    """
    if int(threshold_mb) < 1:
        raise ValueError(f"DAM_SIZE_THRESHOLD_MB must be at least 1, not {threshold_mb}")
    edges = sorted({1, 5, 100, 500, int(threshold_mb)})
    buckets = []
    for low, high in zip([0, *edges], [*edges, None]):
        if low == 0:
            key = f"<{high}MB"
        elif high is None:
            key = f">={low}MB"
        else:
            key = f"{low}-{high}MB"
        lane = FAST if high is not None and high <= threshold_mb else SLOW
        buckets.append(SizeBucket(key, lane, low * MIB, high * MIB if high else None))
    return tuple(buckets)


@dataclass
class Plan:
    tasks: list[RenderTask] = field(default_factory=list)
    unsupported: list[int] = field(default_factory=list)  # file ids, no renderer for them
    states: dict[int, tuple[int, int, int | None]] = field(default_factory=dict)  # id: state
    memory_kills: dict[int, int] = field(default_factory=dict)  # id: kills of this state so far
    exts: dict[int, str] = field(default_factory=dict)  # id: extension
    facts_only: set[int] = field(default_factory=set)  # ids whose thumbnail is current
    in_bucket: int = 0  # thumbnail-able files of the bucket
    up_to_date: int = 0  # current thumbnail, or a permanent failure: nothing to do
    retries: int = 0  # last attempt failed for a reason that may pass
    missing_png: int = 0  # marked ok, but the PNG is gone
    settings_changed: int = 0  # made at another size or background: the PNG must be redone
    renderer_changed: int = 0  # made by older code for its format: done again, PNG included
    capability_changed: int = 0  # a permanent failure, but its format's libraries changed
    retry_requested: int = 0  # asked for by dam retry or the lanes' retry config
    facts_missing: int = 0  # thumbnail current, facts not: read and measured, not rendered


def plan_bucket(catalogue: Catalogue, bucket: SizeBucket, size: int, background: str) -> Plan:
    return plan_buckets(catalogue, [bucket], size, background)[0]


def plan_buckets(
    catalogue: Catalogue, buckets: list[SizeBucket], size: int, background: str
) -> list[Plan]:
    """The plan of each partition, read in one look at the catalogue (`dam run` asks all of
    them whether they have work: one connection, not one a partition)."""
    caps = capabilities_table()
    with catalogue.connect(write=False) as con:
        rows = [_plan_rows(con, bucket) for bucket in buckets]
    return [_plan(*r, catalogue, size, background, caps) for r in rows]  # no connection open


def _plan_rows(con, bucket: SizeBucket) -> tuple[list[tuple], dict]:
    """The partition's files with their thumbnail and facts rows, in path order; and the
    path (and raw path) of each zip its members come from. The zips are a query of their
    own: joined to the whole inventory in the first, a million files ran DuckDB out of its
    memory limit (the join built from every path of the inventory)."""
    exts = ", ".join(f"'{e}'" for e in sorted(THUMBNAIL_EXTENSIONS))
    where = f"""f.size_bytes >= $low AND ($high IS NULL OR f.size_bytes < $high)
              AND f.extension IN ({exts}) AND {SHARD_SQL}"""
    rows = con.execute(
        f"""
            SELECT f.file_id, f.path, f.raw_path, f.size_bytes, f.mtime_ns, f.ctime_ns,
                   f.archive_id, f.member,
                   f.extension, t.status, t.transient, t.thumbnail_relpath, t.thumbnail_size,
                   t.background, t.memory_kills,
                   t.renderer_version, t.capabilities, t.retry_requested,
                   m.file_id IS NOT NULL AS has_facts
            FROM present_files f
            LEFT JOIN current_thumbnails t USING (file_id)
            LEFT JOIN current_model_facts m USING (file_id)
            WHERE {where}
            ORDER BY f.path
        """,
        bucket.sql_args(),
    ).fetchall()
    archives = con.execute(
        f"""
            SELECT file_id, path, raw_path FROM file_inventory
            WHERE file_id IN (SELECT f.archive_id FROM present_files f
                              WHERE f.archive_id IS NOT NULL AND {where})
        """,
        bucket.sql_args(),
    ).fetchall()
    return rows, {fid: (path, raw) for fid, path, raw in archives}


def _plan(
    rows: list[tuple], archives: dict, catalogue: Catalogue, size: int, background: str, caps
) -> Plan:
    plan = Plan(in_bucket=len(rows))
    for row in rows:
        (file_id, path, raw, fsize, mtime, ctime, archive_id, member, ext) = row[:9]
        status, transient, rel, tsize, tbg, kills = row[9:15]
        made_by, made_with, retry, has_facts = row[15:]
        plan.states[file_id] = (fsize, mtime, ctime)
        plan.exts[file_id] = ext
        if status == "memory" and kills:
            plan.memory_kills[file_id] = int(kills)
        rerender = facts_only = False
        if status is None:
            pass  # new, or changed since its last row
        elif retry:
            plan.retry_requested += 1
        elif (made_by or legacy_renderer_version(ext)) != renderer_version(ext):
            plan.renderer_changed += 1
            rerender = True
        elif status == "ok":
            if tsize != size or tbg != background:
                plan.settings_changed += 1
                rerender = True
            elif not (catalogue.thumbs_dir / rel).exists():
                plan.missing_png += 1
            elif ext in MODEL_EXTENSIONS and not has_facts:
                plan.facts_missing += 1
                facts_only = True
            else:
                plan.up_to_date += 1
                continue
        elif transient:
            plan.retries += 1
        elif (made_with or "") != caps.get(ext, ""):
            plan.capability_changed += 1
        else:
            plan.up_to_date += 1
            continue
        if ext not in RENDERABLE_EXTENSIONS:
            plan.unsupported.append(file_id)
            continue
        if facts_only:
            plan.facts_only.add(file_id)
        if member is not None:  # read from its zip by the worker (core/archives.py)
            archive, archive_raw = archives.get(archive_id, (None, None))
            fs_archive = os.fsdecode(archive_raw) if archive_raw is not None else archive
            fs_path = f"{fs_archive}{MEMBER_MARK}{member}"
        else:
            fs_path = os.fsdecode(raw) if raw is not None else path
        need_facts = ext in MODEL_EXTENSIONS and not has_facts
        plan.tasks.append(RenderTask(file_id, fs_path, fsize, rerender, need_facts))
    return plan


def loader_changes(catalogue: Catalogue, buckets: Iterable[SizeBucket]) -> dict[str, int]:
    """Per size bucket key, how many files have a row made by other code for their format, or
    a lasting failure under other libraries: the files a change of loaders concerns, by the
    same rules as plan_bucket (which then re-plans them), counted without looking at PNGs.
    A transient failure or a retry asked for is not the loaders' business."""
    exts = ", ".join(f"'{e}'" for e in sorted(THUMBNAIL_EXTENSIONS))
    caps = capabilities_table()
    changed: dict[str, int] = {}
    with catalogue.connect(write=False) as con:
        for bucket in buckets:
            rows = con.execute(
                f"""
                SELECT f.extension, t.status, t.transient, t.retry_requested,
                       t.renderer_version, t.capabilities, count(*)
                FROM present_files f JOIN current_thumbnails t USING (file_id)
                WHERE f.size_bytes >= $low AND ($high IS NULL OR f.size_bytes < $high)
                  AND f.extension IN ({exts}) AND {SHARD_SQL}
                GROUP BY ALL
            """,
                bucket.sql_args(),
            ).fetchall()
            n = 0
            for ext, status, transient, retry, made_by, made_with, count in rows:
                if retry:
                    continue
                if (made_by or legacy_renderer_version(ext)) != renderer_version(ext):
                    n += count
                elif status != "ok" and not transient and (made_with or "") != caps.get(ext, ""):
                    n += count
            if n:
                changed[bucket.key] = n
    return changed


def request_retries(
    catalogue: Catalogue, scope: str = "all", bucket: SizeBucket | None = None
) -> dict[str, int]:
    """Mark the current rows of present files with the scope's statuses (RETRY_SCOPES) for
    the next run of their partition, in one bucket or all. Returns the files marked by
    status."""
    if scope not in RETRY_SCOPES:
        raise ValueError(f"retry scope must be one of {', '.join(RETRY_SCOPES)}, not {scope!r}")
    statuses = list(RETRY_SCOPES[scope])
    where = {"low": 0, "high": None, "shard": 0, "shards": 1}
    if bucket is not None:
        where = bucket.sql_args()
    with catalogue.connect() as con:
        counts = con.execute(
            f"""
            SELECT t.status, count(*) FROM current_thumbnails t JOIN file_inventory f
              USING (file_id)
            WHERE t.status IN (SELECT unnest($statuses))
              AND f.size_bytes >= $low AND ($high IS NULL OR f.size_bytes < $high)
              AND {SHARD_SQL}
            GROUP BY t.status
            """,
            {"statuses": statuses, **where},
        ).fetchall()
        con.execute(
            f"""
            UPDATE thumbnails SET retry_requested = true
            WHERE file_id IN (
                SELECT t.file_id FROM current_thumbnails t JOIN file_inventory f
                  USING (file_id)
                WHERE t.status IN (SELECT unnest($statuses))
                  AND f.size_bytes >= $low AND ($high IS NULL OR f.size_bytes < $high)
                  AND {SHARD_SQL})
            """,
            {"statuses": statuses, **where},
        )
    return {status: int(n) for status, n in counts}


class OutcomeWriter:
    """Collects outcomes as they arrive and writes them in batches, each one transaction, so
    hours of rendering are never lost to a crash and no connection stays open meanwhile.
    A batch holds the thumbnail rows and the model facts of the same outcomes."""

    def __init__(
        self,
        catalogue: Catalogue,
        bucket: SizeBucket,
        plan: Plan,
        size: int,
        background: str,
        batch: int = 500,
        every_s: float = 20.0,
    ):
        self.catalogue, self.bucket, self.plan = catalogue, bucket, plan
        self.size, self.background = size, background
        self.batch, self.every_s = batch, every_s
        self.pending: list[dict] = []
        self.pending_facts: list[dict] = []
        self.last_flush = time.monotonic()
        self.written = 0
        self.measured = 0
        self.capabilities = capabilities_table()  # what this run renders with
        self.settled: list[RenderOutcome] = []  # the outcomes as recorded, in arrival order

    def settle(self, outcome: RenderOutcome) -> RenderOutcome:
        """The pool's outcome with the catalogue's memory: a file killed at the memory cap
        again, unchanged, will not fit next time either (core/failures.py)."""
        if outcome.status != "memory" or not outcome.transient:
            return outcome
        kills = self.plan.memory_kills.get(outcome.key, 0) + 1
        if kills < MEMORY_KILLS_PERMANENT:
            return outcome
        return dataclasses.replace(
            outcome,
            transient=False,
            error_message=f"{outcome.error_message}; {kills} times on this unchanged file, so "
            "it is not tried again until it changes (or DAM_RENDER_MEMORY_MB is raised and "
            "`dam retry` asks for it)",
        )

    def _made_by(self, file_id: int) -> tuple[str, str]:
        ext = self.plan.exts.get(file_id, "")
        return renderer_version(ext), self.capabilities.get(ext, "")

    def add(self, outcome: RenderOutcome) -> RenderOutcome:
        """Record one outcome (written in the next batch); returns it as recorded."""
        outcome = self.settle(outcome)
        self.settled.append(outcome)
        file_id = int(outcome.key)
        size, mtime, ctime = self.plan.states[outcome.key]
        kills = self.plan.memory_kills.get(outcome.key, 0) + 1 if outcome.status == "memory" else 0
        made_by, made_with = self._made_by(file_id)
        # a task that only needed facts leaves its (current) thumbnail row alone, unless it
        # had to make a new PNG after all
        keep_row = file_id in self.plan.facts_only and not (
            outcome.ok and outcome.source != "cache"
        )
        if not keep_row:
            self.pending.append(
                {
                    "file_id": file_id,
                    "size_bytes": size,
                    "mtime_ns": mtime,
                    "ctime_ns": ctime,
                    "memory_kills": kills,
                    "status": outcome.status,
                    "source": outcome.source,
                    "content_md5": outcome.content_md5,
                    "thumbnail_relpath": outcome.thumbnail_relpath,
                    "error_class": outcome.error_class,
                    "error_message": outcome.error_message,
                    "transient": bool(outcome.transient),
                    "render_seconds": float(outcome.seconds),
                    "renderer_version": made_by,
                    "capabilities": made_with,
                }
            )
        error = outcome.facts_error
        if keep_row and error is None and not outcome.ok and not outcome.transient:
            # only the facts were asked for and the file now fails for good (a 3MF refused
            # as an archive bomb, say): record why, or it would be asked for again every run
            error = (outcome.error_class, outcome.error_message)
        if outcome.facts is not None or error is not None:
            facts = outcome.facts or {}
            error = error or (None, None)
            self.pending_facts.append(
                {
                    "file_id": file_id,
                    "size_bytes": size,
                    "mtime_ns": mtime,
                    "ctime_ns": ctime,
                    "content_md5": outcome.content_md5,
                    "error_class": error[0],
                    "error_message": error[1],
                    **{k: facts.get(k) for k in FACT_COLUMNS},
                }
            )
        if (
            len(self.pending) + len(self.pending_facts) >= self.batch
            or time.monotonic() - self.last_flush > self.every_s
        ):
            self.flush()
        return outcome

    def add_unsupported(self) -> None:
        for file_id in self.plan.unsupported:
            fsize, mtime, ctime = self.plan.states[file_id]
            made_by, made_with = self._made_by(file_id)
            self.pending.append(
                {
                    "file_id": file_id,
                    "size_bytes": fsize,
                    "mtime_ns": mtime,
                    "ctime_ns": ctime,
                    "memory_kills": 0,
                    "status": "unsupported",
                    "source": None,
                    "content_md5": None,
                    "thumbnail_relpath": None,
                    "error_class": "UnsupportedFormat",
                    "error_message": "no renderer for this format",
                    "transient": False,
                    "render_seconds": 0.0,
                    "renderer_version": made_by,
                    "capabilities": made_with,
                }
            )

    def flush(self) -> None:
        self.last_flush = time.monotonic()
        if not self.pending and not self.pending_facts:
            return
        rows, self.pending = self.pending, []
        facts, self.pending_facts = self.pending_facts, []
        now = datetime.now(timezone.utc).replace(tzinfo=None)
        outcomes = self._thumbnail_table(rows, now) if rows else None
        measured = self._facts_table(facts, now) if facts else None
        # rows of this partition's own files: beside other lanes' and shards' writes. In
        # PostgreSQL two runs of one partition at once (a redelivered task) can collide on the
        # same rows; the batch is idempotent, so it is sent again.
        for attempt in range(1, 4):
            try:
                with self.catalogue.connect(alone=False) as con:
                    if outcomes is not None:
                        con.register("outcomes", outcomes)
                        con.execute(
                            "INSERT OR REPLACE INTO thumbnails BY NAME SELECT * FROM outcomes"
                        )
                    if measured is not None:
                        con.register("measured", measured)
                        con.execute(
                            "INSERT OR REPLACE INTO model_facts BY NAME SELECT * FROM measured"
                        )
                break
            except duckdb.Error as exc:
                if attempt == 3 or not write_conflict(exc):
                    raise
                time.sleep(0.5 * attempt)
        self.written += len(rows)
        self.measured += len(facts)

    def _thumbnail_table(self, rows: list[dict], now) -> pa.Table:
        cols = {k: [r[k] for r in rows] for k in rows[0]}
        n = len(rows)
        return pa.table(
            {
                "file_id": pa.array(cols["file_id"], pa.int64()),
                "size_bytes": pa.array(cols["size_bytes"], pa.int64()),
                "mtime_ns": pa.array(cols["mtime_ns"], pa.int64()),
                "ctime_ns": pa.array(cols["ctime_ns"], pa.int64()),
                "memory_kills": pa.array(cols["memory_kills"], pa.int32()),
                "lane": pa.array([self.bucket.lane] * n, pa.string()),
                "bucket": pa.array([self.bucket.bucket_key] * n, pa.string()),
                "status": pa.array(cols["status"], pa.string()),
                "source": pa.array(cols["source"], pa.string()),
                "content_md5": pa.array(cols["content_md5"], pa.string()),
                "thumbnail_relpath": pa.array(cols["thumbnail_relpath"], pa.string()),
                "thumbnail_size": pa.array([self.size] * n, pa.int32()),
                "background": pa.array([self.background] * n, pa.string()),
                "error_class": pa.array(cols["error_class"], pa.string()),
                "error_message": pa.array(cols["error_message"], pa.string()),
                "transient": pa.array(cols["transient"], pa.bool_()),
                "render_seconds": pa.array(cols["render_seconds"], pa.float64()),
                "rendered_at": pa.array([now] * n, pa.timestamp("us")),
                "renderer_version": pa.array(cols["renderer_version"], pa.string()),
                "capabilities": pa.array(cols["capabilities"], pa.string()),
                "retry_requested": pa.array([False] * n, pa.bool_()),
            }
        )

    @staticmethod
    def _facts_table(rows: list[dict], now) -> pa.Table:
        n = len(rows)
        columns = {
            "file_id": pa.array([r["file_id"] for r in rows], pa.int64()),
            "size_bytes": pa.array([r["size_bytes"] for r in rows], pa.int64()),
            "mtime_ns": pa.array([r["mtime_ns"] for r in rows], pa.int64()),
            "ctime_ns": pa.array([r["ctime_ns"] for r in rows], pa.int64()),
            "facts_version": pa.array([FACTS_VERSION] * n, pa.int32()),
            "content_md5": pa.array([r["content_md5"] for r in rows], pa.string()),
            "error_class": pa.array([r["error_class"] for r in rows], pa.string()),
            "error_message": pa.array([r["error_message"] for r in rows], pa.string()),
        }
        for name, kind in FACT_COLUMNS.items():
            columns[name] = pa.array([r[name] for r in rows], kind)
        columns["measured_at"] = pa.array([now] * n, pa.timestamp("us"))
        return pa.table(columns)


@dataclass
class LaneStats:
    """What one partition's run did, from its outcomes."""

    planned: int
    seconds: float
    by_status: Counter
    by_source: Counter
    failures: list[tuple[str, str, str, str]]  # path, status, error class, message
    made: list[Path]  # PNGs rendered (or taken) this run
    transient_failures: int  # failures a retry could mend

    @property
    def rendered(self) -> int:
        return self.by_source.get("render", 0)

    @property
    def rate(self) -> float:
        """Files through the lane per second (renders, cache hits, embedded, images)."""
        return self.planned / self.seconds if self.seconds > 0 else 0.0


def lane_stats(
    outcomes: Iterable[RenderOutcome], plan: Plan, thumbs_dir: Path, seconds: float
) -> LaneStats:
    paths = {t.key: t.path for t in plan.tasks}
    outcomes = list(outcomes)
    stats = LaneStats(
        planned=len(plan.tasks),
        seconds=seconds,
        by_status=Counter(o.status for o in outcomes),
        by_source=Counter(o.source for o in outcomes if o.ok),
        failures=[
            (paths[o.key], o.status, o.error_class or "", o.error_message or "")
            for o in outcomes
            if not o.ok
        ],
        made=[thumbs_dir / o.thumbnail_relpath for o in outcomes if o.ok and o.source != "cache"],
        transient_failures=sum(1 for o in outcomes if not o.ok and o.transient),
    )
    stats.by_status["unsupported"] += len(plan.unsupported)
    return stats


def lane_counts(catalogue: Catalogue, lane: str) -> dict[str, int]:
    """Current thumbnail rows of a lane by status."""
    with catalogue.connect(write=False) as con:
        rows = con.execute(
            "SELECT status, count(*) FROM current_thumbnails WHERE lane = ? GROUP BY status", [lane]
        ).fetchall()
    return {status: int(n) for status, n in rows}


@dataclass
class BucketState:
    """A partition as it is now (not only what its last run did): files by thumbnail status,
    with the failures of every run so far that still stand."""

    files: int  # thumbnail-able present files of the bucket
    by_status: dict[str, int]  # current rows by status
    not_rendered: int  # no current row yet
    rows: int  # current rows of the bucket in the thumbnails table
    failures: list[tuple[str, str, str, str]]  # (path, status, class, message), first `limit`
    failures_total: int


def bucket_state(catalogue: Catalogue, bucket: SizeBucket, limit: int = 25) -> BucketState:
    exts = ", ".join(f"'{e}'" for e in sorted(THUMBNAIL_EXTENSIONS))
    failed = ", ".join(f"'{s}'" for s in FAILED_STATUSES)
    where = f"""f.size_bytes >= $low AND ($high IS NULL OR f.size_bytes < $high)
                AND f.extension IN ({exts}) AND {SHARD_SQL}"""
    args = bucket.sql_args()
    with catalogue.connect(write=False) as con:
        counts = con.execute(
            f"""SELECT t.status, count(*) FROM present_files f
                LEFT JOIN current_thumbnails t USING (file_id) WHERE {where} GROUP BY t.status""",
            args,
        ).fetchall()
        failures = con.execute(
            f"""SELECT f.path, t.status, t.error_class, t.error_message
                FROM present_files f JOIN current_thumbnails t USING (file_id)
                WHERE {where} AND t.status IN ({failed}) ORDER BY f.path LIMIT {int(limit)}""",
            args,
        ).fetchall()
    by_status = {s: int(n) for s, n in counts if s is not None}
    not_rendered = sum(int(n) for s, n in counts if s is None)
    return BucketState(
        files=sum(by_status.values()) + not_rendered,
        by_status=by_status,
        not_rendered=not_rendered,
        rows=sum(by_status.values()),
        failures=[(p, s, c or "", m or "") for p, s, c, m in failures],
        failures_total=sum(by_status.get(s, 0) for s in FAILED_STATUSES),
    )
