"""1. A content pipeline: topic_identification → kb_ingestion → section_writer (batch) → reviewer, with progress.

    otelflow run examples/01_content_pipeline.py    # opens a viewer and prints the run's URL
    python examples/01_content_pipeline.py          # streams to $OTELFLOW_VIEWER_URL and OTLP, when set

The flow is built in ``otelflow.engine.demo`` (``otelflow demo`` runs it too) from engine nodes: each node is
a span of its kind (agent or tool), the flow a workflow span carrying the planned graph, and every transition a
``data_flow`` event plus a ``progress`` event (nodes finished of nodes planned). The batch node reports its own
progress, section by section, with ``otelflow.progress()``. Nothing here calls an LLM or the network: the work
is simulated with short pauses.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import otelflow
from otelflow.engine.demo import content_pipeline, run_content_pipeline
from otelflow.engine.instrumentor import EngineInstrumentor


def main(pace: float = 0.2) -> dict[str, Any]:
    """Run the pipeline once; returns the shared dict it filled."""
    return asyncio.run(run_content_pipeline(pace))


if __name__ == "__main__":
    otelflow.configure(service_name="content-pipeline")
    EngineInstrumentor().instrument()  # every engine flow and node becomes a span
    graph = content_pipeline().graph()
    print("planned:", " → ".join(node["id"] for node in graph["nodes"]))
    shared = main()
    print("review:", json.dumps(shared["review"]))
