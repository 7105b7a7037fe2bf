"""Nothing acknowledged is lost: the viewer when its database is locked, full or killed, under a request of
20,000 spans, and with traces that never finish. Real viewers, real SQLite files, real second processes."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import http.client
import resource
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from otelflow.viewer.history import RunQuery, SqliteHistory
from otelflow.viewer.live import Hub
from tests.test_live_exporter import free_port
from tests.viewer.conftest import SseClient, Viewer, heartbeat, record, span_id, trace_id, wait_for

PROTOBUF = "application/x-protobuf"


_PROVIDER = TracerProvider(resource=Resource.create({"service.name": "faults"}))
_FINISHED = InMemorySpanExporter()
_PROVIDER.add_span_processor(SimpleSpanProcessor(_FINISHED))


def _request(count: int) -> tuple[bytes, list[str]]:
    """``count`` ended spans of the real SDK in traces of 10 (a root and nine children), encoded by the stock
    OTLP exporter's encoder as one protobuf request; and their span ids."""
    tracer = _PROVIDER.get_tracer("faults")
    _FINISHED.clear()
    for done in range(0, count, 10):
        with tracer.start_as_current_span("step-0", context=Context()):
            for i in range(1, min(10, count - done)):
                with tracer.start_as_current_span(f"step-{i}"):
                    pass
    spans = _FINISHED.get_finished_spans()
    return encode_spans(spans).SerializeToString(), [format(s.context.span_id, "016x") for s in spans]


class Sender:
    """Posts requests as an OTLP exporter would: a 503 is sent again (after its Retry-After, capped) until 2xx."""

    def __init__(self, url: str) -> None:
        self.client = httpx.Client(base_url=url, timeout=30)
        self.acked: list[str] = []
        self.answers: list[int] = []
        self.retry_after: list[str] = []

    def send(self, body: bytes, ids: list[str], *, retry: bool = True, deadline_s: float = 60) -> int:
        deadline = time.monotonic() + deadline_s
        while True:
            r = self.client.post("/v1/traces", content=body, headers={"content-type": PROTOBUF})
            self.answers.append(r.status_code)
            if r.status_code == 200:
                self.acked += ids
                return 200
            assert r.status_code == 503, r.text
            self.retry_after.append(r.headers.get("retry-after", ""))
            if not retry or time.monotonic() > deadline:
                return r.status_code
            time.sleep(min(0.2, float(r.headers.get("retry-after") or 1)))

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Sender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def stored(db: Path) -> set[str]:
    """The span ids in the history file, read as another process would (the viewer has stopped)."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return {row[0] for row in conn.execute("SELECT span_id FROM spans")}


@contextlib.contextmanager
def locked(db: Path) -> Iterator[None]:
    """Another process holds the database's write lock until the block ends."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys; c = sqlite3.connect(sys.argv[1], isolation_level=None); "
            "c.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); sys.stdin.readline(); c.execute('COMMIT')",
            str(db),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdin is not None
    assert proc.stdout.readline().strip() == "locked"
    try:
        yield
    finally:
        proc.stdin.write("\n")
        proc.stdin.close()
        proc.wait(10)
        proc.stdout.close()


def health(viewer_url: str) -> dict[str, Any]:
    data: dict[str, Any] = httpx.get(f"{viewer_url}/healthz", timeout=10).json()
    return data


# --------------------------------------------------------------------------------------------------
# 3. History writes that fail
# --------------------------------------------------------------------------------------------------


def settled(viewer_url: str) -> bool:
    """The history took everything: healthy, nothing waiting."""
    state = health(viewer_url)
    return state["status"] == "ok" and state["store"]["backlog_rows"] == 0


def test_a_locked_database_loses_nothing_and_the_stream_goes_on(
    make_viewer: Callable[..., Viewer], tmp_path: Path
) -> None:
    db = tmp_path / "v.db"
    viewer = make_viewer(db=db)
    with Sender(viewer.url) as sender, SseClient(f"{viewer.url}/api/stream?type=span.ended") as sse:
        with locked(db):
            for _ in range(6):  # acknowledged: in the intake log, though the database cannot be written
                assert sender.send(*_request(50), retry=False) == 200
            state = wait_for(lambda: (h := health(viewer.url))["status"] == "degraded" and h, what="degraded")
            assert "locked" in state["reason"]
            assert state["store"]["backlog_rows"] > 0
            sse.read_until(lambda e: e["data"]["span"]["span_id"] == sender.acked[-1])  # live goes on
        wait_for(lambda: settled(viewer.url), what="the history to take the backlog")
    viewer.stop()
    assert len(sender.acked) == 300
    assert set(sender.acked) <= stored(db)


def test_a_full_backlog_refuses_at_once_and_the_real_exporter_retries(
    make_viewer: Callable[..., Viewer], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    db = tmp_path / "v.db"
    store = SqliteHistory(db, max_backlog_bytes=30_000)
    viewer = make_viewer(db=store)
    sender = Sender(viewer.url)
    request.addfinalizer(sender.close)
    provider = TracerProvider(resource=Resource.create({"service.name": "exporter"}))
    processor = BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{viewer.url}/v1/traces"), schedule_delay_millis=100)
    provider.add_span_processor(processor)
    with locked(db):
        body, ids = _request(200)  # about 60 kB of rows: over the backlog's limit once queued
        assert sender.send(body, ids, retry=False) == 200
        wait_for(lambda: "backlog full" in (health(viewer.url)["reason"] or ""), what="the backlog to be full")
        assert sender.send(*_request(10), retry=False) == 503
        assert sender.retry_after[-1] == "2"  # short: exporters give up when it is past their own timeout
        with provider.get_tracer("t").start_as_current_span("sent by the stock exporter") as span:
            exported = format(span.get_span_context().span_id, "016x")
        # the exporter's first attempt meets the full backlog (503) and retries after Retry-After
        wait_for(lambda: sender.answers.count(503) >= 1)
    assert processor.force_flush(30_000)
    provider.shutdown()
    wait_for(lambda: settled(viewer.url), what="the history to take the backlog")
    viewer.stop()
    on_disk = stored(db)
    assert exported in on_disk
    assert set(ids) <= on_disk


@pytest.mark.slow
def test_a_full_disk_is_reported_and_nothing_acknowledged_is_lost(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    db, port = tmp_path / "v.db", free_port()

    def limit_file_size() -> None:  # writes past 300 kB fail as on a full disk (SIGXFSZ is ignored by Python)
        resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, resource.RLIM_INFINITY))

    proc = subprocess.Popen(
        [sys.executable, "-m", "otelflow.cli", "serve", "--port", str(port), "--db", str(db)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=limit_file_size,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        assert proc.stdout is not None
        assert "listening on" in proc.stdout.readline()
        sender = Sender(url)
        request.addfinalizer(sender.close)
        answers: list[int] = []
        for _ in range(100):  # about 700 kB of requests: past the limit, in the intake log or the database
            answers.append(sender.send(*_request(100), retry=False))
            if answers[-1] == 503:
                break
        assert answers[-1] == 503  # the intake log cannot be written: not acknowledged
        state = health(url)
        assert state["status"] == "degraded"
        assert "intake log" in state["reason"]
        resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))  # freed
        assert sender.send(*_request(100)) == 200
        wait_for(lambda: settled(url), what="the history to recover")
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(20)
        if proc.stdout is not None:
            proc.stdout.close()
    assert set(sender.acked) <= stored(db)


# --------------------------------------------------------------------------------------------------
# 4. kill -9
# --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_kill_9_under_load_loses_no_acknowledged_span(tmp_path: Path) -> None:
    db, port = tmp_path / "v.db", free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "otelflow.cli", "serve", "--port", str(port), "--db", str(db)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert "listening on" in proc.stdout.readline()
    bodies = [_request(100) for _ in range(400)]
    acked: list[list[str]] = [[], []]
    answered = threading.Semaphore(0)

    def post(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        with contextlib.suppress(OSError, http.client.HTTPException):
            while bodies:
                body, ids = bodies.pop()
                conn.request("POST", "/v1/traces", body=body, headers={"Content-Type": PROTOBUF})
                response = conn.getresponse()
                response.read()
                if response.status == 200:
                    acked[k] += ids
                answered.release()

    threads = [threading.Thread(target=post, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for _ in range(20):  # under load: twenty requests answered, more in flight
        assert answered.acquire(timeout=30)
    proc.kill()
    proc.wait(10)
    proc.stdout.close()
    for t in threads:
        t.join(30)
    everything = acked[0] + acked[1]
    assert len(everything) >= 2000
    # started again, the viewer first ingests what its intake log holds beyond the history
    again = subprocess.Popen(
        [sys.executable, "-m", "otelflow.cli", "serve", "--port", str(port), "--db", str(db)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert again.stdout is not None
        assert "listening on" in again.stdout.readline()
        wait_for(lambda: settled(f"http://127.0.0.1:{port}"), what="the replay to be committed")
    finally:
        again.send_signal(signal.SIGINT)
        again.wait(20)
        if again.stdout is not None:
            again.stdout.close()
    assert set(everything) <= stored(db)


# --------------------------------------------------------------------------------------------------
# 7. A large request
# --------------------------------------------------------------------------------------------------


def test_a_request_of_20000_spans_cuts_no_client_and_stalls_nothing(viewer: Viewer) -> None:
    body, ids = _request(20_000)
    clients = [SseClient(f"{viewer.url}/api/stream?type=span.ended", read_timeout=60) for _ in range(3)]
    wait_for(lambda: viewer.hub.broadcast.subscriber_count == 3)
    readers = [
        threading.Thread(target=c.read_until, args=(lambda e: e["data"]["span"]["span_id"] == ids[-1],), daemon=True)
        for c in clients
    ]
    for r in readers:
        r.start()
    posted = threading.Event()
    answered_during: list[float] = []

    def poll_health() -> None:
        with httpx.Client(base_url=viewer.url, timeout=30) as client:
            while not posted.is_set():
                client.get("/healthz")
                if not posted.is_set():
                    answered_during.append(time.monotonic())

    poller = threading.Thread(target=poll_health)
    poller.start()
    r = httpx.post(f"{viewer.url}/v1/traces", content=body, headers={"content-type": PROTOBUF}, timeout=120)
    posted.set()
    poller.join(30)
    assert r.status_code == 200
    for reader in readers:
        reader.join(60)
    try:
        for c in clients:
            got = [e["data"]["span"]["span_id"] for e in c.events]
            assert got == ids  # every span, in order, once: nobody was cut
        assert viewer.hub.stats["cut"] == 0
        assert len(answered_during) >= 3  # /healthz kept answering while the request was ingested
    finally:
        for c in clients:
            c.close()


def _raw_sse(port: int, path: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    return sock


def test_a_client_cut_before_its_first_event_resumes_without_a_gap(make_viewer: Callable[..., Viewer]) -> None:
    viewer = make_viewer(hub=Hub(queue_limit=50))
    with SseClient(f"{viewer.url}/api/stream?type=span.ended") as first:
        line = next(first.lines)
        while not line.startswith("id: "):  # the first frame names where the stream starts
            line = next(first.lines)
        start = line[4:]
        wait_for(lambda: viewer.hub.broadcast.subscriber_count == 1)
        t = trace_id()
        spans = [record(t, span_id(), f"s{i}", ended=True) for i in range(200)]
        viewer.post_json(spans)
        assert first.read_all() == []  # cut for falling behind, before any event reached it
    assert viewer.hub.stats["cut"] == 1
    with SseClient(f"{viewer.url}/api/stream?type=span.ended&last_event_id={start}") as again:
        again.read_until(lambda e: e["data"]["span"]["name"] == "s199")
        assert [e["data"]["span"]["name"] for e in again.events] == [f"s{i}" for i in range(200)]


# --------------------------------------------------------------------------------------------------
# 8. Traces whose root never comes
# --------------------------------------------------------------------------------------------------


def test_runs_without_root_or_heartbeat_end_as_abandoned(make_viewer: Callable[..., Viewer], tmp_path: Path) -> None:
    store = SqliteHistory(tmp_path / "v.db", max_runs=2)
    viewer = make_viewer(db=store, idle_run_s=1.0)
    orphans = [trace_id() for _ in range(4)]
    alive = trace_id()
    with SseClient(f"{viewer.url}/api/stream?type=run.ended") as sse:
        for t in orphans:  # children from an SDK without heartbeats; their root never arrives
            child = record(t, span_id(), "child", parent=span_id(), ended=True)
            viewer.post_json([dataclasses.replace(child, resource={"service.name": "other-sdk"})])
        # a running root in a worker that keeps sending heartbeats is never ended by quiet alone
        viewer.post_json([record(alive, span_id(), "long", kind="workflow", worker="w-alive")])
        for _ in orphans:
            sse.next_event()
        ended = {e["data"]["run_id"]: e["data"]["run"]["status"] for e in sse.events}
        assert ended == dict.fromkeys(orphans, "abandoned")
        until = time.monotonic() + 3.0
        while time.monotonic() < until:  # three quiet spells long
            httpx.post(
                f"{viewer.url}/v1/traces",
                json=heartbeat("w-alive"),
                headers={"content-type": "application/json"},
                timeout=5,
            )
            time.sleep(0.3)
    assert httpx.get(f"{viewer.url}/api/runs/{alive}", timeout=5).json()["run"]["status"] == "running"
    store.retention_now()  # abandoned runs are ended runs: retention bounds them like any other
    wait_for(
        lambda: httpx.get(f"{viewer.url}/api/runs?status=abandoned", timeout=5).json()["total"] == 2,
        what="retention to keep two ended runs",
    )


def test_the_backlog_empties_when_batches_waiting_together_share_a_run(tmp_path: Path) -> None:
    """Batches that wait together (the database was locked) are written as one; a run written by several of them
    is one row, and the backlog still counts down to nothing once they commit."""
    db = tmp_path / "v.db"
    store = SqliteHistory(db)
    store.open()
    try:
        trace = trace_id()
        with locked(db):
            for status in ("running", "running", "ok"):
                with store.batch():
                    store.put_run({"trace_id": trace, "status": status, "start_time_ns": 1})
                    store.put_span(record(trace, span_id(), "step", ended=True))
            wait_for(lambda: store.failure is not None, what="the writer to meet the lock")
            assert store.backlog_rows == 6
        asyncio.run(store.flush())
        wait_for(lambda: store.failure is None and store.backlog_rows == 0, what="the backlog to empty")
        runs, total = asyncio.run(store.list_runs(RunQuery()))
        assert (total, runs[0]["status"]) == (1, "ok")
    finally:
        store.close()
