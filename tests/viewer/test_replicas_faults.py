"""Replicas as users run them: ``otelflow serve --broker redis://... --db postgresql://...`` processes on a real
``redis-server`` and a real PostgreSQL, a worker process streaming through the real live exporter to both URLs.

What is checked is what guarantees 4 and 5 promise a user: ``kill -9`` of a replica mid-run loses nothing (the
worker fails over, a browser resumes on the other replica with no gap, every span reaches PostgreSQL once), and
PostgreSQL away for a while stops nothing live; the history catches up when it returns.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from otelflow import attributes as A
from tests.pg_server import PgServer
from tests.redis_server import RedisServer
from tests.viewer.conftest import SseClient, wait_for
from tests.viewer.test_alerts import Gated
from tests.viewer.test_nginx import AUTH, TOKEN, start_replicas

pytestmark = pytest.mark.slow


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.close()


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
