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

from .catalogue_errors import CatalogueBusy, PostgresUnavailable

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
    """The URL without its password, for messages and logs."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<unparseable address>"
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(":" + parts.password + "@", ":***@")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


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
    try:
        con = psycopg2.connect(url, application_name=name, connect_timeout=max(1, int(timeout_s)))
    except psycopg2.OperationalError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PostgresUnavailable(f"cannot reach the catalogue at {redact(url)}: {first}") from exc
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
        con = session(self.url, self.who)
        try_lock = "pg_try_advisory_lock_shared" if self.shared else "pg_try_advisory_lock"
        deadline = time.monotonic() + timeout_s
        with con.cursor() as cur:
            while True:
                cur.execute(f"SELECT {try_lock}(%s, %s)", (LOCK_CLASS, LOCK_ID))
                if cur.fetchone()[0]:
                    self._con = con
                    return
                who = holder(cur) or "another process"
                if time.monotonic() >= deadline:
                    con.close()
                    raise CatalogueBusy(
                        f"the catalogue at {redact(self.url)} is busy: {who} holds it (waited "
                        f"{timeout_s:.0f} s; raise DAM_LOCK_TIMEOUT_S to wait longer)"
                    )
                note(f"{who} holds it")
                time.sleep(0.2)

    def bump(self) -> None:
        """Count a committed write (the library browser's copy is then stale)."""
        if self._con is not None:
            with self._con.cursor() as cur:
                cur.execute(f"CREATE SEQUENCE IF NOT EXISTS {GENERATION_SEQ}")
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
        try:
            con.execute(f"ATTACH '{_quote(url)}' AS {ALIAS} ({options})")
        except duckdb.Error as exc:
            first = str(exc).strip().splitlines()[0]
            raise PostgresUnavailable(
                f"cannot reach the catalogue at {redact(url)}: {_strip_url(first, url)}"
            ) from exc
        con.execute(f"USE {ALIAS}")
    except BaseException:
        con.close()
        raise
    return con


def _quote(text: str) -> str:
    return text.replace("'", "''")


def _strip_url(message: str, url: str) -> str:
    return message.replace(url, redact(url))


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


def is_postgres_url(url: str | None) -> bool:
    return bool(url and url.strip())


def env_url() -> str | None:
    value = os.environ.get("DAM_CATALOGUE_URL", "").strip()
    return value or None
