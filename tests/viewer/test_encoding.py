"""Encode once: the hub's hand-written span JSON equals ``dumps(to_dict())``; a span row gives its record back;
the events stored as references to their span read back as the stream told them; schema-1 and schema-3
databases are upgraded in place."""

from __future__ import annotations

import asyncio
import json
import math
import random
import sqlite3
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from otelflow.records import EventRecord, SpanRecord
from otelflow.viewer.history import History, Recorder, SqliteHistory, history_for
from otelflow.viewer.history.rows import record_from_row, record_to_row
from otelflow.viewer.live import Hub
from otelflow.wire import derived_start, dumps, encode_exact, encode_span, encode_span_pair, event_json


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


def test_events_encoded_once_give_the_same_bytes() -> None:
    """A span that arrives ended has its events encoded once, for its span.ended and its span.event envelopes:
    both are the bytes the general encoder gives."""
    records = [rec for rec in _records() if rec.ended and rec.events]
    assert len(records) > 50
    for rec in records:
        try:
            events = [event_json(e) for e in rec.events]
        except ValueError:
            continue  # a non-finite number: the general path
        assert events == [dumps(e.to_dict()).decode() for e in rec.events]
        assert encode_span_pair(rec, events) == encode_span_pair(rec)

    _assert_span_events_as_general(_told(records), records)


def test_a_span_seen_running_then_ended_encodes_as_the_general_path() -> None:
    """The path of the in-process viewer: a running snapshot, then the ended one with its events, which are
    encoded once for their span.event envelopes and the span.ended (attributes by orjson where it agrees)."""
    records = [
        # event attributes as the SDK gives them: a read-only mapping
        replace(rec, events=tuple(e._replace(attributes=MappingProxyType(dict(e.attributes))) for e in rec.events))
        for rec in _records()
        if rec.ended
    ]
    assert sum(bool(rec.events) for rec in records) > 50
    running = [replace(rec, end_time_ns=None, status="running", events=(), phase="start") for rec in records]
    told = _told(running + records)
    ended = [e for e in told if e.type == "span.ended"]
    assert [e.record for e in ended] == records
    for e in ended:
        assert e.data == dumps({"id": e.id, "type": e.type, "run_id": e.run_id, "span": e.record.to_dict()})
    _assert_span_events_as_general(told, records)


def _assert_span_events_as_general(told: list[Any], records: list[SpanRecord]) -> None:
    """Every event of ``records`` was told as a span.event, in the bytes of the general encoder."""
    span_events = [e for e in told if e.type == "span.event"]
    assert len(span_events) == sum(len(rec.events) for rec in records)
    for e in span_events:
        rec = e.record
        body = {"trace_id": rec.trace_id, "span_id": rec.span_id, "span_name": rec.name, "span_kind": rec.kind}
        event = rec.events[e.event_index].to_dict()
        assert e.data == dumps({"id": e.id, "type": e.type, "run_id": e.run_id, **body, "event": event})


def _told(records: list[SpanRecord]) -> list[Any]:
    """The events a hub publishes for ``records``, ingested at once."""

    async def run() -> list[Any]:
        hub = Hub()
        told: list[Any] = []
        hub.tap(lambda events, _batch: told.extend(events))
        await hub.start()
        hub.ingest(records)
        await hub.stop()
        return told

    return asyncio.run(run())


def _plain(rec: SpanRecord) -> SpanRecord:
    return replace(rec, attributes=dict(rec.attributes))


def _row(rec: SpanRecord, record: str) -> tuple[Any, ...]:
    head = (rec.trace_id, rec.span_id, rec.parent_span_id, rec.name, rec.kind, rec.status)
    return (*head, rec.start_time_ns, rec.end_time_ns, record, json.dumps(rec.resource))


def test_a_span_row_gives_its_record_back() -> None:
    for rec in _records():
        back = record_from_row(_row(rec, record_to_row(rec)))
        if any(isinstance(v, float) and not math.isfinite(v) for v in rec.attributes.values()):
            assert dumps(back.to_dict()) == dumps(rec.to_dict())  # nan != nan
        else:
            assert back == _plain(rec)


def _v1_record(rec: SpanRecord) -> str:
    """A whole record as schemas 1 to 3 wrote it."""
    data = {
        **{k: getattr(rec, k) for k in ("trace_id", "span_id", "parent_span_id", "name", "kind", "span_kind")},
        **{k: getattr(rec, k) for k in ("start_time_ns", "end_time_ns", "status", "status_message", "attributes")},
        "events": [[e.name, e.time_ns, dict(e.attributes)] for e in rec.events],
        **{k: getattr(rec, k) for k in ("service", "resource", "scope", "phase")},
    }
    return json.dumps(data)


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
        (old.trace_id, old.span_id, None, "old", "span", "ok", 5, 9, _v1_record(old)),
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
            assert version == "6"  # 1 -> 2 (spans.event_id) -> 3 (name_stats) -> 4 (stored once) ... 6, in one step
            # the new span is stored once, in its row; its start and end events refer to it
            row = await store.query(lambda c: c.execute("SELECT record FROM spans WHERE name='new'").fetchone())
            assert '"k":"v"' in row[0]
            refs = await store.query(
                lambda c: c.execute("SELECT span_id, data FROM events WHERE span_id IS NOT NULL").fetchall()
            )
            assert refs == [("c" * 16, "s,e")]  # its start and end, in one row
            events = await store.events("a" * 32, None)
            assert events is not None
            ended = [e for e in events if e["type"] == "span.ended"]
            assert [e["span"] for e in ended] == [new.to_dict()]
        finally:
            store.close()

    asyncio.run(check())


def test_schema_3_database_is_upgraded_and_replays_the_same_events(tmp_path: Path) -> None:
    """A schema-3 file, as that version wrote it: a span that arrived ended (its start stored as its id, its
    envelope object only in its span.ended event, the rest in its row) and a span kept whole."""
    db = tmp_path / "v3.db"
    trace, epoch = "e" * 32, "0badcafe"
    ended = SpanRecord(
        trace,
        "1" * 16,
        "ended",
        start_time_ns=10,
        end_time_ns=20,
        status="ok",
        attributes={"a": 1},
        events=(EventRecord("otelflow.log", 15, {"m": "x"}),),
        service="svc",
        resource={"service.name": "svc"},
        phase="end",
    )
    whole = SpanRecord(trace, "2" * 16, "whole", parent_span_id="1" * 16, start_time_ns=11, status="running")
    run_started = {"id": f"{epoch}.1", "type": "run.started", "run_id": trace, "run": {"trace_id": trace}}
    ended_event = {"id": f"{epoch}.4", "type": "span.ended", "run_id": trace, "span": ended.to_dict()}
    x_row = json.dumps({"x": [10, 20, 1, "", "", "end", [15]], "resource": {"service.name": "svc"}})
    conn = sqlite3.connect(db)
    conn.executescript(
        """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('schema', '3');
        CREATE TABLE spans (trace_id TEXT NOT NULL, span_id TEXT NOT NULL, parent_span_id TEXT, name TEXT NOT NULL,
            kind TEXT NOT NULL, status TEXT NOT NULL, start_ns INTEGER NOT NULL, end_ns INTEGER,
            record TEXT NOT NULL, event_id TEXT, PRIMARY KEY (trace_id, span_id));
        CREATE INDEX spans_name ON spans (name, kind);
        CREATE TABLE events (n INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL, trace_id TEXT,
            type TEXT NOT NULL, data TEXT NOT NULL);
        CREATE INDEX events_trace ON events (trace_id, n);
        CREATE INDEX events_id ON events (event_id);
        """
    )
    conn.executemany(
        "INSERT INTO events (event_id, trace_id, type, data) VALUES (?, ?, ?, ?)",
        [
            (f"{epoch}.1", trace, "run.started", json.dumps(run_started)),
            (f"{epoch}.2", trace, "span.started", json.dumps("1" * 16)),
            (f"{epoch}.3", None, "alert.fired", "{}"),
            (f"{epoch}.4", trace, "span.ended", json.dumps(ended_event)),
        ],
    )
    conn.executemany(
        "INSERT INTO spans VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (trace, ended.span_id, None, "ended", "span", "ok", 10, 20, x_row, f"{epoch}.4"),
            (trace, whole.span_id, "1" * 16, "whole", "span", "running", 11, None, _v1_record(whole), None),
        ],
    )
    conn.commit()
    conn.close()

    async def check() -> None:
        store = SqliteHistory(db)
        store.open()
        try:
            _, spans = await store.get_run(trace)
            assert spans == [ended, whole]
            events = await store.events(trace, None)
            assert events == [
                run_started,
                {"id": f"{epoch}.2", "type": "span.started", "run_id": trace, "span": derived_start(ended).to_dict()},
                ended_event,
            ]
            assert await store.events(trace, f"{epoch}.2") == [ended_event]  # ids still resume a read
            version = await store.query(lambda c: c.execute("SELECT value FROM meta").fetchone()[0])
            assert version == "6"
        finally:
            store.close()

    asyncio.run(check())


async def _recorded(store: History) -> tuple[Hub, list[dict[str, Any]]]:
    """A started hub whose events ``store`` records, and the list of what its stream tells (quiet ones left out)."""
    hub = Hub()
    hub.tap(Recorder(store))
    told: list[dict[str, Any]] = []
    hub.tap(lambda events, _batch: told.extend(e.payload() for e in events if not e.quiet))
    await hub.start()
    return hub, told


def test_a_read_resumes_after_any_event_even_inside_one_spans_row(new_db: Callable[[], str]) -> None:
    """Spans that arrive ended with events are stored one row each (start, events, end): reading after any of
    their events, or a page of any size, gives exactly the rest of what the stream told."""

    async def check() -> None:
        store = history_for(new_db())
        store.open()
        try:
            hub, told = await _recorded(store)
            trace = "f" * 32
            steps = [
                SpanRecord(
                    trace,
                    f"{i + 1:016x}",
                    f"s{i}",
                    parent_span_id=None if i == 0 else f"{1:016x}",
                    start_time_ns=100 + i,
                    end_time_ns=200 + i,
                    status="ok",
                    events=tuple(EventRecord("otelflow.log", 150 + j, {"j": j}) for j in range(i)),
                )
                for i in range(5)
            ]
            hub.ingest(steps)
            await hub.stop()
            stream = [e for e in told if e.get("run_id") == trace]
            assert len(stream) == 2 + 5 * 2 + sum(range(5))  # run.started/ended, start/end and events of each
            assert await store.events(trace, None) == stream
            for k, event in enumerate(stream):
                assert await store.events(trace, event["id"]) == stream[k + 1 :]
                assert await store.events(trace, None, k + 1) == stream[: k + 1]
        finally:
            store.close()

    asyncio.run(check())


def test_a_live_run_replays_as_told_its_updates_included(new_db: Callable[[], str]) -> None:
    """A run told live: spans start, report progress (each a run.updated, stored as what changed, every 64th
    whole) and end. The history gives back exactly the stream, from the start and resuming after any event."""

    async def check() -> None:
        store = history_for(new_db())
        store.open()
        try:
            hub, told = await _recorded(store)
            trace, root, step = "c" * 32, "1" * 16, "2" * 16
            start = time.time_ns()
            wf = SpanRecord(trace, root, "wf", kind="workflow", start_time_ns=start, attributes={"in": 1})
            node = SpanRecord(trace, step, "step", parent_span_id=root, start_time_ns=start + 1)
            hub.ingest([wf, node])
            progress: list[EventRecord] = []
            for i in range(70):
                progress.append(EventRecord("otelflow.progress", start + 10 + i, {"otelflow.progress.completed": i}))
                hub.ingest([replace(wf, events=tuple(progress), phase="update")])
            hub.ingest([replace(node, end_time_ns=start + 200, status="ok", attributes={"out": 2}, phase="end")])
            hub.ingest([replace(wf, end_time_ns=start + 300, status="ok", events=tuple(progress), phase="end")])
            await hub.stop()
            stream = [e for e in told if e.get("run_id") == trace]
            assert sum(1 for e in stream if e["type"] == "run.updated") >= 70
            assert await store.events(trace, None) == stream
            for k in range(0, len(stream), 7):
                assert await store.events(trace, stream[k]["id"]) == stream[k + 1 :]
            kinds = await store.query(lambda c: dict(c.execute("SELECT type, COUNT(*) FROM events GROUP BY type")))
            assert kinds[13] > 60  # deltas
            assert kinds[2] >= 1  # and whole updates
        finally:
            store.close()

    asyncio.run(check())


def test_events_an_sdk_dropped_from_a_span_still_replay(new_db: Callable[[], str]) -> None:
    """SDKs bound a span's events and drop the oldest (OTEL_SPAN_EVENT_COUNT_LIMIT): the span as it ended no
    longer has the first events the stream told while it ran. The history still replays every one."""

    async def check() -> None:
        store = history_for(new_db())
        store.open()
        try:
            hub, told = await _recorded(store)
            trace, start = "d" * 32, time.time_ns()
            events = [EventRecord("otelflow.log", start + i, {"otelflow.log.message": f"line {i}"}) for i in range(4)]
            span = SpanRecord(trace, "1" * 16, "wf", kind="workflow", start_time_ns=start, events=(events[0],))
            hub.ingest([span])  # starts live with one event already
            for i in (1, 2):
                hub.ingest([replace(span, events=tuple(events[: i + 1]), phase="update")])
            # ends holding only its last two events: the SDK dropped the first two
            hub.ingest([replace(span, events=tuple(events[2:]), end_time_ns=start + 10, status="ok", phase="end")])
            await hub.stop()
            stream = [e for e in told if e.get("run_id") == trace]
            told_lines = [e["event"]["attributes"]["otelflow.log.message"] for e in stream if e["type"] == "span.event"]
            assert told_lines == ["line 0", "line 1", "line 2", "line 3"]
            assert await store.events(trace, None) == stream
        finally:
            store.close()

    asyncio.run(check())


@pytest.mark.parametrize("n", [1, 2, 3, 7, 1000, 5000])
def test_batched_inserts_keep_every_row_in_order(n: int, new_db: Callable[[], str]) -> None:
    async def check() -> None:
        store = history_for(new_db())
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


def _plain_records() -> list[SpanRecord]:
    """Plain records (printable ASCII, numbers), and among them values of other kinds (DEL, control characters,
    floats of every range, big integers, non-str keys, model calls, failed spans)."""
    rng = random.Random(11)
    values: list[Any] = [
        "plain",
        'with "quotes" and \\ and / and \t\n\r\x00\x1f',
        "",
        0,
        -(2**63),
        2**64 - 1,
        1.5,
        0.0,
        -0.0,
        1e-4,
        9_999_999_999_999_998.0,
        True,
        None,
        [1, "a", None],
        (True, 2),
        [],
    ]
    odd: list[Any] = ["del \x7f", 2**64, 1e16, 1e-5, 5e-324, math.nan, [1.5], {"nested": 1}, "ünï", "\ud800"]
    out = []
    for i in range(600):
        start = rng.randrange(0, 4_000_000_000 * 10**9)
        ended = rng.random() < 0.7
        pick = (lambda: rng.choice(values + odd)) if i % 4 == 0 else (lambda: rng.choice(values))
        attrs: Any = {f"k{j}": pick() for j in range(rng.randrange(0, 5))}
        if i % 97 == 5:
            attrs[3] = "non-str key"
        events = tuple(
            EventRecord(rng.choice(["otelflow.progress", "exception", "otelflow.log"]), start + j, {"n": pick()})
            for j in range(rng.randrange(0, 3))
        )
        status = rng.choice(["ok", "error", "cancelled"]) if ended else "running"
        out.append(
            SpanRecord(
                trace_id=f"{rng.getrandbits(128):032x}",
                span_id=f"{rng.getrandbits(64):016x}",
                name=rng.choice(["wf", "invoke_agent a", "x" * 50, "del\x7f"]),
                parent_span_id=None if i % 3 == 0 else f"{rng.getrandbits(64):016x}",
                kind=rng.choice(["workflow", "agent", "node", "tool", "span", "llm"]),
                start_time_ns=start,
                end_time_ns=start + rng.choice([0, 1, 99, 100, 10**6, rng.randrange(10**13)]) if ended else None,
                status=status,
                status_message=rng.choice(["", "boom"]),
                attributes=attrs if i % 7 else MappingProxyType(attrs),
                events=events,
                service=rng.choice(["svc", ""]),
                resource={"service.name": "svc"},
            )
        )
    return out


def test_every_span_event_the_hub_writes_is_the_general_encoding_of_its_envelope() -> None:
    """span.started, span.event and span.ended of spans that arrive ended (their pieces shared between the three)
    and of live ones: the bytes of encoding each envelope's dict."""
    records = _plain_records() + [rec for rec in _records() if rec.ended]

    told = _told(records)
    spans = 0
    for e in told:
        if e.quiet:
            continue
        if e.type == "span.event":
            rec = e.record
            body = {"trace_id": rec.trace_id, "span_id": rec.span_id, "span_name": rec.name, "span_kind": rec.kind}
            event = rec.events[e.event_index].to_dict()
            assert e.data == dumps({"id": e.id, "type": e.type, "run_id": e.run_id, **body, "event": event})
        elif e.type in ("span.started", "span.ended"):
            spans += 1
            span = derived_start(e.record) if e.derived else e.record
            assert e.data == dumps({"id": e.id, "type": e.type, "run_id": e.run_id, "span": span.to_dict()})
    assert spans > len(records)


def test_the_orjson_paths_write_the_general_encoders_bytes() -> None:
    """Attribute dicts, the start and end of a span that arrived ended, and a span's history row: where orjson
    writes them (plain values), the bytes are those of the general encoders; other values take those."""
    from otelflow.viewer.history import rows
    from otelflow.viewer.live.events import attributes_json, orjson_text, plain
    from otelflow.wire import to_json

    taken = rows_taken = 0
    records = _plain_records() + _records()
    for rec in records:
        for attributes in (rec.attributes, *(e.attributes for e in rec.events)):
            try:
                expected: str | type[Exception] = to_json(dict(attributes))
            except (TypeError, ValueError) as exc:
                expected = type(exc)
            if isinstance(expected, str):
                assert attributes_json(attributes) == expected
            else:
                with pytest.raises(expected):
                    attributes_json(attributes)
        if rec.ended:
            try:
                events = [event_json(e, attributes_json) for e in rec.events]
            except (TypeError, ValueError):
                pass
            else:
                taken += plain(rec.attributes) and orjson_text(rec.attributes) is not None
                assert events == [event_json(e) for e in rec.events]
                assert encode_span_pair(rec, events, attributes_json)[:2] == encode_span_pair(rec)[:2]
        start = rec.start_time_ns
        general = rows._dumps(
            [
                rec.span_kind,
                rec.status_message,
                rec.scope,
                rec.phase,
                None if rec.service == rec.resource.get("service.name") else rec.service,
                rec.attributes,
                [[e.name, e.time_ns - start, e.attributes] for e in rec.events],
            ]
        )
        assert rows.record_to_row(rec) == general
        rows_taken += rows._plain_row(rec) is not None
    assert taken > 100
    assert rows_taken > 100
