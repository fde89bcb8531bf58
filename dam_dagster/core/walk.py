"""Walking library roots: one record per regular file, and a record of everything else.

Nothing here opens a library file: the walk only lists folders and stats entries. Walk
problems (permission denied, a folder or file vanishing mid-walk, broken or looping links,
names that are not valid UTF-8, FIFOs and other special files) become `WalkIssue`s, never
exceptions. The one fatal case is a root that is missing or unreadable: cataloguing an
unmounted share as "every file gone" would be wrong, so the caller is told instead.
"""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import os
import queue
import re
import stat
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from .config import DEFAULT_EXCLUDES


class RootUnavailable(RuntimeError):
    """A library root that is missing, not a folder, or cannot be listed."""


@dataclass(frozen=True)
class WalkedFile:
    path: str  # absolute filesystem path (surrogate escapes for undecodable bytes)
    root: str
    rel_path: str
    size_bytes: int
    mtime_ns: int
    ctime_ns: int = 0  # inode change time: moves when content is rewritten, even with an old mtime


@dataclass(frozen=True)
class WalkIssue:
    path: str
    kind: str  # see ISSUE_KINDS
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
    apply to files only. Patterns are compiled into one regular expression per kind: a walk
    asks this question for every entry.
    """

    def __init__(
        self,
        include: Iterable[str] = (),
        exclude: Iterable[str] = (),
        default_excludes: bool = True,
    ):
        excl = list(DEFAULT_EXCLUDES if default_excludes else ()) + list(exclude)
        self._exclude_name, self._exclude_rel = self._compile(excl)
        self._include_name, self._include_rel = self._compile(list(include))
        self._has_include = bool(list(include))

    @staticmethod
    def _compile(patterns: list[str]):
        def rx(pats):
            if not pats:
                return None
            return re.compile(
                "|".join(f"(?:{fnmatch.translate(p)})" for p in pats), re.IGNORECASE | re.DOTALL
            )

        return rx([p for p in patterns if "/" not in p]), rx([p for p in patterns if "/" in p])

    @staticmethod
    def _match(by_name, by_rel, name: str, rel: str) -> bool:
        return bool((by_name and by_name.match(name)) or (by_rel and by_rel.match(rel)))

    def excluded(self, name: str, rel: str) -> bool:
        return self._match(self._exclude_name, self._exclude_rel, name, rel)

    def included(self, name: str, rel: str) -> bool:
        return not self._has_include or self._match(
            self._include_name, self._include_rel, name, rel
        )


def has_undecodable(path: str) -> bool:
    """True when `path` carries surrogate escapes, i.e. its bytes are not valid UTF-8."""
    if path.isascii():
        return False
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


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


# Where a stat is a network round trip, several folders are listed at once (DAM_IO_THREADS);
# on a local disk one thread is faster (measured: docs/BENCHMARKS.md).
NETWORK_FILESYSTEMS = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "smbfs",
        "9p",
        "afs",
        "ceph",
        "glusterfs",
        "lustre",
        "fuse.sshfs",
        "fuse.rclone",
        "fuse.s3fs",
        "fuse.glusterfs",
        "fuse.smbnetfs",
        "davfs",
        "fuse.davfs2",
        "ncpfs",
        "gpfs",
        "beegfs",
        "fuse.juicefs",
        "fuse.slowshare",  # the test share of dam_dagster_tests/slowshare.py: a NAS model
    }
)


def filesystem_type(path: str | os.PathLike) -> str | None:
    """The type of the filesystem holding `path` (from /proc/self/mountinfo), if known."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as fh:
            lines = fh.readlines()
    except OSError:
        return None
    real = os.path.realpath(path)
    best, best_type = "", None
    for line in lines:
        left, _, right = line.partition(" - ")
        fields = left.split()
        if len(fields) < 5 or not right:
            continue
        mount = fields[4].replace("\\040", " ").replace("\\011", "\t")
        if (real == mount or real.startswith(mount.rstrip("/") + "/")) and len(mount) >= len(best):
            best, best_type = mount, right.split()[0]
    return best_type


def on_network_filesystem(roots: Iterable[str | os.PathLike]) -> bool:
    """Whether any of the roots lies on a network filesystem (each read a round trip)."""
    return any(filesystem_type(r) in NETWORK_FILESYSTEMS for r in roots)


def walk_threads(roots: Iterable[Path], io_threads: int) -> int:
    """io_threads when any root is on a network filesystem, else 1."""
    return io_threads if on_network_filesystem(roots) else 1


@dataclass
class _Listing:
    """What one folder holds: the unit of work of the walk."""

    files: list[WalkedFile] = field(default_factory=list)
    folders: list[str] = field(default_factory=list)
    issues: list[WalkIssue] = field(default_factory=list)
    unlisted: str | None = None
    excluded: int = 0

    def issue(self, path: str, kind: str, exc: BaseException | None, message: str) -> None:
        self.issues.append(
            WalkIssue(display_path(path), kind, type(exc).__name__ if exc else None, message)
        )


def walk_library(
    roots: Iterable[Path],
    path_filter: PathFilter | None = None,
    follow_symlinks: bool = False,
    on_progress: Callable[[WalkResult], None] | None = None,
    progress_every_s: float = 5.0,
    threads: int = 1,
) -> WalkResult:
    """Walk every root (after check_roots) and return files and issues.

    With threads > 1, folders are listed by a bounded pool: on a network share each listing
    and each stat is a round trip, and several in flight hide the latency.
    """
    path_filter = path_filter or PathFilter()
    result = WalkResult()
    last_report = time.monotonic()
    for root in check_roots(roots):
        root_str = str(root)
        visited: set[tuple[int, int]] = set()  # folders entered, when following links

        def list_folder(folder: str, root_str: str = root_str) -> _Listing:
            return _list_folder(folder, root_str, path_filter, follow_symlinks)

        def enter(folder: str, visited: set = visited) -> bool:
            return not follow_symlinks or _first_visit(folder, visited, result)

        def take(listing: _Listing) -> None:
            nonlocal last_report
            result.dirs += 1
            result.files.extend(listing.files)
            result.issues.extend(listing.issues)
            result.excluded += listing.excluded
            if listing.unlisted is not None:
                result.unlisted_dirs.append(listing.unlisted)
            if on_progress is not None and time.monotonic() - last_report >= progress_every_s:
                on_progress(result)
                last_report = time.monotonic()

        if threads <= 1:
            stack = [root_str] if enter(root_str) else []
            while stack:
                listing = list_folder(stack.pop())
                take(listing)
                stack.extend(sub for sub in listing.folders if enter(sub))
            continue
        done: queue.SimpleQueue = queue.SimpleQueue()
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="dam-walk") as pool:
            outstanding = 0

            def submit(folder: str, done: queue.SimpleQueue = done) -> None:
                nonlocal outstanding
                if enter(folder):
                    outstanding += 1
                    pool.submit(list_folder, folder).add_done_callback(done.put)

            submit(root_str)
            while outstanding:
                listing = done.get().result()
                outstanding -= 1
                take(listing)
                for sub in listing.folders:
                    submit(sub)
    return result


def _first_visit(folder: str, visited: set[tuple[int, int]], result: WalkResult) -> bool:
    try:
        st = os.stat(folder)
    except OSError:
        return True  # let the listing report the problem
    key = (st.st_dev, st.st_ino)
    if key in visited:
        result.issues.append(
            WalkIssue(
                display_path(folder),
                "symlink_loop",
                None,
                "leads to a folder already walked (a link loop or a second link to it)",
            )
        )
        return False
    visited.add(key)
    return True


def _list_folder(
    folder: str, root: str, path_filter: PathFilter, follow_symlinks: bool
) -> _Listing:
    out = _Listing()
    try:
        with os.scandir(folder) as it:
            entries = list(it)
    except PermissionError as exc:
        out.issue(folder, "permission_denied", exc, "folder cannot be listed")
        out.unlisted = display_path(folder)
        return out
    except FileNotFoundError as exc:
        out.issue(folder, "vanished", exc, "folder disappeared during the walk")
        out.unlisted = display_path(folder)
        return out
    except OSError as exc:
        out.issue(folder, "error", exc, f"folder cannot be listed: {exc.strerror or exc}")
        out.unlisted = display_path(folder)
        return out

    skip = len(root) + 1
    for entry in entries:
        path = entry.path
        rel = path[skip:]
        name = entry.name
        if path_filter.excluded(name, rel):
            out.excluded += 1
            continue
        if has_undecodable(name):
            out.issue(path, "undecodable_name", None, "name is not valid UTF-8")
        try:
            if entry.is_symlink():
                _symlink(out, path, root, rel, name, path_filter, follow_symlinks)
            elif entry.is_dir(follow_symlinks=False):
                out.folders.append(path)
            elif entry.is_file(follow_symlinks=False):
                if path_filter.included(name, rel):
                    st = entry.stat(follow_symlinks=False)
                    out.files.append(
                        WalkedFile(path, root, rel, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
                    )
                else:
                    out.excluded += 1
            else:
                out.issue(
                    path,
                    "special_file",
                    None,
                    "not a regular file (FIFO, socket or device): not opened",
                )
        except FileNotFoundError as exc:
            out.issue(path, "vanished", exc, "disappeared during the walk")
        except PermissionError as exc:
            out.issue(path, "permission_denied", exc, "cannot be examined")
        except OSError as exc:
            out.issue(path, "error", exc, str(exc.strerror or exc))
    return out


def _symlink(out: _Listing, path, root, rel, name, path_filter, follow_symlinks) -> None:
    try:
        target = os.stat(path)  # follows the link
    except FileNotFoundError as exc:
        out.issue(path, "broken_symlink", exc, "link target does not exist")
        return
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            out.issue(path, "symlink_loop", exc, "link loops")
        else:
            out.issue(path, "error", exc, f"link cannot be followed: {exc.strerror}")
        return
    if not follow_symlinks:
        out.issue(path, "symlink_skipped", None, "symbolic link not followed")
        return
    if stat.S_ISDIR(target.st_mode):
        out.folders.append(path)  # the walk's visited set stops loops
    elif stat.S_ISREG(target.st_mode):
        if path_filter.included(name, rel):
            out.files.append(
                WalkedFile(path, root, rel, target.st_size, target.st_mtime_ns, target.st_ctime_ns)
            )
    else:
        out.issue(path, "special_file", None, "link to a FIFO, socket or device: not opened")


def library_fingerprint(walk: WalkResult) -> str:
    """A digest of every (exact path bytes, size, mtime, ctime): it changes when any file is
    added, removed or modified. Cheap to keep (a sensor cursor), costs one walk to compute."""
    digest = hashlib.md5(usedforsecurity=False)
    for f in sorted(walk.files, key=lambda f: f.path):
        digest.update(os.fsencode(f.path))
        digest.update(f"\0{f.size_bytes}\0{f.mtime_ns}\0{f.ctime_ns}\n".encode())
    return digest.hexdigest()
