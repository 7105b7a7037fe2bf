"""A normalized view of a model call, from whatever put it on a span: the OpenTelemetry GenAI conventions (as
attributes, in their JSON or parts form, or as the older per-message events and the newer
``gen_ai.client.inference.operation.details`` event), OpenInference's flattened attributes, and otelflow's own
(time to first token, the answer so far while a call streams). Pure: no I/O, no web framework.

:func:`llm_view` never raises: a token count that is not a count becomes ``None`` (and the reason goes into
``problems``; the raw attribute stays on the span), messages that are not JSON become one text message, and each
message's content is cut at :data:`CONTENT_LIMIT` characters with the count of what was cut. Texts pass through
:func:`otelflow.scrub.clean_text`, as every text of a span does.

Prices: :class:`Prices` (per 1M tokens, a table keyed by model id; dated ids such as ``gpt-4o-mini-2024-07-18``
match ``gpt-4o-mini``); the viewer installs its table with :func:`use_prices`, and :func:`with_cost` adds
``cost_usd`` (an estimate, always marked ``cost_estimate: true``) to a view.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any, Final

from otelflow import attributes as A
from otelflow.scrub import clean_text, scrub

__all__ = [
    "CONTENT_LIMIT",
    "MAX_MESSAGES",
    "PriceError",
    "Prices",
    "current_prices",
    "is_llm",
    "llm_view",
    "use_prices",
    "with_cost",
]

CONTENT_LIMIT: Final = 16_384  # characters of one message's content (or of the answer so far) in the view
MAX_MESSAGES: Final = 200  # messages of one side (input or output); the rest are counted in *_messages_cut
_OPERATIONS: Final = frozenset(A.LLM_OPERATIONS)
_OI_KINDS: Final = {A.OI_LLM: A.OP_CHAT, A.OI_EMBEDDING: A.OP_EMBEDDINGS}
_ROLE_EVENTS: Final = {
    A.EVENT_GEN_AI_SYSTEM_MESSAGE: "system",
    A.EVENT_GEN_AI_USER_MESSAGE: "user",
    A.EVENT_GEN_AI_ASSISTANT_MESSAGE: "assistant",
    A.EVENT_GEN_AI_TOOL_MESSAGE: "tool",
}
_BODY_KEYS: Final = (A.LOG_BODY, "body")  # where an event made of a log record keeps its body


def is_llm(attributes: Mapping[str, Any]) -> bool:
    """Whether a span's attributes describe a model call: a GenAI operation of :data:`A.LLM_OPERATIONS`, or an
    OpenInference ``LLM`` or ``EMBEDDING`` span."""
    op = attributes.get(A.GEN_AI_OPERATION_NAME)
    if isinstance(op, str) and op in _OPERATIONS:
        return True
    oi = attributes.get(A.OPENINFERENCE_SPAN_KIND)
    return isinstance(oi, str) and oi.upper() in _OI_KINDS


# --------------------------------------------------------------------------------------------------
# The view
# --------------------------------------------------------------------------------------------------


def llm_view(
    name: str, attributes: Mapping[str, Any], events: Iterable[Any] = (), start_ns: int | None = None
) -> dict[str, Any]:
    """The normalized view of a model call (see the module docstring and README, "Model calls").

    ``events`` are :class:`otelflow.records.EventRecord` (anything with ``name``, ``time_ns`` and ``attributes``);
    ``start_ns``, the span's start, dates OpenInference's first-token event."""
    return _view(name, attributes, tuple(events), start_ns)


def _view(name: str, a: Mapping[str, Any], events: tuple[Any, ...], start_ns: int | None) -> dict[str, Any]:
    problems: list[str] = []
    try:
        return _build(name, a, events, start_ns, problems)
    except Exception as exc:  # noqa: BLE001 - a view must never break what shows the span
        problems.append(f"could not read the model call: {type(exc).__name__}")
        return _empty(problems)


def _empty(problems: list[str]) -> dict[str, Any]:
    return {
        "operation": None,
        "provider": None,
        "model": None,
        "request_model": None,
        "input_tokens": None,
        "output_tokens": None,
        "finish_reasons": [],
        "time_to_first_token_ms": None,
        "input_messages": [],
        "output_messages": [],
        "system_instructions": None,
        "partial_output": None,
        "partial_cut": 0,
        "problems": problems,
    }


def _text_attr(a: Mapping[str, Any], *keys: str) -> str | None:
    for key in keys:
        value = a.get(key)
        if value is not None and value != "":
            return clean_text(str(value), 512)
    return None


def _count(a: Mapping[str, Any], keys: tuple[str, ...], problems: list[str]) -> int | None:
    """A token count: a non-negative integer (a whole float too); anything else is ``None`` and a problem."""
    for key in keys:
        if key not in a:
            continue
        value = a[key]
        if isinstance(value, bool):
            pass
        elif isinstance(value, int) and value >= 0:
            return value
        elif isinstance(value, float) and math.isfinite(value) and value >= 0 and value.is_integer():
            return int(value)
        problems.append(f"{key} is not a token count: {clean_text(repr(value), 80)}")
        return None
    return None


def _build(
    name: str, a: Mapping[str, Any], events: tuple[Any, ...], start_ns: int | None, problems: list[str]
) -> dict[str, Any]:
    view = _empty(problems)
    op = a.get(A.GEN_AI_OPERATION_NAME)
    if isinstance(op, str) and op:
        view["operation"] = clean_text(op, 64)
    else:
        oi = a.get(A.OPENINFERENCE_SPAN_KIND)
        view["operation"] = _OI_KINDS.get(oi.upper()) if isinstance(oi, str) else None
    view["provider"] = _text_attr(a, A.GEN_AI_PROVIDER_NAME, A.GEN_AI_SYSTEM, A.OI_LLM_PROVIDER, A.OI_LLM_SYSTEM)
    request = _text_attr(a, A.GEN_AI_REQUEST_MODEL)
    view["request_model"] = request
    view["model"] = (
        _text_attr(a, A.GEN_AI_RESPONSE_MODEL)
        or request
        or _text_attr(a, A.OI_LLM_MODEL_NAME, A.OI_EMBEDDING_MODEL_NAME)
    )
    view["input_tokens"] = _count(a, (A.GEN_AI_USAGE_INPUT_TOKENS, A.OI_TOKEN_COUNT_PROMPT), problems)
    view["output_tokens"] = _count(a, (A.GEN_AI_USAGE_OUTPUT_TOKENS, A.OI_TOKEN_COUNT_COMPLETION), problems)

    inputs: list[dict[str, Any]] = []
    outputs: list[dict[str, Any]] = []
    system: Any = None
    finish: list[str] = []
    if A.GEN_AI_INPUT_MESSAGES in a or A.GEN_AI_OUTPUT_MESSAGES in a or A.GEN_AI_SYSTEM_INSTRUCTIONS in a:
        inputs = _messages(a.get(A.GEN_AI_INPUT_MESSAGES), problems, A.GEN_AI_INPUT_MESSAGES)
        outputs = _messages(a.get(A.GEN_AI_OUTPUT_MESSAGES), problems, A.GEN_AI_OUTPUT_MESSAGES, finish)
        system = a.get(A.GEN_AI_SYSTEM_INSTRUCTIONS)
    elif any(k.startswith((A.OI_INPUT_MESSAGES + ".", A.OI_OUTPUT_MESSAGES + ".")) for k in a):
        inputs = _flattened(a, A.OI_INPUT_MESSAGES)
        outputs = _flattened(a, A.OI_OUTPUT_MESSAGES)
    ttft = _ttft(a, events, start_ns, problems)
    if events:
        detail_in: list[dict[str, Any]] = []
        detail_out: list[dict[str, Any]] = []
        detail_system: Any = None
        told_in: list[dict[str, Any]] = []
        told_out: list[dict[str, Any]] = []
        for event in events:
            name_ = event.name
            if name_ == A.EVENT_GEN_AI_INFERENCE_DETAILS and not (detail_in or detail_out):
                p = _payload(event)
                detail_in = _messages(p.get(A.GEN_AI_INPUT_MESSAGES), problems, A.GEN_AI_INPUT_MESSAGES)
                detail_out = _messages(p.get(A.GEN_AI_OUTPUT_MESSAGES), problems, A.GEN_AI_OUTPUT_MESSAGES, finish)
                detail_system = p.get(A.GEN_AI_SYSTEM_INSTRUCTIONS)
            elif name_ in _ROLE_EVENTS:
                p = _payload(event)
                p.setdefault("role", _ROLE_EVENTS[name_])
                told_in.append(_one_message(p))
            elif name_ == A.EVENT_GEN_AI_CHOICE:
                told_out.append(_choice(_payload(event), finish))
        inputs = inputs or detail_in or told_in
        outputs = outputs or detail_out or told_out
        system = system if system is not None else detail_system
    view["input_messages"], cut_in = _bounded(inputs)
    view["output_messages"], cut_out = _bounded(outputs)
    if cut_in:
        view["input_messages_cut"] = cut_in
    if cut_out:
        view["output_messages_cut"] = cut_out
    view["system_instructions"] = _system_text(system, problems) if system is not None else None

    reasons = a.get(A.GEN_AI_RESPONSE_FINISH_REASONS)
    if isinstance(reasons, str):
        reasons = [reasons]
    if not isinstance(reasons, (list, tuple)) or not reasons:
        oi_reason = a.get(A.OI_LLM_FINISH_REASON)
        reasons = [oi_reason] if isinstance(oi_reason, str) and oi_reason else finish
    view["finish_reasons"] = [clean_text(str(r), 64) for r in reasons[:16]]
    view["time_to_first_token_ms"] = ttft

    partial = a.get(A.LLM_OUTPUT_PARTIAL)
    if partial is not None:
        text, cut = _bound(str(partial))
        view["partial_output"] = text
        declared = a.get(A.LLM_OUTPUT_CUT)
        declared_cut = declared if isinstance(declared, int) and not isinstance(declared, bool) and declared > 0 else 0
        view["partial_cut"] = declared_cut + cut
    return view


def _ttft(a: Mapping[str, Any], events: tuple[Any, ...], start_ns: int | None, problems: list[str]) -> float | None:
    value = a.get(A.LLM_TIME_TO_FIRST_TOKEN_MS)
    if value is not None:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0:
            return float(value)
        problems.append(f"{A.LLM_TIME_TO_FIRST_TOKEN_MS} is not a duration: {clean_text(repr(value), 80)}")
        return None
    if start_ns:
        for event in events:
            time_ns = event.time_ns
            if event.name == A.OI_FIRST_TOKEN_EVENT and isinstance(time_ns, int) and time_ns >= start_ns:
                return round((time_ns - start_ns) / 1e6, 3)
    return None


def _bound(text: str) -> tuple[str, int]:
    """``text`` cleaned and cut to :data:`CONTENT_LIMIT` characters, and how many characters were cut."""
    if len(text) <= CONTENT_LIMIT:
        return clean_text(text, None), 0
    return clean_text(text[:CONTENT_LIMIT], None), len(text) - CONTENT_LIMIT


def _bounded(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    if len(messages) <= MAX_MESSAGES:
        return messages, 0
    return messages[:MAX_MESSAGES], len(messages) - MAX_MESSAGES


def _message(
    role: Any, content: Any, tool_calls: list[dict[str, Any]] | None = None, tool_call_id: Any = None
) -> dict[str, Any]:
    text, cut = _bound(_content_text(content))
    return {
        "role": clean_text(str(role), 64) if role else "",
        "content": text,
        "tool_calls": tool_calls or [],
        "tool_call_id": clean_text(str(tool_call_id), 256) if tool_call_id else None,
        "cut": cut,
    }


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    try:
        return json.dumps(scrub(value), ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError):
        return str(value)


def _content_text(content: Any) -> str:
    """A message content as text: a string; the texts of a list of parts (other parts as JSON); JSON else."""
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        pieces = []
        for part in content:
            if isinstance(part, str):
                pieces.append(part)
            elif isinstance(part, Mapping):
                kind = part.get("type")
                if kind in (None, "text", "input_text", "output_text") and isinstance(
                    part.get("content", part.get("text")), str
                ):
                    pieces.append(part.get("content", part.get("text")))
                else:
                    pieces.append(_as_text(part))
            else:
                pieces.append(_as_text(part))
        return "\n".join(pieces)
    return _as_text(content)


def _tool_call(call: Any) -> dict[str, Any] | None:
    """``{id, name, arguments}`` (arguments as text) of an OpenAI-style or parts-style tool call."""
    if not isinstance(call, Mapping):
        return None
    function = call.get("function")
    if isinstance(function, Mapping):
        name, arguments = function.get("name"), function.get("arguments")
    else:
        name, arguments = call.get("name"), call.get("arguments")
    text, _ = _bound(_as_text(arguments))
    return {
        "id": clean_text(str(call.get("id")), 256) if call.get("id") else None,
        "name": clean_text(str(name), 256) if name else "",
        "arguments": text,
    }


def _parse(value: Any, problems: list[str], key: str) -> Any:
    """A JSON attribute's value: lists and mappings as they are, JSON text parsed; ``None`` when the text is not
    JSON (after noting it)."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            problems.append(f"{key} is not JSON: shown as text")
            return None
    return value


def _messages(value: Any, problems: list[str], key: str, finish: list[str] | None = None) -> list[dict[str, Any]]:
    """Messages from a GenAI attribute (a JSON text or a list): parts-based or OpenAI-style objects."""
    if value is None:
        return []
    parsed = _parse(value, problems, key)
    if parsed is None:  # not JSON: the text, as one message
        return [_message("", str(value))]
    if isinstance(parsed, Mapping):
        parsed = [parsed]
    if not isinstance(parsed, list):
        return [_message("", _as_text(parsed))]
    out = []
    for item in parsed:
        if isinstance(item, str):  # a list of texts
            try:
                item = json.loads(item)
            except ValueError:
                out.append(_message("", item))
                continue
        if not isinstance(item, Mapping):
            out.append(_message("", _as_text(item)))
            continue
        out.append(_one_message(item))
        reason = item.get("finish_reason")
        if finish is not None and isinstance(reason, str) and reason:
            finish.append(reason)
    return out


def _one_message(item: Mapping[str, Any]) -> dict[str, Any]:
    role = item.get("role")
    parts = item.get("parts")
    if isinstance(parts, list):
        texts: list[Any] = []
        calls: list[dict[str, Any]] = []
        tool_call_id = None
        for part in parts:
            if not isinstance(part, Mapping):
                texts.append(part)
                continue
            kind = part.get("type")
            if kind == "tool_call":
                call = _tool_call(part)
                if call is not None:
                    calls.append(call)
            elif kind == "tool_call_response":
                tool_call_id = part.get("id")
                texts.append(_as_text(part.get("response", part.get("result"))))
            else:
                texts.append(part)
        return _message(role, texts, calls, tool_call_id)
    message = item.get("message")
    if isinstance(message, Mapping) and "content" not in item:  # a gen_ai.choice body
        item = message
        role = role or item.get("role") or "assistant"
    raw_calls = item.get("tool_calls")
    raw_calls = raw_calls if isinstance(raw_calls, (list, tuple)) else ()
    calls = [c for c in (_tool_call(t) for t in raw_calls) if c is not None]
    return _message(role, item.get("content"), calls, item.get("tool_call_id") or item.get("id"))


_FLAT: Final = re.compile(r"^(\d+)\.message\.(.+)$")
_FLAT_CALL: Final = re.compile(r"^tool_calls\.(\d+)\.tool_call\.(.+)$")
_FLAT_PART: Final = re.compile(r"^contents\.(\d+)\.message_content\.(.+)$")


def _flattened(a: Mapping[str, Any], prefix: str) -> list[dict[str, Any]]:
    """Messages from OpenInference's flattened attributes: ``<prefix>.<i>.message.role``, ``.content``,
    ``.contents.<j>.message_content.text``, ``.tool_calls.<k>.tool_call.function.name`` / ``.arguments`` /
    ``.id``, ``.tool_call_id``."""
    found: dict[int, dict[str, Any]] = {}
    start = len(prefix) + 1
    for key, value in a.items():
        if not key.startswith(prefix) or key[start - 1 : start] != ".":
            continue
        match = _FLAT.match(key[start:])
        if match is None:
            continue
        entry = found.setdefault(int(match.group(1)), {"calls": {}, "parts": {}})
        field = match.group(2)
        call = _FLAT_CALL.match(field)
        part = _FLAT_PART.match(field)
        if call is not None:
            entry["calls"].setdefault(int(call.group(1)), {})[call.group(2)] = value
        elif part is not None:
            entry["parts"].setdefault(int(part.group(1)), {})[part.group(2)] = value
        else:
            entry[field] = value
    out = []
    for index in sorted(found):
        entry = found[index]
        content = entry.get("content")
        if content is None and entry["parts"]:
            content = [
                {"type": "text", "text": p.get("text")} if "text" in p else p for _, p in sorted(entry["parts"].items())
            ]
        calls = []
        for _, call in sorted(entry["calls"].items()):
            calls.append(
                {
                    "id": clean_text(str(call["id"]), 256) if call.get("id") else None,
                    "name": clean_text(str(call.get("function.name") or ""), 256),
                    "arguments": _bound(_as_text(call.get("function.arguments")))[0],
                }
            )
        out.append(_message(entry.get("role"), content, calls, entry.get("tool_call_id")))
    return out


def _payload(event: Any) -> dict[str, Any]:
    """An event's attributes, with its body (a log record's, as an attribute) merged in when it is an object."""
    attrs = dict(event.attributes or {})
    for key in _BODY_KEYS:
        body = attrs.get(key)
        if body is None:
            continue
        if isinstance(body, str):
            try:
                body = json.loads(body)
            except ValueError:
                body = {"content": body}
        if isinstance(body, Mapping):
            for k, v in body.items():
                attrs.setdefault(str(k), v)
    return attrs


def _choice(p: dict[str, Any], finish: list[str]) -> dict[str, Any]:
    """The message of a ``gen_ai.choice`` event (``message`` an object, or flattened as ``message.content``...)."""
    message = p.get("message")
    item = dict(message) if isinstance(message, Mapping) else {"content": message} if message is not None else {}
    for key, value in p.items():
        if key.startswith("message.") and key[8:] not in item:
            item[key[8:]] = value
    item.setdefault("role", "assistant")
    reason = p.get("finish_reason")
    if isinstance(reason, str) and reason:
        finish.append(reason)
    return _one_message(item)


def _system_text(value: Any, problems: list[str]) -> str:
    parsed = _parse(value, problems, A.GEN_AI_SYSTEM_INSTRUCTIONS) if isinstance(value, str) else value
    if parsed is None:
        parsed = value
    return _bound(_content_text(parsed if isinstance(parsed, (list, str)) else _as_text(parsed)))[0]


# --------------------------------------------------------------------------------------------------
# Prices
# --------------------------------------------------------------------------------------------------


class PriceError(ValueError):
    """A price table that cannot be used (the message says where and why, in one line)."""


_DATED: Final = re.compile(r"(?:-\d{4}-\d{2}-\d{2}|-\d{8}|-\d{4}|-latest|@[\w.-]+)$")


class Prices:
    """USD per 1M tokens per model id (``{"input": x, "output": y}``); the table's ``date``.

    :meth:`lookup` finds a model by its id, case-insensitively, also without a provider prefix (``openai/``)
    and without a date or version suffix (``-2024-07-18``, ``-20241022``, ``-0613``, ``-latest``, ``@001``)."""

    def __init__(
        self, models: Mapping[str, tuple[float, float]], date: str = "", sources: Mapping[str, str] | None = None
    ) -> None:
        self.models = {k.lower(): v for k, v in models.items()}
        self.date = date
        self.sources = dict(sources or {})

    @classmethod
    def from_json(cls, data: Any, where: str) -> Prices:
        """A table from the JSON of a prices file: ``{"date": "...", "models": {"<id>": {"input": 0.15,
        "output": 0.6, "source": "..."}}}``; :class:`PriceError` naming ``where`` when it is not one."""
        if not isinstance(data, Mapping) or not isinstance(data.get("models"), Mapping):
            raise PriceError(f'{where}: expected an object with a "models" object')
        models: dict[str, tuple[float, float]] = {}
        sources: dict[str, str] = {}
        for model, entry in data["models"].items():
            if not isinstance(entry, Mapping):
                raise PriceError(f'{where}: models.{model}: expected an object with "input" and "output"')
            prices = []
            for side in ("input", "output"):
                value = entry.get(side, 0 if side == "output" and "input" in entry else None)
                if (
                    isinstance(value, bool)
                    or not isinstance(value, (int, float))
                    or not math.isfinite(value)
                    or value < 0
                ):
                    raise PriceError(f"{where}: models.{model}.{side}: expected a number of USD per 1M tokens, >= 0")
                prices.append(float(value))
            models[str(model)] = (prices[0], prices[1])
            if isinstance(entry.get("source"), str):
                sources[str(model)] = entry["source"]
        return cls(models, str(data.get("date") or ""), sources)

    @classmethod
    def load(cls, path: str) -> Prices:
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except OSError as exc:
            raise PriceError(f"{path}: {exc.strerror or exc}") from None
        except ValueError as exc:
            raise PriceError(f"{path}: not JSON ({exc})") from None
        return cls.from_json(data, path)

    def merged(self, other: Prices) -> Prices:
        """This table with ``other``'s entries added or replacing these."""
        return Prices({**self.models, **other.models}, other.date or self.date, {**self.sources, **other.sources})

    def lookup(self, model: str | None) -> tuple[float, float] | None:
        if not model:
            return None
        key = model.strip().lower()
        for candidate in (key, key.rpartition("/")[2]):
            found = self.models.get(candidate)
            if found is not None:
                return found
            undated = _DATED.sub("", candidate)
            if undated != candidate:
                found = self.models.get(undated)
                if found is not None:
                    return found
        return None

    def cost(self, model: str | None, input_tokens: int | None, output_tokens: int | None) -> float | None:
        """USD for a call, or ``None`` when the model is not in the table or no token count is known."""
        if input_tokens is None and output_tokens is None:
            return None
        price = self.lookup(model)
        if price is None:
            return None
        return ((input_tokens or 0) * price[0] + (output_tokens or 0) * price[1]) / 1e6


_prices: list[Prices | None] = [None]


def use_prices(prices: Prices | None) -> None:
    """Install the table :func:`with_cost` prices calls with (the viewer does, at start); ``None``: no costs."""
    _prices[0] = prices


def current_prices() -> Prices | None:
    return _prices[0]


def with_cost(view: Mapping[str, Any]) -> dict[str, Any]:
    """``view`` with ``cost_usd`` (``None`` when unknown) and ``cost_estimate: true``."""
    prices = _prices[0]
    cost = prices.cost(view.get("model"), view.get("input_tokens"), view.get("output_tokens")) if prices else None
    return {**view, "cost_usd": round(cost, 10) if cost is not None else None, "cost_estimate": True}
