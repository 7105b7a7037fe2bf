"""History (SQLite; and PostgreSQL where a test takes ``new_db``): restart keeps runs, live runs come back (then
abandoned if silent), retention, clear errors."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from otelflow.viewer import ViewerConfigError, serve
from otelflow.viewer.history import HistoryError, RunQuery, SqliteHistory, default_db_path, history_for
from otelflow.viewer.live import Hub
from tests.viewer.conftest import SseClient, Viewer, record, span_id, trace_id, wait_for


def test_restart_keeps_history_and_resumes_live_runs(
    make_viewer: Callable[..., Viewer], new_db: Callable[[], str]
) -> None:
    db = new_db()
    first = make_viewer(db=db)
    done, live = trace_id(), trace_id()
    done_root, live_root = span_id(), span_id()
    first.post_json([record(done, done_root, "wf", kind="workflow", run_id="job-done")])
    first.post_json([record(done, span_id(), "agent", parent=done_root, kind="agent", ended=True, error=True)])
    first.post_json([record(done, done_root, "wf", kind="workflow", run_id="job-done", ended=True)])
    first.post_json([record(live, live_root, "wf", kind="workflow", run_id="job-live", worker="w-live")])
    before = httpx.get(f"{first.url}/api/runs/job-done", timeout=5).json()
    first.stop()

    second = make_viewer(db=db, hub=Hub(abandon_after_s=1.0, check_interval_s=0.1))
    runs = httpx.get(f"{second.url}/api/runs", timeout=5).json()
    assert {r["otelflow_run_id"]: r["status"] for r in runs["runs"]} == {"job-done": "ok", "job-live": "running"}
    after = httpx.get(f"{second.url}/api/runs/job-done", timeout=5).json()
    assert after["spans"] == before["spans"]
    assert after["run"]["status"] == "ok"
    events = httpx.get(f"{second.url}/api/runs/job-done/events", timeout=5).json()["events"]
    assert [e["type"] for e in events][-1] == "run.ended"
    # the live run's worker went quiet while the viewer was down: it is abandoned, not left "running"
    with SseClient(f"{second.url}/api/runs/job-live/stream") as sse:
        events = sse.read_all()
    assert [e["event"] for e in events] == ["span.abandoned", "run.ended"]
    # …unless the worker is alive and carries on: a fresh viewer keeps its spans and takes new ones
    third_db = new_db()
    third = make_viewer(db=third_db)
    t, root = trace_id(), span_id()
    third.post_json([record(t, root, "wf", kind="workflow", run_id="job-3")])
    third.stop()
    fourth = make_viewer(db=third_db)
    fourth.post_json([record(t, span_id(), "late", parent=root, ended=True)])
    fourth.post_json([record(t, root, "wf", kind="workflow", run_id="job-3", ended=True)])
    detail = httpx.get(f"{fourth.url}/api/runs/job-3", timeout=5).json()
    assert detail["run"]["status"] == "ok"
    assert len(detail["spans"]) == 2


def test_corrupt_database_gives_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(HistoryError, match=r"not a usable otelflow database.*--db"):
        SqliteHistory(bad).open()
    with pytest.raises(HistoryError, match="not a usable"):
        serve("127.0.0.1", 0, db=bad)


def test_locked_database_gives_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    created = SqliteHistory(path)
    created.open()
    created.close()
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        started = time.monotonic()
        with pytest.raises(HistoryError, match="locked by another process"):
            SqliteHistory(path).open()
        assert time.monotonic() - started < 10
    finally:
        holder.close()


def test_retention_by_count_and_age(new_db: Callable[[], str]) -> None:
    store = history_for(new_db(), retention_days=1.0, max_runs=2)
    store.open()
    try:
        now = time.time_ns()
        for i, age_days in enumerate([0, 0, 0, 3]):
            t = trace_id()
            start = now - int(age_days * 86400e9) - (10 - i) * 1_000_000
            store.put_span(record(t, span_id(), f"r{i}", ended=True, start=start))
            store.put_run(
                {"trace_id": t, "name": f"r{i}", "status": "ok", "start_time_ns": start, "end_time_ns": start + 1}
            )
        live = trace_id()
        store.put_run({"trace_id": live, "name": "live", "status": "running", "start_time_ns": 1})
        store.retention_now()

        async def names() -> list[str]:
            runs, _ = await store.list_runs(RunQuery(limit=100))
            return [r["name"] for r in runs]

        assert asyncio.run(names()) == ["r2", "r1", "live"]
    finally:
        store.close()


def test_default_path_uses_xdg_data_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert default_db_path() == tmp_path / "otelflow" / "otelflow.db"
    monkeypatch.delenv("XDG_DATA_HOME")
    assert default_db_path() == Path.home() / ".local" / "share" / "otelflow" / "otelflow.db"


def test_serve_refuses_a_public_address_without_a_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTELFLOW_TOKEN", raising=False)
    for host in ("0.0.0.0", "192.168.1.20", "::"):
        with pytest.raises(ViewerConfigError, match="--token"):
            serve(host, 0, db=":memory:")


def test_max_runs_holds_while_runs_keep_ending(make_viewer: Callable[..., Viewer], new_db: Callable[[], str]) -> None:
    viewer = make_viewer(db=new_db(), max_runs=20)
    stored = 0
    for batch in range(20):  # 100 ended runs, five a request
        runs = [
            record(trace_id(), span_id(), "wf", kind="workflow", run_id=f"job-{batch}-{i}", ended=True)
            for i in range(5)
        ]
        assert viewer.post_json(runs).status_code == 200
        stored += 5
        wait_for(lambda n=stored: _health(viewer)["store"]["spans"] >= n, what="the batch to be stored")
        total = httpx.get(f"{viewer.url}/api/runs", timeout=5).json()["total"]
        assert total <= 21, f"{total} runs held with max_runs=20 after {stored} were written"  # 1.05 x
    kept = {r["otelflow_run_id"] for r in httpx.get(f"{viewer.url}/api/runs", timeout=5).json()["runs"]}
    assert kept >= {f"job-{b}-{i}" for b in range(16, 20) for i in range(5)}  # the newest twenty stay


def _health(viewer: Viewer) -> dict[str, Any]:
    answer: dict[str, Any] = httpx.get(f"{viewer.url}/healthz", timeout=5).json()
    return answer


def test_resources_no_span_uses_leave_with_retention(new_db: Callable[[], str]) -> None:
    """A sender may put a value of its own in each request's resource: each distinct resource is stored once,
    and once runs leave, the resources only they used leave too; the spans that stay keep theirs."""
    store = history_for(new_db(), retention_days=None, max_runs=5)
    store.open()
    try:
        traces = []
        for i in range(1_200):
            t = trace_id()
            traces.append(t)
            rec = replace(record(t, span_id(), f"r{i}", ended=True), resource={"service.name": "svc", "request": i})
            with store.batch():
                store.put_span(rec)
                store.put_run({"trace_id": t, "name": f"r{i}", "status": "ok", "start_time_ns": i, "end_time_ns": i})
        store.retention_now()
        count = asyncio.run(store.query(lambda c: c.execute("SELECT COUNT(*) FROM resources").fetchone()[0]))
        assert count <= 6  # about one per run kept (max_runs 5; 1.05 x slack)
        _, spans = asyncio.run(store.get_run(traces[-1]))
        assert spans[0].resource == {"service.name": "svc", "request": 1_199}
        # after the clean-up, new spans with a new resource and with a kept one both read back right
        fresh, again = trace_id(), trace_id()
        store.put_span(replace(record(fresh, span_id(), "new", ended=True), resource={"service.name": "new"}))
        store.put_span(
            replace(record(again, span_id(), "old", ended=True), resource={"service.name": "svc", "request": 1_199})
        )
        assert asyncio.run(store.get_run(fresh))[1][0].resource == {"service.name": "new"}
        assert asyncio.run(store.get_run(again))[1][0].resource == {"service.name": "svc", "request": 1_199}
    finally:
        store.close()
