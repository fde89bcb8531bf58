"""Sensors: what keeps the catalogue current without anyone clicking.

- `library_sensor` walks the roots (stat only, nothing is read) and asks for `file_inventory`
  when any file was added, removed or modified since its last look.
- `dam_automation` evaluates the eager automation conditions: whatever follows the inventory
  (the dedup chain, the thumbnails) is materialized once its upstream has been updated.
- `dam_dead_runs` marks failed the runs whose process is gone (dam_dagster/runs.py), so that a
  killed run never holds the run queue, and says in each tick how the queue stands.
All run by default: no toggle needed in the UI.
"""

import dagster as dg

from .core.config import ConfigError, env
from .core.walk import RootUnavailable, library_fingerprint, walk_library, walk_threads
from .dedup_assets import inventory_job
from .resources import LibraryResource
from .runs import PID_TAG, mark_dead_runs_failed, queue_state

automation_sensor = dg.AutomationConditionSensorDefinition(
    "dam_automation",
    # Groups rather than "all | all checks": the UI shows this selection as a string
    # (group:"dedup" or group:"thumbnails"); the checks of the selected assets come with it.
    target=dg.AssetSelection.groups("dedup", "thumbnails"),
    # One run per partition, not a backfill: a backfill counts a requested partition that did
    # not materialize as failed, and an empty size bucket does not materialize (it is
    # observed, so that it does not show green beside the buckets that hold models).
    emit_backfills=False,
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description="Runs what follows an updated asset (eager conditions): hashing and dedup after "
    "the inventory, thumbnails after the inventory.",
)


@dg.sensor(
    job=inventory_job,
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=int(env("DAM_SENSOR_INTERVAL_S")),
    description="Asks for a new file inventory when files under the library roots were added, "
    "removed or modified (by size and mtime) since the last look.",
)
def library_sensor(context: dg.SensorEvaluationContext, library: LibraryResource):
    try:
        roots = library.root_paths()
        walk = walk_library(
            roots,
            library.path_filter(),
            library.follow_symlinks,
            threads=walk_threads(roots, library.io_threads),
        )
    except (ConfigError, RootUnavailable) as exc:
        return dg.SkipReason(str(exc))
    fingerprint = library_fingerprint(walk)
    if fingerprint == context.cursor:
        return dg.SkipReason(f"no change in {len(walk.files):,} files since the last look")
    context.log.info(f"library changed ({len(walk.files):,} files): asking for file_inventory")
    return dg.SensorResult(
        run_requests=[dg.RunRequest(run_key=fingerprint)],
        cursor=fingerprint,
    )


@dg.sensor(
    name="dam_dead_runs",
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=60,
    description="Marks failed the runs left in progress by a process that is gone (killed, "
    "crashed), which would otherwise hold places in the run queue for ever, and says how the "
    "queue stands.",
)
def dead_runs_sensor(context: dg.SensorEvaluationContext):
    marked = mark_dead_runs_failed(context.instance)
    for run in marked:
        context.log.warning(
            f"run {run.run_id} ({run.job_name}) was in progress with no process left "
            f"(pid {run.tags.get(PID_TAG)}): marked failed"
        )
    state = queue_state(context.instance)
    done = f"marked {len(marked)} run(s) failed whose process was gone; " if marked else ""
    return dg.SkipReason(f"{done}{state.describe()}")
