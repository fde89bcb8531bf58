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
import os
import queue
import re
import stat
import time
from array import array
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from .config import DEFAULT_EXCLUDES

try:  # folders listed in C (core/_fastio.c), where a compiler built it; else os.scandir
    from . import _fastio
except ImportError:  # pragma: no cover - a machine without a compiler
    _fastio = None


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


class WalkResult:
    """What a walk found, held as columns: a million files cost arrays of numbers and one
    string per path (chunks of them are moved into Arrow as the walk goes), not a million
    objects. `files` materialises `WalkedFile`s for small walks and tests."""

    CHUNK = 65_536  # paths kept as Python strings before they move into an Arrow chunk

    def __init__(self) -> None:
        self.issues: list[WalkIssue] = []
        # Folders that could not be listed: what the catalogue knew under them is not "gone".
        self.unlisted_dirs: list[str] = []
        self.excluded = 0
        self.dirs = 0
        self.bytes_seen = 0
        self.roots: list[str] = []  # in walk order; root_of[i] indexes it
        self.root_of = array("H")
        self.sizes = array("q")
        self.mtimes = array("q")
        self.ctimes = array("q")
        self.raw: dict[int, bytes] = {}  # index -> exact bytes, for paths that are not UTF-8
        self._chunks: list = []  # pyarrow string arrays of display paths
        self._paths: list[str] = []  # the current chunk (display paths)
        self._count = 0
        # every folder listed: (filesystem path, root index, mtime before the listing), and
        # every subfolder those listings held (entered or not: a partial walk skips known ones)
        self.listed: list[tuple[str, int, int]] = []
        self.subfolders: list[str] = []

    def __len__(self) -> int:
        return self._count

    def add(self, root: int, listing: _Listing) -> None:
        if listing.mtime_ns is not None:
            self.listed.append((listing.folder, root, listing.mtime_ns))
        self.subfolders.extend(listing.folders)
        n = len(listing.paths)
        if not n:
            return
        base = self._count
        for i in listing.undecodable:
            self.raw[base + i] = os.fsencode(listing.paths[i])
            listing.paths[i] = display_path(listing.paths[i])
        self._paths.extend(listing.paths)
        self.sizes.extend(listing.sizes)
        self.mtimes.extend(listing.mtimes)
        self.ctimes.extend(listing.ctimes)
        self.root_of.extend([root] * n)
        self.bytes_seen += sum(listing.sizes)
        self._count += n
        if len(self._paths) >= self.CHUNK:
            self._flush_paths()

    def _flush_paths(self) -> None:
        import pyarrow as pa

        if self._paths:
            self._chunks.append(pa.array(self._paths, pa.string()))
            self._paths = []

    def path_array(self):
        """Every display path, as one pyarrow (chunked) array in walk order."""
        import pyarrow as pa

        self._flush_paths()
        return pa.chunked_array(self._chunks, pa.string())

    def fs_path(self, index: int, display: str) -> str:
        """The filesystem path (surrogate escapes for bytes that are not UTF-8)."""
        raw = self.raw.get(index)
        return os.fsdecode(raw) if raw is not None else display

    @property
    def files(self) -> list[WalkedFile]:
        paths = self.path_array().to_pylist()
        out = []
        for i, shown in enumerate(paths):
            path = self.fs_path(i, shown)
            root = self.roots[self.root_of[i]]
            out.append(
                WalkedFile(
                    path, root, path[len(root) + 1 :], self.sizes[i], self.mtimes[i], self.ctimes[i]
                )
            )
        return out


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
        include = list(include)
        self.key = (tuple(excl), tuple(include))  # what the filter is, for comparing two
        self._exclude_name, self._exclude_rel = self._compile(excl)
        self._include_name, self._include_rel = self._compile(include)
        self.has_include = bool(include)
        # bound `match` methods (None when there is no such pattern), for the walk's loop
        self.exclude_name = self._exclude_name.match if self._exclude_name else None
        self.exclude_rel = self._exclude_rel.match if self._exclude_rel else None

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
        return not self.has_include or self._match(self._include_name, self._include_rel, name, rel)


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
    """What one folder holds: the unit of work of the walk, as columns."""

    paths: list[str] = field(default_factory=list)  # filesystem paths of regular files
    sizes: list[int] = field(default_factory=list)
    mtimes: list[int] = field(default_factory=list)
    ctimes: list[int] = field(default_factory=list)
    undecodable: list[int] = field(default_factory=list)  # indexes into paths
    folders: list[str] = field(default_factory=list)
    issues: list[WalkIssue] = field(default_factory=list)
    unlisted: str | None = None
    excluded: int = 0
    folder: str = ""  # the folder listed, and its mtime before the listing (None: unlisted)
    mtime_ns: int | None = None

    def issue(self, path: str, kind: str, exc: BaseException | None, message: str) -> None:
        self.issues.append(
            WalkIssue(display_path(path), kind, type(exc).__name__ if exc else None, message)
        )

    def file(self, path: str, st: os.stat_result, undecodable: bool) -> None:
        if undecodable:
            self.undecodable.append(len(self.paths))
        self.paths.append(path)
        self.sizes.append(st.st_size)
        self.mtimes.append(st.st_mtime_ns)
        self.ctimes.append(st.st_ctime_ns)


def walk_library(
    roots: Iterable[Path],
    path_filter: PathFilter | None = None,
    follow_symlinks: bool = False,
    on_progress: Callable[[WalkResult], None] | None = None,
    progress_every_s: float = 5.0,
    threads: int = 1,
    only: dict[str, list[str]] | None = None,
    known: Callable[[str], bool] | None = None,
) -> WalkResult:
    """Walk every root (after check_roots) and return files, folders and issues.

    With threads > 1, folders are listed by a bounded pool: on a network share each listing
    and each stat is a round trip, and several in flight hide the latency.

    A partial walk (`only`: root -> folders under it) lists just those folders, and of their
    subfolders enters only those `known` does not know (new ones, walked whole): what a
    change of folder mtimes asks to be looked at again (core/changes.py).
    """
    path_filter = path_filter or PathFilter()
    result = WalkResult()
    last_report = time.monotonic()
    for root in check_roots(roots):
        root_str = str(root)
        root_index = len(result.roots)
        result.roots.append(root_str)
        visited: set[tuple[int, int]] = set()  # folders entered, when following links
        starts = [root_str] if only is None else list(only.get(root_str, []))

        def list_folder(folder: str, root_str: str = root_str) -> _Listing:
            return _list_folder(folder, root_str, path_filter, follow_symlinks)

        def enter(folder: str, visited: set = visited) -> bool:
            return not follow_symlinks or _first_visit(folder, visited, result)

        def descend(listing: _Listing) -> list[str]:
            subs = listing.folders
            if known is not None:
                subs = [sub for sub in subs if not known(sub)]
            return [sub for sub in subs if enter(sub)]

        def take(listing: _Listing, root_index: int = root_index) -> None:
            nonlocal last_report
            result.dirs += 1
            result.add(root_index, listing)
            result.issues.extend(listing.issues)
            result.excluded += listing.excluded
            if listing.unlisted is not None:
                result.unlisted_dirs.append(listing.unlisted)
            if on_progress is not None and time.monotonic() - last_report >= progress_every_s:
                on_progress(result)
                last_report = time.monotonic()

        if threads <= 1:
            stack = [s for s in reversed(starts) if enter(s)]
            while stack:
                listing = list_folder(stack.pop())
                take(listing)
                stack.extend(descend(listing))
            continue
        done: queue.SimpleQueue = queue.SimpleQueue()
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="dam-walk") as pool:
            outstanding = 0

            def submit(folder: str, done: queue.SimpleQueue = done) -> None:
                nonlocal outstanding
                outstanding += 1
                pool.submit(list_folder, folder).add_done_callback(done.put)

            for start in starts:
                if enter(start):
                    submit(start)
            while outstanding:
                listing = done.get().result()
                outstanding -= 1
                take(listing)
                for sub in descend(listing):
                    submit(sub)
    return result


def progress_line(w: WalkResult) -> str:
    """What a walk says every few seconds on a terminal."""
    return f"walking: {len(w):,} files, {w.bytes_seen / 1e9:,.2f} GB, {w.dirs:,} folders so far"


def walk_aside_main() -> None:
    """A process that walks and pickles its WalkResult on standard output (`dam run` walks a
    first run this way while it starts Dagster). Its one argument is a JSON object: roots (the
    hex of their bytes), include and exclude (every pattern, defaults included), follow and
    threads. Imports no more than the walk needs."""
    import json
    import pickle
    import sys

    spec = json.loads(sys.argv[1])
    roots = [Path(os.fsdecode(bytes.fromhex(r))) for r in spec["roots"]]
    path_filter = PathFilter(spec["include"], spec["exclude"], default_excludes=False)

    def progress(w: WalkResult) -> None:
        sys.stderr.write(progress_line(w) + "\n")
        sys.stderr.flush()

    walk = walk_library(roots, path_filter, spec["follow"], progress, threads=spec["threads"])
    sys.stdout.buffer.write(pickle.dumps(walk, protocol=pickle.HIGHEST_PROTOCOL))
    sys.stdout.buffer.flush()


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


def _unlisted(out: _Listing, folder: str, exc: OSError) -> _Listing:
    if isinstance(exc, PermissionError):
        out.issue(folder, "permission_denied", exc, "folder cannot be listed")
    elif isinstance(exc, FileNotFoundError):
        out.issue(folder, "vanished", exc, "folder disappeared during the walk")
    else:
        out.issue(folder, "error", exc, f"folder cannot be listed: {exc.strerror or exc}")
    out.unlisted = display_path(folder)
    out.mtime_ns = None
    return out


def _entry_error(out: _Listing, path: str, exc: OSError) -> None:
    if isinstance(exc, FileNotFoundError):
        out.issue(path, "vanished", exc, "disappeared during the walk")
    elif isinstance(exc, PermissionError):
        out.issue(path, "permission_denied", exc, "cannot be examined")
    else:
        out.issue(path, "error", exc, str(exc.strerror or exc))


_FILE, _FOLDER, _LINK, _OTHER, _FAILED = b"f"[0], b"d"[0], b"l"[0], b"o"[0], b"e"[0]


def _scan_folder_py(folder: str) -> tuple:
    """core/_fastio.c's scan_folder with os.scandir, where the C was not built: the same
    answer, (errno, mtime_ns, names, kinds, sizes, mtimes, ctimes). Like the C, it takes an
    lstat of every regular file before any filter looks at its name."""
    try:
        # the folder's mtime first: a name added while it is listed moves it past this one
        mtime = os.stat(folder).st_mtime_ns
        with os.scandir(folder) as it:
            entries = list(it)
    except OSError as exc:
        return (exc.errno or errno.EIO, None, None, None, None, None, None)
    names, kinds, sizes, mtimes, ctimes = [], bytearray(), [], [], []
    for entry in entries:
        size = mt = ct = 0
        try:
            if entry.is_file(follow_symlinks=False):
                st = entry.stat(follow_symlinks=False)
                kind, size, mt, ct = _FILE, st.st_size, st.st_mtime_ns, st.st_ctime_ns
            elif entry.is_dir(follow_symlinks=False):
                kind = _FOLDER
            elif entry.is_symlink():
                kind = _LINK
            else:
                kind = _OTHER
                # os.scandir answers "not a file" for a name gone before its own lstat (on a
                # filesystem without entry types): ask, so it is `vanished` as in C. Only
                # that: a FIFO in a folder listable but not searchable is `_OTHER` in C too.
                try:
                    entry.stat(follow_symlinks=False)
                except FileNotFoundError as exc:
                    kind, size = _FAILED, exc.errno
                except OSError:
                    pass
        except OSError as exc:
            kind, size = _FAILED, exc.errno or errno.EIO
        names.append(entry.name)
        kinds.append(kind)
        sizes.append(size)
        mtimes.append(mt)
        ctimes.append(ct)
    return 0, mtime, names, bytes(kinds), sizes, mtimes, ctimes


def _list_folder(
    folder: str, root: str, path_filter: PathFilter, follow_symlinks: bool
) -> _Listing:
    """One folder of a walk: its files (those the filters keep), subfolders, links followed
    or not, and its issues. Read by core/_fastio.c (names, types and each file's lstat in C,
    relative to the open folder) where it was built, else by _scan_folder_py: one answer."""
    scan = _fastio.scan_folder if _fastio is not None else _scan_folder_py
    out = _Listing(folder=folder)
    code, mtime, names, kinds, sizes, mtimes, ctimes = scan(folder)
    if code:
        return _unlisted(out, folder, OSError(code, os.strerror(code), folder))
    out.mtime_ns = mtime
    skip = len(root) + 1
    prefix = folder if folder.endswith("/") else folder + "/"
    # The loop runs once per entry of the library: names bound to locals, one regular
    # expression per pattern kind.
    exclude_name = path_filter.exclude_name
    exclude_rel = path_filter.exclude_rel
    include = path_filter.included if path_filter.has_include else None
    folder_odd = has_undecodable(folder)
    paths, out_sizes, out_mtimes, out_ctimes = out.paths, out.sizes, out.mtimes, out.ctimes
    for name, kind, size, mtime_ns, ctime_ns in zip(names, kinds, sizes, mtimes, ctimes):
        path = prefix + name
        if (exclude_name is not None and exclude_name(name)) or (
            exclude_rel is not None and exclude_rel(path[skip:])
        ):
            out.excluded += 1
            continue
        odd = not name.isascii() and has_undecodable(name)
        if odd:
            out.issue(path, "undecodable_name", None, "name is not valid UTF-8")
        if kind == _FILE:
            if include is None or include(name, path[skip:]):
                if odd or folder_odd:
                    out.undecodable.append(len(paths))
                paths.append(path)
                out_sizes.append(size)
                out_mtimes.append(mtime_ns)
                out_ctimes.append(ctime_ns)
            else:
                out.excluded += 1
        elif kind == _FOLDER:
            out.folders.append(path)
        elif kind == _LINK:
            _symlink(out, path, root, path[skip:], name, path_filter, follow_symlinks, odd)
        elif kind == _FAILED:  # its lstat failed: `size` is the errno
            if include is not None and not include(name, path[skip:]):
                out.excluded += 1  # a file the filter leaves out is no issue
            else:
                _entry_error(out, path, OSError(size, os.strerror(size), path))
        else:  # a FIFO, socket or device
            out.issue(
                path,
                "special_file",
                None,
                "not a regular file (FIFO, socket or device): not opened",
            )
    return out


def _symlink(out: _Listing, path, root, rel, name, path_filter, follow_symlinks, odd) -> None:
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
            out.file(path, target, odd or has_undecodable(path))
    else:
        out.issue(path, "special_file", None, "link to a FIFO, socket or device: not opened")
