"""The render fork server ("zygote"): one fresh interpreter per `render_files` call that
imports the render stack once and then forks a worker in milliseconds whenever the pool asks.

Why not multiprocessing's own contexts: with 'spawn' every worker imports the render stack
again (0.7-0.9 s of CPU, at every recycle: ~13% of a fast-lane worker's life); 'forkserver'
preloads, but its children re-run the caller's `__main__` module (any script or console entry
point) before their target, and it is one server per process whose environment and preload
list are fixed by whoever starts it first. This server is started as `python -c ...` (a new
process, no inherited threads, like 'spawn'), never runs the caller's main, never creates a GL
context (each worker does, after the fork), and reports every worker's exit status so the
pool can tell a segfault from a clean exit.

Protocol, on two Unix sockets passed as file descriptors:
  ctl (multiprocessing Connection):  pool -> ('fork', request_id, settings) | ('stop',)
                                     server -> ('ready', pid) | ('forked', request_id, pid)
                                               | ('exit', pid, returncode)  (-N: killed by N)
  fds (raw socket):                  pool -> one SCM_RIGHTS message per 'fork': the worker's end
                                     of its own socket pair
"""

from __future__ import annotations

import os
import socket
import sys
import time


def serve(ctl_fd: int, fds_fd: int) -> None:
    from multiprocessing.connection import Connection

    from . import (
        _preload,  # noqa: F401  (numpy, Pillow, trimesh, pyrender; no GL context)
        worker,
    )

    ctl = Connection(ctl_fd)
    fds = socket.socket(fileno=fds_fd)
    ctl.send(("ready", os.getpid()))
    children: set[int] = set()
    while True:
        _reap(ctl, children)
        try:
            if not ctl.poll(0.05):
                continue
            message = ctl.recv()
        except (EOFError, OSError):
            break
        if message[0] != "fork":
            break
        _, request_id, settings = message
        _, received, _, _ = socket.recv_fds(fds, 16, 1)
        if not received:
            break
        conn_fd = received[0]
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                ctl.close()
                fds.close()
                worker.main(Connection(conn_fd), settings)
                code = 0
            except BaseException:  # noqa: BLE001 - report and leave without cleanup handlers
                import traceback

                traceback.print_exc()
            finally:
                os._exit(code)
        os.close(conn_fd)
        children.add(pid)
        try:
            ctl.send(("forked", request_id, pid))
        except OSError:
            break
    # The pool is done (or gone): give stopping workers a moment to exit and be reaped (so
    # their CPU time is accounted to the pool's process), then leave; any worker still
    # alive dies with us (it asked for PR_SET_PDEATHSIG).
    deadline = time.monotonic() + 2.0
    while children and time.monotonic() < deadline:
        _reap(None, children)
        time.sleep(0.01)


def _reap(ctl, children: set[int]) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            children.clear()
            return
        if pid == 0:
            return
        children.discard(pid)
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        if ctl is None:
            continue
        try:
            ctl.send(("exit", pid, code))
        except OSError:
            return


if __name__ == "__main__":  # pragma: no cover - started by pool.py with explicit fds
    serve(int(sys.argv[1]), int(sys.argv[2]))
