"""Viewer ingestion: OTLP protobuf (or JSON) spans from POST to stored (committed) and published, against baselines.

An ``otelflow serve`` subprocess (loopback, free port, SQLite file in a temp dir) receives OTLP/HTTP
protobuf requests of 500 ended spans each (traces of 10: a root and 9 children; each span with 3 attributes and 2
events, ``--events``) from a few concurrent
keep-alive clients (threads with ``http.client``), while one raw-socket SSE subscriber on ``/api/stream``
receives every published event. A round is timed from its first POST until both hold:

- stored: the store's writer has committed every span (``store.spans`` in ``GET /healthz`` — the
  ``Store.stats`` counter, bumped after each ``COMMIT``);
- published: the SSE subscriber has received every event (per trace: ``run.started``, per span ``span.started``,
  a ``span.event`` per event and ``span.ended``, then ``run.ended``: every span starts on the stream before it
  ends, also one that arrives ended).

Each round also reads the CPU time of the viewer's threads (``/proc``): CPU per span on the event loop's thread,
which decodes, applies and publishes every span, and on the history writer's. The loop's figure bounds the rate
(one interpreter: at most 10^6 / that many spans/s), and their sum times 30,000 is the CPU seconds per second the
target asks of the machine.

After the rounds, the size of the SQLite file in use (pages not on its free list) divided by the spans it holds
gives the history's bytes per span (target <= 0.8 KiB), with each table's share (``dbstat``).

Baselines, measured in the same run on the same payloads (in-process, without HTTP — which flatters them):

- naive receiver: parse, then one ``INSERT`` and one ``COMMIT`` per span into a fresh SQLite file with
  SQLite's defaults — the design behind "about 180 spans/s";
- wire-decode ceiling: ``ExportTraceServiceRequest.ParseFromString`` alone (C upb), and the viewer's own
  ``decode_protobuf`` (parse + SpanRecord building), to show how much of the budget decoding takes.

``--format json`` posts the same spans as OTLP/JSON, the format the live exporter (``OTELFLOW_VIEWER_URL``) sends;
its baselines are then ``json.loads`` and the viewer's ``decode_json``.

Target: >= 30,000 spans/s. Run: ``python bench/bench_ingest.py [--spans 50000] [--rounds 3] [--clients 4]
[--format protobuf|json]``.
Prints figures and ratios (medians of the rounds), not a verdict.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import sqlite3
import statistics
import tempfile
import threading
import time
from pathlib import Path

from _common import HOST, get, healthz, post_many, sse_request, start_viewer, stop, take_head
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

SPANS_PER_REQUEST = 500
SPANS_PER_TRACE = 10
MAX_RUNS = 10_000  # otelflow serve's default --max-runs


def events_per_trace(span_events: int) -> int:
    """Stream events per trace: span.started, one span.event per span event and span.ended for each span,
    then run.started and run.ended."""
    return SPANS_PER_TRACE * (2 + span_events) + 2


# --------------------------------------------------------------------------------------------------
# payloads
# --------------------------------------------------------------------------------------------------


def _kv(key: str, value: str | int) -> KeyValue:
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))


def build_payloads(n_spans: int, span_events: int = 2) -> list[bytes]:
    """``n_spans`` (a multiple of 500) new, ended spans as OTLP protobuf requests of 500; each span has 3
    attributes and ``span_events`` events (a progress and a log event, alternately, with attributes)."""
    out = []
    now = time.time_ns()
    for _ in range(n_spans // SPANS_PER_REQUEST):
        req = ExportTraceServiceRequest()
        rs = req.resource_spans.add()
        rs.resource.attributes.extend([_kv("service.name", "bench-ingest"), _kv("host.name", "bench")])
        ss = rs.scope_spans.add()
        ss.scope.name = "otelflow"
        for _t in range(SPANS_PER_REQUEST // SPANS_PER_TRACE):
            trace_id = os.urandom(16)
            root_id = os.urandom(8)
            for i in range(SPANS_PER_TRACE):
                span = ss.spans.add()
                span.trace_id = trace_id
                span.span_id = root_id if i == 0 else os.urandom(8)
                if i:
                    span.parent_span_id = root_id
                    span.name = f"step-{i}"
                    span.attributes.extend(
                        [_kv("otelflow.kind", "node"), _kv("otelflow.node.id", f"n{i}"), _kv("app.items", i)]
                    )
                else:
                    span.name = "invoke_workflow bench"
                    span.attributes.extend(
                        [
                            _kv("otelflow.kind", "workflow"),
                            _kv("gen_ai.operation.name", "invoke_workflow"),
                            _kv("gen_ai.workflow.name", "bench"),
                        ]
                    )
                span.kind = Span.SPAN_KIND_INTERNAL
                span.start_time_unix_nano = now + i * 1000
                span.end_time_unix_nano = now + 1_000_000 - i * 1000
                span.status.code = Status.STATUS_CODE_OK
                for e in range(span_events):
                    event = span.events.add()
                    event.time_unix_nano = now + 2000 + e * 1000
                    if e % 2:
                        event.name = "otelflow.log"
                        event.attributes.extend(
                            [_kv("otelflow.log.level", "info"), _kv("otelflow.log.message", f"item {e} done")]
                        )
                    else:
                        event.name = "otelflow.progress"
                        event.attributes.extend(
                            [_kv("otelflow.progress.current", e), _kv("otelflow.progress.total", 4)]
                        )
        out.append(req.SerializeToString())
    return out


# --------------------------------------------------------------------------------------------------
# the viewer under test
# --------------------------------------------------------------------------------------------------


class SseCounter(threading.Thread):
    """One raw-socket SSE subscriber that counts the frames it receives (``data:`` lines)."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True, name="sse-counter")
        self.sock = socket.create_connection((HOST, port), timeout=10)
        self.sock.sendall(sse_request(port))
        self.frames = 0
        self.eof = False
        self._halt = threading.Event()
        head: bytes = b""
        body: bytes | None = None
        while body is None:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise RuntimeError("SSE stream closed before its headers")
            head, body = take_head(head, chunk)
        self._tail = body
        self.sock.settimeout(0.2)

    def run(self) -> None:
        tail = self._tail
        while not self._halt.is_set():
            try:
                chunk = self.sock.recv(1 << 18)
            except TimeoutError:
                continue
            except OSError:
                break
            if not chunk:
                self.eof = True
                break
            # chunked transfer framing does not contain "\ndata: ", so counting in the raw bytes is exact;
            # keep a few bytes so that a marker split across two reads is counted once
            data = tail + chunk
            self.frames += data.count(b"\ndata: ")
            tail = data[-6:]  # shorter than the marker: it cannot be counted twice

    def close(self) -> None:
        self._halt.set()
        self.join(2)
        with contextlib.suppress(OSError):
            self.sock.close()


CONTENT_TYPES = {"protobuf": "application/x-protobuf", "json": "application/json"}


def as_json(payloads: list[bytes]) -> list[bytes]:
    """The same requests as OTLP/JSON, written as the live exporter writes them."""
    from otelflow.otlp_json import to_otlp_json
    from otelflow.viewer.decode import decode_protobuf

    return [
        json.dumps(to_otlp_json(decode_protobuf(body).records), separators=(",", ":")).encode() for body in payloads
    ]


def post_all(port: int, payloads: list[bytes], clients: int, fmt: str = "protobuf") -> list[str]:
    """POST every payload over ``clients`` keep-alive connections; returns error messages (empty if none)."""
    return post_many(port, "/v1/traces", CONTENT_TYPES[fmt], payloads, clients)


def ingest_round(
    port: int, sse: SseCounter, payloads: list[bytes], clients: int, timeout: float, span_events: int, fmt: str
) -> float:
    """Seconds from the first POST until every span is committed and every event reached the subscriber."""
    n_spans = len(payloads) * SPANS_PER_REQUEST
    store0 = healthz(port)["store"]
    assert isinstance(store0, dict)
    stored_goal = int(store0["spans"]) + n_spans
    frames_goal = sse.frames + n_spans // SPANS_PER_TRACE * events_per_trace(span_events)
    start = time.perf_counter()
    errors = post_all(port, payloads, clients, fmt)
    if errors:
        raise RuntimeError(f"{len(errors)} POSTs failed, e.g. {errors[0]}")
    stored = published = False
    while time.perf_counter() - start < timeout:
        if not published and sse.frames >= frames_goal:
            published = True
        if not stored:
            store = healthz(port)["store"]
            assert isinstance(store, dict)
            stored = int(store["spans"]) >= stored_goal
        if stored and published:
            return time.perf_counter() - start
        if sse.eof:
            raise RuntimeError("the SSE subscriber was cut (fell behind?) — see hub.cut in /healthz")
        time.sleep(0.005)
    raise RuntimeError(f"round not complete after {timeout:.0f}s (stored={stored}, published={published})")


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) of each thread of a live process, by thread id and name (Linux /proc)."""
    out: dict[str, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
            name = stat[stat.index("(") + 1 : stat.rindex(")")]
            fields = stat.rsplit(")", 1)[1].split()
            out[f"{tid} {name}"] = (int(fields[11]) + int(fields[12])) / tick
    return out


def history_bytes(db: Path) -> tuple[float, dict[str, int]]:
    """Bytes of the SQLite file in use (pages not on the free list) per stored span, and bytes per table with
    its indexes (from the ``dbstat`` table when SQLite has it)."""
    conn = sqlite3.connect(db)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page = conn.execute("PRAGMA page_size").fetchone()[0]
        used = conn.execute("PRAGMA page_count").fetchone()[0] - conn.execute("PRAGMA freelist_count").fetchone()[0]
        spans = conn.execute("SELECT count(*) FROM spans").fetchone()[0]
        tables: dict[str, int] = {}
        with contextlib.suppress(sqlite3.Error):
            owner = dict(conn.execute("SELECT name, tbl_name FROM sqlite_master WHERE type IN ('table', 'index')"))
            for name, size in conn.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name"):
                table = owner.get(name, name)
                tables[table] = tables.get(table, 0) + size
        return used * page / max(1, spans), tables
    finally:
        conn.close()


# --------------------------------------------------------------------------------------------------
# baselines
# --------------------------------------------------------------------------------------------------


def parse_rate(payloads: list[bytes], fmt: str = "protobuf") -> float:
    """Spans/s of ExportTraceServiceRequest.ParseFromString alone (``json.loads`` for JSON)."""
    start = time.perf_counter()
    for body in payloads:
        if fmt == "json":
            json.loads(body)
        else:
            ExportTraceServiceRequest().ParseFromString(body)
    return len(payloads) * SPANS_PER_REQUEST / (time.perf_counter() - start)


def decode_rate(payloads: list[bytes], fmt: str = "protobuf") -> float:
    """Spans/s of the viewer's decode_protobuf (parse + SpanRecords; decode_json for JSON), no HTTP, hub or store."""
    from otelflow.viewer.decode import decode_json, decode_protobuf

    decode = decode_json if fmt == "json" else decode_protobuf
    start = time.perf_counter()
    for body in payloads:
        _ = decode(body).records  # decoding is lazy: take every record
    return len(payloads) * SPANS_PER_REQUEST / (time.perf_counter() - start)


def naive_rate(payloads: list[bytes], tmp: Path, budget_s: float) -> float:
    """Spans/s of a naive receiver: parse, then INSERT + COMMIT per span (SQLite defaults), time-bounded."""
    conn = sqlite3.connect(tmp / "naive.db", isolation_level=None)
    conn.execute(
        "CREATE TABLE spans (trace_id TEXT, span_id TEXT, parent TEXT, name TEXT, start INT, end INT, attrs TEXT)"
    )
    done = 0
    start = time.perf_counter()
    try:
        for body in payloads:
            req = ExportTraceServiceRequest()
            req.ParseFromString(body)
            for rs in req.resource_spans:
                for ss in rs.scope_spans:
                    for span in ss.spans:
                        attrs = {kv.key: kv.value.string_value or kv.value.int_value for kv in span.attributes}
                        conn.execute("BEGIN")
                        conn.execute(
                            "INSERT INTO spans VALUES (?, ?, ?, ?, ?, ?, ?)",
                            (
                                span.trace_id.hex(),
                                span.span_id.hex(),
                                span.parent_span_id.hex(),
                                span.name,
                                span.start_time_unix_nano,
                                span.end_time_unix_nano,
                                json.dumps(attrs),
                            ),
                        )
                        conn.execute("COMMIT")
                        done += 1
                        if time.perf_counter() - start > budget_s:
                            return done / (time.perf_counter() - start)
        return done / (time.perf_counter() - start)
    finally:
        conn.close()


# --------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--spans", type=int, default=50_000, help="spans per round (multiple of 500)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=4, help="concurrent keep-alive POST connections")
    parser.add_argument("--events", type=int, default=2, help="events per span")
    parser.add_argument("--naive-seconds", type=float, default=3.0, help="time budget of the naive baseline")
    parser.add_argument("--format", choices=sorted(CONTENT_TYPES), default="protobuf", help="the requests' encoding")
    args = parser.parse_args()
    n_spans = max(SPANS_PER_REQUEST, args.spans // SPANS_PER_REQUEST * SPANS_PER_REQUEST)

    print(f"building {args.rounds} x {n_spans} spans ({SPANS_PER_REQUEST}/request, traces of {SPANS_PER_TRACE})")
    protobuf = [build_payloads(n_spans, args.events) for _ in range(args.rounds)]
    rounds = [as_json(p) for p in protobuf] if args.format == "json" else protobuf
    warmup = build_payloads(5 * SPANS_PER_REQUEST, args.events)
    warmup = as_json(warmup) if args.format == "json" else warmup
    size = statistics.mean(len(p) for p in rounds[0])
    print(f"request size: {size / 1024:.0f} KiB {args.format}")

    with tempfile.TemporaryDirectory(prefix="otelflow-bench-") as tmpdir:
        tmp = Path(tmpdir)
        proc, port = start_viewer(tmp / "viewer.db")
        sse: SseCounter | None = None
        try:
            sse = SseCounter(port)
            sse.start()
            ingest_round(port, sse, warmup, args.clients, 60, args.events, args.format)
            times = []
            loop_cpu: list[float] = []  # CPU us per span of the event loop's thread (the process's first)
            other_cpu: list[float] = []  # ... of every other thread (the history writer, mostly)
            held: list[int] = []  # runs in the history after each round (retention: --max-runs, default 10,000)
            for i, payloads in enumerate(rounds):
                cpu0 = thread_cpu(proc.pid)
                t = ingest_round(port, sse, payloads, args.clients, 120, args.events, args.format)
                cpu1 = thread_cpu(proc.pid)
                spent = {k: v - cpu0.get(k, 0.0) for k, v in cpu1.items()}
                main_key = next(k for k in spent if k.split()[0] == str(proc.pid))
                loop_cpu.append(spent.pop(main_key) / n_spans * 1e6)
                other_cpu.append(sum(spent.values()) / n_spans * 1e6)
                times.append(t)
                held.append(int(json.loads(get(port, "/api/runs?limit=1"))["total"]))
                print(f"  round {i + 1}: {n_spans / t:,.0f} spans/s ({t:.2f} s); {held[-1]:,} runs held")
            health = healthz(port)
        finally:
            try:
                if sse is not None:
                    sse.close()
            finally:
                stop(proc)
        per_span, tables = history_bytes(tmp / "viewer.db")
        naive = naive_rate(protobuf[0], tmp, args.naive_seconds)

    parse = statistics.median(parse_rate(rounds[0], args.format) for _ in range(3))
    decode = statistics.median(decode_rate(rounds[0][:40], args.format) for _ in range(3))
    rate = n_spans / statistics.median(times)
    hub = health["hub"]
    assert isinstance(hub, dict)
    print()
    print(f"otelflow serve, POST -> stored + published : {rate:,.0f} spans/s  (target >= 30,000; median of rounds)")
    print(f"baseline naive receiver (1 commit per span): {naive:,.0f} spans/s  ratio {rate / naive:,.1f}x")
    json_fmt = args.format == "json"
    decoder = "viewer decode_json alone (no HTTP)" if json_fmt else "viewer decode_protobuf alone (no HTTP)"
    ceiling = "json.loads alone (wire ceiling)" if json_fmt else "ParseFromString alone (wire ceiling)"
    print(f"{decoder:<43}: {decode:,.0f} spans/s  otelflow at {rate / decode:.0%} of it")
    print(f"{ceiling:<43}: {parse:,.0f} spans/s  otelflow at {rate / parse:.1%} of it")
    loop_us, other_us = statistics.median(loop_cpu), statistics.median(other_cpu)
    print(
        f"viewer CPU per span: event loop {loop_us:.1f} us (at most {1e6 / loop_us:,.0f} spans/s on one interpreter), "
        f"other threads {other_us:.1f} us; 30,000 spans/s would take {(loop_us + other_us) * 0.03:.1f} CPUs "
        f"(this machine has {os.cpu_count()})"
    )
    total = sum(tables.values()) or 1
    shares = ", ".join(
        f"{t} {b / total:.0%}" for t, b in sorted(tables.items(), key=lambda kv: -kv[1]) if b / total >= 0.01
    )
    print(
        f"history bytes per span ({args.events} events each): {per_span / 1024:.2f} KiB (target <= 0.8 KiB) [{shares}]"
    )
    written = (len(rounds) * n_spans + len(warmup) * SPANS_PER_REQUEST) // SPANS_PER_TRACE
    print(
        f"runs held after a round, at most: {max(held):,} of {written:,} written "
        f"({max(held) / MAX_RUNS:.2f} x --max-runs {MAX_RUNS:,}; target <= 1.1 x)"
    )
    print(f"subscribers cut: {hub.get('cut')}, hub errors: {hub.get('errors')}, store: {health['store']}")


if __name__ == "__main__":
    main()
