"""`otelflow serve`: refuses unsafe binds and unusable databases with clear messages, stops on SIGINT."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.test_live_exporter import Serve, free_port
from viewer.app import ViewerConfigError, serve


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "otelflow.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **(env or {})},
    )


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    """The whole of a refused start's standard error, which must be a single line."""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


def test_non_loopback_bind_without_token_is_refused() -> None:
    done = run_cli("serve", "--host", "0.0.0.0", "--port", "0", "--db", ":memory:")
    assert done.returncode == 2
    assert "refusing to listen on 0.0.0.0" in done.stderr
    assert "--token" in done.stderr


def test_corrupt_database_is_a_clear_error(tmp_path: Path) -> None:
    db = tmp_path / "broken.db"
    db.write_bytes(b"this is not a database" * 100)
    done = run_cli("serve", "--port", "0", "--db", str(db))
    assert done.returncode == 2
    assert str(db) in done.stderr


@pytest.mark.slow
def test_serve_answers_and_stops_on_sigint(tmp_path: Path) -> None:
    server = Serve(free_port(), tmp_path / "v.db").start()
    try:
        assert httpx.get(f"{server.url}/healthz", timeout=5).status_code == 200
        assert server.proc is not None
        server.proc.send_signal(signal.SIGINT)
        assert server.proc.wait(15) == 0
    finally:
        server.kill()


def test_a_token_of_only_whitespace_is_refused() -> None:
    done = run_cli("serve", "--port", "0", "--db", ":memory:", "--token", "   ")
    assert done.returncode == 2
    assert "only whitespace" in one_line(done)
    done = run_cli("serve", "--port", "0", "--db", ":memory:", env={"OTELFLOW_TOKEN": " \t "})
    assert done.returncode == 2
    assert "--token" in one_line(done)
    with pytest.raises(ViewerConfigError, match="whitespace"):
        serve("0.0.0.0", 0, db=":memory:", token="  ")
