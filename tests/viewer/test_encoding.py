"""Encode once: the hub's hand-written span JSON equals ``dumps(to_dict())``; a store row that keeps the span
object only in its event gives the same record back; a schema-1 database is upgraded in place."""

from __future__ import annotations

import asyncio
import json
import math
import random
import sqlite3
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from otelflow.records import EventRecord, SpanRecord
from otelflow.viewer.history import Recorder, SqliteHistory
from otelflow.viewer.history.rows import record_from_row, record_to_row, span_row
from otelflow.viewer.live import Hub
from otelflow.wire import derived_start, dumps, encode_exact, encode_span, encode_span_pair


def _records() -> list[SpanRecord]:
    rng = random.Random(7)
    values: list[Any] = [
        "plain",
        "ünïcødé",
        'line\nbreak\t"quoted"',
        "\ud800 lone",
        0,
        -3,
        2**70,
        1.5,
        1e-7,
        True,
        False,
        None,
        [1, "a", 2.5],
        {"nested": {"k": [1, 2]}},
        "",
    ]
    out = []
    for i in range(400):
        start = rng.randrange(0, 4_000_000_000 * 10**9)
        ended = rng.random() < 0.6
        attrs = {f"k{j}": rng.choice(values) for j in range(rng.randrange(0, 6))}
        events = tuple(
            EventRecord(
                rng.choice(["otelflow.progress", "exception", "ëvent"]),
                start + j,
                {"exception.message": rng.choice(values), "n": j},
            )
            for j in range(rng.randrange(0, 3))
        )
        out.append(
            SpanRecord(
                trace_id=f"{rng.getrandbits(128):032x}",
                span_id=f"{rng.getrandbits(64):016x}",
                name=rng.choice(["wf", "ägent", "tool \u2028", "x" * 50]),
                parent_span_id=None if i % 3 == 0 else f"{rng.getrandbits(64):016x}",
                kind=rng.choice(["workflow", "agent", "node", "tool", "span"]),
                span_kind=rng.randrange(0, 6),
                start_time_ns=start,
                end_time_ns=start + rng.randrange(0, 10**12) if ended else None,
                status=rng.choice(["ok", "error"]) if ended else rng.choice(["running", "abandoned"]),
                status_message=rng.choice(["", "boom", "ünï"]),
                attributes=attrs if i % 5 else MappingProxyType(attrs),  # type: ignore[arg-type]
                events=events,
                service=rng.choice(["svc", "sérvice", ""]),
                resource={"service.name": "svc", "host": rng.choice(values)},
                scope=rng.choice(["otelflow", "", "scöpe"]),
                phase=rng.choice(["start", "update", "end"]),
            )
        )
    # values the fast path does not take: non-finite numbers
    out.append(SpanRecord("a" * 32, "b" * 16, "nan", attributes={"x": math.nan, "y": math.inf}))
    return out


def test_encode_span_equals_dumps_of_to_dict() -> None:
    for rec in _records():
        data, exact = encode_span(rec)
        assert data == dumps(rec.to_dict())
        assert exact == (encode_exact(rec.to_dict())[1])
        assert data.isascii()
        assert b"\n" not in data


def test_a_span_that_arrived_ended_encodes_its_made_up_start_and_its_end_together() -> None:
    ended = [rec for rec in _records() if rec.ended]
    assert len(ended) > 100
    # and one the fast path does not take
    ended.append(SpanRecord("a" * 32, "c" * 16, "nan", start_time_ns=1, end_time_ns=2, attributes={"x": math.nan}))
    for rec in ended:
        started, data, exact = encode_span_pair(rec)
        assert started == dumps(derived_start(rec).to_dict())
        assert (data, exact) == encode_span(rec)
        assert json.loads(started)["status"] == "running"
        assert json.loads(started)["end_time"] is None


def test_span_row_and_its_event_give_the_record_back() -> None:
    for rec in _records():
        data, exact = encode_span(rec)
        row = span_row(rec)
        if not exact or row is None:
            continue
        event = b'{"id":"e.1","type":"span.ended","run_id":null,"span":' + data + b"}"
        plain = replace(rec, attributes=dict(rec.attributes))  # record_to_row would write a mappingproxy as a string
        assert record_from_row(row, event.decode()) == record_from_row(record_to_row(plain))


def test_schema_1_database_is_upgraded_and_keeps_its_spans(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    conn = sqlite3.connect(db)
    conn.executescript(
        """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('schema', '1');
        CREATE TABLE spans (trace_id TEXT NOT NULL, span_id TEXT NOT NULL, parent_span_id TEXT, name TEXT NOT NULL,
            kind TEXT NOT NULL, status TEXT NOT NULL, start_ns INTEGER NOT NULL, end_ns INTEGER,
            record TEXT NOT NULL, PRIMARY KEY (trace_id, span_id));
        """
    )
    old = SpanRecord("a" * 32, "b" * 16, "old", start_time_ns=5, end_time_ns=9, status="ok")
    conn.execute(
        "INSERT INTO spans VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (old.trace_id, old.span_id, None, "old", "span", "ok", 5, 9, record_to_row(old)),
    )
    conn.commit()
    conn.close()

    async def check() -> None:
        store = SqliteHistory(db)
        store.open()
        try:
            hub = Hub()
            hub.tap(Recorder(store))
            await hub.start()
            new = SpanRecord(
                "a" * 32,
                "c" * 16,
                "new",
                parent_span_id="b" * 16,
                start_time_ns=6,
                end_time_ns=8,
                status="ok",
                attributes={"k": "v"},
            )
            hub.ingest([new])
            await hub.stop()
            _, spans = await store.get_run("a" * 32)
            assert spans == [old, new]
            version = await store.query(lambda c: c.execute("SELECT value FROM meta").fetchone()[0])
            assert version == "3"  # 1 -> 2 (spans.event_id) -> 3 (name_stats), in one step
            # the new span's object is stored once, in its event
            row = await store.query(
                lambda c: c.execute("SELECT record, event_id FROM spans WHERE name='new'").fetchone()
            )
            assert row[1] is not None
            assert '"attributes"' not in row[0]
        finally:
            store.close()

    asyncio.run(check())


@pytest.mark.parametrize("n", [1, 2, 3, 7, 1000, 5000])
def test_batched_inserts_keep_every_row_in_order(n: int) -> None:
    async def check() -> None:
        store = SqliteHistory(":memory:")
        store.open()
        try:
            hub = Hub()
            hub.tap(Recorder(store))
            await hub.start()
            trace = "d" * 32
            recs = [
                SpanRecord(trace, f"{i + 1:016x}", f"s{i}", start_time_ns=i, end_time_ns=i + 1, status="ok")
                for i in range(n)
            ]
            hub.ingest(recs)
            await hub.stop()
            _, spans = await store.get_run(trace)
            assert spans == recs
            events = await store.events(trace, None, 3 * n + 1)
            assert events is not None
            assert [e["span"]["name"] for e in events if e["type"] == "span.ended"] == [f"s{i}" for i in range(n)]
            assert json.loads(json.dumps(events)) == events
        finally:
            store.close()

    asyncio.run(check())
