"""Finding exact duplicates as a sequence of stages, each narrowing the candidates.

    stage 0  size         a file whose size no other present file shares has no duplicate:
                          it is never read. Zero-byte files are reported as empty instead.
    stage 1a prefix       XXH64 of the first 4 KiB, for the files left: one small read that
                          sets apart most files which merely share a size (a NAS pays per byte).
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

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.compute as pc

from .config import cpu_count
from .hashing import Progress, hash_table, hashing_in_c
from .store import Catalogue
from .walk import on_network_filesystem


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


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


_ROW_COLUMNS = (
    ("file_id", pa.int64()),
    ("size_bytes", pa.int64()),
    ("mtime_ns", pa.int64()),
    ("ctime_ns", pa.int64()),
    ("prefix_hash", pa.string()),
    ("partial_hash", pa.string()),
    ("full_hash", pa.string()),
    (None, None),
    ("error_class", pa.string()),
    ("error_message", pa.string()),
    ("transient", pa.bool_()),
)  # fmt: skip  (hashing.OUTCOME_FIELDS; bytes read is not stored)


def _outcomes_table(columns: tuple[list, ...], now: datetime) -> pa.Table:
    """A batch of outcomes (hashing.hash_columns' lists) as the rows of a hash table."""
    table = {
        name: pa.array(columns[i], kind) for i, (name, kind) in enumerate(_ROW_COLUMNS) if name
    }
    # `transient` means something only for an error
    errors = table["error_class"]
    table["transient"] = pc.if_else(pc.is_null(errors), None, table["transient"])
    table["hashed_at"] = pa.repeat(pa.scalar(now, pa.timestamp("us")), len(columns[0]))
    return pa.table(table)


class _RowWriter:
    """Takes hashing outcomes as they come, tallies them, and writes them in batches (each one
    transaction, no connection open in between): memory stays flat and a crash keeps what was
    written. Rows wait as Arrow tables, not Python tuples (985,644 prefix rows: 129 MB with
    MD5 prefixes), and a batch is large: each write into DuckDB costs about half a second
    beside its rows (opening the file, checkpointing its index), so a million prefixes written
    100,000 at a time took 4.5 s against 2.7 s 500,000 at a time (docs/BENCHMARKS.md); and
    while it writes, the helpers reading files run out of batches and wait (0.8 s of a
    million-file prefix pass with a write halfway): a million rows at a time.

    `rows` is the SELECT of the rows to write from the batch (`outcomes`) into `table`, each
    replacing the row of its file_id if there is one (see flush)."""

    def __init__(
        self,
        catalogue: Catalogue,
        rows: tuple[str, str],
        stats: HashStats,
        counts: str,
        batch: int = 1_000_000,
        every_s: float = 30.0,
    ):
        self.catalogue, self.rows, self.stats = catalogue, rows, stats
        self.counts = counts  # the HashStats field a successful read adds to
        self.batch, self.every_s = batch, every_s
        self.tables: list[pa.Table] = []
        self.pending = 0
        self.last = time.monotonic()

    def add(self, outcomes, failures: list[tuple], bytes_read: int) -> None:
        """One batch of outcomes: hashing.hash_columns' lists, or an Arrow table of the rows'
        columns but `hashed_at` (hashing.hash_table's fast prefix path)."""
        stats = self.stats
        n = outcomes.num_rows if isinstance(outcomes, pa.Table) else len(outcomes[0])
        stats.bytes_read += bytes_read
        setattr(stats, self.counts, getattr(stats, self.counts) + n - len(failures))
        stats.errors += len(failures)
        stats.transient_errors += sum(1 for f in failures if f[3])
        stats.failures.extend(f[:3] for f in failures)
        if n and isinstance(outcomes, pa.Table):
            now = pa.repeat(pa.scalar(_now(), pa.timestamp("us")), n)
            self.tables.append(outcomes.append_column("hashed_at", now))
            self.pending += n
        elif n:
            self.tables.append(_outcomes_table(outcomes, _now()))
            self.pending += n
        if self.pending >= self.batch or time.monotonic() - self.last >= self.every_s:
            self.flush()

    def flush(self) -> None:
        """One transaction. In the DuckDB file: the batch's rows made, the rows of the same
        file_ids deleted, the new ones inserted. A million new rows took 0.57 s so, against
        1.0-1.25 s with INSERT OR REPLACE; and replacing rows that exist, INSERT OR REPLACE
        falls off a cliff past DuckDB's memory limit (300,000 rows in 0.3 s, 500,000 in 68 s,
        where delete and insert took 1.7 s). In PostgreSQL: INSERT OR REPLACE (an upsert
        there), WRITE_SLICE rows a statement."""
        self.last = time.monotonic()
        if not self.tables:
            return
        table = pa.concat_tables(self.tables)
        self.tables, self.pending = [], 0
        target, rows = self.rows
        with self.catalogue.connect() as con:
            if self.catalogue.url:
                for start in range(0, table.num_rows, WRITE_SLICE):
                    con.register("outcomes", table.slice(start, WRITE_SLICE))
                    con.execute(f"INSERT OR REPLACE INTO {target} BY NAME {rows}")
                return
            con.register("outcomes", table)
            con.execute(f"CREATE OR REPLACE TEMP TABLE new_rows AS {rows}")
            con.execute(f"DELETE FROM {target} WHERE file_id IN (SELECT file_id FROM new_rows)")
            con.execute(f"INSERT INTO {target} BY NAME SELECT * FROM new_rows")


WRITE_SLICE = 200_000  # rows per INSERT OR REPLACE (PostgreSQL): see _RowWriter.flush


# What the stages write: (table, the rows to write, from the batch `outcomes`).
_PARTIAL_ROWS = ("partial_hashes", "SELECT * FROM outcomes")
# A prefix read keeps the partial and full hash a row already has for the same file state (a
# catalogue from before the prefix was XXH64 reads every prefix again once, not the rest).
# (No condition on one side inside the join: DuckDB 1.5 then plans a nested loop, 205 s for
# 500,000 outcomes against 1.0 s so.)
_PREFIX_ROWS = (
    "partial_hashes",
    """
    SELECT o.* REPLACE (
        CASE WHEN o.error_class IS NULL THEN COALESCE(o.partial_hash, p.partial_hash) END
            AS partial_hash,
        CASE WHEN o.error_class IS NULL THEN COALESCE(o.full_hash, p.full_hash) END AS full_hash)
    FROM outcomes o LEFT JOIN (
        SELECT file_id, size_bytes, mtime_ns, ctime_ns, partial_hash, full_hash
        FROM partial_hashes WHERE error_class IS NULL AND partial_hash IS NOT NULL) p
      ON p.file_id = o.file_id AND p.size_bytes = o.size_bytes AND p.mtime_ns = o.mtime_ns
         AND p.ctime_ns IS NOT DISTINCT FROM o.ctime_ns
    """,
)
_FULL_ROWS = (
    "full_hashes",
    """
    SELECT file_id, size_bytes, mtime_ns, ctime_ns, full_hash, 'full_read' AS source, hashed_at,
           error_class, error_message, transient
    FROM outcomes
    """,
)


def _hash_stage(
    catalogue, jobs: pa.Table, kind, threads, rows, stats, counts, follow, on_progress, stage,
    processes: int = 0, advise: bool | None = None,
) -> None:  # fmt: skip
    writer = _RowWriter(catalogue, rows, stats, counts)
    hash_table(jobs, kind, threads, writer.add, follow, on_progress, stage=stage,
               processes=processes, advise=advise)  # fmt: skip
    writer.flush()


# Below this many files a pass is over before helper processes would have started.
PROCESS_MIN_FILES = 20_000


def helper_processes(files: int, network: bool) -> int:
    """Helper processes for a prefix or partial pass: on a local disk its many small reads
    are Python work (four system calls and an MD5 a file) that threads serialise on the GIL;
    one process per CPU reads them in parallel. On a share each read is a round trip, which
    threads overlap well; whole-file reads (stage 3) release the GIL and use threads."""
    if network or files < PROCESS_MIN_FILES or cpu_count() < 2:
        return 0
    return min(cpu_count(), 8)


# --- stage marks ---------------------------------------------------------------------------
# Each stage records the inventory scan it brought itself up to date with (read when it
# starts), so `chain_is_current` can tell that nothing is left to do without doing it.
STAGES = ("partial_hashes", "collision_candidates", "full_hashes", "duplicates")


def _latest_scan(con):
    """The last inventory scan committed (scans commit one at a time, under the lock)."""
    return con.execute("SELECT max(finished_at) FROM inventory_scans").fetchall()[0][0]


def _mark(con, stage: str, scan, options: str = "") -> None:
    if scan is not None:
        con.execute(
            "INSERT OR REPLACE INTO stage_marks VALUES (?, ?, ?, ?)", [stage, scan, _now(), options]
        )


def _mark_done(catalogue: Catalogue, stage: str, scan, options: str = "") -> None:
    with catalogue.connect() as con:
        _mark(con, stage, scan, options)


def _options(hash_all_sizes: bool) -> str:
    return "all sizes" if hash_all_sizes else "shared sizes"


def chain_is_current(catalogue: Catalogue, hash_all_sizes: bool = False) -> bool:
    """Whether every dedup stage has seen the latest inventory scan, with these options, and
    nothing is left to retry (no transient error on a file a stage would read): running
    the chain again would change nothing."""
    with catalogue.connect(write=False) as con:
        scan = _latest_scan(con)
        if scan is None:
            return False
        marks = {
            stage: (seen, options)
            for stage, seen, options in con.execute(
                "SELECT stage, scan, options FROM stage_marks"
            ).fetchall()
        }
        con.execute(_eligible(hash_all_sizes)).fetchall()
        retries = con.execute(
            "SELECT (SELECT count(*) FROM current_partial_hashes WHERE transient"
            "        AND file_id IN (SELECT file_id FROM eligible))"
            " + (SELECT count(*) FROM current_full_hashes WHERE transient"
            "        AND file_id IN (SELECT file_id FROM collision_candidates))"
        ).fetchall()[0][0]
    if marks.get("partial_hashes", (None, None))[1] != _options(hash_all_sizes):
        return False
    return all(marks.get(s, (None,))[0] == scan for s in STAGES) and not retries


# The order jobs are read in: the members of one archive together (it is opened, or a 7z
# decompressed, once per stage: core/hashing.py), then by file_id, which the inventory gives
# in path order within each scan. Sorting a million jobs by path took 0.68 s; this 0.31 s.
JOB_ORDER = "archive_path NULLS FIRST, file_id"

# A hashing error about the file itself (core/failures.py): kept until the file changes.
# Transient ones (and rows from before v3, transient NULL) are read again on every run.
PERMANENT_ERROR = "(error_class IS NOT NULL AND transient IS FALSE)"


# --- stages 0, 1a and 1b -------------------------------------------------------------------
_ELIGIBLE = """
    CREATE OR REPLACE TEMP TABLE eligible AS
    SELECT f.file_id, f.path, f.raw_path, f.size_bytes, f.mtime_ns, f.ctime_ns, f.root,
           a.path AS archive_path, a.raw_path AS archive_raw, f.member
    FROM present_files f LEFT JOIN file_inventory a ON a.file_id = f.archive_id
    WHERE f.size_bytes > 0 AND ({all} OR f.size_bytes IN (
        SELECT size_bytes FROM present_files WHERE size_bytes > 0
        GROUP BY size_bytes HAVING count(*) > 1))
"""


def _sql_bool(value: bool) -> str:
    """The option as a literal, not a parameter: with `$all` as a prepared parameter DuckDB
    1.5 could not fold `NOT $all AND ...` away and took 5.2 s instead of 0.13 s to list the
    prefix jobs of a million files (docs/BENCHMARKS.md, "Scale on one machine")."""
    return "true" if value else "false"


def _eligible(hash_all_sizes: bool) -> str:
    return _ELIGIBLE.format(all=_sql_bool(hash_all_sizes))


def prefix_threads(roots: list[str], io_threads: int) -> int:
    """Threads for the 4 KiB prefix pass: thousands of tiny reads, five system calls each.

    On a network share every read is a round trip: all io_threads. In C (core/_fastio.c) the
    reads hold no GIL, so a local disk gets all io_threads too: the reads a cold disk has in
    flight at once are what it does fastest (34,249 files, 26,545 prefix reads after a cache
    drop: 1.0-2.3 s with 16 threads against 2.1-3.3 s with 2; a million files warm, no
    slower: 3.9-4.7 s against 5.1-5.6 s). In Python more than two threads only fight over
    the GIL: the pass of the benchmark (15,803 files) took 0.62 s warm with 2 threads against
    1.06 s with 8, and cold 1.86 s against 1.81 s (medians, see docs/HASHING.md).
    """
    if hashing_in_c() or on_network_filesystem(roots):
        return io_threads
    return min(io_threads, max(2, cpu_count()))


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
    every = _sql_bool(hash_all_sizes)
    with catalogue.connect(write=False) as con:
        scan = _latest_scan(con)
        con.execute(_eligible(hash_all_sizes)).fetchall()  # stage 0
        stats.eligible = con.execute("SELECT count(*) FROM eligible").fetchall()[0][0]
        stats.skipped_unique_size = (
            con.execute("SELECT count(*) FROM present_files WHERE size_bytes > 0").fetchall()[0][0]
            - stats.eligible
        )
        prefix_jobs = con.sql(
            f"""
            SELECT e.file_id, e.path, e.raw_path, e.size_bytes, e.mtime_ns, e.ctime_ns,
                   e.archive_path, e.archive_raw, e.member
            FROM eligible e
            WHERE NOT {every} AND e.file_id NOT IN (
                SELECT file_id FROM current_partial_hashes
                WHERE prefix_hash IS NOT NULL OR {PERMANENT_ERROR})
            ORDER BY {JOB_ORDER}
        """
        ).to_arrow_table()
        roots = [r[0] for r in con.execute("SELECT DISTINCT root FROM eligible").fetchall()]
        # rows with a partial hash and no prefix (a catalogue of before XXH64) keep it
        carry_over = con.execute(
            "SELECT count(*) FROM (SELECT 1 FROM partial_hashes "
            "WHERE prefix_hash IS NULL AND partial_hash IS NOT NULL LIMIT 1)"
        ).fetchall()[0][0]
    network = on_network_filesystem(roots)
    _hash_stage(
        catalogue,
        prefix_jobs,
        "prefix",
        prefix_threads(roots, io_threads),
        _PREFIX_ROWS if carry_over else _PARTIAL_ROWS,
        stats,
        "prefix_reads",
        follow_symlinks,
        on_progress,
        "first 4 KiB",
        # in C the reads hold no GIL: threads do what helper processes did, without sending
        # paths and hashes through pipes (985,644 files: 2.5-3.3 s against 3.6-4.8 s)
        0 if hashing_in_c() else helper_processes(prefix_jobs.num_rows, network),
        advise=network,  # a local disk gains nothing from the advice (core/hashing.py)
    )  # stage 1a

    with catalogue.connect(write=False) as con:
        con.execute(_eligible(hash_all_sizes)).fetchall()  # finished: the next query is a relation
        # (a SEMI JOIN on the two columns, not a tuple IN: 0.3 s against 0.5 s at a million)
        partial_jobs = con.sql(
            f"""
            WITH cur AS (
                SELECT p.* FROM current_partial_hashes p JOIN eligible USING (file_id)),
            shared AS (
                SELECT size_bytes, prefix_hash FROM cur WHERE prefix_hash IS NOT NULL
                GROUP BY size_bytes, prefix_hash HAVING count(*) > 1),
            wanted AS (
                SELECT e.file_id FROM eligible e LEFT JOIN cur USING (file_id)
                WHERE cur.partial_hash IS NULL
                  AND (cur.error_class IS NULL OR cur.transient IS NOT FALSE) AND {every}
                UNION ALL
                SELECT cur.file_id FROM cur SEMI JOIN shared USING (size_bytes, prefix_hash)
                WHERE NOT {every} AND cur.partial_hash IS NULL
                  AND (cur.error_class IS NULL OR cur.transient IS NOT FALSE))
            SELECT e.file_id, e.path, e.raw_path, e.size_bytes, e.mtime_ns, e.ctime_ns,
                   e.archive_path, e.archive_raw, e.member
            FROM eligible e SEMI JOIN wanted USING (file_id)
            ORDER BY {JOB_ORDER}
        """
        ).to_arrow_table()
    _hash_stage(
        catalogue,
        partial_jobs,
        "partial",
        io_threads,
        _PARTIAL_ROWS,
        stats,
        "files_read",
        follow_symlinks,
        on_progress,
        "first and last 64 KiB",
        helper_processes(partial_jobs.num_rows, network),
    )  # stage 1b
    read_twice = pc.sum(
        pc.is_in(partial_jobs["file_id"], value_set=prefix_jobs["file_id"].combine_chunks())
    ).as_py()
    stats.reused = stats.eligible - prefix_jobs.num_rows - partial_jobs.num_rows + (read_twice or 0)
    _mark_done(catalogue, "partial_hashes", scan, _options(hash_all_sizes))
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
        _mark(con, "collision_candidates", _latest_scan(con))
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
        scan = _latest_scan(con)
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
        ).fetchall()[0][0]
        jobs = con.sql(f"""
            SELECT f.file_id, f.path, f.raw_path, f.size_bytes, f.mtime_ns, f.ctime_ns,
                   a.path AS archive_path, a.raw_path AS archive_raw, f.member
            FROM collision_candidates c JOIN present_files f USING (file_id)
            LEFT JOIN file_inventory a ON a.file_id = f.archive_id
            WHERE c.file_id NOT IN (
                SELECT file_id FROM current_full_hashes
                WHERE full_hash IS NOT NULL OR {PERMANENT_ERROR})
            ORDER BY {JOB_ORDER}
        """).to_arrow_table()
    stats.reused = stats.eligible - jobs.num_rows - stats.from_small_file_read
    _hash_stage(
        catalogue,
        jobs,
        "full",
        io_threads,
        _FULL_ROWS,
        stats,
        "files_read",
        follow_symlinks,
        on_progress,
        "whole files",
    )  # stage 3
    _mark_done(catalogue, "full_hashes", scan)
    stats.seconds = (datetime.now() - t0).total_seconds()
    return stats


# --- stage 4 -----------------------------------------------------------------------------
# Which member of a group of identical files is the original: a file of its own before a
# member of a zip (the archive is the copy), then the lowest file_id (the first seen).
ORIGINAL_FIRST = "(f.archive_id IS NOT NULL), h.file_id"


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
        _mark(con, "duplicates", _latest_scan(con))
        con.execute("DELETE FROM duplicates")
        con.execute(f"""
            INSERT INTO duplicates
            SELECT file_id, full_hash, size_bytes, original_id,
                   CASE WHEN file_id = original_id THEN NULL ELSE original_id END,
                   group_size
            FROM (
                SELECT h.file_id, h.full_hash, h.size_bytes,
                       first_value(h.file_id) OVER (g ORDER BY {ORIGINAL_FIRST}) AS original_id,
                       count(*) OVER g AS group_size
                FROM collision_candidates c JOIN current_full_hashes h USING (file_id)
                JOIN file_inventory f USING (file_id)
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
               arg_min(f.path, d.file_id <> d.original_id) AS original,
               list(f.path ORDER BY d.file_id <> d.original_id, d.file_id) AS members
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
        rows = con.execute(f"""
            SELECT d.file_id,
                CASE
                    WHEN fo.file_id IS NULL THEN 'original is not present'
                    WHEN fd.file_id IS NULL THEN 'copy is not present'
                    WHEN hd.full_hash IS NULL OR ho.full_hash IS NULL THEN 'hash no longer current'
                    WHEN hd.full_hash <> ho.full_hash THEN 'full hash differs from the original'
                    WHEN hd.size_bytes <> ho.size_bytes THEN 'size differs from the original'
                    WHEN d.duplicate_of_id <> (
                        SELECT x.file_id FROM duplicates x JOIN file_inventory k USING (file_id)
                        WHERE x.original_id = d.original_id
                        ORDER BY {ORIGINAL_FIRST.replace("f.", "k.").replace("h.", "x.")}
                        LIMIT 1)
                        THEN 'original is not the first of its group'
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
