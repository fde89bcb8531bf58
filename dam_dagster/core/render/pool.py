"""The parent side: a pool of render worker processes with per-file timeouts and memory caps.

Runs in the caller's process (the Dagster step, the CLI) and imports only the standard library:
no numpy, no OpenGL, no pyrender here, and never a GL context.

* Workers are forked by a private fork server (zygote.py): a fresh interpreter started for the
  call (no inherited threads, as with 'spawn'), which imports the render stack once; a worker
  then costs a fork, not a second of imports, and never re-runs the caller's `__main__`.
* Each worker has its own socket and at most PREFETCH tasks queued, so it never waits for the
  parent between files; results come back in order, so the file a worker is busy with is
  always the oldest of its queue, and its clock starts when the previous one finished.
* A file that runs past `timeout_s` gets its worker SIGKILLed ('timeout'); a worker whose
  resident memory (read from /proc/<pid>/statm every POLL_S) passes `memory_mb` is SIGKILLed
  ('memory'); a worker that dies on its own (a segfault in a parser or the driver) gives
  'failed' / 'WorkerCrashed' for the file it had. In all three cases the other files it had
  queued go back to the queue, a new worker takes its place and the batch goes on.
* Workers are recycled after `max_files_per_worker` files (their replacement starts while
  they finish their queue).
* An address-space limit (RLIMIT_AS) of 2 x memory_mb + 2 GiB is a backstop against a single
  huge allocation between two polls: Mesa's llvmpipe reserves about 1 GiB of address space
  per process for its threads and JIT, so RLIMIT_AS alone at memory_mb would refuse normal work.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable
from multiprocessing.connection import Connection, wait
from pathlib import Path

from ..archives import MEMBER_MARK
from ..processes import pid_alive
from .api import (
    IMAGE_EXTENSIONS,
    MODEL_EXTENSIONS,
    TEST_CRASH_ENV,
    TEST_HANG_ENV,
    RenderConfig,
    RenderOutcome,
    RenderTask,
    extension_of,
    parse_background,
)

PREFETCH = 2  # tasks queued per worker, the one it works on included
POLL_S = 0.05  # memory polling period
START_TIMEOUT_S = 120.0  # a worker that is not ready by then is killed
MAX_START_FAILURES = 3  # workers (or fork servers) dying before ready, in a row: give up
EXIT_STATUS_WAIT_S = 1.0
_PAGE = os.sysconf("SC_PAGE_SIZE")

_BOOT = (
    "import json, os, sys\n"
    "sys.path[:0] = [p for p in json.loads(os.environ.pop('DAM_RENDER_SYS_PATH', '[]'))"
    " if p not in sys.path]\n"
    "from dam_dagster.core.render.zygote import serve\n"
    "serve(int(sys.argv[1]), int(sys.argv[2]))\n"
)


def default_gl_threads(workers: int) -> int:
    """llvmpipe threads per worker: the CPUs left to each worker (0 = rasterise in the worker's
    own thread, which measured best when there are as many workers as CPUs)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        cpus = os.cpu_count() or 1
    per_worker = cpus // max(1, workers)
    return 0 if per_worker <= 1 else min(per_worker, 16)


def _rss_bytes(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


def _signal_text(code: int | None) -> str:
    if code is None:
        return "exit status unknown"
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


class _Zygote:
    """Parent-side handle of the fork server."""

    def __init__(self):
        ctl_parent, ctl_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        fds_parent, fds_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = dict(os.environ)
        env["DAM_RENDER_SYS_PATH"] = json.dumps([p for p in sys.path if p])
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _BOOT, str(ctl_child.fileno()), str(fds_child.fileno())],
                pass_fds=(ctl_child.fileno(), fds_child.fileno()),
                env=env,
                stdin=subprocess.DEVNULL,
                close_fds=True,
            )
        finally:
            ctl_child.close()
            fds_child.close()
        self.ctl = Connection(ctl_parent.detach())
        self.fds = fds_parent
        self.alive = True
        self.next_request = 0

    def fork(self, settings: dict) -> tuple[int, Connection]:
        parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        request = self.next_request
        self.next_request += 1
        try:
            self.ctl.send(("fork", request, settings))
            socket.send_fds(self.fds, [b"F"], [child_sock.fileno()])
        except OSError:
            parent_sock.close()
            self.alive = False
            raise
        finally:
            child_sock.close()
        return request, Connection(parent_sock.detach())

    def close(self) -> None:
        try:
            self.ctl.send(("stop",))
        except OSError:
            pass
        for closable in (self.ctl, self.fds):
            try:
                closable.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self.alive = False


class _Worker:
    __slots__ = (
        "zygote",
        "request",
        "conn",
        "pid",
        "ready",
        "started",
        "queue",
        "head_start",
        "sent",
        "retiring",
        "cpu_s",
        "peak_rss",
        "dead",
    )

    def __init__(self, zygote: _Zygote, request: int, conn: Connection):
        self.zygote = zygote
        self.request = request
        self.conn = conn
        self.pid: int | None = None
        self.ready = False
        self.started = time.monotonic()
        self.queue: deque[int] = deque()  # task indexes, in the order sent
        self.head_start = 0.0  # when the worker started on queue[0]
        self.sent = 0
        self.retiring = False
        self.cpu_s = 0.0
        self.peak_rss = 0
        self.dead = False


class _Pool:
    def __init__(
        self,
        tasks: list[RenderTask],
        thumbs_dir: Path,
        config: RenderConfig,
        on_outcome: Callable[[RenderOutcome], None] | None,
    ):
        self.tasks = tasks
        self.thumbs_dir = thumbs_dir
        self.config = config
        self.on_outcome = on_outcome
        self.outcomes: list[RenderOutcome | None] = [None] * len(tasks)
        self.remaining = len(tasks)
        self.pending: deque[int] = deque()
        self.workers: list[_Worker] = []
        self.zygote: _Zygote | None = None
        self.exit_codes: dict[int, int] = {}
        self.start_failures = 0
        self.stats = {
            "workers_started": 0,
            "worker_crashes": 0,
            "timeouts": 0,
            "memory_kills": 0,
            "recycled": 0,
            "peak_rss_mb": 0.0,
            "worker_cpu_s": 0.0,
        }
        gl_threads = config.gl_threads
        self.settings = {
            "thumbs_dir": str(thumbs_dir),
            "size": int(config.size),
            "background": config.background,
            "prefer_embedded": bool(config.prefer_embedded),
            "overwrite": bool(config.overwrite),
            "facts": bool(config.facts),
            "memory_mb": int(config.memory_mb),
            "gl_threads": default_gl_threads(config.workers)
            if gl_threads is None
            else int(gl_threads),
            "address_space_mb": 2 * int(config.memory_mb) + 2048,
            "hang_suffix": os.environ.get(TEST_HANG_ENV) or None,
            "crash_suffix": os.environ.get(TEST_CRASH_ENV) or None,
        }

    # -- outcomes ----------------------------------------------------------------------

    def _finish(
        self,
        index: int,
        status: str,
        seconds: float,
        *,
        source=None,
        md5=None,
        rel=None,
        error_class=None,
        message=None,
        transient=False,
        facts=None,
        facts_error=None,
    ) -> None:
        if self.outcomes[index] is not None:
            return
        outcome = RenderOutcome(
            key=self.tasks[index].key,
            status=status,
            source=source,
            content_md5=md5,
            thumbnail_relpath=rel if status == "ok" else None,
            error_class=error_class,
            error_message=message,
            seconds=round(max(0.0, seconds), 6),
            transient=transient,
            facts=facts,
            facts_error=tuple(facts_error) if facts_error else None,
        )
        self.outcomes[index] = outcome
        self.remaining -= 1
        if self.on_outcome is not None:
            self.on_outcome(outcome)

    # -- processes ---------------------------------------------------------------------

    def _start_worker(self) -> None:
        if self.zygote is None or not self.zygote.alive:
            self.zygote = _Zygote()
        try:
            request, conn = self.zygote.fork(self.settings)
        except OSError:
            self.start_failures += 1
            return
        self.workers.append(_Worker(self.zygote, request, conn))
        self.stats["workers_started"] += 1

    def _zygote_messages(self, block_s: float = 0.0) -> None:
        z = self.zygote
        if z is None or not z.alive:
            return
        deadline = time.monotonic() + block_s
        while True:
            try:
                if not z.ctl.poll(max(0.0, deadline - time.monotonic())):
                    return
                message = z.ctl.recv()
            except (EOFError, OSError):
                self._zygote_died(z)
                return
            if message[0] == "forked":
                for w in self.workers:
                    if w.zygote is z and w.request == message[1]:
                        w.pid = message[2]
            elif message[0] == "exit":
                self.exit_codes[message[1]] = message[2]
            block_s = 0.0
            deadline = time.monotonic()

    def _zygote_died(self, z: _Zygote) -> None:
        z.alive = False
        try:
            z.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover
            z.proc.kill()
        for w in list(self.workers):
            if w.zygote is z and not w.ready:
                self.start_failures += 1
                self._forget(w)
        # ready workers die with it (PR_SET_PDEATHSIG): their sockets report it

    def _live(self) -> list[_Worker]:
        return [w for w in self.workers if not w.retiring]

    def _kill(self, w: _Worker) -> None:
        deadline = time.monotonic() + EXIT_STATUS_WAIT_S
        while (
            w.pid is None
            and time.monotonic() < deadline
            and self.zygote is w.zygote
            and w.zygote.alive
        ):
            self._zygote_messages(block_s=0.05)  # its pid comes with the 'forked' reply
        if w.pid is not None:
            try:
                os.kill(w.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self._remove_temp_files(w.pid)
        self._forget(w)

    def _remove_temp_files(self, pid: int) -> None:
        """A worker killed while writing a PNG leaves its temp file: remove it."""
        for path in glob.glob(
            os.path.join(glob.escape(str(self.thumbs_dir)), "??", f".*.{pid}.tmp")
        ):
            try:
                os.unlink(path)
            except OSError:
                pass

    def _forget(self, w: _Worker) -> None:
        self.stats["worker_cpu_s"] += w.cpu_s
        w.cpu_s = 0.0
        self.stats["peak_rss_mb"] = max(self.stats["peak_rss_mb"], w.peak_rss / 2**20)
        w.dead = True
        try:
            w.conn.close()
        except OSError:
            pass
        if w in self.workers:
            self.workers.remove(w)

    def _requeue_rest(self, w: _Worker) -> None:
        """Files a lost worker had queued behind the one it was on go back to the front."""
        rest = list(w.queue)[1:]
        w.queue.clear()
        for index in reversed(rest):
            self.pending.appendleft(index)

    def _lose(self, w: _Worker, status: str, error_class: str, message: str) -> None:
        """The worker is gone (or about to be killed): its current file gets the outcome."""
        if w.queue:
            self._finish(
                w.queue[0],
                status,
                time.monotonic() - w.head_start,
                error_class=error_class,
                message=message,
                transient=True,
            )
        self._requeue_rest(w)

    # -- the loop ----------------------------------------------------------------------

    def run(self) -> list[RenderOutcome]:
        for index, task in enumerate(self.tasks):
            ext = extension_of(task.path.split(MEMBER_MARK, 1)[-1])
            if ext not in MODEL_EXTENSIONS and ext not in IMAGE_EXTENSIONS:
                self._finish(
                    index,
                    "unsupported",
                    0.0,
                    error_class="UnsupportedFormat",
                    message=f"no thumbnailer for '{ext or 'no extension'}' files",
                )
            else:
                self.pending.append(index)
        try:
            last_poll = 0.0
            while self.remaining > 0:
                self._top_up()
                if self.remaining <= 0:
                    break
                self._dispatch()
                now = time.monotonic()
                timeout = max(0.0, min(self._next_deadline() - now, POLL_S))
                handles = [w.conn for w in self.workers]
                if self.zygote is not None and self.zygote.alive:
                    handles.append(self.zygote.ctl)
                ready = set(wait(handles, timeout=timeout)) if handles else set()
                if not handles:
                    time.sleep(timeout)
                if self.zygote is not None and self.zygote.ctl in ready:
                    self._zygote_messages()
                for w in list(self.workers):
                    if w.conn in ready:
                        self._drain(w)
                now = time.monotonic()
                self._check_deadlines(now)
                if now - last_poll >= POLL_S:
                    self._poll_memory()
                    last_poll = now
        finally:
            self._shutdown()
        return list(self.outcomes)  # type: ignore[arg-type]

    def _top_up(self) -> None:
        want = min(
            int(self.config.workers), len(self.pending) + sum(len(w.queue) for w in self._live())
        )
        while len(self._live()) < want:
            if self.start_failures >= MAX_START_FAILURES:
                self._give_up()
                return
            self._start_worker()

    def _give_up(self) -> None:
        message = (
            "render processes die before they are ready "
            f"({MAX_START_FAILURES} in a row); see the run's stderr"
        )
        while self.pending:
            self._finish(
                self.pending.popleft(),
                "failed",
                0.0,
                error_class="WorkerStartFailed",
                message=message,
                transient=True,
            )

    def _dispatch(self) -> None:
        now = time.monotonic()
        for w in self._live():
            if not w.ready:
                continue
            while self.pending and len(w.queue) < PREFETCH and not w.retiring:
                index = self.pending.popleft()
                task = self.tasks[index]
                try:
                    w.conn.send(
                        (
                            "task",
                            index,
                            task.path,
                            int(task.size_bytes),
                            bool(task.rerender),
                            bool(task.need_facts),
                        )
                    )
                except OSError:
                    self.pending.appendleft(index)
                    break  # its socket will report the death
                if not w.queue:
                    w.head_start = now
                w.queue.append(index)
                w.sent += 1
                if w.sent >= self.config.max_files_per_worker:
                    w.retiring = True
                    self.stats["recycled"] += 1

    def _drain(self, w: _Worker) -> None:
        while not w.dead:
            try:
                if not w.conn.poll():
                    return
                message = w.conn.recv()
            except (EOFError, OSError):
                self._crashed(w)
                return
            if message[0] == "ready":
                w.ready = True
                w.pid = message[1]
                self.start_failures = 0
            elif message[0] == "done":
                _, index, result, cpu_s, maxrss_kb = message
                now = time.monotonic()
                if w.queue and w.queue[0] == index:
                    w.queue.popleft()
                w.head_start = now
                w.cpu_s = cpu_s
                w.peak_rss = max(w.peak_rss, maxrss_kb * 1024)
                self._finish(
                    index,
                    result["status"],
                    result["seconds"],
                    source=result["source"],
                    md5=result["content_md5"],
                    rel=result["thumbnail_relpath"],
                    error_class=result["error_class"],
                    message=result["error_message"],
                    transient=result["transient"],
                    facts=result.get("facts"),
                    facts_error=result.get("facts_error"),
                )
                if w.retiring and not w.queue:
                    self._retire(w)
                    return

    def _retire(self, w: _Worker) -> None:
        try:
            w.conn.send(("stop",))
        except OSError:
            pass
        self._forget(w)

    def _crashed(self, w: _Worker) -> None:
        """The worker's socket closed without a 'stop' from us: it died."""
        if w.pid is not None and w.pid not in self.exit_codes:
            deadline = time.monotonic() + EXIT_STATUS_WAIT_S
            while (
                w.pid not in self.exit_codes
                and time.monotonic() < deadline
                and self.zygote is not None
                and self.zygote.alive
                and self.zygote is w.zygote
            ):
                self._zygote_messages(block_s=0.05)
        code = self.exit_codes.get(w.pid) if w.pid is not None else None
        if not w.ready:
            self.start_failures += 1
        elif w.queue:
            self.stats["worker_crashes"] += 1
            hint = " (killed from outside: out of memory?)" if code == -signal.SIGKILL else ""
            self._lose(
                w,
                "failed",
                "WorkerCrashed",
                f"the render process died ({_signal_text(code)}){hint} on this file",
            )
        if w.pid is not None:
            self._remove_temp_files(w.pid)
        self._forget(w)

    def _next_deadline(self) -> float:
        deadline = time.monotonic() + 3600.0
        for w in self.workers:
            if w.ready and w.queue:
                deadline = min(deadline, w.head_start + self.config.timeout_s)
            elif not w.ready:
                deadline = min(deadline, w.started + START_TIMEOUT_S)
        return deadline

    def _check_deadlines(self, now: float) -> None:
        for w in list(self.workers):
            if w.ready and w.queue and now - w.head_start > self.config.timeout_s:
                self.stats["timeouts"] += 1
                self._lose(
                    w,
                    "timeout",
                    "Timeout",
                    f"no result after {self.config.timeout_s:g} s: render process killed",
                )
                self._kill(w)
            elif not w.ready and now - w.started > START_TIMEOUT_S:
                self.start_failures += 1
                self._kill(w)

    def _poll_memory(self) -> None:
        cap = int(self.config.memory_mb) << 20
        for w in list(self.workers):
            if w.pid is None:
                continue
            rss = _rss_bytes(w.pid)
            if rss is None:
                continue
            w.peak_rss = max(w.peak_rss, rss)
            if rss > cap:
                self.stats["memory_kills"] += 1
                self._lose(
                    w,
                    "memory",
                    "MemoryLimit",
                    f"the render process passed its {self.config.memory_mb} MB memory "
                    f"cap ({rss / 2**20:.0f} MB resident): killed",
                )
                self._kill(w)

    def _shutdown(self) -> None:
        for w in list(self.workers):
            if not w.queue:
                try:
                    w.conn.send(("stop",))
                except OSError:
                    pass
            elif w.pid is not None:  # only when leaving on an exception
                try:
                    os.kill(w.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self._forget(w)
        if self.zygote is not None and self.zygote.alive:
            self.zygote.close()


def remove_stale_temp_files(
    thumbs_dir: Path, grace_s: float = 60.0, max_age_s: float = 600.0
) -> int:
    """Remove the temporary PNGs (`ab/.<md5>.<random>.<pid>.tmp`) that killed workers left:
    those older than `grace_s` whose writer process is not running here, and any older than
    `max_age_s`. A PNG is written in milliseconds, so a live writer's file, here or on
    another machine sharing the folder, is never that old. Returns how many."""
    removed = 0
    now = time.time()
    pattern = os.path.join(glob.escape(str(thumbs_dir)), "??", ".*.tmp")
    for path in glob.glob(pattern):
        pid = os.path.basename(path).rsplit(".", 2)[-2]
        try:
            age = now - os.stat(path).st_mtime
            gone = not (pid.isdigit() and pid_alive(int(pid)))
            if age < grace_s or (age < max_age_s and not gone):
                continue
            os.unlink(path)
            removed += 1
        except OSError:
            continue
    return removed


def render_files(
    tasks: Iterable[RenderTask],
    thumbs_dir: Path,
    config: RenderConfig,
    on_outcome: Callable[[RenderOutcome], None] | None = None,
    stats: dict | None = None,
) -> list[RenderOutcome]:
    """Thumbnail every task with a pool of `config.workers` processes; one outcome per task,
    in the tasks' order, whatever happens to each file (never raises for a per-file problem).

    PNGs are written only as thumbs_dir/<first two hex chars>/<md5>.png (temp file + rename).
    `on_outcome` is called in this process as each file completes. `stats`, when given, is
    filled with pool figures: workers_started, worker_crashes, timeouts, memory_kills,
    recycled, peak_rss_mb (largest worker), worker_cpu_s (all workers), parent_cpu_s, wall_s.
    """
    started, cpu0 = time.monotonic(), time.process_time()
    tasks = list(tasks)
    parse_background(config.background)
    thumbs_dir = Path(os.path.abspath(thumbs_dir))
    thumbs_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(thumbs_dir)
    pool = _Pool(tasks, thumbs_dir, config, on_outcome)
    try:
        outcomes = pool.run() if tasks else []
    finally:
        if stats is not None:
            stats.update(pool.stats)
            stats["peak_rss_mb"] = round(stats["peak_rss_mb"], 1)
            stats["worker_cpu_s"] = round(stats["worker_cpu_s"], 3)
            stats["parent_cpu_s"] = round(time.process_time() - cpu0, 3)
            stats["wall_s"] = round(time.monotonic() - started, 3)
    return outcomes
