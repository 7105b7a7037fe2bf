"""`otelflow serve`: refuses unsafe binds and unusable databases with clear messages, stops on SIGINT."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from otelflow import attributes as A
from otelflow.otlp_json import to_otlp_json
from otelflow.viewer import ViewerConfigError, serve
from otelflow.viewer.history import SqliteHistory
from tests.conftest import wait_for
from tests.test_live_exporter import Serve, free_port
from tests.viewer.conftest import record, span_id, trace_id


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


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[str]]]:
    """`otelflow serve` processes to stop at the end (SIGINT, as Ctrl-C)."""
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def start_serve(procs: list[subprocess.Popen[str]], *args: str, env: dict[str, str] | None = None) -> str:
    """Start `otelflow serve --port 0 ARGS`; its URL once it listens."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "otelflow.cli", "serve", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
    )
    procs.append(proc)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert "listening on" in line, line + proc.stdout.read()
    return line.split("listening on", 1)[1].strip()


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


def test_allowed_host_adds_names_the_viewer_answers_to(started: list[subprocess.Popen[str]]) -> None:
    url = start_serve(started, "--db", ":memory:", "--allowed-host", "Viewer.Example", "--allowed-host", "[fd00::1]")
    port = url.rsplit(":", 1)[1]
    for host in (f"viewer.example:{port}", "VIEWER.example", f"[fd00::1]:{port}", f"127.0.0.1:{port}", "localhost"):
        assert httpx.get(f"{url}/healthz", headers={"Host": host}, timeout=5).status_code == 200, host
    refused = httpx.get(f"{url}/healthz", headers={"Host": f"other.example:{port}"}, timeout=5)
    assert refused.status_code == 400
    assert "--allowed-host" in refused.json()["error"]
    for bad in ("viewer.example:8080", "http://viewer.example"):
        done = run_cli("serve", "--port", "0", "--db", ":memory:", "--allowed-host", bad)
        assert done.returncode == 2, bad
        assert "--allowed-host" in done.stderr


def test_a_port_in_use_is_one_line_saying_what_to_do() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = run_cli("serve", "--port", str(port), "--db", ":memory:")
    assert done.returncode == 2
    line = one_line(done)
    assert f"port {port}" in line
    assert "in use" in line
    assert "--port" in line


@pytest.mark.parametrize("port", ["99999", "-1"])
def test_a_port_out_of_range_is_a_usage_error(port: str) -> None:
    done = run_cli("serve", "--port", port, "--db", ":memory:")
    assert done.returncode == 2
    assert "argument --port" in done.stderr
    assert "0..65535" in done.stderr
    assert "Traceback" not in done.stderr


def test_an_explicit_database_folder_must_exist(tmp_path: Path) -> None:
    missing = tmp_path / "typo" / "deeper"
    done = run_cli("serve", "--port", "0", "--db", str(missing / "otelflow.db"))
    assert done.returncode == 2
    assert str(missing) in one_line(done)
    assert not (tmp_path / "typo").exists()
    done = run_cli("serve", "--port", "0", env={"OTELFLOW_DB": str(missing / "otelflow.db")})
    assert done.returncode == 2
    assert str(missing) in one_line(done)
    assert not (tmp_path / "typo").exists()
    done = run_cli("serve", "--port", "0", "--db", "/proc/nope/x.db")
    assert done.returncode == 2
    assert "/proc/nope" in one_line(done)


def test_the_default_database_folder_is_created(tmp_path: Path, started: list[subprocess.Popen[str]]) -> None:
    data = tmp_path / "xdg"
    url = start_serve(started, env={"XDG_DATA_HOME": str(data), "OTELFLOW_DB": ""})
    assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
    assert (data / "otelflow" / "otelflow.db").is_file()


def test_a_database_with_damaged_pages_is_one_line(tmp_path: Path) -> None:
    db = tmp_path / "history.db"

    async def fill() -> None:
        store = SqliteHistory(db)
        store.open()
        for _ in range(120):  # running runs: their spans are what a starting viewer reads first
            trace, root = trace_id(), span_id()
            with store.batch():
                store.put_run({"trace_id": trace, "status": "running", "start_time_ns": time.time_ns()})
                store.put_span(record(trace, root, "invoke_workflow wf", kind=A.KIND_WORKFLOW))
                for _ in range(10):
                    store.put_span(record(trace, span_id(), "step", parent=root, attributes={"x": "y" * 300}))
        await store.flush()
        store.close()

    asyncio.run(fill())
    size = db.stat().st_size
    assert size > 500_000
    with db.open("r+b") as f:  # what a failing disk or a copy cut short leaves behind
        f.seek(size // 2)
        f.write(b"\xde\xad\xbe\xef" * 4096)
    done = run_cli("serve", "--port", "0", "--db", str(db))
    assert done.returncode == 2
    line = one_line(done)
    assert str(db) in line
    assert "move it away" in line
    assert "--db" in line


def _pages_in_use(db: Path) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        pages = conn.execute("PRAGMA page_count").fetchone()[0] - conn.execute("PRAGMA freelist_count").fetchone()[0]
        return int(pages) * int(conn.execute("PRAGMA page_size").fetchone()[0])
    finally:
        conn.close()


def test_max_db_mb_holds_the_history_under_its_size(tmp_path: Path, started: list[subprocess.Popen[str]]) -> None:
    """About 4 MB of runs written to a history limited to 1 MB: the oldest ended runs leave as it fills, the
    newest stay, and the pages in use never pass the limit by more than one request's worth."""
    db = tmp_path / "h.db"
    url = start_serve(started, "--db", str(db), "--max-db-mb", "1")
    limit = 1024 * 1024
    written, largest = 0, 0
    posted: list[str] = []
    for batch in range(40):
        runs = []
        for i in range(10):
            trace, root = trace_id(), span_id()
            posted.append(trace)
            runs.append(record(trace, root, "wf", kind=A.KIND_WORKFLOW, run_id=f"job-{batch}-{i}", ended=True))
            runs += [
                record(trace, span_id(), "step", parent=root, ended=True, attributes={"out": "x" * 2000})
                for _ in range(4)
            ]
        body = json.dumps(to_otlp_json(runs))
        written += len(body)
        response = httpx.post(
            f"{url}/v1/traces", content=body, headers={"content-type": "application/json"}, timeout=10
        )
        assert response.status_code == 200
        spans = len(posted) * 5
        wait_for(
            lambda n=spans: httpx.get(f"{url}/healthz", timeout=5).json()["store"]["spans"] >= n,
            what="the request to be stored",
        )
        largest = max(largest, _pages_in_use(db))
    assert written > 3 * limit
    assert largest <= limit + 256 * 1024, f"{largest} bytes in use with --max-db-mb 1"
    store = httpx.get(f"{url}/healthz", timeout=5).json()["store"]
    assert store["trimmed_for_size"] > 0
    listed = httpx.get(f"{url}/api/runs", params={"limit": 500}, timeout=5).json()
    kept = [run["trace_id"] for run in listed["runs"]]
    assert listed["total"] < len(posted)
    assert kept[0] == posted[-1]  # the newest stay
    assert posted[0] not in kept  # the oldest left


def test_max_db_mb_must_be_a_number(tmp_path: Path) -> None:
    done = run_cli("serve", "--port", "0", "--db", str(tmp_path / "h.db"), "--max-db-mb", "lots")
    assert done.returncode == 2
    assert "not a number of megabytes" in done.stderr


@pytest.mark.parametrize(
    ("url", "expect"),
    [
        ("redis://127.0.0.1:{port}/0", "cannot reach the broker at 127.0.0.1:{port}/0"),
        ("http://127.0.0.1:{port}/", "not one Redis understands"),
    ],
)
def test_a_broker_that_cannot_be_used_is_one_line(url: str, expect: str) -> None:
    port = free_port()  # nothing listens there
    done = run_cli("serve", "--port", "0", "--db", ":memory:", "--broker", url.format(port=port))
    assert done.returncode == 2
    assert expect.format(port=port) in one_line(done)


def test_a_broker_password_never_reaches_the_error(monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    done = run_cli(
        "serve", "--port", "0", "--db", ":memory:", env={"OTELFLOW_BROKER": f"redis://:s3cr3t@127.0.0.1:{port}/0"}
    )
    assert done.returncode == 2
    line = one_line(done)
    assert "cannot reach the broker" in line
    assert "s3cr3t" not in line


def test_a_postgresql_history_that_cannot_be_reached_is_one_line() -> None:
    port = free_port()  # nothing listens there
    done = run_cli("serve", "--port", "0", "--db", f"postgresql://otelflow:pw@127.0.0.1:{port}/otelflow")
    assert done.returncode == 2
    line = one_line(done)
    assert f"127.0.0.1:{port}" in line
    assert "pw" not in line.replace("postgresql", "")
