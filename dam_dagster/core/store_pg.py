"""The catalogue in PostgreSQL (`DAM_CATALOGUE_URL`), for several machines writing at once.

The tables live in PostgreSQL; the SQL stays the project's one dialect. Each connection is
an in-memory DuckDB with the PostgreSQL database ATTACHed (DuckDB's `postgres` extension,
shipped as a wheel by the `cluster` extra) and made the default catalogue, so the stages'
queries, their Arrow batches and their temporary tables work unchanged: DuckDB plans and
computes, PostgreSQL stores, and one DuckDB transaction is one PostgreSQL transaction
(REPEATABLE READ), so a batch lands whole or not at all.

What the file lock does for the DuckDB file, advisory locks do here, held by a small psycopg2
session beside the DuckDB connection (so a killed process lets go at once):
- a stage that must run alone (the inventory of the roots, the recomputation of candidates and
  duplicates, migrations) takes the catalogue's advisory lock exclusively;
- writes that many machines make side by side (thumbnail and facts rows of their own files)
  take it shared: they run together, and never during a stage that runs alone;
- readers take nothing (PostgreSQL's snapshots: a reader never waits for a writer).
Every write is an upsert by primary key (INSERT OR REPLACE), so a batch sent again changes
nothing. See docs/ARCHITECTURE.md ("The catalogue in PostgreSQL").
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import duckdb

from .catalogue_errors import CatalogueBusy, CatalogueError, PostgresUnavailable

ALIAS = "dam_catalogue"
# The catalogue's advisory lock: pg_advisory_lock(LOCK_CLASS, LOCK_ID). Seen in pg_locks as
# classid/objid; the holder's application_name says who it is (`dam status`, the browser).
LOCK_CLASS, LOCK_ID = 0x44414D, 1  # "DAM", the catalogue
# A counter bumped after every write transaction: what the library browser watches to know
# its copy is stale (the DuckDB file's size and mtime do that job for the file). A sequence,
# not a row: writers side by side never conflict on it.
GENERATION_SEQ = "dam_generation_seq"


def normalise_url(url: str) -> str:
    """A libpq URI from what people write (`postgresql://`, `postgres://`, or SQLAlchemy's
    `postgresql+psycopg2://` as DAM_DAGSTER_STORAGE_URL takes it)."""
    url = url.strip()
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in ("postgresql", "postgres", "postgresql+psycopg2"):
        raise PostgresUnavailable(
            f"DAM_CATALOGUE_URL must be a PostgreSQL address such as "
            f"postgresql://user@host:5432/dam (got {redact(url)!r}); leave it empty for the "
            "DuckDB file under DAM_DATA_DIR"
        )
    return "postgresql://" + rest


def redact(url: str) -> str:
    """The URL without its password (in the user part or as a `password=` parameter), for
    messages and logs."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<unparseable address>"
    netloc = parts.netloc
    if parts.password is not None:
        netloc = netloc.replace(":" + parts.password + "@", ":***@")
    query = re.sub(r"((?:^|&)(?:ssl)?password=)[^&]*", r"\1***", parts.query)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, query=query))


def _scrub(message: str, url: str) -> str:
    """A driver's message without the address's secrets (DuckDB quotes the whole URL)."""
    message = message.replace(url, redact(url))
    parts = urllib.parse.urlsplit(url)
    secrets = [parts.password] if parts.password else []
    secrets += re.findall(r"(?:^|&)(?:ssl)?password=([^&]*)", parts.query)
    for secret in filter(None, secrets):
        message = message.replace(secret, "***")
    return message


# Every connection notices a dead peer within about a minute (a worker host that vanished,
# a network cut), and gives up connecting after 10 s: a lock held by a session nobody
# answers for is released by the server, not kept for TCP's default two hours.
KEEPALIVES = {
    "keepalives": "1",
    "keepalives_idle": "30",
    "keepalives_interval": "10",
    "keepalives_count": "3",
    "connect_timeout": "10",
}


def with_keepalives(url: str) -> str:
    """The URL with KEEPALIVES added to its parameters (those it sets itself win)."""
    parts = urllib.parse.urlsplit(url)
    have = dict(urllib.parse.parse_qsl(parts.query))
    query = urllib.parse.urlencode({**KEEPALIVES, **have})
    return urllib.parse.urlunsplit(parts._replace(query=query))


def extension_path() -> Path:
    """The postgres extension matching the installed DuckDB (the `cluster` extra's wheel)."""
    try:
        import duckdb_extension_postgres_scanner as ext  # noqa: PLC0415
    except ImportError:
        raise PostgresUnavailable(
            "DAM_CATALOGUE_URL needs DuckDB's postgres extension: install the cluster extra "
            "(pip install 'dam_dagster[cluster]'; `make install` does)"
        ) from None
    version = duckdb.__version__
    found = sorted(Path(ext.__file__).parent.glob(f"extensions/v{version}/*.duckdb_extension"))
    if not found:
        have = sorted(p.name for p in (Path(ext.__file__).parent / "extensions").glob("v*"))
        raise PostgresUnavailable(
            f"DuckDB's postgres extension is installed for {', '.join(have) or 'no version'} "
            f"but DuckDB is v{version}: install matching versions (the project pins both)"
        )
    return found[0]


def _psycopg2():
    try:
        import psycopg2  # noqa: PLC0415
    except ImportError:
        raise PostgresUnavailable(
            "DAM_CATALOGUE_URL needs psycopg2: install the cluster extra "
            "(pip install 'dam_dagster[cluster]')"
        ) from None
    return psycopg2


def session(url: str, who: str, timeout_s: float = 10.0):
    """A plain psycopg2 session (autocommit) named after `who` in pg_stat_activity."""
    psycopg2 = _psycopg2()
    name = f"{who} on {socket.gethostname()}"[:63]
    problem = None
    try:
        con = psycopg2.connect(
            with_keepalives(url), application_name=name, connect_timeout=max(1, int(timeout_s))
        )
    except psycopg2.Error as exc:
        text = str(exc).strip()
        problem = _scrub(text.splitlines()[0] if text else type(exc).__name__, url)
    if problem is not None:  # raised outside the handler: no chained driver error to leak
        raise PostgresUnavailable(f"cannot reach the catalogue at {redact(url)}: {problem}")
    con.autocommit = True
    return con


def has_schema(url: str) -> bool:
    """Whether the database holds a catalogue (its dam_schema table)."""
    con = session(url, "dam (looking)")
    try:
        with con.cursor() as cur:
            cur.execute("SELECT to_regclass('dam_schema') IS NOT NULL")
            return bool(cur.fetchone()[0])
    finally:
        con.close()


def schema_versions(url: str) -> set[int]:
    """The migrations the catalogue has (empty before the first)."""
    con = session(url, "dam (looking)")
    try:
        with con.cursor() as cur:
            cur.execute("SELECT to_regclass('dam_schema') IS NOT NULL")
            if not cur.fetchone()[0]:
                return set()
            cur.execute("SELECT version FROM dam_schema")
            return {int(v) for (v,) in cur.fetchall()}
    finally:
        con.close()


def generation(url: str) -> int | None:
    """The write counter (None before the catalogue exists)."""
    con = session(url, "dam (looking)")
    try:
        with con.cursor() as cur:
            cur.execute(f"SELECT to_regclass('{GENERATION_SEQ}') IS NOT NULL")
            if not cur.fetchone()[0]:
                return None
            cur.execute(f"SELECT last_value, is_called FROM {GENERATION_SEQ}")
            value, called = cur.fetchone()
            return int(value) if called else 0
    finally:
        con.close()


def holder(cur) -> str:
    """Who holds the catalogue's advisory lock (a sentence), or '' when nobody does."""
    cur.execute(
        "SELECT a.application_name, a.client_addr, l.mode FROM pg_locks l "
        "JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.locktype = 'advisory' AND l.classid = %s AND l.objid = %s AND l.granted",
        (LOCK_CLASS, LOCK_ID),
    )
    rows = cur.fetchall()
    if not rows:
        return ""
    names = sorted({r[0] or "a PostgreSQL session" for r in rows})
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


class AdvisoryLock:
    """The catalogue's advisory lock in a session of its own; `shared` for side-by-side
    writers, exclusive for a stage that must run alone."""

    def __init__(self, url: str, who: str, shared: bool):
        self.url, self.who, self.shared = url, who, shared
        self._con = None

    def acquire(self, timeout_s: float, note: Callable[[str], None]) -> None:
        """Wait in PostgreSQL's lock queue (not by polling a try-lock: an exclusive request
        that waits there holds back later shared ones, so a stage that must run alone gets in
        even while render lanes keep writing), a few seconds at a time so that the wait can
        be reported, up to `timeout_s`."""
        con = session(self.url, self.who)
        take = "pg_advisory_lock_shared" if self.shared else "pg_advisory_lock"
        deadline = time.monotonic() + timeout_s
        psycopg2 = _psycopg2()
        try:
            with con.cursor() as cur:
                # free now? (a try-lock also gives way to a request already queued)
                cur.execute(f"SELECT pg_try_{take[3:]}(%s, %s)", (LOCK_CLASS, LOCK_ID))
                if cur.fetchone()[0]:
                    self._con = con
                    return
                note(f"{holder(cur) or 'another process'} holds it")
                while True:
                    left = deadline - time.monotonic()
                    chunk_ms = int(max(50, min(2000, left * 1000)))
                    cur.execute(f"SET lock_timeout = {chunk_ms}")
                    try:
                        cur.execute(f"SELECT {take}(%s, %s)", (LOCK_CLASS, LOCK_ID))
                    except psycopg2.errors.LockNotAvailable:
                        who = holder(cur) or "another process"
                        if time.monotonic() >= deadline:
                            raise CatalogueBusy(
                                f"the catalogue at {redact(self.url)} is busy: {who} holds it "
                                f"(waited {timeout_s:.0f} s; raise DAM_LOCK_TIMEOUT_S to wait "
                                "longer)"
                            ) from None
                        note(f"{who} holds it")
                        continue
                    cur.execute("SET lock_timeout = 0")
                    self._con = con
                    return
        except BaseException:
            with contextlib.suppress(Exception):
                con.close()
            raise

    def check(self) -> None:
        """The lock is still held (its session alive): asked just before a commit, so that a
        session the network dropped never lets a write in unguarded."""
        psycopg2 = _psycopg2()
        try:
            with self._con.cursor() as cur:
                cur.execute("SELECT 1")
        except (psycopg2.Error, AttributeError):
            raise CatalogueError(
                f"the connection holding the catalogue's lock at {redact(self.url)} was lost: "
                "the write was not committed"
            ) from None

    def ensure_generation(self) -> None:
        """The write counter exists (made with the schema, under the exclusive lock)."""
        with self._con.cursor() as cur:
            cur.execute(f"CREATE SEQUENCE IF NOT EXISTS {GENERATION_SEQ}")

    def bump(self) -> None:
        """Count a committed write (the library browser's copy is then stale). Best effort:
        the write is committed whatever happens here."""
        if self._con is not None:
            with contextlib.suppress(Exception), self._con.cursor() as cur:
                cur.execute(f"SELECT nextval('{GENERATION_SEQ}')")

    def release(self) -> None:
        if self._con is not None:
            with contextlib.suppress(Exception):
                self._con.close()  # the session's end releases its advisory locks
            self._con = None


def busy(url: str) -> str | None:
    """Who holds the catalogue's advisory lock right now, or None."""
    try:
        con = session(url, "dam (looking)")
    except PostgresUnavailable:
        return None
    try:
        with con.cursor() as cur:
            return holder(cur) or None
    finally:
        con.close()


def connect(url: str, read_only: bool, config: dict) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB whose default catalogue is the PostgreSQL database."""
    ext = extension_path()
    con = duckdb.connect(":memory:", config=config)
    try:
        con.execute(f"LOAD '{ext}'")
        options = "TYPE postgres" + (", READ_ONLY" if read_only else "")
        problem = None
        try:
            con.execute(f"ATTACH '{_quote(with_keepalives(url))}' AS {ALIAS} ({options})")
        except duckdb.Error as exc:
            problem = _scrub(str(exc).strip().splitlines()[0], with_keepalives(url))
            problem = _scrub(problem, url)
        if problem is not None:  # outside the handler: DuckDB's message quotes the URL
            raise PostgresUnavailable(f"cannot reach the catalogue at {redact(url)}: {problem}")
        con.execute(f"USE {ALIAS}")
    except BaseException:
        con.close()
        raise
    return con


def _quote(text: str) -> str:
    return text.replace("'", "''")


def schema_ddl(migrations: dict[int, str]) -> list[str]:
    """The CREATE TABLE statements of the current schema, as DuckDB states them after every
    migration (an in-memory catalogue): PostgreSQL catalogues start at the current schema."""
    mem = duckdb.connect(":memory:")
    try:
        for version in sorted(migrations):
            mem.execute(migrations[version])
        rows = mem.execute(
            "SELECT table_name, sql FROM duckdb_tables() WHERE database_name = 'memory' "
            "ORDER BY table_name"
        ).fetchall()
    finally:
        mem.close()
    return [sql for _name, sql in rows]


def temp_views(view_sql: str) -> str:
    """The views as temporary views of the DuckDB session (PostgreSQL keeps only tables):
    re-created on every connection, which costs a few milliseconds."""
    return re.sub(r"CREATE OR REPLACE VIEW", "CREATE OR REPLACE TEMP VIEW", view_sql)


def table_names(con: duckdb.DuckDBPyConnection, database: str = ALIAS) -> list[str]:
    rows = con.execute(
        "SELECT table_name FROM duckdb_tables() WHERE database_name = ? ORDER BY table_name",
        [database],
    ).fetchall()
    return [r[0] for r in rows]


def copy_to_duckdb(url: str, dest: Path, prepare, config: dict) -> None:
    """A DuckDB file at `dest` holding every table of the PostgreSQL catalogue as of one
    snapshot: what the library browser serves from (a copy, as with the DuckDB file).
    `prepare(con)` gives the new file this release's schema and views first."""
    con = connect(url, read_only=True, config=config)
    try:
        con.execute(f"ATTACH '{_quote(str(dest))}' AS replica")
        con.execute("USE replica")
        prepare(con)
        con.execute("BEGIN TRANSACTION")
        mine = set(table_names(con, "replica"))
        for table in sorted(set(table_names(con)) & mine - {"dam_schema", "dam_views"}):
            con.execute(f"INSERT INTO replica.{table} BY NAME SELECT * FROM {ALIAS}.{table}")
        con.execute("COMMIT")
        con.execute(f"USE {ALIAS}")
        con.execute("DETACH replica")
    finally:
        con.close()


def write_conflict(exc: BaseException) -> bool:
    """Two writers of the same rows at once (PostgreSQL's serialization failure or a key
    inserted by both): sending the same idempotent batch again succeeds."""
    text = str(exc)
    return "could not serialize access" in text or "duplicate key value" in text


def env_url() -> str | None:
    value = os.environ.get("DAM_CATALOGUE_URL", "").strip()
    return value or None
