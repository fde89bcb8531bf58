"""Sensors: what keeps the catalogue current without anyone clicking.

- `library_sensor` looks at folder mtimes (core/changes.py), within a time budget per tick,
  and asks for an inventory of just the folders whose mtime moved: a NAS is never walked
  whole by a sensor, whatever its size.
- `dam_complete_walk` (a schedule, daily by default) walks everything: files rewritten in place
  do not move their folder's mtime.
- `dam_automation` evaluates the eager automation conditions: whatever follows the inventory
  (the dedup chain, the thumbnails) is materialized once its upstream has been updated.
- `dam_dead_runs` marks failed the runs whose process is gone (dam_dagster/runs.py), so that a
  killed run never holds the run queue, and says in each tick how the queue stands.
All run by default: no toggle needed in the UI.
"""

import hashlib
import json
import time

import dagster as dg

from .core.changes import encode_folder, known_folder_states, look_for_changes
from .core.config import ConfigError, env
from .core.store import CatalogueBusy, CatalogueMissing
from .core.walk import RootUnavailable, check_roots, display_path, walk_threads
from .dedup_assets import inventory_job
from .resources import CatalogueResource, LibraryResource
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
    minimum_interval_seconds=int(env("DAM_AUTOMATION_INTERVAL_S")),
    description="Runs what follows an updated asset (eager conditions): hashing and dedup after "
    "the inventory, thumbnails after the inventory.",
)


@dg.sensor(
    job=inventory_job,
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=int(env("DAM_SENSOR_INTERVAL_S")),
    description="Looks at the mtimes of the library's folders (a folder's mtime moves when a "
    "name in it is added, removed or renamed) for at most DAM_SENSOR_BUDGET_S a tick, going on "
    "where it stopped, and asks for an inventory of just the folders that changed. Files "
    "rewritten in place are found by the dam_complete_walk schedule.",
)
def library_sensor(
    context: dg.SensorEvaluationContext, library: LibraryResource, catalogue: CatalogueResource
):
    try:
        roots = library.root_paths()
        check_roots(roots)
    except (ConfigError, RootUnavailable) as exc:
        return dg.SkipReason(str(exc))
    cat = catalogue.catalogue(who="library_sensor")
    cat.lock_timeout_s = min(cat.lock_timeout_s, 5)  # never wait long: look again next tick
    try:
        folders = known_folder_states(cat)
    except CatalogueMissing:
        folders = []
    except CatalogueBusy:
        return dg.SkipReason("the catalogue is busy (a run is writing): looking next tick")
    cursor = json.loads(context.cursor) if context.cursor else {}
    known_roots = {root for _, root, _ in folders}
    new_roots = [r for r in roots if display_path(str(r)) not in known_roots]
    if new_roots:  # never walked, a root added since, or a catalogue from before folders
        hour = int(time.time() // 3600)  # asked again hourly if that walk fails
        which = hashlib.md5(" ".join(map(str, new_roots)).encode(errors="surrogateescape"),
                            usedforsecurity=False).hexdigest()[:12]  # fmt: skip
        return dg.SensorResult(
            run_requests=[dg.RunRequest(run_key=f"complete-walk-{which}-{hour}")],
            cursor=json.dumps({"pos": 0}),
        )
    threads = walk_threads(roots, library.io_threads)
    look = look_for_changes(folders, cursor.get("pos", 0), float(env("DAM_SENSOR_BUDGET_S")),
                            threads)  # fmt: skip
    seen = f"looked at {look.checked:,} of {look.folders:,} folders in {look.seconds:.1f} s"
    if not look.changed:
        return dg.SensorResult(
            skip_reason=f"no folder changed ({seen})", cursor=json.dumps({"pos": look.position})
        )
    context.log.info(f"{len(look.changed):,} folders changed ({seen}): asking for an inventory")
    state = "\n".join(f"{f}\0{m}" for f, m in zip(look.changed, look.mtimes))
    key = hashlib.md5(state.encode(errors="surrogateescape"), usedforsecurity=False).hexdigest()
    request = dg.RunRequest(
        run_key=f"folders-{key}",
        run_config={"ops": {"file_inventory": {"config": {
            "folders": [encode_folder(f) for f in look.changed]}}}},
        tags={"dam/changed_folders": str(len(look.changed))},
    )  # fmt: skip
    return dg.SensorResult(run_requests=[request], cursor=json.dumps({"pos": look.position}))


complete_walk_schedule = dg.ScheduleDefinition(
    name="dam_complete_walk",
    cron_schedule=env("DAM_COMPLETE_WALK_CRON"),
    target=inventory_job,  # a named job: its runs show their target
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="A complete walk of every root: finds files rewritten in place (their folder's "
    "mtime does not move) and verifies what the library sensor's looks at folders concluded.",
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
