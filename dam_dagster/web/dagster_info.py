"""Runs in progress and recent runs, read from the Dagster instance (DAGSTER_HOME) for the
Status page: the same run storage the Dagster UI shows, read directly, so it works whether or
not the UI is running. Dagster is imported on the first call only."""

from __future__ import annotations

import os
import threading
from pathlib import Path

_lock = threading.Lock()
_instance = None
IN_PROGRESS = ("QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING")


def _get_instance(home: Path | None):
    global _instance
    with _lock:
        if _instance is None:
            import dagster as dg

            if home is not None:
                if not (home / "dagster.yaml").exists():
                    return None  # no instance yet: nothing has run
                os.environ.setdefault("DAGSTER_HOME", str(home))
                _instance = dg.DagsterInstance.from_config(str(home))
            else:
                _instance = dg.DagsterInstance.get()
        return _instance


def _target(run) -> str:
    tags = run.tags
    job = run.job_name
    if job == "__ASSET_JOB" or job.startswith("__ASSET_JOB"):
        keys = sorted("/".join(k.path) for k in (run.asset_selection or ()))
        job = ", ".join(keys) or "assets"
    partition = tags.get("dagster/partition")
    return f"{job} [{partition}]" if partition else job


def runs_overview(home: Path | None, recent: int = 8) -> dict:
    """{'in_progress': [...], 'recent': [...], 'error': str|None}; each run a small dict with
    its target, status, who launched it, start time and the last line of its log."""
    try:
        instance = _get_instance(home)
        if instance is None:
            return {"in_progress": [], "recent": [], "error": None}
        import dagster as dg

        statuses = [dg.DagsterRunStatus[s] for s in IN_PROGRESS]
        active = instance.get_run_records(filters=dg.RunsFilter(statuses=statuses), limit=20)
        done = instance.get_run_records(limit=recent)
    except Exception as exc:  # noqa: BLE001 - the Status page shows it instead of failing
        return {"in_progress": [], "recent": [], "error": f"{type(exc).__name__}: {exc}"}

    def describe(record, with_log: bool) -> dict:
        run = record.dagster_run
        info = {
            "run_id": run.run_id,
            "target": _target(run),
            "status": run.status.value,
            "launched_by": run.tags.get("dagster/sensor_name")
            or ("backfill" if run.tags.get("dagster/backfill") else "")
            or run.tags.get("dagster/schedule_name")
            or "by hand",
            "started": record.start_time,
            "ended": record.end_time,
            "last_message": None,
        }
        if with_log:
            try:
                logs = instance.get_records_for_run(run.run_id, limit=30, ascending=False)
                for rec in logs.records:
                    entry = rec.event_log_entry
                    if entry.dagster_event is None and entry.user_message:
                        info["last_message"] = entry.user_message
                        break
            except Exception:  # noqa: BLE001
                pass
        return info

    return {
        "in_progress": [describe(r, True) for r in active],
        "recent": [
            describe(r, False) for r in done if r.dagster_run.status.value not in IN_PROGRESS
        ],
        "error": None,
    }


def queue_figures(home: Path | None) -> tuple[dict[str, int | None], str | None]:
    """The run queue's figures, as `dam status --json` has them, and its sentence (the same
    functions `dam status` calls). ({}, None) when there is no Dagster home yet."""
    from ..runs import queue_state, queue_state_from_sqlite

    if home is None or not (home / "dagster.yaml").is_file():
        return {}, None
    try:
        state = queue_state_from_sqlite(home)
        if state is None:  # another run storage (PostgreSQL): ask Dagster
            instance = _get_instance(home)
            state = queue_state(instance) if instance is not None else None
    except Exception:  # noqa: BLE001 - the Status page shows the rest
        return {}, None
    if state is None:
        return {}, None
    figures = {
        "runs_in_progress": state.in_progress,
        "runs_queued": state.queued,
        "run_queue_limit": state.limit,
        "runs_without_process": len(state.dead),
    }
    return figures, state.describe()
