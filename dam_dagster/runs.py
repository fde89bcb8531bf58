"""Runs whose process is gone, and the state of the run queue.

A run executed in a process that is then killed (SIGKILL, the OOM killer, a power cut) stays
STARTED in Dagster's run storage for ever: nothing else knows that its process is gone. Run
monitoring does not help here: `dam run` executes its runs in its own process, and the
default run launcher cannot check a run worker's health. Ten such runs fill the run queue
(`max_concurrent_runs`), after which every sensor and automation run waits, silently.

So every run of this code location is tagged with the process that executes it (host, pid
and the process's start time, which tells a reused pid apart), when it starts; and a sweep
marks failed every in-progress run of this host whose process is gone. The sweep runs at the
start of every `dam run` and, in the daemon, in the `dam_dead_runs` sensor once a minute, so
a stuck queue mends itself; `dam status` and that sensor's ticks say how the queue stands.

Dagster is imported inside the functions that need it: `dam status` reads the queue of the
default SQLite run storage directly (`queue_state_from_sqlite`), in milliseconds.
"""

from __future__ import annotations

import os
import socket
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .core.failures import storage_cause
from .core.processes import pid_alive, start_time

if TYPE_CHECKING:
    import dagster as dg

HOST_TAG, PID_TAG, START_TAG = "dam/host", "dam/pid", "dam/process_start"
CLAIM_TAG = "dam/claimed_by_run"
IN_PROGRESS_NAMES = ("STARTING", "STARTED", "CANCELING")  # what the run queue counts
# What the sweep marks failed when its process is gone: runs in progress, and runs created but
# never begun (a `dam run` killed between creating a run and storing its first event).
SWEPT_NAMES = ("NOT_STARTED", *IN_PROGRESS_NAMES)


def _in_progress():
    import dagster as dg

    return [dg.DagsterRunStatus[name] for name in IN_PROGRESS_NAMES]


def host_id() -> str:
    """This machine and pid namespace: two containers with one hostname are two hosts."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
    except OSError:
        boot = "?"
    try:
        pidns = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        pidns = 0
    return f"{socket.gethostname()}:{boot}:{pidns}"


def process_tags(run_id: str | None = None) -> dict[str, str]:
    """Tags naming this process: what a run carries so that a sweep can tell it is gone.
    `run_id` (set when the run claims them) ties them to that run: a run that inherited
    another's tags (a retry copies its parent's) is not judged by them."""
    pid = os.getpid()
    tags = {HOST_TAG: host_id(), PID_TAG: str(pid), START_TAG: start_time(pid) or ""}
    if run_id is not None:
        tags[CLAIM_TAG] = run_id
    return tags


def claim_run(instance: dg.DagsterInstance, run_id: str) -> None:
    """Tag a run with the process executing it (called as its resources are set up)."""
    run = instance.get_run_by_id(run_id)
    tags = process_tags(run_id)
    if run is not None and (
        run.tags.get(PID_TAG) != tags[PID_TAG] or run.tags.get(CLAIM_TAG) != run_id
    ):
        instance.add_run_tags(run_id, tags)


def _is_dead(run_id: str, tags, host: str) -> bool:
    if tags.get(HOST_TAG) != host or not tags.get(PID_TAG, "").isdigit():
        return False  # another machine's, or not ours: not ours to judge
    if tags.get(CLAIM_TAG, run_id) != run_id:
        return False  # tags inherited from another run: its process says nothing of this one
    return not pid_alive(int(tags[PID_TAG]), tags.get(START_TAG, ""))


def dead_runs(instance: dg.DagsterInstance) -> list[dg.DagsterRun]:
    """Runs of this host, in progress or not yet begun, whose process is gone."""
    import dagster as dg

    host = host_id()
    swept = [dg.DagsterRunStatus[name] for name in SWEPT_NAMES]
    records = instance.get_run_records(filters=dg.RunsFilter(statuses=swept, tags={HOST_TAG: host}))
    return [
        r.dagster_run for r in records if _is_dead(r.dagster_run.run_id, r.dagster_run.tags, host)
    ]


def mark_dead_runs_failed(instance: dg.DagsterInstance) -> list[dg.DagsterRun]:
    """Mark failed every run of this host, in progress or not yet begun, whose process is gone;
    returns them."""
    marked = []
    for run in dead_runs(instance):
        instance.report_run_failed(
            run,
            message=f"The process that executed this run (pid {run.tags[PID_TAG]} on "
            f"{run.tags[HOST_TAG]}) is gone: it was killed or crashed before the run "
            "finished. Marked failed so that it no longer holds a place in the run queue.",
        )
        marked.append(run)
    return marked


@dataclass
class QueueState:
    in_progress: int
    queued: int
    limit: int | None  # max_concurrent_runs, when the instance queues runs
    dead: list[str] = field(default_factory=list)  # run ids whose process is gone
    # runs created, never begun, by a process now gone (not in the queue; swept all the same)
    dead_unstarted: list[str] = field(default_factory=list)

    @property
    def full(self) -> bool:
        return self.limit is not None and self.in_progress >= self.limit

    def describe(self) -> str:
        limit = f" (at most {self.limit} at once)" if self.limit is not None else ""
        text = f"{self.in_progress} runs in progress{limit}, {self.queued} queued"
        if self.dead:
            text += f"; {len(self.dead)} of them have no process any more"
        if self.full:
            text += ": the run queue is full, queued runs wait until one finishes"
        return text


def queue_state(instance: dg.DagsterInstance) -> QueueState:
    import dagster as dg

    in_progress = instance.get_runs_count(dg.RunsFilter(statuses=_in_progress()))
    queued = instance.get_runs_count(dg.RunsFilter(statuses=[dg.DagsterRunStatus.QUEUED]))
    coordinator = instance.run_coordinator
    limit = None
    if hasattr(coordinator, "get_run_queue_config"):  # a queued run coordinator (dagster.yaml)
        limit = coordinator.get_run_queue_config().max_concurrent_runs
        limit = None if limit is None or limit < 0 else limit
    dead = [r.run_id for r in dead_runs(instance) if r.status.name in IN_PROGRESS_NAMES]
    return QueueState(in_progress, queued, limit, dead)  # "of them": runs in progress


class RunStorageUnreadable(RuntimeError):
    """The SQLite run storage exists but cannot be read now (a full disk, say)."""


def queue_state_from_sqlite(home: Path) -> QueueState | None:
    """The queue of an instance with Dagster's default SQLite run storage, read directly (no
    Dagster import, nothing written). None when there is no such storage (a Dagster home
    never prepared, or one configured for PostgreSQL: ask `queue_state` then). Raises
    RunStorageUnreadable when it is there but cannot be read: a run that failed on a full
    disk can leave its WAL index too short for any reader until space is freed."""
    db = home / "history" / "runs.db"
    if not db.is_file() or configured_storage(home):
        return None
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error as exc:
        raise _unreadable(db, exc) from exc
    marks = ",".join("?" * len(SWEPT_NAMES))
    try:
        with con:
            counts = dict(con.execute("SELECT status, count(*) FROM runs GROUP BY status"))
            rows = con.execute(
                f"""SELECT t.run_id, r.status, t.key, t.value
                    FROM run_tags t JOIN runs r USING (run_id)
                    WHERE r.status IN ({marks}) AND t.key IN (?, ?, ?, ?)""",
                [*SWEPT_NAMES, HOST_TAG, PID_TAG, START_TAG, CLAIM_TAG],
            ).fetchall()
    except sqlite3.Error as exc:
        raise _unreadable(db, exc) from exc
    finally:
        con.close()
    tags: dict[str, dict[str, str]] = {}
    statuses: dict[str, str] = {}
    for run_id, status, key, value in rows:
        tags.setdefault(run_id, {})[key] = value
        statuses[run_id] = status
    host = host_id()
    dead = sorted(r for r, t in tags.items() if _is_dead(r, t, host))
    return QueueState(
        in_progress=sum(counts.get(s, 0) for s in IN_PROGRESS_NAMES),
        queued=counts.get("QUEUED", 0),
        limit=_configured_limit(home),
        dead=[r for r in dead if statuses[r] in IN_PROGRESS_NAMES],
        dead_unstarted=[r for r in dead if statuses[r] not in IN_PROGRESS_NAMES],
    )


def _unreadable(db: Path, exc: sqlite3.Error) -> RunStorageUnreadable:
    cause = storage_cause(f"{type(exc).__name__}: {exc}", db.parent)
    return RunStorageUnreadable(f"{cause}: the run history {db} cannot be read")


def _dagster_yaml(home: Path) -> dict:
    import yaml

    try:
        return yaml.safe_load((home / "dagster.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}


def configured_storage(home: Path) -> bool:
    """Whether dagster.yaml names a run storage of its own (PostgreSQL...), not SQLite."""
    config = _dagster_yaml(home)
    return any(k in config for k in ("storage", "run_storage"))


def _configured_limit(home: Path) -> int | None:
    config = _dagster_yaml(home)
    limit = ((config.get("concurrency") or {}).get("runs") or {}).get("max_concurrent_runs")
    if limit is None:
        limit = ((config.get("run_coordinator") or {}).get("config") or {}).get(
            "max_concurrent_runs", 10 if "run_coordinator" not in config else None
        )
    return None if limit is None or int(limit) < 0 else int(limit)
