"""SpanRecord encodings: the envelope's span object and OTLP/JSON, both ways."""

from __future__ import annotations

import json
import math
import random

import pytest

import otelflow
from otelflow import attributes as A
from otelflow.naming import kind_of
from otelflow.otlp_json import otlp_json_bytes, to_otlp_json
from otelflow.records import EventRecord, SpanRecord, format_time
from otelflow.viewer.decode import OtlpDecodeError, from_otlp_json
from tests.conftest import Traced


def test_envelope_span_object_has_the_designed_fields(traced: Traced) -> None:
    with otelflow.workflow("wf", run_id="job-1"), otelflow.agent("writer"):
        pass
    end = next(r for r in traced.live() if r.phase == "end" and r.kind == "agent")
    obj = end.to_dict()
    assert set(obj) == {
        "trace_id",
        "span_id",
        "parent_span_id",
        "name",
        "kind",
        "status",
        "start_time",
        "end_time",
        "duration_ms",
        "service",
        "attributes",
        "events",
        "error",
    }
    assert obj["kind"] == "agent"
    assert obj["status"] == "ok"
    assert obj["service"] == "tests"
    assert len(obj["trace_id"]) == 32
    assert len(obj["span_id"]) == 16
    assert obj["start_time"].endswith("Z")
    assert obj["duration_ms"] >= 0
    json.dumps(obj)  # serialisable as it is


def test_error_details_come_from_the_exception_event(traced: Traced) -> None:
    with pytest.raises(KeyError), otelflow.tool("lookup"):
        raise KeyError("missing")
    end = next(r for r in traced.live() if r.phase == "end")
    err = end.error()
    assert err is not None
    assert err["type"] == "KeyError"
    assert err["message"] == "'missing'"
    assert "Traceback" in err["stack"]


def test_otlp_json_round_trip_keeps_everything(traced: Traced) -> None:
    with otelflow.workflow("wf", run_id="job-7") as run:
        run.progress(completed=1, total=4)
        with otelflow.agent("a"):
            otelflow.data_flow("a", "b", {"k": 1})
    originals = [r for r in traced.live() if r.phase == "end"]
    decoded, rejected = from_otlp_json(json.loads(json.dumps(to_otlp_json(originals))))
    assert rejected == []
    assert [(r.trace_id, r.span_id, r.parent_span_id, r.name, r.kind, r.status) for r in decoded] == [
        (r.trace_id, r.span_id, r.parent_span_id, r.name, r.kind, r.status) for r in originals
    ]
    for got, want in zip(decoded, originals, strict=True):
        assert got.attributes == {k: list(v) if isinstance(v, tuple) else v for k, v in want.attributes.items()}
        assert [(e.name, e.time_ns) for e in got.events] == [(e.name, e.time_ns) for e in want.events]
        assert got.start_time_ns == want.start_time_ns
        assert got.end_time_ns == want.end_time_ns
        assert got.service == "tests"


def test_running_records_travel_as_pending_snapshots() -> None:
    rec = SpanRecord("ab" * 16, "cd" * 8, "node", start_time_ns=5, attributes={A.KIND: "node"})
    payload = to_otlp_json([rec])
    span = payload["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    assert {"key": A.PENDING, "value": {"boolValue": True}} in span["attributes"]
    assert "endTimeUnixNano" not in span
    (back,), _ = from_otlp_json(payload)
    assert back.status == "running"
    assert A.PENDING not in back.attributes


def test_malformed_spans_are_rejected_one_by_one() -> None:
    good = {"traceId": "ab" * 16, "spanId": "cd" * 8, "name": "ok", "startTimeUnixNano": "1", "endTimeUnixNano": "2"}
    bad_id = {**good, "spanId": "xyz"}
    bad_time = {**good, "spanId": "ef" * 8, "startTimeUnixNano": "soon"}
    payload = {"resourceSpans": [{"scopeSpans": [{"spans": [good, bad_id, bad_time]}]}]}
    records, rejected = from_otlp_json(payload)
    assert [r.name for r in records] == ["ok"]
    assert len(rejected) == 2
    assert "spanId" in rejected[0]
    assert "startTimeUnixNano" in rejected[1]
    with pytest.raises(OtlpDecodeError, match="resourceSpans: must be a list"):
        from_otlp_json({"resourceSpans": {}})


@pytest.mark.parametrize(
    ("attrs", "kind"),
    [
        ({A.KIND: "tool"}, "tool"),
        ({A.GEN_AI_OPERATION_NAME: "invoke_agent"}, "agent"),
        ({A.GEN_AI_OPERATION_NAME: "execute_tool"}, "tool"),
        ({A.OPENINFERENCE_SPAN_KIND: "AGENT"}, "agent"),
        ({A.OPENINFERENCE_SPAN_KIND: "chain"}, "node"),
        ({"http.method": "GET"}, "span"),
    ],
)
def test_kind_is_understood_from_other_conventions(attrs: dict[str, str], kind: str) -> None:
    assert kind_of(attrs) == kind


def test_time_format_is_iso_utc_with_microseconds() -> None:
    assert format_time(1_700_000_000_123_456_789) == "2023-11-14T22:13:20.123456Z"


def test_time_format_matches_datetime_for_many_random_times() -> None:
    """The cached per-second prefix gives exactly what datetime.strftime gives, for any time."""
    import random
    from datetime import datetime, timezone

    def reference(time_ns: int) -> str:
        seconds, ns = divmod(time_ns, 1_000_000_000)
        stamp = datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
        return f"{stamp}.{ns // 1000:06d}Z"

    rng = random.Random(1234)
    base = 1_700_000_000 * 10**9
    times = [rng.randrange(0, 4_102_444_800 * 10**9) for _ in range(20_000)]  # 1970 .. 2100
    times += [base + rng.randrange(0, 5 * 10**9) for _ in range(20_000)]  # many within the same seconds
    times += [0, 1, 999, 999_999_999, 10**9, 10**9 - 1, base, base + 999_999_999]
    for t in times:
        assert format_time(t) == reference(t), t
        assert format_time(t) == reference(t), t  # second call: from the cache


def test_a_deferred_record_reads_the_same_as_an_eager_one_from_any_thread() -> None:
    import threading

    from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
    from opentelemetry.trace import Status, StatusCode

    from otelflow.records import PHASE_END, capture, deferred_pair, lean_capture, lighten, record_from_span

    ended: list[ReadableSpan] = []

    class Keep(SpanProcessor):
        def on_end(self, span: ReadableSpan) -> None:
            ended.append(span)

    provider = TracerProvider()
    provider.add_span_processor(Keep())
    tracer = provider.get_tracer("t")
    with (
        tracer.start_as_current_span("outer"),
        tracer.start_as_current_span("inner", attributes={"otelflow.kind": "tool"}) as span,
    ):
        span.add_event("otelflow.progress", {"otelflow.progress.percent": 50.0})
        span.set_status(Status(StatusCode.ERROR, "boom"))
    sdk_span = ended[0]
    eager = record_from_span(sdk_span, PHASE_END)
    start, deferred = deferred_pair(capture(sdk_span, PHASE_END))
    assert deferred.phase == "end"
    assert start.phase == "start"
    seen: list[dict[str, object]] = []
    reader = threading.Thread(target=lambda: seen.append(deferred.to_dict()))
    reader.start()
    reader.join()
    assert seen == [eager.to_dict()]
    assert deferred == eager
    assert (deferred.kind, deferred.status, deferred.status_message) == ("tool", "error", "boom")
    assert start.to_dict() | {"status": "running"} == start.to_dict()
    assert (start.end_time_ns, start.events, start.span_id) == (None, (), eager.span_id)
    with pytest.raises(AttributeError, match="no_such_field"):
        deferred.no_such_field  # noqa: B018 - an unknown name stays an AttributeError
    # an ended span itself (it can no longer change) is a source too, as inline delivery hands it over
    from_span, end_from_span = deferred_pair(sdk_span)
    assert end_from_span == eager
    assert from_span.to_dict() == start.to_dict()
    # lightened for a reader that keeps them waiting (plain values instead of the span): they read the same
    light = deferred_pair(sdk_span)
    lighten(light)
    assert light[1]._source is not sdk_span
    assert light[1] == eager
    assert light[0].to_dict() == start.to_dict()
    assert deferred_pair(lean_capture(sdk_span))[1].to_dict() == eager.to_dict()
    # events of another type than the SDK's Event are read through their properties
    from opentelemetry.sdk.trace import EventBase

    class Note(EventBase):
        @property
        def attributes(self) -> dict[str, object]:
            return {"otelflow.log.message": "from a note"}

    noted = ReadableSpan(
        name="noted", context=sdk_span.context, parent=None, events=(Note("otelflow.log", 5),), end_time=9
    )
    for record in (record_from_span(noted, PHASE_END), deferred_pair(lean_capture(noted))[1]):
        assert [tuple(e) for e in record.events] == [("otelflow.log", 5, {"otelflow.log.message": "from a note"})]
    odd = deferred_pair(object())  # not a span at all: left as it is, and reading it fails as it did
    lighten(odd)
    with pytest.raises(AttributeError):
        odd[1].name  # noqa: B018


def _varied_records(seed: int = 7) -> list[SpanRecord]:
    """Records with every kind of value an attribute may hold, in several resources and scopes."""
    rng = random.Random(seed)
    values: list[object] = [
        "plain",
        'qu"ote\\',
        "ünïcode ✓",
        "\ud800 lone",
        "line\nbreak\x00",
        "",
        0,
        -7,
        2**70,
        True,
        False,
        1.5,
        -0.0,
        1e16,
        1e-5,
        math.nan,
        math.inf,
        None,
        b"\x00\xff",
        ["a", 1, 2.5, True],
        ("t",),
        {"k": {"n": 1}},
    ]
    resources = [{"service.name": "a"}, {"service.name": "b", "host": "h\u00e9"}, {}]
    out = []
    for i in range(300):
        attrs = {f"k{j}": rng.choice(values) for j in range(rng.randrange(0, 6))}
        if i % 50 == 7:
            attrs[3] = "a key that is not a str"  # type: ignore[index]
        events = tuple(
            EventRecord(rng.choice(["otelflow.log", "é"]), 10 + j, {"m": rng.choice(values)})
            for j in range(rng.randrange(0, 3))
        )
        ended = rng.random() < 0.7
        out.append(
            SpanRecord(
                trace_id=f"{rng.getrandbits(128):032x}",
                span_id=f"{rng.getrandbits(64):016x}",
                name=rng.choice(["wf", "ägent", "tool \u2028"]),
                parent_span_id=None if i % 4 == 0 else f"{rng.getrandbits(64):016x}",
                span_kind=rng.randrange(0, 6),
                start_time_ns=rng.randrange(1, 2**62),
                end_time_ns=rng.randrange(2**62, 2**63) if ended else None,
                status=rng.choice(["ok", "error", "cancelled"]) if ended else "running",
                status_message=rng.choice(["", "boom", "ünï"]) if ended else "",
                attributes=attrs,  # type: ignore[arg-type]
                events=events,  # type: ignore[arg-type]
                resource=rng.choice(resources),
                service="svc",
                scope=rng.choice(["otelflow", "", "scöpe"]),
            )
        )
    out.append(SpanRecord("a" * 32, "b" * 16, "no start", start_time_ns=None))  # type: ignore[arg-type]
    return out


def test_the_live_exporters_body_is_the_json_of_to_otlp_json(traced: Traced) -> None:
    """otlp_json_bytes writes the request directly; its bytes are those of json.dumps(to_otlp_json(...))."""
    with otelflow.workflow("wf", run_id="job-9") as run:
        run.progress(completed=1, total=2)
        with otelflow.agent("a"):
            otelflow.data_flow("a", "b", {"k": [1, 2]})
    sdk_records = traced.live()
    assert sdk_records
    worker = {A.WORKER_ID: "w1"}
    for records in (sdk_records, _varied_records(), _varied_records(8)[:1], []):
        want = json.dumps(to_otlp_json(records, resource_extra=worker), separators=(",", ":")).encode()
        assert otlp_json_bytes(records, resource_extra=worker) == want
