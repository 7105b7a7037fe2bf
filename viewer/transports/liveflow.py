"""``/ws/live-flow/{job_id}``: the message set of a well-known live-flow monitor, for one run.

``connected``, ``agent_started`` (exactly once per agent, node or tool, before its end), ``agent_completed``
(output, duration), ``agent_failed`` (error; ``cancelled: true`` when it was cancelled), ``data_flow``
(from_agent, to_agent, data_size), ``progress_update`` (progress, message), ``pong`` to a ``ping``, and last
``run_ended`` (status, duration) when the run ends, after which the socket closes with 1000.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any, Final

from starlette.websockets import WebSocket

from otelflow import attributes as A
from otelflow.wire import RUN_ENDED, SPAN_ABANDONED, SPAN_ENDED, SPAN_EVENT, SPAN_STARTED, dumps

from ..live import Event, Filters, Hub
from .ws import WsSession

__all__ = ["LiveFlowSession"]

_AGENT_KINDS: Final = (A.KIND_AGENT, A.KIND_NODE, A.KIND_TOOL)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


class LiveFlowSession(WsSession):
    """``/ws/live-flow/{job_id}``: the message set of a well-known live-flow monitor, for one run."""

    ack_initial = False

    def __init__(self, websocket: WebSocket, hub: Hub, job_id: str, **kwargs: Any) -> None:
        super().__init__(websocket, hub, Filters.parse(run=job_id), replay_run=True, until_run_end=True, **kwargs)
        self.job_id = job_id

    def on_open(self) -> None:
        self._reply({"type": "connected", "job_id": self.job_id, "timestamp": _now()})
        super().on_open()

    def handle_text(self, text: str) -> None:
        if text.strip().lower() == "ping":
            self._reply({"type": "pong", "timestamp": _now()})
            return
        super().handle_text(text)

    def handle(self, message: dict[str, Any]) -> None:
        if message.get("type") == "ping":
            self._reply({"type": "pong", "timestamp": _now()})
        # everything else is ignored, as the original monitor does

    def translate(self, ev: Event) -> Iterable[str]:
        if ev.type not in (SPAN_STARTED, SPAN_ENDED, SPAN_ABANDONED, SPAN_EVENT, RUN_ENDED):
            return ()
        payload = ev.payload()
        base = {"job_id": self.job_id}
        out: list[dict[str, Any]] = []
        if ev.type == RUN_ENDED:
            run = payload["run"]
            duration = run.get("duration_ms")
            seconds = duration / 1000 if isinstance(duration, (int, float)) else None
            out.append({"type": "run_ended", "status": run.get("status"), "duration": seconds})
        elif ev.type == SPAN_EVENT:
            event = payload["event"]
            attrs = event.get("attributes", {})
            if event["name"] == A.EVENT_PROGRESS:
                out.append(
                    {
                        "type": "progress_update",
                        "progress": attrs.get(A.PROGRESS_PERCENT),
                        "message": attrs.get(A.PROGRESS_MESSAGE, ""),
                        "agent": payload.get("span_name"),
                    }
                )
            elif event["name"] == A.EVENT_DATA_FLOW:
                out.append(
                    {
                        "type": "data_flow",
                        "from_agent": attrs.get(A.DATA_FLOW_FROM),
                        "to_agent": attrs.get(A.DATA_FLOW_TO),
                        "data_size": attrs.get(A.DATA_FLOW_BYTES),
                    }
                )
        elif ev.kind in _AGENT_KINDS:
            span = payload["span"]
            agent = _agent_name(span)
            common = {"agent": agent, "agent_id": span["span_id"], "kind": span["kind"]}
            if ev.type == SPAN_STARTED:
                out.append({"type": "agent_started", **common})
            elif span["status"] in (A.STATUS_ERROR, A.STATUS_CANCELLED) or ev.type == SPAN_ABANDONED:
                error = (span.get("error") or {}).get("message") or span["status"]
                failed = {"type": "agent_failed", **common, "error": error}
                if span["status"] == A.STATUS_CANCELLED:
                    failed["cancelled"] = True
                out.append(failed)
            else:
                duration = span.get("duration_ms")
                out.append(
                    {
                        "type": "agent_completed",
                        **common,
                        "output": span["attributes"].get(A.OUTPUT_VALUE),
                        "duration": duration / 1000 if isinstance(duration, (int, float)) else None,
                    }
                )
        stamp = _now()
        return [dumps({**m, **base, "timestamp": stamp}).decode("ascii") for m in out]


def _agent_name(span: dict[str, Any]) -> str:
    attrs = span.get("attributes", {})
    for key in (A.GEN_AI_AGENT_NAME, A.GEN_AI_TOOL_NAME, A.NODE_ID):
        value = attrs.get(key)
        if isinstance(value, str) and value:
            return value
    return str(span.get("name", ""))
