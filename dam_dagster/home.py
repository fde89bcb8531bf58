"""DAGSTER_HOME: where run history, partition status and sensor cursors survive restarts.

Defaults to `$DAM_DATA_DIR/dagster_home`. Its `dagster.yaml` is written once by the project
(and never overwritten, so edits stick): a run queue of up to 10 runs at once (a backfill
launches one run per partition) and concurrency pools of one for the catalogue writers and
for each render lane; with DAM_DAGSTER_STORAGE_URL set, Dagster's run, event and schedule
storage in PostgreSQL (a head and its workers: docs/CLUSTER.md).
"""

import contextlib
import fcntl
import io
import os
from pathlib import Path

from .core.cluster import STORAGE_YAML, storage_url
from .core.config import ConfigError, dagster_home

DAGSTER_YAML = """\
# Written by dam_dagster the first time DAGSTER_HOME was prepared. It is not overwritten:
# edit it freely, or delete it to get the default back.
telemetry:
  enabled: false

concurrency:
  runs:
    # A backfill launches one run per partition; at most this many are in progress.
    max_concurrent_runs: 10
  pools:
    # Pools used: dam_catalogue (the dedup chain, one writer at a time) and
    # thumbnails_fast / thumbnails_slow (one render pool per lane at a time, each using all
    # its worker processes). Raise a single pool with `dagster instance concurrency set`.
    default_limit: 1
    # A run waits in the queue until its pools have room, rather than starting and holding a
    # process while its step waits.
    granularity: run

run_monitoring:
  # Notice runs whose process died, so their pool slots are freed.
  enabled: true
  start_timeout_seconds: 180
  poll_interval_seconds: 30

sensors:
  use_threads: true
  num_workers: 2
"""


def prepare_dagster_home() -> Path:
    """Create DAGSTER_HOME and its storages once, under a lock; export it; return it.

    Dagster's SQLite storages create their tables (and stamp their alembic version) the first
    time an instance opens them, with nothing stopping two processes from doing it at once:
    two `dam run` started together on an empty data folder left the run database with two
    alembic heads, after which no run could start. So the first process to get here writes
    `dagster.yaml`, opens the instance and touches every storage while holding an flock on
    `.dam-prepare.lock`; the others wait for it and then find everything made. The same is
    done again, once, after a Dagster upgrade (the version is kept in `.dam-prepared`).
    """
    home = dagster_home()
    home.mkdir(parents=True, exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(home)
    _check_storage(home / "dagster.yaml", storage_url())
    marker = home / ".dam-prepared"
    if _prepared_version(marker) == _dagster_version():
        return home
    with open(home / ".dam-prepare.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if _prepared_version(marker) == _dagster_version():
            return home
        config = home / "dagster.yaml"
        if not config.exists():
            _write_atomically(config, dagster_yaml())
        # storages made by another Dagster release (or before this marker existed): migrate
        _create_storages(upgrade=(home / "history" / "runs.db").exists())
        _write_atomically(marker, _dagster_version() + "\n")
    return home


def dagster_yaml() -> str:
    """The dagster.yaml the project writes: with the PostgreSQL storage block when
    DAM_DAGSTER_STORAGE_URL is set (a head and its workers: docs/CLUSTER.md)."""
    return DAGSTER_YAML + ("\n" + STORAGE_YAML if storage_url() else "")


def _check_storage(config: Path, url: str) -> None:
    """DAM_DAGSTER_STORAGE_URL set, but a dagster.yaml written before without a storage: say
    so, rather than quietly keep the run history in SQLite on this one machine."""
    if not url or not config.exists():
        return
    text = config.read_text()
    if "storage:" not in text and "run_storage:" not in text:
        raise ConfigError(
            f"DAM_DAGSTER_STORAGE_URL is set but {config} names no storage (it was written "
            "before; the project never overwrites it): add this block to it, or delete it to "
            "have it written again:\n" + STORAGE_YAML
        )


def _dagster_version() -> str:
    from dagster.version import __version__

    return __version__


def _prepared_version(marker: Path) -> str | None:
    try:
        return marker.read_text().strip()
    except OSError:
        return None


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk: leave nothing half-written behind
        raise


def _create_storages(upgrade: bool) -> None:
    """Open the instance so that each storage creates its tables, and read from each once.
    After a Dagster upgrade, migrate them (`dagster instance migrate` does the same)."""
    import dagster as dg

    with dg.DagsterInstance.get() as instance:
        if upgrade:
            with contextlib.redirect_stdout(io.StringIO()):  # its progress lines say nothing
                instance.upgrade(print_fn=lambda *_: None)
        instance.get_runs(limit=1)
        instance.get_run_records(limit=1)
        instance.event_log_storage.get_asset_records()
        instance.all_instigator_state()
