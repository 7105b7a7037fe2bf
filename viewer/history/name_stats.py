"""Duration statistics per (kind, name), kept as the history is written, so that reading them costs the same at
a thousand spans and at a million.

Each ended span adds to two rows of ``name_stats``: its hour (``end_ns`` // 1 h) and the all-time row
(``hour = -1``). A row holds a count, an error count, a count of cancelled spans (kept apart: they were stopped,
and their durations are not the work's) and a histogram of the others' durations in logarithmic buckets: bucket
``i`` holds durations in (γ^(i-1), γ^i] ms with γ = 1.02, so a quantile read from it is within 1% of the exact
one (the relative accuracy of DDSketch with the same γ). Buckets merge by adding counts: a time range is the sum of
its hours. Durations under 1 µs count as 1 µs.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

from otelflow import attributes as A

from .rows import SPAN_WIDTH

if TYPE_CHECKING:
    from .reading import Sql

__all__ = [
    "ALL_TIME",
    "HISTOGRAM_BINS",
    "HOUR_NS",
    "Sketch",
    "add_spans",
    "backfill",
    "ended_groups",
    "merged_row",
    "read_stats",
    "upgrade",
]

GAMMA: Final = 1.02
_LOG_GAMMA: Final = math.log(GAMMA)
_MIN_MS: Final = 0.001
HOUR_NS: Final = 3_600 * 10**9
ALL_TIME: Final = -1
SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS name_stats (
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    hour INTEGER NOT NULL,
    count INTEGER NOT NULL,
    errors INTEGER NOT NULL,
    buckets TEXT NOT NULL,
    cancelled INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (kind, name, hour)
);
"""
HISTOGRAM_BINS: Final = 12  # the bins of /api/stats' ``histogram``


class Sketch:
    """Counts of durations in logarithmic buckets (see the module docstring), the errors among them, and the
    cancelled spans (not in the buckets).

    The buckets are dense: ``counts[i]`` is bucket ``lo + i``; stored as the JSON array ``[lo, counts...]``, which
    reads back without per-key work."""

    __slots__ = ("cancelled", "count", "counts", "errors", "lo")

    def __init__(
        self, count: int = 0, errors: int = 0, lo: int = 0, counts: list[int] | None = None, cancelled: int = 0
    ) -> None:
        self.count = count
        self.errors = errors
        self.lo = lo
        self.counts: list[int] = counts if counts is not None else []
        self.cancelled = cancelled

    def _widen(self, lo: int, hi: int) -> None:
        """Make room for buckets ``lo..hi``."""
        if not self.counts:
            self.lo, self.counts = lo, [0] * (hi - lo + 1)
            return
        if lo < self.lo:
            self.counts[:0] = [0] * (self.lo - lo)
            self.lo = lo
        top = self.lo + len(self.counts) - 1
        if hi > top:
            self.counts.extend([0] * (hi - top))

    def add(self, duration_ms: float, error: bool) -> None:
        index = math.ceil(math.log(max(duration_ms, _MIN_MS)) / _LOG_GAMMA)
        self._widen(index, index)
        self.counts[index - self.lo] += 1
        self.count += 1
        self.errors += error

    def merge(self, other: Sketch) -> None:
        if other.counts:
            self._widen(other.lo, other.lo + len(other.counts) - 1)
            offset = other.lo - self.lo
            counts = self.counts
            for i, n in enumerate(other.counts):
                counts[offset + i] += n
        self.count += other.count
        self.errors += other.errors
        self.cancelled += other.cancelled

    def quantile(self, q: float) -> float:
        """The ``q`` quantile in ms (the value at rank ``q`` x (count - 1), as numpy's default computes it)."""
        if not self.count:
            return 0.0
        rank = q * (self.count - 1)
        seen = 0
        index = self.lo
        for i, n in enumerate(self.counts):
            seen += n
            if n and seen > rank:
                index = self.lo + i
                break
        else:
            index = self.lo + len(self.counts) - 1
        return 2 * GAMMA**index / (GAMMA + 1)  # the middle of the bucket, relatively

    def histogram(self, bins: int = HISTOGRAM_BINS) -> dict[str, list[Any]]:
        """The durations in ``bins`` log-spaced bins from the shortest bucket to the longest: ``edges_ms`` (bins + 1
        bounds) and ``counts``; both empty without durations."""
        if not self.count or not self.counts:
            return {"edges_ms": [], "counts": []}
        first = self.lo - 1  # bucket lo holds (γ^(lo-1), γ^lo]
        width = len(self.counts) / bins  # buckets per bin, possibly fractional
        counts = [0] * bins
        for i, n in enumerate(self.counts):
            if n:
                counts[min(bins - 1, int((i + 1) / width - 1e-9))] += n
        edges = [round(GAMMA ** (first + k * width), 6) for k in range(bins + 1)]
        return {"edges_ms": edges, "counts": counts}

    def to_json(self) -> str:
        return json.dumps([self.lo, *self.counts], separators=(",", ":"))

    @classmethod
    def from_row(cls, count: int, errors: int, buckets: str, cancelled: int = 0) -> Sketch:
        dense = json.loads(buckets)
        if dense:
            return cls(count, errors, dense[0], dense[1:], cancelled)
        return cls(count, errors, cancelled=cancelled)


def _groups(spans: Iterable[tuple[str, str, str, int, int]]) -> dict[tuple[str, str, int], Sketch]:
    """(kind, name, hour) -> sketch, the all-time rows included, of ended spans (kind, name, status, start, end).

    The writer's hot path: per span one bucket index and a few counters; sketches are built per group."""
    per_hour: dict[tuple[str, str, int], list[Any]] = {}  # key -> [count, errors, {bucket: n}, cancelled]
    log, ceil, scale = math.log, math.ceil, 1 / _LOG_GAMMA
    for kind, name, status, start, end in spans:
        key = (kind, name, end // HOUR_NS)
        entry = per_hour.get(key)
        if entry is None:
            entry = per_hour[key] = [0, 0, {}, 0]
        if status == A.STATUS_CANCELLED:
            entry[3] += 1
            continue
        ms = (end - start) / 1e6
        index = ceil(log(ms if ms > _MIN_MS else _MIN_MS) * scale)
        buckets = entry[2]
        buckets[index] = buckets.get(index, 0) + 1
        entry[0] += 1
        if status == A.STATUS_ERROR:
            entry[1] += 1
    groups: dict[tuple[str, str, int], Sketch] = {}
    for (kind, name, hour), (count, errors, buckets, cancelled) in per_hour.items():
        lo, hi = (min(buckets), max(buckets)) if buckets else (0, -1)
        counts = [0] * (hi - lo + 1)
        for index, n in buckets.items():
            counts[index - lo] = n
        sketch = groups[(kind, name, hour)] = Sketch(count, errors, lo, counts, cancelled)
        total = groups.get((kind, name, ALL_TIME))
        if total is None:
            groups[(kind, name, ALL_TIME)] = Sketch(count, errors, lo, list(counts), cancelled)
        else:
            total.merge(sketch)
    return groups


# not abandoned: a span cut off has no duration of its own
_COUNTED: Final = (A.STATUS_OK, A.STATUS_ERROR, A.STATUS_CANCELLED)


def _ended(flat: list[Any]) -> Iterable[tuple[str, str, str, int, int]]:
    """The spans that ended (ok, error or cancelled) among a writer's flat span rows. An abandoned span is left out:
    its duration is only how long it was heard of, and should it end after all, it would count twice."""
    for i in range(0, len(flat), SPAN_WIDTH):
        end = flat[i + 7]
        if end is not None and flat[i + 5] in _COUNTED:
            yield flat[i + 4], flat[i + 3], flat[i + 5], flat[i + 6], end


def ended_groups(flat_spans: list[Any]) -> dict[tuple[str, str, int], Sketch]:
    """(kind, name, hour) -> sketch of the ended spans among a writer's flat span rows, the all-time rows included."""
    return _groups(_ended(flat_spans))


def merged_row(key: tuple[str, str, int], sketch: Sketch, stored: Sequence[Any] | None) -> tuple[Any, ...]:
    """The ``name_stats`` row ``(kind, name, hour, count, errors, buckets, cancelled)`` of ``key``: ``sketch`` added
    to the row ``stored`` holds (``(count, errors, buckets, cancelled)``, ``None`` for a new row)."""
    if stored is not None:
        sketch.merge(Sketch.from_row(*stored))
    return (*key, sketch.count, sketch.errors, sketch.to_json(), sketch.cancelled)


def _merge_into(conn: sqlite3.Connection, groups: Mapping[tuple[str, str, int], Sketch]) -> None:
    for key, sketch in groups.items():
        stored = conn.execute(
            "SELECT count, errors, buckets, cancelled FROM name_stats WHERE kind = ? AND name = ? AND hour = ?", key
        ).fetchone()
        conn.execute(
            "INSERT OR REPLACE INTO name_stats (kind, name, hour, count, errors, buckets, cancelled) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            merged_row(key, sketch, stored),
        )


def add_spans(conn: sqlite3.Connection, flat_spans: list[Any]) -> None:
    """Add the ended spans of a writer's batch (inside its transaction)."""
    groups = ended_groups(flat_spans)
    if groups:
        _merge_into(conn, groups)


def backfill(conn: sqlite3.Connection) -> None:
    """Build the statistics of a history written before they were kept (one pass over its spans)."""
    rows = conn.execute(
        "SELECT kind, name, status, start_ns, end_ns FROM spans WHERE end_ns IS NOT NULL AND status IN (?, ?, ?)",
        _COUNTED,
    )
    _merge_into(conn, _groups(rows))


def upgrade(conn: sqlite3.Connection) -> None:
    """Give a ``name_stats`` table of schema 3 or 4 its ``cancelled`` column (schema 5)."""
    if "cancelled" not in {row[1] for row in conn.execute("PRAGMA table_info(name_stats)")}:
        conn.execute("ALTER TABLE name_stats ADD COLUMN cancelled INTEGER NOT NULL DEFAULT 0")


def read_stats(conn: Sql, kinds: list[str], since_ns: int | None) -> list[dict[str, Any]]:
    """Per (kind, name): count, p50/p95 in ms, error rate, cancelled count, a histogram of durations; all time, or
    the hours from ``since_ns``'s on. ``count`` and the rest are of the spans that ended ok or with an error;
    p50/p95 are ``None`` for a name whose spans were all cancelled."""
    marks = ",".join("?" * len(kinds))
    if since_ns is None:
        where, args = f"kind IN ({marks}) AND hour = ?", [*kinds, ALL_TIME]
    else:
        where, args = f"kind IN ({marks}) AND hour >= ?", [*kinds, since_ns // HOUR_NS]
    merged: dict[tuple[str, str], Sketch] = {}
    sql = f"SELECT kind, name, count, errors, buckets, cancelled FROM name_stats WHERE {where}"  # noqa: S608
    for kind, name, count, errors, buckets, cancelled in conn.execute(sql, args):
        sketch = Sketch.from_row(count, errors, buckets, cancelled)
        if (kind, name) in merged:
            merged[(kind, name)].merge(sketch)
        else:
            merged[(kind, name)] = sketch
    return [
        {
            "kind": kind,
            "name": name,
            "count": s.count,
            "p50_ms": s.quantile(0.50) if s.count else None,
            "p95_ms": s.quantile(0.95) if s.count else None,
            "error_rate": s.errors / s.count if s.count else 0.0,
            "cancelled": s.cancelled,
            "histogram": s.histogram(),
        }
        for (kind, name), s in sorted(merged.items())
    ]
