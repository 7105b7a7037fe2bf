"""Redaction and truncation: of captured values (function inputs and outputs, log messages), and of any text a
span carries, at the edges where spans enter otelflow (the SDK's records and exports, the viewer's decoding).

One set of rules everywhere: :func:`clean_text` makes a text safe to show, store and export (valid UTF-8,
secrets redacted, bounded in length with a visible marker); :func:`clean_attributes` does the same to an
attribute mapping, redacting every value kept under a secret-looking key.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from collections.abc import Mapping, Sequence
from itertools import islice
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import Status

from otelflow._log import problems

__all__ = [
    "DEFAULT_VALUE_LIMIT",
    "NAME_LIMIT",
    "REDACTED",
    "CapturedValue",
    "CleanExporter",
    "capture",
    "clean_attributes",
    "clean_span",
    "clean_text",
    "clean_value",
    "cut",
    "fix_surrogates",
    "is_secret_key",
    "scrub",
    "scrub_text",
    "truncate",
]

REDACTED: Final = "[REDACTED]"

# Keys whose values are secrets wherever they appear: dict keys, keyword arguments, URL query names.
# Matched against the end of the name, so ``access_token`` is secret and ``max_tokens`` is not.
_SECRET_KEY = re.compile(
    r"(^|[-_.])(pass(word|wd|phrase)?|pwd|secret|token|api[-_]?key|apikey|access[-_]?key|private[-_]?key|"
    r"authori[sz]ation|auth|credentials?|cookie|session[-_]?id|signature|sig|client[-_]?secret|"
    r"x[-_]amz[-_]security[-_]token|x[-_]amz[-_]signature|bearer|jwt)$",
    re.IGNORECASE,
)
# Matched anywhere in the name: ``db_password_file`` and ``SecretValue`` are secret.
_SECRET_KEY_PART = re.compile(
    r"(password|passwd|secret|api[-_]?key|apikey|private[-_]?key|authori[sz]ation|credential)",
    re.IGNORECASE,
)
# Secrets recognisable by their shape inside free text.
_SECRET_TEXT: Final = (
    re.compile(r"(?i)\b(bearer|basic)\s+[a-z0-9._~+/=-]{8,}"),  # Authorization header values
    re.compile(r"\bsk-[A-Za-z0-9_-]{16,}"),  # OpenAI-style keys
    re.compile(r"\bgh[pousr]_[A-Za-z0-9]{20,}"),  # GitHub tokens
    re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}"),  # Slack tokens
    re.compile(r"\bAKIA[0-9A-Z]{16}\b"),  # AWS access key ids
    re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"),  # JWTs
    # a private key, also one cut short before its END line
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?(?:-----END [A-Z ]*PRIVATE KEY-----|$)"),
)
_URL: Final = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s\"'<>]+")
# ``name=value``, ``name: value`` and ``"name": "value"`` (JSON) where the name holds a secret word; the
# callback then asks is_secret_key about the whole name, so ``max_tokens: 5`` stays.
_KEY_VALUE_TEXT: Final = re.compile(
    r"(?i)(?<![\w.-])([\w.-]*?(?:pass(?:word|wd|phrase)?|pwd|secret|token|api[-_]?key|apikey|access[-_]?key|"
    r"private[-_]?key|credentials?|auth|authori[sz]ation|signature|cookie)s?)"
    r"([\"']?\s*[=:]\s*)(\"[^\"]*\"|'[^']*'|[^\s,;&\"'}\]]+)"
)
# AWS secret access keys (40 characters of base64) in free text: required to mix upper case, lower case and
# digits, so that hex digests (git commits, SHA-1) are left alone.
_AWS_SECRET: Final = re.compile(r"(?<![A-Za-z0-9/+=])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])")
# Cheap test for "might hold a secret": texts without any of these pass scrub_text untouched.
_HINTS: Final = (
    "://",
    "bearer",
    "basic",
    "sk-",
    "gh",
    "xox",
    "akia",
    "eyj",
    "-----begin",
    "pass",
    "pwd",
    "secret",
    "token",
    "key",
    "auth",
    "credential",
    "signature",
    "cookie",
)
_MAX_DEPTH: Final = 20
_CAMEL: Final = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


@functools.lru_cache(maxsize=4096)
def is_secret_key(key: str) -> bool:
    """True when a key, argument or query parameter name looks like it holds a secret."""
    snake = _CAMEL.sub("_", key)  # accessToken -> access_Token
    return bool(_SECRET_KEY.search(snake) or _SECRET_KEY_PART.search(snake))


def _scrub_url(match: re.Match[str]) -> str:
    url = match.group(0)
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, host = netloc.rsplit("@", 1)
            user = userinfo.split(":", 1)[0]
            netloc = f"{user}:{REDACTED}@{host}" if ":" in userinfo else f"{REDACTED}@{host}"
        query = parts.query
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            if any(is_secret_key(k) for k, _ in pairs):
                query = urlencode([(k, REDACTED if is_secret_key(k) else v) for k, v in pairs], safe="[]")
        if netloc == parts.netloc and query == parts.query:
            return url
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        return url


def _redact_key_value(match: re.Match[str]) -> str:
    value = match.group(3)
    if not is_secret_key(match.group(1)) or value.lstrip("\"'").startswith(REDACTED[:-1]):
        return match.group(0)
    quote = value[0] if value[:1] in ('"', "'") else ""
    return f"{match.group(1)}{match.group(2)}{quote}{REDACTED}{quote}"


def _redact_aws_secret(match: re.Match[str]) -> str:
    text = match.group(0)
    mixed = any(c.isupper() for c in text) and any(c.islower() for c in text) and any(c.isdigit() for c in text)
    return REDACTED if mixed else text


def scrub_text(text: str) -> str:
    """Redact secrets inside free text: URL credentials and secret query values, tokens and keys recognisable by
    their shape, and the values of ``name=value`` / ``name: value`` / ``"name": "value"`` pairs whose name
    looks secret."""
    low = text.lower()
    if not any(hint in low for hint in _HINTS) and (len(text) < 40 or not _AWS_SECRET.search(text)):
        return text
    if "://" in text:
        text = _URL.sub(_scrub_url, text)
    for pattern in _SECRET_TEXT:
        text = pattern.sub(REDACTED, text)
    if len(text) >= 40:
        text = _AWS_SECRET.sub(_redact_aws_secret, text)
    return _KEY_VALUE_TEXT.sub(_redact_key_value, text)


def _to_plain(value: Any, depth: int, seen: set[int]) -> Any:
    """A JSON-ready copy of ``value`` with secrets redacted; anything unknown becomes its repr."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else repr(value)
    if isinstance(value, str):
        return scrub_text(value)
    if depth > _MAX_DEPTH:
        return "[too deep]"
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(value)} bytes>"
    ident = id(value)
    if ident in seen:
        return "[cycle]"
    seen.add(ident)
    try:
        if isinstance(value, Mapping):
            return {
                str(k): REDACTED if isinstance(k, str) and is_secret_key(k) else _to_plain(v, depth + 1, seen)
                for k, v in value.items()
            }
        if isinstance(value, list | tuple | set | frozenset):
            return [_to_plain(v, depth + 1, seen) for v in value]
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            fields = {f.name: getattr(value, f.name, None) for f in dataclasses.fields(value)}
            return _to_plain(fields, depth + 1, seen)
        dump = getattr(value, "model_dump", None)  # pydantic v2 models
        if callable(dump):
            try:
                return _to_plain(dump(), depth + 1, seen)
            except Exception:  # noqa: BLE001, S110 - a broken model_dump falls back to repr below
                pass
        return scrub_text(_safe_repr(value))
    finally:
        seen.discard(ident)


def _safe_repr(value: Any) -> str:
    try:
        text = repr(value)
    except Exception as exc:  # noqa: BLE001 - any repr may fail; capture must not
        return f"<unrepresentable {type(value).__name__}: {type(exc).__name__}>"
    return text if len(text) <= 65536 else text[:65536]


def scrub(value: Any) -> Any:
    """Redacted, JSON-serialisable copy of a value (secret keys → ``[REDACTED]``, unknown objects → repr)."""
    return _to_plain(value, 0, set())


def truncate(text: str, max_bytes: int) -> tuple[str, bool]:
    """Cut ``text`` to at most ``max_bytes`` UTF-8 bytes (on a character boundary), marking the cut.

    Returns the text and whether it was truncated. The marker says how long the original was.
    """
    encoded = text.encode("utf-8", "surrogatepass")
    if len(encoded) <= max_bytes:
        return text, False
    marker = f"…[truncated, {len(encoded)} bytes]"
    keep = max(0, max_bytes - len(marker.encode("utf-8")))
    return encoded[:keep].decode("utf-8", "ignore") + marker, True


@dataclasses.dataclass(frozen=True, slots=True)
class CapturedValue:
    """A value ready to be a span attribute: the text, its MIME type and whether it was cut."""

    text: str
    mime_type: str
    truncated: bool


def capture(value: Any, max_bytes: int) -> CapturedValue:
    """Scrub and serialise a captured input or output; strings stay text, everything else is JSON."""
    if isinstance(value, str):
        text, cut = truncate(scrub_text(value), max_bytes)
        return CapturedValue(text, "text/plain", cut)
    try:
        text = json.dumps(scrub(value), ensure_ascii=False, separators=(",", ":"), default=_safe_repr)
    except (TypeError, ValueError):  # e.g. non-string dict keys that cannot be sorted out
        text = json.dumps(scrub_text(_safe_repr(value)), ensure_ascii=False)
    text, cut = truncate(text, max_bytes)
    return CapturedValue(text, "application/json", cut)


# --------------------------------------------------------------------------------------------------
# Text from spans: what every edge applies (the SDK's records and exports, the viewer's decoding)
# --------------------------------------------------------------------------------------------------

DEFAULT_VALUE_LIMIT: Final = 65_536  # characters of one attribute value (OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT)
NAME_LIMIT: Final = 1024  # characters of a span, event or service name
_SURROGATE: Final = re.compile("[\ud800-\udfff]")
_MEMO_MAX_LEN: Final = 200
_MEMO_SIZE: Final = 8192
_SAME: Final = object()  # memo value of a text that needs no change
# Short texts repeat (names, kinds, ids of a run): each is cleaned once per limit. The memo of a limit maps a
# text to its cleaned form, or to _SAME. Keys map to their cleaned form and whether they look secret.
_MEMOS: dict[int | None, dict[str, object]] = {}
_KEYS: dict[str, tuple[str, bool]] = {}


def fix_surrogates(text: str) -> str:
    """``text`` with lone surrogates (JSON escapes such as ``"\\ud800"``, ``os.fsdecode`` of undecodable
    bytes) replaced by U+FFFD, so that it always encodes as UTF-8."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", text)
    return text


def cut(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, the cut marked with the original length."""
    if len(text) <= limit:
        return text
    marker = f"…[truncated, {len(text)} chars]"
    return text[: max(0, limit - len(marker))] + marker


def _memo(limit: int | None) -> dict[str, object]:
    memo = _MEMOS.get(limit)
    if memo is None:
        memo = _MEMOS[limit] = {}
    return memo


def _clean_new(text: str, limit: int | None, memo: dict[str, object]) -> str:
    """:func:`clean_text` of a text not in ``memo``; remembers short ones."""
    if limit is not None and len(text) > limit:
        marker = f"…[truncated, {len(text)} chars]"
        keep = max(0, limit - len(marker))
        # a margin past the cut, so that a secret across it is still recognised whole
        out = scrub_text(fix_surrogates(text[: keep + 256]))[:keep] + marker
    else:
        out = scrub_text(fix_surrogates(text))
    if len(text) <= _MEMO_MAX_LEN:
        if len(memo) >= _MEMO_SIZE:
            memo.clear()
        memo[text] = _SAME if out == text else out
    return text if out == text else out


def clean_text(text: str, limit: int | None = DEFAULT_VALUE_LIMIT) -> str:
    """Text from a span made safe to show, store and export: valid UTF-8 (:func:`fix_surrogates`), secrets
    redacted (:func:`scrub_text`), at most ``limit`` characters (:func:`cut`; ``None``: no limit).
    Returns ``text`` itself when nothing had to change."""
    if not text:
        return text
    memo = _memo(limit)
    hit = memo.get(text)
    if hit is None:
        return _clean_new(text, limit, memo)
    return text if hit is _SAME else hit  # type: ignore[return-value]


def clean_value(value: Any, limit: int | None = DEFAULT_VALUE_LIMIT) -> Any:
    """An attribute value with every text in it cleaned (:func:`clean_text`): strings, lists and nested
    mappings (OTLP ``kvlistValue``); numbers and booleans as they are. Returns ``value`` itself when
    nothing had to change."""
    if type(value) is str:
        return clean_text(value, limit)
    if isinstance(value, list | tuple):
        items = [clean_value(v, limit) for v in value]
        return value if all(a is b for a, b in zip(items, value, strict=True)) else items
    if isinstance(value, Mapping):
        return clean_attributes(value, limit)
    if isinstance(value, str):  # a str subclass
        return clean_text(str(value), limit)
    return value


def _key(key: Any) -> tuple[str, bool]:
    """A key's cleaned form and whether it looks secret (remembered)."""
    found = _KEYS.get(key)
    if found is None:
        text = fix_surrogates(key) if type(key) is str else str(key)
        found = (key if text == key else text, is_secret_key(text))
        if len(_KEYS) >= _MEMO_SIZE:
            _KEYS.clear()
        _KEYS[key] = found
    return found


_PLAIN: Final = (int, float, bool, type(None))


def clean_attributes(attrs: Mapping[str, Any], limit: int | None = DEFAULT_VALUE_LIMIT) -> Mapping[str, Any]:
    """Attributes with keys made valid UTF-8, every value under a secret-looking key replaced by
    ``[REDACTED]`` (booleans and empty values stay) and every other value cleaned (:func:`clean_value`).
    Returns ``attrs`` itself (not a copy) when nothing had to change."""
    memo = _memo(limit)
    keys = _KEYS
    out: dict[str, Any] | None = None
    i = 0
    for key, value in attrs.items():
        found = keys.get(key)
        new_key, secret = _key(key) if found is None else found
        kind = type(value)
        if secret and value is not None and value != "" and kind is not bool:
            new_value: Any = REDACTED
        elif kind is str:
            hit = memo.get(value) if value else _SAME
            new_value = _clean_new(value, limit, memo) if hit is None else value if hit is _SAME else hit
        elif kind in _PLAIN:
            new_value = value
        else:
            new_value = clean_value(value, limit)
        if out is None:
            if new_key is key and new_value is value:
                i += 1
                continue
            out = dict(islice(attrs.items(), i))
        out[new_key] = new_value
    return attrs if out is None else out


# --------------------------------------------------------------------------------------------------
# Spans leaving through the SDK's exporters
# --------------------------------------------------------------------------------------------------

_resources: dict[int, tuple[Resource, Resource]] = {}


def _clean_resource(resource: Resource, limit: int | None) -> Resource:
    hit = _resources.get(id(resource))
    if hit is not None and hit[0] is resource:
        return hit[1]
    attrs = clean_attributes(resource.attributes, limit)
    cleaned = resource if attrs is resource.attributes else Resource(dict(attrs), resource.schema_url)
    if len(_resources) > 64:
        _resources.clear()
    _resources[id(resource)] = (resource, cleaned)
    return cleaned


def clean_span(span: ReadableSpan, limit: int | None = DEFAULT_VALUE_LIMIT) -> ReadableSpan:
    """An ended SDK span with every text cleaned (name, attributes, events, status description, resource),
    as :func:`clean_text` says; ``span`` itself when nothing had to change."""
    name = clean_text(span.name, NAME_LIMIT)
    attrs = span.attributes or {}
    new_attrs = clean_attributes(attrs, limit)
    events = list(span.events)
    changed_events = False
    for i, event in enumerate(events):
        event_name = clean_text(event.name, NAME_LIMIT)
        event_attrs = event.attributes or {}
        new_event_attrs = clean_attributes(event_attrs, limit)
        if event_name is not event.name or new_event_attrs is not event_attrs:
            events[i] = Event(event_name, dict(new_event_attrs), event.timestamp)
            changed_events = True
    status = span.status
    description = status.description
    if description:
        new_description = clean_text(description, limit)
        if new_description is not description:
            status = Status(status.status_code, new_description)
    resource = _clean_resource(span.resource, limit)
    if (
        name is span.name
        and new_attrs is attrs
        and not changed_events
        and status is span.status
        and resource is span.resource
    ):
        return span
    return ReadableSpan(
        name=name,
        context=span.context,
        parent=span.parent,
        resource=resource,
        attributes=dict(new_attrs),
        events=events,
        links=span.links,
        kind=span.kind,
        status=status,
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )


class CleanExporter(SpanExporter):
    """Wraps a span exporter so that what it sends is cleaned as the live view is (:func:`clean_span`):
    secrets redacted (also in exception messages and stack traces), valid UTF-8 (a lone surrogate would
    fail the whole batch in the protobuf encoder), values cut at ``limit`` characters."""

    def __init__(self, exporter: SpanExporter, limit: int | None = DEFAULT_VALUE_LIMIT) -> None:
        self.exporter = exporter
        self.limit = limit

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        cleaned = []
        for span in spans:
            try:
                cleaned.append(clean_span(span, self.limit))
            except Exception:  # noqa: BLE001 - a span that cannot be cleaned is not sent as it is
                problems.warning("clean-span", "otelflow: could not clean a span for export; dropped", exc_info=True)
        return self.exporter.export(cleaned)

    def shutdown(self) -> None:
        self.exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self.exporter.force_flush(timeout_millis)
