"""A real workflow for the browser tests, run as a subprocess: engine flow, traced, streamed live to a viewer.

Usage: ``python gated_workflow.py VIEWER_URL``. Before each node's work it prints ``waiting <node> <trace id>``
and blocks on a line from stdin: ``go`` lets it succeed, ``fail`` makes the attempt raise (the Write node
retries once). The test thus decides when every node runs, without sleeping.
"""

from __future__ import annotations

import itertools
import sys
from typing import Any

import otelflow
from otelflow.engine import Flow, Node
from otelflow.engine.instrumentor import EngineInstrumentor

NODES = (("Plan", "agent"), ("Research", "agent"), ("Write", "agent"), ("Review", "node"))


class Gated(Node):
    def prep(self, shared: dict[str, Any]) -> dict[str, Any]:
        return {"topic": shared["topic"], "step": self.name}

    def exec(self, prep_result: dict[str, Any]) -> dict[str, Any]:
        handle = otelflow.current()
        print(f"waiting {self.name} {handle.trace_id if handle else '-'}", flush=True)
        command = sys.stdin.readline().strip()
        if not command:
            raise SystemExit("stdin closed")
        if command == "fail":
            otelflow.log("warning", f"{self.name}: attempt failed, retrying")
            raise RuntimeError(f"{self.name} failed on purpose")
        otelflow.log("info", f"{self.name} finished its work")
        return {"step": self.name, "words": len(self.name) * 100}

    def post(self, shared: dict[str, Any], prep_result: Any, exec_result: Any) -> str | None:
        shared[self.name.lower()] = exec_result
        return None


def main() -> None:
    telemetry = otelflow.configure(service_name="browser-test", live=sys.argv[1], otlp=False)
    EngineInstrumentor().instrument()
    nodes = [Gated(name=name, kind=kind, max_retries=2 if name == "Write" else 1, wait=0) for name, kind in NODES]
    for a, b in itertools.pairwise(nodes):
        a >> b
    Flow(start=nodes[0], name="gated_pipeline").run({"topic": "live viewers"})
    telemetry.force_flush(10_000)
    telemetry.shutdown()
    print("done", flush=True)


if __name__ == "__main__":
    main()
