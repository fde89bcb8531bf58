"""Walking library roots: one record per regular file, and a record of everything else.

Nothing here opens a library file: the walk only lists folders and stats entries. Walk
problems (permission denied, a folder or file vanishing mid-walk, broken or looping links,
names that are not valid UTF-8, FIFOs and other special files) become `WalkIssue`s, never
exceptions. The one fatal case is a root that is missing or unreadable: cataloguing an
unmounted share as "every file gone" would be wrong, so the caller is told instead.
"""

from __future__ import annotations

import errno
import hashlib
import fnmatch
import os
import stat
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .config import DEFAULT_EXCLUDES


class RootUnavailable(RuntimeError):
    """A library root that is missing, not a folder, or cannot be listed."""


@dataclass(frozen=True)
class WalkedFile:
    path: str          # absolute filesystem path (surrogate escapes for undecodable bytes)
    root: str
    rel_path: str
    size_bytes: int
    mtime_ns: int


@dataclass(frozen=True)
class WalkIssue:
    path: str
    kind: str          # see ISSUE_KINDS
    error_class: str | None
    message: str


ISSUE_KINDS = {
    "permission_denied": "a folder or file could not be read",
    "vanished": "a folder or file disappeared during the walk",
    "broken_symlink": "a symbolic link whose target does not exist (not followed)",
    "symlink_loop": "a symbolic link that loops back on itself or an ancestor",
    "symlink_skipped": "a symbolic link, not followed (DAM_FOLLOW_SYMLINKS=0)",
    "undecodable_name": "a name that is not valid UTF-8 (catalogued; shown with \\xNN escapes)",
    "special_file": "a FIFO, socket or device: never opened",
    "error": "any other error listing a folder",
}


@dataclass
class WalkResult:
    files: list[WalkedFile] = field(default_factory=list)
    issues: list[WalkIssue] = field(default_factory=list)
    # Folders that could not be listed: what the catalogue knew under them is not "gone".
    unlisted_dirs: list[str] = field(default_factory=list)
    excluded: int = 0
    dirs: int = 0

    @property
    def bytes_seen(self) -> int:
        return sum(f.size_bytes for f in self.files)


class PathFilter:
    """Include/exclude glob patterns, matched case-insensitively.

    A pattern without '/' matches any single file or folder name (an excluded folder is not
    entered); one with '/' matches the path relative to its root. Include patterns (when any)
    apply to files only.
    """

    def __init__(self, include: Iterable[str] = (), exclude: Iterable[str] = (),
                 default_excludes: bool = True):
        excl = list(DEFAULT_EXCLUDES if default_excludes else ()) + list(exclude)
        self.include = [p.lower() for p in include]
        self.exclude = [p.lower() for p in excl]

    @staticmethod
    def _match(patterns: list[str], name: str, rel: str) -> bool:
        name, rel = name.lower(), rel.lower()
        for pattern in patterns:
            target = rel if "/" in pattern else name
            if fnmatch.fnmatchcase(target, pattern):
                return True
        return False

    def excluded(self, name: str, rel: str) -> bool:
        return self._match(self.exclude, name, rel)

    def included(self, name: str, rel: str) -> bool:
        return not self.include or self._match(self.include, name, rel)


def has_undecodable(path: str) -> bool:
    """True when `path` carries surrogate escapes, i.e. its bytes are not valid UTF-8."""
    return any("\udc80" <= ch <= "\udcff" for ch in path)


def display_path(path: str) -> str:
    """A UTF-8 string for any filesystem path: undecodable bytes become \\xNN."""
    if not has_undecodable(path):
        return path
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def check_roots(roots: Iterable[Path]) -> list[Path]:
    """Every root must exist, be a folder and be listable; raise RootUnavailable if not."""
    checked = []
    problems = []
    for root in roots:
        try:
            st = os.stat(root)
            if not stat.S_ISDIR(st.st_mode):
                problems.append(f"{root} is not a folder")
                continue
            with os.scandir(root) as it:
                next(it, None)
            checked.append(Path(root))
        except FileNotFoundError:
            problems.append(f"{root} does not exist (is the share mounted?)")
        except PermissionError:
            problems.append(f"{root} cannot be read (permission denied)")
        except OSError as exc:
            problems.append(f"{root} cannot be listed: {exc.strerror or exc}")
    if problems:
        raise RootUnavailable("library root unavailable: " + "; ".join(problems))
    return checked


def walk_library(
    roots: Iterable[Path],
    path_filter: PathFilter | None = None,
    follow_symlinks: bool = False,
    on_progress: Callable[[WalkResult], None] | None = None,
    progress_every_s: float = 5.0,
) -> WalkResult:
    """Walk every root (after check_roots) and return files and issues."""
    path_filter = path_filter or PathFilter()
    result = WalkResult()
    last_report = time.monotonic()
    for root in check_roots(roots):
        root_str = str(root)
        visited: set[tuple[int, int]] = set()  # folders entered, when following links
        stack = [root_str]
        while stack:
            folder = stack.pop()
            if follow_symlinks and not _first_visit(folder, visited, result):
                continue
            result.dirs += 1
            _list_folder(folder, root_str, path_filter, follow_symlinks, stack, result)
            if on_progress is not None and time.monotonic() - last_report >= progress_every_s:
                on_progress(result)
                last_report = time.monotonic()
    return result


def _first_visit(folder: str, visited: set[tuple[int, int]], result: WalkResult) -> bool:
    try:
        st = os.stat(folder)
    except OSError:
        return True  # let the listing report the problem
    key = (st.st_dev, st.st_ino)
    if key in visited:
        _issue(result, folder, "symlink_loop", None,
               "leads to a folder already walked (a link loop or a second link to it)")
        return False
    visited.add(key)
    return True


def _issue(result: WalkResult, path: str, kind: str, exc: BaseException | None, message: str):
    result.issues.append(
        WalkIssue(display_path(path), kind, type(exc).__name__ if exc else None, message)
    )


def _list_folder(folder, root, path_filter, follow_symlinks, stack, result) -> None:
    try:
        entries = list(os.scandir(folder))
    except PermissionError as exc:
        _issue(result, folder, "permission_denied", exc, "folder cannot be listed")
        result.unlisted_dirs.append(display_path(folder))
        return
    except FileNotFoundError as exc:
        _issue(result, folder, "vanished", exc, "folder disappeared during the walk")
        result.unlisted_dirs.append(display_path(folder))
        return
    except OSError as exc:
        _issue(result, folder, "error", exc, f"folder cannot be listed: {exc.strerror or exc}")
        result.unlisted_dirs.append(display_path(folder))
        return

    for entry in sorted(entries, key=lambda e: e.name):
        path = entry.path
        rel = os.path.relpath(path, root)
        if path_filter.excluded(entry.name, rel):
            result.excluded += 1
            continue
        if has_undecodable(entry.name):
            _issue(result, path, "undecodable_name", None, "name is not valid UTF-8")
        try:
            if entry.is_symlink():
                _symlink(entry, path, root, rel, path_filter, follow_symlinks, stack, result)
            elif entry.is_dir(follow_symlinks=False):
                stack.append(path)
            elif entry.is_file(follow_symlinks=False):
                if path_filter.included(entry.name, rel):
                    st = entry.stat(follow_symlinks=False)
                    result.files.append(
                        WalkedFile(path, root, rel, st.st_size, st.st_mtime_ns)
                    )
                else:
                    result.excluded += 1
            else:
                _issue(result, path, "special_file", None,
                       "not a regular file (FIFO, socket or device): not opened")
        except FileNotFoundError as exc:
            _issue(result, path, "vanished", exc, "disappeared during the walk")
        except PermissionError as exc:
            _issue(result, path, "permission_denied", exc, "cannot be examined")
        except OSError as exc:
            _issue(result, path, "error", exc, str(exc.strerror or exc))


def _symlink(entry, path, root, rel, path_filter, follow_symlinks, stack, result):
    try:
        target = os.stat(path)  # follows the link
    except FileNotFoundError as exc:
        _issue(result, path, "broken_symlink", exc, "link target does not exist")
        return
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            _issue(result, path, "symlink_loop", exc, "link loops")
        else:
            _issue(result, path, "error", exc, f"link cannot be followed: {exc.strerror}")
        return
    if not follow_symlinks:
        _issue(result, path, "symlink_skipped", None, "symbolic link not followed")
        return
    if stat.S_ISDIR(target.st_mode):
        stack.append(path)  # _first_visit stops loops when it is popped
    elif stat.S_ISREG(target.st_mode):
        if path_filter.included(entry.name, rel):
            result.files.append(WalkedFile(path, root, rel, target.st_size, target.st_mtime_ns))
    else:
        _issue(result, path, "special_file", None, "link to a FIFO, socket or device: not opened")


def library_fingerprint(walk: WalkResult) -> str:
    """A digest of every (path, size, mtime): it changes when any file is added, removed or
    modified. Cheap to keep (a sensor cursor), costs one walk to compute."""
    digest = hashlib.md5(usedforsecurity=False)
    for f in sorted(walk.files, key=lambda f: f.path):
        digest.update(f"{display_path(f.path)}\0{f.size_bytes}\0{f.mtime_ns}\n".encode())
    return digest.hexdigest()
