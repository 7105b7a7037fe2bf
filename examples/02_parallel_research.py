"""2. Parallel research agents fanning out and merging, with tool calls.

    otelflow run examples/02_parallel_research.py
    python examples/02_parallel_research.py

``research_planner`` writes one query per source; ``fan_out`` (an engine ``Parallel``) runs three researcher
agents at once on the shared dict — each an ``AsyncFlow`` marked ``kind="agent"`` whose steps are two tool
calls, ``search`` → ``read_sources`` — and ``synthesizer`` merges their findings once all three are done. In
the viewer the three agents run side by side and finish at different times. Built in
``otelflow.engine.demo``; deterministic and offline.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import otelflow
from otelflow.engine.demo import run_parallel_research
from otelflow.engine.instrumentor import EngineInstrumentor


def main(pace: float = 0.2) -> dict[str, Any]:
    """Run the research once; returns the shared dict it filled."""
    return asyncio.run(run_parallel_research(pace))


if __name__ == "__main__":
    otelflow.configure(service_name="parallel-research")
    EngineInstrumentor().instrument()
    shared = main()
    print("report:", json.dumps(shared["report"]))
