"""The catalogue in PostgreSQL (DAM_CATALOGUE_URL): what only several writers show.

A real PostgreSQL server (Debian's, started here; skipped with a message where it cannot
run). The store's and the stages' own tests run on it too (`make test`, -m catalogue_contract
--catalogue=postgres); these are the parts the DuckDB file has no counterpart for: a whole
`dam run` (Dagster, both render lanes, facts) against the same run on the file, writers side
by side under the shared advisory lock while a stage that runs alone waits, a batch sent
twice, and the messages a person gets when the server is not there.
"""

import json
import multiprocessing
import os
import subprocess
import time
from pathlib import Path

import pytest

from dam_dagster.core import store_pg
from dam_dagster.core.store import Catalogue, CatalogueBusy, CatalogueMissing, PostgresUnavailable

from .cluster import ServerUnavailable, free_port, postgres
from .conftest import BIN, brute_force_groups, catalogue_groups, run_chain
from .conftest_web import dam_run, make_app, make_web_library


@pytest.fixture
def server(postgres_server):
    return postgres_server  # the session's (conftest.py)


_names = iter(range(1, 10_000))


def new_database(server) -> str:
    return server.database(f"dam_pg_{os.getpid()}_{next(_names)}")


def _copy_ready(client, timeout_s: float = 60) -> None:
    """Wait until the browser has made its copy of the catalogue."""
    deadline = time.monotonic() + timeout_s
    while not client.get("/healthz").json()["replica_ready"]:
        assert time.monotonic() < deadline, "the browser never made its copy"
        time.sleep(0.2)


def _catalogue_rows(cat: Catalogue) -> dict:
    """What a person sees of a catalogue, without ids or times (the two runs assign their own)."""
    with cat.connect(write=False) as con:
        files = con.execute(
            "SELECT path, size_bytes, full_hash, is_duplicate, has_thumbnail, thumbnail_status, "
            "triangles, watertight, round(volume_mm3, 3) FROM library_files ORDER BY path"
        ).fetchall()
        originals = con.execute(
            "SELECT f.path, o.path FROM library_files f JOIN library_files o "
            "ON o.id = f.duplicate_of_id ORDER BY f.path"
        ).fetchall()
        similar = con.execute(
            "SELECT count(DISTINCT similar_group_id) FROM library_files "
            "WHERE similar_group_id IS NOT NULL"
        ).fetchone()[0]
    return {"files": files, "originals": originals, "similar_groups": similar}


@pytest.mark.slow
def test_dam_run_on_postgres_gives_what_it_gives_on_the_file(server, tmp_path, corpus):
    lib = make_web_library(tmp_path / "lib", corpus)
    url = new_database(server)
    on_file, on_pg = tmp_path / "file-data", tmp_path / "pg-data"
    dam_run(lib["roots"], on_file, tmp_path, {"DAM_CATALOGUE_URL": ""})
    dam_run(lib["roots"], on_pg, tmp_path, {"DAM_CATALOGUE_URL": url})
    assert not (on_pg / "dam.duckdb").exists()  # nothing of the catalogue went to the file

    file_cat, pg_cat = Catalogue(on_file, url=""), Catalogue(on_pg, url=url)
    want, got = _catalogue_rows(file_cat), _catalogue_rows(pg_cat)
    assert got == want
    assert sum(1 for row in got["files"] if row[4]) >= 8  # thumbnails were made, both lanes
    assert got["originals"] and got["similar_groups"] >= 1
    # the PNGs are under the data folder, where every worker of a cluster mounts it
    with pg_cat.connect(write=False) as con:
        pngs = [
            r[0]
            for r in con.execute(
                "SELECT thumbnail_path FROM models WHERE has_thumbnail = 1"
            ).fetchall()
        ]
    assert pngs and all(Path(p).is_file() and str(p).startswith(str(on_pg)) for p in pngs)

    # `dam status` says the same figures, and says where the catalogue is
    def status(data, catalogue_url):
        env = {**os.environ, "DAM_DATA_DIR": str(data), "DAM_CATALOGUE_URL": catalogue_url}
        out = subprocess.run(
            [str(BIN / "dam"), "status", "--json"], env=env, capture_output=True, text=True
        )
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    figures_file, figures_pg = status(on_file, ""), status(on_pg, url)
    for key in ("files", "models", "duplicate_files", "thumbnails_ok"):
        assert figures_pg.get(key) == figures_file.get(key), key

    # an unchanged library: the second run on PostgreSQL changes nothing
    dam_run(lib["roots"], on_pg, tmp_path, {"DAM_CATALOGUE_URL": url})
    assert _catalogue_rows(pg_cat) == got

    # the library browser serves it (its copy is made from one PostgreSQL snapshot)
    from starlette.testclient import TestClient

    os.environ["DAM_CATALOGUE_URL"] = url
    try:
        with TestClient(make_app(on_pg)) as client:
            _copy_ready(client)
            items = client.get("/api/models", params={"q": "torus"}).json()["items"]
            assert items and all(i["thumbnail_status"] == "ok" for i in items)
            assert client.get("/duplicates").status_code == 200
    finally:
        del os.environ["DAM_CATALOGUE_URL"]


def _hold(url: str, shared: bool, seconds: float, started, out) -> None:
    """Another process: holds the catalogue as a writer for `seconds`, says when."""
    cat = Catalogue(
        "/nonexistent-data-dir", lock_timeout_s=30, who=f"writer {os.getpid()}", url=url
    )
    with cat.connect(alone=not shared) as con:
        t0 = time.time()
        started.put(t0)
        con.execute("SELECT count(*) FROM file_inventory").fetchone()
        time.sleep(seconds)
    out.put((t0, time.time()))


def test_writers_of_their_own_rows_share_the_catalogue_a_stage_alone_waits(server, tmp_path):
    url = new_database(server)
    with Catalogue(tmp_path / "data", url=url).connect() as con:  # the schema, once
        con.execute("SELECT 1")
    ctx = multiprocessing.get_context("spawn")
    started, out = ctx.Queue(), ctx.Queue()
    shared = [ctx.Process(target=_hold, args=(url, True, 2.0, started, out)) for _ in range(2)]
    for p in shared:
        p.start()
    started.get(timeout=60), started.get(timeout=60)
    # both shared writers are in; a stage that must run alone cannot get in meanwhile
    alone = Catalogue(tmp_path / "data", lock_timeout_s=0.5, url=url)
    with pytest.raises(CatalogueBusy, match=r"busy: writer \d+"):
        with alone.connect():
            pass
    spans = sorted(out.get(timeout=60) for _ in shared)
    for p in shared:
        p.join(timeout=30)
    assert spans[1][0] < spans[0][1], f"the shared writers did not overlap: {spans}"
    # and once they are done, it does
    with Catalogue(tmp_path / "data", lock_timeout_s=10, url=url).connect() as con:
        con.execute("SELECT 1")


def test_two_processes_running_the_chain_at_once_on_postgres(server, hard_library, tmp_path):
    url = new_database(server)

    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_chain_twice, args=(url, str(tmp_path / "data"), str(hard_library), out))
        for _ in range(2)
    ]
    for p in procs:
        p.start()
    results = [out.get(timeout=180) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    assert results == ["ok", "ok"]
    cat = Catalogue(tmp_path / "data", url=url)
    assert catalogue_groups(cat) == brute_force_groups(hard_library)
    with cat.connect(write=False) as con:
        n, distinct, ids = con.execute(
            "SELECT count(*), count(DISTINCT path), count(DISTINCT file_id) FROM file_inventory"
        ).fetchone()
    assert n == distinct == ids == sum(1 for p in hard_library.rglob("*") if p.is_file())


def _chain_twice(url: str, data: str, root: str, out) -> None:
    try:
        for _ in range(2):
            run_chain(Catalogue(data, lock_timeout_s=120, url=url), [root])
        out.put("ok")
    except BaseException as exc:  # report, do not hang the parent
        out.put(repr(exc))


def test_a_batch_sent_twice_changes_nothing(server, tmp_path, hard_library):
    url = new_database(server)
    cat = Catalogue(tmp_path / "data", url=url)
    run_chain(cat, [hard_library])

    def tables():
        with cat.connect(write=False) as con:
            return {
                t: sorted(con.execute(f"SELECT * EXCLUDE (hashed_at) FROM {t}").fetchall())
                for t in ("partial_hashes", "full_hashes")
            } | {"duplicates": sorted(con.execute("SELECT * FROM duplicates").fetchall())}

    before = tables()
    with cat.connect() as con:  # the same rows again, as a retried batch sends them
        con.execute("CREATE TEMP TABLE again AS SELECT * FROM partial_hashes")
        con.execute("INSERT OR REPLACE INTO partial_hashes BY NAME SELECT * FROM again")
    assert tables() == before
    run_chain(cat, [hard_library])  # and the whole chain once more
    assert tables() == before


def test_what_a_person_is_told_when_postgres_is_not_there(server, tmp_path):
    closed = f"postgresql://dam:s3cret@127.0.0.1:{free_port()}/dam"
    env = {**os.environ, "DAM_DATA_DIR": str(tmp_path / "data"), "DAM_CATALOGUE_URL": closed}
    out = subprocess.run([str(BIN / "dam"), "status"], env=env, capture_output=True, text=True)
    assert out.returncode != 0
    assert "cannot reach the catalogue at postgresql://dam:***@127.0.0.1" in out.stderr
    assert "s3cret" not in out.stderr + out.stdout and "Traceback" not in out.stderr

    empty = new_database(server)  # a database without a catalogue: reading never makes one
    with pytest.raises(CatalogueMissing, match="there is no catalogue in postgresql://"):
        with Catalogue(tmp_path / "data", url=empty).connect(write=False):
            pass
    assert not store_pg.has_schema(empty)

    with pytest.raises(PostgresUnavailable, match="must be a PostgreSQL address"):
        Catalogue(tmp_path / "data", url="mysql://somewhere/dam")


def test_a_stage_that_runs_alone_is_not_starved_by_writers_that_keep_coming(server, tmp_path):
    """Shared holds handed over without a gap (as busy render lanes make them): the exclusive
    request waits in PostgreSQL's queue, which holds back the next shared one, so it gets in
    well within its timeout (a try-lock polled would never find the lock free)."""
    import threading

    url = new_database(server)
    with Catalogue(tmp_path / "data", url=url).connect() as con:  # the schema, once
        con.execute("SELECT 1")
    stop, handovers = threading.Event(), []

    def render_lanes():
        held = store_pg.AdvisoryLock(url, "render lane", shared=True)
        held.acquire(30, lambda _why: None)
        while not stop.is_set():
            time.sleep(0.2)
            nxt = store_pg.AdvisoryLock(url, "render lane", shared=True)
            try:
                nxt.acquire(0.5, lambda _why: None)
            except CatalogueBusy:
                nxt = None  # someone waits for the lock alone: let go, then queue again
            held.release()
            held = nxt or store_pg.AdvisoryLock(url, "render lane", shared=True)
            if nxt is None:
                held.acquire(30, lambda _why: None)
            handovers.append(nxt is not None)
        held.release()

    lanes = threading.Thread(target=render_lanes)
    lanes.start()
    try:
        time.sleep(1.0)
        assert store_pg.busy(url)  # the lanes hold it
        started = time.monotonic()
        with Catalogue(tmp_path / "data", lock_timeout_s=8, url=url).connect() as con:
            waited = time.monotonic() - started
            con.execute("SELECT count(*) FROM file_inventory").fetchone()
        assert waited < 5, waited
    finally:
        stop.set()
        lanes.join(timeout=60)
    assert any(handovers) and not all(handovers)  # seamless hand-overs, then one let go


def test_the_password_never_shows(tmp_path):
    port = free_port()  # nothing listens there
    for url in (
        f"postgresql://dam:s3cret@127.0.0.1:{port}/dam",
        f"postgresql://dam@127.0.0.1:{port}/dam?password=s3cret&sslmode=disable",
    ):
        assert "s3cret" not in store_pg.redact(url)
        for attempt in (
            lambda url=url: store_pg.session(url, "test"),
            lambda url=url: store_pg.connect(url, read_only=True, config={}),  # DuckDB's ATTACH
        ):
            with pytest.raises(PostgresUnavailable) as caught:
                attempt()
            exc = caught.value
            assert "cannot reach the catalogue" in str(exc) and "s3cret" not in str(exc)
            # nothing chained that a log or Dagster's event log would print with it
            assert exc.__cause__ is None and exc.__context__ is None


def test_the_browser_keeps_serving_when_the_server_goes_away(tmp_path, hard_library):
    """A PostgreSQL server of its own, stopped while the browser runs: pages still answer
    from the copy, and say why the catalogue cannot be read."""
    from contextlib import ExitStack

    from starlette.testclient import TestClient

    stack = ExitStack()
    try:
        pg = stack.enter_context(postgres())
    except ServerUnavailable as exc:
        pytest.skip(f"no PostgreSQL server could be started here: {exc}")
    try:
        url = pg.database("going_away")
        data = tmp_path / "data"
        run_chain(Catalogue(data, url=url), [hard_library])
        os.environ["DAM_CATALOGUE_URL"] = url
        with TestClient(make_app(data)) as client:
            _copy_ready(client)
            before = client.get("/api/models", params={"kind": "all"}).json()["items"]
            assert before and "cannot be read just now" not in client.get("/").text
            stack.close()  # the server stops
            time.sleep(1.2)  # past the browser's one-second look
            started = time.monotonic()
            page = client.get("/", params={"kind": "all"})
            assert time.monotonic() - started < 15  # one look, then cached: never a hang
            assert page.status_code == 200
            assert "The catalogue cannot be read just now" in page.text
            assert "cannot reach the catalogue at postgresql://" in page.text
            assert client.get("/api/models", params={"kind": "all"}).json()["items"] == before
            started = time.monotonic()
            assert client.get("/status").status_code == 200
            assert time.monotonic() - started < 2  # the failed look is not repeated per page
    finally:
        os.environ.pop("DAM_CATALOGUE_URL", None)
        stack.close()
