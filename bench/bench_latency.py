"""Live latency: a worker's span start -> ``span.started`` at SSE clients in another process.

Four processes: ``otelflow serve`` (loopback, free port, SQLite file in a temp dir); one process holding
10 raw-socket SSE connections to ``/api/stream`` (``selectors``; unfiltered, as a browser would subscribe);
a worker that calls ``otelflow.configure(live=URL)`` and starts spans at a paced 1,000/s (deadline schedule,
not sleep-per-span) for ~5 s, each kept open 200 ms and carrying ``bench.sent_ns`` = ``time.time_ns()`` taken
just before ``start_span``; and this driver. Latency per frame = receive time (``time.time_ns()`` after the
read that completed the frame) − ``bench.sent_ns``; same machine, same clock.

Baseline, measured in the same run with the same clients: the floor of the path without the worker's SDK,
processor and exporter batching — the driver POSTs one pending-span snapshot (OTLP/JSON, as the exporter
sends) per request over a keep-alive connection, stamped just before the send, at 200/s; plus the bare
loopback HTTP round trip of those POSTs.

Targets: p50 <= 5 ms, p99 <= 25 ms. Run: ``python bench/bench_latency.py [--rate 1000] [--seconds 5]``.
Prints figures and ratios, not a verdict.
"""

from __future__ import annotations

import argparse
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
from pathlib import Path
from typing import Any

from _common import HOST, open_streams, recv_some, start_viewer, stop, take_head, whole_frames

# --------------------------------------------------------------------------------------------------
# processes
# --------------------------------------------------------------------------------------------------


def clients_main(port: int, n: int, event: str, max_s: float) -> None:
    """Hold ``n`` SSE connections; latencies of ``event`` frames carrying bench.sent_ns, until ``stop``."""
    pattern = re.compile(rb"event: " + re.escape(event.encode()) + rb"\r?\ndata: [^\n]*?\"bench\.sent_ns\":\"?(\d+)")
    sel = selectors.DefaultSelector()

    def state(_i: int, s: socket.socket) -> dict[str, Any]:
        return {"sock": s, "head": b"", "ok": False, "rem": b"", "frames": 0}

    states = open_streams(sel, port, "/api/stream", n, state)
    sel.register(sys.stdin, selectors.EVENT_READ, None)
    latencies: list[int] = []
    started = time.monotonic()
    ready = False
    running = True
    eof = 0
    while running and time.monotonic() - started < max_s:
        for key, _ in sel.select(0.2):
            st = key.data
            if st is None:
                line = sys.stdin.readline()
                if not line or line.strip() == "stop":
                    running = False
                continue
            chunk = recv_some(st["sock"])
            if chunk is None:
                continue
            recv_ns = time.time_ns()
            if not chunk:
                sel.unregister(st["sock"])
                eof += 1
                continue
            if not st["ok"]:
                st["head"], body = take_head(st["head"], chunk)
                if body is None:
                    continue
                chunk = body
                st["ok"] = True
                if not ready and all(x["ok"] for x in states):
                    ready = True
                    print("ready", flush=True)
            whole, st["rem"] = whole_frames(st["rem"], chunk)
            if not whole:
                continue
            st["frames"] += whole.count(b"\ndata: ")
            latencies.extend(recv_ns - int(m) for m in pattern.findall(whole))
    for st in states:
        with contextlib.suppress(OSError):
            st["sock"].close()
    print(json.dumps({"lat_ns": latencies, "frames": sum(st["frames"] for st in states), "eof": eof}), flush=True)


class Clients:
    """The clients process, seen from the driver."""

    def __init__(self, port: int, n: int, event: str = "span.started", max_s: float = 60.0) -> None:
        cmd = [sys.executable, __file__, "--_clients", str(port), "--_n", str(n), "--_event", event]
        cmd += ["--_max-s", str(max_s)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.max_s = max_s
        assert self.proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        try:
            if not sel.select(30) or self.proc.stdout.readline().strip() != "ready":
                stop(self.proc)
                raise RuntimeError("the SSE clients did not connect")
        finally:
            sel.close()

    def result(self) -> dict[str, Any]:
        """Stop the clients and return what they measured."""
        try:
            out, _ = self.proc.communicate("stop\n", timeout=self.max_s + 30)
        finally:
            stop(self.proc)
        return dict(json.loads(out.strip().splitlines()[-1]))


def worker_main(url: str, rate: float, seconds: float, hold_s: float) -> None:
    """Start spans at ``rate``/s on a deadline schedule, each open ``hold_s``, streaming live to ``url``."""
    from collections import deque

    import otelflow

    tel = otelflow.configure(service_name="bench-latency", live=url, otlp=False)
    tracer = tel.tracer
    interval = 1.0 / rate
    total = int(rate * seconds)
    open_spans: deque[tuple[float, Any]] = deque()
    made = 0
    with tracer.start_as_current_span("invoke_workflow bench-latency", attributes={"otelflow.kind": "workflow"}):
        time.sleep(0.2)  # the run is announced before the measured spans
        next_t = time.perf_counter()
        while made < total:
            now = time.perf_counter()
            while made < total and next_t <= now:
                sent = time.time_ns()
                span = tracer.start_span("step", attributes={"otelflow.kind": "node", "bench.sent_ns": sent})
                open_spans.append((now + hold_s, span))
                made += 1
                next_t += interval
            while open_spans and open_spans[0][0] <= now:
                open_spans.popleft()[1].end()
            delay = next_t - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        while open_spans:
            t_end, span = open_spans.popleft()
            time.sleep(max(0.0, t_end - time.perf_counter()))
            span.end()
    tel.force_flush(10_000)
    tel.shutdown()
    print(json.dumps({"spans": made}), flush=True)


# --------------------------------------------------------------------------------------------------
# baseline: a plain POST -> SSE hop
# --------------------------------------------------------------------------------------------------


def _hex(n: int) -> str:
    return os.urandom(n).hex()


def hop_baseline(port: int, clients_n: int, count: int, rate: float) -> tuple[list[int], list[int]]:
    """Latencies (ns) of single pending-span POSTs to the SSE clients, and the POST round trips (ns)."""
    clients = Clients(port, clients_n)
    rtts: list[int] = []
    trace_id = _hex(16)
    try:
        conn = http.client.HTTPConnection(HOST, port, timeout=10)
        headers = {"Content-Type": "application/json"}
        interval = 1.0 / rate
        next_t = time.perf_counter()
        for _ in range(count):
            delay = next_t - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            next_t += interval
            sent = time.time_ns()
            span = {
                "traceId": trace_id,
                "spanId": _hex(8),
                "name": "step",
                "kind": 1,
                "startTimeUnixNano": str(sent),
                "attributes": [
                    {"key": "otelflow.kind", "value": {"stringValue": "node"}},
                    {"key": "otelflow.pending", "value": {"boolValue": True}},
                    {"key": "bench.sent_ns", "value": {"intValue": str(sent)}},
                ],
            }
            body = json.dumps(
                {
                    "resourceSpans": [
                        {
                            "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "hop"}}]},
                            "scopeSpans": [{"scope": {"name": "otelflow"}, "spans": [span]}],
                        }
                    ]
                }
            )
            conn.request("POST", "/v1/traces", body=body, headers=headers)
            resp = conn.getresponse()
            resp.read()
            rtts.append(time.time_ns() - sent)
            if resp.status != 200:
                raise RuntimeError(f"POST answered {resp.status}")
        conn.close()
        time.sleep(0.5)
    finally:
        result = clients.result()
    return result["lat_ns"], rtts


# --------------------------------------------------------------------------------------------------


def pct(values: list[int], q: float) -> float:
    """Nearest-rank percentile, in ms."""
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rate", type=float, default=1000.0, help="spans started per second by the worker")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--hold", type=float, default=0.2, help="seconds each span stays open")
    parser.add_argument("--_clients", type=int, default=0, help=argparse.SUPPRESS, dest="clients_port")
    parser.add_argument("--_n", type=int, default=10, help=argparse.SUPPRESS, dest="n")
    parser.add_argument("--_event", default="span.started", help=argparse.SUPPRESS, dest="event")
    parser.add_argument("--_max-s", type=float, default=60.0, help=argparse.SUPPRESS, dest="max_s")
    parser.add_argument("--_worker", default="", help=argparse.SUPPRESS, dest="worker_url")
    args = parser.parse_args()
    if args.clients_port:
        clients_main(args.clients_port, args.n, args.event, args.max_s)
        return
    if args.worker_url:
        worker_main(args.worker_url, args.rate, args.seconds, args.hold)
        return

    with tempfile.TemporaryDirectory(prefix="otelflow-bench-") as tmpdir:
        proc, port = start_viewer(Path(tmpdir) / "viewer.db")
        worker: subprocess.Popen[str] | None = None
        try:
            hop, rtts = hop_baseline(port, args.clients, 400, 200.0)
            clients = Clients(port, args.clients, max_s=args.seconds + 60)
            try:
                cmd = [sys.executable, __file__, "--_worker", f"http://{HOST}:{port}"]
                cmd += ["--rate", str(args.rate), "--seconds", str(args.seconds), "--hold", str(args.hold)]
                worker = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
                timer = threading.Timer(args.seconds + 60, worker.kill)
                timer.start()
                try:
                    out, _ = worker.communicate()
                finally:
                    timer.cancel()
                if worker.returncode != 0:
                    raise RuntimeError(f"the worker failed ({worker.returncode})")
                made = json.loads(out.strip().splitlines()[-1])["spans"]
                time.sleep(0.5)
            finally:
                result = clients.result()
        finally:
            if worker is not None:
                stop(worker)
            stop(proc)

    lat = result["lat_ns"]
    if not lat or not hop:
        raise RuntimeError("no latency samples: did the clients get span.started frames?")
    expected = made * args.clients
    p50, p99 = pct(lat, 0.50), pct(lat, 0.99)
    h50, h99 = pct(hop, 0.50), pct(hop, 0.99)
    print(f"worker: {made} spans at {args.rate:.0f}/s, {args.clients} SSE clients in another process")
    print(f"  samples: {len(lat):,} of {expected:,} span.started deliveries ({result['frames']:,} frames in all)")
    print(f"worker span start -> SSE client : p50 {p50:6.2f} ms (target <= 5)   p99 {p99:6.2f} ms (target <= 25)")
    print(f"baseline POST -> SSE hop        : p50 {h50:6.2f} ms              p99 {h99:6.2f} ms  (1 span/POST, 200/s)")
    print(f"  loopback POST round trip      : p50 {pct(rtts, 0.5):6.2f} ms              p99 {pct(rtts, 0.99):6.2f} ms")
    print(f"ratio to the hop baseline       : p50 {p50 / h50:.1f}x   p99 {p99 / h99:.1f}x")
    print(f"  (max {max(lat) / 1e6:.1f} ms; mean {statistics.mean(lat) / 1e6:.2f} ms)")


if __name__ == "__main__":
    main()
