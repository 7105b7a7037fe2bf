r"""7. Model calls in a workflow: the ``openai`` client traced by ``opentelemetry-instrumentation-openai-v2``.

    pip install -e ".[dev]"                                  # openai and the instrumentation
    otelflow run examples/openai_live.py                     # a viewer in this process: open the URL it prints
    OTELFLOW_VIEWER_URL=http://127.0.0.1:8080 python examples/openai_live.py     # with `otelflow serve` running

No key and no network: the calls go to ``local_llm_server.py``, a small OpenAI-compatible server started here on a
free loopback port, which answers deterministically (and streams its answer a word at a time). Point
``base_url`` at a real provider and the same code traces real calls.

A ``research`` agent makes a plain chat call, a ``writer`` agent a streaming one (``stream_options`` asks for the
usage at the end). Each call is a span of kind ``llm``: the viewer shows its model, tokens, messages and an
estimated cost, and the run its totals. The two environment variables below make openai-v2 put the messages on the
span itself (without them it records no content, or sends it as log events).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("OTEL_SEMCONV_STABILITY_OPT_IN", "gen_ai_latest_experimental")
os.environ.setdefault("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "span_only")

import openai
from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor

import otelflow

sys.path.insert(0, str(Path(__file__).resolve().parent))
from local_llm_server import serve

MODEL = "gpt-4o-mini"
clients: list[openai.OpenAI] = []  # the client of the running workflow (kept out of the agents' captured inputs)


@otelflow.agent("research")
def research(topic: str) -> str:
    reply = clients[-1].chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "system", "content": "You list facts, briefly."},
            {"role": "user", "content": f"Three facts about {topic}"},
        ],
    )
    return reply.choices[0].message.content or ""


@otelflow.agent("writer")
def write(notes: str) -> str:
    stream = clients[-1].chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": f"Write one paragraph from these notes: {notes}"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    text = ""
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
    return text


def main(topic: str = "OpenTelemetry", run_id: str = "llm-1", chunk_delay: float = 0.05) -> dict[str, Any]:
    with serve(chunk_delay=chunk_delay) as base_url, openai.OpenAI(base_url=base_url, api_key="unused") as client:
        clients.append(client)
        try:
            with otelflow.workflow("llm_pipeline", run_id=run_id):
                notes = research(topic)
                otelflow.data_flow("research", "writer", {"notes": notes})
                paragraph = write(notes)
        finally:
            clients.remove(client)
    return {"notes": notes, "paragraph": paragraph}


if __name__ == "__main__":
    telemetry = otelflow.configure(service_name=os.environ.get("OTEL_SERVICE_NAME", "llm-pipeline"))
    OpenAIInstrumentor().instrument()
    result = main(run_id=sys.argv[1] if len(sys.argv) > 1 else "llm-1")
    print(result["paragraph"])
    telemetry.force_flush()
