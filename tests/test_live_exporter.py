"""Cross-process live streaming: a real worker (LiveExporter) and a real `otelflow serve` in subprocesses."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import httpx
import pytest

from tests.otlp_receivers import HttpReceiver
from tests.viewer.conftest import SseClient, wait_for

WORKER = textwrap.dedent(
    """
    import sys, otelflow
    url, run_id, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
    t = otelflow.configure(service_name="gated-worker", live=url)
    print("ready", flush=True)
    with otelflow.workflow("gated", run_id=run_id) as run:
        print("trace", run.trace_id, flush=True)
        for i in range(steps):
            with otelflow.agent(f"step{i}"):
                print("waiting", i, flush=True)
                if sys.stdin.readline().strip() != "go":
                    raise SystemExit("gate closed")
            run.progress(completed=i + 1, total=steps)
    t.force_flush(10_000)
    exporter = t.sink
    print("done", exporter.dropped, flush=True)
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Serve:
    """`otelflow serve` in a subprocess on a fixed port and SQLite file, so it can be killed and restarted."""

    def __init__(self, port: int, db: Path, *extra: str) -> None:
        self.port = port
        self.db = db
        self.extra = extra
        self.proc: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Serve:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "otelflow.cli",
                "serve",
                "--port",
                str(self.port),
                "--db",
                str(self.db),
                *self.extra,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert "listening on" in line, line
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()


class Worker:
    def __init__(self, url: str, run_id: str, steps: int, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WORKER, url, run_id, str(steps)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        assert self.expect("ready")
        self.trace_id = self.expect("trace").split()[1]

    @property
    def stdin(self) -> IO[str]:
        assert self.proc.stdin is not None
        return self.proc.stdin

    def expect(self, prefix: str) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.startswith(prefix), f"expected {prefix!r}, got {line!r}"
        return line.strip()

    def go(self) -> None:
        self.stdin.write("go\n")
        self.stdin.flush()

    def finish(self) -> str:
        out = self.expect("done")
        assert self.proc.wait(30) == 0
        return out

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    server = Serve(free_port(), tmp_path / "viewer.db").start()
    yield server
    server.kill()


def names(events: list[dict[str, Any]], kind: str) -> list[str]:
    return [e["data"]["span"]["name"] for e in events if e.get("event") == kind]


@pytest.mark.slow
def test_first_event_of_a_run_is_seen_while_it_is_still_going(serve: Serve) -> None:
    with SseClient(f"{serve.url}/api/stream", read_timeout=30) as sse:
        worker = Worker(serve.url, "job-live", steps=2)
        try:
            sse.read_until(
                lambda e: e.get("event") == "span.started" and e["data"]["span"]["name"] == "invoke_agent step0"
            )
            # the worker is blocked inside step0: the run is visibly running
            worker.expect("waiting 0")
            run = httpx.get(f"{serve.url}/api/runs/job-live", timeout=5).json()
            assert run["run"]["status"] == "running"
            worker.go()
            worker.expect("waiting 1")
            worker.go()
            worker.finish()
            sse.read_until(lambda e: e.get("event") == "run.ended" and e["data"]["run_id"] == worker.trace_id)
        finally:
            worker.close()
    started = names(sse.events, "span.started")
    assert started[:2] == ["invoke_workflow gated", "invoke_agent step0"]
    assert sorted(names(sse.events, "span.ended")) == sorted(
        ["invoke_agent step0", "invoke_agent step1", "invoke_workflow gated"]
    )


@pytest.mark.slow
def test_killed_worker_becomes_abandoned_within_15_seconds(serve: Serve) -> None:
    worker = Worker(serve.url, "job-kill", steps=3)
    try:
        worker.expect("waiting 0")
        wait_for(
            lambda: httpx.get(f"{serve.url}/api/runs/job-kill", timeout=5).status_code == 200, what="the run to appear"
        )
        with SseClient(f"{serve.url}/api/runs/job-kill/stream", read_timeout=30) as sse:
            worker.proc.send_signal(signal.SIGKILL)
            killed = time.monotonic()
            sse.read_until(lambda e: e.get("event") == "run.ended")
            took = time.monotonic() - killed
    finally:
        worker.close()
    assert took <= 15.0
    run = httpx.get(f"{serve.url}/api/runs/job-kill", timeout=5).json()
    assert run["run"]["status"] == "abandoned"
    assert {s["status"] for s in run["spans"]} == {"abandoned"}
    # they ran at least until the worker was last heard from: bars and the run's duration stop there
    assert all(s["end_time"] is not None and s["duration_ms"] >= 0 for s in run["spans"])
    assert run["run"]["end_time"] is not None


@pytest.mark.slow
def test_viewer_killed_and_restarted_mid_run(serve: Serve) -> None:
    # an earlier, finished run: history that must survive the restart
    early = Worker(serve.url, "job-early", steps=1)
    early.expect("waiting 0")
    early.go()
    early.finish()
    early.close()

    worker = Worker(serve.url, "job-restart", steps=3)
    try:
        worker.expect("waiting 0")
        wait_for(lambda: httpx.get(f"{serve.url}/api/runs/job-restart", timeout=5).status_code == 200, what="run")
        serve.kill()  # the viewer dies while the worker is inside step0
        worker.go()  # the worker carries on regardless
        worker.expect("waiting 1")
        serve.start()

        def reconnected() -> bool:
            # step1 started while the viewer was down: only the worker's resync after its backoff brings it here.
            # Waiting for it keeps the rest from racing the backoff (a worker that exits while its circuit is
            # open gets one attempt at shutdown, which a slow restart can miss).
            spans = httpx.get(f"{serve.url}/api/runs/job-restart", timeout=5).json()["spans"]
            return "invoke_agent step1" in {s["name"] for s in spans}

        wait_for(reconnected, timeout=20, what="the worker to reconnect to the restarted viewer")
        with SseClient(f"{serve.url}/api/runs/job-restart/stream", read_timeout=30) as sse:
            worker.go()
            worker.expect("waiting 2")
            worker.go()
            out = worker.finish()
            events = sse.read_all()  # the run stream closes when the run ends
    finally:
        worker.close()
    assert out == "done 0"  # nothing dropped by the live exporter
    run = httpx.get(f"{serve.url}/api/runs/job-restart", timeout=5).json()
    assert run["run"]["status"] == "ok"
    assert sorted(s["name"] for s in run["spans"]) == [
        "invoke_agent step0",
        "invoke_agent step1",
        "invoke_agent step2",
        "invoke_workflow gated",
    ]
    assert {s["status"] for s in run["spans"]} == {"ok"}
    assert "invoke_agent step2" in names(events, "span.ended")
    assert events[-1]["event"] == "run.ended"
    history = httpx.get(f"{serve.url}/api/runs", timeout=5).json()["runs"]
    assert {r["otelflow_run_id"] for r in history} >= {"job-early", "job-restart"}


@pytest.mark.slow
def test_dead_viewer_changes_nothing_for_the_workflow_or_otlp_export() -> None:
    receiver = HttpReceiver()
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens here
    try:
        worker = Worker(dead, "job-dead", steps=2, env={"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url})
        worker.expect("waiting 0")
        worker.go()
        worker.expect("waiting 1")
        worker.go()
        worker.finish()
        worker.close()
        spans = receiver.wait_for(3)
        assert sorted(s.name for s in spans) == ["invoke_agent step0", "invoke_agent step1", "invoke_workflow gated"]
    finally:
        receiver.close()


@pytest.mark.slow
def test_token_protected_viewer(tmp_path: Path) -> None:
    server = Serve(free_port(), tmp_path / "t.db", "--token", "s3cret").start()
    try:
        assert httpx.get(f"{server.url}/api/runs", timeout=5).status_code == 401
        worker = Worker(server.url, "job-token", steps=1, env={"OTELFLOW_TOKEN": "s3cret"})
        worker.expect("waiting 0")
        worker.go()
        worker.finish()
        worker.close()
        runs = httpx.get(f"{server.url}/api/runs", headers={"Authorization": "Bearer s3cret"}, timeout=5).json()
        assert [r["otelflow_run_id"] for r in runs["runs"]] == ["job-token"]
    finally:
        server.kill()


def test_a_worker_naming_its_run_after_an_undecodable_file_keeps_every_page(tmp_path: Path) -> None:
    server = Serve(free_port(), tmp_path / "v.db").start()
    script = textwrap.dedent(
        """
        import os, sys, otelflow
        t = otelflow.configure(service_name=os.fsdecode(b"svc-\\xfe"), live=sys.argv[1])
        with otelflow.workflow(os.fsdecode(b"report-\\xff.csv"), run_id="job-fs") as run:
            run.set_attribute("file", os.fsdecode(b"/data/\\xff.csv"))
        assert t.force_flush(10_000)
        """
    )
    try:
        done = subprocess.run(
            [sys.executable, "-c", script, server.url], capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 0, done.stderr
        runs = httpx.get(f"{server.url}/api/runs", timeout=5)
        assert runs.status_code == 200
        (run,) = runs.json()["runs"]
        assert (run["name"], run["service"]) == ("invoke_workflow report-\ufffd.csv", "svc-\ufffd")
        detail = httpx.get(f"{server.url}/api/runs/job-fs", timeout=5)
        assert detail.status_code == 200
        assert detail.json()["spans"][0]["attributes"]["file"] == "/data/\ufffd.csv"
    finally:
        server.kill()
