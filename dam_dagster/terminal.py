"""What `dam run` prints: one line per thing a person wants to know, the cause first.

Dagster's console logger is made for the run log: every event, and a stack trace per failed
step (30 lines for a designed `Failure` that already says what happened). `dam run` uses the
`dam_terminal` logger instead: the progress lines the assets write and their warnings, none
of Dagster's own events; failures are summed up at the end by `failure_cause`, one line each.
Runs started from the UI or the daemon keep Dagster's own logger and run log.
"""

from __future__ import annotations

import logging
import sys

import dagster as dg

from .core.config import data_dir
from .core.failures import storage_cause

_SKIPPED = "Dependencies for step "  # Dagster's note on each step after a failed one
_WRAPPERS = ("DagsterExecutionStepExecutionError", "DagsterUserCodeExecutionError")


class _TerminalHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = _line(record)
            if line:
                sys.stderr.write(line + "\n")
                sys.stderr.flush()
        except Exception:  # noqa: BLE001 - a log line must never break a run
            self.handleError(record)


def _line(record: logging.LogRecord) -> str | None:
    meta = getattr(record, "dagster_meta", None) or {}
    event = meta.get("dagster_event")
    where = meta.get("step_key") or meta.get("job_name") or "dam"
    partition = (meta.get("job_tags") or {}).get("dagster/partition")
    if partition:
        where += f" [{partition}]"
    if event is None:
        message = meta.get("orig_message", record.getMessage())
        if message.startswith(_SKIPPED):
            return None  # the step that failed first says why; its followers add nothing
        if record.levelno >= logging.WARNING:
            return f"{where}: warning: {message}"
        return f"{where}: {message}" if record.levelno >= logging.INFO else None
    return None  # Dagster's events; failures are summed up at the end (failure_cause)


@dg.logger(description="One line per progress message and step (what `dam run` prints).")
def dam_terminal(init_context: dg.InitLoggerContext) -> logging.Logger:
    logger = logging.Logger(f"dam_terminal.{init_context.run_id}", level=logging.INFO)
    logger.addHandler(_TerminalHandler())
    return logger


def failure_cause(data) -> str:
    """The cause of a step failure in one line: a designed Failure's own description, or the
    innermost error's class and message (not "Error occurred while executing op ...")."""
    if data.user_failure_data is not None and data.user_failure_data.description:
        return data.user_failure_data.description.strip()
    error = data.error
    if error is None:
        return "see the run log in the Dagster UI"
    while error.cause is not None and (error.cls_name in _WRAPPERS or not error.cls_name):
        error = error.cause
    message = error.message.strip().splitlines()[0] if error.message.strip() else ""
    name = error.cls_name or "Error"
    head, _, rest = message.partition(": ")
    if head.rsplit(".", 1)[-1] == name:  # "_duckdb.IOException: ..." -> "IOException: ..."
        message = f"{name}: {rest}"
    elif not message.startswith(name):
        message = f"{name}: {message}"
    return storage_cause(message, data_dir())
