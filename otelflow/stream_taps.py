"""The answer of a streamed model call made through another instrumentation, shown live while it streams.

``opentelemetry-instrumentation-openai-v2`` and ``openinference-instrumentation-openai`` keep a streamed chat
call's chunks in stream wrappers of their own and put the answer on the span only when the stream ends. When
live streaming is on, otelflow taps those wrappers (once their modules are imported: nothing is imported for
it): each chunk's text goes to the span as :func:`otelflow.llm`'s ``output_delta`` would send it — the answer
so far as ``otelflow.llm.output.partial``, coalesced to about ten updates a second, bounded, scrubbed, with the
time to the first token — and when the stream ends, before the instrumentation ends the span, the partial
attributes leave again (the instrumentation writes the answer as it always does). Text is taken only when the
instrumentation itself captures message content (openai-v2) or outputs (OpenInference).
"""

from __future__ import annotations

import time
from typing import Any, Final

import wrapt

from otelflow import attributes as A
from otelflow._log import problems
from otelflow.model_call import LlmCall, _clock

__all__ = ["tap_model_streams"]

_OPENAI_V2: Final = "opentelemetry.instrumentation.openai_v2.patch"
_OPENINFERENCE: Final = "openinference.instrumentation.openai._stream"

_taps: dict[int, LlmCall] = {}  # span id -> the answer of a streamed call, while it streams
_installed = False


def tap_model_streams() -> None:
    """Tap the stream wrappers of openai-v2 and OpenInference when (and if) they are imported. Idempotent."""
    global _installed
    if _installed:
        return
    _installed = True
    wrapt.register_post_import_hook(_tap_openai_v2, _OPENAI_V2)
    wrapt.register_post_import_hook(_tap_openinference, _OPENINFERENCE)


def _chunk_text(chunk: Any) -> str:
    """The text a chat completion chunk adds to the first choice's answer ("" when none)."""
    for choice in getattr(chunk, "choices", None) or ():
        if getattr(choice, "index", 0) == 0:
            text = getattr(getattr(choice, "delta", None), "content", None)
            return text if isinstance(text, str) else ""
    return ""


def _feed(span: Any, chunk: Any) -> None:
    try:
        text = _chunk_text(chunk)
        if not text or span is None or not span.is_recording():
            return
        span_id = span.get_span_context().span_id
        tap = _taps.get(span_id)
        if tap is None:
            tap = _taps[span_id] = LlmCall(span, A.KIND_LLM, getattr(span, "name", ""))
            started_ns = getattr(span, "start_time", None)
            if isinstance(started_ns, int):  # the time to the first token counts from the span's start
                tap._started = _clock() - max(0.0, (time.time_ns() - started_ns) / 1e9)
        tap.output_delta(text)
    except Exception:  # noqa: BLE001 - telemetry never breaks the user's stream
        problems.warning("llm-tap", "otelflow: could not show a streamed model call's answer", exc_info=True)


def _finish(span: Any) -> None:
    """The stream ended: the partial attributes leave before the instrumentation ends the span."""
    try:
        tap = _taps.pop(span.get_span_context().span_id, None) if span is not None else None
        if tap is not None:
            tap._output_set = True  # the instrumentation writes the answer itself
            tap._ending()
    except Exception:  # noqa: BLE001
        problems.warning("llm-tap", "otelflow: could not finish a streamed model call's answer", exc_info=True)


# --- opentelemetry-instrumentation-openai-v2 ------------------------------------------------------


def _v2_span(wrapper: Any) -> Any:
    span = getattr(wrapper, "span", None)  # LegacyChatStreamWrapper
    if span is None:  # ChatStreamWrapper: the util-genai invocation holds it
        span = getattr(getattr(wrapper, "invocation", None), "span", None)
    return span


def _v2_chunk(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    result = wrapped(*args, **kwargs)
    if getattr(instance, "capture_content", False) and args:
        _feed(_v2_span(instance), args[0])
    return result


def _v2_cleanup(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    _finish(_v2_span(instance))
    return wrapped(*args, **kwargs)


def _tap_openai_v2(module: Any) -> None:
    try:
        wrapt.wrap_function_wrapper(module, "BaseStreamWrapper.process_chunk", _v2_chunk)
        for name in ("LegacyChatStreamWrapper", "ChatStreamWrapper"):
            cls = getattr(module, name, None)
            if cls is not None and "cleanup" in vars(cls):
                wrapt.wrap_function_wrapper(module, f"{name}.cleanup", _v2_cleanup)
    except Exception:  # noqa: BLE001 - another version: its calls still show, at their end
        problems.warning("llm-tap", "otelflow: could not tap openai-v2's streams", exc_info=True)


# --- openinference-instrumentation-openai ---------------------------------------------------------


def _oi_span(stream: Any) -> Any:
    return getattr(getattr(stream, "_self_with_span", None), "_span", None)


def _oi_chunk(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    result = wrapped(*args, **kwargs)
    if args and getattr(instance, "_self_response_accumulator", None) is not None:  # outputs are captured
        _feed(_oi_span(instance), args[0])
    return result


def _oi_finish(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    _finish(_oi_span(instance))
    return wrapped(*args, **kwargs)


def _tap_openinference(module: Any) -> None:
    try:
        wrapt.wrap_function_wrapper(module, "_Stream._process_chunk", _oi_chunk)
        wrapt.wrap_function_wrapper(module, "_Stream._finish_tracing", _oi_finish)
    except Exception:  # noqa: BLE001
        problems.warning("llm-tap", "otelflow: could not tap OpenInference's streams", exc_info=True)
