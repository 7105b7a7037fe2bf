"""otelflow's public API: watch workflows of agents, nodes and tools run live, on OpenTelemetry.

```python
import otelflow
otelflow.configure(service_name="content-pipeline")

@otelflow.agent("topic_identification")
async def identify(brief: str) -> dict: ...

with otelflow.workflow("content_pipeline", run_id="job-123") as run:
    ...
    otelflow.progress(50, "Processing sections")
```
"""

from __future__ import annotations

from otelflow.config import Settings, Telemetry, configure, settings
from otelflow.instrument import (
    LlmCall,
    LogHandler,
    SpanHandle,
    Step,
    agent,
    current,
    data_flow,
    event,
    fallback,
    llm,
    log,
    node,
    progress,
    propagate,
    retry,
    tool,
    workflow,
)
from otelflow.processor import LiveSpanProcessor, Sink
from otelflow.records import EventRecord, SpanRecord
from otelflow.sinks import InProcessSink, LiveExporter

__version__ = "0.1.0"

__all__ = [
    "EventRecord",
    "InProcessSink",
    "LiveExporter",
    "LiveSpanProcessor",
    "LlmCall",
    "LogHandler",
    "Settings",
    "Sink",
    "SpanHandle",
    "SpanRecord",
    "Step",
    "Telemetry",
    "__version__",
    "agent",
    "configure",
    "current",
    "data_flow",
    "event",
    "fallback",
    "llm",
    "log",
    "node",
    "progress",
    "propagate",
    "retry",
    "settings",
    "tool",
    "workflow",
]
