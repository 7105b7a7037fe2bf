"""History queries as the history grows: ``GET /api/stats`` (all time and last hour) and the oldest page of
``GET /api/runs`` (by ``offset`` and by the ``after`` cursor) at N stored spans.

A history of N ended spans (runs of 10: a workflow and 9 agents/tools over 30 names, durations log-normal, 5%
errors) is written through the viewer's own ``SqliteHistory`` writer in this process, then an ``otelflow serve``
subprocess opens it and the script times ``GET /api/stats`` over keep-alive HTTP (median of 20 after 3 warm-ups)
at each size. The baseline is the same request at the smallest size, in the same run: a query that does not
scan costs the same at every size (ratio ~1x).

Targets at 200,000 spans: ``/api/stats`` <= 10 ms, flat in history; the oldest page of runs <= 5 ms.
Run: ``python bench/bench_history.py [--sizes 10000,50000,200000]``. To compare commits, run it from each
checkout (see bench/README.md). Prints figures and ratios, not a verdict.
"""

from __future__ import annotations

import argparse
import http.client
import random
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from _common import HOST, start_viewer, stop

from otelflow import attributes as A
from otelflow.records import SpanRecord

NAMES = [f"invoke_agent agent{i}" for i in range(15)] + [f"execute_tool tool{i}" for i in range(15)]


def write_history(db: Path, n_spans: int, seed: int = 3) -> None:
    """``n_spans`` ended spans, in runs of 10, through the viewer's history writer."""
    from otelflow.viewer.history import SqliteHistory

    rng = random.Random(seed)
    history = SqliteHistory(str(db), retention_days=None, max_runs=None, max_backlog_bytes=1 << 30)
    history.open()
    now = time.time_ns()
    try:
        for r in range(n_spans // 10):
            trace = f"{rng.getrandbits(128):032x}"
            root = f"{rng.getrandbits(64):016x}"
            start = now - rng.randrange(0, 48 * 3_600 * 10**9)
            records = [
                SpanRecord(
                    trace,
                    root,
                    "invoke_workflow bench",
                    kind=A.KIND_WORKFLOW,
                    start_time_ns=start,
                    end_time_ns=start + 10**9,
                    status=A.STATUS_OK,
                )
            ]
            for _ in range(9):
                name = rng.choice(NAMES)
                took = int(rng.lognormvariate(17.5, 1.0))  # ns: ~40 ms median, a long tail
                kind = A.KIND_AGENT if name.startswith("invoke_agent") else A.KIND_TOOL
                status = A.STATUS_ERROR if rng.random() < 0.05 else A.STATUS_OK
                records.append(
                    SpanRecord(
                        trace,
                        f"{rng.getrandbits(64):016x}",
                        name,
                        parent_span_id=root,
                        kind=kind,
                        start_time_ns=start,
                        end_time_ns=start + took,
                        status=status,
                    )
                )
            with history.batch():
                for rec in records:
                    history.put_span(rec)
                summary = {
                    "trace_id": trace,
                    "name": "invoke_workflow bench",
                    "status": A.STATUS_OK,
                    "start_time_ns": start,
                    "end_time_ns": start + 10**9,
                }
                history.put_run(summary)
            if r % 500 == 0:
                while history.backlog_rows > 50_000:
                    time.sleep(0.01)
    finally:
        history.close()


def time_get(port: int, path: str, repeats: int = 20) -> float:
    """Median ms of ``GET path`` over one keep-alive connection (after 3 warm-ups)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=60)
    samples = []
    try:
        for i in range(repeats + 3):
            t0 = time.perf_counter()
            conn.request("GET", path)
            response = conn.getresponse()
            response.read()
            assert response.status == 200, (path, response.status)
            if i >= 3:
                samples.append((time.perf_counter() - t0) * 1000)
    finally:
        conn.close()
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,50000,200000", help="history sizes in spans, comma-separated")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    results: dict[int, tuple[float, float]] = {}
    pages: dict[int, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory(prefix="otelflow-bench-") as tmp:
        for n in sizes:
            db = Path(tmp) / f"h{n}.db"
            t0 = time.perf_counter()
            write_history(db, n)
            built = time.perf_counter() - t0
            runs, cursor = _oldest_page(db)
            proc, port = start_viewer(db)
            try:
                all_time = time_get(port, "/api/stats")
                hour = time_get(port, "/api/stats?since=1h")
                by_offset = time_get(port, f"/api/runs?limit=50&offset={runs - 50}")
                by_cursor = time_get(port, f"/api/runs?limit=50&after={cursor}")
            finally:
                stop(proc)
            results[n] = (all_time, hour)
            pages[n] = (by_offset, by_cursor)
            print(
                f"  {n:>8,} spans (written in {built:.1f} s): /api/stats {all_time:7.2f} ms   ?since=1h {hour:7.2f} ms"
            )
            print(f"  {n:>8,} spans: oldest page of runs by offset {by_offset:7.2f} ms, by cursor {by_cursor:7.2f} ms")
    base = results[sizes[0]]
    last = sizes[-1]
    print()
    print(
        f"/api/stats at {last:,} spans: {results[last][0]:.2f} ms (target <= 10 ms), "
        f"{results[last][0] / base[0]:.2f}x the figure at {sizes[0]:,} spans (flat: ~1x)"
    )
    print(f"/api/stats?since=1h at {last:,} spans: {results[last][1]:.2f} ms, {results[last][1] / base[1]:.2f}x")
    first = pages[sizes[0]]
    print(
        f"oldest page of runs at {last:,} spans: by offset {pages[last][0]:.2f} ms "
        f"({pages[last][0] / first[0]:.2f}x), by cursor {pages[last][1]:.2f} ms ({pages[last][1] / first[1]:.2f}x; "
        "target <= 5 ms)"
    )


def _oldest_page(db: Path) -> tuple[int, str]:
    """How many runs the history holds, and the ``after`` cursor whose page is the oldest 50."""
    with sqlite3.connect(db) as conn:
        total = conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
        start, trace = conn.execute(
            "SELECT start_ns, trace_id FROM runs ORDER BY start_ns DESC, trace_id LIMIT 1 OFFSET ?", (total - 51,)
        ).fetchone()
    return int(total), f"{start}.{trace}"


if __name__ == "__main__":
    main()
