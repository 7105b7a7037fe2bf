"""Spans stored per second by the SQLite history and by the PostgreSQL history, in this process.

N rich spans (traces of 10: a workflow and 9 nodes, 3 attributes and 2 events each, as ``bench_ingest.py``
builds them; decoded by the viewer's own decoder) are queued request by request (500 spans and their runs per
batch, as the receiver does) into a fresh store, and the clock stops once ``flush()`` says every row was
committed. Rounds alternate between the stores (SQLite file, then PostgreSQL database, each new), so that the
machine's state weighs on both alike; the median of the rounds is printed for each, and their ratio.

PostgreSQL: ``--url`` (a database of its own, emptied by nobody: each round creates a database beside it, so the
user must be allowed to), or by default a throwaway server started from ``tests/pg_server.py`` (needs
PostgreSQL's programs; ``fsync=off`` there, as SQLite's ``synchronous=NORMAL`` does not wait for the disk on
each commit either).

Run: ``python bench/bench_history_pg.py [--spans 50000] [--rounds 3]``. Prints figures and ratios, not a verdict.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_ingest import SPANS_PER_REQUEST, build_payloads

ROOT = Path(__file__).resolve().parent.parent


def stored_rate(store: Any, requests: list[list[Any]]) -> float:
    """Spans/s from the first span queued to the last row committed."""
    store.open()
    try:
        spans = sum(len(r) for r in requests)
        start = time.perf_counter()
        for records in requests:
            with store.batch():
                for rec in records:
                    store.put_span(rec)
                    if rec.parent_span_id is None:
                        store.put_run(
                            {
                                "trace_id": rec.trace_id,
                                "name": rec.name,
                                "status": rec.status,
                                "start_time_ns": rec.start_time_ns,
                                "end_time_ns": rec.end_time_ns,
                            }
                        )
            while store.backlog_rows > 100_000:  # as the receiver would (503 past the backlog's limit)
                time.sleep(0.005)
        asyncio.run(store.flush())
        elapsed = time.perf_counter() - start
        assert store.stats["spans"] == spans, (store.stats, spans)
        return spans / elapsed
    finally:
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spans", type=int, default=50_000, help="spans per round (a multiple of 500)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--url", help="a PostgreSQL server's database URL (default: a throwaway server)")
    args = parser.parse_args()

    from otelflow.viewer.decode import decode_protobuf
    from otelflow.viewer.history import PostgresHistory, SqliteHistory

    requests = [decode_protobuf(body).records for body in build_payloads(args.spans)]
    assert sum(len(r) for r in requests) == args.spans // SPANS_PER_REQUEST * SPANS_PER_REQUEST
    sys.path.insert(0, str(ROOT))
    from tests.pg_server import PgServer

    server: PgServer | None = None
    if args.url is None:
        server = PgServer()
        server.start()

    def new_pg() -> str:
        if server is not None:
            return server.create_database()
        import secrets

        import psycopg

        name = f"otelflow_bench_{secrets.token_hex(4)}"
        with psycopg.connect(args.url, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return str(args.url).rsplit("/", 1)[0] + "/" + name

    rates: dict[str, list[float]] = {"sqlite": [], "postgres": []}
    limits: dict[str, Any] = {"retention_days": None, "max_runs": None, "max_backlog_bytes": 1 << 30}
    try:
        with tempfile.TemporaryDirectory(prefix="otelflow-bench-") as tmp:
            for r in range(args.rounds):
                sqlite = SqliteHistory(str(Path(tmp) / f"h{r}.db"), **limits)
                rates["sqlite"].append(stored_rate(sqlite, requests))
                rates["postgres"].append(stored_rate(PostgresHistory(new_pg(), **limits), requests))
                print(
                    f"round {r + 1}: sqlite {rates['sqlite'][-1]:,.0f} spans/s, "
                    f"postgres {rates['postgres'][-1]:,.0f} spans/s",
                    flush=True,
                )
    finally:
        if server is not None:
            server.remove()
    sq, pg = statistics.median(rates["sqlite"]), statistics.median(rates["postgres"])
    print(f"median of {args.rounds} rounds of {args.spans:,} spans stored:")
    print(f"  sqlite    {sq:>10,.0f} spans/s")
    print(f"  postgres  {pg:>10,.0f} spans/s")
    print(f"  postgres / sqlite = {pg / sq:.2f}x")


if __name__ == "__main__":
    main()
