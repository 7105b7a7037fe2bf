"""``otelflow.llm``: a call to a language model as a span, its answer shown live while it streams.

For model clients that no instrumentation library covers::

    with otelflow.llm("gpt-4o-mini", provider="openai") as call:
        call.set_input(messages)                  # [{"role": ..., "content": ...}] or a string
        for chunk in stream:
            call.output_delta(chunk.text)          # the viewer sees the answer grow
        call.usage(input_tokens=812, output_tokens=95)

The span follows the GenAI conventions (``chat gpt-4o-mini``, ``gen_ai.*``, messages in the parts format) and
OpenInference's (``openinference.span.kind=LLM``, ``input.value`` / ``output.value``).

While the answer streams, the text so far is set as ``otelflow.llm.output.partial`` and streamed as a mid-span
update, coalesced: the first delta at once (on the caller's thread, which also times it), then at most one
update every :data:`UPDATE_INTERVAL_S` seconds, sent by a pump thread that looks at the streaming calls every
:data:`_TICK_S` — so the end of the text shows even when the stream pauses; :meth:`LlmCall.usage` sends what
is unsent, and the span's end carries the whole answer as its output. The partial text is the answer's first
``max_value_bytes`` bytes (UTF-8), scrubbed (a last word that may be a key's beginning, and an unfinished PEM
block, are held back); ``otelflow.llm.output.cut`` counts the characters cut from it, updated once every
:data:`FROZEN_INTERVAL_S` once the partial text is complete. At the end the partial attributes are removed:
the ended span carries the answer as ``output.value`` and ``gen_ai.output.messages``.

After the first delta, ``LlmCall.output_delta`` *is* ``list.append`` of the deltas' list: the calling thread
pays for nothing else. Joining, scrubbing and cutting happen on the pump thread, at most ten times a second.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from opentelemetry.trace import Span

from otelflow import attributes as A
from otelflow._log import problems
from otelflow.config import settings
from otelflow.handle import SpanHandle
from otelflow.processor import notify_update
from otelflow.scrub import capture, fix_surrogates, scrub, scrub_text
from otelflow.step import Step, _Active

__all__ = ["FROZEN_INTERVAL_S", "UPDATE_INTERVAL_S", "LlmCall", "LlmStep", "llm", "open_call", "pump_once"]

UPDATE_INTERVAL_S: Final = 0.1
"""At most one live update of the partial answer per span in this many seconds (about ten a second)."""

FROZEN_INTERVAL_S: Final = 1.0
"""Once the partial answer reached its limit, the count of characters cut from it is updated this often."""

_MARGIN: Final = 1024
"""Characters kept past the byte limit, so that a secret across the cut is still recognised whole."""

_HOLD: Final = 8
"""A last word this long (or longer) is held back from the partial answer until a space ends it: it may be the
beginning of a key whose pattern does not match yet."""

_WINDOW: Final = 1024
"""Characters before the new text that are scrubbed again with it (longer than any secret the scrubber finds
across them, except PEM blocks, which are held back whole until their end line)."""

_TICK_S: Final = 0.05
"""How often the pump thread looks at the streaming calls (each sends at most once per UPDATE_INTERVAL_S)."""

_PUMP_ON = True  # the tests turn the thread off and call pump_once() themselves

_DISCARD: Final[Callable[[str], None]] = deque[str](maxlen=0).append  # output_delta once the call ended: drops the text

_clock: Callable[[], float] = time.monotonic  # the tests put a controllable clock here

_open_calls: dict[int, LlmCall] = {}  # span id → the handle of a model call that has not ended
_streaming: dict[int, LlmCall] = {}  # the same, for the calls that received their first delta


def open_call(span: Span) -> LlmCall | None:
    """The :class:`LlmCall` of ``span`` while it runs (``otelflow.current()`` returns it inside a call)."""
    return _open_calls.get(span.get_span_context().span_id)


def _shown_end(raw: str) -> int:
    """How much of the answer so far the partial text shows: all of it but a last word of :data:`_HOLD` or more
    characters (unless it runs past :data:`_MARGIN`) and an unfinished PEM block."""
    end = len(raw)
    space = max(raw.rfind(" "), raw.rfind("\n"), raw.rfind("\t"))
    if _HOLD <= end - space - 1 <= _MARGIN:
        end = space + 1
    begin = raw.rfind("-----BEGIN", 0, end)
    if begin >= 0 and raw.find("-----END", begin) < 0:
        end = begin
    return end


def _cut_bytes(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes, on a character boundary, without a marker."""
    if len(text) * 4 <= limit:
        return text
    encoded = text.encode("utf-8")
    if len(encoded) <= limit:
        return text
    return encoded[:limit].decode("utf-8", "ignore")


def _bounded(text: str, limit: int, total_chars: int | None = None) -> tuple[str, bool]:
    """``text`` scrubbed and cut to ``limit`` bytes, the cut marked with the original length in characters.

    ``total_chars``: how long the text really was when only its beginning is given.
    """
    total = len(text) if total_chars is None else total_chars
    clean = scrub_text(fix_surrogates(text[: limit + _MARGIN]))
    if total <= len(text) and len(clean) * 4 <= limit:
        return clean, False
    if total <= len(text) and len(clean.encode("utf-8")) <= limit:
        return clean, False
    marker = f"…[truncated, {total} chars]"
    return _cut_bytes(clean, max(0, limit - len(marker.encode("utf-8")))) + marker, True


# --------------------------------------------------------------------------------------------------
# Messages in the GenAI parts format
# --------------------------------------------------------------------------------------------------


def _text_part(text: str, limit: int, cut: list[bool]) -> dict[str, Any]:
    bounded, was_cut = _bounded(text, limit)
    if was_cut:
        cut[0] = True
    return {"type": "text", "content": bounded}


def _part(part: Any, limit: int, cut: list[bool]) -> dict[str, Any]:
    if isinstance(part, str):
        return _text_part(part, limit, cut)
    if isinstance(part, Mapping):
        kind = part.get("type")
        for key in ("content", "text"):
            if isinstance(part.get(key), str) and kind in (None, "text", "input_text", "output_text"):
                return _text_part(part[key], limit, cut)
        plain = scrub(part)
        return plain if isinstance(plain, dict) else {"type": "unknown", "content": plain}
    return _text_part(str(scrub(part)), limit, cut)


def _message(message: Any, limit: int, cut: list[bool], default_role: str) -> dict[str, Any]:
    """One message, ``{"role": ..., "content": ...}`` (OpenAI's shape), parts already, or a plain string."""
    if isinstance(message, str):
        return {"role": default_role, "parts": [_text_part(message, limit, cut)]}
    if not isinstance(message, Mapping):
        plain = scrub(message)  # a pydantic model or a dataclass becomes a mapping here
        if not isinstance(plain, Mapping):
            return {"role": default_role, "parts": [_text_part(str(plain), limit, cut)]}
        message = plain
    role = str(message.get("role") or default_role)
    parts: list[dict[str, Any]] = []
    given = message.get("parts")
    if isinstance(given, list):
        parts.extend(_part(p, limit, cut) for p in given)
    content = message.get("content")
    if role == "tool" and message.get("tool_call_id") is not None:
        response = content if isinstance(content, str) else scrub(content)
        if isinstance(response, str):
            response = _bounded(response, limit)[0]
        parts.append({"type": "tool_call_response", "id": str(message["tool_call_id"]), "response": response})
    elif isinstance(content, str):
        parts.append(_text_part(content, limit, cut))
    elif isinstance(content, list):
        parts.extend(_part(p, limit, cut) for p in content)
    for call in message.get("tool_calls") or ():
        if isinstance(call, Mapping):
            function = call.get("function")
            function = function if isinstance(function, Mapping) else call
            parts.append(
                {
                    "type": "tool_call",
                    "id": call.get("id"),
                    "name": function.get("name"),
                    "arguments": scrub(function.get("arguments")),
                }
            )
    out: dict[str, Any] = {"role": role, "parts": parts}
    if isinstance(message.get("name"), str):
        out["name"] = message["name"]
    if isinstance(message.get("finish_reason"), str):
        out["finish_reason"] = message["finish_reason"]
    return out


def _as_messages(value: Any) -> list[Any] | None:
    """The messages in a call's input: a list of them, one, a string, or the arguments of a decorated call
    (``messages=``, ``prompt=``, or its only argument). None when none can be told apart."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, Mapping):
        if "role" in value or "parts" in value:
            return [value]
        for key in ("messages", "prompt", "input", "text", "question"):
            if key in value:
                return _as_messages(value[key])
        if len(value) == 1:
            return _as_messages(next(iter(value.values())))
        return None
    if isinstance(value, Sequence) and not isinstance(value, bytes | bytearray) and value:
        items = list(value)
        if all(isinstance(m, str) or (isinstance(m, Mapping) and ("role" in m or "parts" in m)) for m in items):
            return items
    return None


def _messages_json(messages: list[Any], limit: int, max_chars: int | None, default_role: str) -> tuple[str, bool]:
    """GenAI JSON of ``messages``: each text at most ``limit`` bytes; the whole at most ``max_chars`` characters,
    the oldest messages left out first (the last one is always kept). Returns the JSON and whether anything was
    cut."""
    cut = [False]
    converted = [_message(m, limit, cut, default_role) for m in messages]
    text = json.dumps(converted, ensure_ascii=False, separators=(",", ":"), default=str)
    while max_chars is not None and len(text) > max_chars and len(converted) > 1:
        drop = max(1, len(converted) // 4)
        converted = converted[drop:]
        cut[0] = True
        text = json.dumps(converted, ensure_ascii=False, separators=(",", ":"), default=str)
    if max_chars is not None and len(text) > max_chars:  # one message over the attribute limit: keep it valid JSON
        only = converted[0]
        only["parts"] = [_text_part(json.dumps(only["parts"], ensure_ascii=False), max_chars // 2, cut)]
        text = json.dumps([only], ensure_ascii=False, separators=(",", ":"))
        cut[0] = True
    return text, cut[0]


# --------------------------------------------------------------------------------------------------
# The handle
# --------------------------------------------------------------------------------------------------


class LlmCall(SpanHandle):
    """A running model call: everything a :class:`~otelflow.handle.SpanHandle` does, plus its messages, its
    answer streamed live (:meth:`output_delta`), token usage and the response's model and finish reasons.

    Meant for one thread at a time (the one reading the model's stream). Every method is safe after the call
    ended (it does nothing) and never raises for telemetry reasons.
    """

    __slots__ = (
        "_capture",
        "_dropped",
        "_ended",
        "_finish_reasons",
        "_first_at",
        "_frozen",
        "_head",
        "_keep",
        "_limit",
        "_lock",
        "_max_chars",
        "_next_at",
        "_output_set",
        "_parts",
        "_plain",
        "_started",
        "output_delta",
    )

    def __init__(self, span: Span, kind: str, name: str, capture_io: bool = True) -> None:
        super().__init__(span, kind, name)
        conf = settings()
        self._capture = capture_io and conf.capture_io
        self._limit = conf.max_value_bytes
        self._max_chars = conf.max_value_length
        self._keep = conf.max_value_bytes + _MARGIN  # the answer is kept while it is no longer (in characters)
        self._parts: list[str] = []  # deltas not yet taken: the caller appends, the sender takes from the front
        self._head = ""  # the kept beginning of the answer (the deltas taken so far, at most _keep characters)
        self._dropped = 0  # characters taken past the kept beginning
        self._lock = threading.Lock()  # the sender's (the caller's first delta, usage and end; the pump's turns)
        self._frozen: str | None = None  # the partial text, once it can no longer grow
        self._plain = 0  # characters of the answer known to come out of the scrubber unchanged
        self._started = _clock()
        self._first_at: float | None = None
        self._next_at = float("-inf")
        self._ended = False
        self._output_set = False
        self.output_delta: Callable[[str], None] = self._first_delta
        """Append a delta (text) to the answer: a bare ``list.append`` after the first, which is sent at once
        and timed. At most ten updates a second follow, sent by otelflow's pump thread."""
        self._finish_reasons: list[str] | None = None
        _open_calls[span.get_span_context().span_id] = self

    # --- the answer, as it streams ----------------------------------------------------------------
    def _first_delta(self, text: str) -> None:
        """``output_delta`` until the first non-empty delta: sends it at once, times it, and from then on
        ``output_delta`` is the bare append of the deltas' list (the pump thread sends what follows)."""
        if not text:
            return
        now = _clock()
        self._parts.append(text)
        self.output_delta = self._parts.append
        self._first_at = now
        with self._lock:
            if self._ended:
                return
            self._send(now, {A.LLM_TIME_TO_FIRST_TOKEN_MS: round((now - self._started) * 1000.0, 3)})
        _streaming[self.span.get_span_context().span_id] = self
        _PUMP.start()

    @property
    def output_text(self) -> str:
        """The beginning of the answer received so far (``max_value_bytes`` plus a margin, raw: not scrubbed)."""
        with self._lock:
            self._take()
            return self._head

    def _take(self) -> None:
        """Move the deltas appended since the last time into the kept beginning of the answer (under _lock).

        The caller's thread only appends to ``_parts``; this removes from its front exactly the items it read,
        so a delta appended meanwhile stays for the next time."""
        parts = self._parts
        n = len(parts)
        if not n:
            return
        new = parts[:n]
        del parts[:n]
        try:
            text = "".join(new)
        except TypeError:  # a delta that is not a string: None (a stream's last chunk often has no content) is
            text = "".join(p if isinstance(p, str) else str(p) for p in new if p is not None)  # nothing
        room = self._keep - len(self._head)
        if room > 0:
            self._head += text[:room]
        self._dropped += max(0, len(text) - max(room, 0))

    def _tick(self, now: float) -> None:
        """The pump's turn (on its thread): send the partial answer if deltas came and the interval passed."""
        if now < self._next_at or not self._parts:
            return
        with self._lock:
            if not self._ended:
                self._send(now, {})

    def _partial(self) -> tuple[str, int]:
        """The partial answer to show (scrubbed, at most ``max_value_bytes``) and the characters cut from it
        (0 while nothing was: a word held back for the moment is not cut)."""
        raw = self._head
        if self._frozen is not None:
            return self._frozen, len(raw) + self._dropped - len(self._frozen)
        shown = raw[: _shown_end(raw)]
        # Scrubbing a text that only grows: while everything shown so far came out of the scrubber unchanged
        # (no secret yet, the usual case), only its last _WINDOW characters and the new ones are scrubbed again.
        start = max(0, self._plain - _WINDOW) if self._plain <= len(shown) else 0
        tail = shown[start:]
        clean_tail = scrub_text(fix_surrogates(tail))
        if clean_tail == tail:
            self._plain = len(shown)
            text = shown
        else:
            text = shown[:start] + clean_tail
        bounded = _cut_bytes(text, self._limit)
        if self._max_chars is not None and len(bounded) > self._max_chars:
            bounded = bounded[: self._max_chars]
        dropped = self._dropped > 0
        cut = len(raw) + self._dropped - len(bounded) if dropped or len(bounded) < len(text) else 0
        if dropped and len(bounded) < len(text):  # nothing more will be shown: keep it as is
            self._frozen = bounded
        return bounded, cut

    def _send(self, now: float, attrs: dict[str, Any]) -> None:
        """Set the partial answer (and ``attrs``) on the span and stream the change (under _lock)."""
        try:
            self._take()
            if self._capture and self._head:
                text, cut = self._partial()
                attrs[A.LLM_OUTPUT_PARTIAL] = text
                if cut > 0:
                    attrs[A.LLM_OUTPUT_CUT] = cut
            # Once the partial text is complete (the answer ran past the limit), updates only move the count of
            # cut characters: one a second tells that the answer goes on.
            self._next_at = now + (UPDATE_INTERVAL_S if self._frozen is None else FROZEN_INTERVAL_S)
            if attrs and self.span.is_recording():
                self.span.set_attributes(attrs)
                notify_update(self.span)
        except Exception:  # noqa: BLE001 - telemetry must never break the user's stream
            problems.warning("llm-delta", "otelflow: could not stream a model call's answer", exc_info=True)

    # --- input, output, usage ---------------------------------------------------------------------
    def set_input(self, value: Any, *, system: str | Sequence[Any] | None = None) -> None:
        """The request: a list of ``{"role", "content"}`` messages (or GenAI ``parts``), or a string (one user
        message). Recorded as ``gen_ai.input.messages`` and ``input.value``, scrubbed and bounded; ``system``
        instructions given apart as ``gen_ai.system_instructions``."""
        if self._ended or not self._capture:
            return
        super().set_input(value)
        try:
            attrs: dict[str, Any] = {}
            messages = _as_messages(value)
            if messages is not None:
                text, cut = _messages_json(messages, self._limit, self._max_chars, "user")
                attrs[A.GEN_AI_INPUT_MESSAGES] = text
                if cut:
                    attrs[A.INPUT_TRUNCATED] = True
            if system is not None:
                parts = [system] if isinstance(system, str) else list(system)
                flag = [False]
                attrs[A.GEN_AI_SYSTEM_INSTRUCTIONS] = json.dumps(
                    [_part(p, self._limit, flag) for p in parts], ensure_ascii=False, separators=(",", ":")
                )
            if attrs and self.span.is_recording():
                self.span.set_attributes(attrs)
            notify_update(self.span)
        except Exception:  # noqa: BLE001
            problems.warning("capture", "otelflow: could not capture a model call's input", exc_info=True)

    def set_output(self, value: Any) -> None:
        """The whole answer at once: a string, or messages (``{"role": "assistant", "content": ...}``). It wins
        over the text of :meth:`output_delta`."""
        if self._ended or not self._capture:
            return
        self._output_set = True
        self._write_output(value)

    def _write_output(self, value: Any, total_chars: int | None = None) -> None:
        try:
            if not self.span.is_recording():
                return
            attrs: dict[str, Any] = {}
            if isinstance(value, str):
                text, cut = _bounded(value, self._limit, total_chars)
                attrs[A.OUTPUT_VALUE] = text
                attrs[A.OUTPUT_MIME_TYPE] = A.MIME_TEXT
                message: dict[str, Any] = {"role": "assistant", "parts": [{"type": "text", "content": text}]}
                if self._finish_reasons:
                    message["finish_reason"] = self._finish_reasons[0]
                attrs[A.GEN_AI_OUTPUT_MESSAGES] = json.dumps([message], ensure_ascii=False, separators=(",", ":"))
                if cut:
                    attrs[A.OUTPUT_TRUNCATED] = True
            else:
                captured = capture(value, self._limit)
                attrs[A.OUTPUT_VALUE] = captured.text
                attrs[A.OUTPUT_MIME_TYPE] = captured.mime_type
                if captured.truncated:
                    attrs[A.OUTPUT_TRUNCATED] = True
                messages = _as_messages(value)
                if messages is not None:
                    text, cut = _messages_json(messages, self._limit, self._max_chars, "assistant")
                    attrs[A.GEN_AI_OUTPUT_MESSAGES] = text
                    if cut:
                        attrs[A.OUTPUT_TRUNCATED] = True
            self.span.set_attributes(attrs)
            if not self._ended:
                notify_update(self.span)
        except Exception:  # noqa: BLE001
            problems.warning("capture", "otelflow: could not capture a model call's output", exc_info=True)

    def usage(self, input_tokens: int | None = None, output_tokens: int | None = None) -> None:
        """Token counts (GenAI ``gen_ai.usage.*`` and OpenInference ``llm.token_count.*``). Also sends the part
        of the answer not yet shown live."""
        if self._ended:
            return
        attrs: dict[str, Any] = {}
        if input_tokens is not None:
            attrs[A.GEN_AI_USAGE_INPUT_TOKENS] = attrs[A.OI_TOKEN_COUNT_PROMPT] = int(input_tokens)
        if output_tokens is not None:
            attrs[A.GEN_AI_USAGE_OUTPUT_TOKENS] = attrs[A.OI_TOKEN_COUNT_COMPLETION] = int(output_tokens)
        self._update(attrs)

    def set_response(self, *, response_model: str | None = None, finish_reasons: Sequence[str] | None = None) -> None:
        """What the response said of itself: the model that answered and why it stopped (``["stop"]``)."""
        if self._ended:
            return
        attrs: dict[str, Any] = {}
        if response_model is not None:
            attrs[A.GEN_AI_RESPONSE_MODEL] = str(response_model)
        if finish_reasons is not None:
            self._finish_reasons = [str(r) for r in finish_reasons]
            attrs[A.GEN_AI_RESPONSE_FINISH_REASONS] = self._finish_reasons
        self._update(attrs)

    def _update(self, attrs: dict[str, Any]) -> None:
        with self._lock:
            if self._ended:
                return
            if self._parts:
                self._send(_clock(), attrs)  # carries the unsent part of the answer too
                return
            try:
                if attrs and self.span.is_recording():
                    self.span.set_attributes(attrs)
                    notify_update(self.span)
            except Exception:  # noqa: BLE001
                problems.warning("llm-attributes", "otelflow: could not set a model call's attributes", exc_info=True)

    # --- the end ----------------------------------------------------------------------------------
    def _ending(self) -> None:
        """The span is about to end: the answer becomes its output, the partial attributes leave."""
        if self._ended:
            return
        self.output_delta = _DISCARD  # deltas after the end are dropped
        span_id = self.span.get_span_context().span_id
        _open_calls.pop(span_id, None)
        _streaming.pop(span_id, None)
        with self._lock:
            self._ended = True
            try:
                self._take()
                raw = self._head
                if raw and self._capture and not self._output_set:
                    self._write_output(raw, total_chars=len(raw) + self._dropped)
                # The partial answer was for the live view; the ended span carries the output instead. The SDK
                # has no public way to remove an attribute, so this reaches for its mapping (and leaves both if
                # it cannot).
                attributes = getattr(self.span, "_attributes", None)
                if attributes is not None:
                    for key in (A.LLM_OUTPUT_PARTIAL, A.LLM_OUTPUT_CUT):
                        if key in attributes:
                            del attributes[key]
            except Exception:  # noqa: BLE001
                problems.warning("llm-end", "otelflow: could not finish a model call's span", exc_info=True)


class _Pump:
    """One daemon thread that sends the partial answers of the calls streaming now, every :data:`_TICK_S`
    (each call at most once per :data:`UPDATE_INTERVAL_S`); it waits, idle, while no call streams."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self._guard = threading.Lock()

    def start(self) -> None:
        if not _PUMP_ON:
            return
        thread = self._thread
        if thread is None or not thread.is_alive():  # not started yet, or this is a child after fork()
            with self._guard:
                if self._thread is None or not self._thread.is_alive():
                    self._wake = threading.Event()
                    self._thread = threading.Thread(target=self._run, name="otelflow-llm-pump", daemon=True)
                    self._thread.start()
        self._wake.set()

    def _run(self) -> None:
        wake = self._wake
        while True:
            if not _streaming:
                wake.clear()
                if not _streaming:  # re-check: a call may have started streaming meanwhile
                    wake.wait()
                continue
            time.sleep(_TICK_S)
            pump_once()


def pump_once(now: float | None = None) -> None:
    """Give every streaming call its turn to send its partial answer (what the pump thread does every
    :data:`_TICK_S`; the tests call it with a clock of their own)."""
    when = _clock() if now is None else now
    for call in list(_streaming.values()):
        try:
            call._tick(when)
        except Exception:  # noqa: BLE001 - one call's failure must not stop the others' updates
            problems.warning("llm-pump", "otelflow: could not send a model call's partial answer", exc_info=True)


_PUMP: Final = _Pump()


def _after_fork() -> None:
    """In a child after fork(): a call's lock may have been held by the pump thread, which the child lacks."""
    for call in list(_open_calls.values()):
        call._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


# --------------------------------------------------------------------------------------------------
# The builder
# --------------------------------------------------------------------------------------------------


class LlmStep(Step):
    """:class:`~otelflow.step.Step` for model calls: its handle is an :class:`LlmCall`; a decorated generator's
    yielded strings are the answer's deltas; a decorated function's returned string is the answer."""

    def _handle(self, span: Span, name: str) -> SpanHandle:
        return LlmCall(span, self.kind, name, self._capture())

    def _yielded(self, active: _Active, item: Any) -> None:
        if isinstance(item, str) and isinstance(active.handle, LlmCall):
            active.handle.output_delta(item)

    def _captured_output(self, active: _Active, value: Any) -> None:
        handle = active.handle
        if isinstance(handle, LlmCall) and (handle._parts or handle._head or handle._output_set):
            return  # the streamed answer (or the one set) is the output
        super()._captured_output(active, value)

    def __enter__(self) -> LlmCall:
        handle = super().__enter__()
        assert isinstance(handle, LlmCall)
        return handle

    async def __aenter__(self) -> LlmCall:
        return self.__enter__()


def llm(
    model: str,
    /,
    *,
    provider: str | None = None,
    operation: str = A.OP_CHAT,
    attributes: Mapping[str, Any] | None = None,
    capture_io: bool | None = None,
    input: Any = None,
) -> LlmStep:
    """A call to a language model: span ``{operation} {model}`` (``chat gpt-4o-mini``), kind ``llm``.

    ``provider`` is ``gen_ai.provider.name`` (``openai``, ``anthropic``, ...); ``operation`` the GenAI operation
    (``chat``, ``text_completion``, ``generate_content``, ``embeddings``). A context manager yielding an
    :class:`LlmCall`, or a decorator: the arguments become the input messages (a ``messages`` or ``prompt``
    argument, or the only one), a returned string or the strings a generator yields become the answer.
    """
    if callable(model):
        raise TypeError("otelflow.llm needs the model's name: @otelflow.llm('gpt-4o-mini', provider='openai')")
    if not isinstance(operation, str) or not operation.strip():
        raise ValueError(f"llm operation must be a non-empty string, got {operation!r}")

    def attrs(name: str) -> dict[str, Any]:
        out: dict[str, Any] = {
            A.GEN_AI_OPERATION_NAME: operation,
            A.GEN_AI_REQUEST_MODEL: name,
            A.KIND: A.KIND_LLM,
            A.OPENINFERENCE_SPAN_KIND: A.OI_LLM,
            A.OI_LLM_MODEL_NAME: name,
        }
        if provider is not None:
            out[A.GEN_AI_PROVIDER_NAME] = out[A.OI_LLM_PROVIDER] = str(provider)
        return out

    return LlmStep(
        A.KIND_LLM,
        model,
        span_name=lambda name: f"{operation} {name}",
        attributes=attrs,
        extra=attributes,
        capture_io=capture_io,
        input=input,
    )
