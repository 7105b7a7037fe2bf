"""Duration statistics per name, kept as spans are written: as accurate as the exact ones within the sketch's 1%,
narrowed by time, and built for a history written before they were kept."""

from __future__ import annotations

import asyncio
import random
import sqlite3
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import httpx

from otelflow import attributes as A
from otelflow.viewer.history import SqliteHistory, history_for

from .conftest import Viewer, record, span_id, trace_id, wait_for

HOUR_NS = 3_600 * 10**9


def exact(values: list[float], q: float) -> float:
    """The percentile as numpy's default (linear) computes it."""
    ordered = sorted(values)
    rank = q * (len(ordered) - 1)
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def post_spans(viewer: Viewer, durations_ms: list[float], *, errors: int = 0, ended_ago_ns: int = 0) -> None:
    now = time.time_ns() - ended_ago_ns
    trace = trace_id()
    records = [
        record(
            trace,
            span_id(),
            "execute_tool lookup",
            kind=A.KIND_TOOL,
            ended=True,
            error=i < errors,
            start=now - int(ms * 1e6),
            duration_ns=int(ms * 1e6),
        )
        for i, ms in enumerate(durations_ms)
    ]
    assert viewer.post_json(records).status_code == 200


def lookup(viewer: Viewer, since: str = "all") -> dict[str, float]:
    stats = httpx.get(f"{viewer.url}/api/stats", params={"kind": "tool", "since": since}, timeout=5).json()["stats"]
    return next((s for s in stats if s["name"] == "execute_tool lookup"), {})


def test_p50_and_p95_are_within_one_percent_of_the_exact_ones(
    make_viewer: Callable[..., Viewer], new_db: Callable[[], str]
) -> None:
    viewer = make_viewer(db=new_db())
    rng = random.Random(5)
    durations = [rng.lognormvariate(3.0, 1.2) for _ in range(400)]  # ms, a long tail like LLM calls have
    post_spans(viewer, durations, errors=40)
    got = wait_for(lambda: (s := lookup(viewer)).get("count") == 400 and s, what="the statistics")
    assert got["error_rate"] == 0.1
    # the chart of the stats page: log-spaced bins from the shortest duration to the longest, every span in one
    edges, counts = got["histogram"]["edges_ms"], got["histogram"]["counts"]
    assert (len(edges), len(counts), sum(counts)) == (13, 12, 400)
    assert edges == sorted(edges)
    assert edges[0] <= min(durations) <= edges[0] * 1.03
    assert edges[-1] / 1.03 <= max(durations) <= edges[-1]
    for i, n in enumerate(counts):
        inside = sum(edges[i] / 1.02 < d <= edges[i + 1] * 1.02 for d in durations)  # a bucket's 2% either side
        assert abs(n - inside) <= sum(abs(d - e) <= 0.02 * e for d in durations for e in edges[i : i + 2]), i
    for q, key in ((0.5, "p50_ms"), (0.95, "p95_ms")):
        # the sketch's value is within 1% of a value near the exact rank
        assert abs(got[key] - exact(durations, q)) <= 0.011 * exact(durations, q) + 0.01 * (
            exact(durations, q + 0.005) - exact(durations, q - 0.005)
        )


def test_stats_narrow_to_the_last_hour_or_day(make_viewer: Callable[..., Viewer], new_db: Callable[[], str]) -> None:
    viewer = make_viewer(db=new_db())
    post_spans(viewer, [10.0] * 3, ended_ago_ns=3 * HOUR_NS)  # three hours ago
    post_spans(viewer, [20.0] * 2)  # now
    wait_for(lambda: lookup(viewer).get("count") == 5, what="the statistics")
    assert lookup(viewer, "1h")["count"] == 2
    assert lookup(viewer, "1d")["count"] == 5
    assert httpx.get(f"{viewer.url}/api/stats", params={"since": "1y"}, timeout=5).status_code == 400


def test_a_history_from_before_the_statistics_gets_them_when_opened(
    make_viewer: Callable[..., Viewer], tmp_path: Path
) -> None:
    db = tmp_path / "old.db"
    first = make_viewer(db=db)
    post_spans(first, [5.0, 50.0, 500.0], errors=1)
    wait_for(lambda: lookup(first).get("count") == 3, what="the statistics")
    first.stop()
    # what a schema 2 database (before the statistics were kept) looks like
    with sqlite3.connect(db) as conn:
        conn.execute("DROP TABLE name_stats")
        conn.execute("UPDATE meta SET value = '2' WHERE key = 'schema'")
    reopened = make_viewer(db=SqliteHistory(db))
    got = lookup(reopened)
    assert got["count"] == 3
    assert abs(got["p50_ms"] - 50.0) <= 0.5
    assert abs(got["error_rate"] - 1 / 3) < 1e-9


def test_a_schema_4_history_keeps_its_statistics_and_counts_cancelled_spans_apart(
    make_viewer: Callable[..., Viewer], tmp_path: Path
) -> None:
    db = tmp_path / "v4.db"
    first = make_viewer(db=db)
    post_spans(first, [5.0, 50.0, 500.0], errors=1)
    wait_for(lambda: lookup(first).get("count") == 3, what="the statistics")
    first.stop()
    with sqlite3.connect(db) as conn:  # schema 4: no count of cancelled spans
        conn.execute("ALTER TABLE name_stats DROP COLUMN cancelled")
        conn.execute("UPDATE meta SET value = '4' WHERE key = 'schema'")
    reopened = make_viewer(db=SqliteHistory(db))
    assert (lookup(reopened)["count"], lookup(reopened)["cancelled"]) == (3, 0)
    now = time.time_ns()
    stopped = record(trace_id(), span_id(), "execute_tool lookup", kind=A.KIND_TOOL, ended=True, start=now)
    assert reopened.post_json([replace(stopped, status=A.STATUS_CANCELLED, status_message="cancelled")]).is_success
    got = wait_for(lambda: (s := lookup(reopened)).get("cancelled") == 1 and s, what="the cancelled span counted")
    assert (got["count"], got["error_rate"]) == (3, 1 / 3), "a cancelled span is no failure"


def test_a_span_abandoned_then_ended_counts_once(new_db: Callable[[], str]) -> None:
    """A span whose worker went silent is stored abandoned (cut off where it was last heard of); should it end
    after all, the statistics count it once, with its real duration."""
    store = history_for(new_db())
    store.open()
    try:
        trace, sid, now = trace_id(), span_id(), time.time_ns()
        running = record(trace, sid, "execute_tool lookup", kind=A.KIND_TOOL, start=now - 50_000_000)
        store.put_span(replace(running, status=A.STATUS_ABANDONED, end_time_ns=now - 40_000_000))
        store.put_span(replace(running, status=A.STATUS_OK, end_time_ns=now))
        stats = asyncio.run(store.stats_by_name([A.KIND_TOOL]))
        assert [(s["count"], round(s["p50_ms"])) for s in stats] == [(1, 50)]
    finally:
        store.close()
