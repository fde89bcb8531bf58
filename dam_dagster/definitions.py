"""The dam_dagster code location: read this file to see the whole asset graph.

    file_inventory -> partial_hashes -> collision_candidates -> full_hashes -> duplicates
    file_inventory -> thumbnails_fast   (partitions: size buckets under the threshold)
    file_inventory -> thumbnails_slow   (partitions: size buckets at or over it)
    thumbnails_fast, thumbnails_slow -> similar_models

The render lanes also measure every model in the same pass (geometry facts, fingerprint,
print facts: the `model_facts` table, columns of `models`); `similar_models` groups the files
that hold the same mesh; `dam_loaders` asks the lanes again when a model loader changes.
`file_inventory` is asked for by `library_sensor` when folders change, and walks everything on
the `dam_complete_walk` schedule; every later asset has an eager automation condition,
evaluated by the `dam_automation` sensor; `dam_dead_runs` marks failed the runs whose process
is gone, so the run queue never fills with them. The sensors and the schedule are on by
default. Configuration comes from the environment (.env, .env.local):
docs/CONFIGURATION.md.
"""

import dagster as dg

from .core.config import load_env_files

load_env_files()  # .env and .env.local, for every process that loads this code location

from . import dedup_assets, similar_assets, thumbnail_assets  # noqa: E402
from .executors import executor_from_env  # noqa: E402
from .resources import CatalogueResource, LibraryResource, RenderResource  # noqa: E402
from .sensors import (  # noqa: E402
    automation_sensor,
    complete_walk_schedule,
    dead_runs_sensor,
    library_sensor,
)
from .terminal import dam_terminal  # noqa: E402

defs = dg.Definitions(
    assets=dedup_assets.ASSETS + thumbnail_assets.ASSETS + similar_assets.ASSETS,
    asset_checks=dedup_assets.CHECKS + thumbnail_assets.CHECKS,
    jobs=[
        dedup_assets.dedup_job,
        dedup_assets.inventory_job,
        thumbnail_assets.fast_job,
        thumbnail_assets.slow_job,
        similar_assets.similar_job,
    ],
    sensors=[library_sensor, automation_sensor, dead_runs_sensor, *thumbnail_assets.SENSORS],
    schedules=[complete_walk_schedule],
    # `dam run` logs with dam_terminal (one line per step); the UI's runs use Dagster's own.
    loggers={"dam_terminal": dam_terminal},
    # DAM_EXECUTOR: in_process (one machine: the chain's steps run one after the other anyway,
    # the render lanes have process pools of their own) or celery (workers: docs/CLUSTER.md).
    executor=executor_from_env(),
    resources={
        "library": LibraryResource.from_env(),
        "catalogue": CatalogueResource.from_env(),
        "renderer": RenderResource.from_env(),
    },
)
