"""Real servers for a cluster on this machine: PostgreSQL (Dagster's storage), Redis (the
Celery broker) and `dam worker` processes (dagster-celery workers), for the distributed test
and bench/cluster_bench.py.

PostgreSQL is Debian's (`/usr/lib/postgresql/<version>/bin`); `initdb` refuses to run as root,
so as root the cluster is made and run as the `postgres` user (`runuser`). Each server listens
on a free port on 127.0.0.1 with its files in a temporary folder, and is stopped at the end.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

BIN = Path(sys.executable).parent


class ServerUnavailable(RuntimeError):
    """A server this machine cannot start (not installed, no user to run it as)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, timeout_s: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ServerUnavailable(f"the server on port {port} exited ({proc.returncode})")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise ServerUnavailable(f"nothing listens on port {port} after {timeout_s:.0f} s")


def _pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    raise ServerUnavailable(
        "PostgreSQL is not installed (Debian: apt-get install postgresql; make test-deps does it)"
    )


@dataclass
class Postgres:
    url: str  # postgresql+psycopg2://...
    port: int

    def database(self, name: str) -> str:
        """A new, empty database on this server; its libpq URL (user `dam`, no password)."""
        import psycopg2

        con = psycopg2.connect(f"postgresql://dam@127.0.0.1:{self.port}/postgres")
        con.autocommit = True
        with con.cursor() as cur:
            cur.execute(f"CREATE DATABASE {name}")
        con.close()
        return f"postgresql://dam@127.0.0.1:{self.port}/{name}"


@contextmanager
def postgres():
    """A throw-away PostgreSQL server in a folder of its own under the system's temporary
    folder (the `postgres` user must reach it); yields its URL (user `dam`, database
    `postgres`, no password: trust on 127.0.0.1)."""
    bin_dir = _pg_bin()
    run_as: list[str] = []
    if os.geteuid() == 0:  # initdb refuses root: the cluster belongs to `postgres`
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            raise ServerUnavailable("running as root and there is no postgres user") from None
        run_as = ["runuser", "-u", "postgres", "--"]
    base = Path(tempfile.mkdtemp(prefix="dam-postgres-"))
    data, sock = base / "pgdata", base / "pgsock"
    sock.mkdir(exist_ok=True)
    if run_as:
        os.chown(base, user.pw_uid, user.pw_gid)
        os.chown(sock, user.pw_uid, user.pw_gid)
    port = free_port()
    out = subprocess.run(
        [*run_as, str(bin_dir / "initdb"), "-D", str(data), "-U", "dam", "--auth=trust", "-E",
         "UTF8", "--no-sync"],
        capture_output=True,
        text=True,
    )  # fmt: skip
    if out.returncode != 0:
        raise ServerUnavailable(f"initdb failed: {out.stderr.strip()[-500:]}")
    options = (
        f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off "
        "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
    )
    out = subprocess.run(
        [*run_as, str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l",
         str(base / "postgres.log"), "-w", "-t", "60", "start"],
        capture_output=True,
        text=True,
    )  # fmt: skip
    if out.returncode != 0:
        log = (base / "postgres.log").read_text()[-500:] if (base / "postgres.log").exists() else ""
        raise ServerUnavailable(f"PostgreSQL did not start: {out.stderr.strip()} {log}")
    try:
        yield Postgres(f"postgresql+psycopg2://dam@127.0.0.1:{port}/postgres", port)
    finally:
        subprocess.run(
            [*run_as, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
        )
        shutil.rmtree(base, ignore_errors=True)


@contextmanager
def redis(base: Path):
    """A throw-away Redis server (no persistence); yields its URL."""
    exe = shutil.which("redis-server")
    if not exe:
        raise ServerUnavailable(
            "redis-server is not installed (Debian: apt-get install redis-server; make "
            "test-deps does it)"
        )
    base.mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(base)],
        stdout=open(base / "redis.log", "wb"),
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        _wait_port(port, 30, proc)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


class Worker:
    """A `dam worker` process ("a machine"), in a process group of its own so that it can be
    killed whole, as a machine that loses power."""

    def __init__(self, name: str, queues: str, env: dict, cwd: Path, log: Path):
        self.name, self.log = name, log
        self.proc = subprocess.Popen(
            [str(BIN / "dam"), "worker", "-q", queues, "-n", name],
            env=env,
            cwd=cwd,
            stdout=open(log, "wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_ready(self, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if " ready." in self.text():
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker {self.name} exited:\n{self.text()[-3000:]}")
            time.sleep(0.1)
        raise RuntimeError(f"worker {self.name} not ready after {timeout_s} s:\n{self.text()}")

    def kill(self) -> None:
        """SIGKILL to the worker and every process of its group, at once."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(20)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                self.kill()
