"""``otelflow export`` against a real viewer: OTLP JSON that another viewer accepts back, JSON lines, clear errors."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from otelflow import attributes as A
from otelflow.records import EventRecord
from tests.test_tail import free_port
from tests.viewer.conftest import Viewer, record, span_id, trace_id, wait_for

ROOT = Path(__file__).resolve().parent.parent


def export(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "otelflow.cli", "export", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def a_run(viewer: Viewer, **headers: str) -> tuple[str, list[str]]:
    t, root, child, tool = trace_id(), span_id(), span_id(), span_id()
    progress = EventRecord(A.EVENT_PROGRESS, 1_000, {A.PROGRESS_PERCENT: 50.0, A.PROGRESS_MESSAGE: "half"})
    records = [
        record(t, root, "invoke_workflow p", kind=A.KIND_WORKFLOW, run_id="job-exp", ended=True, events=(progress,)),
        record(
            t,
            child,
            "invoke_agent a",
            parent=root,
            kind=A.KIND_AGENT,
            ended=True,
            attributes={A.GEN_AI_AGENT_NAME: "a", "input.value": "[bold]<script>"},
        ),
        record(t, tool, "execute_tool t", parent=child, kind=A.KIND_TOOL, ended=True, error=True),
    ]
    assert viewer.post_json(records, **headers).status_code == 200  # ingested before the answer
    return t, [root, child, tool]


def comparable(detail: dict[str, Any]) -> list[tuple[Any, ...]]:
    return sorted(
        (
            s["span_id"],
            s["parent_span_id"],
            s["name"],
            s["kind"],
            s["status"],
            s["start_time"],
            s["end_time"],
            json.dumps(s["attributes"], sort_keys=True),
            json.dumps(s["events"], sort_keys=True),
        )
        for s in detail["spans"]
    )


def test_otlp_json_export_posted_to_another_viewer_reproduces_the_run(
    make_viewer: Callable[..., Viewer], tmp_path: Path
) -> None:
    source, target = make_viewer(token="tok"), make_viewer()
    t, _ = a_run(source, authorization="Bearer tok")
    out = tmp_path / "run.otlp.json"
    result = export("job-exp", "--viewer", source.url, "--token", "tok", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    payload = json.loads(out.read_text(encoding="utf-8"))
    assert payload["resourceSpans"]
    posted = httpx.post(
        f"{target.url}/v1/traces", content=out.read_bytes(), headers={"content-type": "application/json"}, timeout=10
    )
    assert posted.status_code == 200, posted.text
    original = httpx.get(f"{source.url}/api/runs/{t}", headers={"authorization": "Bearer tok"}, timeout=5).json()
    copy = wait_for(lambda: httpx.get(f"{target.url}/api/runs/job-exp", timeout=5).json().get("spans"), 5, "copy")
    assert len(copy) == 3
    reproduced = httpx.get(f"{target.url}/api/runs/job-exp", timeout=5).json()
    assert comparable(reproduced) == comparable(original)
    assert reproduced["run"]["status"] == original["run"]["status"] == "ok"
    assert reproduced["run"]["trace_id"] == t


def test_jsonl_to_stdout_is_one_span_per_line(make_viewer: Callable[..., Viewer]) -> None:
    viewer = make_viewer()
    t, ids = a_run(viewer)
    result = export(t, "--viewer", viewer.url, "--format", "jsonl")
    assert result.returncode == 0, result.stderr
    spans = [json.loads(line) for line in result.stdout.splitlines()]
    assert sorted(s["span_id"] for s in spans) == sorted(ids)
    agent = next(s for s in spans if s["kind"] == "agent")
    assert agent["attributes"]["input.value"] == "[bold]<script>"
    assert {s["status"] for s in spans} == {"ok", "error"}


def test_with_replicas_export_reads_from_the_one_that_answers(make_viewer: Callable[..., Viewer]) -> None:
    viewer = make_viewer()
    t, ids = a_run(viewer)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    result = export(t, "--viewer", f"{dead}, {viewer.url}", "--format", "jsonl")
    assert result.returncode == 0, result.stderr
    assert sorted(json.loads(line)["span_id"] for line in result.stdout.splitlines()) == sorted(ids)


def test_unknown_run_is_exit_1_and_writes_no_file(make_viewer: Callable[..., Viewer], tmp_path: Path) -> None:
    viewer = make_viewer()
    out = tmp_path / "nothing.json"
    result = export("job-nope", "--viewer", viewer.url, "-o", str(out))
    assert result.returncode == 1
    assert "no run 'job-nope'" in result.stderr
    assert not out.exists()


def test_unreachable_viewer_is_exit_2(make_viewer: Callable[..., Viewer]) -> None:
    result = export("job-x", "--viewer", f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 2
    assert "cannot reach the viewer" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_token_says_so(make_viewer: Callable[..., Viewer]) -> None:
    viewer = make_viewer(token="tok")
    result = export("job-x", "--viewer", viewer.url)
    assert result.returncode == 1
    assert "needs a token" in result.stderr
