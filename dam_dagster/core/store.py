"""The catalogue: one DuckDB file, owned by this module.

DuckDB allows one writing process per file, while Dagster runs (a backfill starts several),
sensors and the `dam` command all want the catalogue. So every access is a short transaction
under an exclusive cross-process lock (`dam.duckdb.lock`, flock) beside the database file:
wait politely, retry, and fail with a clear message when the lock cannot be had in time.
Callers compute first (hash, render, walk) and only then open a connection to write one batch,
so no connection is ever open while library files are read.

The schema is created and migrated on open; `dam_schema` records the version. A newer release
opens an older file and migrates it in place without losing rows; an older release refuses a
newer file instead of guessing.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import duckdb

from . import store_pg
from .catalogue_errors import CatalogueBusy, CatalogueError, CatalogueMissing, PostgresUnavailable
from .failures import storage_cause
from .render.api import MODEL_EXTENSIONS as RENDERED_MODEL_EXTENSIONS
from .render.capabilities import FACTS_VERSION

DB_NAME = "dam.duckdb"
# Every connection: two threads (the catalogue is one of several things a run does), and a
# bounded buffer pool (256 MB: at 512 MB DuckDB 1.5 took a million-file inventory to 1.1 GB),
# so that a million-file inventory spills its joins to
# `dam.duckdb.tmp/` beside the file rather than growing the process past a NAS's memory.
DUCKDB_CONFIG = {"threads": 2, "memory_limit": "256MB", "preserve_insertion_order": False}
SCHEMA_VERSION = 8


__all__ = [
    "Catalogue",
    "CatalogueBusy",
    "CatalogueError",
    "CatalogueMissing",
    "PostgresUnavailable",
]


# --- schema -------------------------------------------------------------------------------
# Each migration moves the schema from version N-1 to N. Never edit one that has shipped:
# add the next. Views are not migrations; they are re-created on every open (see _VIEWS).
MIGRATIONS: dict[int, str] = {
    1: """
    CREATE SEQUENCE file_id_seq START 1;

    -- file_inventory: one row per path ever seen; ids are stable and never reused,
    -- files that disappear are marked present = false, never deleted.
    CREATE TABLE file_inventory (
        file_id       BIGINT PRIMARY KEY,
        path          VARCHAR NOT NULL UNIQUE,  -- absolute; bytes that are not UTF-8 as \\xNN
        raw_path      BLOB,                     -- the exact path bytes when not valid UTF-8
        root          VARCHAR NOT NULL,
        rel_path      VARCHAR NOT NULL,
        extension     VARCHAR NOT NULL,         -- lower case, with the dot; '' when none
        size_bytes    BIGINT NOT NULL,
        mtime_ns      BIGINT NOT NULL,
        present       BOOLEAN NOT NULL,
        first_seen_at TIMESTAMP NOT NULL,
        changed_at    TIMESTAMP NOT NULL,       -- first seen, or last seen with a new size/mtime
        gone_at       TIMESTAMP                 -- when found missing; NULL while present
    );

    -- What the latest walk could not catalogue, or noticed (replaced by every walk).
    CREATE TABLE walk_issues (
        path          VARCHAR NOT NULL,
        kind          VARCHAR NOT NULL,
        error_class   VARCHAR,
        message       VARCHAR,
        seen_at       TIMESTAMP NOT NULL
    );

    -- One row per inventory run: the history a person asks about ("when did files change?").
    CREATE TABLE inventory_scans (
        started_at    TIMESTAMP NOT NULL,
        finished_at   TIMESTAMP NOT NULL,
        roots         VARCHAR NOT NULL,
        files_seen    BIGINT NOT NULL,
        bytes_seen    BIGINT NOT NULL,
        new_files     BIGINT NOT NULL,
        changed_files BIGINT NOT NULL,
        gone_files    BIGINT NOT NULL,
        issues        BIGINT NOT NULL
    );

    -- A hash row belongs to the file state (size_bytes, mtime_ns) it was computed from; it is
    -- current while the inventory shows that same state. Errors have a NULL hash and say why.
    CREATE TABLE partial_hashes (
        file_id       BIGINT PRIMARY KEY,
        size_bytes    BIGINT NOT NULL,
        mtime_ns      BIGINT NOT NULL,
        prefix_hash   VARCHAR,                  -- MD5 of the first 4 KiB
        partial_hash  VARCHAR,                  -- MD5(head 64 KiB | tail 64 KiB | size), docs/HASHING.md;
                                                -- only when another file shares (size, prefix)
        full_hash     VARCHAR,                  -- MD5 of the whole file, for files <= 128 KiB
        hashed_at     TIMESTAMP NOT NULL,
        error_class   VARCHAR,
        error_message VARCHAR
    );

    -- Present files sharing (size, partial hash) with another: the only ones fully read.
    CREATE TABLE collision_candidates (
        file_id       BIGINT PRIMARY KEY,
        size_bytes    BIGINT NOT NULL,
        partial_hash  VARCHAR NOT NULL,
        group_size    INTEGER NOT NULL
    );

    CREATE TABLE full_hashes (
        file_id       BIGINT PRIMARY KEY,
        size_bytes    BIGINT NOT NULL,
        mtime_ns      BIGINT NOT NULL,
        full_hash     VARCHAR,
        source        VARCHAR NOT NULL,         -- 'full_read' or 'small_file' (same read as partial)
        hashed_at     TIMESTAMP NOT NULL,
        error_class   VARCHAR,
        error_message VARCHAR
    );

    -- Every member of a group of identical files; the lowest file_id is the original.
    CREATE TABLE duplicates (
        file_id         BIGINT PRIMARY KEY,
        full_hash       VARCHAR NOT NULL,
        size_bytes      BIGINT NOT NULL,
        original_id     BIGINT NOT NULL,
        duplicate_of_id BIGINT,                 -- NULL for the original itself
        group_size      INTEGER NOT NULL
    );
    """,
    2: """
    -- thumbnails_fast / thumbnails_slow: one row per file that went through a render lane.
    -- Like hashes, a row belongs to the file state (size_bytes, mtime_ns) it was made from.
    CREATE TABLE thumbnails (
        file_id           BIGINT PRIMARY KEY,
        size_bytes        BIGINT NOT NULL,
        mtime_ns          BIGINT NOT NULL,
        lane              VARCHAR NOT NULL,     -- 'fast' or 'slow'
        bucket            VARCHAR NOT NULL,     -- the partition, e.g. '1-5MB'
        status            VARCHAR NOT NULL,     -- ok, failed, timeout, memory, unsupported
        source            VARCHAR,              -- render, embedded, image, cache
        content_md5       VARCHAR,              -- MD5 of the file: the PNG's name
        thumbnail_relpath VARCHAR,              -- 'ab/<md5>.png' under the thumbnails folder
        thumbnail_size    INTEGER NOT NULL,     -- pixels, as configured when made
        background        VARCHAR NOT NULL,
        error_class       VARCHAR,
        error_message     VARCHAR,
        transient         BOOLEAN NOT NULL,     -- a retry could succeed (timeout, crash...)
        render_seconds    DOUBLE,
        rendered_at       TIMESTAMP NOT NULL
    );
    """,
    3: """
    -- A file's identity is its exact path bytes: `path` is the form shown to people (bytes that
    -- are not UTF-8 as \\xNN), `raw_path` the exact bytes when that form is not exact. Two
    -- names that display alike (a raw 0xFF byte, and a name spelt with a backslash and 'xff')
    -- are two files, so `path` is no longer UNIQUE: the identity is (path, raw_path).
    -- A file's state gains its inode change time: content rewritten with the same size and
    -- mtime (a blind spot of size + mtime) still moves ctime. NULL until the first walk
    -- after this migration, which adopts the ctime it sees without re-reading anything.
    CREATE TABLE file_inventory_v3 (
        file_id       BIGINT PRIMARY KEY,
        path          VARCHAR NOT NULL,         -- absolute, for people: non-UTF-8 bytes as \\xNN
        raw_path      BLOB,                     -- the exact path bytes when `path` is not exact
        root          VARCHAR NOT NULL,
        rel_path      VARCHAR NOT NULL,
        extension     VARCHAR NOT NULL,         -- lower case, with the dot; '' when none
        size_bytes    BIGINT NOT NULL,
        mtime_ns      BIGINT NOT NULL,
        ctime_ns      BIGINT,                   -- inode change time (NULL: not seen since v3)
        present       BOOLEAN NOT NULL,
        first_seen_at TIMESTAMP NOT NULL,
        changed_at    TIMESTAMP NOT NULL,       -- first seen, or last seen in a new state
        gone_at       TIMESTAMP
    );
    INSERT INTO file_inventory_v3
        SELECT file_id, path, raw_path, root, rel_path, extension, size_bytes, mtime_ns, NULL,
               present, first_seen_at, changed_at, gone_at
        FROM file_inventory;
    DROP TABLE file_inventory;
    ALTER TABLE file_inventory_v3 RENAME TO file_inventory;

    -- Rows keyed by a file state carry its ctime too; `transient` says whether a hashing
    -- error may pass (retried every run) or is about the file (kept until it changes).
    ALTER TABLE partial_hashes ADD COLUMN ctime_ns BIGINT;
    ALTER TABLE partial_hashes ADD COLUMN transient BOOLEAN;
    ALTER TABLE full_hashes ADD COLUMN ctime_ns BIGINT;
    ALTER TABLE full_hashes ADD COLUMN transient BOOLEAN;
    ALTER TABLE thumbnails ADD COLUMN ctime_ns BIGINT;
    -- How many times in a row this file state was killed at the memory cap.
    ALTER TABLE thumbnails ADD COLUMN memory_kills INTEGER;
    """,
    4: """
    -- Every folder a walk listed, with its mtime then: a folder whose mtime is unchanged
    -- holds the same names, so change detection on a share lists only the folders that
    -- changed (core/changes.py). Replaced by each complete walk, updated by partial ones.
    CREATE TABLE folders (
        path          VARCHAR NOT NULL,         -- absolute, for people (like file_inventory)
        raw_path      BLOB,                     -- the exact bytes when `path` is not exact
        root          VARCHAR NOT NULL,
        mtime_ns      BIGINT NOT NULL,
        listed_at     TIMESTAMP NOT NULL
    );

    -- The inventory scan each stage last brought itself up to date with: the chain is
    -- current when every stage has seen the latest scan (and nothing is left to retry).
    CREATE TABLE stage_marks (
        stage         VARCHAR PRIMARY KEY,
        scan          TIMESTAMP NOT NULL,       -- inventory_scans.finished_at of the scan
        finished_at   TIMESTAMP NOT NULL,
        options       VARCHAR                   -- what the stage was asked (hash all sizes)
    );
    ALTER TABLE inventory_scans ADD COLUMN complete BOOLEAN;  -- a complete walk, or some folders
    """,
    5: """
    -- The members of a zip archive are files of their own: path '<archive path>!/<member>',
    -- the archive's file_id in archive_id and the member's name inside it in `member`; their
    -- size is the member's (uncompressed), their mtime and ctime the archive's, so a changed
    -- archive makes every member's rows stale (core/archives.py, docs/HASHING.md).
    ALTER TABLE file_inventory ADD COLUMN archive_id BIGINT;
    ALTER TABLE file_inventory ADD COLUMN member VARCHAR;

    -- Each zip as it was when its members were last listed: listed again only when it
    -- changes (an empty zip, or a broken one, is not reopened on every walk).
    CREATE TABLE archives (
        file_id       BIGINT PRIMARY KEY,       -- the zip's
        size_bytes    BIGINT NOT NULL,          -- its state when listed
        mtime_ns      BIGINT NOT NULL,
        ctime_ns      BIGINT,
        members       INTEGER NOT NULL,
        error_class   VARCHAR,                  -- why its directory could not be read
        error_message VARCHAR,
        listed_at     TIMESTAMP NOT NULL
    );
    """,
    6: """
    -- The library browser's duplicate review: which copy of a group a person keeps. A group is
    -- its content (size_bytes, full_hash); the choice is recorded here, never acted on in the
    -- library (the exported plan is for the person to read and run).
    CREATE TABLE duplicate_reviews (
        full_hash     VARCHAR NOT NULL,
        size_bytes    BIGINT NOT NULL,
        keep_file_id  BIGINT NOT NULL,
        rule          VARCHAR NOT NULL,         -- lowest_id, shortest_path, oldest, newest,
                                                -- prefer_root (rule_arg: the root), manual
        rule_arg      VARCHAR,
        reviewed_at   TIMESTAMP NOT NULL,
        PRIMARY KEY (size_bytes, full_hash)
    );
    """,
    7: """
    -- A thumbnail row is current for the code that made it too (core/render/capabilities.py):
    -- our code for the format, and the libraries its loader had. Rows written before this
    -- record began have NULLs (read as version 1 of every format, libraries unknown).
    ALTER TABLE thumbnails ADD COLUMN renderer_version VARCHAR;   -- e.g. 'obj/2 draw/1'
    ALTER TABLE thumbnails ADD COLUMN capabilities VARCHAR;       -- e.g. 'trimesh 5.2.0; cascadio 0.1.1'
    ALTER TABLE thumbnails ADD COLUMN retry_requested BOOLEAN DEFAULT false;  -- dam retry, or the lanes' retry config

    -- What the render pass learnt about each model, from the same read and parse as its
    -- thumbnail (core/render/facts.py, slicer.py). Like thumbnails, a row belongs to the file
    -- state it was made from, and to the facts code (facts_version).
    CREATE TABLE model_facts (
        file_id            BIGINT PRIMARY KEY,
        size_bytes         BIGINT NOT NULL,
        mtime_ns           BIGINT NOT NULL,
        ctime_ns           BIGINT,
        facts_version      INTEGER NOT NULL,
        content_md5        VARCHAR,
        error_class        VARCHAR,             -- read but could not be measured
        error_message      VARCHAR,
        triangles          BIGINT,
        points             BIGINT,
        bodies             INTEGER,             -- groups of triangles sharing vertices
        size_x_mm          DOUBLE,              -- bounding box, Z up as drawn
        size_y_mm          DOUBLE,
        size_z_mm          DOUBLE,
        area_mm2           DOUBLE,
        volume_mm3         DOUBLE,              -- closed (watertight, consistently wound) only
        watertight         BOOLEAN,
        winding_consistent BOOLEAN,
        unit               VARCHAR,             -- as the file declares it; NULL: none (read as mm)
        probably_inches    BOOLEAN,
        up_axis            VARCHAR,             -- 'Z', or 'Y' for a Y-up file turned Z-up
        fingerprint        VARCHAR,             -- the same mesh in any file: docs/MODELS.md
        slicer             VARCHAR,             -- slicer projects and G-code: print facts
        printer            VARCHAR,
        nozzle_mm          DOUBLE,
        filament_types     VARCHAR[],
        filament_colours   VARCHAR[],
        object_names       VARCHAR[],
        print_time_s       DOUBLE,              -- when sliced: the slicer's estimate
        filament_g         DOUBLE,
        measured_at        TIMESTAMP NOT NULL
    );

    -- The printers of DAM_PRINTERS as the last run saw them: `fits_printers` in the views.
    CREATE TABLE printers (
        name  VARCHAR PRIMARY KEY,
        x_mm  DOUBLE NOT NULL,
        y_mm  DOUBLE NOT NULL,
        z_mm  DOUBLE NOT NULL
    );

    -- similar_models: files holding the same mesh (same fingerprint) in different bytes.
    CREATE TABLE similar_models (
        file_id               BIGINT PRIMARY KEY,
        fingerprint           VARCHAR NOT NULL,
        group_id              BIGINT NOT NULL,  -- the lowest file_id of the group
        group_size            INTEGER NOT NULL,
        exact_duplicate_of_id BIGINT            -- an earlier member with the very same bytes
    );
    """,
    8: """
    -- partial_hashes.prefix_hash is XXH64 of the first 4 KiB (it was MD5): a filter in front of
    -- the partial hash, where MD5 was most of what a million small reads cost. Prefixes of the
    -- old kind are dropped, so each file's prefix is read once again; its partial and full
    -- hashes (still MD5, unchanged) are kept. Files of at most 4 KiB no longer get their
    -- partial and full hash from the prefix read: only those that share (size, prefix) with
    -- another are read again for them (stage 1b), as every larger file is.
    UPDATE partial_hashes SET prefix_hash = NULL WHERE prefix_hash IS NOT NULL;
    """,
}

# Tables whose rows belong to one state of a file (size_bytes, mtime_ns, ctime_ns): a row is
# current while the inventory shows that state (the current_* views).
STATE_TABLES: tuple[str, ...] = ("partial_hashes", "full_hashes", "thumbnails")

# Views, re-created on every open so they always match the code and the data folder.
# {thumbs_dir} is the absolute thumbnails folder (thumbnail_path is absolute).
_VIEWS = """
CREATE OR REPLACE VIEW present_files AS
    SELECT * FROM file_inventory WHERE present;

-- Rows that still describe the file as it is now: made from the state (size, mtime, ctime)
-- the inventory shows.
CREATE OR REPLACE VIEW current_partial_hashes AS
    SELECT h.* FROM partial_hashes h
    JOIN file_inventory f USING (file_id)
    WHERE f.present AND h.size_bytes = f.size_bytes AND h.mtime_ns = f.mtime_ns
      AND h.ctime_ns IS NOT DISTINCT FROM f.ctime_ns;

CREATE OR REPLACE VIEW current_full_hashes AS
    SELECT h.* FROM full_hashes h
    JOIN file_inventory f USING (file_id)
    WHERE f.present AND h.size_bytes = f.size_bytes AND h.mtime_ns = f.mtime_ns
      AND h.ctime_ns IS NOT DISTINCT FROM f.ctime_ns;

CREATE OR REPLACE VIEW current_thumbnails AS
    SELECT t.* FROM thumbnails t
    JOIN file_inventory f USING (file_id)
    WHERE f.present AND t.size_bytes = f.size_bytes AND t.mtime_ns = f.mtime_ns
      AND t.ctime_ns IS NOT DISTINCT FROM f.ctime_ns;

CREATE OR REPLACE VIEW current_model_facts AS
    SELECT m.* FROM model_facts m
    JOIN file_inventory f USING (file_id)
    WHERE f.present AND {current_m} AND m.facts_version = {facts_version};

CREATE OR REPLACE VIEW empty_files AS
    SELECT file_id AS id, path FROM file_inventory WHERE present AND size_bytes = 0;

CREATE OR REPLACE VIEW library_files AS
    SELECT
        f.file_id                                        AS id,
        f.path,
        f.size_bytes,
        ph.partial_hash,
        COALESCE(fh.full_hash, ph.full_hash)             AS full_hash,
        CASE WHEN d.duplicate_of_id IS NULL THEN 0 ELSE 1 END AS is_duplicate,
        d.duplicate_of_id,
        CASE WHEN t.status = 'ok' THEN 1 ELSE 0 END      AS has_thumbnail,
        CASE WHEN t.status = 'ok'
             THEN '{thumbs_dir}/' || t.thumbnail_relpath END AS thumbnail_path,
        f.root,
        f.extension,
        f.mtime_ns,
        f.extension IN ({model_extensions})              AS is_model,
        t.status                                         AS thumbnail_status,
        t.source                                         AS thumbnail_source,
        m.triangles,
        m.bodies,
        m.size_x_mm,
        m.size_y_mm,
        m.size_z_mm,
        m.area_mm2,
        m.volume_mm3,
        m.watertight,
        m.winding_consistent,
        m.probably_inches,
        m.unit,
        m.up_axis,
        m.fingerprint,
        -- the printers (DAM_PRINTERS) whose build volume holds the model as it stands,
        -- turned a quarter on the plate if need be; NULL when the model was not measured
        {fits_printers}                                  AS fits_printers,
        m.slicer,
        m.printer,
        m.nozzle_mm,
        m.filament_types,
        m.filament_colours,
        m.object_names,
        m.print_time_s,
        m.filament_g,
        s.group_id                                       AS similar_group_id
    -- the current_* conditions, joined once (the views would join file_inventory again each)
    FROM file_inventory f
    LEFT JOIN partial_hashes ph ON ph.file_id = f.file_id AND {current_ph}
    LEFT JOIN full_hashes fh ON fh.file_id = f.file_id AND {current_fh}
    LEFT JOIN duplicates d ON d.file_id = f.file_id
    LEFT JOIN thumbnails t ON t.file_id = f.file_id AND {current_t}
    LEFT JOIN model_facts m ON m.file_id = f.file_id AND {current_m}
      AND m.facts_version = {facts_version}
    LEFT JOIN similar_models s ON s.file_id = f.file_id
    WHERE f.present;

CREATE OR REPLACE VIEW models AS
    SELECT * FROM library_files WHERE is_model;
"""

# What the `models` view counts as a 3D model (lower case, with the dot): every format the
# renderer draws, and model formats it can only list (their thumbnails are 'unsupported').
UNRENDERED_MODEL_EXTENSIONS = frozenset(
    {
        ".amf",
        ".3ds",
        ".fbx",
        ".ctm",
        ".x3d",
        ".wrl",
        ".blend",
        ".scad",
        ".f3d",
        ".skp",
        ".iges",
        ".igs",
    }
)
MODEL_EXTENSIONS: tuple[str, ...] = tuple(
    sorted(RENDERED_MODEL_EXTENSIONS | UNRENDERED_MODEL_EXTENSIONS)
)


def current(alias: str, file: str = "f") -> str:
    """The condition that a row (alias) was made from the file's (alias `file`) current state."""
    return (
        f"{alias}.size_bytes = {file}.size_bytes AND {alias}.mtime_ns = {file}.mtime_ns "
        f"AND {alias}.ctime_ns IS NOT DISTINCT FROM {file}.ctime_ns"
    )


# The printers (table `printers`) whose build volume holds the model of facts row `m` as it
# stands, turned a quarter on the plate if need be (core/printers.py's rule); NULL when the
# model was not measured. Used by the views and by the browser's tables (core/browse.py).
FITS_PRINTERS_SQL = """CASE WHEN m.size_x_mm IS NOT NULL THEN COALESCE(
            (SELECT list(p.name ORDER BY p.name) FROM printers p
              WHERE m.size_z_mm <= p.z_mm
                AND ((m.size_x_mm <= p.x_mm AND m.size_y_mm <= p.y_mm)
                  OR (m.size_y_mm <= p.x_mm AND m.size_x_mm <= p.y_mm))),
            []::VARCHAR[]) END"""


def _view_sql(thumbs_dir: Path) -> str:
    exts = ", ".join(f"'{e}'" for e in MODEL_EXTENSIONS)
    return _VIEWS.format(
        model_extensions=exts,
        thumbs_dir=str(thumbs_dir).replace("'", "''"),
        facts_version=int(FACTS_VERSION),
        current_ph=current("ph"),
        current_fh=current("fh"),
        current_t=current("t"),
        current_m=current("m"),
        fits_printers=FITS_PRINTERS_SQL,
    )


# --- the lock -----------------------------------------------------------------------------
class _Waiting:
    """Says "waiting for the catalogue" at most once every `every_s` for one Catalogue, however
    many short waits its transactions have: a run that waits a minute prints two lines, not one
    per retry."""

    def __init__(self, on_wait: Callable[[str], None] | None, every_s: float = 30.0):
        self.on_wait, self.every_s = on_wait, every_s
        self.last: float | None = None
        self.since: float | None = None  # start of the current wait

    def begin(self) -> None:
        self.since = None

    def note(self, why: str) -> None:
        now = time.monotonic()
        if self.since is None:
            self.since = now
        if self.on_wait is None or (self.last is not None and now - self.last < self.every_s):
            return
        self.last = now
        waited = now - self.since
        lead = (
            "waiting for the catalogue"
            if waited < 1
            else f"waiting {waited:.0f} s for the catalogue"
        )
        self.on_wait(f"{lead}: {why}")


class _FileLock:
    """An exclusive flock on a file beside the database; waits with retries and a deadline.

    flock is per open file description, so two threads of one process exclude each other as
    two processes do. The holder writes who it is into the file for the waiters' messages
    (best effort: on a full disk that note is skipped, and the lock works all the same).
    """

    def __init__(self, path: Path):
        self.path = path
        self._fd: int | None = None

    def holder(self) -> str:
        try:
            info = json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return "another process"
        if not info:
            return "another process"
        return f"pid {info.get('pid')} ({info.get('what', '?')}, since {info.get('since', '?')})"

    def acquire(self, timeout_s: float, waiting: _Waiting, what: str) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        deadline = time.monotonic() + timeout_s
        delay = 0.02
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
            if time.monotonic() >= deadline:
                holder = self.holder()
                os.close(fd)
                raise CatalogueBusy(
                    f"the catalogue {self.path.with_suffix('')} is busy: {holder} has held it for "
                    f"more than {timeout_s:.0f} s. Wait for that run to finish, or raise "
                    "DAM_LOCK_TIMEOUT_S."
                )
            waiting.note(f"{self.holder()} is writing")
            time.sleep(delay)
            delay = min(delay * 2, 0.5)
        stamp = {"pid": os.getpid(), "what": what, "since": time.strftime("%H:%M:%S")}
        with contextlib.suppress(OSError):  # ENOSPC, EDQUOT: the note is only for waiters
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(stamp).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


@contextlib.contextmanager
def _transaction(
    con: duckdb.DuckDBPyConnection, write: bool, before_commit: Callable[[], None] | None = None
) -> Iterator[None]:
    """One transaction: committed (a read: rolled back) when the block ends well, after
    `before_commit` has had its say; rolled back when it raises."""
    con.execute("BEGIN TRANSACTION")
    try:
        yield
        if before_commit is not None:
            before_commit()
    except BaseException:
        # DuckDB may have rolled back already (a failed write): keep the cause
        with contextlib.suppress(duckdb.Error):
            con.execute("ROLLBACK")
        raise
    con.execute("COMMIT" if write else "ROLLBACK")


# --- the catalogue ------------------------------------------------------------------------
class Catalogue:
    """The catalogue: the DuckDB file under a data folder, or, when a PostgreSQL address is
    given (`url`, by default DAM_CATALOGUE_URL; '' for the file), a PostgreSQL database
    (core/store_pg.py). The thumbnails stay under the data folder either way. Cheap to
    create; holds no open connection."""

    _migrated: set[tuple[Path, int]] = set()
    _migrated_guard = threading.Lock()

    def __init__(
        self,
        data_dir: str | os.PathLike,
        lock_timeout_s: float = 300.0,
        on_wait: Callable[[str], None] | None = None,
        who: str = "",
        url: str | None = None,
    ):
        raw = store_pg.env_url() if url is None else (url.strip() or None)
        self.url = store_pg.normalise_url(raw) if raw else None
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / DB_NAME
        self.lock_path = self.data_dir / (DB_NAME + ".lock")
        self.thumbs_dir = self.data_dir / "thumbnails"
        self.lock_timeout_s = lock_timeout_s
        self.on_wait = on_wait
        self.who = who or f"dam pid {os.getpid()}"
        self._waiting = _Waiting(on_wait)

    @property
    def backend(self) -> str:
        return "postgres" if self.url else "duckdb"

    @property
    def where(self) -> str:
        """Where the catalogue is, for people: the file, or the address without password."""
        return store_pg.redact(self.url) if self.url else str(self.path)

    def exists(self) -> bool:
        if self.url:
            return store_pg.has_schema(self.url)
        return self.path.exists()

    def signature(self) -> tuple | None:
        """Something that changes whenever a write is committed (None: no catalogue yet)."""
        if self.url:
            gen = store_pg.generation(self.url)
            return None if gen is None else ("postgres", gen)
        if not self.path.exists():
            return None
        parts = []
        for p in (self.path, self.path.with_name(self.path.name + ".wal")):
            try:
                st = os.stat(p)
                parts.append((st.st_size, st.st_mtime_ns))
            except FileNotFoundError:
                parts.append(None)
        return tuple(parts)

    @contextlib.contextmanager
    def connect(
        self, write: bool = True, alone: bool = True
    ) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection for one short transaction, under the lock. Commits on success.

        With write=False nothing is written: a catalogue that does not exist is an error
        (CatalogueMissing), never created, and the file is opened read-only (temporary tables
        still work), so reading works on a full disk.

        `alone=False` says the write may run beside other such writes (rows of the writer's
        own files: thumbnails, facts): on PostgreSQL they share the advisory lock, while a
        stage that must run alone holds it exclusively. The DuckDB file has one writer at a
        time whatever is asked.
        """
        if self.url:
            with self._connect_pg(write, alone) as con:
                yield con
            return
        if not write and not self.path.exists():
            raise CatalogueMissing(
                f"there is no catalogue at {self.path}: run `dam run` (or `make dev`) to make "
                "one, or check DAM_DATA_DIR"
            )
        if write:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        waiting = self._waiting
        waiting.on_wait = self.on_wait
        waiting.begin()
        lock = _FileLock(self.lock_path)
        lock.acquire(self.lock_timeout_s, waiting, self.who)
        try:
            con = self._open(write, waiting)
            try:
                with _transaction(con, write):
                    yield con
            finally:
                con.close()
        finally:
            lock.release()

    def check_readable(self) -> None:
        """Raise the sentence a person needs (CatalogueError) when the catalogue is there but
        this release cannot open it: a file of a newer DuckDB, an unreachable server. Long
        running commands (`dam dev`, `dam serve`) ask before they start."""
        if self.url:
            store_pg.extension_path()
            store_pg.session(self.url, "dam (looking)").close()
            return
        if not self.path.exists():
            return
        try:
            duckdb.connect(str(self.path), read_only=True, config=DUCKDB_CONFIG).close()
        except duckdb.IOException as exc:
            if "database file with version number" in str(exc):
                raise CatalogueError(newer_duckdb_message(self.path, exc)) from exc
            # held by a writer (DuckDB's own lock): readable, just not this instant

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """The catalogue's lock without a connection (for work on the file itself)."""
        if self.url:
            lock = store_pg.AdvisoryLock(self.url, self.who, shared=False)
            lock.acquire(self.lock_timeout_s, self._waiting.note)
        else:
            lock = _FileLock(self.lock_path)
            lock.acquire(self.lock_timeout_s, self._waiting, self.who)
        try:
            yield
        finally:
            lock.release()

    def copy_to(self, dest: str | os.PathLike, timeout_s: float = 0.0) -> bool:
        """Copy the catalogue file to `dest` under the lock (a consistent snapshot for readers
        such as the library browser). Waits at most `timeout_s` for the lock; returns False,
        copying nothing, when another process holds it. The lock is held only for the copy.
        From PostgreSQL: a DuckDB file made from one snapshot of every table (no lock)."""
        import shutil

        if self.url:
            if not self.exists():
                raise CatalogueError(f"there is no catalogue at {self.where} yet: run `dam run`")
            self._ensure_pg_schema()
            store_pg.copy_to_duckdb(
                self.url, Path(dest), lambda con: migrate(con, self.thumbs_dir), self._pg_config()
            )
            return True
        if not self.path.exists():
            raise CatalogueError(f"there is no catalogue at {self.path} yet: run `dam run` first")
        lock = _FileLock(self.lock_path)
        try:
            lock.acquire(timeout_s, _Waiting(None), f"{self.who} (copying a snapshot)")
        except CatalogueBusy:
            return False
        try:
            dest = Path(dest)
            shutil.copyfile(self.path, dest)
            wal = self.path.with_name(self.path.name + ".wal")
            if wal.exists():  # a writer that died before its checkpoint: DuckDB replays it
                shutil.copyfile(wal, dest.with_name(dest.name + ".wal"))
        finally:
            lock.release()
        return True

    def busy(self) -> str | None:
        """Who holds the catalogue lock right now (a sentence), or None when it is free."""
        if self.url:
            return store_pg.busy(self.url)
        if not self.lock_path.exists():
            return None
        fd = os.open(self.lock_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                return _FileLock(self.lock_path).holder()
            raise
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    # --- PostgreSQL -----------------------------------------------------------------------
    @contextlib.contextmanager
    def _connect_pg(self, write: bool, alone: bool) -> Iterator[duckdb.DuckDBPyConnection]:
        waiting = self._waiting
        waiting.on_wait = self.on_wait
        waiting.begin()
        known = ("postgres", self.url) in self._migrated  # made or checked by this process
        if not write and not known and not store_pg.has_schema(self.url):
            raise CatalogueMissing(
                f"there is no catalogue in {self.where}: run `dam run` (or `make dev`) to make "
                "one, or check DAM_CATALOGUE_URL"
            )
        self._ensure_pg_schema()
        lock = None
        if write:
            lock = store_pg.AdvisoryLock(self.url, self.who, shared=not alone)
            lock.acquire(self.lock_timeout_s, lambda why: waiting.note(why))
        try:
            con = store_pg.connect(self.url, read_only=not write, config=self._pg_config())
            try:
                con.execute(store_pg.temp_views(_view_sql(self.thumbs_dir)))
                # never commit a write whose lock the network dropped
                with _transaction(con, write, lock.check if lock is not None else None):
                    yield con
            finally:
                con.close()
            if lock is not None:
                lock.bump()
        finally:
            if lock is not None:
                lock.release()

    def _pg_config(self) -> dict:
        """DUCKDB_CONFIG, spilling under the data folder (an in-memory DuckDB would spill into
        the working directory of whatever process runs the step)."""
        return {**DUCKDB_CONFIG, "temp_directory": str(self.data_dir / "catalogue.tmp")}

    def _ensure_pg_schema(self) -> None:
        """This release's tables in the PostgreSQL database, made or migrated once per process
        under the exclusive lock (every other process waits for it, or finds it done)."""
        key = ("postgres", self.url)
        if key in self._migrated:
            return
        with self._migrated_guard:
            if key in self._migrated:
                return
            versions = store_pg.schema_versions(self.url)
            if versions == set(MIGRATIONS):  # current: no lock
                self._migrated.add(key)
                return
            if versions > set(MIGRATIONS):  # newer: say so now, not after waiting for a lock
                raise CatalogueError(
                    f"the catalogue in {self.where} was written by a newer dam_dagster (schema "
                    f"{max(versions)}, this release knows {SCHEMA_VERSION}). Upgrade dam_dagster "
                    "to open it."
                )
            lock = store_pg.AdvisoryLock(self.url, f"{self.who} (schema)", shared=False)
            lock.acquire(self.lock_timeout_s, lambda why: self._waiting.note(why))
            try:
                con = store_pg.connect(self.url, read_only=False, config=self._pg_config())
                try:
                    migrate_pg(con, self.where)
                finally:
                    con.close()
                lock.ensure_generation()
                lock.bump()
            finally:
                lock.release()
            self._migrated.add(key)

    def _open(self, write: bool, waiting: _Waiting) -> duckdb.DuckDBPyConnection:
        """A connection with the schema and views of this release (migrated if need be)."""
        key = (self.path.resolve(), self.path.stat().st_ino) if self.path.exists() else None
        if not write:
            con = self._connect_with_retry(waiting, read_only=True)
            if key in self._migrated or schema_is_current(con, self.thumbs_dir):
                return con
            con.close()  # an older schema (or views): migrating it is a write, once
        con = self._connect_with_retry(waiting, read_only=False)
        key = (self.path.resolve(), self.path.stat().st_ino)
        try:
            with self._migrated_guard:
                if key not in self._migrated:
                    migrate(con, self.thumbs_dir)
                    self._migrated.add(key)
        except BaseException:
            con.close()  # a connection left open would keep the file from the next reader
            raise
        return con

    def _connect_with_retry(self, waiting: _Waiting, read_only: bool) -> duckdb.DuckDBPyConnection:
        # Another program (a SQL client, say) may hold DuckDB's own lock on the file.
        deadline = time.monotonic() + self.lock_timeout_s
        while True:
            try:
                return duckdb.connect(str(self.path), read_only=read_only, config=DUCKDB_CONFIG)
            except duckdb.IOException as exc:
                if "database file with version number" in str(exc):
                    raise CatalogueError(newer_duckdb_message(self.path, exc)) from exc
                if "lock" not in str(exc).lower():  # a full disk, say: its cause, first
                    cause = storage_cause(f"IOException: {exc}", self.data_dir)
                    raise CatalogueError(f"cannot open the catalogue {self.path}: {cause}") from exc
                if time.monotonic() >= deadline:
                    raise CatalogueError(
                        f"cannot open the catalogue {self.path}: {exc}. Close any other "
                        "program that has it open (a SQL client), then try again."
                    ) from exc
                waiting.note(f"another program has it open ({exc})")
                time.sleep(0.5)


def newer_duckdb_message(path: Path, exc: Exception) -> str:
    """A catalogue file written by a DuckDB this release's cannot read (DuckDB 2, which
    dam_dagster used before it pinned DuckDB 1.5.5 for the PostgreSQL catalogue)."""
    import re

    found = re.search(r"version number (\d+)", str(exc))
    version = found.group(1) if found else "?"
    return (
        f"the catalogue {path} was written by a newer DuckDB (storage version {version}; "
        f"DuckDB {duckdb.__version__}, which this release uses, cannot read it). Nothing was "
        "changed. Convert it once with `dam convert-catalogue` (it exports the file with the "
        "DuckDB that wrote it and keeps the original beside the new one), or move it aside "
        "and `dam run` builds a new one from the library"
    )


def schema_version(con: duckdb.DuckDBPyConnection) -> int:
    exists = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'dam_schema' "
        "AND table_catalog = current_database()"
    ).fetchone()[0]
    if not exists:
        return 0
    row = con.execute("SELECT max(version) FROM dam_schema").fetchone()
    return int(row[0] or 0)


def _digest(text: str) -> str:
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


def schema_is_current(con: duckdb.DuckDBPyConnection, thumbs_dir: Path) -> bool:
    """Whether the file has this release's schema and views (a read-only open can use it)."""
    try:
        if schema_version(con) != SCHEMA_VERSION:
            return False
        row = con.execute("SELECT max(digest) FROM dam_views").fetchone()
    except duckdb.CatalogException:
        return False
    return bool(row) and row[0] == _digest(_view_sql(thumbs_dir))


def migrate(con: duckdb.DuckDBPyConnection, thumbs_dir: Path, target: int = SCHEMA_VERSION) -> int:
    """Bring the schema to `target` in one transaction and re-create the views."""
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute(
            "CREATE TABLE IF NOT EXISTS dam_schema (version INTEGER NOT NULL, "
            "applied_at TIMESTAMP NOT NULL DEFAULT current_timestamp)"
        )
        current = schema_version(con)
        if current > target:
            raise CatalogueError(
                f"the catalogue was written by a newer dam_dagster (schema {current}, this "
                f"release knows {target}). Upgrade dam_dagster to open it."
            )
        # Every migration not applied yet, in order. By the set applied, not the highest
        # number: a migration whose branch landed after a later-numbered one (v4 after v5)
        # is still applied to catalogues that already have the later one.
        applied = {int(v) for (v,) in con.execute("SELECT version FROM dam_schema").fetchall()}
        for version in sorted(v for v in MIGRATIONS if v <= target and v not in applied):
            con.execute(MIGRATIONS[version])
            con.execute("INSERT INTO dam_schema (version) VALUES (?)", [version])
        if target == SCHEMA_VERSION:  # the views are this release's: for its schema only
            views = _view_sql(thumbs_dir)
            con.execute(views)
            con.execute("CREATE TABLE IF NOT EXISTS dam_views (digest VARCHAR NOT NULL)")
            con.execute("DELETE FROM dam_views")
            con.execute("INSERT INTO dam_views VALUES (?)", [_digest(views)])
        con.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(duckdb.Error):  # already rolled back by a failed write
            con.execute("ROLLBACK")
        raise
    return target


def migrate_pg(con: duckdb.DuckDBPyConnection, where: str, target: int = SCHEMA_VERSION) -> int:
    """The PostgreSQL catalogue at `target`: a new database gets the current schema in one
    step (the tables DuckDB has after every migration); an older one gets the migrations it
    lacks, run through the attached database; a newer one is refused. The views are not
    stored there (each connection makes them, store_pg.temp_views)."""
    con.execute("BEGIN TRANSACTION")
    try:
        current = schema_version(con)
        if current > target:
            raise CatalogueError(
                f"the catalogue in {where} was written by a newer dam_dagster (schema "
                f"{current}, this release knows {target}). Upgrade dam_dagster to open it."
            )
        if current == 0:
            con.execute(
                "CREATE TABLE dam_schema (version INTEGER NOT NULL, "
                "applied_at TIMESTAMP NOT NULL DEFAULT current_timestamp)"
            )
            for ddl in store_pg.schema_ddl({v: MIGRATIONS[v] for v in MIGRATIONS if v <= target}):
                con.execute(ddl)
            for version in sorted(v for v in MIGRATIONS if v <= target):
                con.execute(
                    "INSERT INTO dam_schema (version, applied_at) VALUES (?, current_timestamp)",
                    [version],
                )
        else:
            applied = {int(v) for (v,) in con.execute("SELECT version FROM dam_schema").fetchall()}
            for version in sorted(v for v in MIGRATIONS if v <= target and v not in applied):
                try:
                    con.execute(MIGRATIONS[version])
                except duckdb.Error as exc:
                    raise CatalogueError(
                        f"cannot bring the catalogue in {where} from schema {current} to "
                        f"{version}: {exc}"
                    ) from exc
                con.execute(
                    "INSERT INTO dam_schema (version, applied_at) VALUES (?, current_timestamp)",
                    [version],
                )
        con.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(duckdb.Error):
            con.execute("ROLLBACK")
        raise
    return target


def table_schema(con: duckdb.DuckDBPyConnection, table: str) -> list[tuple[str, str]]:
    """(column, type) pairs of a table or view, in order."""
    return [(r[0], r[1]) for r in con.execute(f"DESCRIBE {table}").fetchall()]


def row_count(con: duckdb.DuckDBPyConnection, table: str) -> int:
    return int(con.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
