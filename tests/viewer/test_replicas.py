"""Viewer replicas sharing one live stream through a real ``redis-server``: every replica streams every event of
every run with the same ids, a client resumes on another replica, derived events are taken once, and the faults
of the broker are announced."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from otelflow import attributes as A
from otelflow.viewer.live.backends import RedisBackend
from tests.redis_server import RedisServer
from tests.viewer.conftest import SseClient, Viewer, heartbeat, record, span_id, trace_id, wait_for


@pytest.fixture
def replicas(make_viewer: Callable[..., Viewer], redis_server: RedisServer) -> Callable[..., list[Viewer]]:
    def make(count: int = 2, **kwargs: Any) -> list[Viewer]:
        return [make_viewer(broker=RedisBackend(redis_server.url, lease_s=1.0), **kwargs) for _ in range(count)]

    return make


def _run_records(trace: str, children: int = 3) -> list[Any]:
    root = span_id()
    recs = [record(trace, root, "invoke_workflow demo", kind=A.KIND_WORKFLOW, ended=False, run_id="job-7")]
    for i in range(children):
        recs.append(record(trace, span_id(), f"invoke_agent a{i}", parent=root, kind=A.KIND_AGENT, ended=True))
    return recs


def _ids(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["id"], e["event"]) for e in events if e.get("event") not in (None, "reset")]


def test_every_replica_streams_every_event_with_the_same_ids(replicas: Callable[..., list[Viewer]]) -> None:
    a, b = replicas(2)
    trace = trace_id()
    with SseClient(f"{a.url}/api/stream") as sa, SseClient(f"{b.url}/api/stream") as sb:
        assert a.post_json(_run_records(trace)).status_code == 200  # to replica a only
        want = 1 + 1 + 3 * 2  # run.started, the root's span.started, each agent started and ended
        ea = [sa.read_until(lambda e: e.get("event", "").startswith(("run.", "span."))) for _ in range(want)]
        eb = [sb.read_until(lambda e: e.get("event", "").startswith(("run.", "span."))) for _ in range(want)]
    assert _ids(ea) == _ids(eb)
    assert {e["data"]["run_id"] for e in eb} == {trace}
    # the REST API answers the same on both
    ra = httpx.get(f"{a.url}/api/runs/job-7", timeout=5).json()
    rb = httpx.get(f"{b.url}/api/runs/job-7", timeout=5).json()
    assert ra["run"]["span_count"] == rb["run"]["span_count"] == 4


def test_a_client_resumes_on_another_replica_exactly_once(replicas: Callable[..., list[Viewer]]) -> None:
    a, b = replicas(2)
    trace = trace_id()
    recs = _run_records(trace, children=2)
    with SseClient(f"{a.url}/api/stream") as sa:
        assert a.post_json(recs[:2]).status_code == 200
        seen = [sa.read_until(lambda e: e.get("event") == "span.started") for _ in range(2)]
        last = seen[-1]["id"]
    assert b.post_json(recs[2:]).status_code == 200  # while the client is away, to the other replica
    with SseClient(f"{b.url}/api/stream", headers={"Last-Event-ID": last}) as sb:
        got = [sb.read_until(lambda e: e.get("event", "").startswith("span.")) for _ in range(3)]
    assert [e["event"] for e in got] == ["span.ended", "span.started", "span.ended"]
    assert all(e["id"] > last for e in got)  # same epoch, later numbers
    assert not any(e.get("event") == "reset" for e in sb.events)


def test_a_worker_that_goes_silent_is_abandoned_once_for_the_cluster(
    replicas: Callable[..., list[Viewer]],
) -> None:
    a, b, c = replicas(3, idle_run_s=0)
    for v in (a, b, c):
        v.hub.state.abandon_after_s = 1.0
    trace = trace_id()
    root = span_id()
    rec = record(trace, root, "invoke_workflow quiet", kind=A.KIND_WORKFLOW, ended=False, worker="w-dead")
    with SseClient(f"{c.url}/api/stream") as sc:
        assert a.post_json([rec]).status_code == 200
        ev = sc.read_until(lambda e: e.get("event") == "span.abandoned")
        assert ev["data"]["worker_id"] == "w-dead"
        run_ended = sc.read_until(lambda e: e.get("event") == "run.ended")
    assert run_ended["data"]["run"]["status"] == A.STATUS_ABANDONED
    # taken by the one replica that leads, published once: every replica counts one decision
    checks = [v.hub.stats["checks"] for v in (a, b, c)]
    assert sum(1 for n in checks if n) == 1, checks
    for v in (a, b, c):
        run = wait_for(lambda v=v: httpx.get(f"{v.url}/api/runs/{trace}", timeout=5).json(), what="run")
        assert run["run"]["status"] == A.STATUS_ABANDONED


def test_heartbeats_reach_every_replica(replicas: Callable[..., list[Viewer]]) -> None:
    a, b = replicas(2)
    r = httpx.post(
        f"{a.url}/v1/traces",
        content=json.dumps(heartbeat("w-live")),
        timeout=5,
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 200
    wait_for(lambda: "w-live" in b.call(lambda: dict(b.hub.state._workers)), what="worker heard on b")


def test_the_broker_losing_its_data_resets_clients(
    replicas: Callable[..., list[Viewer]], redis_server: RedisServer
) -> None:
    (a,) = replicas(1)
    trace = trace_id()
    recs = _run_records(trace, children=2)
    with SseClient(f"{a.url}/api/stream") as sa:
        assert a.post_json(recs[:2]).status_code == 200
        sa.read_until(lambda e: e.get("event") == "span.started")
        redis_server.restart()  # empty: the stream, its numbers and its epoch are gone

        def posted() -> bool:
            return a.post_json(recs[2:]).status_code == 200

        wait_for(posted, timeout=15, what="the broker back")
        reset = sa.read_until(lambda e: e.get("event") == "reset")
        assert reset["data"]["snapshot"] == "/api/runs"
        after = sa.read_until(lambda e: e.get("event") == "span.started")
    assert after["id"].split(".")[0] == reset["id"].split(".")[0] != sa.events[1]["id"].split(".")[0]


def test_an_unreachable_broker_is_a_503_not_a_lost_request(
    replicas: Callable[..., list[Viewer]], redis_server: RedisServer
) -> None:
    (a,) = replicas(1)
    redis_server.stop()
    r = a.post_json(_run_records(trace_id(), children=1))
    assert r.status_code == 503
    assert r.headers["retry-after"] == "2"
    health = httpx.get(f"{a.url}/healthz", timeout=5).json()
    assert health["status"] == "degraded"
    assert "the broker does not answer" in health["reason"]
    redis_server.start()
    wait_for(lambda: httpx.get(f"{a.url}/healthz", timeout=5).json()["status"] == "ok", what="the broker back")
    assert a.post_json(_run_records(trace_id(), children=1)).status_code == 200
