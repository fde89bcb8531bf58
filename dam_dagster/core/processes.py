"""Is a process still there? (Temporary PNGs of killed render workers, runs left STARTED by
a killed `dam run`.) Standard library only."""

from __future__ import annotations

import os

UNKNOWN = "?"  # the start time of a process we may not look at (/proc mounted hidepid)


def start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat, field 22), to
    tell a reused pid apart; None when there is no such process, UNKNOWN when /proc does not
    let us look."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except FileNotFoundError:
        return None
    except OSError:
        return UNKNOWN
    return stat[stat.rfind(b")") + 2 :].split()[19].decode()


def pid_alive(pid: int, started: str = "") -> bool:
    """Whether process `pid` exists (and, given its recorded start time, is still that one).
    When in doubt (another user's process, a hidden /proc): alive."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    if not started:
        return True
    now = start_time(pid)
    return now is not None and (now == UNKNOWN or now == started)
