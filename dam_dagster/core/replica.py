"""The library browser's read replica: a copy of the catalogue, refreshed in the background.

The catalogue is one DuckDB file that one process at a time may open, under a flock; a long
write (a million-file inventory) holds it for as long as it takes. A browser request must
never wait for that. So the server never reads the catalogue itself:

- a background thread looks at the catalogue file every `poll_s` (a stat: its size and mtime,
  and its WAL's), and when it changed and the lock is free, copies the file under the lock
  (the only moment the lock is held, `Catalogue.copy_to`, no waiting), then, with no lock,
  adds the browse tables (core/browse.py) to the copy and swaps it in;
- requests read the current copy (a DuckDB cursor each), so the data is at most one write old;
  while a write is in progress the page says so (`state()`: `stale` and who holds the lock);
- the one thing the browser writes, the duplicate review, goes to the catalogue in a short
  transaction (a few seconds' wait at most, then a clear "busy, try again"), and is mirrored
  into the current copy at once.

Old copies are deleted once the last request reading them is done.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb

from .browse import build_browse_tables, last_scan, load_index
from .review import review_rows
from .status import status_figures
from .store import Catalogue, CatalogueBusy, CatalogueError, migrate
from .thumbnails import SizeBucket

log = logging.getLogger(__name__)


@dataclass
class _Generation:
    number: int
    path: Path
    con: duckdb.DuckDBPyConnection
    source: tuple
    made_at: datetime
    copy_seconds: float
    build_seconds: float
    figures: dict[str, int]
    scan: dict | None
    readers: int = 0
    retired: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def close_if_done(self) -> None:
        with self.lock:
            if not (self.retired and self.readers == 0):
                return
        with contextlib.suppress(Exception):
            self.con.close()
        for p in (self.path, self.path.with_name(self.path.name + ".wal")):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()


class Replica:
    def __init__(
        self,
        catalogue: Catalogue,
        folder: str | os.PathLike,
        buckets: Sequence[SizeBucket],
        poll_s: float = 1.0,
        memory_limit: str = "1GB",
        on_refresh: Callable[[dict], None] | None = None,
    ):
        self.catalogue = catalogue
        self.folder = Path(folder)
        self.buckets = tuple(buckets)
        self.poll_s = poll_s
        self.memory_limit = memory_limit
        self.on_refresh = on_refresh
        self._current: _Generation | None = None
        self._swap = threading.Lock()
        self._refreshing = threading.Lock()
        self._numbers = itertools.count(1)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None
        self.refreshes = 0
        # After a refresh that took T seconds, the next one waits at least T: on a big
        # catalogue under a stream of writes, refreshing takes at most half the CPU time.
        self._not_before = 0.0
        self._source_cache: tuple[float, tuple | None] | None = None
        self.unreachable: str | None = None  # why the catalogue could not be looked at
        self._opener: queue.Queue | None = None
        self._opener_owner: threading.Thread | None = None

    # --- life -------------------------------------------------------------------------
    def start(self) -> None:
        self._opener = queue.Queue()
        self._opener_owner = threading.Thread(
            target=self._open_loop, name="dam-replica-opener", daemon=True
        )
        self._opener_owner.start()
        self.folder.mkdir(parents=True, exist_ok=True)
        for old in self.folder.glob("replica-*.duckdb*"):  # left by a server that was killed
            with contextlib.suppress(OSError):
                old.unlink()
        self.refresh()
        self._thread = threading.Thread(target=self._run, name="dam-replica", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self._opener is not None:
            self._opener.put(None)
        with self._swap:
            gen, self._current = self._current, None
        if gen is not None:
            gen.retired = True
            gen.close_if_done()

    def _open(self, path: Path) -> duckdb.DuckDBPyConnection:
        """Open a copy for serving in the opener thread, created at normal priority: DuckDB's
        worker threads are created with the instance and inherit their creator's priority."""
        if self._opener is None or threading.current_thread() is self._opener_owner:
            return duckdb.connect(
                str(path), config={"threads": 2, "memory_limit": self.memory_limit}
            )
        done: queue.Queue = queue.Queue(maxsize=1)
        self._opener.put((path, done))
        result = done.get()
        if isinstance(result, BaseException):
            raise result
        return result

    def _connect_serving(self, path: Path) -> duckdb.DuckDBPyConnection:
        con = duckdb.connect(str(path), config={"threads": 2, "memory_limit": self.memory_limit})
        try:
            load_index(con)  # the listing's columns in memory: scans twice as fast
        except BaseException:
            con.close()
            raise
        return con

    def _open_loop(self) -> None:
        while True:
            item = self._opener.get()
            if item is None:
                return
            path, done = item
            try:
                done.put(self._connect_serving(path))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                done.put(exc)

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                if time.monotonic() >= self._not_before and self.stale():
                    self.refresh()
            except Exception as exc:  # noqa: BLE001 - the server must keep serving
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("replica refresh failed")

    # --- state ------------------------------------------------------------------------
    def _source(self, max_age_s: float = 0.0) -> tuple | None:
        """The catalogue's write signature (None: no catalogue), at most `max_age_s` old: a
        stat of the file, or, in PostgreSQL, a round trip that pages should not each pay."""
        now = time.monotonic()
        cached = self._source_cache
        if cached is not None and now - cached[0] <= max_age_s:
            return cached[1]
        try:
            source = self.catalogue.signature()
        except CatalogueError as exc:  # a server that is down: the copy goes on serving
            self.unreachable = str(exc)
            known = cached[1] if cached is not None else None
            self._source_cache = (now + 10.0, known)  # and pages do not each wait for it
            return known
        self.unreachable = None
        self._source_cache = (now, source)
        return source

    def stale(self, max_age_s: float = 0.0) -> bool:
        """The catalogue changed since the current copy was made (or there is none yet)."""
        source = self._source(max_age_s)
        if source is None:
            return False
        gen = self._current
        return gen is None or source != gen.source

    def state(self) -> dict[str, Any]:
        """What the pages say about the copy (the catalogue looked at at most a second ago)."""
        gen = self._current
        stale = self.stale(max_age_s=1.0)
        return {
            "ready": gen is not None,
            "catalogue_exists": self._source(max_age_s=1.0) is not None,
            "made_at": gen.made_at if gen else None,
            "age_s": (time.time() - gen.made_at.timestamp()) if gen else None,
            "stale": stale,
            "busy": self.catalogue.busy() if stale else None,
            "copy_seconds": gen.copy_seconds if gen else None,
            "build_seconds": gen.build_seconds if gen else None,
            "generation": gen.number if gen else 0,
            "last_error": self.last_error,
            "unreachable": self.unreachable,
        }

    @property
    def generation(self) -> int:
        gen = self._current
        return gen.number if gen else 0

    @property
    def figures(self) -> dict[str, int] | None:
        gen = self._current
        return dict(gen.figures) if gen else None

    @property
    def scan(self) -> dict | None:
        gen = self._current
        return gen.scan if gen else None

    # --- refresh ----------------------------------------------------------------------
    def refresh(self) -> bool:
        """Make a new copy if the lock is free now; False (nothing changed) when it is not."""
        if not self.catalogue.exists():
            return False
        with self._refreshing:
            source = self.catalogue.signature()
            self._source_cache = (time.monotonic(), source)  # pages compare with this copy's
            number = next(self._numbers)
            path = self.folder / f"replica-{os.getpid()}-{number}.duckdb"
            t0 = time.monotonic()
            if not self.catalogue.copy_to(path, timeout_s=0):
                return False
            copied = time.monotonic() - t0
            con = None
            try:
                figures, scan = _at_low_priority(lambda: self._build(path))
                con = self._open(path)  # served from a DuckDB made at normal priority
            except BaseException:
                if con is not None:
                    with contextlib.suppress(Exception):
                        con.close()
                for p in (path, path.with_name(path.name + ".wal")):
                    with contextlib.suppress(FileNotFoundError):
                        p.unlink()
                raise
            gen = _Generation(
                number=number,
                path=path,
                con=con,
                source=source,
                made_at=datetime.now(timezone.utc),
                copy_seconds=copied,
                build_seconds=time.monotonic() - t0 - copied,
                figures=figures,
                scan=scan,
            )
            with self._swap:
                old, self._current = self._current, gen
            if old is not None:
                old.retired = True
                old.close_if_done()
            self.refreshes += 1
            self.last_error = None
            self._not_before = time.monotonic() + (time.monotonic() - t0)
            if self.on_refresh is not None:
                self.on_refresh(self.state())
            return True

    def _build(self, path: Path) -> tuple[dict, dict | None]:
        """The browse tables of a fresh copy, in a DuckDB of its own (whose worker threads
        inherit the priority of the thread that opens it)."""
        build = duckdb.connect(str(path), config={"threads": 2, "memory_limit": self.memory_limit})
        try:
            migrate(build, self.catalogue.thumbs_dir)  # an older catalogue: new tables
            build_browse_tables(build, self.buckets)
            return status_figures(build), last_scan(build)
        finally:
            build.close()

    @contextlib.contextmanager
    def cursor(self) -> Iterator[duckdb.DuckDBPyConnection | None]:
        """A cursor on the current copy (None while there is none yet)."""
        with self._swap:
            gen = self._current
            if gen is not None:
                with gen.lock:
                    gen.readers += 1
        if gen is None:
            yield None
            return
        cur = gen.con.cursor()
        try:
            yield cur
        finally:
            cur.close()
            with gen.lock:
                gen.readers -= 1
            gen.close_if_done()

    # --- the one write ----------------------------------------------------------------
    def write_review(self, action: Callable[[duckdb.DuckDBPyConnection], Any], wait_s: float = 5.0):
        """Run `action` on the catalogue in one short transaction, then mirror the review
        table into the current copy. Raises CatalogueBusy when the lock stays taken."""
        cat = Catalogue(
            self.catalogue.data_dir,
            wait_s,
            who="dam serve (duplicate review)",
            url=self.catalogue.url or "",
        )
        with cat.connect() as con:
            result = action(con)
            rows = review_rows(con)
        with self._swap:
            gen = self._current
        if gen is not None:
            cur = gen.con.cursor()
            try:
                cur.execute("BEGIN TRANSACTION")
                cur.execute("DELETE FROM duplicate_reviews")
                if rows:
                    cur.executemany(
                        "INSERT INTO duplicate_reviews VALUES (?, ?, ?, ?, ?, ?)",
                        [list(r) for r in rows],
                    )
                cur.execute("COMMIT")
            finally:
                cur.close()
        return result


__all__ = ["Replica", "CatalogueBusy"]


def _at_low_priority(work: Callable[[], Any]) -> Any:
    """work() in a thread of its own at nice +10 (and the DuckDB threads it creates): building
    the browse tables of a million files takes seconds of CPU that requests should get first.
    Only the build: the copy before it holds the catalogue's lock, and at nice +10 on a busy
    machine (renders at full speed) it could hold it for long, writers waiting behind it."""
    out: dict[str, Any] = {}

    def run() -> None:
        with contextlib.suppress(OSError, AttributeError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
        try:
            out["value"] = work()
        except BaseException as exc:  # noqa: BLE001 - raised again in the caller's thread
            out["error"] = exc

    thread = threading.Thread(target=run, name="dam-replica-build", daemon=True)
    thread.start()
    thread.join()
    if "error" in out:
        raise out["error"]
    return out["value"]
