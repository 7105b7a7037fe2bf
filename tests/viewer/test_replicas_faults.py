"""Replicas as users run them: ``otelflow serve --broker redis://... --db postgresql://...`` processes on a real
``redis-server`` and a real PostgreSQL, a worker process streaming through the real live exporter to both URLs.

What is checked is what guarantees 4 and 5 promise a user: ``kill -9`` of a replica mid-run loses nothing (the
worker fails over, a browser resumes on the other replica with no gap, every span reaches PostgreSQL once), and
PostgreSQL away for a while stops nothing live; the history catches up when it returns.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from otelflow import attributes as A
from otelflow.viewer.history import PostgresHistory
from otelflow.viewer.live.backends import RedisBackend
from tests.pg_server import PgServer
from tests.redis_server import RedisServer
from tests.viewer.conftest import SseClient, Viewer, record, span_id, trace_id, wait_for
from tests.viewer.test_alerts import Gated
from tests.viewer.test_nginx import AUTH, TOKEN, start_replicas

pytestmark = pytest.mark.slow


@pytest.fixture
def worker(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str, str], Gated]]:
    monkeypatch.setenv("OTELFLOW_TOKEN", TOKEN)  # the worker process inherits it
    started: list[Gated] = []

    def start(urls: str, workflow: str) -> Gated:
        w = Gated(urls, workflow)
        started.append(w)
        return w

    yield start
    for w in started:
        w.close()


def run_of(url: str, run: str) -> dict[str, Any] | None:
    r = httpx.get(f"{url}/api/runs/{run}", headers=AUTH, timeout=5)
    return r.json() if r.status_code == 200 else None


def ended(url: str, run: str) -> dict[str, Any] | None:
    got = run_of(url, run)
    return got if got is not None and got["run"]["status"] != A.STATUS_RUNNING else None


def test_kill_9_of_a_replica_mid_run_loses_nothing(
    redis_server: RedisServer, pg_url: str, tmp_path: Path, worker: Callable[[str, str], Gated]
) -> None:
    with ExitStack() as stack:
        replicas = start_replicas(2, stack, tmp_path, broker=redis_server.url, db=pg_url)
        first, second = replicas.urls
        browser = SseClient(f"{first}/api/stream?token={TOKEN}")
        stack.callback(browser.close)
        w = worker(f"{first},{second}", "kill9")
        w.expect("waiting")
        started = browser.read_until(lambda e: e.get("event") == "span.started" and "waiter" in json.dumps(e["data"]))
        last = started["id"]

        replicas.stop(0)  # SIGKILL: no goodbye to the worker, the browser, the broker or the database
        w.finish()  # the agent and the workflow end: the worker's post to replica 1 fails, it moves to replica 2

        # the browser reconnects to the other replica from where it was
        resumed = SseClient(f"{second}/api/stream?token={TOKEN}", headers={"Last-Event-ID": last})
        stack.callback(resumed.close)
        run_ended = resumed.read_until(lambda e: e.get("event") == "run.ended")
        assert run_ended["data"]["run"]["status"] == A.STATUS_OK
        got = [e for e in resumed.events if e.get("event") not in (None,)]
        assert not [e for e in got if e["event"] == "reset"], "a gap was announced"
        ids = [e["id"] for e in got]
        assert ids == sorted(ids, key=lambda i: int(i.split(".")[1]))
        assert len(set(ids)) == len(ids)
        assert all(int(i.split(".")[1]) > int(last.split(".")[1]) for i in ids)
        assert {e["event"] for e in got} >= {"span.ended", "run.ended"}

        # every span reached PostgreSQL, once: a replica started now answers from the database alone
        third = start_replicas(1, stack, tmp_path / "late", broker=redis_server.url, db=pg_url).urls[0]
        stored = wait_for(lambda: ended(third, "job-kill9"), timeout=20, what="the run in the shared history")
        assert stored["run"]["status"] == A.STATUS_OK
        names = sorted(s["name"] for s in stored["spans"])
        assert names == ["invoke_agent waiter", "invoke_workflow kill9"]
        assert all(s["status"] == A.STATUS_OK for s in stored["spans"])


def test_postgresql_away_stops_nothing_live_and_the_history_catches_up(
    redis_server: RedisServer, pg_server: PgServer, pg_url: str, tmp_path: Path, worker: Callable[[str, str], Gated]
) -> None:
    with ExitStack() as stack:
        (url,) = start_replicas(1, stack, tmp_path, broker=redis_server.url, db=pg_url).urls
        w = worker(url, "pgaway")
        w.expect("waiting")
        browser = SseClient(f"{url}/api/stream?token={TOKEN}")
        stack.callback(browser.close)
        pg_server.stop()
        try:
            w.say("move")  # the agent logs a line while the database is away
            w.expect("moved")
            browser.read_until(lambda e: e.get("event") == "span.event")
            w.finish()
            browser.read_until(lambda e: e.get("event") == "run.ended")  # live, with no database
            health = httpx.get(f"{url}/healthz", headers=AUTH, timeout=5).json()
            assert health["status"] == "degraded", health
        finally:
            pg_server.start()
        wait_for(
            lambda: httpx.get(f"{url}/healthz", headers=AUTH, timeout=5).json()["status"] == "ok",
            timeout=30,
            what="the history to catch up",
        )
        late = start_replicas(1, stack, tmp_path / "late", broker=redis_server.url, db=pg_url).urls[0]
        stored = wait_for(lambda: ended(late, "job-pgaway"), timeout=20, what="the run in the shared history")
        assert stored["run"]["status"] == A.STATUS_OK
        assert len(stored["spans"]) == 2


def test_a_history_away_too_long_drops_rows_then_catches_up_from_the_live_state(
    redis_server: RedisServer,
    pg_server: PgServer,
    pg_url: str,
    tmp_path: Path,
    make_viewer: Callable[..., Viewer],
) -> None:
    store = PostgresHistory(pg_url, max_backlog_bytes=64 * 1024)  # full after a few hundred spans
    viewer = make_viewer(broker=RedisBackend(redis_server.url, lease_s=1.0), db=store)
    wait_for(lambda: viewer.hub.backend.leading, what="the only replica to lead")
    trace, root = trace_id(), span_id()
    run = [record(trace, root, "invoke_workflow away", kind=A.KIND_WORKFLOW, run_id="job-away")]
    pg_server.stop()
    try:
        assert viewer.post_json(run).status_code == 200
        for i in range(10):  # 500 spans: far more than the backlog holds
            agents = [
                record(trace, span_id(), f"invoke_agent a{i}-{j}", parent=root, kind=A.KIND_AGENT, ended=True)
                for j in range(50)
            ]
            assert viewer.post_json(agents).status_code == 200  # the broker holds them: never a 503
        wait_for(lambda: store.dropped_rows > 0, what="rows dropped while the backlog is full")
        ended_root = record(trace, root, "invoke_workflow away", kind=A.KIND_WORKFLOW, run_id="job-away", ended=True)
        assert viewer.post_json([ended_root]).status_code == 200
    finally:
        pg_server.start()
    # read the database itself (a replica would also read the broker's stream)
    reader = PostgresHistory(pg_url)
    reader.open()
    try:

        def in_db() -> tuple[dict[str, Any] | None, list[Any]] | None:
            summary, spans = asyncio.run(reader.get_run(trace))
            return (summary, spans) if summary is not None and summary["status"] == A.STATUS_OK else None

        _summary, spans = wait_for(in_db, timeout=30, what="the ended run in the database")
    finally:
        reader.close()
    assert len(spans) == 501
    assert viewer.hub.backend.leading
