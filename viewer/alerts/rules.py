"""The alert rules file: TOML, read with the standard library, checked field by field.

```toml
[[rule]]
name = "agent stuck"
when = "stalled"          # stalled | run_failed | run_slow | error_rate
quiet_s = 60              # stalled: no event, progress, update or child for this long
slow_factor = 3           # stalled, run_slow: running past this many times the p95 of its name
kind = ["agent", "tool"]  # filters (a string or a list): kind, workflow, agent, service

[[rule]]
name = "run failed"
when = "run_failed"
workflow = "content_pipeline"

[[action]]
webhook = "http://127.0.0.1:9000/hook"   # JSON body; format = "slack" for Slack-compatible incoming hooks
```

Other fields: ``over_s`` (run_slow: longer than this), ``threshold``, ``window_s``, ``min_count`` and ``per``
(error_rate: the share of failures over the last ``window_s`` among at least ``min_count`` ended runs of a
workflow, ``per = "workflow"``, or ended spans of an agent, ``per = "agent"``), ``max_per_minute`` (a rule fires
at most this often; the rest are counted as suppressed). An action takes ``webhook``, ``format`` (``json`` or
``slack``), ``timeout_s``, ``retries`` and ``headers``.

A problem raises :class:`AlertConfigError` naming the file, the line and the field.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from ..live.stall import StallRule

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

__all__ = ["WHENS", "Action", "AlertConfig", "AlertConfigError", "Rule", "load_rules", "parse_rules"]

STALLED: Final = "stalled"
RUN_FAILED: Final = "run_failed"
RUN_SLOW: Final = "run_slow"
ERROR_RATE: Final = "error_rate"
WHENS: Final = (STALLED, RUN_FAILED, RUN_SLOW, ERROR_RATE)
_FILTERS: Final = ("kind", "workflow", "agent", "service")
_RULE_FIELDS: Final = {
    STALLED: {"quiet_s", "slow_factor"},
    RUN_FAILED: set(),
    RUN_SLOW: {"over_s", "slow_factor"},
    ERROR_RATE: {"threshold", "window_s", "min_count", "per"},
}
_COMMON: Final = {"name", "when", "max_per_minute", *_FILTERS}
_ACTION_FIELDS: Final = {"webhook", "format", "timeout_s", "retries", "headers"}


class AlertConfigError(ValueError):
    """The rules file cannot be used; the message names the file, the line and the field."""


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    when: str
    kinds: frozenset[str] | None = None
    workflows: frozenset[str] | None = None
    agents: frozenset[str] | None = None
    services: frozenset[str] | None = None
    quiet_s: float | None = None
    slow_factor: float | None = None
    over_s: float | None = None
    threshold: float = 0.5
    window_s: float = 300.0
    min_count: int = 5
    per: str = "workflow"
    max_per_minute: int = 20

    def stall_rule(self) -> StallRule:
        """What the live state needs to flag the spans this (``stalled``) rule watches."""
        return StallRule(
            self.name,
            quiet_s=self.quiet_s,
            slow_factor=self.slow_factor,
            kinds=self.kinds,
            names=self.agents,
            workflows=self.workflows,
            services=self.services,
        )


@dataclass(frozen=True, slots=True)
class Action:
    webhook: str
    format: str = "json"
    timeout_s: float = 5.0
    retries: int = 5
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class AlertConfig:
    rules: tuple[Rule, ...] = ()
    actions: tuple[Action, ...] = ()

    def stall_rules(self) -> tuple[StallRule, ...]:
        return tuple(r.stall_rule() for r in self.rules if r.when == STALLED)


def load_rules(path: str | os.PathLike[str]) -> AlertConfig:
    """Read and check a rules file; raises :class:`AlertConfigError`."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise AlertConfigError(f"{path}: cannot read the alert rules: {exc}") from None
    return parse_rules(text, str(path))


def parse_rules(text: str, source: str = "<rules>") -> AlertConfig:
    """Check the TOML ``text`` of a rules file (``source`` names it in errors)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise AlertConfigError(f"{source}: not valid TOML: {exc}") from None
    where = _Locator(text, source)
    unknown = sorted(set(data) - {"rule", "action"})
    if unknown:
        raise AlertConfigError(
            f"{where.at(unknown[0], None, None)}unknown table {unknown[0]!r}: use [[rule]] and [[action]]"
        )
    rules = data.get("rule", [])
    actions = data.get("action", [])
    if not isinstance(rules, list) or not isinstance(actions, list):
        raise AlertConfigError(f"{source}: write rules as [[rule]] and actions as [[action]]")
    parsed = tuple(_rule(r, i, where) for i, r in enumerate(rules))
    names = [r.name for r in parsed]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise AlertConfigError(f"{where.at('rule', i, 'name')}field 'name': two rules are named {name!r}")
    return AlertConfig(parsed, tuple(_action(a, i, where) for i, a in enumerate(actions)))


class _Locator:
    """Finds the line of the ``index``-th ``[[table]]`` of the file, or of a field inside it."""

    def __init__(self, text: str, source: str) -> None:
        self.lines = text.splitlines()
        self.source = source

    def at(self, table: str, index: int | None, field: str | None) -> str:
        header = re.compile(rf"^\s*\[\[\s*{re.escape(table)}\s*\]\]")
        starts = [n for n, line in enumerate(self.lines) if header.match(line)]
        if index is None or index >= len(starts):
            plain = re.compile(rf"^\s*\[?\s*{re.escape(table)}\b")
            found = next((n for n, line in enumerate(self.lines) if plain.match(line)), None)
            return f"{self.source}:{found + 1}: " if found is not None else f"{self.source}: "
        line = starts[index]
        if field is not None:
            end = next((n for n in range(line + 1, len(self.lines)) if self.lines[n].lstrip().startswith("[")), None)
            key = re.compile(rf"^\s*{re.escape(field)}\s*=")
            line = next((n for n in range(line, end or len(self.lines)) if key.match(self.lines[n])), line)
        return f"{self.source}:{line + 1}: "


def _rule(raw: Any, index: int, where: _Locator) -> Rule:
    if not isinstance(raw, Mapping):
        raise AlertConfigError(f"{where.at('rule', index, None)}a [[rule]] must be a table")

    def fail(field: str, message: str) -> AlertConfigError:
        label = f"rule {raw.get('name')!r}" if isinstance(raw.get("name"), str) else f"rule #{index + 1}"
        return AlertConfigError(f"{where.at('rule', index, field)}{label}: field {field!r} {message}")

    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        raise fail("name", "is required: a non-empty string")
    when = raw.get("when")
    if when not in WHENS:
        raise fail("when", f"must be one of {', '.join(WHENS)}; got {when!r}")
    allowed = _COMMON | _RULE_FIELDS[when]
    for key in raw:
        if key not in allowed:
            raise fail(key, f"is not known for when = {when!r} (known: {', '.join(sorted(allowed))})")
    values: dict[str, Any] = {"name": name.strip(), "when": when}
    for key, attr in (("kind", "kinds"), ("workflow", "workflows"), ("agent", "agents"), ("service", "services")):
        if key in raw:
            values[attr] = _names(raw[key], lambda m, k=key: fail(k, m))
    for key in ("quiet_s", "slow_factor", "over_s", "window_s"):
        if key in raw:
            values[key] = _positive(raw[key], lambda m, k=key: fail(k, m))
    if "threshold" in raw:
        value = raw["threshold"]
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
            raise fail("threshold", f"must be a share of failures, 0 < threshold <= 1; got {value!r}")
        values["threshold"] = float(value)
    for key in ("min_count", "max_per_minute"):
        if key in raw:
            value = raw[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise fail(key, f"must be a whole number >= 1; got {value!r}")
            values[key] = value
    if "per" in raw and raw["per"] not in ("workflow", "agent"):
        raise fail("per", f"must be 'workflow' or 'agent'; got {raw['per']!r}")
    if "per" in raw:
        values["per"] = raw["per"]
    if when == STALLED and "quiet_s" not in values and "slow_factor" not in values:
        raise fail("quiet_s", "or 'slow_factor' is needed for when = 'stalled'")
    if when == RUN_SLOW and "over_s" not in values and "slow_factor" not in values:
        raise fail("over_s", "or 'slow_factor' is needed for when = 'run_slow'")
    if when == ERROR_RATE and "threshold" not in values:
        raise fail("threshold", "is needed for when = 'error_rate'")
    return Rule(**values)


def _names(value: Any, fail: Any) -> frozenset[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(v, str) and v for v in items):
        raise fail(f"must be a non-empty string or a list of them; got {value!r}")
    return frozenset(items)


def _positive(value: Any, fail: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise fail(f"must be a number > 0; got {value!r}")
    return float(value)


def _action(raw: Any, index: int, where: _Locator) -> Action:
    if not isinstance(raw, Mapping):
        raise AlertConfigError(f"{where.at('action', index, None)}an [[action]] must be a table")

    def fail(field: str, message: str) -> AlertConfigError:
        return AlertConfigError(f"{where.at('action', index, field)}action #{index + 1}: field {field!r} {message}")

    for key in raw:
        if key not in _ACTION_FIELDS:
            raise fail(key, f"is not known (known: {', '.join(sorted(_ACTION_FIELDS))})")
    url = raw.get("webhook")
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise fail("webhook", f"must be an http(s) URL; got {url!r}")
    fmt = raw.get("format", "json")
    if fmt not in ("json", "slack"):
        raise fail("format", f"must be 'json' or 'slack'; got {fmt!r}")
    timeout = _positive(raw["timeout_s"], lambda m: fail("timeout_s", m)) if "timeout_s" in raw else 5.0
    retries = raw.get("retries", 5)
    if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= 20:
        raise fail("retries", f"must be a whole number 0..20; got {retries!r}")
    headers = raw.get("headers", {})
    if not isinstance(headers, Mapping) or not all(isinstance(v, str) for v in headers.values()):
        raise fail("headers", "must be a table of strings")
    return Action(str(url), fmt, timeout, retries, tuple((str(k), v) for k, v in headers.items()))
