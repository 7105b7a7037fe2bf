"""When a running span counts as stalled: quiet for too long, or running far past what its name usually takes.

A span is *quiet* while nothing of it moves: no update, no lifecycle event (progress, log, retry...), no child
starting. The live state measures quiet time on the viewer's clock, from when a change of the span arrived.

:class:`StallRule` says which spans it watches (kinds, names, workflows, services) and after how long they stall;
:class:`StallPolicy` holds the rules (always with a default: any span quiet for :data:`DEFAULT_QUIET_S`) and the
p95 durations the history knows per (kind, name), and answers :meth:`StallPolicy.check` for one span.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from otelflow import attributes as A
from otelflow.naming import bare_name
from otelflow.records import SpanRecord, format_time

__all__ = [
    "DEFAULT_QUIET_S",
    "MIN_SAMPLES",
    "STALL_ABANDONED",
    "STALL_ENDED",
    "STALL_MOVED",
    "STALL_QUIET",
    "STALL_SLOW",
    "Stall",
    "StallPolicy",
    "StallRule",
    "agent_name",
    "workflow_name",
]

DEFAULT_QUIET_S: Final = 300.0
# why a span stalled (``Stall.reason``)
STALL_QUIET: Final = "quiet"  # nothing of it moved for a while
STALL_SLOW: Final = "slow"  # it has run far past the p95 of its name
# why a stall cleared (``span.unstalled``)
STALL_MOVED: Final = "moved"  # an update, a lifecycle event, a child starting or ending (quiet stalls only)
STALL_ENDED: Final = "ended"
STALL_ABANDONED: Final = "abandoned"
MIN_SAMPLES: Final = 20  # ended spans of a name before its p95 says what "slow" is


def workflow_name(run_name: str, root: SpanRecord | None = None) -> str:
    """The workflow a run is of: ``gen_ai.workflow.name`` of its root span, else its name without the operation."""
    value = root.attributes.get(A.GEN_AI_WORKFLOW_NAME) if root is not None else None
    return value if isinstance(value, str) and value else bare_name(run_name)


def agent_name(rec: SpanRecord) -> str | None:
    """An agent span's name as rules and alerts say it (``gen_ai.agent.name``, else the span name without the
    operation); ``None`` for other kinds."""
    if rec.kind != A.KIND_AGENT:
        return None
    value = rec.attributes.get(A.GEN_AI_AGENT_NAME)
    return value if isinstance(value, str) and value else bare_name(rec.name)


@dataclass(frozen=True, slots=True)
class StallRule:
    """Spans matching every given filter stall when quiet for ``quiet_s`` or running past ``slow_factor`` x the
    p95 of their (kind, name). Filters are sets of accepted values; ``None`` accepts all."""

    name: str = "default"
    quiet_s: float | None = DEFAULT_QUIET_S
    slow_factor: float | None = None
    kinds: frozenset[str] | None = None
    names: frozenset[str] | None = None  # span names, or agent names (with or without the operation)
    workflows: frozenset[str] | None = None
    services: frozenset[str] | None = None

    def matches(self, rec: SpanRecord, workflow: str) -> bool:
        if self.kinds is not None and rec.kind not in self.kinds:
            return False
        if self.names is not None and rec.name not in self.names and bare_name(rec.name) not in self.names:
            return False
        if self.workflows is not None and workflow not in self.workflows:
            return False
        return self.services is None or rec.service in self.services

    def check(
        self,
        rec: SpanRecord,
        workflow: str,
        quiet_since_ns: int,
        now_ns: int,
        p95_ms: Mapping[tuple[str, str], tuple[int, float]],
    ) -> Stall | None:
        """Whether this rule finds ``rec`` (running, quiet since ``quiet_since_ns``) stalled at ``now_ns``, given
        the p95 durations per (kind, name) with their sample counts."""
        if not self.matches(rec, workflow):
            return None
        quiet = (now_ns - quiet_since_ns) / 1e9
        if self.quiet_s is not None and quiet >= self.quiet_s:
            return Stall(STALL_QUIET, quiet, quiet_since_ns, self.name, self.quiet_s)
        if self.slow_factor is not None:
            known = p95_ms.get((rec.kind, rec.name))
            if known is not None and known[0] >= MIN_SAMPLES:
                running, limit = (now_ns - rec.start_time_ns) / 1e9, self.slow_factor * known[1] / 1000
                if running > limit:
                    return Stall(STALL_SLOW, running, quiet_since_ns, self.name, limit, known[1])
        return None


@dataclass(frozen=True, slots=True)
class Stall:
    """Why a span is stalled: ``quiet`` (nothing moved for ``seconds``) or ``slow`` (running for ``seconds``,
    more than ``limit_s`` = the rule's factor x ``p95_ms``), by which rule, and since when it was quiet."""

    reason: str
    seconds: float
    since_ns: int
    rule: str
    limit_s: float
    p95_ms: float | None = None

    def to_dict(self) -> dict[str, object]:
        return {
            "reason": self.reason,
            "seconds": round(self.seconds, 3),
            "since": format_time(self.since_ns),
            "rule": self.rule,
            "limit_s": round(self.limit_s, 3),
            "p95_ms": self.p95_ms,
        }


class StallPolicy:
    """The stall rules in force, and the p95 durations they compare against (see the module docstring)."""

    def __init__(self, rules: Iterable[StallRule] = (), *, default_quiet_s: float | None = DEFAULT_QUIET_S) -> None:
        self.rules: tuple[StallRule, ...] = tuple(rules)
        if default_quiet_s is not None:
            self.rules += (StallRule("default", quiet_s=default_quiet_s),)
        self.p95_ms: dict[tuple[str, str], tuple[int, float]] = {}  # (kind, name) -> (samples, p95 ms)

    def set_durations(self, stats: Iterable[Mapping[str, object]]) -> None:
        """Take the per-name figures of :meth:`viewer.history.HistoryReader.stats_by_name`."""
        p95: dict[tuple[str, str], tuple[int, float]] = {}
        for row in stats:
            count, value = row.get("count"), row.get("p95_ms")
            if isinstance(count, int) and isinstance(value, int | float):
                p95[(str(row.get("kind")), str(row.get("name")))] = (count, float(value))
        self.p95_ms = p95

    def check(self, rec: SpanRecord, workflow: str, quiet_since_ns: int, now_ns: int) -> Stall | None:
        """Whether ``rec`` (running, quiet since ``quiet_since_ns``) is stalled at ``now_ns``, and why: the first
        rule that says so."""
        for rule in self.rules:
            why = rule.check(rec, workflow, quiet_since_ns, now_ns, self.p95_ms)
            if why is not None:
                return why
        return None
