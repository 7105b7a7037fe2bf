"""``otelflow demo`` and ``otelflow run`` in subprocesses: their viewer streams the runs over SSE; Ctrl-C stops them.

Exit status on SIGINT: ``demo`` 0 (a requested stop); ``run`` the script's status once it finished, 130 when
the signal interrupted the script.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from otelflow.viewer.app import create_app
from tests.viewer.conftest import Viewer, wait_for

pytestmark = pytest.mark.slow

DEADLINE_S = 20.0


class Proc:
    """An ``otelflow`` subprocess whose output lines are collected as they come."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        full_env.pop("OTELFLOW_VIEWER_URL", None)  # the embedded viewer unless a test says otherwise
        full_env.update(env or {})
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "otelflow.cli", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=full_env,
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self.readers = [
            threading.Thread(target=self._collect, args=(stream, lines), daemon=True)
            for stream, lines in ((self.popen.stdout, self.out), (self.popen.stderr, self.err))
        ]
        for reader in self.readers:
            reader.start()

    @staticmethod
    def _collect(stream: Any, lines: list[str]) -> None:
        for line in stream:
            lines.append(line.rstrip("\n"))

    def text(self) -> str:
        return "\n".join(self.out) + "\n--- stderr ---\n" + "\n".join(self.err)

    def find(self, pattern: str) -> re.Match[str]:
        def found() -> re.Match[str] | None:
            for line in [*self.out, *self.err]:
                match = re.search(pattern, line)
                if match:
                    return match
            if self.popen.poll() is not None:
                raise AssertionError(f"exited ({self.popen.returncode}) before printing {pattern!r}:\n{self.text()}")
            return None

        return wait_for(found, DEADLINE_S, f"{pattern!r} in the output")

    def interrupt(self) -> tuple[int, float]:
        """SIGINT; returns the exit status and how long the process took to exit."""
        started = time.monotonic()
        self.popen.send_signal(signal.SIGINT)
        code = self.popen.wait(DEADLINE_S)
        return code, time.monotonic() - started

    def close(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(5)
        for reader in self.readers:
            reader.join(5)
        for stream in (self.popen.stdout, self.popen.stderr):
            if stream is not None:
                stream.close()


class SseClient:
    """Reads ``/api/stream`` from the start of the viewer's history (``last_event_id=<epoch>.0``) in a thread."""

    def __init__(self, base_url: str) -> None:
        epoch = httpx.get(f"{base_url}/healthz", timeout=5).json()["epoch"]
        self.url = f"{base_url}/api/stream?last_event_id={epoch}.0"
        self.events: list[dict[str, Any]] = []
        self.closed = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            with httpx.stream("GET", self.url, timeout=httpx.Timeout(5, read=None)) as response:
                for line in response.iter_lines():
                    if line.startswith("data:"):
                        self.events.append(json.loads(line[5:]))
        except httpx.HTTPError:
            pass
        finally:
            self.closed.set()

    def of_type(self, type_: str) -> list[dict[str, Any]]:
        return [e for e in list(self.events) if e["type"] == type_]

    def wait(self, condition: Any, what: str) -> Any:
        return wait_for(condition, DEADLINE_S, what)


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for proc in started:
        proc.close()


def ended_statuses(sse: SseClient) -> list[str]:
    return [e["run"]["status"] for e in sse.of_type("run.ended")]


# --- otelflow demo --------------------------------------------------------------------------------------------


def test_demo_streams_every_kind_of_run_and_stops_on_sigint(procs: list[Proc]) -> None:
    demo = Proc("demo", "--port", "0", "--interval", "0.15")
    procs.append(demo)
    url = demo.find(r"viewer is running at (http://127\.0\.0\.1:\d+)").group(1)
    assert demo.find(r"curl -N (\S+)").group(1) == f"{url}/api/stream"
    sse = SseClient(url)
    # 8 runs cover the rotation: ok runs, a failing one, a cancelled one
    sse.wait(lambda: len(sse.of_type("run.ended")) >= 8, "eight runs ended")
    statuses = ended_statuses(sse)
    assert "ok" in statuses
    assert "error" in statuses
    assert "cancelled" in statuses, "a cancelled run is a state of its own, not a failure"
    names = {e["span"]["name"] for e in sse.of_type("span.started")}
    assert {"invoke_agent section_writer", "execute_tool search", "invoke_agent analyst"} <= names
    # the support triage's model calls: kind llm, their answers streamed while they run, then ended whole
    calls = [e["span"] for e in sse.of_type("span.ended") if e["span"]["name"] == "chat demo-chat-mini"]
    assert len(calls) >= 2
    assert {c["kind"] for c in calls} == {"llm"}
    answers = [c["attributes"]["output.value"] for c in calls]
    assert any(len(a.split()) > 40 for a in answers), "the drafted reply"
    partials = [
        e["span"]["attributes"]["otelflow.llm.output.partial"]
        for e in sse.of_type("span.started") + sse.of_type("span.updated")
        if "otelflow.llm.output.partial" in e["span"]["attributes"]
    ]
    assert partials, "the streamed answer is in the stream before the call ends"
    assert all(any(a.startswith(p) for a in answers) for p in partials)
    assert any(e["span"]["status"] == "running" for e in sse.of_type("span.started"))
    assert demo.find(r"run cancelled +invoke_workflow flaky_agent +demo-\d{4} ")
    # every run has a readable run id, printed with its URL, by which the viewer finds it
    trace_id = demo.find(r"run started +invoke_workflow content_pipeline +demo-0001 +\S+/runs/([0-9a-f]{32})$").group(1)
    detail = httpx.get(f"{url}/api/runs/demo-0001", timeout=5)
    assert detail.status_code == 200, detail.text
    assert detail.json()["run"]["run_id"] == trace_id
    assert {e["run"]["otelflow_run_id"] for e in sse.of_type("run.ended")} >= {f"demo-{i:04d}" for i in range(1, 9)}
    code, took = demo.interrupt()
    assert code == 0, demo.text()
    assert took < 12
    assert sse.closed.wait(5)
    assert sse.of_type("shutdown")
    assert re.search(r"stopped after \d+ runs", demo.text())


def test_demo_runs_n_runs_and_exits(procs: list[Proc]) -> None:
    demo = Proc("demo", "--port", "0", "--interval", "0.01", "--runs", "8")
    procs.append(demo)
    assert demo.popen.wait(DEADLINE_S) == 0, demo.text()
    ended = [line.split() for line in demo.out if line.strip().startswith("run ") and "started" not in line]
    assert sorted(words[1] for words in ended) == ["cancelled", "error"] + ["ok"] * 6
    assert sorted(words[4] for words in ended) == [f"demo-{i:04d}" for i in range(1, 9)]  # run, outcome, name (2)
    assert "invoke_workflow support_triage" in demo.text()
    assert demo.out[-1] == "otelflow demo: stopped after 8 runs."


def test_demo_says_what_to_do_when_the_port_is_taken(procs: list[Proc]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        demo = Proc("demo", "--port", str(busy.getsockname()[1]))
        procs.append(demo)
        assert demo.popen.wait(DEADLINE_S) == 2
    assert "is in use" in demo.text()
    assert "--port" in demo.text()


# --- otelflow run ---------------------------------------------------------------------------------------------

SCRIPT = """
import sys
import time
from pathlib import Path

from otelflow.engine import Flow, Node

class Hello(Node):
    kind = "agent"
    def post(self, shared, prep_result, exec_result):
        shared["greeting"] = "hi"

class WaitForGo(Node):
    def exec(self, prep_result):
        go, deadline = Path(sys.argv[1]), time.monotonic() + 30
        while not go.exists():
            if time.monotonic() > deadline:
                raise TimeoutError("no go")
            time.sleep(0.01)

hello = Hello()
hello >> WaitForGo(name="wait_for_go")
Flow(start=hello, name="scripted").run({})
print("argv", sys.argv[1:], "main" if __name__ == "__main__" else __name__)
sys.exit(int(sys.argv[2]))
"""


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "script.py"
    path.write_text(textwrap.dedent(SCRIPT))
    return path


def test_run_streams_live_then_keeps_serving_until_sigint(procs: list[Proc], script: Path, tmp_path: Path) -> None:
    go = tmp_path / "go"
    # stdin is not a terminal, so only the flag keeps the viewer serving after the script
    run = Proc("run", "--keep-serving", "--port", "0", str(script), str(go), "3")
    procs.append(run)
    url = run.find(r"viewer at (http://127\.0\.0\.1:\d+)").group(1)
    sse = SseClient(url)
    started = sse.wait(
        lambda: [e for e in sse.of_type("span.started") if e["span"]["name"] == "wait_for_go"], "the node to start"
    )
    trace_id = started[0]["run_id"]
    assert run.find(r"run started +invoke_workflow scripted +(\S+)").group(1) == f"{url}/runs/{trace_id}"
    assert not sse.of_type("run.ended"), "the run is live, not replayed after the fact"
    go.touch()
    sse.wait(lambda: ended_statuses(sse) == ["ok"], "the run to end")
    run.find(r"exited with status 3; the viewer keeps serving .* \(Ctrl-C to stop\)")
    assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
    assert f"argv ['{go}', '3'] main" in run.out
    code, took = run.interrupt()
    assert code == 3, run.text()
    assert took < 12
    assert sse.closed.wait(5)
    assert sse.of_type("shutdown")


def test_run_interrupted_script_ends_its_spans_and_exits_130(procs: list[Proc], script: Path, tmp_path: Path) -> None:
    run = Proc("run", "--port", "0", str(script), str(tmp_path / "never"), "0")  # stdin is not a TTY
    procs.append(run)
    url = run.find(r"viewer at (http://127\.0\.0\.1:\d+)").group(1)
    sse = SseClient(url)
    sse.wait(lambda: [e for e in sse.of_type("span.started") if e["span"]["name"] == "wait_for_go"], "the node")
    code, took = run.interrupt()
    assert code == 130, run.text()
    assert took < 12
    ended = {e["span"]["name"]: e["span"]["status"] for e in sse.of_type("span.ended")}
    # Ctrl-C stops the run: cancelled, not failed
    assert ended == {"invoke_agent Hello": "ok", "wait_for_go": "cancelled", "invoke_workflow scripted": "cancelled"}
    assert ended_statuses(sse) == ["cancelled"]
    assert run.find(r"run cancelled +invoke_workflow scripted ")
    assert sse.closed.wait(5)
    assert sse.of_type("shutdown")


def test_run_streams_to_a_separate_viewer_and_exits_with_the_script(procs: list[Proc], script: Path) -> None:
    viewer = Viewer(create_app()).start()
    try:
        go = script.parent / "go"
        go.touch()
        run = Proc("run", "--viewer", viewer.url, str(script), str(go), "0")
        procs.append(run)
        assert run.popen.wait(DEADLINE_S) == 0, run.text()
        assert run.find(r"run started +invoke_workflow scripted +(\S+)").group(1).startswith(f"{viewer.url}/runs/")
        runs = wait_for(lambda: [r for r in viewer.call(viewer.hub.runs) if r.status == "ok"], 10, "the run")
        assert [(r.name, r.service) for r in runs] == [("invoke_workflow scripted", "script")]
    finally:
        viewer.stop()


def test_run_streams_to_the_replica_that_answers(procs: list[Proc], script: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"  # nothing listens here once the socket is closed
    viewer = Viewer(create_app()).start()
    try:
        go = script.parent / "go"
        go.touch()
        run = Proc("run", "--viewer", f"{dead}, {viewer.url}", str(script), str(go), "0")
        procs.append(run)
        assert run.popen.wait(DEADLINE_S) == 0, run.text()
        assert f"streaming to the viewer replicas {dead}, {viewer.url}" in run.text()
        runs = wait_for(lambda: [r for r in viewer.call(viewer.hub.runs) if r.status == "ok"], 10, "the run")
        assert [(r.name, r.service) for r in runs] == [("invoke_workflow scripted", "script")]
        assert f"live spans go to {viewer.url} now" in run.text()
    finally:
        viewer.stop()


def test_run_refuses_a_viewer_list_with_an_empty_item(procs: list[Proc], script: Path) -> None:
    run = Proc("run", "--viewer", "http://127.0.0.1:8081,,http://127.0.0.1:8082", str(script), "go", "0")
    procs.append(run)
    assert run.popen.wait(DEADLINE_S) == 2
    assert "an empty item" in run.text()


def test_run_exit_flag_beats_the_environment(procs: list[Proc], script: Path) -> None:
    go = script.parent / "go"
    go.touch()
    run = Proc("run", "--exit", "--port", "0", str(script), str(go), "0", env={"OTELFLOW_RUN_EXIT": "0"})
    procs.append(run)
    assert run.popen.wait(DEADLINE_S) == 0, run.text()
