"""``otelflow tail`` against a real viewer (uvicorn on loopback) and a real workflow in another process.

The rich in-place view is tested in-process with rich's recording console; the subprocess tests use the
non-TTY outputs (``--json`` and plain lines), which is what a pipe sees.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

import pytest
from fastapi import FastAPI
from rich.console import Console

from otelflow import attributes as A
from otelflow.cli.stream import Backoff, SseEvent
from otelflow.cli.tail import Tail
from otelflow.cli.tail_view import STALLED_STYLE, STATUS_GLYPH, LiveView, clean, describe
from otelflow.records import EventRecord
from otelflow.viewer.alerts import parse_rules
from otelflow.viewer.app import create_app, make_server
from tests.viewer.conftest import Viewer, record, span_id, trace_id, wait_for

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
EVIL = "[bold]x</script><script>alert(1)</script>"

# A workflow in its own process that waits for "go" on stdin at each checkpoint (no sleeps, no timing).
WORKER = r"""
import sys
import otelflow

url, run_id = sys.argv[1], sys.argv[2]
telemetry = otelflow.configure(service_name="tail-worker", live=url, otlp=False)

def checkpoint(tag):
    print(tag, flush=True)
    if sys.stdin.readline().strip() != "go":
        sys.exit(3)

with otelflow.workflow("pipeline", run_id=run_id):
    otelflow.progress(10, "starting")
    with otelflow.agent("research " + sys.argv[3]):
        otelflow.log("warning", "looking at " + sys.argv[3])
        checkpoint("a1")
    with otelflow.agent("writer"):
        with otelflow.tool("search"):
            otelflow.progress(completed=1, total=2, message="half")
        otelflow.progress(completed=1, total=3, message="a third")
        checkpoint("a2")
    otelflow.progress(100, "done")
telemetry.shutdown()
print("done", flush=True)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class PortViewer(Viewer):
    """A viewer on a chosen port, so that a restart comes back at the same address."""

    def __init__(self, app: FastAPI, port: int) -> None:
        super().__init__(app)
        self.server = make_server(app, "127.0.0.1", port, ready_callback=self._on_ready, graceful_s=2)
        self.thread = threading.Thread(target=self.server.run, name="viewer", daemon=True)


class Proc:
    """A subprocess whose stdout and stderr lines are collected by threads; waits are on conditions."""

    def __init__(self, args: list[str], stdin: bool = False) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT), "TERM": "dumb"}
        self.proc = subprocess.Popen(
            args,
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self.lock = threading.Lock()
        for stream, into in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            threading.Thread(target=self._pump, args=(stream, into), daemon=True).start()

    def _pump(self, stream: IO[str] | None, into: list[str]) -> None:
        assert stream is not None
        for line in stream:
            with self.lock:
                into.append(line.rstrip("\n"))

    def lines(self) -> list[str]:
        with self.lock:
            return list(self.out)

    def wait_line(self, predicate: Callable[[str], bool], what: str, timeout: float = 15.0) -> str:
        def found() -> str | None:
            return next((line for line in self.lines() if predicate(line)), None)

        try:
            return wait_for(found, timeout, what)
        except AssertionError:
            raise AssertionError(f"{what}; stdout={self.lines()} stderr={self.err}") from None

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def wait(self, timeout: float = 15.0) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def procs() -> Iterator[Callable[..., Proc]]:
    started: list[Proc] = []

    def start(args: list[str], stdin: bool = False) -> Proc:
        p = Proc(args, stdin)
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()


def tail_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "otelflow.cli", "tail", *args]


def worker_cmd(url: str, run_id: str) -> list[str]:
    return [sys.executable, "-c", WORKER, url, run_id, EVIL]


def envelopes(p: Proc) -> list[dict[str, Any]]:
    return [json.loads(line) for line in p.lines() if line.startswith("{")]


def span_name(env: dict[str, Any]) -> str:
    return str((env.get("span") or {}).get("name") or env.get("span_name") or "")


# --------------------------------------------------------------------------------------------------
# Subprocess tests against a real viewer
# --------------------------------------------------------------------------------------------------


def test_json_follows_a_run_across_a_viewer_restart_without_duplicates(
    tmp_path: Path, procs: Callable[..., Proc]
) -> None:
    port, db = free_port(), tmp_path / "viewer.db"
    first = PortViewer(create_app(db=db), port).start()
    url = first.url
    worker = procs(worker_cmd(url, "job-restart"), stdin=True)
    worker.wait_line(lambda s: s == "a1", "the worker reached its first checkpoint")
    tail = procs(tail_cmd("job-restart", "--viewer", url, "--json"))
    tail.wait_line(lambda s: '"otelflow.log"' in s, "tail reported the research agent's log event")

    first.stop()
    tail.wait_line(lambda s: '"type":"shutdown"' in s, "tail saw the viewer shut down")
    worker.send("go")  # research ends, writer and its tool run, while the viewer is away
    worker.wait_line(lambda s: s == "a2", "the worker reached its second checkpoint")

    second = PortViewer(create_app(db=db), port).start()
    try:
        tail.wait_line(lambda s: '"type":"reset"' in s, "tail resumed from a snapshot after the restart")
        tail.wait_line(lambda s: '"type":"span.started"' in s and '"writer' in s, "writer reported", timeout=20)
        worker.send("go")
        assert tail.wait(20) == 0, tail.err  # `tail RUN` ends with its run
        assert worker.wait(10) == 0
    finally:
        second.stop()

    envs = envelopes(tail)
    ids = [e["id"] for e in envs if e.get("id") is not None]
    assert len(ids) == len(set(ids)), "an event was printed twice"
    assert len({i.split(".")[0] for i in ids}) == 2, "events from both viewer processes"
    started = Counter(e["span"]["span_id"] for e in envs if e["type"] == "span.started")
    ended = Counter(e["span"]["span_id"] for e in envs if e["type"] in ("span.ended", "span.abandoned"))
    assert max(started.values()) == 1, started
    assert max(ended.values()) == 1, ended
    names = {span_name(e) for e in envs if e["type"] == "span.ended"}
    assert names == {
        f"invoke_agent research {EVIL}",
        "invoke_agent writer",
        "execute_tool search",
        "invoke_workflow pipeline",
    }
    events = Counter((e["span_id"], e["event"]["name"], e["event"]["time"]) for e in envs if e["type"] == "span.event")
    assert max(events.values()) == 1
    assert [e["type"] for e in envs].count("run.ended") == 1
    assert envs[-1]["type"] == "run.ended"
    assert envs[-1]["run"]["status"] == "ok"
    # raw envelopes: the viewer's own JSON, one per line, with span data untouched
    assert any(EVIL in span_name(e) for e in envs)


def test_plain_lines_kind_filter_ended_run_and_ctrl_c(
    make_viewer: Callable[..., Viewer], procs: Callable[..., Proc]
) -> None:
    viewer = make_viewer()
    plain = procs(tail_cmd("--viewer", viewer.url))
    tools = procs(tail_cmd("--viewer", viewer.url, "--all", "--kind", "tool", "--json"))
    for p in (plain, tools):
        wait_for(lambda p=p: any("following" in line for line in list(p.err)), 10, "tail connected")

    worker = procs(worker_cmd(viewer.url, "job-plain"), stdin=True)
    worker.wait_line(lambda s: s == "a1", "checkpoint 1")
    plain.wait_line(lambda s: "span.started" in s and "research" in s, "research reported running")
    worker.send("go")
    worker.wait_line(lambda s: s == "a2", "checkpoint 2")
    plain.wait_line(lambda s: "span.started" in s and "writer" in s, "writer reported running")
    worker.send("go")
    assert worker.wait(15) == 0
    plain.wait_line(lambda s: "run.ended" in s, "plain output reported the run's end")
    tools.wait_line(lambda s: '"run.ended"' in s, "--kind tool output reported the run's end")

    lines = plain.lines()
    assert all(not line.startswith("{") for line in lines)
    starts = [line for line in lines if "span.started" in line]
    assert len(starts) == 4, lines  # the tool, which started and ended within one batch, starts too
    assert sum("span.ended" in line for line in lines) == 4, lines
    assert any(f"invoke_agent research {EVIL}" in line for line in starts), "span data is printed literally"
    assert any("log warning: looking at" in line for line in lines)
    assert any("progress 50% half" in line for line in lines)
    assert any("progress 33% a third" in line for line in lines), "a percentage is rounded"
    span_lines = [line for line in lines if " span." in line]
    assert span_lines
    assert all("  run job-plain" in line for line in span_lines), "each span line names its run"
    assert any("run.started" in line and "run job-plain" in line for line in lines)
    assert any("run.ended" in line and " ok " in f"{line} " for line in lines)

    kinds = {e["span"]["kind"] for e in envelopes(tools) if e["type"].startswith("span.") and "span" in e}
    assert kinds == {"tool"}

    # a run that has ended: its snapshot, then exit 0
    done = procs(tail_cmd("job-plain", "--viewer", viewer.url, "--json"))
    assert done.wait(15) == 0, done.err
    snap = envelopes(done)
    assert snap[0]["type"] == "run.started"
    assert snap[-1]["type"] == "run.ended"
    assert all(e["snapshot"] is True and e["id"] is None for e in snap)
    # piped, the same snapshot reads in the order things happened (the root ended last, though it started first)
    done_plain = procs(tail_cmd("job-plain", "--viewer", viewer.url))
    assert done_plain.wait(15) == 0, done_plain.err
    told = [line for line in done_plain.lines() if "(snapshot)" in line]
    assert len(told) >= 5, told
    assert "run.ended" in told[-1], told
    clocks = [line.split()[0] for line in told]
    assert clocks == sorted(clocks), told

    for p in (plain, tools):
        p.proc.send_signal(signal.SIGINT)
        assert p.wait(10) == 0
        assert not any("Traceback" in line for line in p.err), p.err


def test_reconnects_while_the_viewer_is_down_and_ctrl_c_exits_cleanly(procs: Callable[..., Proc]) -> None:
    port = free_port()
    tail = procs(tail_cmd("--viewer", f"http://127.0.0.1:{port}", "--json"))
    wait_for(lambda: sum("reconnecting" in line for line in list(tail.err)) >= 2, 10, "tail retried")
    late = PortViewer(create_app(), port).start()
    try:
        wait_for(lambda: any("following" in line for line in list(tail.err)), 10, "tail connected")
    finally:
        late.stop()
    tail.proc.send_signal(signal.SIGINT)
    assert tail.wait(10) == 0
    assert not any("Traceback" in line for line in tail.err), tail.err


def test_with_replicas_tail_follows_the_one_that_answers(
    make_viewer: Callable[..., Viewer], procs: Callable[..., Proc]
) -> None:
    viewer = make_viewer()
    dead = f"http://127.0.0.1:{free_port()}"
    tail = procs(tail_cmd("--viewer", f"{dead},{viewer.url}", "--json"))
    wait_for(lambda: any(f"following {viewer.url}" in line for line in list(tail.err)), 10, "tail on the live replica")
    tail.proc.send_signal(signal.SIGINT)
    assert tail.wait(10) == 0


def test_a_refused_token_is_a_clear_error(make_viewer: Callable[..., Viewer], procs: Callable[..., Proc]) -> None:
    viewer = make_viewer(token="s3cret")
    tail = procs(tail_cmd("--viewer", viewer.url))
    assert tail.wait(10) == 2
    assert any("needs a token" in line for line in tail.err), tail.err
    ok = procs(tail_cmd("--viewer", viewer.url, "--token", "s3cret"))
    wait_for(lambda: any("following" in line for line in list(ok.err)), 10, "tail connected with the token")


def test_a_reader_that_closes_stdout_ends_tail_quietly(make_viewer: Callable[..., Viewer], tmp_path: Path) -> None:
    viewer = make_viewer()
    trace, root = trace_id(), span_id()
    steps = [record(trace, span_id(), f"step {i}", parent=root, ended=True) for i in range(3)]
    assert viewer.post_json([record(trace, root, "invoke_workflow piped", kind=A.KIND_WORKFLOW), *steps]).is_success
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TERM": "dumb"}
    with (tmp_path / "stderr").open("w+") as err:
        # `otelflow tail --all --json | head -1`
        proc = subprocess.Popen(
            tail_cmd("--viewer", viewer.url, "--all", "--json"), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=err
        )
        try:
            assert proc.stdout is not None
            assert json.loads(proc.stdout.readline())["run_id"] == trace
            proc.stdout.close()
            # more to print, into a pipe nobody reads any more
            assert viewer.post_json([record(trace, span_id(), "step after", parent=root, ended=True)]).is_success
            assert proc.wait(10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        err.seek(0)
        complaints = [line for line in err.read().splitlines() if not line.startswith("otelflow tail: following ")]
    assert complaints == []


def test_running_shows_stalls_and_only_what_runs(
    make_viewer: Callable[..., Viewer], procs: Callable[..., Proc]
) -> None:
    rules = parse_rules('[[rule]]\nname = "agent stuck"\nwhen = "stalled"\nquiet_s = 1\nkind = "agent"\n')
    viewer = make_viewer(stall_after_s=1.0, alerts=rules)
    old = [record(trace_id(), span_id(), "invoke_workflow before", kind=A.KIND_WORKFLOW, run_id="job-old", ended=True)]
    assert viewer.post_json(old).is_success
    running = procs(tail_cmd("--viewer", viewer.url, "--running"))
    as_json = procs(tail_cmd("--viewer", viewer.url, "--running", "--json"))
    every = procs(tail_cmd("--viewer", viewer.url, "--all"))
    for p in (running, as_json, every):
        wait_for(lambda p=p: any("following" in line for line in list(p.err)), 10, "tail connected")

    trace, root, stuck, tool = trace_id(), span_id(), span_id(), span_id()
    began = time.time_ns()

    def agent(*events: EventRecord, ended: bool = False) -> Any:
        name = "invoke_agent stuck"
        return record(trace, stuck, name, parent=root, kind=A.KIND_AGENT, start=began, events=events, ended=ended)

    live = record(trace, root, "invoke_workflow live", kind=A.KIND_WORKFLOW, run_id="job-live", start=began)
    assert viewer.post_json([live, agent()]).is_success
    line = running.wait_line(lambda s: "span.stalled" in s, "the stall, as it happens")
    stall = r"agent +invoke_agent stuck  run job-live  stalled: quiet for \d+ s  rule agent stuck$"
    assert re.search(stall, line), line
    running.wait_line(lambda s: "alert.fired" in s and "agent stuck:" in s and "run job-live" in s, "its alert")
    # a tail started now finds the stall in the run's snapshot
    late = procs(tail_cmd("--viewer", viewer.url, "--running"))
    late.wait_line(lambda s: "span.stalled" in s and "stalled: quiet for" in s and "(snapshot)" in s, "the stall")

    # the agent moves: its stall clears
    progress = EventRecord(A.EVENT_PROGRESS, time.time_ns(), {A.PROGRESS_PERCENT: 50})
    assert viewer.post_json([agent(progress)]).is_success
    for p in (running, late, every):
        p.wait_line(lambda s: "span.unstalled" in s and "stuck  run job-live  moving again" in s, "the unstall")
    running.wait_line(lambda s: "alert.resolved" in s and "(the span moved again)" in s, "the alert resolved")

    # a tool runs and ends; a run starts and ends in one batch; the live run ends; then another run starts
    tool_span = record(trace, tool, "execute_tool quick", parent=stuck, kind=A.KIND_TOOL)
    assert viewer.post_json([tool_span]).is_success
    running.wait_line(lambda s: "span.started" in s and "execute_tool quick" in s, "the tool reported running")
    tool_ended = record(trace, tool, "execute_tool quick", parent=stuck, kind=A.KIND_TOOL, ended=True)
    assert viewer.post_json([tool_ended]).is_success
    during, during_root = trace_id(), span_id()
    once = [
        record(during, during_root, "invoke_workflow during", kind=A.KIND_WORKFLOW, run_id="job-during", ended=True),
        record(during, span_id(), "step during", parent=during_root, ended=True),
    ]
    assert viewer.post_json(once).is_success
    live_ended = record(
        trace, root, "invoke_workflow live", kind=A.KIND_WORKFLOW, run_id="job-live", start=began, ended=True
    )
    assert viewer.post_json([agent(ended=True), live_ended]).is_success
    following = record(trace_id(), span_id(), "invoke_workflow next", kind=A.KIND_WORKFLOW, run_id="job-next")
    assert viewer.post_json([following]).is_success
    # one ordered stream: whatever came before the next run was printed before its start
    for p in (running, late, every):
        p.wait_line(lambda s: "run.started" in s and "run job-next" in s, "the next run")
    as_json.wait_line(lambda s: '"run.started"' in s and '"job-next"' in s, "the next run, as JSON")

    for p in (running, late):
        lines = p.lines()
        assert not [s for s in lines if "job-old" in s or "during" in s], lines  # runs that ended before or at once
        assert not [s for s in lines if "span.ended" in s or "run.ended" in s or "span.abandoned" in s], lines
    assert any("span.started" in s and "execute_tool quick" in s for s in running.lines())
    envs = envelopes(as_json)
    types = {e["type"] for e in envs}
    assert {"span.stalled", "span.unstalled", "alert.fired", "alert.resolved"} <= types, types
    assert not types & {"span.ended", "span.abandoned", "run.ended"}, types
    assert {e["run_id"] for e in envs} == {trace, following.trace_id}
    stall = next(e for e in envs if e["type"] == "span.stalled")
    assert stall["stalled"]["reason"] == "quiet"
    assert stall["span"]["span_id"] == stuck
    # without --running, the ends are there too, and the stall lines as well
    lines = every.lines()
    assert any("span.stalled" in s and "invoke_agent stuck" in s for s in lines), lines
    assert any("span.ended" in s and "execute_tool quick" in s for s in lines), lines
    assert any("run.ended" in s and "run job-during" in s for s in lines), lines
    assert any("alert.fired" in s for s in lines), lines


# --------------------------------------------------------------------------------------------------
# In-process: the follower's bookkeeping and the rich view
# --------------------------------------------------------------------------------------------------

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
ERR = {"type": "E", "message": "[x]"}


def span(span_id: str, name: str, status: str = "running", parent: str | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "trace_id": TRACE,
        "span_id": span_id,
        "parent_span_id": parent,
        "name": name,
        "kind": extra.pop("kind", "agent"),
        "status": status,
        "start_time": "2026-01-01T10:00:00.000000Z",
        "end_time": None if status == "running" else "2026-01-01T10:00:01.500000Z",
        "duration_ms": None if status == "running" else 1500.0,
        "attributes": {},
        "events": [],
        "error": None,
        **extra,
    }


def ev(seq: int, type_: str, **body: Any) -> SseEvent:
    data = {"id": f"ep.{seq}", "type": type_, "run_id": TRACE, **body}
    return SseEvent(f"ep.{seq}", type_, json.dumps(data), data)


def run_summary(status: str = "running", percent: float | None = 40) -> dict[str, Any]:
    progress = {"percent": percent, "message": "sections <b>"} if percent is not None else None
    return {
        "run_id": TRACE,
        "trace_id": TRACE,
        "otelflow_run_id": "job-[red]1",
        "name": "invoke_workflow pipeline",
        "status": status,
        "start_time": "2026-01-01T10:00:00.000000Z",
        "start_time_ns": 1,
        "progress": progress,
        "error_count": 1,
    }


def fed_tail() -> Tail:
    tail = Tail(TRACE)
    events = [
        ev(1, "run.started", run=run_summary()),
        ev(2, "span.started", span=span("a" * 16, "invoke_workflow pipeline", kind="workflow")),
        ev(3, "span.started", span=span("b" * 16, EVIL, parent="a" * 16)),
        ev(4, "span.started", span=span("c" * 16, "writer", parent="a" * 16)),
        ev(5, "span.ended", span=span("c" * 16, "writer", "ok", parent="a" * 16)),
        ev(
            6,
            "span.ended",
            span=span(
                "d" * 16,
                "execute_tool search",
                "error",
                parent="b" * 16,
                kind="tool",
                error={"type": "E", "message": "[x]"},
            ),
        ),
        ev(7, "run.updated", run=run_summary()),
    ]
    for e in events:
        tail.on_event(e)
    return tail


def test_rich_view_shows_colours_spinners_progress_and_literal_span_data() -> None:
    tail = fed_tail()
    console = Console(record=True, width=120, force_terminal=True, color_system="truecolor")
    view = LiveView(tail)
    console.print(view)
    text = console.export_text(clear=False)
    assert EVIL in text, text  # markup-looking span data stays literal
    assert "job-[red]1" in text
    assert "sections <b>" in text
    assert any(frame in text for frame in "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"), "running spans spin"
    assert STATUS_GLYPH["ok"] in text
    assert STATUS_GLYPH["error"] in text
    assert " 40%" in text, "a progress bar per run"
    assert "━" in text
    assert "E: [x]" in text
    styled = {seg.text.strip(): seg.style for seg in console.render(view) if seg.text.strip() and seg.style}
    assert styled[STATUS_GLYPH["ok"]].color is not None
    assert styled[STATUS_GLYPH["ok"]].color.name == "green"
    assert styled[STATUS_GLYPH["error"]].color is not None
    assert styled[STATUS_GLYPH["error"]].color.name == "red"
    html = console.export_html()
    assert "<script>" not in html
    assert "&lt;script&gt;" in html


def test_running_view_lists_stalled_spans_first_in_amber_and_drops_what_ended() -> None:
    tail = Tail(running=True)
    root, waiting, stuck, busy, done = "a" * 16, "b" * 16, "c" * 16, "d" * 16, "e" * 16
    since = datetime.fromtimestamp(time.time() - 72.4, timezone.utc).isoformat().replace("+00:00", "Z")
    stalled = {"reason": "quiet", "seconds": 60.0, "since": since, "rule": "default", "limit_s": 60.0, "p95_ms": None}
    events = [
        ev(1, "run.started", run=run_summary()),
        ev(2, "span.started", span=span(root, "invoke_workflow pipeline", kind="workflow")),
        ev(3, "span.started", span=span(waiting, "waiting agent", parent=root)),
        ev(4, "span.started", span=span(busy, "busy tool", parent=waiting, kind="tool")),
        ev(5, "span.started", span=span(stuck, "stuck agent", parent=root)),
        ev(6, "span.started", span=span(done, "done tool", parent=waiting, kind="tool")),
        ev(7, "span.stalled", span=span(stuck, "stuck agent", parent=root), stalled=stalled),
        ev(8, "span.ended", span=span(done, "done tool", "ok", parent=waiting, kind="tool")),
    ]
    reported = [e["type"] for x in events for e in tail.on_event(x)]
    assert reported == ["run.started", *["span.started"] * 5, "span.stalled"]  # the end is not reported
    assert tail.on_event(ev(9, "span.stalled", span=span(stuck, "stuck agent", parent=root), stalled=stalled)) == []

    console = Console(record=True, width=160, force_terminal=True, color_system="truecolor")
    view = LiveView(tail)
    console.print(view)
    text = console.export_text()
    rows = text.splitlines()
    names = ("stuck agent", "invoke_workflow pipeline workflow", "busy tool")
    at = [next(i for i, row in enumerate(rows) if name in row) for name in names]
    assert at == sorted(at), text  # the stalled span first, then the tree of the running ones
    assert "done tool" not in text, "an ended span drops out"
    assert re.search(r"stuck agent agent [\d.]+s  stalled: quiet for 1 m 1\d s", text), text
    assert "1 stalled" in text
    styled = [seg for seg in console.render(view) if seg.style and seg.style.color]
    assert any("stuck agent" in seg.text and seg.style.color.name == STALLED_STYLE for seg in styled), styled

    # a snapshot without the stall (it cleared while we were away) reports the unstall
    spans = [span(root, "invoke_workflow pipeline", kind="workflow"), span(stuck, "stuck agent", parent=root)]
    cleared = tail.on_snapshot({"run": run_summary(), "spans": spans, "stalled": {}})
    assert [(e["type"], e["snapshot"]) for e in cleared] == [("span.unstalled", True)]
    console.print(view)
    text = console.export_text()
    assert "‖" not in text
    assert "1 stalled" not in text
    assert "stuck agent  unstalled" in text  # among the latest events

    # the run ends: it drops out, and nothing about it is reported any more
    assert tail.on_event(ev(10, "run.ended", run=run_summary("ok"))) == []
    assert tail.on_event(ev(11, "span.ended", span=span(busy, "busy tool", "ok", parent=waiting, kind="tool"))) == []
    console.print(view)
    text = console.export_text()
    assert "job-[red]1" not in text
    assert "busy tool" not in text
    assert "nothing runs now" in text


def test_the_same_state_is_reported_once_across_a_reset() -> None:
    tail = fed_tail()
    reset = ev(8, "reset", reason="unknown event id", snapshot=f"/api/runs/{TRACE}")
    assert [e["type"] for e in tail.on_event(reset)] == ["reset"]
    detail = {
        "run": run_summary("ok"),
        "spans": [
            span("a" * 16, "invoke_workflow pipeline", "ok", kind="workflow"),
            span("b" * 16, EVIL, "ok", parent="a" * 16),
            span("c" * 16, "writer", "ok", parent="a" * 16),
            span("e" * 16, "late", "ok", parent="a" * 16),
        ],
        "last_event_id": "ep2.3",
    }
    reported = tail.on_snapshot(detail)
    assert [(e["type"], span_name(e)) for e in reported] == [
        ("span.ended", "invoke_workflow pipeline"),
        ("span.ended", EVIL),
        ("span.ended", "late"),
        ("run.ended", ""),
    ]
    assert all(e["snapshot"] and e["id"] is None for e in reported)
    assert tail.done
    # the stream repeating any of it reports nothing more
    again = ev(9, "span.ended", span=span("b" * 16, EVIL, "ok", parent="a" * 16))
    assert tail.on_event(again) == []
    assert tail.on_event(ev(10, "run.ended", run=run_summary("ok"))) == []
    assert tail.on_snapshot(detail) == []


def test_default_mode_follows_only_runs_that_start_after_it() -> None:
    tail = Tail(started_ns=100)
    old = {**run_summary(), "start_time_ns": 50}
    assert tail.on_snapshot({"run": old, "spans": []}) == []
    assert tail.on_event(ev(1, "span.started", span=span("b" * 16, "x"))) == []
    other = "f" * 32
    data = {"id": "ep.2", "type": "run.started", "run_id": other, "run": {**run_summary(), "trace_id": other}}
    assert tail.on_event(SseEvent("ep.2", "run.started", json.dumps(data), data)) == [data]


def test_plain_lines_escape_control_characters() -> None:
    line = describe({"type": "span.started", "span": span("b" * 16, "evil\x1b[2J\nname")})
    assert line is not None
    assert "\x1b" not in line
    assert "\n" not in line
    assert "\\x1b[2J name" in line
    assert clean("a" * 500, 10) == "a" * 9 + "…"


def test_backoff_is_jittered_exponential_and_capped() -> None:
    b = Backoff(first=1.0, cap=8.0)
    delays = [b.next() for _ in range(8)]
    for i, d in enumerate(delays):
        bound = min(8.0, 2.0**i)
        assert bound / 2 <= d <= bound
    b.reset()
    assert b.next() <= 1.0


def test_sse_parser_reads_frames_from_a_real_stream(make_viewer: Callable[..., Viewer]) -> None:
    viewer = make_viewer()
    from otelflow.cli.stream import SseStream
    from tests.viewer.conftest import record, span_id, trace_id

    t = trace_id()
    viewer.post_json([record(t, span_id(), "invoke_workflow w", kind="workflow", run_id="job-sse")])
    stream = SseStream(viewer.url, f"/api/runs/{t}/stream", None, None)
    try:
        it = stream.events()
        opening = next(it)
        first = next(it)
        second = next(it)
    finally:
        stream.close()
    assert (opening.type, opening.data) == ("", {})  # the stream's first frame: only where it starts
    assert opening.id is not None
    assert opening.id.endswith(".0")  # the run is replayed from its start: everything after id 0
    assert (first.type, second.type) == ("run.started", "span.started")
    assert first.id is not None
    assert first.id.endswith(".1")
    assert stream.retry_ms == 2000


def test_plain_lines_show_a_model_call_with_its_model_tokens_and_cost(
    make_viewer: Callable[..., Viewer], procs: Callable[..., Proc]
) -> None:
    """A model call ended in a run: tail's line for it names the model, the tokens in and out and the estimated
    cost (the viewer's shipped price of gpt-4o-mini)."""
    viewer = make_viewer()
    trace, root = trace_id(), span_id()
    attrs = {
        A.GEN_AI_OPERATION_NAME: "chat",
        A.GEN_AI_REQUEST_MODEL: "gpt-4o-mini",
        A.GEN_AI_RESPONSE_MODEL: "gpt-4o-mini-2024-07-18",
        A.GEN_AI_USAGE_INPUT_TOKENS: 812,
        A.GEN_AI_USAGE_OUTPUT_TOKENS: 95,
    }
    call = record(trace, span_id(), "chat gpt-4o-mini", parent=root, kind=A.KIND_LLM, ended=True, attributes=attrs)
    workflow = record(trace, root, "invoke_workflow w", kind=A.KIND_WORKFLOW, ended=True, run_id="job-llm")
    assert viewer.post_json([call, workflow]).is_success
    wait_for(lambda: any(r.status == "ok" for r in viewer.call(viewer.hub.runs)), 10, "the run ended")
    done = procs(tail_cmd("job-llm", "--viewer", viewer.url))
    assert done.wait(15) == 0, done.err
    [line] = [line for line in done.lines() if "span.ended" in line and " llm " in line]
    assert line.endswith("  ok 1ms  gpt-4o-mini-2024-07-18  812→95 tokens  ~$0.000179  (snapshot)"), line


def test_rich_view_shows_a_streaming_model_call_and_its_answer_so_far_as_text() -> None:
    tail = Tail(TRACE)
    llm = {"model": "gpt-4o", "input_tokens": None, "output_tokens": None, "cost_usd": None,
           "partial_output": "so far\n[bold]not markup[/bold]", "time_to_first_token_ms": 212.4}  # fmt: skip
    done = {"model": "gpt-4o", "input_tokens": 10, "output_tokens": 2, "cost_usd": 0.000045}
    for e in (
        ev(1, "run.started", run=run_summary()),
        ev(2, "span.started", span=span("a" * 16, "invoke_workflow pipeline", kind="workflow")),
        ev(3, "span.started", span=span("b" * 16, "chat gpt-4o", parent="a" * 16, kind="llm", llm=llm)),
        ev(4, "span.ended", span=span("c" * 16, "chat gpt-4o", "ok", parent="a" * 16, kind="llm", llm=done)),
    ):
        tail.on_event(e)
    console = Console(record=True, width=160, force_terminal=True, color_system="truecolor")
    console.print(LiveView(tail))
    text = console.export_text()
    assert "gpt-4o  first token 212ms  “…so far [bold]not markup[/bold]”" in text, text
    assert "gpt-4o  10→2 tokens  ~$0.000045" in text, text
