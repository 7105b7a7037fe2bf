"""Statistics of model calls per (provider, model), kept as the history is written, as :mod:`.name_stats` keeps
durations per name: each ended call adds to its hour's row and to the all-time row (``hour = -1``) of
``model_stats``. A row holds the calls, the errors among them, the cancelled ones (apart: no latency), input and
output tokens, the estimated cost of the calls whose model has a price (and how many had none), a sketch of the
latencies and one of the times to first token (the same logarithmic buckets, quantiles within 1%).

The cost is the one the viewer's price table gave when the call was stored.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Final

from otelflow import attributes as A

from .name_stats import ALL_TIME, HOUR_NS, Sketch
from .rows import LlmCall, call_of

if TYPE_CHECKING:
    from .reading import Sql

__all__ = ["COLUMNS", "SCHEMA", "add_calls", "backfill", "call_groups", "merged_row", "read_model_stats"]

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS model_stats (
    provider TEXT NOT NULL,
    model TEXT NOT NULL,
    hour INTEGER NOT NULL,
    calls INTEGER NOT NULL,
    errors INTEGER NOT NULL,
    cancelled INTEGER NOT NULL,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    cost_usd REAL NOT NULL,
    unpriced INTEGER NOT NULL,
    latency TEXT NOT NULL,
    ttft_count INTEGER NOT NULL,
    ttft TEXT NOT NULL,
    PRIMARY KEY (provider, model, hour)
);
"""


class _Group:
    __slots__ = ("calls", "cancelled", "cost", "input", "latency", "output", "ttft", "unpriced")

    def __init__(self) -> None:
        self.calls = 0
        self.cancelled = 0
        self.input = 0
        self.output = 0
        self.cost = 0.0
        self.unpriced = 0
        self.latency = Sketch()
        self.ttft = Sketch()

    def add(self, call: LlmCall) -> None:
        _, _, status, start, end, tokens_in, tokens_out, cost, ttft = call
        self.calls += 1
        self.input += tokens_in or 0
        self.output += tokens_out or 0
        if cost is None:
            self.unpriced += 1
        else:
            self.cost += cost
        if status == A.STATUS_CANCELLED:
            self.cancelled += 1
        else:
            self.latency.add((end - start) / 1e6, status == A.STATUS_ERROR)
        if ttft is not None:
            self.ttft.add(ttft, False)

    def merge_row(self, row: Sequence[Any]) -> None:
        calls, errors, cancelled, tokens_in, tokens_out, cost, unpriced, latency, ttft_count, ttft = row
        self.calls += calls
        self.cancelled += cancelled
        self.input += tokens_in
        self.output += tokens_out
        self.cost += cost
        self.unpriced += unpriced
        self.latency.merge(Sketch.from_row(calls - cancelled, errors, latency))
        self.ttft.merge(Sketch.from_row(ttft_count, 0, ttft))

    def values(self) -> tuple[Any, ...]:
        return (
            self.calls,
            self.latency.errors,
            self.cancelled,
            self.input,
            self.output,
            self.cost,
            self.unpriced,
            self.latency.to_json(),
            self.ttft.count,
            self.ttft.to_json(),
        )


COLUMNS: Final = "calls, errors, cancelled, input_tokens, output_tokens, cost_usd, unpriced, latency, ttft_count, ttft"


def call_groups(calls: Iterable[LlmCall]) -> dict[tuple[str, str, int], _Group]:
    """(provider, model, hour) -> the figures of these calls, the all-time rows included."""
    groups: dict[tuple[str, str, int], _Group] = {}
    for call in calls:
        for hour in (call[4] // HOUR_NS, ALL_TIME):
            key = (call[0], call[1], hour)
            group = groups.get(key)
            if group is None:
                group = groups[key] = _Group()
            group.add(call)
    return groups


def add_calls(conn: sqlite3.Connection, calls: Sequence[LlmCall]) -> None:
    """Add a writer batch's ended model calls (inside its transaction)."""
    if not calls:
        return
    for key, group in call_groups(calls).items():
        stored = conn.execute(
            f"SELECT {COLUMNS} FROM model_stats WHERE provider = ? AND model = ? AND hour = ?",  # noqa: S608
            key,
        ).fetchone()
        conn.execute(
            f"INSERT OR REPLACE INTO model_stats (provider, model, hour, {COLUMNS}) "  # noqa: S608
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            merged_row(key, group, stored),
        )


def merged_row(key: tuple[str, str, int], group: _Group, stored: Sequence[Any] | None) -> tuple[Any, ...]:
    """The ``model_stats`` row ``(provider, model, hour, COLUMNS...)`` of ``key``: ``group`` added to the row
    ``stored`` holds (its :data:`COLUMNS`, ``None`` for a new row)."""
    if stored is not None:
        group.merge_row(stored)
    return (*key, *group.values())


def backfill(conn: sqlite3.Connection) -> None:
    """Build the statistics from the model calls a history of schema 5 holds (one pass over its ended spans that
    may be model calls); their ``kind`` column becomes ``llm`` when they are."""
    from otelflow.naming import kind_of

    from .rows import record_from_row

    rows = conn.execute(
        "SELECT trace_id, span_id, parent_span_id, name, kind, status, start_ns, end_ns, record, NULL FROM spans "
        "WHERE end_ns IS NOT NULL AND (kind = ? OR (kind = ? AND "
        "(record LIKE '%gen_ai.operation.name%' OR record LIKE '%openinference.span.kind%')))",
        (A.KIND_LLM, A.KIND_SPAN),
    ).fetchall()
    calls: list[LlmCall] = []
    for row in rows:
        rec = record_from_row(row)
        if rec.kind != A.KIND_LLM:
            if kind_of(rec.attributes) != A.KIND_LLM:
                continue
            rec.kind = A.KIND_LLM
            conn.execute("UPDATE spans SET kind = ? WHERE trace_id = ? AND span_id = ?", (A.KIND_LLM, row[0], row[1]))
        call = call_of(rec)
        if call is not None:
            calls.append(call)
    add_calls(conn, calls)


def read_model_stats(conn: Sql, since_ns: int | None) -> list[dict[str, Any]]:
    """Per (provider, model), all time or the hours from ``since_ns``'s on: calls, errors' rate, cancelled, tokens,
    estimated cost, p50/p95 latency and time to first token (ms; ``None`` without samples)."""
    if since_ns is None:
        where, args = "hour = ?", (ALL_TIME,)
    else:
        where, args = "hour >= ?", (since_ns // HOUR_NS,)
    merged: dict[tuple[str, str], _Group] = {}
    sql = f"SELECT provider, model, {COLUMNS} FROM model_stats WHERE {where}"  # noqa: S608
    for provider, model, *row in conn.execute(sql, args):
        merged.setdefault((provider, model), _Group()).merge_row(row)
    out = []
    for (provider, model), g in sorted(merged.items()):
        lat, ttft = g.latency, g.ttft
        out.append(
            {
                "provider": provider or None,
                "model": model or None,
                "calls": g.calls,
                "errors": lat.errors,
                "cancelled": g.cancelled,
                "error_rate": lat.errors / lat.count if lat.count else 0.0,
                "input_tokens": g.input,
                "output_tokens": g.output,
                "cost_usd": round(g.cost, 10) if g.calls > g.unpriced else None,
                "cost_estimate": True,
                "unpriced_calls": g.unpriced,
                "p50_ms": lat.quantile(0.50) if lat.count else None,
                "p95_ms": lat.quantile(0.95) if lat.count else None,
                "ttft_p50_ms": ttft.quantile(0.50) if ttft.count else None,
                "ttft_p95_ms": ttft.quantile(0.95) if ttft.count else None,
            }
        )
    return out
