"""SpanHandle, the running span users hold, and the attribute and lifecycle-event helpers behind it.

Every value set through otelflow is cleaned here: secrets redacted, text made valid and cut at the attribute
length limit (see :mod:`otelflow.scrub`). Telemetry failures are logged, never raised into the user's code.
"""

from __future__ import annotations

import asyncio
import json
import traceback
from collections.abc import Mapping, Sequence
from typing import Any, Final

from opentelemetry.trace import Span, Status, StatusCode

from otelflow import attributes as A
from otelflow._log import problems
from otelflow.config import settings
from otelflow.processor import notify_update
from otelflow.scrub import NAME_LIMIT, REDACTED, capture, clean_text, is_secret_key, scrub

__all__ = [
    "SpanHandle",
    "add_event",
    "clean_attrs",
    "data_flow_attrs",
    "limited_text",
    "log_attrs",
    "progress_attrs",
    "record_error",
]

_PRIMITIVES: Final = (str, bool, int, float)


# --------------------------------------------------------------------------------------------------
# Attribute values
# --------------------------------------------------------------------------------------------------


def limited_text(value: str) -> str:
    """Text set through otelflow: cleaned (secrets, UTF-8) and cut at the attribute length limit, marked."""
    return clean_text(value, settings().max_value_length)


def _attr_value(key: str, value: Any) -> Any:
    """A value OTel accepts as an attribute: primitives and homogeneous lists as they are, else JSON."""
    if is_secret_key(key):
        return REDACTED
    if isinstance(value, str):
        return limited_text(value)
    if isinstance(value, _PRIMITIVES):
        return value
    if isinstance(value, Sequence) and value and all(isinstance(v, str) for v in value):
        return [limited_text(v) for v in value]
    if (
        isinstance(value, Sequence)
        and value
        and all(isinstance(v, _PRIMITIVES) and not isinstance(v, str) for v in value)
        and len({type(v) for v in value}) == 1
    ):
        return list(value)
    text = json.dumps(scrub(value), ensure_ascii=False, separators=(",", ":"), default=str)
    return limited_text(text)


def clean_attrs(attributes: Mapping[str, Any] | None) -> dict[str, Any]:
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

    def _ending(self) -> None:
        """Called just before the span ends (a model call writes its answer here); never raises."""

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
            self.span.set_attributes(clean_attrs(attributes))
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
        add_event(self.span, name, clean_attrs(attributes))

    def progress(
        self,
        percent: float | None = None,
        message: str | None = None,
        *,
        completed: int | None = None,
        total: int | None = None,
    ) -> None:
        """``otelflow.progress``: a percentage, or ``completed`` of ``total`` (percent is then derived)."""
        add_event(self.span, A.EVENT_PROGRESS, progress_attrs(percent, message, completed, total))

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
        add_event(self.span, A.EVENT_DATA_FLOW, data_flow_attrs(source, target, data, size, keys))

    def log(self, level: str, message: str, **attributes: Any) -> None:
        """``otelflow.log``: a log line attached to this span (level debug/info/warning/error/critical)."""
        add_event(self.span, A.EVENT_LOG, log_attrs(level, message, attributes))

    def retry(self, attempt: int, error: BaseException | str | None = None, wait_s: float = 0.0) -> None:
        """``otelflow.retry``: attempt number ``attempt`` failed with ``error``; the next comes after ``wait_s``."""
        attrs: dict[str, Any] = {A.RETRY_ATTEMPT: int(attempt), A.RETRY_WAIT_S: float(wait_s)}
        if error is not None:
            attrs[A.RETRY_ERROR] = _error_text(error)
        add_event(self.span, A.EVENT_RETRY, attrs)

    def fallback(self, error: BaseException | str | None = None, to: str | None = None) -> None:
        """``otelflow.fallback``: the normal path failed with ``error`` and ``to`` was used instead."""
        attrs: dict[str, Any] = {}
        if error is not None:
            attrs[A.FALLBACK_ERROR] = _error_text(error)
        if to is not None:
            attrs[A.FALLBACK_TO] = str(to)
        add_event(self.span, A.EVENT_FALLBACK, attrs)

    def record_exception(self, exc: BaseException) -> None:
        """Mark the span failed with ``exc`` (status ERROR, ``error.type``, exception event)."""
        record_error(self.span, exc)


def _error_text(error: BaseException | str) -> str:
    if isinstance(error, BaseException):
        return limited_text(f"{type(error).__name__}: {error}")
    return limited_text(str(error))


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


def add_event(span: Span, name: str, attributes: dict[str, Any]) -> None:
    try:
        if not span.is_recording():
            return
        span.add_event(name, attributes)
        notify_update(span)
    except Exception:  # noqa: BLE001
        problems.warning("event", "otelflow: could not add event %r", name, exc_info=True)


def progress_attrs(
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
        attrs[A.PROGRESS_MESSAGE] = limited_text(str(message))
    return attrs


def data_flow_attrs(
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


def log_attrs(level: str, message: str, extra: Mapping[str, Any]) -> dict[str, Any]:
    lvl = str(level).lower()
    if lvl == "warn":
        lvl = "warning"
    if lvl not in A.LOG_LEVELS:
        raise ValueError(f"log(): level must be one of {', '.join(A.LOG_LEVELS)}, got {level!r}")
    attrs = clean_attrs(extra)
    attrs[A.LOG_LEVEL] = lvl
    attrs[A.LOG_MESSAGE] = limited_text(str(message))
    return attrs


def _qualified_name(exc: BaseException) -> str:
    cls = type(exc)
    module = cls.__module__
    return cls.__qualname__ if module in ("builtins", "__main__") else f"{module}.{cls.__qualname__}"


def record_error(span: Span, exc: BaseException) -> None:
    try:
        if not span.is_recording():
            return
        span.set_attribute(A.ERROR_TYPE, _qualified_name(exc))
        # The exception's text and stack trace are cleaned like any other value: a connection string or a
        # token in an error message must not reach the viewer or the OTLP backends.
        stack = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        cleaned = {A.EXCEPTION_MESSAGE: limited_text(str(exc)), A.EXCEPTION_STACKTRACE: limited_text(stack)}
        span.record_exception(exc, attributes=cleaned, escaped=True)
        description = (
            A.STATUS_CANCELLED
            if isinstance(exc, (asyncio.CancelledError, KeyboardInterrupt))
            else limited_text(f"{type(exc).__name__}: {exc}")
        )
        span.set_status(Status(StatusCode.ERROR, description))
    except Exception:  # noqa: BLE001
        problems.warning("record_exception", "otelflow: could not record an exception", exc_info=True)
