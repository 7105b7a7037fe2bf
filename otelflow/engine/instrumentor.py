"""EngineInstrumentor: traces every :mod:`otelflow.engine` flow and node as otelflow spans, with no code changes.

``EngineInstrumentor().instrument()`` (or ``opentelemetry-instrument python app.py``, through the
``opentelemetry_instrumentor`` entry point ``otelflow_engine``) wraps the engine's hook points with ``wrapt``;
``uninstrument()`` puts the original functions back. The spans are made with otelflow's own builders, so they
have exactly the shape :mod:`otelflow.instrument` defines:

- a flow run is a workflow span (``invoke_workflow {name}``) with ``otelflow.workflow.graph`` (the flow's
  :meth:`~otelflow.engine.Flow.graph`) and ``otelflow.node.id`` set at start, the shared dict as input and
  output; a nested flow is a nested workflow span. The outermost flow's span also carries ``otelflow.run.id``
  when the run was given one (``flow.run(shared, run_id="job-123")``, :func:`otelflow.engine.current_run_id`);
- a node run is an agent, node or tool span, by the node's ``kind``, with ``otelflow.node.id``; ``prep``'s
  result (unless None) is its input and the exec result (after retries or fallback) its output;
- each failed attempt that is retried adds ``otelflow.retry`` (attempt, error, wait) to the node span, a
  user-defined fallback adds ``otelflow.fallback``; the last failure, if it escapes, is the span's error;
- each transition adds ``otelflow.data_flow`` to the workflow span (from and to node ids, keys and bytes of
  what the node wrote to ``shared``; when the flow ends, ``to`` is the flow's own id) and then
  ``otelflow.progress`` (finished node runs of the planned nodes; 100 % when the flow finished);
- errors end spans with status ERROR and the exception; a cancelled node or flow ends with ERROR "cancelled".

Spans go to the tracer provider that :func:`otelflow.configure` set up, else to the global one (as under
``opentelemetry-instrument``). Telemetry problems are logged, rate-limited, and never reach the workflow.
"""

from __future__ import annotations

import contextvars
import json
from collections.abc import Awaitable, Callable, Collection
from types import TracebackType
from typing import Any, Final

import wrapt

# The module is marked `# type: ignore` upstream, so mypy sees neither the name nor its type.
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]
from opentelemetry.instrumentation.utils import unwrap

from otelflow import attributes as A
from otelflow import engine
from otelflow._log import logger, problems
from otelflow.instrument import SpanHandle, Step, agent, node, tool, workflow

__all__ = ["EngineInstrumentor"]


class _Active:
    """The engine object (node or flow) whose span is current in this context, and that span."""

    __slots__ = ("handle", "owner", "percent")

    def __init__(self, owner: object, handle: SpanHandle) -> None:
        self.owner = owner
        self.handle = handle
        self.percent = 0.0


_ACTIVE: contextvars.ContextVar[_Active | None] = contextvars.ContextVar("otelflow_engine_active", default=None)


def _step(kind: str, name: str, node_id: str, graph_json: str | None = None, run_id: str | None = None) -> Step:
    if kind == A.KIND_WORKFLOW:
        return workflow(name, run_id=run_id, graph=graph_json, attributes={A.NODE_ID: node_id})
    if kind == A.KIND_AGENT:
        return agent(name, agent_id=node_id, node_id=node_id)
    if kind == A.KIND_TOOL:
        return tool(name, node_id=node_id)
    return node(name, node_id=node_id)


def _node_step(instance: engine.Node) -> Step:
    return _step(instance.kind, instance.name, instance.node_id)


def _flow_step(instance: engine.Flow) -> Step:
    if instance.kind != A.KIND_WORKFLOW:  # a flow marked as an agent or tool is traced as one
        return _node_step(instance)
    try:
        graph_json: str | None = json.dumps(instance.graph(), separators=(",", ":"))
    except engine.FlowDefinitionError:
        graph_json = None  # the run raises the same error; the span shows it
    # The run id belongs to the outermost flow of the run; flows nested in it (below an engine span) get none.
    run_id = engine.current_run_id() if _ACTIVE.get() is None else None
    return _step(A.KIND_WORKFLOW, instance.name, instance.node_id, graph_json, run_id)


class _Span:
    """Enters a Step for one engine object, never letting a telemetry failure reach the workflow.

    A context manager: the span ends when the ``with`` block does, with the exception that left it, if any.
    """

    __slots__ = ("active", "step", "token")

    def __init__(self, owner: object, make_step: Callable[[], Step]) -> None:
        self.step: Step | None = None
        self.active: _Active | None = None
        self.token: contextvars.Token[_Active | None] | None = None
        try:
            step = make_step()
            handle = step.__enter__()
            self.step = step
            self.active = _Active(owner, handle)
            self.token = _ACTIVE.set(self.active)
        except Exception:  # noqa: BLE001 - telemetry must not break the run
            problems.warning("engine-span", "otelflow: could not start a span for %r", owner, exc_info=True)

    def __enter__(self) -> _Span:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.token is not None:
            _ACTIVE.reset(self.token)
        if self.step is not None:
            try:
                self.step.__exit__(exc_type, exc, tb)
            except Exception:  # noqa: BLE001
                problems.warning("engine-span", "otelflow: could not end a span", exc_info=True)


def _handle_of(owner: object) -> _Active | None:
    """The active span of ``owner`` (the node or flow a hook was called on), if it is current here."""
    active = _ACTIVE.get()
    return active if active is not None and active.owner is owner else None


def _safely(what: str, func: Callable[..., None], *args: Any) -> None:
    try:
        func(*args)
    except Exception:  # noqa: BLE001 - telemetry must not break the run
        problems.warning(f"engine-{what}", "otelflow: could not record %s", what, exc_info=True)


# --- wrappers of the runs -------------------------------------------------------------------------------


def _run_node(wrapped: Callable[..., str], instance: engine.Node, args: Any, kwargs: Any) -> str:
    with _Span(instance, lambda: _node_step(instance)):
        return wrapped(*args, **kwargs)


async def _run_node_async(
    wrapped: Callable[..., Awaitable[str]], instance: engine.AsyncNode, args: Any, kwargs: Any
) -> str:
    with _Span(instance, lambda: _node_step(instance)):
        return await wrapped(*args, **kwargs)


def _flow_started(span: _Span, shared: Any) -> None:
    if span.active is not None:
        span.active.handle.set_input(shared)


def _flow_finished(span: _Span, shared: Any) -> None:
    active = span.active
    if active is None:
        return
    if active.percent < 100.0:
        active.handle.progress(100.0, "finished")
    active.handle.set_output(shared)


def _shared_arg(args: Any, kwargs: Any) -> Any:
    return args[0] if args else kwargs.get("shared")


def _run_flow(wrapped: Callable[..., str], instance: engine.Flow, args: Any, kwargs: Any) -> str:
    shared = _shared_arg(args, kwargs)
    with _Span(instance, lambda: _flow_step(instance)) as span:
        _safely("input", _flow_started, span, shared)
        result = wrapped(*args, **kwargs)
        _safely("output", _flow_finished, span, shared)  # only when the run succeeded
    return result


async def _run_flow_async(
    wrapped: Callable[..., Awaitable[str]], instance: engine.AsyncFlow, args: Any, kwargs: Any
) -> str:
    shared = _shared_arg(args, kwargs)
    with _Span(instance, lambda: _flow_step(instance)) as span:
        _safely("input", _flow_started, span, shared)
        result = await wrapped(*args, **kwargs)
        _safely("output", _flow_finished, span, shared)
    return result


# --- wrappers of the notifications ----------------------------------------------------------------------


def _notification(what: str, record: Callable[..., None]) -> Callable[[Callable[..., None], Any, Any, Any], None]:
    """A wrapper that runs the hook, then ``record(active, *args)`` when the instance's span is current."""

    def wrapper(wrapped: Callable[..., None], instance: Any, args: Any, kwargs: Any) -> None:
        wrapped(*args, **kwargs)
        active = _handle_of(instance)
        if active is not None:
            _safely(what, record, active, *args, *kwargs.values())

    return wrapper


def _record_prepared(active: _Active, prep_result: Any) -> None:
    if prep_result is not None:  # a node without prep has no input worth showing
        active.handle.set_input(prep_result)


def _record_executed(active: _Active, exec_result: Any) -> None:
    if exec_result is not None:
        active.handle.set_output(exec_result)


def _record_attempt(active: _Active, attempt: int, exc: Exception, wait_s: float | None) -> None:
    if wait_s is not None:  # the last failed attempt is the fallback's or the span's error, not a retry
        active.handle.retry(attempt, exc, wait_s)


def _record_fallback(active: _Active, exc: Exception) -> None:
    active.handle.fallback(exc, to="exec_fallback")


def _record_transition(
    active: _Active, source: engine.Node, target: engine.Node | None, action: str, keys: tuple[str, ...], size: int
) -> None:
    flow = active.owner
    to = target.node_id if target is not None else flow.node_id if isinstance(flow, engine.Node) else ""
    active.handle.data_flow(source.node_id, to, size=size, keys=keys)


def _record_progress(active: _Active, completed: int, total: int) -> None:
    active.percent = 100.0 * completed / total
    active.handle.progress(completed=completed, total=total)


# (class, method, wrapper): every engine function the instrumentor replaces, and nothing else.
_WRAPPERS: Final[tuple[tuple[type[Any], str, Callable[..., Any]], ...]] = (
    (engine.Node, "_run_node", _run_node),
    (engine.AsyncNode, "_run_node_async", _run_node_async),
    (engine.Flow, "_run_flow", _run_flow),
    (engine.AsyncFlow, "_run_flow_async", _run_flow_async),
    (engine.Node, "_on_prepared", _notification("input", _record_prepared)),
    (engine.Node, "_on_executed", _notification("output", _record_executed)),
    (engine.Node, "_on_attempt_failed", _notification("retry", _record_attempt)),
    (engine.Node, "_on_fallback", _notification("fallback", _record_fallback)),
    (engine.Flow, "_on_transition", _notification("data_flow", _record_transition)),
    (engine.Flow, "_on_progress", _notification("progress", _record_progress)),
)


class EngineInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Traces :mod:`otelflow.engine` runs; ``instrument()`` / ``uninstrument()`` are idempotent and exact.

    ``instrument()`` takes no options: spans go to the provider of :func:`otelflow.configure`, else to the
    global tracer provider (pass ``tracer_provider=`` to ``otelflow.configure``, not here).
    """

    def instrument(self, **kwargs: Any) -> None:
        """Trace the engine; quietly does nothing when it is already traced (``otelflow run`` may have done it)."""
        if not self.is_instrumented_by_opentelemetry:
            super().instrument(**kwargs)

    def instrumentation_dependencies(self) -> Collection[str]:
        """None: the engine ships in the same package."""
        return ()

    def _instrument(self, **kwargs: Any) -> None:
        if kwargs.get("tracer_provider") is not None:
            logger.warning(
                "EngineInstrumentor ignores tracer_provider=; pass it to otelflow.configure(tracer_provider=...)"
            )
        for owner, name, wrapper in _WRAPPERS:
            if not isinstance(vars(owner).get(name), wrapt.FunctionWrapper):  # never wrap twice
                wrapt.wrap_function_wrapper(owner, name, wrapper)

    def _uninstrument(self, **kwargs: Any) -> None:
        for owner, name, _ in _WRAPPERS:
            if isinstance(vars(owner).get(name), wrapt.FunctionWrapper):
                unwrap(owner, name)
