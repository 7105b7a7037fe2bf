"""A throwaway PostgreSQL for the tests: ``initdb`` in a temporary folder (trust authentication, loopback only),
started with ``pg_ctl`` on a free port, stopped by its PID; a fresh database per test.

PostgreSQL refuses to run as root: as root, its programs run as the ``postgres`` user (``runuser``), which owns
the folder. After a stop, the postmaster may linger in the process table (a zombie of nobody's): what tells
that it is gone is its PID file and its port, not the process table.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

__all__ = ["BINARIES", "PgServer", "missing"]


def _binaries() -> Path:
    """``$OTELFLOW_PG_BIN``, else the newest Debian PostgreSQL's programs (``/usr/lib/postgresql/<version>/bin``)."""
    if os.environ.get("OTELFLOW_PG_BIN"):
        return Path(os.environ["OTELFLOW_PG_BIN"])
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0
    )
    return found[-1].parent if found else Path("/usr/lib/postgresql/15/bin")


BINARIES = _binaries()


def missing() -> str | None:
    """Why no server can be started here (``None`` when one can)."""
    for program in ("initdb", "pg_ctl", "postgres"):
        if not (BINARIES / program).exists():
            return f"PostgreSQL's {program} is not in {BINARIES} (apt-get install postgresql, or set OTELFLOW_PG_BIN)"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root and runuser is missing: PostgreSQL refuses to run as root"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgServer:
    """One PostgreSQL server; :meth:`start` and :meth:`stop` may alternate (the same port and data)."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="otelflow-pg-"))
        self.data = self.root / "data"
        self.sockets = self.root / "sock"
        self.port = _free_port()
        self._as: list[str] = []
        if os.geteuid() == 0:
            self._as = ["runuser", "-u", "postgres", "--"]
            self.root.chmod(0o755)
        self.sockets.mkdir()
        if self._as:
            shutil.chown(self.root, "postgres")
            shutil.chown(self.sockets, "postgres")
        self._run(BINARIES / "initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync")

    def _run(self, *args: object, timeout: float = 60) -> None:
        done = subprocess.run(
            [*self._as, *map(str, args)], capture_output=True, text=True, timeout=timeout, check=False
        )
        if done.returncode:
            raise RuntimeError(f"{args[0]} failed ({done.returncode}): {done.stderr or done.stdout}")

    @property
    def url(self) -> str:
        """The URL of the ``postgres`` database."""
        return self.url_of("postgres")

    def url_of(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        options = f"-p {self.port} -k {self.sockets} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = self.root / "server.log"
        self._run(BINARIES / "pg_ctl", "-D", self.data, "-l", log, "-o", options, "-w", "-t", "30", "start")
        self._wait(lambda: self._accepts(), "to accept connections")

    def stop(self) -> None:
        """Fast shutdown by the postmaster's PID; returns once its PID file is gone and its port is closed."""
        pid_file = self.data / "postmaster.pid"
        with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
            os.kill(int(pid_file.read_text().split()[0]), signal.SIGINT)
        self._wait(lambda: not pid_file.exists() and not self._accepts(), "to stop")

    def _accepts(self) -> bool:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
            return True
        return False

    @staticmethod
    def _wait(condition: object, what: str, timeout: float = 30.0) -> None:
        assert callable(condition)
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL did not get {what} within {timeout} s")
            time.sleep(0.05)

    def create_database(self) -> str:
        """A new empty database; its URL."""
        import psycopg

        name = f"t_{secrets.token_hex(6)}"
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")  # a generated name: nothing to quote
        return self.url_of(name)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
