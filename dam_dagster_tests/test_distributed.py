"""Several machines on this one: the whole pipeline through Dagster's celery executor, with
Dagster's storage in a real PostgreSQL server, a real Redis as the broker, and two real
`dam worker` processes (dagster-celery workers, "two machines": separate process groups,
distinct names) writing one catalogue in PostgreSQL (DAM_CATALOGUE_URL, another database of
the same server) while the thumbnails go to the shared data folder. The render bucket is
split in two shards (DAM_RENDER_SHARDS=2), rendered at once, one per worker (two writers of
the catalogue at once); one worker is SIGKILLed mid-render: its step must be given to the
other and its run must finish, never stay STARTED. The answer is checked against brute force
(MD5 of every file; a PNG for every model).

Skipped, with the reason, where PostgreSQL or Redis cannot start (`make test-deps` installs
them as root; CI has them).
"""

import hashlib
import json
import os
import shutil
import subprocess
import time
from collections import defaultdict
from contextlib import ExitStack
from pathlib import Path
from types import SimpleNamespace

import pytest

from .cluster import BIN, ServerUnavailable, Worker, postgres, redis

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

MODELS = [  # all under 1 MB: one partition (<1MB) of the fast lane
    "20mm-xyz-cube.stl",
    "cylinder.stl",
    "teapot.stl",
    "round.stl",
    "plate_holes.STL",
    "unit_sphere.STL",
    "idler_riser.STL",
    "featuretype.STL",
    "torus.STL",
    "box.STL",
    "octagonal_pocket.stl",
    "angle_block.STL",
]
COPIES = ["teapot.stl", "box.STL", "torus.STL"]  # duplicates, in another folder
VISIBILITY_TIMEOUT_S = 12  # above this test's longest step (a few seconds)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    from .conftest import CORPUS

    if not CORPUS.is_dir():
        pytest.skip(f"the shared model corpus is not at {CORPUS} (set DAM_TEST_CORPUS)")
    if shutil.which("dagster-celery", path=str(BIN)) is None:
        pytest.skip("dagster-celery is not installed (the cluster extra: make install)")
    base = tmp_path_factory.mktemp("cluster")
    library = base / "library"
    (library / "copies").mkdir(parents=True)
    for name in MODELS:
        shutil.copy(CORPUS / name, library / name)
    for name in COPIES:
        shutil.copy(CORPUS / name, library / "copies" / name)
    with ExitStack() as stack:
        try:
            pg = stack.enter_context(postgres())
            broker = stack.enter_context(redis(base / "redis"))
        except ServerUnavailable as exc:
            pytest.skip(f"the distributed test needs PostgreSQL and Redis: {exc}")
        data = base / "data"
        env = {k: v for k, v in os.environ.items() if not k.startswith("DAM_")}
        env.update(
            DAM_LIBRARY_ROOTS=str(library),
            DAM_DATA_DIR=str(data),
            DAGSTER_HOME=str(data / "dagster_home"),
            DAM_EXECUTOR="celery",
            DAM_CELERY_BROKER=broker,
            DAM_DAGSTER_STORAGE_URL=pg.url,
            DAM_CATALOGUE_URL=pg.database("dam_catalogue"),
            DAM_CELERY_VISIBILITY_TIMEOUT_S=str(VISIBILITY_TIMEOUT_S),
            DAM_FAST_WORKERS="1",  # two workers on two CPUs
            DAM_RENDER_SHARDS="2",  # the <1MB bucket in two partitions, one per worker
            PYTHONUNBUFFERED="1",
        )
        workers = {
            name: Worker(name, "io,render_cpu", env, base, base / f"worker-{name}.log")
            for name in ("alpha", "beta")
        }
        stack.callback(lambda: [w.stop() for w in workers.values()])
        for worker in workers.values():
            worker.wait_ready()
        yield SimpleNamespace(env=env, base=base, library=library, data=data, workers=workers)


def _launch(cluster, job: str, partition: str | None = None, tag: str = "") -> subprocess.Popen:
    """A run as the head launches one: `dagster job execute`, the executor from the code
    location (DAM_EXECUTOR=celery), the run recorded in PostgreSQL."""
    command = [str(BIN / "dagster"), "job", "execute", "-m", "dam_dagster.definitions", "-j", job]
    if partition:
        command += ["--tags", json.dumps({"dagster/partition": partition})]
    log = open(cluster.base / f"run-{tag or job}.log", "ab")
    return subprocess.Popen(
        command, env=cluster.env, cwd=cluster.base, stdout=log, stderr=subprocess.STDOUT
    )


def _finish(cluster, proc: subprocess.Popen, job: str, timeout_s: float = 180) -> None:
    """Wait for a run's command (job: its log's name) and check that it succeeded."""
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"run of {job} did not end in {timeout_s} s")
    log = (cluster.base / f"run-{job}.log").read_text(errors="replace")
    assert proc.returncode == 0, f"{job}:\n{log[-4000:]}"


def _instance(cluster, monkeypatch):
    import dagster as dg

    monkeypatch.setenv("DAGSTER_HOME", cluster.env["DAGSTER_HOME"])
    monkeypatch.setenv("DAM_DAGSTER_STORAGE_URL", cluster.env["DAM_DAGSTER_STORAGE_URL"])
    return dg.DagsterInstance.get()


def _executions(instance, run_id: str) -> list[tuple[str, str]]:
    """(step, worker) for every celery task that began executing a step of the run."""
    found = []
    for record in instance.all_logs(run_id):
        event = record.dagster_event
        if event is None or not event.is_engine_event:
            continue
        if not (event.message or "").startswith("[CeleryExecutor] Executing steps"):
            continue
        metadata = event.engine_event_data.metadata
        found.append((event.step_key, metadata["Celery worker"].value))
    return found


def _brute_force_duplicates(library: Path) -> set[frozenset[str]]:
    by_md5 = defaultdict(set)
    for path in library.rglob("*"):
        if path.is_file():
            by_md5[hashlib.md5(path.read_bytes()).hexdigest()].add(str(path))
    return {frozenset(group) for group in by_md5.values() if len(group) > 1}


def test_the_pipeline_through_two_workers_survives_one_killed_mid_render(cluster, monkeypatch):
    import dagster as dg
    from PIL import Image

    from dam_dagster.core.store import Catalogue

    # the dedup chain: seven steps, each a task on the io queue
    _finish(cluster, _launch(cluster, "dedup"), "dedup")

    # the bucket's two shards (DAM_RENDER_SHARDS=2) at once, one on each worker (each holds
    # one task at a time); a worker rendering, as soon as the first thumbnail is on disk (the
    # render under way), is killed, as a machine that loses power. Not waiting for both to
    # have begun: one shard of small models can be rendered whole before the other starts.
    shards = [f"<1MB shard {i} of 2" for i in (1, 2)]
    runs_by_shard = {key: _launch(cluster, "thumbnails_fast_job", key, tag=key) for key in shards}
    thumbs = cluster.data / "thumbnails"
    deadline, victim = time.monotonic() + 120, None
    while victim is None and time.monotonic() < deadline:
        busy = [w for w in cluster.workers.values() if "to render or measure" in w.text()]
        if busy and any(thumbs.rglob("*.png")):
            victim = busy[0]
        time.sleep(0.02)
    assert victim is not None, "no worker began rendering"
    victim.kill()
    killed_at = time.monotonic()
    made_before_kill = len(list(thumbs.rglob("*.png")))
    assert made_before_kill < len(MODELS), "the renders ended before the kill: nothing tested"
    # killed mid-step: the step had not finished there
    assert 'Finished execution of step "thumbnails_fast"' not in victim.text()
    survivor = next(w for w in cluster.workers.values() if w is not victim)
    for key, run in runs_by_shard.items():
        _finish(cluster, run, key)
    redelivered_after = time.monotonic() - killed_at

    _finish(cluster, _launch(cluster, "similar_models_job"), "similar_models_job")

    # Dagster's storage is PostgreSQL: every run there, every one a success, none in progress
    instance = _instance(cluster, monkeypatch)
    assert type(instance.run_storage).__name__ == "PostgresRunStorage"
    runs = instance.get_runs()
    assert sorted(r.job_name for r in runs) == [
        "dedup",
        "similar_models_job",
        "thumbnails_fast_job",
        "thumbnails_fast_job",
    ]
    assert {r.status for r in runs} == {dg.DagsterRunStatus.SUCCESS}, [
        (r.job_name, r.status) for r in runs
    ]
    # the killed worker's shard began there and was finished by the other, which had done its
    # own shard meanwhile
    host = os.uname().nodename
    by_shard = {
        r.tags["dagster/partition"]: [
            w for step, w in _executions(instance, r.run_id) if step == "thumbnails_fast"
        ]
        for r in runs
        if r.job_name == "thumbnails_fast_job"
    }
    assert sorted(by_shard) == shards
    assert sorted(by_shard.values()) == sorted(
        [[f"{victim.name}@{host}", f"{survivor.name}@{host}"], [f"{survivor.name}@{host}"]]
    )
    # redelivered once the visibility timeout passed, not before (a step still running must not
    # be handed out twice), and not much later
    assert VISIBILITY_TIMEOUT_S - 1 <= redelivered_after < VISIBILITY_TIMEOUT_S + 60
    # both machines did work
    workers = {w.split("@")[0] for r in runs for _s, w in _executions(instance, r.run_id)}
    assert workers == {"alpha", "beta"}
    # every step of every run went to its queue
    for r in runs:
        for record in instance.all_logs(r.run_id):
            message = (record.dagster_event and record.dagster_event.message) or ""
            if message.startswith("Submitting celery task"):
                queue = "render_cpu" if '"thumbnails_fast"' in message else "io"
                assert message.endswith(f'to queue "{queue}".'), message

    # the answer: the same duplicates as brute force, a thumbnail for every model
    cat = Catalogue(cluster.data, lock_timeout_s=30, url=cluster.env["DAM_CATALOGUE_URL"])
    assert not (cluster.data / "dam.duckdb").exists()  # every worker wrote PostgreSQL
    with cat.connect(write=False) as con:
        rows = con.execute("SELECT path, duplicate_of_id, id FROM library_files").fetchall()
        models = con.execute(
            "SELECT path, has_thumbnail, thumbnail_path FROM models ORDER BY path"
        ).fetchall()
    by_id = {file_id: path for path, _dup, file_id in rows}
    groups = defaultdict(set)
    for path, dup_of, _file_id in rows:
        if dup_of is not None:
            groups[by_id[dup_of]] |= {path, by_id[dup_of]}
    assert {frozenset(g) for g in groups.values()} == _brute_force_duplicates(cluster.library)
    assert len(models) == len(MODELS) + len(COPIES)
    for path, has_thumbnail, png in models:
        assert has_thumbnail == 1, path
        with Image.open(png) as image:
            assert image.size == (256, 256)
