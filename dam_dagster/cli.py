"""`dam`: the pipeline at a terminal. Reads the same configuration as the UI (.env, .env.local,
the environment) and waits politely for the catalogue when a run is writing."""

import contextlib
import csv
import json
import os
import shutil
import sys
from pathlib import Path

import click

from .core import config
from .core.config import ConfigError, load_env_files
from .core.store import Catalogue, CatalogueError


def _catalogue(quick: bool = False) -> Catalogue:
    """The catalogue; `quick`: a look that gives up after a few seconds, silently, when a run
    holds it (the caller then goes on without it)."""
    timeout = float(config.env("DAM_LOCK_TIMEOUT_S"))
    return Catalogue(
        config.data_dir(),
        min(timeout, 5.0) if quick else timeout,
        on_wait=None if quick else lambda msg: click.echo(msg + " ...", err=True),
        who="dam command",
    )


def _fail(message: str, code: int = 2) -> None:
    click.echo(f"dam: {message}", err=True)
    sys.exit(code)


def _sample_root() -> Path:
    from .core.sample import make_sample_library

    return make_sample_library(config.data_dir() / "sample-library")


def _roots(use_sample: bool) -> tuple[Path, ...]:
    """The library roots, checked; with use_sample, the sample library when none is set."""
    from .core.walk import RootUnavailable, check_roots

    roots = config.parse_roots(config.env("DAM_LIBRARY_ROOTS"))
    if not roots and use_sample:
        roots = (_sample_root(),)
        os.environ["DAM_LIBRARY_ROOTS"] = str(roots[0])
        click.echo(f"DAM_LIBRARY_ROOTS is not set: using the sample library {roots[0]}", err=True)
    if not roots:
        _fail(
            "DAM_LIBRARY_ROOTS is not set. Put your library folders in .env.local, e.g.\n"
            "    DAM_LIBRARY_ROOTS=/mnt/nas/models:/home/me/prints\n"
            "or try the sample library with `dam run --sample`."
        )
    try:
        check_roots(roots)
        config.check_data_dir_outside_roots(config.data_dir(), roots)
    except (RootUnavailable, ConfigError) as exc:
        _fail(str(exc))
    return roots


@click.group()
@click.version_option(package_name="dam-dagster")
def main() -> None:
    """Digital-asset management for 3D-model libraries (a Dagster code location)."""
    load_env_files()
    # Whatever the command: the data folder is never inside a library root (nothing may write
    # there, not even a reading command's lock file).
    try:
        config.check_data_dir_outside_roots(
            config.data_dir(), config.parse_roots(config.env("DAM_LIBRARY_ROOTS"))
        )
    except ConfigError as exc:
        _fail(str(exc))


@main.command()
@click.option(
    "--sample",
    is_flag=True,
    help="Use the sample library (made under the data folder) if no root is set.",
)
@click.option("--skip-thumbnails", is_flag=True, help="Only the dedup chain.")
@click.option(
    "--force",
    is_flag=True,
    help="Run the chain and every partition even when nothing changed since the last run.",
)
def run(sample: bool, skip_thumbnails: bool, force: bool) -> None:
    """Bring the catalogue up to date, headless, with progress on the terminal: the dedup
    chain, then the thumbnail partitions, each recorded as a run of the Dagster instance.
    What has nothing to do is not run: an unchanged library costs one walk."""
    roots = _roots(sample)
    # A first run (no catalogue yet): the chain runs whatever the walk finds, so the walk is
    # made by a process of its own, started before anything heavy is imported, while this one
    # imports Dagster and prepares its home (each on a CPU: at a million files the walk and
    # the start-up take about 3 s each).
    aside = None if force or _catalogue_may_exist() else _start_walk_aside(roots)
    import sqlite3

    from sqlalchemy.exc import SQLAlchemyError

    try:
        _run(roots, skip_thumbnails, force, aside)
    except (OSError, sqlite3.Error, SQLAlchemyError) as exc:
        # Outside any step: the Dagster home could not be written or read (a full disk, say).
        # A run left in progress by this is marked failed by the next `dam run`.
        from .core.failures import storage_cause

        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        cause = storage_cause(f"{type(exc).__name__}: {message}", config.data_dir())
        _fail(
            f"{cause}: `dam run` stopped outside any step (Dagster home {config.dagster_home()})", 1
        )
    finally:
        if aside is not None and aside.poll() is None:  # not taken: `dam run` stopped early
            aside.kill()
            aside.wait()


def _run(roots, skip_thumbnails: bool, force: bool, aside=None) -> None:
    cat = _catalogue(quick=True)
    dedup_needed = aside is not None or force or _dedup_needed(cat, roots)
    buckets = [] if skip_thumbnails else _thumbnail_buckets()
    if not dedup_needed and not _dead_runs_left():
        todo = buckets if force else _buckets_with_work(cat, buckets)
        if not todo:
            click.echo(
                "dam: nothing changed since the last run: the catalogue is current", err=True
            )
            click.echo("")
            _print_status(_status())
            return
    else:
        todo = None  # decided after the chain: the inventory may bring new files
    from .home import prepare_dagster_home

    prepare_dagster_home()
    import dagster as dg

    from .definitions import defs
    from .runs import mark_dead_runs_failed, process_tags
    from .terminal import failure_cause

    _freeze_imported_objects()
    if aside is not None:
        _take_walk_aside(aside, roots)
    instance = dg.DagsterInstance.get()
    for gone in mark_dead_runs_failed(instance):
        left = "unstarted" if gone.status == dg.DagsterRunStatus.NOT_STARTED else "in progress"
        click.echo(
            f"dam: run {gone.run_id[:8]} ({gone.job_name}) was left {left} by a process "
            "that is gone: marked failed",
            err=True,
        )
    terminal = {"loggers": {"dam_terminal": {}}}

    def execute(job_name: str, partition: str | None):
        return defs.resolve_job_def(job_name).execute_in_process(
            instance=instance,
            raise_on_error=False,
            run_config=terminal,
            partition_key=partition,
            tags=process_tags(),
        )

    failed, ran = [], 0
    if dedup_needed:
        ran += 1
        result = execute("dedup", None)
        if not result.success:
            failed.append(("dedup", None, result))
    if not failed:  # the inventory is what the thumbnails stand on
        if todo is None:
            todo = buckets if force else _buckets_with_work(cat, buckets)
        idle = [b.key for b in buckets if b not in todo]
        if idle:
            click.echo(f"thumbnails: up to date, not run: {', '.join(idle)}", err=True)
        for bucket in todo:
            ran += 1
            result = execute(f"thumbnails_{bucket.lane}_job", bucket.key)
            if not result.success:
                failed.append((f"thumbnails_{bucket.lane}_job", bucket.key, result))
        if todo or _similar_needed(cat):  # the lanes measured models: group the same mesh
            ran += 1
            result = execute("similar_models_job", None)
            if not result.success:
                failed.append(("similar_models_job", None, result))
    click.echo("")
    from .core.status import catalogue_status

    try:
        _print_status(catalogue_status(_catalogue(quick=bool(failed))))
    except CatalogueError as exc:
        if not failed:  # otherwise the run's own failure says why, below, cause first
            _fail(str(exc))
    for _job, partition, result in failed:
        for event in (e for e in result.all_events if e.is_step_failure):
            why = failure_cause(event.step_failure_data)
            click.echo(
                f"dam: {event.step_key}{f' [{partition}]' if partition else ''} failed: {why}",
                err=True,
            )
    if failed:
        _fail(
            f"{len(failed)} of {ran} runs failed (details in the Dagster UI, run "
            "history); `dam backfill-failed` retries failed thumbnail partitions",
            1,
        )


def _freeze_imported_objects() -> None:
    """Dagster and the definitions make some 100,000 long-lived objects that Python's cyclic
    garbage collector would go through at every full collection, and again when the process
    ends: 0.4-0.6 s of every `dam run` (`python -c "import dagster"` takes 1.4 s, 1.0 s with
    gc.freeze() at its end). Frozen, they are left alone; they are freed as usual at exit."""
    import gc

    gc.collect()
    gc.freeze()


def _catalogue_may_exist() -> bool:
    """False only when there is surely no catalogue yet: no DuckDB file in the data folder
    (a catalogue in PostgreSQL is looked at the usual way)."""
    return bool(config.env("DAM_CATALOGUE_URL")) or (config.data_dir() / "dam.duckdb").exists()


def _start_walk_aside(roots):
    """A process walking the roots (core/walk.py walk_aside_main), the walk `dam run` makes
    before any Dagster run; _take_walk_aside collects it."""
    import subprocess

    from .core.walk import walk_threads

    path_filter, follow = _walk_settings()
    spec = {
        "roots": [os.fsencode(r).hex() for r in roots],
        "include": list(path_filter.key[1]),
        "exclude": list(path_filter.key[0]),
        "follow": follow,
        "threads": walk_threads(roots, int(config.env("DAM_IO_THREADS"))),
    }
    code = "from dam_dagster.core.walk import walk_aside_main; walk_aside_main()"
    try:
        return subprocess.Popen(
            [sys.executable, "-c", code, json.dumps(spec)], stdout=subprocess.PIPE
        )
    except OSError:  # no process to be had (a limit reached): the inventory walks itself
        return None


def _take_walk_aside(proc, roots) -> None:
    """Hand the walk made aside to the inventory (prepare_walk). If it failed, nothing is
    handed over: the inventory walks itself and says what went wrong."""
    import pickle

    from .core.inventory import prepare_walk

    data = proc.stdout.read()
    proc.stdout.close()
    if proc.wait() != 0 or not data:
        return
    try:
        walk = pickle.loads(data)
    except Exception as exc:  # cut short (a debugger, a signal): walk again, never give up
        click.echo(f"the walk made aside could not be read ({exc}); walking again", err=True)
        return
    del data
    path_filter, follow = _walk_settings()
    prepare_walk(roots, walk, path_filter, follow)


def _dedup_needed(cat: Catalogue, roots) -> bool:
    """Walk once (no Dagster yet): the chain runs when the walk sees a change or a stage has
    something left (a new scan it has not seen, an error to retry). The walk is handed to
    the inventory, which then does not walk again."""
    if not cat.exists():
        return True
    from .core.dedup import chain_is_current
    from .core.inventory import prepare_walk, walk_differs

    walk, path_filter, follow = _walk_now(roots)
    try:
        all_sizes = config.parse_bool(config.env("DAM_HASH_ALL_SIZES"))
        if not walk_differs(cat, walk) and chain_is_current(cat, all_sizes):
            return False
    except CatalogueError:
        pass  # the run will say what is wrong with the catalogue
    prepare_walk(roots, walk, path_filter, follow)
    return True


def _walk_settings():
    """The path filter and the link rule of the configuration."""
    from .core.walk import PathFilter

    path_filter = PathFilter(
        config.parse_patterns(config.env("DAM_INCLUDE")),
        config.parse_patterns(config.env("DAM_EXCLUDE")),
    )
    return path_filter, config.parse_bool(config.env("DAM_FOLLOW_SYMLINKS"))


def _walk_now(roots):
    """The walk `dam run` makes before it launches anything (no catalogue connection open):
    (walk, path filter, follow links), with a line on the terminal every few seconds."""
    from .core.walk import progress_line, walk_library, walk_threads

    path_filter, follow = _walk_settings()

    def progress(w) -> None:
        click.echo(progress_line(w), err=True)

    threads = walk_threads(roots, int(config.env("DAM_IO_THREADS")))
    walk = walk_library(roots, path_filter, follow, on_progress=progress, threads=threads)
    return walk, path_filter, follow


def _thumbnail_buckets():
    """The render partitions: size buckets, split by path into DAM_RENDER_SHARDS each."""
    from .core.thumbnails import render_partitions

    threshold, shards = (
        int(config.env("DAM_SIZE_THRESHOLD_MB")),
        int(config.env("DAM_RENDER_SHARDS")),
    )
    return list(render_partitions(threshold, shards))


def _buckets_with_work(cat: Catalogue, buckets: list) -> list:
    """The partitions that would render anything (a busy catalogue: all of them)."""
    from .core.thumbnails import plan_buckets

    if not buckets:
        return []
    size = int(config.env("DAM_THUMBNAIL_SIZE"))
    try:
        plans = plan_buckets(cat, buckets, size, config.env("DAM_THUMBNAIL_BACKGROUND"))
    except CatalogueError:
        return list(buckets)
    return [b for b, plan in zip(buckets, plans) if plan.tasks or plan.unsupported]


def _similar_needed(cat: Catalogue) -> bool:
    """Whether `similar_models` is older than the facts it groups (never materialized, or
    facts measured since)."""
    try:
        with cat.connect(write=False) as con:
            facts = con.execute("SELECT max(measured_at) FROM model_facts").fetchone()[0]
            grouped = con.execute("SELECT count(*) FROM similar_models").fetchone()[0]
    except CatalogueError:
        return False
    return facts is not None and not grouped and _similar_has_candidates(cat)


def _similar_has_candidates(cat: Catalogue) -> bool:
    with cat.connect(write=False) as con:
        return bool(
            con.execute(
                "SELECT count(*) FROM (SELECT fingerprint FROM current_model_facts "
                "WHERE fingerprint IS NOT NULL GROUP BY fingerprint "
                "HAVING count(DISTINCT content_md5) > 1)"
            ).fetchone()[0]
        )


def _dead_runs_left() -> bool:
    """Whether runs of this machine were left in progress, or created and never begun, by a
    process that is gone (read from the run storage without Dagster; a sweep then marks them
    failed)."""
    from .runs import RunStorageUnreadable, queue_state_from_sqlite

    home = config.dagster_home()
    try:
        state = queue_state_from_sqlite(home) if (home / "dagster.yaml").is_file() else None
    except RunStorageUnreadable:
        return True  # let the run try, and say in one line what is wrong
    return bool(state and (state.dead or state.dead_unstarted))


def _status() -> dict:
    from .core.status import catalogue_status

    try:
        return catalogue_status(_catalogue())
    except CatalogueError as exc:
        _fail(str(exc))


def _print_status(status: dict) -> None:
    from .core.vocabulary import STATUS_LABELS as labels  # the Status page's labels too

    width = max(len(v) for v in labels.values())
    for key, label in labels.items():
        click.echo(f"{label:<{width}}  {status[key]:>14,}")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def status(as_json: bool) -> None:
    """Counts of files, models, hashes, duplicates and thumbnails, and the run queue."""
    figures = _status()
    queue = _queue()
    if queue is not None:
        figures.update(
            runs_in_progress=queue.in_progress,
            runs_queued=queue.queued,
            run_queue_limit=queue.limit,
            runs_without_process=len(queue.dead),
        )
    if as_json:
        click.echo(json.dumps(figures, indent=2))
        return
    click.echo(f"catalogue: {_catalogue(quick=True).where}")
    _print_status(figures)
    if queue is not None:
        click.echo(f"runs: {queue.describe()}")
        if queue.dead:
            click.echo(
                f"dam: {len(queue.dead)} run(s) in progress have no process any more (killed or "
                "crashed); the next `dam run`, or the dam_dead_runs sensor of `make dev` within a "
                "minute, marks them failed",
                err=True,
            )
    if figures["files"] == 0:
        click.echo("The catalogue is empty: run `dam run` (or `make dev` and the UI).", err=True)


def _queue():
    """The run queue of the Dagster home, when there is one (never created by reading)."""
    from .runs import (
        RunStorageUnreadable,
        configured_storage,
        queue_state,
        queue_state_from_sqlite,
    )

    home = config.dagster_home()
    if not (home / "dagster.yaml").is_file():
        return None
    if not configured_storage(home):  # the default SQLite storage: read it, or nothing yet
        try:
            return queue_state_from_sqlite(home)
        except RunStorageUnreadable as exc:
            click.echo(f"dam: {exc}; the run queue is left out", err=True)
            return None
    import dagster as dg  # another run storage (PostgreSQL): Dagster reads it

    os.environ["DAGSTER_HOME"] = str(home)
    try:
        with dg.DagsterInstance.get() as instance:
            return queue_state(instance)
    except Exception as exc:  # noqa: BLE001 - an unset variable, an unreachable server...
        import re

        text = (home / "dagster.yaml").read_text(errors="replace")
        unset = [n for n in re.findall(r"env:\s*(\w+)", text) if not os.environ.get(n)]
        why = (
            f"{', '.join(unset)} is not set here"
            if unset
            else (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        )
        click.echo(
            f"dam: the run storage named in {home / 'dagster.yaml'} cannot be read ({why}); "
            "the run queue is left out",
            err=True,
        )
        return None


@main.command()
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json"]),
    default=None,
    help="The groups as a table (default), CSV or JSON; with --plan: sh (default), csv, json.",
)
@click.option(
    "--plan",
    type=click.Choice(["remove", "hardlink", "quarantine"]),
    default=None,
    help="Print the dry plan of the reviewed groups (the keep choices made in the browser): "
    "remove the copies, replace them by hard links, or move them into DIR.",
)
@click.argument("quarantine_dir", metavar="[DIR]", required=False)
@click.option(
    "--plan-format",
    type=click.Choice(["sh", "csv", "json"]),
    default="sh",
    show_default=True,
    help="The plan as a shell script, CSV or JSON.",
)
def duplicates(
    fmt: str | None, plan: str | None, quarantine_dir: str | None, plan_format: str
) -> None:
    """One group per set of identical files: the original (lowest id) and its copies.

    With --plan, the reviewed plan instead: dam prints it, you read it and run it
    (`dam duplicates --plan remove > plan.sh`). Nothing is ever done to the library by dam.
    """
    from .core.dedup import duplicate_groups

    if plan is not None:
        _print_plan(plan, quarantine_dir, plan_format)
        return
    if quarantine_dir is not None:
        _fail("DIR is only for --plan quarantine")
    fmt = fmt or "table"
    try:
        groups = duplicate_groups(_catalogue())
    except CatalogueError as exc:
        _fail(str(exc))
    if fmt == "json":
        click.echo(
            json.dumps(
                [
                    {
                        "full_hash": g.full_hash,
                        "size_bytes": g.size_bytes,
                        "original": g.original,
                        "duplicates": g.duplicates,
                    }
                    for g in groups
                ],
                indent=2,
            )
        )
    elif fmt == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(["full_hash", "size_bytes", "role", "path"])
        for g in groups:
            writer.writerow([g.full_hash, g.size_bytes, "original", g.original])
            for d in g.duplicates:
                writer.writerow([g.full_hash, g.size_bytes, "duplicate", d])
    else:
        if not groups:
            click.echo("No duplicates.")
        for g in groups:
            click.echo(
                f"{g.full_hash}  {g.size_bytes:,} bytes  "
                f"{len(g.duplicates)} cop{'y' if len(g.duplicates) == 1 else 'ies'}"
            )
            click.echo(f"  original   {g.original}")
            for d in g.duplicates:
                click.echo(f"  duplicate  {d}")
        if groups:
            total = sum(g.reclaimable_bytes for g in groups)
            click.echo(
                f"{len(groups)} groups, {sum(len(g.duplicates) for g in groups)} "
                f"duplicates, {total:,} bytes reclaimable"
            )


def _print_plan(action: str, quarantine_dir: str | None, plan_format: str) -> None:
    from .core.review import ReviewError, plan_from_catalogue, render_plan

    if action == "quarantine" and not quarantine_dir:
        _fail(
            "--plan quarantine needs the folder to move the copies into: "
            "dam duplicates --plan quarantine /mnt/nas/quarantine"
        )
    if action != "quarantine" and quarantine_dir:
        _fail("DIR is only for --plan quarantine")
    try:
        plan = plan_from_catalogue(_catalogue(), action, quarantine_dir)
    except (CatalogueError, ReviewError) as exc:
        _fail(str(exc))
    sys.stdout.flush()
    sys.stdout.buffer.write(render_plan(plan, plan_format))
    sys.stdout.buffer.flush()
    click.echo(
        f"dam: a dry {action} plan of {plan.groups} reviewed groups ({len(plan.items)} copies, "
        f"{plan.reclaimable_bytes:,} bytes); nothing was done. Read it, then run it yourself."
        + (
            f" {plan.stale_groups} reviewed group(s) left out: review them again."
            if plan.stale_groups
            else ""
        )
        + ("" if plan.groups else " Review groups first: `dam serve`, the Duplicates page."),
        err=True,
    )


@main.command("backfill-failed")
@click.option(
    "--url",
    default="http://127.0.0.1:3000",
    show_default=True,
    help="The Dagster webserver of the running instance (`make dev`).",
)
def backfill_failed(url: str) -> None:
    """Launch a backfill of the failed thumbnail partitions on the running instance: only the
    files whose render failed for a reason that may pass are rendered again."""
    from .backfill import BackfillError, failed_partitions, launch_backfill

    try:
        failed = failed_partitions(url, ["thumbnails_fast", "thumbnails_slow"])
        if not any(failed.values()):
            click.echo("No failed thumbnail partitions: nothing to backfill.")
            return
        for asset, partitions in failed.items():
            if partitions:
                backfill_id = launch_backfill(url, asset, partitions)
                click.echo(
                    f"{asset}: backfill {backfill_id} of {', '.join(partitions)}: "
                    f"{url.rstrip('/')}/runs/b/{backfill_id}"
                )
    except BackfillError as exc:
        _fail(str(exc))


@main.command()
@click.option(
    "--status",
    "scope",
    type=click.Choice(["unsupported", "failed", "all"]),
    default="all",
    show_default=True,
    help="Which files: 'unsupported' (no loader then), 'failed' (failed, timeout, memory).",
)
@click.option("--bucket", help="Only this size bucket (a partition key, e.g. '1-5MB').")
@click.option(
    "--no-run",
    is_flag=True,
    help="Only mark the files; the next run of their partitions (UI, sensors) renders them.",
)
def retry(scope: str, bucket: str | None, no_run: bool) -> None:
    """Render again the files whose thumbnail said 'unsupported' or failed for good, e.g.
    after installing a loader or fixing a file in place (rows made by older loaders are
    retried without asking)."""
    from .core.thumbnails import request_retries, size_buckets

    buckets = {b.key: b for b in size_buckets(int(config.env("DAM_SIZE_THRESHOLD_MB")))}
    if bucket is not None and bucket not in buckets:
        _fail(f"no size bucket {bucket!r}; the buckets are {', '.join(buckets)}")
    chosen = [buckets[bucket]] if bucket else list(buckets.values())
    marked: dict[str, int] = {}
    try:
        for b in chosen:
            for status, n in request_retries(_catalogue(), scope, b).items():
                marked[status] = marked.get(status, 0) + n
    except CatalogueError as exc:
        _fail(str(exc))
    total = sum(marked.values())
    detail = ", ".join(f"{n} {s}" for s, n in sorted(marked.items())) or "none"
    click.echo(f"{total} file(s) asked for again ({detail})")
    if no_run or not total:
        return
    _roots(use_sample=False)
    from .home import prepare_dagster_home

    prepare_dagster_home()
    import dagster as dg

    from .definitions import defs
    from .runs import process_tags
    from .terminal import failure_cause

    instance = dg.DagsterInstance.get()
    chosen_keys = {b.key for b in chosen}  # size buckets; their partitions may be shards
    jobs = [
        (f"thumbnails_{p.lane}_job", p.key)
        for p in _thumbnail_buckets()
        if p.bucket_key in chosen_keys and _bucket_has_retries(p)
    ]
    jobs.append(("similar_models_job", None))
    failed = []
    for job_name, partition in jobs:
        result = defs.resolve_job_def(job_name).execute_in_process(
            instance=instance,
            raise_on_error=False,
            run_config={"loggers": {"dam_terminal": {}}},
            partition_key=partition,
            tags=process_tags(),
        )
        if not result.success:
            failed.append((job_name, partition, result))
    with _catalogue().connect(write=False) as con:
        waiting = con.execute(
            "SELECT count(*) FROM current_thumbnails WHERE retry_requested"
        ).fetchone()[0]
        now = dict(
            con.execute(
                "SELECT thumbnail_status, count(*) FROM library_files "
                "WHERE thumbnail_status IS NOT NULL GROUP BY thumbnail_status"
            ).fetchall()
        )
    click.echo(
        "thumbnails now: "
        + ", ".join(f"{n} {s}" for s, n in sorted(now.items()))
        + (f"; {waiting} still waiting" if waiting else "")
    )
    for _job, partition, result in failed:
        for event in (e for e in result.all_events if e.is_step_failure):
            why = failure_cause(event.step_failure_data)
            click.echo(f"dam: {event.step_key} [{partition}] failed: {why}", err=True)
    if failed:
        _fail(f"{len(failed)} of {len(jobs)} runs failed (details in the Dagster UI)", 1)


def _bucket_has_retries(bucket) -> bool:
    from .core.thumbnails import SHARD_SQL

    with _catalogue().connect(write=False) as con:
        return bool(
            con.execute(
                "SELECT count(*) FROM current_thumbnails t JOIN file_inventory f USING (file_id) "
                "WHERE t.retry_requested AND f.size_bytes >= $low "
                f"AND ($high IS NULL OR f.size_bytes < $high) AND {SHARD_SQL}",
                bucket.sql_args(),
            ).fetchone()[0]
        )


_FIND_COLUMNS = (
    "path",
    "triangles",
    "size_x_mm",
    "size_y_mm",
    "size_z_mm",
    "volume_mm3",
    "watertight",
    "probably_inches",
    "fits_printers",
)


@main.command("convert-catalogue")
@click.option(
    "--python",
    "python",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A Python whose duckdb reads the old file (default: a virtual environment made with "
    "pip for the conversion, then removed).",
)
def convert_catalogue(python: Path | None) -> None:
    """Convert a catalogue file written by DuckDB 2 (earlier releases) for this release's
    DuckDB. The original is kept beside it (dam.duckdb.storage-N); nothing is deleted."""
    from .core import convert

    cat = _catalogue()
    if cat.url:
        _fail(
            "DAM_CATALOGUE_URL is set: the catalogue is in PostgreSQL, there is no file to convert"
        )
    try:
        kept = convert.convert(cat.path, cat.held, python, log=lambda m: click.echo(m, err=True))
    except CatalogueError as exc:
        _fail(str(exc))
    if kept is None:
        click.echo(f"{cat.path} is readable as it is: nothing to convert")
        return
    click.echo(f"converted {cat.path}; the original is kept as {kept}")


@main.command()
@click.option("--max-x", type=float, help="Largest size along X, mm (likewise -y, -z).")
@click.option("--max-y", type=float)
@click.option("--max-z", type=float)
@click.option("--min-x", type=float, help="Smallest size along X, mm (likewise -y, -z).")
@click.option("--min-y", type=float)
@click.option("--min-z", type=float)
@click.option("--watertight/--not-watertight", default=None, help="Closed meshes, or open ones.")
@click.option("--probably-inches", is_flag=True, help="Unit-less files sized as if in inches.")
@click.option("--fits", "fits", help="Fits this printer of DAM_PRINTERS (its name).")
@click.option("--max-triangles", type=int)
@click.option("--name", "pattern", help="Path glob, e.g. '*dragon*' (case-insensitive).")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json"]),
    default="table",
    show_default=True,
)
@click.option("--limit", type=int, default=0, help="At most this many (0: all).")
def find(fmt: str, limit: int, pattern: str | None, fits: str | None, **bounds) -> None:
    """Models by their geometry facts, e.g. `dam find --max-x 180 --watertight`. Reads the
    catalogue only; which printers a model fits follows DAM_PRINTERS as it is now."""
    from .core.printers import parse_printers

    try:
        printers = parse_printers()
    except ConfigError as exc:
        _fail(str(exc))
    by_name = {p.name: p for p in printers}
    if fits is not None and fits not in by_name:
        _fail(f"no printer {fits!r} in DAM_PRINTERS: {', '.join(by_name)}")
    where, params = ["triangles IS NOT NULL"], {}
    for axis in "xyz":
        for kind, op in (("max", "<="), ("min", ">=")):
            value = bounds.get(f"{kind}_{axis}")
            if value is not None:
                where.append(f"size_{axis}_mm {op} ${kind}_{axis}")
                params[f"{kind}_{axis}"] = value
    if bounds.get("watertight") is not None:
        where.append("watertight = $watertight")
        params["watertight"] = bounds["watertight"]
    if bounds.get("probably_inches"):
        where.append("probably_inches")
    if bounds.get("max_triangles") is not None:
        where.append("triangles <= $max_triangles")
        params["max_triangles"] = bounds["max_triangles"]
    if fits is not None:  # the rule of core/printers.py, in SQL
        p = by_name[fits]
        where.append(
            "size_z_mm <= $pz AND ((size_x_mm <= $px AND size_y_mm <= $py) "
            "OR (size_y_mm <= $px AND size_x_mm <= $py))"
        )
        params.update(px=p.x_mm, py=p.y_mm, pz=p.z_mm)
    if pattern:
        where.append("path ILIKE $pattern ESCAPE '\\'")
        params["pattern"] = (
            pattern.replace("\\", "\\\\")
            .replace("%", "\\%")
            .replace("_", "\\_")
            .replace("*", "%")
            .replace("?", "_")
        )
    columns = [c for c in _FIND_COLUMNS if c != "fits_printers"]
    sql = f"SELECT {', '.join(columns)} FROM models WHERE {' AND '.join(where)} ORDER BY path"
    if limit:
        sql += f" LIMIT {int(limit)}"
    try:
        with _catalogue().connect(write=False) as con:
            rows = con.execute(sql, params).fetchall()
    except CatalogueError as exc:
        _fail(str(exc))
    records = []
    for row in rows:
        r = dict(zip(columns, row))
        size = (r["size_x_mm"], r["size_y_mm"], r["size_z_mm"])
        r["fits_printers"] = sorted(p.name for p in printers if p.fits(*size))
        records.append(r)
    if fmt == "json":
        click.echo(json.dumps(records, indent=2))
    elif fmt == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(_FIND_COLUMNS)
        for r in records:
            writer.writerow(
                [";".join(r[c]) if isinstance(r[c], list) else r[c] for c in _FIND_COLUMNS]
            )
    else:
        for r in records:
            size = " x ".join(f"{r[f'size_{a}_mm']:.1f}" for a in "xyz")
            flags = ["watertight" if r["watertight"] else "open"]
            if r["probably_inches"]:
                flags.append("inches?")
            click.echo(
                f"{size:>24} mm  {r['triangles']:>9,} tri  {', '.join(flags):<20} {r['path']}"
            )
        click.echo(f"{len(records)} model(s)", err=True)


@main.command()
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
)
def similar(fmt: str) -> None:
    """Same model, different file: groups of files holding the same mesh in other bytes
    (other format, ASCII or binary, another header, moved, re-saved), as of the last
    `similar_models` (dam run, or the UI)."""
    from .core.similar import similar_groups

    try:
        groups = similar_groups(_catalogue())
    except CatalogueError as exc:
        _fail(str(exc))
    if fmt == "json":
        click.echo(
            json.dumps(
                [
                    {
                        "fingerprint": g.fingerprint,
                        "members": g.members,
                        "exact_duplicates": g.exact_duplicates,
                        "triangles": g.triangles,
                        "size_mm": list(g.size_mm) if g.size_mm else None,
                    }
                    for g in groups
                ],
                indent=2,
            )
        )
        return
    if not groups:
        click.echo("No model is held by two different files.")
    for g in groups:
        size = " x ".join(f"{v:g}" for v in g.size_mm) + " mm" if g.size_mm else ""
        click.echo(
            f"{g.fingerprint}  {len(g.members)} files  {g.triangles or 0:,} triangles  {size}"
        )
        copies = {p for group in g.exact_duplicates for p in group[1:]}
        for path in g.members:
            click.echo(f"  {'copy of above' if path in copies else 'file':<14} {path}")
    if groups:
        click.echo(f"{len(groups)} group(s), {sum(len(g.members) for g in groups)} files")


@main.command()
@click.argument("dest", required=False, type=click.Path(path_type=Path))
def sample(dest: Path | None) -> None:
    """Make the sample library (default: <data folder>/sample-library)."""
    from .core.sample import make_sample_library

    path = make_sample_library(dest) if dest else _sample_root()
    click.echo(str(path))


@main.command()
@click.option("--host", default=None, help="Address to listen on [DAM_BROWSER_HOST: 127.0.0.1].")
@click.option("--port", default=None, type=int, help="Port [DAM_BROWSER_PORT: 3001].")
def serve(host: str | None, port: int | None) -> None:
    """The library browser: every model with its thumbnail, duplicates to review, problems,
    status. Reads a copy of the catalogue, so a run writing it never makes a page wait."""
    import uvicorn

    from .web.app import Settings, create_app

    settings = Settings.from_env(host, port)  # (main() refused a data folder inside a root)
    try:
        Catalogue(settings.data_dir).check_readable()
    except CatalogueError as exc:
        _fail(str(exc))
    click.echo(
        f"library browser: http://{settings.host}:{settings.port}  "
        f"(catalogue {Catalogue(settings.data_dir).where})",
        err=True,
    )
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level="warning",
        access_log=False,
    )


@main.command()
@click.option(
    "--queues",
    "-q",
    multiple=True,
    default=("io",),
    show_default=True,
    help="Queues to take steps from: io (the dedup chain), render_cpu, render_gpu; "
    "several as -q io,render_cpu.",
)
@click.option("--name", "-n", default=None, help="Worker name (default: dam-<queues>@host).")
def worker(queues: tuple[str, ...], name: str | None) -> None:
    """A machine of a cluster: a dagster-celery worker taking one step at a time from the
    given queues, with the broker and acknowledgement settings of the head (docs/CLUSTER.md).
    Needs the same package version, .env and mount paths as the head."""
    from .core.cluster import celery_worker_yaml
    from .home import prepare_dagster_home

    # dagster-celery's `-q a -q b` listens on b only: one comma-separated list
    wanted = [q.strip() for part in queues for q in part.split(",") if q.strip()]
    try:
        text = celery_worker_yaml()
        home = prepare_dagster_home()
    except ConfigError as exc:
        _fail(str(exc))
    exe = shutil.which("dagster-celery") or str(Path(sys.executable).with_name("dagster-celery"))
    if not Path(exe).exists():
        _fail("dagster-celery is not installed: pip install 'dam-dagster[cluster]'")
    worker_yaml = home / "celery-worker.yaml"
    worker_yaml.write_text(text)
    name = name or "dam-" + "-".join(wanted)
    click.echo(f"dam worker {name}: queues {','.join(wanted)}, one step at a time", err=True)
    command = [exe, "worker", "start", "-A", "dagster_celery.app", "-y", str(worker_yaml)]
    command += ["-q", ",".join(wanted), "-n", name]
    # dagster-celery starts `celery` from PATH: the one installed beside it, venv or not
    os.environ["PATH"] = str(Path(exe).parent) + os.pathsep + os.environ.get("PATH", "")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(exe, command)  # the worker in this process: a signal to it reaches the worker


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="The Dagster UI's address.")
@click.option("--port", default=3000, show_default=True, help="The Dagster UI's port.")
@click.option("--browser-port", default=None, type=int, help="[DAM_BROWSER_PORT: 3001]")
def dev(host: str, port: int, browser_port: int | None) -> None:
    """Start the Dagster UI (sensors and automation running) and the library browser side by
    side, as `make dev` does; Ctrl-C stops both."""
    import signal
    import subprocess
    import time

    roots = _roots(use_sample=True)
    try:  # before anything starts: a catalogue this release cannot open is one sentence
        _catalogue(quick=True).check_readable()
    except CatalogueError as exc:
        _fail(str(exc))
    from .home import prepare_dagster_home

    home = prepare_dagster_home()
    browser_port = browser_port or int(config.env("DAM_BROWSER_PORT"))
    browser_host = config.env("DAM_BROWSER_HOST")
    os.environ.setdefault("DAM_DAGSTER_URL", f"http://{host}:{port}")
    if not os.environ.get("DAM_BROWSER_URL", "").strip():
        os.environ["DAM_BROWSER_URL"] = f"http://{browser_host}:{browser_port}"
    dagster = shutil.which("dagster") or str(Path(sys.executable).with_name("dagster"))
    target = (
        ["-w", "workspace.yaml"]
        if Path("workspace.yaml").exists()
        else ["-m", "dam_dagster.definitions"]
    )
    dam = shutil.which("dam") or str(Path(sys.executable).with_name("dam"))

    def own_group() -> None:
        # Each child leads a process group of its own (dam dev forwards Ctrl-C to it), with
        # SIGINT at its default even when this process was started with SIGINT ignored (a
        # shell's background job): otherwise Ctrl-C could never stop it.
        os.setsid()
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    children = {
        "Dagster UI": subprocess.Popen(
            [dagster, "dev", "-h", host, "-p", str(port), *target], preexec_fn=own_group
        ),
        "library browser": subprocess.Popen(
            [dam, "serve", "--host", browser_host, "--port", str(browser_port)],
            preexec_fn=own_group,
        ),
    }
    click.echo(
        f"library: {':'.join(map(str, roots))}\ndata:    {config.data_dir()}\n"
        f"DAGSTER_HOME: {home}\n"
        f"Dagster UI:      http://{host}:{port}\n"
        f"library browser: http://{browser_host}:{browser_port}\n"
        "Ctrl-C stops both.",
        err=True,
    )

    def signal_all(sig) -> None:
        for proc in children.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, sig)

    def wait_all(seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        for proc in children.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                return False
        return True

    def stop(*_args) -> None:
        # What Ctrl-C in a terminal does to each process group (dagster dev shuts its webserver,
        # daemon and code server down cleanly on it), then firmer, if need be.
        signal_all(signal.SIGINT)
        if not wait_all(20):
            signal_all(signal.SIGTERM)
            if not wait_all(10):
                signal_all(signal.SIGKILL)
                wait_all(5)

    def interrupted(*_args) -> None:
        raise KeyboardInterrupt

    # Explicit handlers: a shell that starts `make dev` in the background ignores SIGINT for
    # it, and Python would then never raise KeyboardInterrupt.
    signal.signal(signal.SIGINT, interrupted)
    signal.signal(signal.SIGTERM, interrupted)
    try:
        while True:
            for name, proc in children.items():
                if proc.poll() is not None:
                    click.echo(
                        f"dam dev: the {name} stopped (exit {proc.returncode}); "
                        "stopping the other.",
                        err=True,
                    )
                    stop()
                    sys.exit(proc.returncode or 1)
            time.sleep(0.5)
    except KeyboardInterrupt:
        click.echo("dam dev: stopping the Dagster UI and the library browser ...", err=True)
        stop()


if __name__ == "__main__":
    main()
