"""Debian's nginx on a free loopback port, configured from ``collector-config/nginx.conf``.

:func:`render_config` rewrites the shipped file for one test: the upstream servers and the listen port, and the
paths that need root or a container (user, pid, logs, temp folders) moved into a prefix folder; everything else —
buffering, timeouts, retries, headers — is the shipped configuration, as a deployment runs it. Each rewrite must
match exactly once, so a change to the shipped file that a test would silently stop covering fails loudly.

:class:`Nginx` runs it in the foreground (``daemon off``) and stops it by its process id. Without nginx the tests
skip, except under CI (``$CI`` set), where they fail: CI must run them.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "collector-config" / "nginx.conf"
NGINX = os.environ.get("OTELFLOW_NGINX", "/usr/sbin/nginx")
UPSTREAM = "otelflow_viewers"


def nginx_binary() -> str:
    """The nginx executable; skips the test without one (fails under CI)."""
    found = NGINX if Path(NGINX).exists() else shutil.which("nginx")
    if found is None:
        reason = f"no nginx at {NGINX} (apt-get install nginx)"
        if os.environ.get("CI"):
            pytest.fail(f"nginx tests must run in CI: {reason}")
        pytest.skip(reason)
    return found


def _sub(pattern: str, repl: str, text: str) -> str:
    out, count = re.subn(pattern, lambda _: repl, text, flags=re.M)
    assert count == 1, f"collector-config/nginx.conf: expected one match of {pattern!r}, found {count}"
    return out


def render_config(upstreams: Sequence[str], port: int, prefix: Path, source: Path = SHIPPED) -> str:
    """The shipped config with ``upstreams`` (``host:port`` each) as the replicas and ``port`` as the listen
    port, on 127.0.0.1, with pid, logs and temp files under ``prefix``, runnable by the current user."""
    assert upstreams, "at least one upstream server"
    text = source.read_text(encoding="utf-8")
    # the servers of the upstream block, keeping their parameters (max_fails, fail_timeout)
    block = re.search(rf"^    upstream {UPSTREAM} \{{\n(.*?)^    \}}", text, re.S | re.M)
    assert block is not None, f"collector-config/nginx.conf has no upstream {UPSTREAM}"
    lines = block.group(1).splitlines(keepends=True)
    servers = [i for i, line in enumerate(lines) if re.match(r"\s*server \S+", line)]
    assert servers, f"upstream {UPSTREAM} lists no server"
    first = re.fullmatch(r"(\s*)server \S+((?: [^;]*)?);\n", lines[servers[0]])
    assert first is not None, lines[servers[0]]
    indent, params = first.groups()
    lines[servers[0]] = "".join(f"{indent}server {u}{params};\n" for u in upstreams)
    body = "".join(line for i, line in enumerate(lines) if i not in servers[1:])
    text = text[: block.start(1)] + body + text[block.end(1) :]
    # a master that is not root cannot switch users; as root, workers run as root so they may write the prefix
    user = "user root;" if os.geteuid() == 0 else "# user: the current one"
    text = _sub(r"^user [^;]*;.*$", user, text)
    text = _sub(r"^pid [^;]*;.*$", f"pid {prefix / 'nginx.pid'};\ndaemon off;", text)
    text = _sub(r"^error_log [^;]*;.*$", f"error_log {prefix / 'logs' / 'error.log'} info;", text)
    temp = "".join(
        f"\n    {kind}_temp_path {prefix / 'temp' / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    text = _sub(r"^    access_log [^;]*;.*$", f"    access_log {prefix / 'logs' / 'access.log'};{temp}", text)
    text = _sub(r"^        listen \d+;.*$", f"        listen 127.0.0.1:{port};", text)
    return text


def prepare_prefix(prefix: Path) -> None:
    for sub in ("logs", "temp", "conf"):
        (prefix / sub).mkdir(parents=True, exist_ok=True)


def check_config(text: str, prefix: Path) -> subprocess.CompletedProcess[str]:
    """``nginx -t`` of ``text`` with ``prefix`` as its prefix folder."""
    prepare_prefix(prefix)
    conf = prefix / "conf" / "nginx.conf"
    conf.write_text(text, encoding="utf-8")
    return subprocess.run(
        [nginx_binary(), "-t", "-p", str(prefix), "-e", str(prefix / "logs" / "error.log"), "-c", str(conf)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Nginx:
    """nginx in front of ``upstreams`` on a free loopback port: ``start()``, ``url``, ``stop()``.

    ``upstreams`` are ``host:port`` of the replicas (``127.0.0.1:8081``). Runs in the foreground as a child of the
    test (``daemon off``), so its process id is the master's, which ``stop()`` signals.
    """

    def __init__(self, upstreams: Sequence[str], prefix: Path) -> None:
        self.upstreams = list(upstreams)
        self.prefix = prefix
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def error_log(self) -> str:
        path = self.prefix / "logs" / "error.log"
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""

    def start(self, timeout: float = 10.0) -> Nginx:
        binary = nginx_binary()
        for _attempt in range(5):  # a free port can be taken between picking it and nginx binding it
            self.port = free_port()
            text = render_config(self.upstreams, self.port, self.prefix)
            checked = check_config(text, self.prefix)
            assert checked.returncode == 0, checked.stderr
            conf = self.prefix / "conf" / "nginx.conf"
            self.proc = subprocess.Popen(
                [binary, "-p", str(self.prefix), "-e", str(self.prefix / "logs" / "error.log"), "-c", str(conf)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            if self._wait_listening(timeout):
                return self
            self._reap()
            if "Address already in use" not in self.error_log:
                break
        raise AssertionError(f"nginx did not start:\n{self.error_log}")

    def _wait_listening(self, timeout: float) -> bool:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return True
            except OSError:
                time.sleep(0.02)
        return False

    def _reap(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        if self.proc.stderr is not None:
            self.proc.stderr.close()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the master by its process id (its workers exit with it): SIGTERM, nginx's fast shutdown (a
        graceful one would wait for open streams), then SIGKILL after ``timeout``."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout)
        self._reap()

    def __enter__(self) -> Nginx:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
