"""POST /v1/traces: encodings, limits, partial success, pending conventions, and fuzzed garbage (never 5xx)."""

from __future__ import annotations

import gzip
import json
import zlib
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from otelflow import attributes as A
from otelflow.otlp_json import to_otlp_json
from otelflow.viewer.decode import decode_protobuf
from tests.viewer.conftest import SseClient, Viewer, record, span_id, trace_id

JSON = {"content-type": "application/json"}
PB = {"content-type": "application/x-protobuf"}


def _kv(key: str, value: Any) -> KeyValue:
    if isinstance(value, bool):
        return KeyValue(key=key, value=AnyValue(bool_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=str(value)))


def _pb_request(spans: list[Span], worker: str = "w-pb") -> ExportTraceServiceRequest:
    return ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(
                resource={"attributes": [_kv("service.name", "svc"), _kv(A.WORKER_ID, worker)]},
                scope_spans=[ScopeSpans(spans=spans)],
            )
        ]
    )


def test_methods_and_content_types(viewer: Viewer) -> None:
    url = f"{viewer.url}/v1/traces"
    assert httpx.get(url, timeout=5).status_code == 405
    assert httpx.put(url, content=b"{}", headers=JSON, timeout=5).status_code == 405
    r = httpx.post(url, content=b"x", headers={"content-type": "text/plain"}, timeout=5)
    assert r.status_code == 415
    assert "application/json" in r.text
    r = httpx.post(url, content=b"{}", headers={**JSON, "content-encoding": "br"}, timeout=5)
    assert r.status_code == 415
    assert "gzip" in r.json()["message"]
    assert httpx.post(url, content=b"{}", headers=JSON, timeout=5).json() == {}
    assert (
        httpx.post(
            url, content=b"{}", headers={"content-type": "application/json; charset=utf-8"}, timeout=5
        ).status_code
        == 200
    )


def test_malformed_bodies_get_400_with_a_message(viewer: Viewer) -> None:
    url = f"{viewer.url}/v1/traces"
    r = httpx.post(url, content=b"{not json", headers=JSON, timeout=5)
    assert r.status_code == 400
    assert "JSON" in r.json()["message"]
    r = httpx.post(url, content=b'{"resourceSpans": 3}', headers=JSON, timeout=5)
    assert r.status_code == 400
    assert "resourceSpans" in r.json()["message"]
    r = httpx.post(url, content=b"[" * 100_000, headers=JSON, timeout=5)
    assert r.status_code == 400
    r = httpx.post(url, content=b"\xff\x00garbage", headers=PB, timeout=5)
    assert r.status_code == 400
    assert r.headers["content-type"] == "application/x-protobuf"
    r = httpx.post(url, content=b"not gzip", headers={**JSON, "content-encoding": "gzip"}, timeout=5)
    assert r.status_code == 400
    assert "gzip" in r.json()["message"]
    r = httpx.post(url, content=gzip.compress(b"{}")[:-6], headers={**JSON, "content-encoding": "gzip"}, timeout=5)
    assert r.status_code == 400


def test_size_limit_applies_after_decompression(make_viewer: Any) -> None:
    viewer = make_viewer(max_body_bytes=64 * 1024)
    url = f"{viewer.url}/v1/traces"
    small = json.dumps(to_otlp_json([record(trace_id(), span_id())])).encode()
    assert (
        httpx.post(
            url, content=gzip.compress(small), headers={**JSON, "content-encoding": "gzip"}, timeout=5
        ).status_code
        == 200
    )
    bomb = zlib.compress(b" " * (50 * 1024 * 1024), 9)  # 50 MiB of spaces in ~50 KiB
    gz = gzip.compress(b" " * (50 * 1024 * 1024), 9)
    assert len(bomb) < 64 * 1024
    assert len(gz) < 64 * 1024
    r = httpx.post(url, content=gz, headers={**JSON, "content-encoding": "gzip"}, timeout=10)
    assert r.status_code == 413
    assert "decompressed" in r.json()["message"]
    r = httpx.post(url, content=b" " * (65 * 1024), headers=JSON, timeout=5)
    assert r.status_code == 413


def test_every_member_of_a_multi_member_gzip_body_is_read(make_viewer: Any) -> None:
    viewer = make_viewer(max_body_bytes=64 * 1024)
    url = f"{viewer.url}/v1/traces"
    trace = trace_id()
    spans = [record(trace, span_id(), f"step {i}", ended=True) for i in range(6)]
    body = json.dumps(to_otlp_json(spans)).encode()
    half = len(body) // 2  # mid-JSON: the first spans in one member, the rest in the next
    two = gzip.compress(body[:half]) + b"\0\0" + gzip.compress(body[half:])  # NUL padding, as gzip(1) skips
    gz = {**JSON, "content-encoding": "gzip"}
    r = httpx.post(url, content=two, headers=gz, timeout=5)
    assert r.status_code == 200, r.text
    stored = httpx.get(f"{viewer.url}/api/runs/{trace}", timeout=5).json()["spans"]
    assert sorted(s["name"] for s in stored) == [f"step {i}" for i in range(6)]

    # the same body, arriving in small chunks that cut across the member boundary
    trace = trace_id()
    body = json.dumps(to_otlp_json([record(trace, span_id(), f"chunk {i}", ended=True) for i in range(6)])).encode()
    two = gzip.compress(body[:half]) + gzip.compress(body[half:])
    r = httpx.post(url, content=iter([two[i : i + 7] for i in range(0, len(two), 7)]), headers=gz, timeout=5)
    assert r.status_code == 200, r.text
    assert len(httpx.get(f"{viewer.url}/api/runs/{trace}", timeout=5).json()["spans"]) == 6

    # the limit is on all members together; what follows a member must be another one
    r = httpx.post(url, content=gzip.compress(b" " * 40_000) * 2, headers=gz, timeout=5)
    assert r.status_code == 413
    r = httpx.post(url, content=gzip.compress(b"{}") + b"trailing junk", headers=gz, timeout=5)
    assert r.status_code == 400
    assert "gzip" in r.json()["message"]
    r = httpx.post(url, content=gzip.compress(b"{}") + gzip.compress(b"{}")[:-6], headers=gz, timeout=5)
    assert r.status_code == 400
    assert "truncated" in r.json()["message"]


def test_partial_success_in_json_and_protobuf(viewer: Viewer) -> None:
    good = to_otlp_json([record(trace_id(), span_id(), "good", ended=True)])
    spans = good["resourceSpans"][0]["scopeSpans"][0]["spans"]
    spans.append({"traceId": "xyz", "spanId": span_id(), "name": "bad"})
    spans.append({"traceId": trace_id(), "name": "no span id"})
    r = httpx.post(f"{viewer.url}/v1/traces", content=json.dumps(good), headers=JSON, timeout=5)
    assert r.status_code == 200
    partial = r.json()["partialSuccess"]
    assert partial["rejectedSpans"] == "2"
    assert "traceId" in partial["errorMessage"]

    req = _pb_request(
        [
            Span(
                trace_id=bytes.fromhex(trace_id()),
                span_id=bytes.fromhex(span_id()),
                name="ok",
                start_time_unix_nano=1,
                end_time_unix_nano=2,
            ),
            Span(trace_id=b"\x01\x02", span_id=bytes.fromhex(span_id()), name="short trace id"),
        ]
    )
    r = httpx.post(f"{viewer.url}/v1/traces", content=req.SerializeToString(), headers=PB, timeout=5)
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/x-protobuf"
    response = ExportTraceServiceResponse.FromString(r.content)
    assert response.partial_success.rejected_spans == 1
    assert "traceId" in response.partial_success.error_message
    names = {run["name"] for run in httpx.get(f"{viewer.url}/api/runs", timeout=5).json()["runs"]}
    assert names == {"good", "ok"}


def test_protobuf_pending_snapshot_and_duplicates(viewer: Viewer) -> None:
    t, s = bytes.fromhex(trace_id()), bytes.fromhex(span_id())
    running = Span(
        trace_id=t,
        span_id=s,
        name="long",
        start_time_unix_nano=10,
        attributes=[_kv(A.PENDING, True), _kv(A.KIND, "agent")],
    )
    done = Span(
        trace_id=t,
        span_id=s,
        name="long",
        start_time_unix_nano=10,
        end_time_unix_nano=20,
        attributes=[_kv(A.KIND, "agent")],
    )
    with SseClient(f"{viewer.url}/api/stream") as sse:
        for span in (running, done, done, running):
            httpx.post(
                f"{viewer.url}/v1/traces", content=_pb_request([span]).SerializeToString(), headers=PB, timeout=5
            )
        httpx.post(f"{viewer.url}/v1/traces", content=json.dumps({}), headers=JSON, timeout=5)
        sse.read_until(lambda e: e["event"] == "run.ended")
        viewer.post_json([record(trace_id(), span_id(), "marker", ended=True)])
        sse.read_until(lambda e: e["event"] == "run.ended" and e["data"]["run"]["name"] == "marker")
    mine = [(e["event"], e["data"].get("span", {}).get("status")) for e in sse.events if e["data"]["run_id"] == t.hex()]
    assert mine == [("run.started", None), ("span.started", "running"), ("span.ended", "ok"), ("run.ended", None)]


def test_logfire_pending_span_is_a_running_snapshot_of_the_real_span() -> None:
    t, real, pending, parent = trace_id(), span_id(), span_id(), span_id()
    attrs = [
        _kv(A.LOGFIRE_SPAN_TYPE, A.LOGFIRE_PENDING_SPAN),
        _kv(A.LOGFIRE_PENDING_PARENT_ID, parent),
        _kv("gen_ai.operation.name", "invoke_agent"),
    ]
    span = Span(
        trace_id=bytes.fromhex(t),
        span_id=bytes.fromhex(pending),
        parent_span_id=bytes.fromhex(real),
        name="agent run (pending)",
        start_time_unix_nano=5,
        end_time_unix_nano=5,
        attributes=attrs,
    )
    root_pending = Span(
        trace_id=bytes.fromhex(t),
        span_id=bytes.fromhex(span_id()),
        parent_span_id=bytes.fromhex(parent),
        name="root",
        start_time_unix_nano=1,
        end_time_unix_nano=1,
        attributes=[_kv(A.LOGFIRE_SPAN_TYPE, A.LOGFIRE_PENDING_SPAN), _kv(A.LOGFIRE_PENDING_PARENT_ID, "0" * 16)],
    )
    decoded = decode_protobuf(_pb_request([span, root_pending]).SerializeToString())
    first, second = decoded.records
    assert (first.span_id, first.parent_span_id, first.name, first.status, first.kind) == (
        real,
        parent,
        "agent run",
        "running",
        "agent",
    )
    assert first.end_time_ns is None
    assert A.LOGFIRE_SPAN_TYPE not in first.attributes
    assert (second.span_id, second.parent_span_id) == (parent, None)
    assert decoded.workers == {"w-pb"}


def test_logfire_pending_span_in_json(viewer: Viewer) -> None:
    t, real, pending = trace_id(), span_id(), span_id()
    body = {
        "resourceSpans": [
            {
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "lf"}}]},
                "scopeSpans": [
                    {
                        "spans": [
                            {
                                "traceId": t,
                                "spanId": pending,
                                "parentSpanId": real,
                                "name": "work",
                                "startTimeUnixNano": "7",
                                "endTimeUnixNano": "7",
                                "attributes": [
                                    {"key": "logfire.span_type", "value": {"stringValue": "pending_span"}},
                                    {"key": "logfire.pending_parent_id", "value": {"stringValue": "0000000000000000"}},
                                ],
                            }
                        ]
                    }
                ],
            }
        ]
    }
    assert httpx.post(f"{viewer.url}/v1/traces", json=body, timeout=5).status_code == 200
    detail = httpx.get(f"{viewer.url}/api/runs/{t}", timeout=5).json()
    (span,) = detail["spans"]
    assert span["span_id"] == real
    assert span["status"] == "running"
    assert span["parent_span_id"] is None
    assert detail["run"]["status"] == "running"
    assert detail["run"]["name"] == "work"


# ------------------------------------------------------------------------------------------------
# Fuzz: nothing a client sends may produce a 5xx or stop the server
# ------------------------------------------------------------------------------------------------

_json_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20))
_json = st.recursive(
    _json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=30,
)
_keys = st.sampled_from(
    [
        "resourceSpans",
        "scopeSpans",
        "spans",
        "resource",
        "attributes",
        "traceId",
        "spanId",
        "parentSpanId",
        "name",
        "startTimeUnixNano",
        "endTimeUnixNano",
        "status",
        "code",
        "events",
        "key",
        "value",
        "stringValue",
        "intValue",
        "arrayValue",
        "kvlistValue",
        "values",
        "kind",
    ]
)
_otlpish = st.recursive(
    _json_leaf | st.sampled_from([trace_id(), span_id(), "0" * 32, "1" * 16]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_keys, inner, max_size=5),
    max_leaves=40,
)


@pytest.fixture(scope="module")
def fuzz_viewer() -> Any:
    from otelflow.viewer.app import create_app
    from tests.viewer.conftest import Viewer as V

    viewer = V(create_app()).start()
    client = httpx.Client(base_url=viewer.url, timeout=10)
    yield viewer, client
    client.close()
    viewer.stop()


@settings(
    max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(body=st.one_of(_otlpish, _json.map(lambda v: {"resourceSpans": v})))
def test_fuzz_json_never_5xx(fuzz_viewer: Any, body: Any) -> None:
    _, client = fuzz_viewer
    r = client.post("/v1/traces", content=json.dumps(body), headers=JSON)
    assert r.status_code in (200, 400), r.text


@settings(
    max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(
    data=st.one_of(
        st.binary(max_size=300),
        st.builds(
            lambda t, s, name, extra: _pb_request([Span(trace_id=t, span_id=s, name=name)]).SerializeToString() + extra,
            st.binary(max_size=17),
            st.binary(max_size=9),
            st.text(max_size=10),
            st.binary(max_size=8),
        ),
    ),
    gz=st.booleans(),
)
def test_fuzz_protobuf_never_5xx(fuzz_viewer: Any, data: bytes, gz: bool) -> None:
    viewer, client = fuzz_viewer
    headers = {**PB, "content-encoding": "gzip"} if gz else PB
    r = client.post("/v1/traces", content=gzip.compress(data) if gz else data, headers=headers)
    assert r.status_code in (200, 400), r.text
    assert viewer.thread.is_alive()


def _varied_request(seed: int) -> ExportTraceServiceRequest:
    """Spans with every kind of value, ids, statuses, times and names the decoders see, some unreadable."""
    import random

    rng = random.Random(seed)
    values = [
        AnyValue(string_value="plain"),
        AnyValue(string_value="ünïcødé \u2028"),
        AnyValue(string_value=""),
        AnyValue(string_value="Bearer abcdef0123456789abcdef0123456789"),
        AnyValue(string_value="x" * 300),
        AnyValue(int_value=0),
        AnyValue(int_value=-(2**63)),
        AnyValue(bool_value=True),
        AnyValue(bool_value=False),
        AnyValue(double_value=1.5),
        AnyValue(double_value=float("nan")),
        AnyValue(double_value=float("-inf")),
        AnyValue(bytes_value=b"\x00\xff"),
        AnyValue(array_value={"values": [AnyValue(int_value=1), AnyValue(string_value="a")]}),
        AnyValue(kvlist_value={"values": [KeyValue(key="k", value=AnyValue(string_value="v"))]}),
        AnyValue(),
    ]
    keys = ["otelflow.kind", "gen_ai.operation.name", "api_key", "password", "k", "k", "error.type", A.PENDING]
    kinds = ["workflow", "agent", "node", "tool", "llm", "nonsense"]

    def attrs(n: int) -> list[KeyValue]:
        out = []
        for _ in range(n):
            key = rng.choice(keys)
            if key == "otelflow.kind":
                out.append(_kv(key, rng.choice(kinds)))
            elif key == A.PENDING:
                out.append(_kv(key, rng.random() < 0.5))
            else:
                out.append(KeyValue(key=key, value=rng.choice(values)))
        return out

    spans = []
    for i in range(300):
        ids = [b"", b"\x00" * 8, b"\x01" * 7, rng.randbytes(8)]
        span = Span(
            trace_id=rng.choice([rng.randbytes(16)] * 20 + [b"\x00" * 16, b"\x01" * 3]),
            span_id=rng.choice(ids[2:] + [ids[3]] * 20),
            parent_span_id=rng.choice(ids + [ids[3]] * 5),
            name=rng.choice(["wf", "invoke_agent ägent", "", "n" * 2000]),
            kind=rng.choice([1, 2, 5]),  # not 0: OTLP/JSON leaves it out, which reads as internal (1)
            start_time_unix_nano=rng.choice([0, 10**18, 2**63 - 1, rng.randrange(10**18)]),
            end_time_unix_nano=rng.choice([0, 0, 2 * 10**18, rng.randrange(10**18)]),
            attributes=attrs(rng.randrange(0, 6)),
        )
        span.status.code = rng.choice([0, 1, 2])
        span.status.message = rng.choice(["", "boom", "cancelled", "CancelledError: x", "token=abc"])
        for _ in range(rng.randrange(0, 3)):
            event = span.events.add()
            event.name = rng.choice(["otelflow.progress", "exception", ""])
            event.time_unix_nano = rng.choice([1, 10**18, 2**63 - 1])
            event.attributes.extend(attrs(rng.randrange(0, 3)))
        if i % 50 == 7:  # a Logfire pending span
            span.attributes.extend([_kv(A.LOGFIRE_SPAN_TYPE, A.LOGFIRE_PENDING_SPAN)])
        spans.append(span)
    request = _pb_request(spans[:150])
    request.resource_spans.append(_pb_request(spans[150:], worker="w-2").resource_spans[0])
    return request


@pytest.mark.parametrize("seed", range(4))
def test_protobuf_decodes_as_its_json_form_by_the_same_rules(seed: int) -> None:
    """The protobuf decoder builds its records by hand (the hot path); the JSON decoder by the general rules
    (``_record``): the same request in either encoding gives equal records and rejects the same spans."""
    import base64

    from google.protobuf.json_format import MessageToDict

    from otelflow.viewer.decode import decode_json

    def otlp_json(value: Any) -> Any:  # OTLP/JSON writes ids in hex where ProtoJSON writes base64
        if isinstance(value, list):
            return [otlp_json(v) for v in value]
        if isinstance(value, dict):
            return {
                k: base64.b64decode(v).hex() if k in ("traceId", "spanId", "parentSpanId") else otlp_json(v)
                for k, v in value.items()
            }
        return value

    request = _varied_request(seed)
    from_pb = decode_protobuf(request.SerializeToString(), 256)
    from_json = decode_json(json.dumps(otlp_json(MessageToDict(request))).encode(), 256)
    records = from_pb.records
    assert len(records) > 100
    assert records == from_json.records
    # the same spans rejected, at the same places (why is told in each encoding's terms)
    assert [m.partition(": ")[0] for m in from_pb.rejected] == [m.partition(": ")[0] for m in from_json.rejected]
    assert from_pb.workers == from_json.workers
