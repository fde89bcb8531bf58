"""Where a run's steps execute, chosen by DAM_EXECUTOR (docs/CLUSTER.md).

- `in_process` (the default, one machine): every step in the run's own process. The chain's
  steps run one after the other anyway and the render lanes have process pools of their own,
  so a process per step would only add start-up time to every run.
- `celery` (several machines): each step is a Celery task on a `dagster-celery` worker, sent
  to the queue named by its op tag `dagster-celery/queue` (`io` for the dedup chain, `render_cpu`
  for the lanes). The settings (broker, late acknowledgement, one step at a time per worker)
  come from core/cluster.py, which `dam worker` writes for the workers too.

`dam run` always executes in its own process (`execute_in_process`); runs launched from the
UI, by sensors, schedules and backfills use this executor.
"""

import dagster as dg

from .core.cluster import IO_QUEUE, QUEUE_TAG, celery_config, executor_name, render_queue
from .core.config import ConfigError

IO_TAGS = {QUEUE_TAG: IO_QUEUE}


def render_tags() -> dict[str, str]:
    return {QUEUE_TAG: render_queue()}


def executor_from_env() -> dg.ExecutorDefinition:
    if executor_name() == "in_process":
        return dg.in_process_executor
    try:
        from dagster_celery import celery_executor
    except ImportError as exc:
        raise ConfigError(
            "DAM_EXECUTOR=celery needs the cluster extra: pip install 'dam-dagster[cluster]'"
        ) from exc
    return celery_executor.configured(celery_config(), name="dam_celery")
