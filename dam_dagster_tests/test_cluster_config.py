"""Several machines by configuration alone: the executor, the queues, the worker settings and
Dagster's PostgreSQL storage, as the settings choose them (no server needed here; the
distributed test runs them for real)."""

import pytest
import yaml

from dam_dagster.core.cluster import celery_config, celery_worker_yaml, executor_name, storage_url
from dam_dagster.core.config import ConfigError


def test_one_machine_is_the_default(monkeypatch):
    import dagster as dg

    from dam_dagster.executors import executor_from_env

    assert executor_name() == "in_process"
    assert executor_from_env() is dg.in_process_executor
    assert storage_url() == ""


def test_the_celery_executor_and_its_worker_settings(monkeypatch):
    from dam_dagster.executors import executor_from_env

    monkeypatch.setenv("DAM_EXECUTOR", "celery")
    monkeypatch.setenv("DAM_CELERY_BROKER", "redis://head:6379/0")
    monkeypatch.setenv("DAM_CELERY_VISIBILITY_TIMEOUT_S", "600")
    assert executor_from_env().name == "dam_celery"
    config = celery_config()
    assert config["backend"] == "redis://head:6379/0"  # the broker, unless set
    source = config["config_source"]
    assert source["worker_concurrency"] == 1 and source["worker_prefetch_multiplier"] == 1
    assert source["task_acks_late"] and source["task_reject_on_worker_lost"]
    assert source["broker_transport_options"]["visibility_timeout"] == 600
    assert source["task_default_queue"] == "io"
    # what `dam worker` writes is what dagster-celery reads: execution.config
    assert yaml.safe_load(celery_worker_yaml()) == {"execution": {"config": config}}


@pytest.mark.parametrize(
    "name, value, words",
    [
        ("DAM_EXECUTOR", "multiprocess", "in_process"),
        ("DAM_CELERY_VISIBILITY_TIMEOUT_S", "soon", "seconds"),
        ("DAM_DAGSTER_STORAGE_URL", "postgresql://u@h/db", "postgresql+psycopg2://"),
        ("DAM_DAGSTER_STORAGE_URL", "sqlite:///x.db", "not a PostgreSQL URL"),
    ],
)
def test_a_setting_that_cannot_work_says_why(monkeypatch, name, value, words):
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=words.replace("+", r"\+")):
        executor_name() if name == "DAM_EXECUTOR" else (celery_config(), storage_url())


def test_the_queues_of_the_steps():
    from dam_dagster.definitions import defs

    queues = {
        node.name: node.tags.get("dagster-celery/queue")
        for job in ("dedup", "thumbnails_fast_job", "thumbnails_slow_job", "similar_models_job")
        for node in defs.resolve_job_def(job).graph.nodes
    }
    assert queues.pop("thumbnails_fast") == queues.pop("thumbnails_slow") == "render_cpu"
    assert set(queues.values()) == {"io"}  # the chain, every check, similar_models


def test_the_dagster_home_of_a_head(monkeypatch, tmp_path):
    from dam_dagster.home import prepare_dagster_home

    url = "postgresql+psycopg2://dagster@head:5432/dagster"
    monkeypatch.setenv("DAM_DAGSTER_STORAGE_URL", url)
    home = tmp_path / "old_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    # written before, without a storage: refused, with the block to add
    with pytest.raises(ConfigError, match="env: DAM_DAGSTER_STORAGE_URL"):
        prepare_dagster_home()
    # a new home gets the block (not opened here: there is no server)
    from dam_dagster.home import dagster_yaml

    written = yaml.safe_load(dagster_yaml())
    assert written["storage"] == {"postgres": {"postgres_url": {"env": "DAM_DAGSTER_STORAGE_URL"}}}
    assert written["concurrency"]["runs"]["max_concurrent_runs"] == 10  # the rest kept


def test_status_without_the_heads_storage_setting_says_so_and_goes_on(tmp_path):
    """A shell on a worker without DAM_DAGSTER_STORAGE_URL: the figures, and one line saying
    the run queue is left out (it was a traceback from Dagster's config)."""
    import os
    import subprocess

    from dam_dagster.core.store import Catalogue

    from .conftest import BIN

    data = tmp_path / "data"
    with Catalogue(data, url="").connect() as con:
        con.execute("SELECT 1")
    home = data / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(
        "storage:\n  postgres:\n    postgres_url:\n      env: DAM_DAGSTER_STORAGE_URL\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("DAM_")}
    env.update(DAM_DATA_DIR=str(data), DAGSTER_HOME=str(home))
    out = subprocess.run([str(BIN / "dam"), "status"], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "files" in out.stdout and "Traceback" not in out.stderr
    assert "the run queue is left out" in out.stderr and "DAM_DAGSTER_STORAGE_URL" in out.stderr
