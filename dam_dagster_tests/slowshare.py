"""A test share that behaves like a NAS: a read-only FUSE passthrough with latency and a cap.

It mirrors a source folder at a mount point and makes every request that reaches it cost
what a request to a file server costs: a configurable latency per metadata operation (lookup
and getattr, opendir, readdir, open, readlink, statfs), optionally a latency per read
request, and one shared link whose bandwidth caps all reads together. Requests are served by
many threads at once (libfuse's multi-threaded loop), as a file server answers several
clients' calls at once: threads on the client side hide latency here as they do on a NAS.

    python dam_dagster_tests/slowshare.py SOURCE MOUNTPOINT --latency-ms 1 --read-mb-s 110
    # (or python -m dam_dagster_tests.slowshare ... from the checkout); Ctrl-C or
    # `fusermount3 -u MOUNTPOINT` unmounts

    with slow_share(source, latency_ms=1, read_mb_s=110) as share:   # a background process
        walk(share.path)
    share.stats                     # what reached the server, counted by the server

What it models, and what not (docs/BENCHMARKS.md, "A library on a slow share"):
- every request that reaches the server is a round trip: `latency_ms` for lookup/getattr,
  opendir, readdir, open, readlink and statfs; closing a file and a folder is free (the
  kernel sends those without waiting), and so is the end of a listing (it comes with the last
  reply, as NFS' eof flag does);
- a listing carries every entry's attributes (NFS READDIRPLUS, SMB2 QUERY_DIRECTORY): the
  kernel keeps names and attributes `attr_timeout_s` (1 s, as libfuse and CIFS' actimeo
  do), so a stat right after a listing costs nothing, one later costs a round trip, and
  opening a file after that time first revalidates each folder of its path and the file;
- reads are the kernel's FUSE requests (up to 128-256 KiB, with its readahead), each waiting
  `read_latency_ms` and for its bytes on one link of `read_mb_s` shared by every reader;
- page cache: kept across opens while a file's size and mtime stay the same (libfuse's
  auto_cache, like NFS' close-to-open consistency); `page_cache=False` drops it on each open;
- up to `max_threads` requests are served at once (128; a NAS serves many), but this kernel
  sends lookups of names it has not seen in one folder one at a time (measured here with
  this server and with a pyfuse3 one alike), and the server is Python on the client's own
  cores: about 55-100 us of CPU per request, which bounds what many client threads gain;
- not modelled: SMB oplocks and leases, NFS delegations, the server's own disk and cache
  (reads come from the source folder through this machine's page cache), lost packets,
  disconnects, and anything about writing: the share is mounted read-only and refuses every
  change with EROFS.

The mount shows in /proc/self/mountinfo as `fuse.slowshare` (the `subtype` option), which
`dam_dagster.core.walk.NETWORK_FILESYSTEMS` lists, so dam treats it as a network share.

Only the standard library and mfusepy (the `test` extra; ctypes over Debian's libfuse3) are
used, so tests and benchmark scripts can both import this file, and it runs as a script.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

SUBTYPE = "slowshare"  # the mount's type is fuse.slowshare
FUSE_READDIR_PLUS = 1 << 0  # enum fuse_readdir_flags
FUSE_FILL_DIR_PLUS = 1 << 1  # enum fuse_fill_dir_flags
FUSE_CAP_PARALLEL_DIROPS = 1 << 18  # fuse_common.h
_STAT_SIZE = 0  # sizeof(struct stat), once mfusepy is loaded
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC


class ShareUnavailable(RuntimeError):
    """FUSE cannot mount here (no /dev/fuse, no libfuse3, no privilege): tests skip on it."""


@dataclass
class ShareConfig:
    latency_ms: float = 1.0  # per metadata round trip
    read_mb_s: float = 0.0  # shared link bandwidth for all reads (MB = 10^6 bytes); 0: no cap
    read_latency_ms: float = 0.0  # per read request, overlapping with the transfer
    attr_timeout_s: float = 1.0  # how long the kernel trusts attributes and names it was given
    listing_attrs: bool = True  # listings carry attributes (READDIRPLUS) as NAS protocols do
    page_cache: bool = True  # keep pages across opens while size and mtime stay the same
    max_threads: int = 128  # requests served at once (libfuse's default is 10)
    max_background: int = 64  # asynchronous requests (readahead) the kernel keeps in flight
    subtype: str = SUBTYPE

    def fuse_options(self) -> dict:
        opts = {
            "ro": True,
            "default_permissions": True,
            "allow_other": True,
            "subtype": self.subtype,
            "entry_timeout": self.attr_timeout_s,
            "attr_timeout": self.attr_timeout_s,
            "negative_timeout": self.attr_timeout_s,
            "max_threads": self.max_threads,
            "max_idle_threads": self.max_threads,  # no thread churn between bursts
        }
        if self.page_cache:
            opts["auto_cache"] = True
        return opts


@dataclass
class ShareStats:
    """What reached the server: requests by kind, bytes read, time spent waiting."""

    requests: dict[str, int] = field(default_factory=dict)
    read_bytes: int = 0
    read_sizes: dict[str, int] = field(default_factory=dict)  # request size (KiB) -> count
    latency_s: float = 0.0  # sum of the latencies added (over all threads)
    link_busy_s: float = 0.0  # time the link spent transferring
    max_in_flight: int = 0  # most requests being served at one moment
    mounted_s: float = 0.0
    cpu_s: float = 0.0  # the server process's own CPU time


class _Link:
    """One shared link: transfers queue behind each other at `rate` bytes per second."""

    def __init__(self, rate_bytes_s: float):
        self.rate = rate_bytes_s
        self.free_at = 0.0
        self.lock = threading.Lock()

    def reserve(self, nbytes: int, now: float) -> float:
        """When a transfer of nbytes asked for at `now` is done."""
        if self.rate <= 0:
            return now
        with self.lock:
            start = max(now, self.free_at)
            self.free_at = start + nbytes / self.rate
            return self.free_at


def _fill_stat(c, st: os.stat_result) -> None:
    """Copy a stat result into mfusepy's c_stat (zeroed by the caller or by libfuse)."""
    c.st_mode = st.st_mode
    c.st_nlink = st.st_nlink
    c.st_uid = st.st_uid
    c.st_gid = st.st_gid
    c.st_size = st.st_size
    c.st_blocks = st.st_blocks
    c.st_blksize = st.st_blksize
    c.st_atimespec.tv_sec, c.st_atimespec.tv_nsec = divmod(st.st_atime_ns, 1_000_000_000)
    c.st_mtimespec.tv_sec, c.st_mtimespec.tv_nsec = divmod(st.st_mtime_ns, 1_000_000_000)
    c.st_ctimespec.tv_sec, c.st_ctimespec.tv_nsec = divmod(st.st_ctime_ns, 1_000_000_000)


def _operations_class():
    """The FUSE operations, defined only where mfusepy (and so libfuse3) can be loaded."""
    import mfusepy

    global _STAT_SIZE
    _STAT_SIZE = ctypes.sizeof(mfusepy.c_stat)

    class SlowShareOps(mfusepy.Operations):
        use_ns = True

        def __init__(self, source: str, config: ShareConfig, stats_path: str | None):
            self._root = os.path.realpath(source)
            self._config = config
            self._stats_path = stats_path
            self._latency = config.latency_ms / 1000
            self._read_latency = config.read_latency_ms / 1000
            self._link = _Link(config.read_mb_s * 1e6)
            self._stats = ShareStats()
            self._mutex = threading.Lock()
            self._in_flight = 0
            # open folders: their entries in order, and each entry's attributes by path
            self._listings: dict[int, tuple[list[tuple[str, os.stat_result]], dict]] = {}
            self._next_dir_handle = 1
            self._local = threading.local()  # .listing: a listing being sent (no round trips)
            self._started = time.monotonic()

        # --- accounting -------------------------------------------------------------------
        @contextlib.contextmanager
        def request(self, kind: str, latency: float):
            with self._mutex:
                self._stats.requests[kind] = self._stats.requests.get(kind, 0) + 1
                self._in_flight += 1
                self._stats.max_in_flight = max(self._stats.max_in_flight, self._in_flight)
                self._stats.latency_s += latency
            try:
                if latency > 0:
                    time.sleep(latency)
                yield
            finally:
                with self._mutex:
                    self._in_flight -= 1

        def _path(self, path: str) -> str:
            return self._root + path if path != "/" else self._root

        @staticmethod
        def _attrs(st: os.stat_result) -> dict:
            return {
                "st_mode": st.st_mode,
                "st_nlink": st.st_nlink,
                "st_uid": st.st_uid,
                "st_gid": st.st_gid,
                "st_size": st.st_size,
                "st_blocks": st.st_blocks,
                "st_blksize": st.st_blksize,
                "st_atime": st.st_atime_ns,
                "st_mtime": st.st_mtime_ns,
                "st_ctime": st.st_ctime_ns,
            }

        # --- metadata ---------------------------------------------------------------------
        def stat(self, path: str) -> os.stat_result:
            sending = getattr(self._local, "listing", None)
            if sending is not None:  # libfuse asks while a listing with attributes is sent
                st = sending.get(path)
                if st is not None:
                    return st
            with self.request("lookup/getattr", self._latency):
                return os.lstat(self._path(path))

        def getattr(self, path, fh=None):  # registers getattr; SlowShareFUSE answers it
            return self._attrs(self.stat(path))

        def readlink(self, path):
            with self.request("readlink", self._latency):
                return os.readlink(self._path(path))

        def statfs(self, path):
            with self.request("statfs", self._latency):
                sv = os.statvfs(self._path(path))
            return {k: getattr(sv, k) for k in dir(sv) if k.startswith("f_")}

        def opendir(self, path):
            with self.request("opendir", self._latency):
                full = self._path(path)
                entries = []
                with os.scandir(full) as it:
                    for entry in it:
                        try:
                            entries.append((entry.name, entry.stat(follow_symlinks=False)))
                        except FileNotFoundError:
                            continue  # gone between listing and stat, as on a server
                here = os.lstat(full)
            with self._mutex:
                handle = self._next_dir_handle
                self._next_dir_handle += 1
                base = path.rstrip("/")
                self._listings[handle] = (
                    [(".", here), ("..", here), *entries],
                    {f"{base}/{name}": st for name, st in entries},
                )
            return handle

        def readdir(self, path, fh):
            """Registers readdir with libfuse; SlowShareFUSE.readdir_fuse_3 answers it."""
            raise mfusepy.FuseOSError(errno.ENOSYS)

        def releasedir(self, path, fh):
            with self._mutex:
                self._listings.pop(fh, None)
            return 0

        # --- files ------------------------------------------------------------------------
        def open(self, path, flags):
            if flags & _WRITE_FLAGS:
                raise mfusepy.FuseOSError(errno.EROFS)
            with self.request("open", self._latency):
                return os.open(self._path(path), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)

        def read(self, path, size, offset, fh):  # registers read; SlowShareFUSE answers it
            view = memoryview(bytearray(size))
            return bytes(view[: self.read_into(fh, view, offset)])

        def read_into(self, fh: int, view: memoryview, offset: int) -> int:
            n = os.preadv(fh, [view], offset)
            now = time.monotonic()
            done = max(self._link.reserve(n, now), now + self._read_latency)
            with self.request("read", max(0.0, done - time.monotonic())):
                pass
            with self._mutex:
                self._stats.read_bytes += n
                key = str(max(1, (len(view) + 1023) // 1024))
                self._stats.read_sizes[key] = self._stats.read_sizes.get(key, 0) + 1
                if self._link.rate > 0:
                    self._stats.link_busy_s += n / self._link.rate
            return n

        def release(self, path, fh):
            os.close(fh)
            return 0

        # --- refused: the share is read-only (the kernel refuses first: it is mounted ro) --
        def _refuse(self, *args, **kwargs):
            raise mfusepy.FuseOSError(errno.EROFS)

        write = create = mkdir = mknod = unlink = rmdir = symlink = link = _refuse
        rename = chmod = chown = truncate = utimens = setxattr = removexattr = _refuse

        # --- life -------------------------------------------------------------------------
        def init_with_config(self, conn, config):
            if conn is not None:
                # lookups and listings in one folder at once, as NFS and SMB clients allow
                conn.want |= conn.capable & FUSE_CAP_PARALLEL_DIROPS
                conn.max_background = self._config.max_background
                conn.congestion_threshold = max(1, self._config.max_background * 3 // 4)

        def destroy(self, path):
            self.write_stats()

        def write_stats(self) -> None:
            self._stats.mounted_s = time.monotonic() - self._started
            usage = os.times()
            self._stats.cpu_s = usage.user + usage.system
            if self._stats_path:
                tmp = self._stats_path + ".tmp"
                with open(tmp, "w") as fh:
                    json.dump(asdict(self._stats), fh)
                os.replace(tmp, self._stats_path)

    class SlowShareFUSE(mfusepy.FUSE):
        """mfusepy's FUSE, with listings that carry attributes (readdirplus) to the kernel.

        libfuse passes attributes on only for entries filled with their offsets (fuse.c:
        fill_dir_plus), so entries go out page by page, each with its offset, and the kernel
        asks again from the next offset. One reply is one round trip; the end of the listing
        comes with the last reply (as NFS' eof flag does) and costs nothing.
        """

        # getattr and read are most of the requests: answered here without mfusepy's
        # generic conversions (a dict per stat, a copy per read), to keep the server cheap.
        def getattr_fuse_3(self, path, buf, fip):
            _fill_stat(buf.contents, self.operations.stat(path.decode(self.encoding, self.errors)))
            return 0

        def read(self, path, buf, size, offset, fip):
            view = memoryview((ctypes.c_char * size).from_address(ctypes.addressof(buf.contents)))
            return self.operations.read_into(fip.contents.fh, view, offset)

        def readdir_fuse_3(self, path, buf, filler, offset, fip, flags):
            ops = self.operations
            listing = ops._listings.get(fip.contents.fh)
            if listing is None:
                return -errno.EBADF
            entries, by_path = listing
            if offset >= len(entries):
                return 0
            plus = bool(flags & FUSE_READDIR_PLUS) and ops._config.listing_attrs
            st = mfusepy.c_stat()
            with ops.request("readdir", ops._latency):
                ops._local.listing = by_path if plus else None
                try:
                    for index in range(offset, len(entries)):
                        name, entry_st = entries[index]
                        ctypes.memset(ctypes.byref(st), 0, _STAT_SIZE)
                        dots = name in (".", "..")
                        if plus and not dots:
                            _fill_stat(st, entry_st)
                        else:
                            st.st_mode = entry_st.st_mode
                        fill = FUSE_FILL_DIR_PLUS if plus and not dots else 0
                        encoded = name.encode(self.encoding, self.errors)
                        if filler(buf, encoded, st, index + 1, fill) != 0:
                            break
                finally:
                    ops._local.listing = None
            return 0

    return SlowShareOps, SlowShareFUSE, mfusepy


def serve(source: str, mountpoint: str, config: ShareConfig, stats_path: str | None) -> None:
    """Mount and serve in the foreground until unmounted or interrupted."""
    ops_class, fuse_class, _ = _operations_class()
    ops = ops_class(source, config, stats_path)

    try:
        fuse_class(
            ops,
            mountpoint,
            foreground=True,
            fsname=f"slowshare:{ops._root}",
            **config.fuse_options(),
        )
    except RuntimeError as exc:  # libfuse's loop ended by SIGTERM/SIGINT: already unmounted
        if mount_type(mountpoint) is not None and mount_type(mountpoint).startswith("fuse"):
            raise
        print(f"slowshare: stopped ({exc})", file=sys.stderr)


# --- mounting from tests and benchmarks ------------------------------------------------------
def mount_type(mountpoint: str | os.PathLike) -> str | None:
    """The filesystem type mounted exactly at `mountpoint`, from /proc/self/mountinfo."""
    want = os.path.realpath(mountpoint)
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as fh:
            lines = fh.readlines()
    except OSError:
        return None
    found = None
    for line in lines:
        left, _, right = line.partition(" - ")
        fields = left.split()
        if len(fields) >= 5 and right:
            mount = fields[4].replace("\\040", " ").replace("\\011", "\t")
            if mount == want:
                found = right.split()[0]  # the last mount there wins
    return found


def fuse_problem() -> str | None:
    """Why a share cannot be mounted here, or None if it can be tried."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse does not exist (no FUSE in this kernel or container)"
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return "/dev/fuse is not readable and writable by this user"
    if os.geteuid() != 0 and not shutil.which("fusermount3"):
        return "fusermount3 is missing (Debian package fuse3) and this user is not root"
    try:
        import mfusepy  # noqa: F401  (loads libfuse3)
    except (ImportError, OSError) as exc:
        return f"mfusepy or libfuse3 cannot be loaded ({exc}): install the fuse3 package"
    return None


def _unmount(path: str, lazy: bool = False) -> bool:
    for tool in ("fusermount3", "umount"):
        exe = shutil.which(tool)
        if exe is None:
            continue
        args = [exe, "-u", "-z", path] if tool == "fusermount3" else [exe, path]
        if tool == "fusermount3" and not lazy:
            args = [exe, "-u", path]
        if tool == "umount" and lazy:
            args = [exe, "-l", path]
        if subprocess.run(args, capture_output=True).returncode == 0:
            return True
    return False


def _die_with_parent() -> None:
    """In the server process: SIGTERM when the process that mounted it dies (libfuse then
    unmounts), so a killed test run leaves no share behind."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG


class SlowShare:
    """A mounted share, served by a background process; `stats` after it is unmounted."""

    def __init__(self, source, mountpoint=None, config: ShareConfig | None = None, **options):
        self.source = os.path.realpath(source)
        self.config = config or ShareConfig(**options)
        self._own_mountpoint = mountpoint is None
        self.path = Path(mountpoint or tempfile.mkdtemp(prefix="dam-share-")).resolve()
        self._work = Path(tempfile.mkdtemp(prefix="dam-share-state-"))
        self.stats_path = self._work / "stats.json"
        self.log_path = self._work / "server.log"
        self.proc: subprocess.Popen | None = None
        self.stats: ShareStats | None = None

    def mount(self, timeout_s: float = 20.0) -> SlowShare:
        problem = fuse_problem()
        if problem:
            raise ShareUnavailable(problem)
        self.path.mkdir(parents=True, exist_ok=True)
        c = self.config
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            self.source,
            str(self.path),
            f"--latency-ms={c.latency_ms}",
            f"--read-mb-s={c.read_mb_s}",
            f"--read-latency-ms={c.read_latency_ms}",
            f"--attr-timeout-s={c.attr_timeout_s}",
            f"--max-threads={c.max_threads}",
            f"--max-background={c.max_background}",
            f"--subtype={c.subtype}",
            f"--stats={self.stats_path}",
        ]
        if not c.listing_attrs:
            cmd.append("--no-listing-attrs")
        if not c.page_cache:
            cmd.append("--no-page-cache")
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while mount_type(self.path) != f"fuse.{c.subtype}":
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.unmount()
                raise ShareUnavailable(f"the share did not mount: {self.server_log()[-1500:]}")
            time.sleep(0.02)
        return self

    def server_log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace").strip() or "(no output)"
        except OSError:
            return "(no log)"

    def _read_stats(self) -> ShareStats | None:
        try:
            return ShareStats(**json.loads(self.stats_path.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def unmount(self) -> None:
        """Unmount whatever happened (a busy mount is detached lazily), stop the server."""
        path = str(self.path)
        if mount_type(path) is not None and mount_type(path).startswith("fuse"):
            for _ in range(20):
                if _unmount(path):
                    break
                time.sleep(0.1)
            else:
                _unmount(path, lazy=True)
        if self.proc is not None:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            if mount_type(path) == f"fuse.{self.config.subtype}":
                _unmount(path, lazy=True)  # a server that died leaves a dead mount behind
            self.stats = self._read_stats()
            self.proc = None
        if self._own_mountpoint:
            with contextlib.suppress(OSError):
                self.path.rmdir()

    def close(self) -> None:
        self.unmount()
        shutil.rmtree(self._work, ignore_errors=True)

    def __enter__(self) -> SlowShare:
        return self.mount()

    def __exit__(self, *exc) -> None:
        self.close()


@contextlib.contextmanager
def slow_share(source, mountpoint=None, **options) -> Iterator[SlowShare]:
    """Mount `source` as a slow share for the block; unmounted afterwards, error or not."""
    share = SlowShare(source, mountpoint, **options)
    try:
        yield share.mount()
    finally:
        share.close()


# --- the command -----------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="Mount SOURCE read-only at MOUNTPOINT as a slow share (FUSE): latency per "
        "metadata request, a bandwidth cap on reads. Ctrl-C or `fusermount3 -u MOUNTPOINT` ends it."
    )
    ap.add_argument("source")
    ap.add_argument("mountpoint")
    ap.add_argument("--latency-ms", type=float, default=1.0, help="per metadata request (1)")
    ap.add_argument("--read-mb-s", type=float, default=0.0, help="read bandwidth cap, 0: none")
    ap.add_argument("--read-latency-ms", type=float, default=0.0, help="per read request (0)")
    ap.add_argument("--attr-timeout-s", type=float, default=1.0, help="kernel attribute cache")
    ap.add_argument("--no-listing-attrs", action="store_true", help="listings carry names only")
    ap.add_argument("--no-page-cache", action="store_true", help="drop cached pages on open")
    ap.add_argument("--max-threads", type=int, default=128, help="requests served at once")
    ap.add_argument("--max-background", type=int, default=64, help="async requests in flight")
    ap.add_argument("--subtype", default=SUBTYPE, help="the mount type is fuse.SUBTYPE")
    ap.add_argument("--stats", help="write the server's counters here (JSON) when unmounted")
    args = ap.parse_args(argv)
    if not os.path.isdir(args.source):
        ap.error(f"{args.source} is not a folder")
    problem = fuse_problem()
    if problem:
        print(f"cannot mount: {problem}", file=sys.stderr)
        return 2
    config = ShareConfig(
        latency_ms=args.latency_ms,
        read_mb_s=args.read_mb_s,
        read_latency_ms=args.read_latency_ms,
        attr_timeout_s=args.attr_timeout_s,
        listing_attrs=not args.no_listing_attrs,
        page_cache=not args.no_page_cache,
        max_threads=args.max_threads,
        max_background=args.max_background,
        subtype=args.subtype,
    )
    serve(args.source, args.mountpoint, config, args.stats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
