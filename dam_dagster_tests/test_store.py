"""The store: a real DuckDB file shared by processes, migrated on open, never held while
library files are read. A catalogue contract: `make test` runs it on PostgreSQL too."""

import contextlib
import fcntl
import multiprocessing
import subprocess
import sys
import time

import pytest

from dam_dagster.core import hashing, store_pg
from dam_dagster.core.store import SCHEMA_VERSION, Catalogue, CatalogueBusy, CatalogueError

from .conftest import brute_force_groups, catalogue_groups, run_chain

pytestmark = pytest.mark.catalogue_contract


def _chain_in_process(data_dir: str, root: str, rounds: int, out) -> None:
    from dam_dagster_tests.conftest import run_chain as chain

    try:
        for _ in range(rounds):
            chain(Catalogue(data_dir, lock_timeout_s=60), [root])
        out.put("ok")
    except BaseException as exc:  # report, do not hang the parent
        out.put(repr(exc))


def test_two_processes_writing_at_once_both_succeed(hard_library, tmp_path):
    data = tmp_path / "data"
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_chain_in_process, args=(str(data), str(hard_library), 3, out))
        for _ in range(2)
    ]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    assert results == ["ok", "ok"]
    cat = Catalogue(data)
    assert catalogue_groups(cat) == brute_force_groups(hard_library)
    with cat.connect(write=False) as con:  # no duplicate inventory rows from the race
        n, distinct = con.execute(
            "SELECT count(*), count(DISTINCT path) FROM file_inventory"
        ).fetchone()
    assert n == distinct == sum(1 for p in hard_library.rglob("*") if p.is_file())


def test_a_waiting_writer_gets_in_once_the_lock_is_released(tmp_path):
    cat = Catalogue(tmp_path / "data", lock_timeout_s=20)
    with cat.connect() as con:  # create the file first
        con.execute("SELECT 1")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"""
import time
from dam_dagster.core.store import Catalogue
with Catalogue({str(tmp_path / "data")!r}, who='test holder').connect() as con:
    print('holding', flush=True)
    time.sleep(1.5)
""",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "holding"
    waits = []
    cat.on_wait = waits.append
    started = time.monotonic()
    with cat.connect() as con:
        assert con.execute("SELECT count(*) FROM file_inventory").fetchone()[0] == 0
    assert time.monotonic() - started > 0.5
    assert waits and "test holder" in waits[0]
    holder.wait(timeout=10)


@contextlib.contextmanager
def _held_by_another(cat: Catalogue, who: str = "another holder"):
    """The catalogue's lock held the way another process holds it: the file lock beside the
    DuckDB file, or the advisory lock in a PostgreSQL session of its own."""
    if cat.backend == "postgres":
        lock = store_pg.AdvisoryLock(cat.url, who, shared=False)
        lock.acquire(5, lambda _why: None)
        try:
            yield
        finally:
            lock.release()
        return
    with open(cat.lock_path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        fh.write(who)
        fh.flush()
        yield


def test_busy_catalogue_gives_a_clear_error(tmp_path):
    cat = Catalogue(tmp_path / "data", lock_timeout_s=0.5)
    with cat.connect():
        pass
    assert cat.busy() is None
    with _held_by_another(cat):
        assert cat.busy()
        with pytest.raises(CatalogueBusy, match="busy.*DAM_LOCK_TIMEOUT_S"):
            with cat.connect():
                pass
        if cat.backend == "postgres":  # readers take no lock there (the file's readers do)
            with cat.connect(write=False) as con:
                assert con.execute("SELECT count(*) FROM file_inventory").fetchone()[0] == 0
    assert cat.busy() is None


def test_schema_version_recorded_and_newer_file_refused(tmp_path):
    cat = Catalogue(tmp_path / "data")
    with cat.connect() as con:
        assert con.execute("SELECT max(version) FROM dam_schema").fetchone()[0] == SCHEMA_VERSION
        con.execute("INSERT INTO dam_schema (version) VALUES (?)", [SCHEMA_VERSION + 1])
    Catalogue._migrated.clear()  # a new process: the schema is checked again
    with pytest.raises(CatalogueError, match="newer dam_dagster"):
        with Catalogue(tmp_path / "data").connect():
            pass


def test_failed_transaction_leaves_the_old_rows(tmp_path, hard_library):
    cat = Catalogue(tmp_path / "data")
    run_chain(cat, [hard_library])
    before = catalogue_groups(cat)
    with pytest.raises(RuntimeError):
        with cat.connect() as con:
            con.execute("DELETE FROM duplicates")
            raise RuntimeError("crash in the middle of a write")
    assert catalogue_groups(cat) == before


def test_no_connection_is_open_while_library_files_are_read(tmp_path, hard_library, monkeypatch):
    """While hashing, another process could take the lock at any moment."""
    cat = Catalogue(tmp_path / "data")
    checked = []

    def lock_is_free() -> bool:
        # the flock (a shared probe) or the advisory lock (pg_locks): nobody holds it
        return cat.busy() is None

    real = hashing._open  # every file read by every hashing stage is opened by it

    def spy(*a, **kw):
        checked.append(lock_is_free())
        return real(*a, **kw)

    monkeypatch.setattr(hashing, "_open", spy)
    # the prefix pass in Python: its opens through _open too
    monkeypatch.setattr(hashing, "prefix_hashes", hashing._prefix_hashes_py)
    run_chain(cat, [hard_library])
    assert len(checked) > 10 and all(checked)
