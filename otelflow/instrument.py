"""workflow / agent / node / tool, the builders of a Step, and the helpers that act on the current span.

Each of the four builders returns a :class:`~otelflow.step.Step`, usable as

- a decorator on sync and async functions, generators and async generators (``@otelflow.agent("x")``
  or bare ``@otelflow.agent``), one span per call (per iteration for generators);
- a context manager (``with`` / ``async with``), yielding a :class:`~otelflow.handle.SpanHandle`.

Span names and attributes follow DESIGN.md. Inputs and outputs are captured scrubbed and truncated
(see :mod:`otelflow.scrub`). The user's exceptions propagate unchanged; telemetry failures never do.
"""

from __future__ import annotations

import contextvars
import functools
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, TypeVar, overload

from opentelemetry import trace

from otelflow import attributes as A
from otelflow._log import problems
from otelflow.handle import SpanHandle, add_event, data_flow_attrs, limited_text, log_attrs, progress_attrs
from otelflow.model_call import LlmCall, llm, open_call
from otelflow.step import Step

__all__ = [
    "LlmCall",
    "LogHandler",
    "SpanHandle",
    "Step",
    "agent",
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
    "tool",
    "workflow",
]

F = TypeVar("F", bound=Callable[..., Any])
R = TypeVar("R")

# --------------------------------------------------------------------------------------------------
# The four builders
# --------------------------------------------------------------------------------------------------


def _graph_json(graph: Any) -> str | None:
    if graph is None:
        return None
    if isinstance(graph, str):
        json.loads(graph)  # must be JSON; raises ValueError with the position otherwise
        return graph
    return json.dumps(graph, separators=(",", ":"), default=str)


@overload
def workflow(name: F, /) -> F: ...
@overload
def workflow(
    name: str | None = None,
    /,
    *,
    run_id: str | None = None,
    graph: Any = None,
    attributes: Mapping[str, Any] | None = None,
    capture_io: bool | None = None,
    input: Any = None,
) -> Step: ...
def workflow(
    name: str | F | None = None,
    /,
    *,
    run_id: str | None = None,
    graph: Any = None,
    attributes: Mapping[str, Any] | None = None,
    capture_io: bool | None = None,
    input: Any = None,
) -> Step | F:
    """A workflow run: span ``invoke_workflow {name}``; ``run_id`` is the user's id for it (``job-123``).

    ``graph`` (``{"nodes": [...], "edges": [...]}`` or its JSON) is the planned graph, shown before the
    nodes run.
    """
    if callable(name):
        return workflow()(name)
    graph_json = _graph_json(graph)

    def attrs(n: str) -> dict[str, Any]:
        out: dict[str, Any] = {
            A.GEN_AI_OPERATION_NAME: A.OP_INVOKE_WORKFLOW,
            A.GEN_AI_WORKFLOW_NAME: n,
            A.KIND: A.KIND_WORKFLOW,
            A.OPENINFERENCE_SPAN_KIND: A.OI_CHAIN,
        }
        if run_id is not None:
            out[A.RUN_ID] = str(run_id)
        if graph_json is not None:
            out[A.WORKFLOW_GRAPH] = graph_json
        return out

    return Step(
        A.KIND_WORKFLOW,
        name,
        span_name=lambda n: f"{A.OP_INVOKE_WORKFLOW} {n}",
        attributes=attrs,
        extra=attributes,
        capture_io=capture_io,
        input=input,
    )


@overload
def agent(name: F, /) -> F: ...
@overload
def agent(
    name: str | None = None,
    /,
    *,
    agent_id: str | None = None,
    node_id: str | None = None,
    attributes: Mapping[str, Any] | None = None,
    capture_io: bool | None = None,
    input: Any = None,
) -> Step: ...
def agent(
    name: str | F | None = None,
    /,
    *,
    agent_id: str | None = None,
    node_id: str | None = None,
    attributes: Mapping[str, Any] | None = None,
    capture_io: bool | None = None,
    input: Any = None,
) -> Step | F:
    """An agent: span ``invoke_agent {name}`` (GenAI ``invoke_agent``, OpenInference ``AGENT``)."""
    if callable(name):
        return agent()(name)

    def attrs(n: str) -> dict[str, Any]:
        return {
            A.GEN_AI_OPERATION_NAME: A.OP_INVOKE_AGENT,
            A.GEN_AI_AGENT_NAME: n,
            A.GEN_AI_AGENT_ID: agent_id or n,
            A.KIND: A.KIND_AGENT,
            A.NODE_ID: node_id or n,
            A.OPENINFERENCE_SPAN_KIND: A.OI_AGENT,
        }

    return Step(
        A.KIND_AGENT,
        name,
        span_name=lambda n: f"{A.OP_INVOKE_AGENT} {n}",
        attributes=attrs,
        extra=attributes,
        capture_io=capture_io,
        input=input,
    )


@overload
def node(name: F, /) -> F: ...
@overload
def node(
    name: str | None = None,
    /,
    *,
    node_id: str | None = None,
    attributes: Mapping[str, Any] | None = None,
    capture_io: bool | None = None,
    input: Any = None,
) -> Step: ...
def node(
    name: str | F | None = None,
    /,
    *,
    node_id: str | None = None,
    attributes: Mapping[str, Any] | None = None,
    capture_io: bool | None = None,
    input: Any = None,
) -> Step | F:
    """A node or step: span ``{name}`` (OpenInference ``CHAIN``)."""
    if callable(name):
        return node()(name)

    def attrs(n: str) -> dict[str, Any]:
        return {A.KIND: A.KIND_NODE, A.NODE_ID: node_id or n, A.OPENINFERENCE_SPAN_KIND: A.OI_CHAIN}

    return Step(
        A.KIND_NODE,
        name,
        span_name=lambda n: n,
        attributes=attrs,
        extra=attributes,
        capture_io=capture_io,
        input=input,
    )


@overload
def tool(name: F, /) -> F: ...
@overload
def tool(
    name: str | None = None,
    /,
    *,
    node_id: str | None = None,
    attributes: Mapping[str, Any] | None = None,
    capture_io: bool | None = None,
    input: Any = None,
) -> Step: ...
def tool(
    name: str | F | None = None,
    /,
    *,
    node_id: str | None = None,
    attributes: Mapping[str, Any] | None = None,
    capture_io: bool | None = None,
    input: Any = None,
) -> Step | F:
    """A tool call: span ``execute_tool {name}`` (GenAI ``execute_tool``, OpenInference ``TOOL``)."""
    if callable(name):
        return tool()(name)

    def attrs(n: str) -> dict[str, Any]:
        return {
            A.GEN_AI_OPERATION_NAME: A.OP_EXECUTE_TOOL,
            A.GEN_AI_TOOL_NAME: n,
            A.KIND: A.KIND_TOOL,
            A.NODE_ID: node_id or n,
            A.OPENINFERENCE_SPAN_KIND: A.OI_TOOL,
        }

    return Step(
        A.KIND_TOOL,
        name,
        span_name=lambda n: f"{A.OP_EXECUTE_TOOL} {n}",
        attributes=attrs,
        extra=attributes,
        capture_io=capture_io,
        input=input,
    )


# --------------------------------------------------------------------------------------------------
# Helpers on the current span
# --------------------------------------------------------------------------------------------------


_NAME_KEYS: Final = {
    A.KIND_WORKFLOW: A.GEN_AI_WORKFLOW_NAME,
    A.KIND_AGENT: A.GEN_AI_AGENT_NAME,
    A.KIND_TOOL: A.GEN_AI_TOOL_NAME,
}


def current() -> SpanHandle | None:
    """A handle on the current span, or None when no span is recording.

    Inside ``otelflow.llm`` (a decorated model call included) it is that call's :class:`LlmCall`.
    """
    span = trace.get_current_span()
    if not span.is_recording():
        return None
    call = open_call(span)
    if call is not None:
        return call
    attrs = getattr(span, "attributes", None) or {}
    kind = str(attrs.get(A.KIND, A.KIND_SPAN))
    name = attrs.get(_NAME_KEYS.get(kind, "")) or getattr(span, "name", "")
    return SpanHandle(span, kind, str(name))


def _here() -> SpanHandle | None:
    handle = current()
    if handle is None:
        problems.warning("no-span", "otelflow: progress/data_flow/log called outside any span; ignored")
    return handle


def progress(
    percent: float | None = None,
    message: str | None = None,
    *,
    completed: int | None = None,
    total: int | None = None,
) -> None:
    """Add ``otelflow.progress`` to the current span: ``progress(50, "half")`` or ``progress(completed=3, total=6)``."""
    attrs = progress_attrs(percent, message, completed, total)
    handle = _here()
    if handle is not None:
        add_event(handle.span, A.EVENT_PROGRESS, attrs)


def data_flow(
    source: str, target: str, data: Any = None, *, size: int | None = None, keys: Sequence[str] | None = None
) -> None:
    """Add ``otelflow.data_flow`` to the current span: ``data`` went from ``source`` to ``target``."""
    attrs = data_flow_attrs(source, target, data, size, keys)
    handle = _here()
    if handle is not None:
        add_event(handle.span, A.EVENT_DATA_FLOW, attrs)


def log(level: str, message: str, **attributes: Any) -> None:
    """Add ``otelflow.log`` to the current span (level debug, info, warning, error or critical)."""
    attrs = log_attrs(level, message, attributes)
    handle = _here()
    if handle is not None:
        add_event(handle.span, A.EVENT_LOG, attrs)


def retry(attempt: int, error: BaseException | str | None = None, wait_s: float = 0.0) -> None:
    """Add ``otelflow.retry`` to the current span."""
    handle = _here()
    if handle is not None:
        handle.retry(attempt, error, wait_s)


def fallback(error: BaseException | str | None = None, to: str | None = None) -> None:
    """Add ``otelflow.fallback`` to the current span."""
    handle = _here()
    if handle is not None:
        handle.fallback(error, to)


def event(name: str, attributes: Mapping[str, Any] | None = None) -> None:
    """Add any event to the current span and stream it live."""
    handle = _here()
    if handle is not None:
        handle.event(name, attributes)


_LEVELS: Final = {
    logging.DEBUG: "debug",
    logging.INFO: "info",
    logging.WARNING: "warning",
    logging.ERROR: "error",
    logging.CRITICAL: "critical",
}


class LogHandler(logging.Handler):
    """A :mod:`logging` handler that adds each record to the current span as an ``otelflow.log`` event.

    ``logging.getLogger().addHandler(otelflow.LogHandler())`` shows a workflow's ordinary log lines in the
    viewer's log panel, attached to the agent or node that wrote them. Records outside any span are ignored.
    """

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("otelflow") or record.name.startswith("opentelemetry"):
            return  # never feed telemetry's own complaints back into telemetry
        try:
            span = trace.get_current_span()
            if not span.is_recording():
                return
            level = _LEVELS.get(record.levelno) or ("debug" if record.levelno < logging.INFO else "error")
            attrs = {
                A.LOG_LEVEL: level,
                A.LOG_MESSAGE: limited_text(record.getMessage()),
                "code.function": record.funcName,
                "code.lineno": record.lineno,
                "log.logger": record.name,
            }
            add_event(span, A.EVENT_LOG, attrs)
        except Exception:  # noqa: BLE001 - logging must never fail because of telemetry
            self.handleError(record)


def propagate(fn: Callable[..., R]) -> Callable[..., R]:
    """Wrap ``fn`` to run in a copy of the current context, for thread pools that do not copy it.

    ``executor.submit(otelflow.propagate(work), item)`` makes spans opened in ``work`` children of the
    span that was current at submit time.
    """
    ctx = contextvars.copy_context()

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> R:
        return ctx.copy().run(fn, *args, **kwargs)

    return run
