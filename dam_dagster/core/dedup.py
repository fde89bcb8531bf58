"""Finding exact duplicates as a sequence of stages, each narrowing the candidates.

    stage 0  size         a file whose size no other present file shares has no duplicate:
                          it is never read. Zero-byte files are reported as empty instead.
    stage 1a prefix       MD5 of the first 4 KiB, for the files left: one small read that sets
                          apart most files which merely share a size (a NAS pays per byte).
    stage 1b partial hash MD5 of the first and last 64 KiB and the size (core/hashing.py), for
                          files sharing (size, prefix). Files of at most 128 KiB are read whole
                          here, once, and get their full hash from the same read.
    stage 2  candidates   files sharing (size, partial hash) with another present file.
    stage 3  full hash    MD5 of the whole file, for candidates only.
    stage 4  duplicates   files sharing (size, full hash); the lowest file_id is the original,
                          every other member points at it. Nothing is deleted or moved.

Each stage reads its input in one short transaction, does its reading of library files with
no connection open, and writes its output in one transaction. Stages 1 and 3 are incremental:
a hash is kept as long as the file's (size, mtime) is the one it was computed from.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

import pyarrow as pa

from .hashing import HashJob, HashOutcome, Progress, hash_full, hash_many, hash_partial, hash_prefix
from .store import Catalogue
from .walk import on_network_filesystem


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def _fs_path(path: str, raw_path: bytes | None) -> str:
    return os.fsdecode(raw_path) if raw_path is not None else path


def _jobs(rows) -> list[HashJob]:
    return [HashJob(r[0], _fs_path(r[1], r[2]), r[3], r[4], r[5]) for r in rows]


@dataclass
class HashStats:
    """What a hashing stage did; `failures` are (path, error class, message)."""

    eligible: int = 0  # files this stage is about
    reused: int = 0  # already current: not read
    prefix_reads: int = 0  # stage 1a: files whose first 4 KiB were read
    files_read: int = 0  # head and tail (stage 1b) or whole file (stage 3)
    bytes_read: int = 0
    errors: int = 0
    transient_errors: int = 0
    skipped_unique_size: int = 0
    from_small_file_read: int = 0
    seconds: float = 0.0
    failures: list[tuple[str, str, str]] = field(default_factory=list)


def _outcome_table(outcomes: list[HashOutcome], now: datetime) -> pa.Table:
    return pa.table(
        {
            "file_id": pa.array([o.file_id for o in outcomes], pa.int64()),
            "size_bytes": pa.array([o.size_bytes for o in outcomes], pa.int64()),
            "mtime_ns": pa.array([o.mtime_ns for o in outcomes], pa.int64()),
            "ctime_ns": pa.array([o.ctime_ns for o in outcomes], pa.int64()),
            "prefix_hash": pa.array([o.prefix_hash for o in outcomes], pa.string()),
            "partial_hash": pa.array([o.partial_hash for o in outcomes], pa.string()),
            "full_hash": pa.array([o.full_hash for o in outcomes], pa.string()),
            "hashed_at": pa.array([now] * len(outcomes), pa.timestamp("us")),
            "error_class": pa.array([o.error_class for o in outcomes], pa.string()),
            "error_message": pa.array([o.error_message for o in outcomes], pa.string()),
            "transient": pa.array(
                [o.transient if not o.ok else None for o in outcomes], pa.bool_()
            ),
        }
    )


def _tally(
    stats: HashStats, outcomes: list[HashOutcome], paths: dict[int, str], prefix: bool = False
) -> None:
    for o in outcomes:
        stats.bytes_read += o.bytes_read
        if o.ok and prefix:
            stats.prefix_reads += 1
        elif o.ok:
            stats.files_read += 1
        else:
            stats.errors += 1
            stats.transient_errors += o.transient
            stats.failures.append((paths[o.file_id], o.error_class or "", o.error_message or ""))


# A hashing error about the file itself (core/failures.py): kept until the file changes.
# Transient ones (and rows from before v3, transient NULL) are read again on every run.
PERMANENT_ERROR = "(error_class IS NOT NULL AND transient IS FALSE)"


# --- stages 0, 1a and 1b -------------------------------------------------------------------
_ELIGIBLE = """
    CREATE OR REPLACE TEMP TABLE eligible AS
    SELECT f.file_id, f.path, f.raw_path, f.size_bytes, f.mtime_ns, f.ctime_ns, f.root
    FROM present_files f
    WHERE f.size_bytes > 0 AND ($all OR f.size_bytes IN (
        SELECT size_bytes FROM present_files WHERE size_bytes > 0
        GROUP BY size_bytes HAVING count(*) > 1))
"""


def _write_partial_rows(catalogue: Catalogue, outcomes: list[HashOutcome]) -> None:
    if outcomes:
        with catalogue.connect() as con:
            con.register("outcomes", _outcome_table(outcomes, _now()))
            con.execute("INSERT OR REPLACE INTO partial_hashes BY NAME SELECT * FROM outcomes")


def prefix_threads(roots: list[str], io_threads: int) -> int:
    """Threads for the 4 KiB prefix pass: thousands of tiny reads, five system calls each.

    On a network share every read is a round trip: all io_threads. On a local disk more than
    two threads only fight over the GIL: the pass of the benchmark (15,803 files) took 0.62 s
    warm with 2 threads against 1.06 s with 8, and cold 1.86 s against 1.81 s (medians, see
    docs/HASHING.md); one thread was as fast warm (0.56-0.60 s) but took 2.56 s cold.
    """
    return io_threads if on_network_filesystem(roots) else min(io_threads, 2)


def update_partial_hashes(
    catalogue: Catalogue,
    io_threads: int = 8,
    hash_all_sizes: bool = False,
    follow_symlinks: bool = False,
    on_progress: Callable[[Progress], None] | None = None,
) -> HashStats:
    """Stages 0, 1a and 1b; with hash_all_sizes every non-empty file gets a partial hash."""
    stats = HashStats()
    t0 = datetime.now()
    args = {"all": hash_all_sizes}
    with catalogue.connect(write=False) as con:
        con.execute(_ELIGIBLE, args)  # stage 0
        stats.eligible = con.execute("SELECT count(*) FROM eligible").fetchone()[0]
        stats.skipped_unique_size = (
            con.execute("SELECT count(*) FROM present_files WHERE size_bytes > 0").fetchone()[0]
            - stats.eligible
        )
        prefix_rows = (
            []
            if hash_all_sizes
            else con.execute(f"""
            SELECT e.file_id, e.path, e.raw_path, e.size_bytes, e.mtime_ns, e.ctime_ns
            FROM eligible e
            WHERE e.file_id NOT IN (
                SELECT file_id FROM current_partial_hashes
                WHERE prefix_hash IS NOT NULL OR {PERMANENT_ERROR})
            ORDER BY e.path
        """).fetchall()
        )
        roots = [r[0] for r in con.execute("SELECT DISTINCT root FROM eligible").fetchall()]
    outcomes = hash_many(
        _jobs(prefix_rows),
        lambda j: hash_prefix(j, follow_symlinks),
        prefix_threads(roots, io_threads),
        on_progress,
        stage="first 4 KiB",
    )  # stage 1a
    _tally(stats, outcomes, {r[0]: r[1] for r in prefix_rows}, prefix=True)
    _write_partial_rows(catalogue, outcomes)

    with catalogue.connect(write=False) as con:
        con.execute(_ELIGIBLE, args)
        partial_rows = con.execute(
            """
            WITH cur AS (
                SELECT p.* FROM current_partial_hashes p JOIN eligible USING (file_id)),
            shared AS (
                SELECT size_bytes, prefix_hash FROM cur WHERE prefix_hash IS NOT NULL
                GROUP BY size_bytes, prefix_hash HAVING count(*) > 1)
            SELECT e.file_id, e.path, e.raw_path, e.size_bytes, e.mtime_ns, e.ctime_ns
            FROM eligible e LEFT JOIN cur USING (file_id)
            WHERE cur.partial_hash IS NULL
              AND (cur.error_class IS NULL OR cur.transient IS NOT FALSE)
              AND ($all OR (cur.size_bytes, cur.prefix_hash) IN (
                SELECT (size_bytes, prefix_hash) FROM shared))
            ORDER BY e.path
        """,
            args,
        ).fetchall()
    outcomes = hash_many(
        _jobs(partial_rows),
        lambda j: hash_partial(j, follow_symlinks),
        io_threads,
        on_progress,
        stage="first and last 64 KiB",
    )  # stage 1b
    _tally(stats, outcomes, {r[0]: r[1] for r in partial_rows})
    _write_partial_rows(catalogue, outcomes)
    stats.reused = stats.eligible - len({r[0] for r in prefix_rows + partial_rows})
    stats.seconds = (datetime.now() - t0).total_seconds()
    return stats


# --- stage 2 ------------------------------------------------------------------------------
@dataclass
class CandidateStats:
    groups: int
    files: int
    bytes: int
    empty_files: int
    hashed_files: int


def update_collision_candidates(catalogue: Catalogue) -> CandidateStats:
    with catalogue.connect() as con:
        con.execute("DELETE FROM collision_candidates")
        con.execute("""
            INSERT INTO collision_candidates
            SELECT file_id, size_bytes, partial_hash,
                   count(*) OVER (PARTITION BY size_bytes, partial_hash) AS group_size
            FROM current_partial_hashes
            WHERE partial_hash IS NOT NULL AND size_bytes > 0
            QUALIFY group_size > 1
        """)
        groups, files, size = con.execute("""
            SELECT count(DISTINCT (size_bytes, partial_hash)), count(*),
                   COALESCE(sum(size_bytes), 0)
            FROM collision_candidates
        """).fetchone()
        empty = con.execute("SELECT count(*) FROM empty_files").fetchone()[0]
        hashed = con.execute(
            "SELECT count(*) FROM current_partial_hashes WHERE partial_hash IS NOT NULL"
        ).fetchone()[0]
    return CandidateStats(int(groups), int(files), int(size), int(empty), int(hashed))


# --- stage 3 ------------------------------------------------------------------------------
def update_full_hashes(
    catalogue: Catalogue,
    io_threads: int = 8,
    follow_symlinks: bool = False,
    on_progress: Callable[[Progress], None] | None = None,
) -> HashStats:
    stats = HashStats()
    t0 = datetime.now()
    with catalogue.connect() as con:
        stats.eligible = con.execute("SELECT count(*) FROM collision_candidates").fetchone()[0]
        # Small files were read whole by stage 1: their full hash is already known.
        stats.from_small_file_read = con.execute(
            """
            INSERT OR REPLACE INTO full_hashes BY NAME
            SELECT p.file_id, p.size_bytes, p.mtime_ns, p.ctime_ns, p.full_hash,
                   'small_file' AS source, $now AS hashed_at
            FROM collision_candidates c JOIN current_partial_hashes p USING (file_id)
            WHERE p.full_hash IS NOT NULL AND c.file_id NOT IN (
                SELECT file_id FROM current_full_hashes WHERE full_hash IS NOT NULL)
        """,
            {"now": _now()},
        ).fetchone()[0]
        rows = con.execute(f"""
            SELECT f.file_id, f.path, f.raw_path, f.size_bytes, f.mtime_ns, f.ctime_ns
            FROM collision_candidates c JOIN present_files f USING (file_id)
            WHERE c.file_id NOT IN (
                SELECT file_id FROM current_full_hashes
                WHERE full_hash IS NOT NULL OR {PERMANENT_ERROR})
            ORDER BY f.path
        """).fetchall()
    stats.reused = stats.eligible - len(rows) - stats.from_small_file_read
    jobs = _jobs(rows)
    outcomes = hash_many(
        jobs, lambda j: hash_full(j, follow_symlinks), io_threads, on_progress, stage="whole files"
    )
    _tally(stats, outcomes, {r[0]: r[1] for r in rows})
    if outcomes:
        table = _outcome_table(outcomes, _now())
        with catalogue.connect() as con:
            con.register("outcomes", table)
            con.execute("""
                INSERT OR REPLACE INTO full_hashes BY NAME
                SELECT file_id, size_bytes, mtime_ns, ctime_ns, full_hash,
                       'full_read' AS source, hashed_at, error_class, error_message, transient
                FROM outcomes
            """)
    stats.seconds = (datetime.now() - t0).total_seconds()
    return stats


# --- stage 4 ------------------------------------------------------------------------------
@dataclass
class DuplicateGroup:
    full_hash: str
    size_bytes: int
    original: str
    duplicates: list[str]

    @property
    def reclaimable_bytes(self) -> int:
        return self.size_bytes * len(self.duplicates)


@dataclass
class DuplicateStats:
    groups: int
    duplicate_files: int
    reclaimable_bytes: int
    largest: list[DuplicateGroup]


def update_duplicates(catalogue: Catalogue, largest: int = 10) -> DuplicateStats:
    with catalogue.connect() as con:
        con.execute("DELETE FROM duplicates")
        con.execute("""
            INSERT INTO duplicates
            SELECT file_id, full_hash, size_bytes, original_id,
                   CASE WHEN file_id = original_id THEN NULL ELSE original_id END,
                   group_size
            FROM (
                SELECT h.file_id, h.full_hash, h.size_bytes,
                       min(h.file_id) OVER g AS original_id, count(*) OVER g AS group_size
                FROM collision_candidates c JOIN current_full_hashes h USING (file_id)
                WHERE h.full_hash IS NOT NULL
                WINDOW g AS (PARTITION BY h.size_bytes, h.full_hash)
            )
            WHERE group_size > 1
        """)
        return _duplicate_stats(con, largest)


def _duplicate_stats(con, largest: int) -> DuplicateStats:
    groups, files, reclaimable = con.execute("""
        SELECT count(DISTINCT original_id), count(duplicate_of_id),
               COALESCE(sum(CASE WHEN duplicate_of_id IS NOT NULL THEN size_bytes END), 0)
        FROM duplicates
    """).fetchone()
    return DuplicateStats(int(groups), int(files), int(reclaimable), _groups(con, limit=largest))


def _groups(con, limit: int | None = None) -> list[DuplicateGroup]:
    """Groups by reclaimable bytes, largest first; paths are absolute."""
    rows = con.execute(f"""
        SELECT d.full_hash, d.size_bytes,
               arg_min(f.path, d.file_id) AS original,
               list(f.path ORDER BY d.file_id) AS members
        FROM duplicates d JOIN file_inventory f USING (file_id)
        GROUP BY d.original_id, d.full_hash, d.size_bytes
        ORDER BY d.size_bytes * (count(*) - 1) DESC, original
        {"LIMIT " + str(int(limit)) if limit else ""}
    """).fetchall()
    return [DuplicateGroup(r[0], int(r[1]), r[2], list(r[3][1:])) for r in rows]


def duplicate_groups(catalogue: Catalogue) -> list[DuplicateGroup]:
    with catalogue.connect(write=False) as con:
        return _groups(con)


# --- checks -------------------------------------------------------------------------------
def inconsistent_duplicates(catalogue: Catalogue) -> list[tuple[int, str]]:
    """Copies that do not match their original (file_id, why). Empty means consistent."""
    with catalogue.connect(write=False) as con:
        rows = con.execute("""
            SELECT d.file_id,
                CASE
                    WHEN fo.file_id IS NULL THEN 'original is not present'
                    WHEN fd.file_id IS NULL THEN 'copy is not present'
                    WHEN hd.full_hash IS NULL OR ho.full_hash IS NULL THEN 'hash no longer current'
                    WHEN hd.full_hash <> ho.full_hash THEN 'full hash differs from the original'
                    WHEN hd.size_bytes <> ho.size_bytes THEN 'size differs from the original'
                    WHEN d.duplicate_of_id <> (SELECT min(x.file_id) FROM duplicates x
                                               WHERE x.original_id = d.original_id)
                        THEN 'original is not the lowest id'
                END AS why
            FROM duplicates d
            LEFT JOIN present_files fo ON fo.file_id = d.duplicate_of_id
            LEFT JOIN present_files fd ON fd.file_id = d.file_id
            LEFT JOIN current_full_hashes hd ON hd.file_id = d.file_id
            LEFT JOIN current_full_hashes ho ON ho.file_id = d.duplicate_of_id
            WHERE d.duplicate_of_id IS NOT NULL AND why IS NOT NULL
            ORDER BY d.file_id
        """).fetchall()
    return [(int(r[0]), r[1]) for r in rows]


def unhashed_candidates(catalogue: Catalogue) -> list[str]:
    """Candidates with neither a current full hash nor a recorded error (paths)."""
    with catalogue.connect(write=False) as con:
        rows = con.execute("""
            SELECT f.path FROM collision_candidates c
            JOIN present_files f USING (file_id)
            LEFT JOIN current_full_hashes h USING (file_id)
            WHERE h.file_id IS NULL
            ORDER BY f.path
        """).fetchall()
    return [r[0] for r in rows]
