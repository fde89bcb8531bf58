"""Several machines: the settings of the Celery executor and of Dagster's PostgreSQL storage.

Plain Python (no Dagster import): dam_dagster/executors.py turns these into Dagster's celery
executor, home.py into the instance's dagster.yaml, and `dam worker` into a worker's
configuration file. docs/CLUSTER.md says what runs where.

Queues by what a machine is good for (a worker listens on one or more, `-q io,render_cpu`):
- `io`: the dedup chain and `similar_models`, on a machine near the share (they read every
  file, or only the catalogue);
- `render_cpu` (DAM_RENDER_QUEUE): the render lanes; `render_gpu` for machines with a GPU
  when the lanes are routed there.

A step owns its render pool (every CPU of its machine), so a worker runs one step at a time
(worker_concurrency 1, prefetch 1). Tasks are acknowledged when they end, not when they start
(task_acks_late): a worker killed mid-step (SIGKILL, a power cut) leaves its task unacknowledged
in Redis, which gives it to another worker once the broker's visibility timeout has passed, so
the run goes on instead of waiting for ever. The timeout must be longer than the longest step:
a step still running when it expires is handed to a second worker as well.
"""

from __future__ import annotations

from .config import ConfigError, env

QUEUE_TAG = "dagster-celery/queue"  # the op tag dagster-celery routes a step by
IO_QUEUE = "io"
RENDER_QUEUES = ("render_cpu", "render_gpu")
EXECUTORS = ("in_process", "celery")


def executor_name() -> str:
    name = env("DAM_EXECUTOR").strip().lower().replace("-", "_")
    if name not in EXECUTORS:
        raise ConfigError(
            f"DAM_EXECUTOR={env('DAM_EXECUTOR')!r}: use in_process (one machine, the default) "
            "or celery (steps as tasks on dagster-celery workers: docs/CLUSTER.md)"
        )
    return name


def render_queue() -> str:
    queue = env("DAM_RENDER_QUEUE").strip()
    if not queue or "," in queue or " " in queue:
        raise ConfigError(f"DAM_RENDER_QUEUE={queue!r}: one queue name, e.g. render_cpu")
    return queue


def visibility_timeout_s() -> int:
    text = env("DAM_CELERY_VISIBILITY_TIMEOUT_S")
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError(f"DAM_CELERY_VISIBILITY_TIMEOUT_S={text!r}: a number of seconds")
    return value


def celery_config() -> dict:
    """The celery executor's config block (`execution: config:` in Dagster's terms): the same
    on the head (which submits the steps) and on every worker (which runs them)."""
    broker = env("DAM_CELERY_BROKER").strip()
    if not broker:
        raise ConfigError("DAM_CELERY_BROKER is empty: the broker's URL, e.g. redis://head:6379/0")
    timeout = visibility_timeout_s()
    return {
        "broker": broker,
        "backend": env("DAM_CELERY_BACKEND").strip() or broker,
        "config_source": {
            "worker_concurrency": 1,
            # a step without a queue tag goes with the chain (dagster-celery's default queue,
            # "dagster", has no worker here)
            "task_default_queue": IO_QUEUE,
            "worker_prefetch_multiplier": 1,
            "task_acks_late": True,
            "task_reject_on_worker_lost": True,
            "broker_transport_options": {
                "visibility_timeout": timeout,
                # Look for the tasks of lost workers every few seconds (Redis' default is
                # every 100 s): a killed worker's step is redelivered soon after the timeout.
                "unacked_restore_interval": max(1, min(10, timeout // 5)),
                "unacked_restore_throttle": 1,
                # dagster-celery's own defaults, kept
                "max_retries": 3,
                "interval_start": 0,
                "interval_step": 0.2,
                "interval_max": 0.5,
            },
            "result_backend_transport_options": {"visibility_timeout": timeout},
            # A worker that loses the broker for a moment reconnects rather than exits.
            "broker_connection_retry_on_startup": True,
        },
    }


def celery_worker_yaml() -> str:
    """What `dagster-celery worker start -y FILE` reads: the executor's config block."""
    import yaml

    return (
        "# Written by `dam worker` from the DAM_CELERY_* settings (docs/CLUSTER.md); the head's\n"
        "# celery executor uses the same values.\n"
        + yaml.safe_dump({"execution": {"config": celery_config()}}, sort_keys=False)
    )


def storage_url() -> str:
    """DAM_DAGSTER_STORAGE_URL, checked: '' (SQLite in DAGSTER_HOME) or a PostgreSQL URL."""
    url = env("DAM_DAGSTER_STORAGE_URL").strip()
    if not url:
        return ""
    scheme = url.split("://", 1)[0]
    if scheme == "postgresql" or scheme == "postgres":
        raise ConfigError(
            f"DAM_DAGSTER_STORAGE_URL starts with {scheme}://, which SQLAlchemy 2 reads as "
            "psycopg 3 (not installed; dagster-postgres uses psycopg2): write "
            "postgresql+psycopg2://user:password@host:5432/dbname"
        )
    if scheme != "postgresql+psycopg2":
        raise ConfigError(
            f"DAM_DAGSTER_STORAGE_URL: {scheme}:// is not a PostgreSQL URL; write "
            "postgresql+psycopg2://user:password@host:5432/dbname"
        )
    return url


STORAGE_YAML = """\
# Dagster's run, event and schedule storage in PostgreSQL (DAM_DAGSTER_STORAGE_URL), shared by
# the head and every worker: its address must be reachable from every host.
storage:
  postgres:
    postgres_url:
      env: DAM_DAGSTER_STORAGE_URL
"""
