"""Change detection that never outlasts a sensor tick: folder mtimes, looked at in turns.

A complete walk stats every file. On a NAS each stat is a network round trip: a million
files at 1 ms is a quarter of an hour of walking, and the walk never stops loading the
share. A folder's mtime, though, moves whenever a name in it is added, removed or renamed.
So the library sensor looks only at folders:

- it stats the folders the last walk listed (the catalogue's `folders` table, with the mtime
  each had then), in path order, starting where its last look stopped and stopping when its
  time budget is spent (DAM_SENSOR_BUDGET_S, well under Dagster's sensor time limit), with
  several threads on a share;
- a folder whose mtime moved, or that is gone (then its parent is listed), is handed to an
  inventory that lists just those folders (`update_inventory(only=...)`): new and removed
  files there are catalogued, new subfolders walked whole;
- a file rewritten in place moves its own mtime, not its folder's: the complete walk on a
  schedule (DAM_COMPLETE_WALK_CRON, daily by default) sees those, and verifies the rest.

Nothing here reads a file or lists a folder; the catalogue is read in one short transaction.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from .store import Catalogue


@dataclass
class Look:
    """What one look at folder mtimes found."""

    folders: int  # folders the catalogue knows
    checked: int  # of them, looked at this time
    position: int  # where the next look starts
    changed: list[str] = field(default_factory=list)  # folders to list again
    mtimes: list[int | None] = field(default_factory=list)  # theirs now (None: gone)
    seconds: float = 0.0


def known_folder_states(catalogue: Catalogue) -> list[tuple[str, str, int]]:
    """(filesystem path, root, mtime) of every folder the last walks listed, in path order."""
    with catalogue.connect(write=False) as con:
        rows = con.execute(
            "SELECT path, raw_path, root, mtime_ns FROM folders ORDER BY path"
        ).fetchall()
    return [(os.fsdecode(raw) if raw is not None else path, root, m) for path, raw, root, m in rows]


def _state(path: str) -> int | None:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None  # gone (or unreadable): its parent is what to list


def _nearest_existing(path: str, known: set[str]) -> str:
    """The nearest folder above a gone one that still exists and that the walks listed (the
    whole vanished tree is then under a folder an inventory lists: its files are gone)."""
    parent = os.path.dirname(path)
    while parent != path:
        if parent in known and _state(parent) is not None:
            return parent
        path, parent = parent, os.path.dirname(parent)
    return path


def look_for_changes(
    folders: list[tuple[str, str, int]],
    position: int,
    budget_s: float,
    threads: int = 1,
    chunk: int = 256,
) -> Look:
    """Stat folders from `position` on (wrapping round) until `budget_s` is spent or every
    folder was looked at once; return the ones to list again."""
    started = time.monotonic()
    total = len(folders)
    look = Look(folders=total, checked=0, position=position % total if total else 0)
    if not total:
        return look
    changed: dict[str, int | None] = {}
    known = {path for path, _, _ in folders}
    with ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="dam-look") as pool:
        # at least one chunk a look, so that even a tiny budget goes round in time
        while look.checked < total and (look.checked == 0 or time.monotonic() - started < budget_s):
            n = min(chunk * max(1, threads), total - look.checked)
            batch = [folders[(look.position + i) % total] for i in range(n)]
            for (path, _root, mtime), now in zip(batch, pool.map(_state, [b[0] for b in batch])):
                if now == mtime:
                    continue
                target = path
                if now is None:  # gone: the nearest folder above it still there lost a name
                    target = _nearest_existing(path, known)
                changed[target] = now if now is not None else _state(target)
            look.checked += n
            look.position = (look.position + n) % total
    look.changed = sorted(changed)
    look.mtimes = [changed[f] for f in look.changed]
    look.seconds = time.monotonic() - started
    return look


def folders_by_root(folders: list[str], roots) -> dict[str, list[str]]:
    """The folders to list, under the root each lies in (`update_inventory(only=...)`);
    folders outside every root (a root removed from the settings since) are dropped."""
    out: dict[str, list[str]] = {}
    placed: set[str] = set()
    for root in sorted((str(r) for r in roots), key=len, reverse=True):  # innermost first
        prefix = root.rstrip("/") + "/"
        for folder in folders:
            if folder not in placed and (folder == root or folder.startswith(prefix)):
                out.setdefault(root, []).append(folder)
                placed.add(folder)
    return out


def encode_folder(path: str) -> str:
    """A folder for run config (JSON strings cannot carry the bytes of a name that is not
    UTF-8: those travel as 'hex:' + their bytes)."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return "hex:" + os.fsencode(path).hex()


def decode_folder(text: str) -> str:
    return os.fsdecode(bytes.fromhex(text[4:])) if text.startswith("hex:") else text
