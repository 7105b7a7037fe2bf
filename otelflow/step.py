"""Step: one workflow, agent, node or tool as a decorator and a context manager, generators included.

A decorated call opens one span, current while the call runs; a decorated generator's span covers its whole
iteration but is current only while the generator itself runs, so the consumer's spans never become its
children. The user's exceptions propagate unchanged; telemetry failures never do.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
from collections.abc import AsyncGenerator, Callable, Generator, Mapping
from types import TracebackType
from typing import Any, Final, TypeVar, cast

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span

from otelflow import attributes as A
from otelflow.config import get_tracer, settings
from otelflow.handle import SpanHandle, clean_attrs, record_error
from otelflow.scrub import NAME_LIMIT, clean_attributes, clean_text

__all__ = ["Step"]

F = TypeVar("F", bound=Callable[..., Any])

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
                record_error(span, exc)
        finally:
            try:
                if self.token is not None:
                    otel_context.detach(self.token)  # type: ignore[arg-type]
            finally:
                try:
                    self.handle._ending()
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
        self._extra = clean_attrs(extra)
        self._capture_io = capture_io
        self._input = input

    def __repr__(self) -> str:
        return f"<otelflow.{self.kind} {self.name!r}>"

    def _capture(self) -> bool:
        return settings().capture_io if self._capture_io is None else self._capture_io

    def _handle(self, span: Span, name: str) -> SpanHandle:
        """The handle of a span this step started (a subclass may hold more state in its own)."""
        return SpanHandle(span, self.kind, name)

    def _open(self, name: str, call_input: Any = None, has_input: bool = False, parent: Any = None) -> SpanHandle:
        """Start the span (a child of ``parent`` or of the current context) without making it current."""
        attrs = dict(clean_attributes(self._attributes(name), settings().max_value_length))
        attrs.update(self._extra)
        span_name = clean_text(self._span_name(name), NAME_LIMIT)
        span = get_tracer().start_span(span_name, context=parent, attributes=attrs)
        handle = self._handle(span, name)
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

    def _yielded(self, active: _Active, item: Any) -> None:
        """A decorated generator yielded ``item`` (nothing to do here; a model call takes text as its answer)."""

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
            step._yielded(active, item)
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
            step._yielded(active, item)
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
