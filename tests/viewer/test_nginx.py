"""Real nginx (collector-config/nginx.conf) in front of real viewer replicas: what a user of the proxy notices.

SSE through nginx arrives while the run still runs (nothing buffered), a WebSocket on /ws gets events and passes the
viewer's Host and Origin checks, OTLP posts pass and are spread over the replicas, and when a replica stops, nginx
sends the next requests to the others.

The replicas come from :func:`start_replicas`. Today they are independent viewers (each its own stream and
history), so a test that wants an event on whatever replica nginx picked feeds it to every replica
(:meth:`Replicas.feed`). With ``broker`` and ``db`` given, the replicas are ``otelflow serve --broker ... --db ...``
processes sharing one stream (``Replicas.shared``): a record posted once, through nginx or to any replica, is on
every replica's stream. The ``mode`` fixture lists the kinds these tests run against; the broker kind starts its
own ``redis-server`` and PostgreSQL database.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import connect
from websockets.typing import Origin

from otelflow.otlp_json import to_otlp_json
from otelflow.records import SpanRecord
from otelflow.viewer.app import create_app
from tests.nginx_server import Nginx, nginx_binary
from tests.redis_server import RedisServer
from tests.viewer.conftest import SseClient, Viewer, record, span_id, trace_id, wait_for

TOKEN = "tok"
AUTH = {"authorization": f"Bearer {TOKEN}"}
JSON = {"content-type": "application/json", **AUTH}


# ------------------------------------------------------------------------------------------------
# Replicas
# ------------------------------------------------------------------------------------------------


@dataclass
class Replicas:
    """Viewer replicas: their ``urls``, ``stop(i)`` that really stops replica ``i``, and whether they share one
    stream (``shared``: a broker) or are independent viewers."""

    urls: list[str]
    stoppers: list[Callable[[], None]]
    shared: bool = False
    stopped: set[int] = field(default_factory=set)

    @property
    def upstreams(self) -> list[str]:
        """``host:port`` of each replica, as nginx's upstream block lists them."""
        return [u.removeprefix("http://") for u in self.urls]

    @property
    def running(self) -> list[str]:
        return [u for i, u in enumerate(self.urls) if i not in self.stopped]

    def stop(self, index: int) -> None:
        self.stoppers[index]()
        self.stopped.add(index)

    def feed(self, records: Sequence[SpanRecord]) -> None:
        """Make ``records`` part of the stream every running replica serves: posted once when the replicas share a
        stream, else to each of them."""
        for url in self.running[:1] if self.shared else self.running:
            post(url, records).raise_for_status()

    def holding(self, run: str) -> list[str]:
        """The running replicas that know ``run``."""
        return [u for u in self.running if httpx.get(f"{u}/api/runs/{run}", headers=AUTH, timeout=5).status_code == 200]


def _serve(stack: ExitStack, tmp: Path, index: int, extra: Sequence[str]) -> tuple[str, Callable[[], None]]:
    """``otelflow serve --port 0 EXTRA`` in a subprocess; its URL, and a stop that kills it (SIGKILL)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "otelflow.cli", "serve", "--port", "0", "--token", TOKEN, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "OTELFLOW_DB": str(tmp / f"replica-{index}.db")},
    )

    def kill() -> None:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()

    stack.callback(kill)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert "listening on" in line, line + proc.stdout.read()
    return line.split("listening on", 1)[1].strip(), kill


def start_replicas(
    n: int,
    stack: ExitStack,
    tmp: Path,
    *,
    processes: bool = False,
    broker: str | None = None,
    db: str | None = None,
) -> Replicas:
    """``n`` viewer replicas on free loopback ports, all with the token ``TOKEN``, stopped when ``stack`` closes.

    Default: embedded viewers (``create_app`` on uvicorn in threads; ``stop`` shuts one down). ``processes``:
    ``otelflow serve`` subprocesses, each with its own SQLite file (``stop`` is a SIGKILL). ``broker`` and ``db``:
    ``otelflow serve --broker BROKER --db DB`` subprocesses sharing one stream and one history.
    """
    if broker is not None:
        assert db is not None, "a broker needs a shared database"
        started = [_serve(stack, tmp, i, ["--broker", broker, "--db", db]) for i in range(n)]
        return Replicas([u for u, _ in started], [s for _, s in started], shared=True)
    if processes:
        started = [_serve(stack, tmp, i, []) for i in range(n)]
        return Replicas([u for u, _ in started], [s for _, s in started])
    urls, stops = [], []
    for _ in range(n):
        viewer = Viewer(create_app(token=TOKEN)).start()
        stop = _stopper(viewer)
        stack.callback(stop)
        urls.append(viewer.url)
        stops.append(stop)
    return Replicas(urls, stops)


def _stopper(viewer: Viewer) -> Callable[[], None]:
    def stop() -> None:
        if viewer.thread.is_alive():
            viewer.stop()

    return stop


@pytest.fixture(params=["embedded", "broker"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def cluster(mode: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[Replicas, Nginx]]:
    """Two replicas of ``mode`` and nginx in front of them (``broker``: on their own redis-server and PostgreSQL
    database)."""
    nginx_binary()  # skips (fails under CI) before anything starts
    with ExitStack() as stack:
        if mode == "broker":
            redis = RedisServer().start()
            stack.callback(redis.close)
            db = request.getfixturevalue("pg_url")
            replicas = start_replicas(2, stack, tmp_path, broker=redis.url, db=db)
        else:
            replicas = start_replicas(2, stack, tmp_path)
        nginx = Nginx(replicas.upstreams, tmp_path / "nginx").start()
        stack.callback(nginx.stop)
        yield replicas, nginx


# ------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------


def post(url: str, records: Sequence[SpanRecord], **headers: str) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/traces", content=json.dumps(to_otlp_json(records)), headers={**JSON, **headers}, timeout=10
    )


def open_stream(url: str, read_timeout: float = 5.0) -> SseClient:
    """An SSE client on ``url`` whose subscription is in place: its first frame (the ``id:`` it starts at) came.
    ``read_timeout`` is how long any later read may wait for a byte: an event that does not come fails the test."""
    sse = SseClient(url, headers=AUTH, read_timeout=read_timeout)
    assert sse.response.status_code == 200, sse.response.read()
    assert sse.response.headers["content-type"].startswith("text/event-stream")
    for line in sse.lines:
        if line.startswith("id:"):
            break
    return sse


def running_run() -> tuple[str, str, list[SpanRecord]]:
    """A new run whose root is still running: (trace id, root span id, records)."""
    t, root = trace_id(), span_id()
    return t, root, [record(t, root, "pipeline", kind="workflow")]


# ------------------------------------------------------------------------------------------------
# Tests
# ------------------------------------------------------------------------------------------------


def test_sse_through_nginx_gets_each_event_while_the_run_runs(cluster: tuple[Replicas, Nginx]) -> None:
    replicas, nginx = cluster
    with open_stream(f"{nginx.url}/api/stream") as sse:
        t, root, records = running_run()
        replicas.feed(records)
        # the run is still running: this event can only have come through unbuffered
        started = sse.read_until(lambda e: e["event"] == "span.started" and e["data"]["run_id"] == t)
        assert started["data"]["span"]["status"] == "running"
        agent = span_id()
        replicas.feed([record(t, agent, "researcher", parent=root, kind="agent")])
        sse.read_until(lambda e: e["event"] == "span.started" and e["data"]["span"]["span_id"] == agent)
        replicas.feed([record(t, agent, "researcher", parent=root, kind="agent", ended=True)])
        replicas.feed([record(t, root, "pipeline", kind="workflow", ended=True)])
        ended = sse.read_until(lambda e: e["event"] == "run.ended")
        assert ended["data"]["run_id"] == t
        ids = [e["id"] for e in sse.events]
        assert ids == sorted(ids, key=lambda i: int(i.rsplit(".", 1)[1])), "events in order, one stream"


def test_one_run_stream_through_nginx_replays_and_closes_at_its_end(cluster: tuple[Replicas, Nginx]) -> None:
    replicas, nginx = cluster
    t, root, records = running_run()
    replicas.feed(records)
    with open_stream(f"{nginx.url}/api/runs/{t}/stream") as sse:
        sse.read_until(lambda e: e["event"] == "span.started")  # replayed from the run's start
        replicas.feed([record(t, root, "pipeline", kind="workflow", ended=True)])
        assert [e["event"] for e in sse.read_all()][-1] == "run.ended"
        assert sse.closed, "the run's stream ends with the run, through nginx too"


def test_websocket_through_nginx_from_the_page_origin_receives_events(cluster: tuple[Replicas, Nginx]) -> None:
    replicas, nginx = cluster
    ws_url = f"ws://127.0.0.1:{nginx.port}/ws?token={TOKEN}"
    # a page served by nginx opens its WebSocket with nginx's origin: the viewer must see the Host that matches it
    with connect(ws_url, origin=Origin(nginx.url), open_timeout=5, close_timeout=5) as ws:
        subscribed = json.loads(ws.recv(timeout=5))
        assert subscribed["type"] == "subscribed"
        t, _root, records = running_run()
        replicas.feed(records)
        while True:
            message = json.loads(ws.recv(timeout=5))
            if message["type"] == "span.started" and message["run_id"] == t:
                break
        ws.send(json.dumps({"type": "ping"}))
        while json.loads(ws.recv(timeout=5))["type"] != "pong":
            pass


def test_the_viewer_host_check_holds_behind_nginx(cluster: tuple[Replicas, Nginx]) -> None:
    _, nginx = cluster
    assert httpx.get(f"{nginx.url}/api/runs", headers=AUTH, timeout=5).status_code == 200
    refused = httpx.get(f"{nginx.url}/api/runs", headers={**AUTH, "host": "evil.example"}, timeout=5)
    assert refused.status_code == 400
    assert "evil.example" in refused.json()["error"]
    foreign = httpx.get(f"{nginx.url}/api/runs", headers={**AUTH, "origin": "http://evil.example"}, timeout=5)
    assert foreign.status_code == 403
    assert httpx.get(f"{nginx.url}/api/runs", timeout=5).status_code == 401, "the token is still required"


def test_otlp_posts_through_nginx_are_taken_and_spread_over_the_replicas(cluster: tuple[Replicas, Nginx]) -> None:
    replicas, nginx = cluster
    runs = []
    for _ in range(6):
        t, _root, records = running_run()
        response = post(nginx.url, records)
        assert response.status_code == 200, response.text
        runs.append(t)
    where = {t: wait_for(partial(replicas.holding, t), what=f"run {t} on a replica") for t in runs}
    if replicas.shared:
        assert all(len(urls) == len(replicas.urls) for urls in where.values()), where
    else:
        assert all(len(urls) == 1 for urls in where.values()), "each post was taken once"
        assert {u for urls in where.values() for u in urls} == set(replicas.urls), "round robin uses every replica"


def test_a_large_otlp_post_passes_nginx(cluster: tuple[Replicas, Nginx]) -> None:
    replicas, nginx = cluster
    t, root = trace_id(), span_id()
    # about 3 MB of JSON: over nginx's default client_max_body_size (1 MB) and its in-memory body buffer
    records = [record(t, root, "pipeline", kind="workflow")] + [
        record(t, span_id(), f"step-{i}", parent=root, ended=True, attributes={"payload": "x" * 3000})
        for i in range(1000)
    ]
    response = post(nginx.url, records)
    assert response.status_code == 200, response.text
    holders = wait_for(lambda: replicas.holding(t), what="the large run on a replica")
    detail = httpx.get(f"{holders[0]}/api/runs/{t}", headers=AUTH, timeout=10).json()
    assert len(detail["spans"]) == 1001


def _stop_one_replica_and_check_the_other_serves(replicas: Replicas, nginx: Nginx) -> None:
    replicas.stop(0)
    alive = replicas.running
    for _ in range(6):  # more than the replicas: round robin would pick the stopped one among them
        t, _root, records = running_run()
        response = post(nginx.url, records)
        assert response.status_code == 200, response.text
        assert wait_for(partial(replicas.holding, t), what=f"run {t} on the live replica") == alive
        assert httpx.get(f"{nginx.url}/api/runs", headers=AUTH, timeout=5).status_code == 200
    with open_stream(f"{nginx.url}/api/stream") as sse:
        t, _root, records = running_run()
        replicas.feed(records)
        sse.read_until(lambda e: e["event"] == "span.started" and e["data"]["run_id"] == t)


def test_a_stopped_replica_is_skipped_for_new_requests(cluster: tuple[Replicas, Nginx]) -> None:
    replicas, nginx = cluster
    _stop_one_replica_and_check_the_other_serves(replicas, nginx)


def test_a_killed_serve_process_is_skipped_for_new_requests(tmp_path: Path) -> None:
    nginx_binary()
    with ExitStack() as stack:
        replicas = start_replicas(2, stack, tmp_path, processes=True)
        nginx = Nginx(replicas.upstreams, tmp_path / "nginx").start()
        stack.callback(nginx.stop)
        _stop_one_replica_and_check_the_other_serves(replicas, nginx)


class DyingReplica:
    """A replica that reads a request and closes the connection without answering, as one killed while it handles
    a post. Counts the connections it cut."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.cut = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def upstream(self) -> str:
        return f"127.0.0.1:{self.sock.getsockname()[1]}"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                self.cut += 1

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept(); close() alone would not
        self.sock.close()
        self.thread.join(5)
        assert not self.thread.is_alive()


def test_a_post_cut_off_by_a_dying_replica_goes_to_the_next_one(tmp_path: Path) -> None:
    nginx_binary()
    with ExitStack() as stack:
        dying = DyingReplica()
        stack.callback(dying.close)
        replicas = start_replicas(1, stack, tmp_path)
        # listed first: round robin tries it first, in every nginx worker
        nginx = Nginx([dying.upstream, *replicas.upstreams], tmp_path / "nginx").start()
        stack.callback(nginx.stop)
        for _ in range(4):
            t, _root, records = running_run()
            response = post(nginx.url, records)
            assert response.status_code == 200, response.text
            assert wait_for(partial(replicas.holding, t), what=f"run {t} on the live replica") == replicas.urls
        assert dying.cut >= 1, "nginx never tried the dying replica: the test proved nothing"
