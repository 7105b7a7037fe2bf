"""The viewer under faults: acknowledged spans lost, the largest stall of ``/healthz``, live clients cut.

Each scenario runs a real ``otelflow serve`` subprocess on loopback with a SQLite file in a temp dir, posts
OTLP protobuf requests of ended spans (traces of 10) and counts, span by span, what was acknowledged
(a 2xx answer) against what the history database holds afterwards (read with ``sqlite3`` once the viewer
has stopped). Nothing here is a verdict; every figure is printed.

- ``lock``: another process holds the database's write lock (``BEGIN EXCLUSIVE``) for ``--lock-s``
  seconds while requests keep coming.
- ``full``: the disk fills up: the viewer runs with a file-size limit (``RLIMIT_FSIZE``, which makes
  writes past it fail as they do on a full disk), raised again ("space freed") after a few seconds.
- ``kill``: ``kill -9`` of the viewer while four clients post as fast as they can.
- ``big``: one request of ``--big`` spans, while ``/healthz`` is polled every 5 ms and ten SSE clients read
  ``/api/stream``: the largest ``/healthz`` latency, and how many clients were cut or missed events.

Run from the repository root: ``python bench/bench_faults.py [--only lock,full,kill,big]``. To compare two
checkouts, run each checkout's copy (``_common`` makes it import the checkout it sits in).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import resource
import selectors
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _common import HOST, VIEWER_READY, healthz, read_port, sse_request, stop, take_head, whole_frames
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

PROTOBUF = "application/x-protobuf"


def payload(n_spans: int) -> tuple[bytes, list[str]]:
    """``n_spans`` ended spans (traces of 10) as one request, and their span ids in hex."""
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.append(KeyValue(key="service.name", value=AnyValue(string_value="bench-faults")))
    ss = rs.scope_spans.add()
    now = time.time_ns()
    ids = []
    for t in range(0, n_spans, 10):
        trace_id = os.urandom(16)
        root = os.urandom(8)
        for i in range(min(10, n_spans - t)):
            span = ss.spans.add()
            span.trace_id = trace_id
            span.span_id = root if i == 0 else os.urandom(8)
            if i:
                span.parent_span_id = root
            span.name = "root" if i == 0 else f"step-{i}"
            span.start_time_unix_nano = now
            span.end_time_unix_nano = now + 1_000_000
            span.attributes.append(KeyValue(key="otelflow.kind", value=AnyValue(string_value="node")))
            ids.append(span.span_id.hex())
    return req.SerializeToString(), ids


def start(db: Path, fsize: int | None = None) -> tuple[subprocess.Popen[str], int]:
    cmd = [sys.executable, "-m", "otelflow.cli", "serve", "--host", HOST, "--port", "0", "--db", str(db)]

    def limit() -> None:
        if fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, resource.RLIM_INFINITY))

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, preexec_fn=limit)
    return proc, read_port(proc, VIEWER_READY)


class Poster:
    """POSTs requests over one keep-alive connection, remembering the span ids of every 2xx answer."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection(HOST, port, timeout=30)
        self.acked: list[str] = []
        self.statuses: dict[int, int] = {}

    def post(self, body: bytes, ids: list[str]) -> int:
        try:
            self.conn.request("POST", "/v1/traces", body=body, headers={"Content-Type": PROTOBUF})
            resp = self.conn.getresponse()
            resp.read()
        except (OSError, http.client.HTTPException):
            self.conn.close()
            self.conn = http.client.HTTPConnection(HOST, self.port, timeout=30)
            self.statuses[0] = self.statuses.get(0, 0) + 1
            return 0
        self.statuses[resp.status] = self.statuses.get(resp.status, 0) + 1
        if 200 <= resp.status < 300:
            self.acked += ids
        return resp.status


def stored_ids(db: Path) -> set[str]:
    conn = sqlite3.connect(db)
    try:
        return {r[0] for r in conn.execute("SELECT span_id FROM spans")}
    finally:
        conn.close()


def report(name: str, acked: list[str], db: Path, statuses: dict[int, int], extra: str = "") -> None:
    stored = stored_ids(db)
    lost = [i for i in acked if i not in stored]
    print(f"{name:5} acknowledged {len(acked):6}  lost {len(lost):6}  answers {dict(sorted(statuses.items()))} {extra}")


def post_paced(poster: Poster, requests: int, spans: int, seconds: float) -> None:
    for i in range(requests):
        body, ids = payload(spans)
        poster.post(body, ids)
        time.sleep(max(0.0, seconds / requests - 0.001 * i * 0))


def settle(port: int, seconds: float = 20.0) -> None:
    """Wait until the store's commit counter stops moving (or ``seconds`` pass)."""
    deadline = time.monotonic() + seconds
    last = -1
    while time.monotonic() < deadline:
        try:
            now = healthz(port).get("store", {}).get("spans", 0)
        except OSError:
            return
        if now == last:
            return
        last = now
        time.sleep(1.0)


def scenario_lock(tmp: Path, lock_s: float) -> None:
    db = tmp / "lock.db"
    proc, port = start(db)
    poster = Poster(port)
    try:
        body, ids = payload(100)
        poster.post(body, ids)
        locker = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sqlite3,sys,time; c=sqlite3.connect(sys.argv[1], isolation_level=None); "
                "c.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); time.sleep(float(sys.argv[2])); "
                "c.execute('COMMIT')",
                str(db),
                str(lock_s),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert locker.stdout is not None
        locker.stdout.readline()
        post_paced(poster, 22, 50, lock_s + 1.0)
        locker.wait()
        settle(port)
    finally:
        stop(proc)
    report("lock", poster.acked, db, poster.statuses, f"(lock held {lock_s:g} s)")


def scenario_full(tmp: Path) -> None:
    db = tmp / "full.db"
    # the database's files may grow to this size: enough for the schema, not for the spans that follow
    proc, port = start(db, fsize=256 * 1024)
    poster = Poster(port)
    try:
        post_paced(poster, 24, 50, 4.0)
        with contextlib.suppress(OSError):
            degraded = healthz(port).get("status")
            print(f"       /healthz while full: {degraded!r}")
        resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        post_paced(poster, 4, 50, 1.0)
        settle(port)
    finally:
        stop(proc)
    report("full", poster.acked, db, poster.statuses, "(256 KiB file-size limit, lifted after 4 s)")


def scenario_kill(tmp: Path) -> None:
    db = tmp / "kill.db"
    proc, port = start(db)
    posters = [Poster(port) for _ in range(4)]
    bodies = [payload(100) for _ in range(1200)]  # every request new: a stored span cannot hide a lost one

    def run(p: Poster) -> None:
        while time.monotonic() < stop_at + 5 and bodies:
            body, ids = bodies.pop()
            if p.post(body, ids) == 0:
                return

    stop_at = time.monotonic() + 2.0
    threads = [threading.Thread(target=run, args=(p,)) for p in posters]
    for t in threads:
        t.start()
    time.sleep(2.0)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    for t in threads:
        t.join()
    acked = sorted({i for p in posters for i in p.acked})
    statuses: dict[int, int] = {}
    for p in posters:
        for k, v in p.statuses.items():
            statuses[k] = statuses.get(k, 0) + v
    # started again on the same file (a viewer with an intake log ingests what it holds first)
    again, port = start(db)
    settle(port)
    stop(again)
    report("kill", acked, db, statuses, "(kill -9 after 2 s of 4 clients posting 100-span requests; restarted)")


def scenario_big(tmp: Path, n: int) -> None:
    db = tmp / "big.db"
    proc, port = start(db)
    body, ids = payload(n)
    stalls: list[float] = []
    done = threading.Event()

    def poll() -> None:
        conn = http.client.HTTPConnection(HOST, port, timeout=60)
        while not done.is_set():
            t0 = time.perf_counter()
            conn.request("GET", "/healthz")
            conn.getresponse().read()
            stalls.append(time.perf_counter() - t0)
            time.sleep(0.005)
        conn.close()

    sel = selectors.DefaultSelector()
    socks = []
    for _ in range(10):
        s = socket.create_connection((HOST, port))
        s.sendall(sse_request(port))
        s.setblocking(False)
        socks.append(s)
        sel.register(s, selectors.EVENT_READ, {"head": b"", "body": None, "rem": b"", "frames": 0, "ended": False})
    ended_counts = [0] * 10
    reader_done = threading.Event()

    def read() -> None:
        while not reader_done.is_set():
            for key, _ in sel.select(0.1):
                st = key.data
                try:
                    chunk = key.fileobj.recv(1 << 18)  # type: ignore[union-attr]
                except BlockingIOError:
                    continue
                if not chunk:
                    st["ended"] = True
                    sel.unregister(key.fileobj)
                    continue
                if st["body"] is None:
                    st["head"], rest = take_head(st["head"], chunk)
                    if rest is None:
                        continue
                    st["body"] = True
                    chunk = rest
                whole, st["rem"] = whole_frames(st["rem"], chunk)
                idx = socks.index(key.fileobj)  # type: ignore[arg-type]
                ended_counts[idx] += whole.count(b"event: span.ended")

    poller = threading.Thread(target=poll)
    reader = threading.Thread(target=read)
    poller.start()
    reader.start()
    time.sleep(0.5)
    poster = Poster(port)
    t0 = time.perf_counter()
    status = poster.post(body, ids)
    took = time.perf_counter() - t0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(
        c < n and sel.get_map().get(s.fileno()) is not None for c, s in zip(ended_counts, socks, strict=True)
    ):
        time.sleep(0.1)
    time.sleep(0.5)
    done.set()
    poller.join()
    reader_done.set()
    reader.join()
    info: dict[str, Any] = healthz(port)
    stop(proc)
    for s in socks:
        s.close()
    complete = sum(1 for c in ended_counts if c >= n)
    print(
        f"big   one request of {n} spans: HTTP {status} in {took:.2f} s; /healthz max {max(stalls) * 1000:.0f} ms "
        f"(p50 {sorted(stalls)[len(stalls) // 2] * 1000:.1f} ms, {len(stalls)} polls); "
        f"SSE clients cut {info['hub'].get('cut')}, with every span.ended {complete}/10"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="lock,full,kill,big")
    parser.add_argument("--lock-s", type=float, default=6.0)
    parser.add_argument("--big", type=int, default=100_000)
    args = parser.parse_args()
    wanted = set(args.only.split(","))
    with tempfile.TemporaryDirectory(prefix="otelflow-faults-") as tmp:
        if "lock" in wanted:
            scenario_lock(Path(tmp), args.lock_s)
        if "full" in wanted:
            scenario_full(Path(tmp))
        if "kill" in wanted:
            scenario_kill(Path(tmp))
        if "big" in wanted:
            scenario_big(Path(tmp), args.big)


if __name__ == "__main__":
    main()
