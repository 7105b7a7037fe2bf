"""workflow / agent / node / tool as decorators and context managers, and the lifecycle-event helpers.

Each of the four builders returns a :class:`Step`, usable as

- a decorator on sync and async functions, generators and async generators (``@otelflow.agent("x")``
  or bare ``@otelflow.agent``), one span per call (per iteration for generators);
- a context manager (``with`` / ``async with``), yielding a :class:`SpanHandle`.

Span names and attributes follow DESIGN.md. Inputs and outputs are captured scrubbed and truncated
(see :mod:`otelflow.scrub`). The user's exceptions propagate unchanged; telemetry failures never do.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import json
import logging
import traceback
from collections.abc import AsyncGenerator, Callable, Generator, Mapping, Sequence
from types import TracebackType
from typing import Any, Final, TypeVar, cast, overload

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode

from otelflow import attributes as A
from otelflow._log import problems
from otelflow.config import get_tracer, settings
from otelflow.processor import notify_update
from otelflow.scrub import NAME_LIMIT, REDACTED, capture, clean_attributes, clean_text, is_secret_key, scrub

__all__ = [
    "LogHandler",
    "SpanHandle",
    "Step",
    "agent",
    "current",
    "data_flow",
    "event",
    "fallback",
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

_PRIMITIVES: Final = (str, bool, int, float)


# --------------------------------------------------------------------------------------------------
# Attribute values
# --------------------------------------------------------------------------------------------------


def _text(value: str) -> str:
    """Text set through otelflow: cleaned (secrets, UTF-8) and cut at the attribute length limit, marked."""
    return clean_text(value, settings().max_value_length)


def _attr_value(key: str, value: Any) -> Any:
    """A value OTel accepts as an attribute: primitives and homogeneous lists as they are, else JSON."""
    if is_secret_key(key):
        return REDACTED
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, _PRIMITIVES):
        return value
    if isinstance(value, Sequence) and value and all(isinstance(v, str) for v in value):
        return [_text(v) for v in value]
    if (
        isinstance(value, Sequence)
        and value
        and all(isinstance(v, _PRIMITIVES) and not isinstance(v, str) for v in value)
        and len({type(v) for v in value}) == 1
    ):
        return list(value)
    text = json.dumps(scrub(value), ensure_ascii=False, separators=(",", ":"), default=str)
    return _text(text)


def _clean(attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    if not attributes:
        return {}
    return {_key(k): _attr_value(str(k), v) for k, v in attributes.items() if v is not None}


def _key(key: Any) -> str:
    return clean_text(str(key), NAME_LIMIT)


# --------------------------------------------------------------------------------------------------
# The handle users hold while a span runs
# --------------------------------------------------------------------------------------------------


class SpanHandle:
    """A running otelflow span: set attributes, inputs/outputs and add lifecycle events.

    Every method is safe to call after the span ended (it does nothing) and never raises for telemetry
    reasons; it raises ``ValueError`` only when called with arguments that make no sense.
    """

    __slots__ = ("kind", "name", "span")

    def __init__(self, span: Span, kind: str, name: str) -> None:
        self.span = span
        self.kind = kind
        self.name = name

    def _has_output(self) -> bool:
        attrs = getattr(self.span, "attributes", None)
        return attrs is not None and A.OUTPUT_VALUE in attrs

    def __repr__(self) -> str:
        return f"<SpanHandle {self.kind} {self.name!r} trace={self.trace_id}>"

    @property
    def trace_id(self) -> str:
        """The trace id in hex: the run's id as the viewer and Jaeger show it."""
        return format(self.span.get_span_context().trace_id, "032x")

    @property
    def span_id(self) -> str:
        return format(self.span.get_span_context().span_id, "016x")

    def set_attribute(self, key: str, value: Any) -> None:
        """Set an attribute; dicts and other objects are stored as scrubbed JSON text."""
        try:
            self.span.set_attribute(key, _attr_value(key, value))
            notify_update(self.span)
        except Exception:  # noqa: BLE001
            problems.warning("set_attribute", "otelflow: could not set attribute %r", key, exc_info=True)

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        try:
            self.span.set_attributes(_clean(attributes))
            notify_update(self.span)
        except Exception:  # noqa: BLE001
            problems.warning("set_attribute", "otelflow: could not set attributes", exc_info=True)

    def set_input(self, value: Any) -> None:
        """Record ``input.value`` (scrubbed, truncated) unless capture is off."""
        _set_value(self.span, value, A.INPUT_VALUE, A.INPUT_MIME_TYPE, A.INPUT_TRUNCATED)

    def set_output(self, value: Any) -> None:
        """Record ``output.value`` (scrubbed, truncated) unless capture is off."""
        _set_value(self.span, value, A.OUTPUT_VALUE, A.OUTPUT_MIME_TYPE, A.OUTPUT_TRUNCATED)

    def event(self, name: str, attributes: Mapping[str, Any] | None = None) -> None:
        """Add an event and stream the change live."""
        _add_event(self.span, name, _clean(attributes))

    def progress(
        self,
        percent: float | None = None,
        message: str | None = None,
        *,
        completed: int | None = None,
        total: int | None = None,
    ) -> None:
        """``otelflow.progress``: a percentage, or ``completed`` of ``total`` (percent is then derived)."""
        _add_event(self.span, A.EVENT_PROGRESS, _progress_attrs(percent, message, completed, total))

    def data_flow(
        self,
        source: str,
        target: str,
        data: Any = None,
        *,
        size: int | None = None,
        keys: Sequence[str] | None = None,
    ) -> None:
        """``otelflow.data_flow``: ``data`` moved from ``source`` to ``target`` (its size and keys, not its content)."""
        _add_event(self.span, A.EVENT_DATA_FLOW, _data_flow_attrs(source, target, data, size, keys))

    def log(self, level: str, message: str, **attributes: Any) -> None:
        """``otelflow.log``: a log line attached to this span (level debug/info/warning/error/critical)."""
        _add_event(self.span, A.EVENT_LOG, _log_attrs(level, message, attributes))

    def retry(self, attempt: int, error: BaseException | str | None = None, wait_s: float = 0.0) -> None:
        """``otelflow.retry``: attempt number ``attempt`` failed with ``error``; the next comes after ``wait_s``."""
        attrs: dict[str, Any] = {A.RETRY_ATTEMPT: int(attempt), A.RETRY_WAIT_S: float(wait_s)}
        if error is not None:
            attrs[A.RETRY_ERROR] = _error_text(error)
        _add_event(self.span, A.EVENT_RETRY, attrs)

    def fallback(self, error: BaseException | str | None = None, to: str | None = None) -> None:
        """``otelflow.fallback``: the normal path failed with ``error`` and ``to`` was used instead."""
        attrs: dict[str, Any] = {}
        if error is not None:
            attrs[A.FALLBACK_ERROR] = _error_text(error)
        if to is not None:
            attrs[A.FALLBACK_TO] = str(to)
        _add_event(self.span, A.EVENT_FALLBACK, attrs)

    def record_exception(self, exc: BaseException) -> None:
        """Mark the span failed with ``exc`` (status ERROR, ``error.type``, exception event)."""
        _record_error(self.span, exc)


def _error_text(error: BaseException | str) -> str:
    if isinstance(error, BaseException):
        return _text(f"{type(error).__name__}: {error}")
    return _text(str(error))


def _set_value(span: Span, value: Any, key: str, mime_key: str, truncated_key: str) -> None:
    try:
        conf = settings()
        if not conf.capture_io or not span.is_recording():
            return
        captured = capture(value, conf.max_value_bytes)
        attrs: dict[str, Any] = {key: captured.text, mime_key: captured.mime_type}
        if captured.truncated:
            attrs[truncated_key] = True
        span.set_attributes(attrs)
    except Exception:  # noqa: BLE001 - capture must never break the user's call
        problems.warning("capture", "otelflow: could not capture %s", key, exc_info=True)


def _add_event(span: Span, name: str, attributes: dict[str, Any]) -> None:
    try:
        if not span.is_recording():
            return
        span.add_event(name, attributes)
        notify_update(span)
    except Exception:  # noqa: BLE001
        problems.warning("event", "otelflow: could not add event %r", name, exc_info=True)


def _progress_attrs(
    percent: float | None, message: str | None, completed: int | None, total: int | None
) -> dict[str, Any]:
    if (completed is None) != (total is None):
        raise ValueError("progress(): give completed and total together, e.g. progress(completed=3, total=6)")
    attrs: dict[str, Any] = {}
    if total is not None and completed is not None:
        if total <= 0 or completed < 0 or completed > total:
            raise ValueError(f"progress(): need 0 <= completed <= total and total > 0, got {completed}/{total}")
        attrs[A.PROGRESS_COMPLETED] = int(completed)
        attrs[A.PROGRESS_TOTAL] = int(total)
        if percent is None:
            percent = 100.0 * completed / total
    if percent is None:
        raise ValueError("progress(): give a percent (0-100) or completed= and total=")
    if not 0 <= percent <= 100:
        raise ValueError(f"progress(): percent must be between 0 and 100, got {percent}")
    attrs[A.PROGRESS_PERCENT] = float(percent)
    if message is not None:
        attrs[A.PROGRESS_MESSAGE] = _text(str(message))
    return attrs


def _data_flow_attrs(
    source: str, target: str, data: Any, size: int | None, keys: Sequence[str] | None
) -> dict[str, Any]:
    attrs: dict[str, Any] = {A.DATA_FLOW_FROM: str(source), A.DATA_FLOW_TO: str(target)}
    if size is None and data is not None:
        try:
            size = len(json.dumps(scrub(data), ensure_ascii=False, default=str).encode("utf-8"))
        except Exception:  # noqa: BLE001
            size = None
    if size is not None:
        attrs[A.DATA_FLOW_BYTES] = int(size)
    if keys is None and isinstance(data, Mapping):
        keys = [str(k) for k in list(data)[:100]]
    if keys:
        attrs[A.DATA_FLOW_KEYS] = [str(k) for k in keys]
    return attrs


def _log_attrs(level: str, message: str, extra: Mapping[str, Any]) -> dict[str, Any]:
    lvl = str(level).lower()
    if lvl == "warn":
        lvl = "warning"
    if lvl not in A.LOG_LEVELS:
        raise ValueError(f"log(): level must be one of {', '.join(A.LOG_LEVELS)}, got {level!r}")
    attrs = _clean(extra)
    attrs[A.LOG_LEVEL] = lvl
    attrs[A.LOG_MESSAGE] = _text(str(message))
    return attrs


def _qualified_name(exc: BaseException) -> str:
    cls = type(exc)
    module = cls.__module__
    return cls.__qualname__ if module in ("builtins", "__main__") else f"{module}.{cls.__qualname__}"


def _record_error(span: Span, exc: BaseException) -> None:
    try:
        if not span.is_recording():
            return
        span.set_attribute(A.ERROR_TYPE, _qualified_name(exc))
        # The exception's text and stack trace are cleaned like any other value: a connection string or a
        # token in an error message must not reach the viewer or the OTLP backends.
        stack = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        cleaned = {A.EXCEPTION_MESSAGE: _text(str(exc)), A.EXCEPTION_STACKTRACE: _text(stack)}
        span.record_exception(exc, attributes=cleaned, escaped=True)
        description = "cancelled" if isinstance(exc, asyncio.CancelledError) else _text(f"{type(exc).__name__}: {exc}")
        span.set_status(Status(StatusCode.ERROR, description))
    except Exception:  # noqa: BLE001
        problems.warning("record_exception", "otelflow: could not record an exception", exc_info=True)


# --------------------------------------------------------------------------------------------------
# Starting and finishing spans
# --------------------------------------------------------------------------------------------------


class _Active:
    """One running span and the context token that made it current."""

    __slots__ = ("handle", "token")

    def __init__(self, handle: SpanHandle, token: object | None) -> None:
        self.handle = handle
        self.token = token

    def finish(self, exc: BaseException | None) -> None:
        span = self.handle.span
        try:
            if exc is not None and not isinstance(exc, GeneratorExit | StopIteration | StopAsyncIteration):
                _record_error(span, exc)
        finally:
            try:
                if self.token is not None:
                    otel_context.detach(self.token)  # type: ignore[arg-type]
            finally:
                span.end()


# Spans opened by ``with step:`` in this context, innermost last. One variable for every Step (a variable per
# Step would leave one entry per ``with`` in the context, forever).
_entered: contextvars.ContextVar[tuple[tuple[Step, _Active], ...]] = contextvars.ContextVar(
    "otelflow_entered", default=()
)


class Step:
    """A workflow, agent, node or tool: a decorator and a (sync or async) context manager.

    As a context manager each ``with`` starts a new span and yields its :class:`SpanHandle`. As a
    decorator each call starts a new span; the function's arguments become ``input.value`` and its
    return value ``output.value`` (unless ``capture_io=False`` here or ``OTELFLOW_CAPTURE_IO=false``).
    """

    def __init__(
        self,
        kind: str,
        name: str | None,
        *,
        span_name: Callable[[str], str],
        attributes: Callable[[str], dict[str, Any]],
        extra: Mapping[str, Any] | None = None,
        capture_io: bool | None = None,
        input: Any = None,
    ) -> None:
        if name is not None and (not isinstance(name, str) or not name.strip()):
            raise ValueError(f"{kind} name must be a non-empty string, got {name!r}")
        self.kind = kind
        self.name = name
        self._span_name = span_name
        self._attributes = attributes
        self._extra = _clean(extra)
        self._capture_io = capture_io
        self._input = input

    def __repr__(self) -> str:
        return f"<otelflow.{self.kind} {self.name!r}>"

    def _capture(self) -> bool:
        return settings().capture_io if self._capture_io is None else self._capture_io

    def _open(self, name: str, call_input: Any = None, has_input: bool = False, parent: Any = None) -> SpanHandle:
        """Start the span (a child of ``parent`` or of the current context) without making it current."""
        attrs = dict(clean_attributes(self._attributes(name), settings().max_value_length))
        attrs.update(self._extra)
        span_name = clean_text(self._span_name(name), NAME_LIMIT)
        span = get_tracer().start_span(span_name, context=parent, attributes=attrs)
        handle = SpanHandle(span, self.kind, name)
        if self._capture():
            if has_input:
                handle.set_input(call_input)
            elif self._input is not None:
                handle.set_input(self._input)
        return handle

    def _captured_output(self, active: _Active, value: Any) -> None:
        """Record ``value`` as the output, unless capture is off or the user already set one."""
        if self._capture() and not active.handle._has_output():
            active.handle.set_output(value)

    def _returned(self, active: _Active, result: Any) -> None:
        """The decorated call returned ``result``: record it and end the span."""
        self._captured_output(active, result)
        active.finish(None)

    def _start(self, name: str, call_input: Any = None, has_input: bool = False) -> _Active:
        handle = self._open(name, call_input, has_input)
        return _Active(handle, otel_context.attach(trace.set_span_in_context(handle.span)))

    # --- context manager --------------------------------------------------------------------------
    def __enter__(self) -> SpanHandle:
        if self.name is None:
            raise TypeError(f"otelflow.{self.kind}() needs a name when used with 'with'")
        active = self._start(self.name)
        _entered.set((*_entered.get(), (self, active)))
        return active.handle

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        stack = _entered.get()
        for i in range(len(stack) - 1, -1, -1):
            if stack[i][0] is self:
                self_active = stack[i][1]
                _entered.set(stack[:i] + stack[i + 1 :])
                self_active.finish(exc)
                return

    async def __aenter__(self) -> SpanHandle:
        return self.__enter__()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    # --- decorator --------------------------------------------------------------------------------
    def __call__(self, fn: F) -> F:
        if not callable(fn):
            raise TypeError(f"otelflow.{self.kind}(...) decorates a function, got {type(fn).__name__}")
        name = self.name or getattr(fn, "__name__", None) or type(fn).__name__
        binder = _Binder(fn)
        step = self

        if inspect.isasyncgenfunction(fn):

            @functools.wraps(fn)
            def agen_wrapper(*args: Any, **kwargs: Any) -> AsyncGenerator[Any, Any]:
                return _traced_agen(step, name, binder, fn(*args, **kwargs), args, kwargs)

            return cast(F, agen_wrapper)

        if inspect.isgeneratorfunction(fn):

            @functools.wraps(fn)
            def gen_wrapper(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
                return _traced_gen(step, name, binder, fn(*args, **kwargs), args, kwargs)

            return cast(F, gen_wrapper)

        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                active = step._start(name, *binder.input(step, args, kwargs))
                try:
                    result = await fn(*args, **kwargs)
                except BaseException as exc:
                    active.finish(exc)
                    raise
                step._returned(active, result)
                return result

            return cast(F, async_wrapper)

        @functools.wraps(fn)
        def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
            active = step._start(name, *binder.input(step, args, kwargs))
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                active.finish(exc)
                raise
            step._returned(active, result)
            return result

        return cast(F, sync_wrapper)


class _Binder:
    """Turns a call's arguments into the ``input.value`` object: ``{param: value}`` without self/cls."""

    __slots__ = ("_drop_first", "_signature")

    def __init__(self, fn: Callable[..., Any]) -> None:
        try:
            self._signature: inspect.Signature | None = inspect.signature(fn)
            params = list(self._signature.parameters)
            self._drop_first = bool(params) and params[0] in ("self", "cls")
        except (TypeError, ValueError):
            self._signature = None
            self._drop_first = False

    def input(self, step: Step, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, bool]:
        if not step._capture():
            return None, False
        try:
            if self._signature is None:
                return {"args": list(args), "kwargs": kwargs}, True
            bound = self._signature.bind_partial(*args, **kwargs)
            values = dict(bound.arguments)
            if self._drop_first and values:
                values.pop(next(iter(values)))
            return values, True
        except TypeError:
            return {"args": list(args), "kwargs": kwargs}, True


_MAX_COLLECTED_ITEMS: Final = 1000


def _traced_gen(
    step: Step,
    name: str,
    binder: _Binder,
    gen: Generator[Any, Any, Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Generator[Any, Any, Any]:
    """Drive ``gen`` with its span current only while it runs, so the span never leaks to the consumer."""
    call_input = binder.input(step, args, kwargs)
    active: _Active | None = None
    parent = otel_context.get_current()
    items: list[Any] = []
    count = 0
    to_send: Any = None
    to_throw: BaseException | None = None
    span_ctx: otel_context.Context | None = None
    try:
        while True:
            if active is None or span_ctx is None:
                active = _Active(step._open(name, *call_input, parent=parent), None)
                span_ctx = trace.set_span_in_context(active.handle.span, parent)
            token = otel_context.attach(span_ctx)
            try:
                if to_throw is not None:
                    exc, to_throw = to_throw, None
                    item = gen.throw(exc)
                else:
                    item = gen.send(to_send)
            except StopIteration as stop:
                step._captured_output(active, stop.value if stop.value is not None else items)
                active.handle.span.set_attribute(A.GENERATOR_ITEMS, count)
                return stop.value
            finally:
                otel_context.detach(token)
            count += 1
            if len(items) < _MAX_COLLECTED_ITEMS:
                items.append(item)
            try:
                to_send = yield item
            except GeneratorExit:
                gen.close()
                raise
            except BaseException as exc:  # noqa: BLE001 - thrown in by the consumer: passed on to the generator
                to_throw = exc
    except BaseException as exc:
        if active is not None:
            active.handle.span.set_attribute(A.GENERATOR_ITEMS, count)
            active.finish(exc)
            active = None
        raise
    finally:
        if active is not None:
            active.finish(None)


async def _traced_agen(
    step: Step,
    name: str,
    binder: _Binder,
    agen: AsyncGenerator[Any, Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> AsyncGenerator[Any, Any]:
    """The async twin of :func:`_traced_gen`."""
    call_input = binder.input(step, args, kwargs)
    active: _Active | None = None
    parent = otel_context.get_current()
    items: list[Any] = []
    count = 0
    to_send: Any = None
    to_throw: BaseException | None = None
    span_ctx: otel_context.Context | None = None
    try:
        while True:
            if active is None or span_ctx is None:
                active = _Active(step._open(name, *call_input, parent=parent), None)
                span_ctx = trace.set_span_in_context(active.handle.span, parent)
            token = otel_context.attach(span_ctx)
            try:
                if to_throw is not None:
                    exc, to_throw = to_throw, None
                    item = await agen.athrow(exc)
                else:
                    item = await agen.asend(to_send)
            except StopAsyncIteration:
                step._captured_output(active, items)
                active.handle.span.set_attribute(A.GENERATOR_ITEMS, count)
                return
            finally:
                otel_context.detach(token)
            count += 1
            if len(items) < _MAX_COLLECTED_ITEMS:
                items.append(item)
            try:
                to_send = yield item
            except GeneratorExit:
                await agen.aclose()
                raise
            except BaseException as exc:  # noqa: BLE001 - passed on to the generator
                to_throw = exc
    except BaseException as exc:
        if active is not None:
            active.handle.span.set_attribute(A.GENERATOR_ITEMS, count)
            active.finish(exc)
            active = None
        raise
    finally:
        if active is not None:
            active.finish(None)


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
    """A handle on the current span, or None when no span is recording."""
    span = trace.get_current_span()
    if not span.is_recording():
        return None
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
    attrs = _progress_attrs(percent, message, completed, total)
    handle = _here()
    if handle is not None:
        _add_event(handle.span, A.EVENT_PROGRESS, attrs)


def data_flow(
    source: str, target: str, data: Any = None, *, size: int | None = None, keys: Sequence[str] | None = None
) -> None:
    """Add ``otelflow.data_flow`` to the current span: ``data`` went from ``source`` to ``target``."""
    attrs = _data_flow_attrs(source, target, data, size, keys)
    handle = _here()
    if handle is not None:
        _add_event(handle.span, A.EVENT_DATA_FLOW, attrs)


def log(level: str, message: str, **attributes: Any) -> None:
    """Add ``otelflow.log`` to the current span (level debug, info, warning, error or critical)."""
    attrs = _log_attrs(level, message, attributes)
    handle = _here()
    if handle is not None:
        _add_event(handle.span, A.EVENT_LOG, attrs)


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
                A.LOG_MESSAGE: _text(record.getMessage()),
                "code.function": record.funcName,
                "code.lineno": record.lineno,
                "log.logger": record.name,
            }
            _add_event(span, A.EVENT_LOG, attrs)
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
