"""configure(): OTLP export through the stock exporter to real receivers, precedence, no stacking, bursts."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import otelflow
from otelflow import attributes as A
from otelflow.config import _switchboard
from tests.otlp_receivers import GrpcReceiver, HttpReceiver


@pytest.fixture
def receiver() -> Iterator[HttpReceiver]:
    r = HttpReceiver()
    yield r
    r.close()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("OTEL_", "OTELFLOW_")):
            monkeypatch.delenv(name)


def test_spans_reach_an_otlp_receiver_with_their_genai_attributes_and_no_pending_snapshots(
    receiver: HttpReceiver,
) -> None:
    provider = TracerProvider(resource=Resource.create({"service.name": "content-pipeline"}))
    telemetry = otelflow.configure(tracer_provider=provider, otlp_endpoint=receiver.url)
    assert telemetry.exporters == ["otlp"]
    with otelflow.workflow("content_pipeline", run_id="job-123") as run:
        run.progress(10, "starting")  # streamed live as a pending snapshot, never exported
        with otelflow.agent("topic_identification"):
            otelflow.log("info", "thinking")
    assert telemetry.force_flush(10_000)
    spans = receiver.wait_for(2)
    assert sorted(s.name for s in spans) == ["invoke_agent topic_identification", "invoke_workflow content_pipeline"]
    wf = next(s for s in spans if s.name.startswith("invoke_workflow"))
    assert wf.attributes[A.GEN_AI_OPERATION_NAME] == "invoke_workflow"
    assert wf.attributes[A.RUN_ID] == "job-123"
    assert wf.events == ["otelflow.progress"]
    assert wf.resource["service.name"] == "content-pipeline"
    assert all(A.PENDING not in s.attributes and s.end_time > 0 for s in spans)
    telemetry.shutdown()


def test_argument_beats_environment(receiver: HttpReceiver, monkeypatch: pytest.MonkeyPatch) -> None:
    other = HttpReceiver()
    try:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", other.url)
        provider = TracerProvider()
        telemetry = otelflow.configure(tracer_provider=provider)  # endpoint from the environment
        with otelflow.node("from-env"):
            pass
        assert telemetry.force_flush(10_000)
        assert [s.name for s in other.wait_for(1)] == ["from-env"]

        telemetry = otelflow.configure(tracer_provider=provider, otlp_endpoint=receiver.url)
        with otelflow.node("from-arg"):
            pass
        assert telemetry.force_flush(10_000)
        assert [s.name for s in receiver.wait_for(1)] == ["from-arg"]
        assert [s.name for s in other.spans] == ["from-env"]
        telemetry.shutdown()
    finally:
        other.close()


def test_traces_exporter_none_turns_export_off(receiver: HttpReceiver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    telemetry = otelflow.configure(tracer_provider=TracerProvider())
    assert telemetry.exporters == []
    assert telemetry.otlp_processor is None
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "zipkin")
    with pytest.raises(ValueError, match="unsupported exporter"):
        otelflow.configure(tracer_provider=TracerProvider())


def test_no_endpoint_means_no_export_by_default() -> None:
    telemetry = otelflow.configure(tracer_provider=TracerProvider())
    assert telemetry.exporters == []
    assert telemetry.live_processor is not None  # live streaming is on by default


def test_unknown_protocol_is_a_clear_error(receiver: HttpReceiver) -> None:
    with pytest.raises(ValueError, match="'http/json' is not supported"):
        otelflow.configure(tracer_provider=TracerProvider(), otlp_endpoint=receiver.url, otlp_protocol="http/json")


def test_grpc_protocol_reaches_a_grpc_receiver(monkeypatch: pytest.MonkeyPatch) -> None:
    grpc_receiver = GrpcReceiver()
    try:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        telemetry = otelflow.configure(tracer_provider=TracerProvider(), otlp_endpoint=grpc_receiver.url)
        with otelflow.tool("over-grpc"):
            pass
        assert telemetry.force_flush(10_000)
        (span,) = grpc_receiver.wait_for(1)
        assert span.name == "execute_tool over-grpc"
        assert span.attributes[A.GEN_AI_TOOL_NAME] == "over-grpc"
        telemetry.shutdown()
    finally:
        grpc_receiver.close()


def test_configure_twice_does_not_stack_processors(receiver: HttpReceiver) -> None:
    provider = TracerProvider()
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))  # the user's own processor stays
    otelflow.configure(tracer_provider=provider, otlp_endpoint=receiver.url)
    telemetry = otelflow.configure(tracer_provider=provider, otlp_endpoint=receiver.url)
    assert len(_switchboard(provider).processors) == 2  # one OTLP, one live: not four
    records: list[otelflow.SpanRecord] = []
    assert isinstance(telemetry.sink, otelflow.InProcessSink)
    telemetry.sink.subscribe(records.extend)
    with otelflow.node("once"):
        pass
    assert telemetry.force_flush(10_000)
    assert [s.name for s in receiver.wait_for(1)] == ["once"]
    assert [r.phase for r in records] == ["start", "end"]
    assert [s.name for s in memory.get_finished_spans()] == ["once"]
    telemetry.shutdown()
    assert _switchboard(provider).processors == ()


def _run(script: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "OTELFLOW_"))}
    full_env.update(env)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_global_provider_service_name_argument_beats_env(receiver: HttpReceiver) -> None:
    script = """
        import otelflow
        from opentelemetry import trace
        t = otelflow.configure(service_name="from-arg")
        assert trace.get_tracer_provider() is t.tracer_provider
        with otelflow.node("n"):
            pass
        t.tracer_provider.shutdown()
    """
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_SERVICE_NAME": "from-env"}
    done = _run(script, env)
    assert done.returncode == 0, done.stderr
    (span,) = receiver.wait_for(1)
    assert span.resource["service.name"] == "from-arg"
    done = _run(script.replace('service_name="from-arg"', ""), env)
    assert done.returncode == 0, done.stderr
    spans = receiver.wait_for(2)
    assert spans[1].resource["service.name"] == "from-env"


BURST = """
    import otelflow
    from opentelemetry import trace
    t = otelflow.configure(service_name="burst")
    tracer = trace.get_tracer("burst")
    for i in range(20_000):
        with tracer.start_as_current_span("s") as span:
            span.set_attribute("i", i)
    t.tracer_provider.shutdown()
"""


@pytest.mark.slow
def test_a_burst_of_20000_spans_is_not_dropped(receiver: HttpReceiver) -> None:
    done = _run(BURST, {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url})
    assert done.returncode == 0, done.stderr
    spans = receiver.wait_for(20_000, timeout=60)
    assert len(spans) == 20_000
    assert len({s.attributes["i"] for s in spans}) == 20_000


@pytest.mark.slow
def test_user_batch_settings_are_respected(receiver: HttpReceiver) -> None:
    # With the user's own (small) queue, the SDK drops part of the burst: otelflow does not override it.
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_BSP_MAX_QUEUE_SIZE": "256"}
    done = _run(BURST, env)
    assert "OTEL_BSP_* settings are inconsistent" in done.stderr  # queue smaller than the default batch
    env["OTEL_BSP_MAX_EXPORT_BATCH_SIZE"] = "128"
    done = _run(BURST, env)
    assert done.returncode == 0, done.stderr
    assert "queue full" in done.stderr.lower()
    assert 0 < len(receiver.spans) < 20_000


def test_later_service_name_wins_on_a_provider_otelflow_made(receiver: HttpReceiver) -> None:
    # `otelflow run` and `opentelemetry-instrument` configure first; the program then names its service.
    script = """
        import otelflow
        otelflow.configure()
        t = otelflow.configure(service_name="content-pipeline")
        with otelflow.node("n"):
            pass
        t.tracer_provider.shutdown()
    """
    done = _run(script, {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url})
    assert done.returncode == 0, done.stderr
    assert "ignored" not in done.stderr
    (span,) = receiver.wait_for(1)
    assert span.resource["service.name"] == "content-pipeline"


# --------------------------------------------------------------------------------------------------
# What leaves the SDK: cleaned (secrets, UTF-8) and bounded, also for spans otelflow did not make
# --------------------------------------------------------------------------------------------------

LEAKY = """
    import os
    import otelflow
    from opentelemetry import trace
    t = otelflow.configure(service_name="leaky", resource_attributes={"db.password": "dbpassw0rd"})
    try:
        with otelflow.workflow("sync token=tok3nvalue", run_id="job password=s3cretpw"):
            with otelflow.tool(os.fsdecode(b"report-\\xff.csv")):
                raise ConnectionError(
                    "connect postgres://app:s3cretpw@db/x?api_key=abc123key with Bearer tok3nvalue "
                    "sk-proj-ABCDEFGHIJKLMNOPQRSTUVWX AKIAIOSFODNN7EXAMPLE "
                    "aws_secret_access_key=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
                )
    except ConnectionError:
        pass
    tracer = trace.get_tracer("another-library")  # spans otelflow did not make: cleaned on the way out too
    with tracer.start_as_current_span("GET /x?token=tok3nvalue") as span:
        span.set_attribute("url.full", "https://api.example.com/v1?api_key=abc123key")
        span.set_attribute("blob", "b" * 1_000_000)
        try:
            raise ValueError("password=s3cretpw")
        except ValueError as exc:
            span.record_exception(exc)
    t.tracer_provider.shutdown()
"""
LEAKED = (
    "dbpassw0rd",
    "tok3nvalue",
    "s3cretpw",
    "abc123key",
    "sk-proj-ABCDEFGHIJKLMNOPQRSTUVWX",
    "AKIAIOSFODNN7EXAMPLE",
    "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
)


def test_secrets_never_leave_the_sdk_and_odd_names_do_not_lose_a_batch(receiver: HttpReceiver) -> None:
    done = _run(LEAKY, {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url})
    assert done.returncode == 0, done.stderr
    spans = {s.name: s for s in receiver.wait_for(3)}
    assert set(spans) == {
        "invoke_workflow sync token=[REDACTED]",
        "execute_tool report-\ufffd.csv",  # undecodable bytes: the batch is not lost to the protobuf encoder
        "GET /x?token=[REDACTED]",
    }
    tool = spans["execute_tool report-\ufffd.csv"]
    (exception,) = tool.event_attributes
    assert exception["exception.type"] == "ConnectionError"
    assert "postgres://app:[REDACTED]@db" in exception["exception.message"]
    assert exception["exception.stacktrace"].startswith("Traceback (most recent call last)")
    assert "[REDACTED]" in tool.status_message
    other = spans["GET /x?token=[REDACTED]"]
    assert other.attributes["blob"] == "b" * 65_536  # the default attribute length limit
    for span in spans.values():
        for secret in LEAKED:
            assert secret not in span.dump


def test_attribute_length_limit_follows_the_standard_variable(receiver: HttpReceiver) -> None:
    script = """
        import otelflow
        from opentelemetry import trace
        t = otelflow.configure(service_name="limits")
        with otelflow.node("n") as node:
            node.set_attribute("mine", "m" * 1000)
            trace.get_current_span().set_attribute("theirs", "t" * 1000)
        t.tracer_provider.shutdown()
    """
    done = _run(script, {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT": "100"})
    assert done.returncode == 0, done.stderr
    (span,) = receiver.wait_for(1)
    assert span.attributes["theirs"] == "t" * 100  # the SDK cuts what others set, as the standard says
    assert len(span.attributes["mine"]) == 100  # what otelflow sets is cut with a visible marker
    assert span.attributes["mine"].endswith("…[truncated, 1000 chars]")
    done = _run(script, {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT": "lots"})
    assert done.returncode == 1
    assert "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT" in done.stderr
