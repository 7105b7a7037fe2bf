"""Totals of model calls (kind ``llm``) for a run and below each span: calls, tokens, estimated cost."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from otelflow import attributes as A
from otelflow.records import SpanRecord

__all__ = ["LlmTotals", "llm_by_span"]

_ENDED: Final = (A.STATUS_OK, A.STATUS_ERROR, A.STATUS_CANCELLED)


@dataclass(slots=True)
class LlmTotals:
    """Totals of model calls that ended: calls, tokens, estimated cost (of the calls whose cost is known; those
    whose model has no price are counted apart)."""

    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = None
    unpriced_calls: int = 0

    def add(self, rec: SpanRecord) -> None:
        llm = rec.llm()
        if llm is None:
            return
        self.add_view(llm)

    def add_view(self, llm: Mapping[str, Any]) -> None:
        self.calls += 1
        self.input_tokens += llm.get("input_tokens") or 0
        self.output_tokens += llm.get("output_tokens") or 0
        cost = llm.get("cost_usd")
        if cost is None:
            self.unpriced_calls += 1
        else:
            self.cost_usd = (self.cost_usd or 0.0) + cost

    def to_dict(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cost_usd": round(self.cost_usd, 10) if self.cost_usd is not None else None,
            "cost_estimate": True,
            "unpriced_calls": self.unpriced_calls,
        }


def llm_by_span(spans: Iterable[SpanRecord]) -> dict[str, dict[str, Any]]:
    """Per span id, the totals (:class:`LlmTotals`) of the model calls that ended below it, at any depth; only
    spans with such calls are in it; model calls themselves are left out."""
    spans = list(spans)
    parents = {s.span_id: s.parent_span_id for s in spans}
    totals: dict[str, LlmTotals] = {}
    for rec in spans:
        if rec.kind != A.KIND_LLM or rec.status not in _ENDED:
            continue
        view = rec.llm()
        if view is None:
            continue
        seen = {rec.span_id}
        parent = rec.parent_span_id
        while parent is not None and parent in parents and parent not in seen:
            seen.add(parent)
            totals.setdefault(parent, LlmTotals()).add_view(view)
            parent = parents[parent]
    kinds = {s.span_id: s.kind for s in spans}
    return {span_id: t.to_dict() for span_id, t in totals.items() if kinds.get(span_id) != A.KIND_LLM}
