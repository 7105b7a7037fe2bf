"""Viewer fan-out to SSE clients, against a naive sse-starlette broadcaster measured in the same run.

Three processes per measurement: the server under test, one process holding every SSE client (raw
sockets and ``selectors``, so that the clients do not starve the server on 2 cores), and this driver,
which injects events over HTTP.

1. Throughput, 10 clients: the driver POSTs E spans as fast as the server takes them (OTLP protobuf,
   500 ended spans a request, traces of 10, so 600 events a request: ``run.started``, 10 ``span.ended``,
   ``run.ended`` per trace) to ``otelflow serve``'s ``/v1/traces``. The naive broadcaster is a FastAPI app
   (in this file) with one unbounded ``asyncio.Queue`` per client and an ``EventSourceResponse`` that sends
   one event per send; its ``POST /publish`` takes a JSON list of the very envelopes otelflow would
   publish for the same spans (``run.started``/``span.ended``/``run.ended``, same span JSON), encodes
   each once and puts it on every queue. One delivery = one SSE frame received by one client;
   deliveries/s = all frames / (last frame received − first POST sent). Target: otelflow >= 5x naive.
2. Sustained, otelflow only: 100 clients, 1,000 events/s (10 ended spans of one long-lived trace every
   10 ms, paced on a deadline schedule, each carrying ``bench.sent_ns``) for ~10 s; latency per frame =
   receive time − ``bench.sent_ns`` (same clock). Target: p99 <= 100 ms, nothing dropped or cut.

Run: ``python bench/bench_fanout.py [--events 40000] [--repeats 2] [--clients 100] [--seconds 10]``.
Prints figures and ratios (medians of the repeats), not a verdict.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import re
import selectors
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn
from _common import (
    HOST,
    VIEWER_READY,
    cpu_seconds,
    healthz,
    open_streams,
    post_many,
    raise_nofile,
    recv_some,
    start_server,
    stop,
    take_head,
    whole_frames,
)
from _common import (
    start_viewer as _start_viewer,
)
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sse_starlette import EventSourceResponse, ServerSentEvent

SPANS_PER_REQUEST = 500
SPANS_PER_TRACE = 10
EVENTS_PER_TRACE = SPANS_PER_TRACE + 2


# --------------------------------------------------------------------------------------------------
# servers
# --------------------------------------------------------------------------------------------------


def start_naive() -> tuple[subprocess.Popen[str], int]:
    return start_server([sys.executable, __file__, "--_naive-server"], "naive listening on port:")


def naive_server() -> None:
    """The naive broadcaster: one asyncio.Queue per client, one event per send (sse-starlette)."""
    app = FastAPI()
    queues: set[asyncio.Queue[tuple[str, str, str]]] = set()
    seq = [0]

    @app.post("/publish")
    async def publish(request: Request) -> JSONResponse:
        for ev in json.loads(await request.body()):
            seq[0] += 1
            item = (str(seq[0]), ev["type"], json.dumps(ev, separators=(",", ":")))  # encoded once
            for q in queues:
                q.put_nowait(item)
        return JSONResponse({"ok": True})

    @app.get("/stream")
    async def stream() -> EventSourceResponse:
        q: asyncio.Queue[tuple[str, str, str]] = asyncio.Queue()
        queues.add(q)

        async def events() -> Any:
            try:
                while True:
                    id_, type_, data = await q.get()
                    yield ServerSentEvent(data=data, event=type_, id=id_)
            finally:
                queues.discard(q)

        return EventSourceResponse(events(), ping=15)

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, 0))
    sock.listen(4096)  # connections wait in the backlog until uvicorn accepts them
    print(f"naive listening on port:{sock.getsockname()[1]}", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
    server.run(sockets=[sock])


# --------------------------------------------------------------------------------------------------
# the SSE clients (a separate process: ``--_clients``)
# --------------------------------------------------------------------------------------------------


def clients_main(args: argparse.Namespace) -> None:
    """Hold ``n`` SSE connections; count frames, and latencies of frames of ``event`` carrying bench.sent_ns.

    Prints ``ready`` once every stream answered 200, then a JSON result when each client has ``expect``
    frames, after ``idle_s`` without any frame (once frames came), on ``stop`` on stdin, or after ``max_s``.
    """
    raise_nofile(args.n + 64)
    pattern = re.compile(
        rb"event: " + re.escape(args.event.encode()) + rb"\r?\ndata: [^\n]*?\"bench\.sent_ns\":\"?(\d+)"
    )
    marker = b"\ndata: "
    sel = selectors.DefaultSelector()

    def state(i: int, s: socket.socket) -> dict[str, Any]:
        return {"i": i, "sock": s, "head": b"", "ok": False, "rem": b"", "frames": 0, "bytes": 0, "first": 0, "last": 0}

    states = open_streams(sel, args.port, args.path, args.n, state)
    sel.register(sys.stdin, selectors.EVENT_READ, None)
    latencies: list[int] = []
    started = time.monotonic()
    ready = False
    last_frame = 0.0
    open_count = args.n
    eof = 0
    done = 0
    while time.monotonic() - started < args.max_s and open_count:
        events = sel.select(0.2)
        now_mono = time.monotonic()
        if args.idle_s and last_frame and now_mono - last_frame > args.idle_s:
            break
        for key, _ in events:
            st = key.data
            if st is None:
                line = sys.stdin.readline()
                if not line or line.strip() == "stop":
                    open_count = 0
                    break
                continue
            chunk = recv_some(st["sock"])
            if chunk is None:
                continue
            recv_ns = time.time_ns()
            if not chunk:
                sel.unregister(st["sock"])
                st["sock"].close()
                open_count -= 1
                eof += 1
                continue
            if not st["ok"]:
                st["head"], body = take_head(st["head"], chunk)
                if body is None:
                    continue
                chunk = body
                st["ok"] = True
                if all(x["ok"] for x in states) and not ready:
                    ready = True
                    print("ready", flush=True)
            whole, st["rem"] = whole_frames(st["rem"], chunk)
            if not whole:
                continue
            n = whole.count(marker)
            if n:
                if not st["frames"]:
                    st["first"] = recv_ns
                st["frames"] += n
                st["bytes"] += len(whole)
                st["last"] = recv_ns
                last_frame = now_mono
                if args.expect and st["frames"] >= args.expect and st["frames"] - n < args.expect:
                    done += 1
                if args.latency:
                    latencies.extend(recv_ns - int(m) for m in pattern.findall(whole))
        if args.expect and done >= args.n:
            break
    for st in states:
        with contextlib.suppress(OSError):
            st["sock"].close()
    latencies.sort()

    def pct(q: float) -> float | None:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] / 1e6 if latencies else None

    result = {
        "frames": [st["frames"] for st in states],
        "bytes": sum(st["bytes"] for st in states),
        "first_ns": min((st["first"] for st in states if st["frames"]), default=0),
        "last_ns": max((st["last"] for st in states), default=0),
        "eof": eof,
        "ready": ready,
        "lat_n": len(latencies),
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "max_ms": latencies[-1] / 1e6 if latencies else None,
        "cpu_s": time.process_time(),
    }
    print(json.dumps(result), flush=True)


class Clients:
    """The clients process, seen from the driver."""

    def __init__(
        self,
        port: int,
        n: int,
        path: str,
        *,
        expect: int = 0,
        idle_s: float = 0.0,
        max_s: float = 60.0,
        latency: bool = False,
        event: str = "span.ended",
    ) -> None:
        cmd = [
            sys.executable,
            __file__,
            "--_clients",
            str(port),
            "--_n",
            str(n),
            "--_path",
            path,
            "--_expect",
            str(expect),
            "--_idle-s",
            str(idle_s),
            "--_max-s",
            str(max_s),
            "--_event",
            event,
        ]
        if latency:
            cmd.append("--_latency")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.max_s = max_s
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        try:
            if not sel.select(30) or self.proc.stdout.readline().strip() != "ready":
                self.close()
                raise RuntimeError("the SSE clients did not connect")
        finally:
            sel.close()

    def result(self, stop_now: bool = False) -> dict[str, Any]:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        if stop_now:
            with contextlib.suppress(OSError):
                self.proc.stdin.write("stop\n")
                self.proc.stdin.flush()
        try:
            # read until the process exits; closing its stdin first would tell it to stop
            timer = threading.Timer(self.max_s + 30, self.proc.kill)
            timer.start()
            try:
                out = self.proc.stdout.read()
            finally:
                timer.cancel()
        finally:
            self.close()
        return dict(json.loads(out.strip().splitlines()[-1]))

    def close(self) -> None:
        stop(self.proc)


# --------------------------------------------------------------------------------------------------
# payloads
# --------------------------------------------------------------------------------------------------


def build_otlp(n_spans: int, *, trace_id: bytes | None = None, sent_ns: int | None = None) -> bytes:
    """Ended spans as one OTLP protobuf request: traces of 10 (root + 9), or children of ``trace_id``."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
    from opentelemetry.proto.trace.v1.trace_pb2 import Status

    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.append(KeyValue(key="service.name", value=AnyValue(string_value="bench-fanout")))
    ss = rs.scope_spans.add()
    ss.scope.name = "otelflow"
    now = time.time_ns()
    tid, root = trace_id, b""
    for i in range(n_spans):
        span = ss.spans.add()
        if trace_id is None and i % SPANS_PER_TRACE == 0:
            tid, root = os.urandom(16), os.urandom(8)
            span.span_id = root
            span.name = "invoke_workflow bench"
            span.attributes.append(KeyValue(key="otelflow.kind", value=AnyValue(string_value="workflow")))
        else:
            span.span_id = os.urandom(8)
            span.parent_span_id = root or b"\x01" * 8
            span.name = "step"
            span.attributes.append(KeyValue(key="otelflow.kind", value=AnyValue(string_value="node")))
            span.attributes.append(KeyValue(key="otelflow.node.id", value=AnyValue(string_value=f"n{i % 10}")))
        assert tid is not None
        span.trace_id = tid
        if sent_ns is not None:
            span.attributes.append(KeyValue(key="bench.sent_ns", value=AnyValue(int_value=sent_ns)))
        span.start_time_unix_nano = now
        span.end_time_unix_nano = now + 1_000_000
        span.status.code = Status.STATUS_CODE_OK
    return req.SerializeToString()


def naive_body(otlp: bytes) -> bytes:
    """The envelopes otelflow publishes for these spans (run.started, span.ended..., run.ended per trace)."""
    from otelflow.viewer.decode import decode_protobuf

    out: list[dict[str, Any]] = []
    for rec in decode_protobuf(otlp).records:
        if rec.parent_span_id is None:
            run = {"trace_id": rec.trace_id, "name": rec.name, "status": "running", "service": rec.service}
            out.append({"id": "", "type": "run.started", "run_id": rec.trace_id, "run": run})
        out.append({"id": "", "type": "span.ended", "run_id": rec.trace_id, "span": rec.to_dict()})
    # run.ended once a trace's 10 spans are out
    by_trace: dict[str, int] = {}
    result: list[dict[str, Any]] = []
    for ev in out:
        result.append(ev)
        if ev["type"] == "span.ended":
            by_trace[ev["run_id"]] = by_trace.get(ev["run_id"], 0) + 1
            if by_trace[ev["run_id"]] == SPANS_PER_TRACE:
                run = {"trace_id": ev["run_id"], "name": "invoke_workflow bench", "status": "ok"}
                result.append({"id": "", "type": "run.ended", "run_id": ev["run_id"], "run": run})
    return json.dumps(result, separators=(",", ":")).encode()


def post_all(port: int, path: str, content_type: str, bodies: list[bytes], clients: int = 2) -> None:
    errors = post_many(port, path, content_type, bodies, clients)
    if errors:
        raise RuntimeError(f"{len(errors)} POSTs failed, e.g. {errors[0]}")


# --------------------------------------------------------------------------------------------------
# measurements
# --------------------------------------------------------------------------------------------------


def throughput(
    server: subprocess.Popen[str], port: int, paths: tuple[str, str], ctype: str, bodies: list[bytes], n: int
) -> dict[str, Any]:
    """Deliveries/s to ``n`` clients of the events in ``bodies`` (600 per body), posted as fast as accepted."""
    stream_path, post_path = paths
    expect = len(bodies) * SPANS_PER_REQUEST // SPANS_PER_TRACE * EVENTS_PER_TRACE
    clients = Clients(port, n, stream_path, expect=expect, idle_s=5.0, max_s=90.0)
    try:
        cpu0 = cpu_seconds(server.pid)
        t0 = time.time_ns()
        post_all(port, post_path, ctype, bodies)
        r = clients.result()
        server_cpu = cpu_seconds(server.pid) - cpu0
    finally:
        clients.close()
    total = sum(r["frames"])
    secs = max(1e-9, (r["last_ns"] - t0) / 1e9)
    return {"rate": total / secs, "secs": secs, "total": total, "expected": expect * n, "server_cpu": server_cpu, **r}


def sustained(
    server: subprocess.Popen[str], port: int, n: int, rate: int, seconds: float, per_post: int
) -> dict[str, Any]:
    """``rate`` events/s (``per_post`` ended spans of one trace per POST, deadline-paced) to ``n`` clients."""
    interval = per_post / rate
    posts = int(seconds / interval)
    clients = Clients(port, n, "/api/stream", max_s=seconds + 60, latency=True, event="span.ended")
    trace_id = os.urandom(16)
    late = 0
    try:
        conn = http.client.HTTPConnection(HOST, port, timeout=10)
        headers = {"Content-Type": "application/x-protobuf"}
        cpu0 = cpu_seconds(server.pid)
        t0 = next_t = time.perf_counter()
        for _ in range(posts):
            delay = next_t - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            elif delay < -interval:
                late += 1
            body = build_otlp(per_post, trace_id=trace_id, sent_ns=time.time_ns())
            conn.request("POST", "/v1/traces", body=body, headers=headers)
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                raise RuntimeError(f"POST answered {resp.status}")
            next_t += interval
        conn.close()
        elapsed = time.perf_counter() - t0
        server_cpu = cpu_seconds(server.pid) - cpu0
        time.sleep(1.0)  # let the last frames arrive
        r = clients.result(stop_now=True)
    finally:
        clients.close()
    achieved = posts * per_post / elapsed
    return {
        "posts": posts,
        "late_posts": late,
        "expected": posts * per_post,
        "achieved": achieved,
        "elapsed": elapsed,
        "server_cpu": server_cpu,
        **r,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=40_000, help="events per throughput repeat (~)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--fan", type=int, default=10, help="clients in the throughput comparison")
    parser.add_argument("--clients", type=int, default=100, help="clients in the sustained test")
    parser.add_argument("--rate", type=int, default=1000, help="events/s in the sustained test")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the sustained test")
    parser.add_argument("--per-post", type=int, default=10, help="spans per POST in the sustained test")
    parser.add_argument("--skip-sustained", action="store_true")
    parser.add_argument(
        "--replica",
        action="store_true",
        help="measure otelflow as a replica: --broker on a throwaway redis-server, --db on a throwaway PostgreSQL",
    )
    parser.add_argument("--_naive-server", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--_clients", type=int, default=0, help=argparse.SUPPRESS, dest="port")
    parser.add_argument("--_n", type=int, default=10, help=argparse.SUPPRESS, dest="n")
    parser.add_argument("--_path", default="/api/stream", help=argparse.SUPPRESS, dest="path")
    parser.add_argument("--_expect", type=int, default=0, help=argparse.SUPPRESS, dest="expect")
    parser.add_argument("--_idle-s", type=float, default=0.0, help=argparse.SUPPRESS, dest="idle_s")
    parser.add_argument("--_max-s", type=float, default=60.0, help=argparse.SUPPRESS, dest="max_s")
    parser.add_argument("--_event", default="span.ended", help=argparse.SUPPRESS, dest="event")
    parser.add_argument("--_latency", action="store_true", help=argparse.SUPPRESS, dest="latency")
    args = parser.parse_args()
    if args._naive_server:
        naive_server()
        return
    if args.port:
        clients_main(args)
        return

    requests = max(1, args.events // (SPANS_PER_REQUEST // SPANS_PER_TRACE * EVENTS_PER_TRACE))
    ours_rates: list[float] = []
    naive_rates: list[float] = []
    with tempfile.TemporaryDirectory(prefix="otelflow-bench-") as tmpdir, contextlib.ExitStack() as servers:
        start_viewer = _viewer_starter(servers, args.replica)
        print(f"throughput: {args.fan} clients, {requests} requests x 600 events per repeat, {args.repeats} repeats")
        for rep in range(args.repeats):
            otlp = [build_otlp(SPANS_PER_REQUEST) for _ in range(requests)]
            naive = [naive_body(b) for b in otlp]
            proc, port = start_viewer(Path(tmpdir) / f"viewer{rep}.db")
            try:
                r = throughput(proc, port, ("/api/stream", "/v1/traces"), "application/x-protobuf", otlp, args.fan)
                cut = healthz(port)["hub"]["cut"]
            finally:
                stop(proc)
            ours_rates.append(r["rate"])
            print(
                f"  otelflow : {r['rate']:>9,.0f} deliveries/s  ({r['total']:,}/{r['expected']:,} frames in "
                f"{r['secs']:.2f} s, {r['bytes'] / max(1, r['total']):.0f} B/frame, cut {cut}, eof {r['eof']}; "
                f"CPU s: server {r['server_cpu']:.1f}, clients {r['cpu_s']:.1f})"
            )
            proc, port = start_naive()
            try:
                r = throughput(proc, port, ("/stream", "/publish"), "application/json", naive, args.fan)
            finally:
                stop(proc)
            naive_rates.append(r["rate"])
            print(
                f"  naive    : {r['rate']:>9,.0f} deliveries/s  ({r['total']:,}/{r['expected']:,} frames in "
                f"{r['secs']:.2f} s, {r['bytes'] / max(1, r['total']):.0f} B/frame, eof {r['eof']}; "
                f"CPU s: server {r['server_cpu']:.1f}, clients {r['cpu_s']:.1f})"
            )
        ours, base = statistics.median(ours_rates), statistics.median(naive_rates)
        print(f"fan-out to {args.fan} clients: otelflow {ours:,.0f}/s, naive sse-starlette {base:,.0f}/s")
        print(f"  ratio {ours / base:.1f}x  (target >= 5x; medians of {args.repeats})")

        if args.skip_sustained:
            return
        print(f"sustained: {args.clients} clients x {args.rate} events/s for {args.seconds:.0f} s")
        proc, port = start_viewer(Path(tmpdir) / "sustained.db")
        try:
            s = sustained(proc, port, args.clients, args.rate, args.seconds, args.per_post)
            cut = healthz(port)["hub"]["cut"]
        finally:
            stop(proc)
        frames = s["frames"]
        got = sum(frames)
        print(
            f"  delivered {got:,} of {s['expected'] * args.clients:,} frames (per client min {min(frames):,}); "
            f"cut {cut}, closed {s['eof']}, late POSTs {s['late_posts']}/{s['posts']}"
        )
        print(
            f"  injected {s['achieved']:,.0f} events/s over {s['elapsed']:.1f} s (asked {args.rate}); "
            f"CPU s: server {s['server_cpu']:.1f}, clients {s['cpu_s']:.1f}"
        )
        print(
            f"  latency POST sent -> frame received: p50 {s['p50_ms']:.1f} ms, p99 {s['p99_ms']:.1f} ms "
            f"(target <= 100 ms), max {s['max_ms']:.1f} ms, {s['lat_n']:,} samples"
        )


def _viewer_starter(servers: contextlib.ExitStack, replica: bool) -> Callable[[Path], tuple[Any, int]]:
    """How to start the otelflow server under test: ``otelflow serve --db PATH``, or (``replica``) a replica with
    ``--broker`` and ``--db postgresql://`` (a new database each time) on servers ``servers`` stops."""
    if not replica:
        return _start_viewer
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.pg_server import PgServer
    from tests.redis_server import RedisServer

    redis = RedisServer().start()
    servers.callback(redis.close)
    pg = PgServer()
    pg.start()
    servers.callback(pg.remove)

    def start(_db: Path) -> tuple[Any, int]:
        cmd = [sys.executable, "-m", "otelflow.cli", "serve", "--host", HOST, "--port", "0"]
        cmd += ["--broker", redis.url, "--db", pg.create_database()]
        return start_server(cmd, VIEWER_READY, 30)

    print("otelflow runs as a replica (Redis Streams + PostgreSQL)")
    return start


if __name__ == "__main__":
    main()
