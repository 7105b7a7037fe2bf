"""Viewer replicas on Redis Streams + PostgreSQL, against the embedded viewer, in the same run.

Servers (children of this process, loopback, free ports): a throwaway ``redis-server`` and PostgreSQL (as the
tests start them: ``tests/redis_server.py``, ``tests/pg_server.py``); ``otelflow serve`` three times: the embedded
viewer (SQLite file), and two replicas with ``--broker`` and ``--db postgresql://...`` (one database).

1. Ingest (as ``bench_ingest.py``: OTLP protobuf, 500 rich spans a request, 4 keep-alive clients, one raw SSE
   subscriber counting every event), rounds interleaved: the embedded viewer; one replica (every POST to replica
   1, the subscriber on replica 1); two replicas (POSTs alternate between them, the subscriber on replica 2).
   A round ends when every span is stored (the history's committed span count in ``/healthz``, summed over the
   replicas) and every event reached the subscriber. Target: one replica >= 10,000 spans/s.
2. Live latency (as ``bench_latency.py``: a worker process with ``otelflow.configure(live=...)`` starting paced
   spans, 10 raw SSE clients in another process): the embedded viewer, then worker -> replica 1 with the clients on
   replica 2. Targets across replicas: p50 <= 10 ms, p99 <= 50 ms.

Run: ``python bench/bench_replicas.py [--spans 20000] [--rounds 3] [--rate 1000] [--seconds 5]``. Prints figures and
ratios, not a verdict.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ (the servers), from the repository root

import bench_latency as lat
from _common import HOST, VIEWER_READY, healthz, post_many, start_server, stop
from bench_ingest import SPANS_PER_REQUEST, SPANS_PER_TRACE, SseCounter, build_payloads, events_per_trace

from tests.pg_server import PgServer
from tests.redis_server import RedisServer


def serve(*args: str) -> tuple[subprocess.Popen[str], int]:
    cmd = [sys.executable, "-m", "otelflow.cli", "serve", "--host", HOST, "--port", "0", *args]
    return start_server(cmd, VIEWER_READY, 30)


def stored(ports: list[int]) -> int:
    total = 0
    for port in ports:
        store = healthz(port)["store"]
        assert isinstance(store, dict)
        total += int(store["spans"])
    return total


def ingest_round(
    post_ports: list[int], store_ports: list[int], sse: SseCounter, payloads: list[bytes], span_events: int
) -> float:
    """Seconds from the first POST until every span is stored and every event reached the subscriber."""
    n_spans = len(payloads) * SPANS_PER_REQUEST
    goal = stored(store_ports) + n_spans
    frames_goal = sse.frames + n_spans // SPANS_PER_TRACE * events_per_trace(span_events)
    start = time.perf_counter()
    shares = [payloads[i :: len(post_ports)] for i in range(len(post_ports))]
    errors: list[str] = []
    threads = [
        threading.Thread(
            target=lambda p=port, b=share: errors.extend(
                post_many(p, "/v1/traces", "application/x-protobuf", b, max(1, 4 // len(post_ports)))
            )
        )
        for port, share in zip(post_ports, shares, strict=True)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"{len(errors)} POSTs failed, e.g. {errors[0]}")
    done_store = done_pub = False
    while time.perf_counter() - start < 120:
        done_pub = done_pub or sse.frames >= frames_goal
        done_store = done_store or stored(store_ports) >= goal
        if done_store and done_pub:
            return time.perf_counter() - start
        if sse.eof:
            raise RuntimeError("the SSE subscriber was cut")
        time.sleep(0.005)
    raise RuntimeError(
        f"round not complete: stored {stored(store_ports):,} of {goal:,}, {sse.frames:,} of {frames_goal:,} frames"
    )


def latency(worker_port: int, client_port: int, args: argparse.Namespace) -> tuple[float, float, int]:
    clients = lat.Clients(client_port, args.clients, max_s=args.seconds + 60)
    try:
        cmd = [sys.executable, lat.__file__, "--_worker", f"http://{HOST}:{worker_port}"]
        cmd += ["--rate", str(args.rate), "--seconds", str(args.seconds), "--hold", "0.2"]
        worker = subprocess.run(cmd, capture_output=True, text=True, timeout=args.seconds + 60, check=True)
        made = int(json.loads(worker.stdout.strip().splitlines()[-1])["spans"])
        time.sleep(0.5)
    finally:
        result: dict[str, Any] = clients.result()
    samples = result["lat_ns"]
    if not samples:
        raise RuntimeError("no latency samples")
    return lat.pct(samples, 0.5), lat.pct(samples, 0.99), len(samples) * 100 // max(1, made * args.clients)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--spans", type=int, default=20_000, help="spans per round (multiple of 500)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--events", type=int, default=2, help="events per span")
    parser.add_argument("--rate", type=float, default=1000.0, help="latency: spans started per second")
    parser.add_argument("--seconds", type=float, default=5.0, help="latency: how long the worker runs")
    parser.add_argument("--clients", type=int, default=10, help="latency: SSE clients")
    args = parser.parse_args()
    n_spans = max(SPANS_PER_REQUEST, args.spans // SPANS_PER_REQUEST * SPANS_PER_REQUEST)
    # new traces for every setup and round: the replicas share one history, where a span sent again is stored once
    rounds = [[build_payloads(n_spans, args.events) for _ in range(3)] for _ in range(args.rounds)]
    warmup = [build_payloads(5 * SPANS_PER_REQUEST, args.events) for _ in range(3)]

    redis, pg = RedisServer().start(), PgServer()
    pg.start()
    procs: list[subprocess.Popen[str]] = []
    sses: list[SseCounter] = []
    try:
        db_url = pg.create_database()
        with tempfile.TemporaryDirectory(prefix="otelflow-bench-") as tmpdir:
            embedded = serve("--db", str(Path(tmpdir) / "viewer.db"))
            r1 = serve("--broker", redis.url, "--db", db_url)
            procs += [embedded[0], r1[0]]
            e_port, p1 = embedded[1], r1[1]
            e_sse, r1_sse = SseCounter(e_port), SseCounter(p1)
            sses += [e_sse, r1_sse]
            for sse in sses:
                sse.start()
            names = ["embedded (SQLite)", "1 replica (Redis + PostgreSQL)", "2 replicas (POSTs to both)"]
            rates: dict[str, list[float]] = {name: [] for name in names}

            def one_round(payloads: list[list[bytes]]) -> list[float]:
                """The three setups on their payloads; the second replica runs only for the third."""
                times = [ingest_round([e_port], [e_port], e_sse, payloads[0], args.events)]
                times.append(ingest_round([p1], [p1], r1_sse, payloads[1], args.events))
                proc2, p2 = serve("--broker", redis.url, "--db", db_url)
                try:
                    r2_sse = SseCounter(p2)
                    r2_sse.start()
                    try:
                        times.append(ingest_round([p1, p2], [p1, p2], r2_sse, payloads[2], args.events))
                    finally:
                        r2_sse.close()
                finally:
                    stop(proc2)
                return times

            one_round(warmup)
            for i, payloads in enumerate(rounds):
                for name, t in zip(names, one_round(payloads), strict=True):
                    rates[name].append(n_spans / t)
                print(f"  round {i + 1}: " + "; ".join(f"{n}: {r[-1]:,.0f}/s" for n, r in rates.items()), flush=True)
            for sse in sses:
                sse.close()
            sses = []
            lat_embedded = latency(e_port, e_port, args)
            proc2, p2 = serve("--broker", redis.url, "--db", db_url)
            procs.append(proc2)
            lat_replicas = latency(p1, p2, args)
    finally:
        for sse in sses:
            sse.close()
        for proc in procs:
            stop(proc)
        redis.close()
        pg.remove()

    base = statistics.median(rates["embedded (SQLite)"])
    print()
    print(f"ingest, POST -> stored + published ({args.rounds} rounds of {n_spans:,} spans, median):")
    for name, values in rates.items():
        rate = statistics.median(values)
        target = "   (target >= 10,000)" if name.startswith("1 replica") else ""
        print(f"  {name:32s}: {rate:9,.0f} spans/s  ratio to embedded {rate / base:.2f}x{target}")
    print(f"live latency, worker span start -> {args.clients} SSE clients, {args.rate:.0f} spans/s:")
    for name, (p50, p99, seen) in (("embedded", lat_embedded), ("replica 1 -> replica 2", lat_replicas)):
        print(f"  {name:24s}: p50 {p50:6.2f} ms   p99 {p99:6.2f} ms   ({seen}% of deliveries sampled)")
    print("  targets across replicas: p50 <= 10 ms, p99 <= 50 ms")


if __name__ == "__main__":
    main()
