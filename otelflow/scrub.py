"""Redaction and truncation of captured values (function inputs and outputs, log messages)."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = ["REDACTED", "CapturedValue", "capture", "is_secret_key", "scrub", "scrub_text", "truncate"]

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
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----"),
)
_URL: Final = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s\"'<>]+")
_KEY_VALUE_TEXT: Final = re.compile(
    r"(?i)\b(password|passwd|pwd|secret|token|api[-_]?key|apikey|access[-_]?token|client[-_]?secret)"
    r"(\s*[=:]\s*)([^\s,;&\"']+)"
)
_MAX_DEPTH: Final = 20
_CAMEL: Final = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


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


def scrub_text(text: str) -> str:
    """Redact secrets inside free text: URL credentials and secret query values, tokens, ``key=value``."""
    if "://" in text:
        text = _URL.sub(_scrub_url, text)
    for pattern in _SECRET_TEXT:
        text = pattern.sub(REDACTED, text)
    return _KEY_VALUE_TEXT.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)


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
