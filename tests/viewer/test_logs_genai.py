"""GenAI message content in event mode: the real ``openai`` client, instrumented by
``opentelemetry-instrumentation-openai-v2``, against the local OpenAI-compatible server; its message events go
through the OTel Logs API and ``POST /v1/logs`` and join the chat span."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import httpx

from otelflow.wire import SPAN_EVENT, SPAN_STARTED
from tests.test_examples import load
from tests.viewer.conftest import SseClient, Viewer

server = load("local_llm_server")

# The instrumentation reads its mode once per process: the traced program runs in a process of its own.
_PROGRAM = textwrap.dedent(
    """
    import os
    import openai
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider

    import otelflow

    viewer = os.environ["VIEWER_URL"]
    resource = Resource.create({"service.name": "genai-events"})
    tracer_provider = TracerProvider(resource=resource)
    telemetry = otelflow.configure(tracer_provider=tracer_provider, live=viewer, otlp=False)
    logger_provider = LoggerProvider(resource=resource)
    logger_provider.add_log_record_processor(SimpleLogRecordProcessor(OTLPLogExporter(endpoint=viewer + "/v1/logs")))
    OpenAIInstrumentor().instrument(tracer_provider=tracer_provider, logger_provider=logger_provider)
    client = openai.OpenAI(base_url=os.environ["LLM_URL"], api_key="unused", max_retries=0)
    with otelflow.workflow("ask", run_id="genai-events-run"):
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}],
        )
    assert telemetry.force_flush(10_000)
    telemetry.shutdown()
    logger_provider.shutdown()
    """
)


def test_openai_v2_message_events_join_the_chat_span(viewer: Viewer) -> None:
    env = {
        **os.environ,
        "VIEWER_URL": viewer.url,
        "OTEL_SEMCONV_STABILITY_OPT_IN": "gen_ai_latest_experimental",
        "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "event_only",
    }
    with server.serve() as llm_url, SseClient(f"{viewer.url}/api/stream") as sse:
        done = subprocess.run(
            [sys.executable, "-c", _PROGRAM],
            env={**env, "LLM_URL": llm_url},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        started = sse.read_until(
            lambda e: e["event"] == SPAN_STARTED and e["data"]["span"]["name"] == "chat gpt-4o-mini"
        )
        chat_id = started["data"]["span"]["span_id"]
        details = sse.read_until(lambda e: e["event"] == SPAN_EVENT and e["data"]["span_id"] == chat_id)
    event = details["data"]["event"]
    assert event["name"] == "gen_ai.client.inference.operation.details"
    attrs = event["attributes"]
    assert attrs["gen_ai.input.messages"][1] == {"role": "user", "parts": [{"content": "hello there", "type": "text"}]}
    assert attrs["gen_ai.output.messages"][0]["parts"][0]["content"] == "Echo: hello there"

    detail = httpx.get(f"{viewer.url}/api/runs/genai-events-run", timeout=5).json()
    (chat,) = [s for s in detail["spans"] if s["span_id"] == chat_id]
    assert chat["status"] == "ok"
    assert [e["name"] for e in chat["events"]] == ["gen_ai.client.inference.operation.details"]
