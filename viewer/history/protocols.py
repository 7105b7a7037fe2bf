"""The two protocols a history store implements: a writer that never blocks and a reader for the API."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from otelflow.records import SpanRecord

__all__ = ["HistoryReader", "HistoryWriter", "RunQuery"]


@dataclass(frozen=True, slots=True)
class RunQuery:
    """Which runs to list, newest first: any of ``status``, named ``name`` (or with that ``otelflow.run.id``),
    of ``service``; ``limit`` of them from ``offset``, or after the run ``after`` (a keyset cursor: the
    ``(start_ns, trace_id)`` of the last run of the previous page, which costs the same on every page)."""

    status: tuple[str, ...] = ()
    name: str | None = None
    service: str | None = None
    limit: int = 50
    offset: int = 0
    after: tuple[int, str] | None = None


class HistoryWriter(Protocol):
    """Keeps rows; nothing here blocks the loop. While it cannot write, it keeps them (``health`` says so)."""

    def batch(self, *, droppable: bool = False, journal_end: int = 0) -> AbstractContextManager[None]:
        """Rows put inside go to the store together (``droppable``: may be dropped while the backlog is full)."""

    def put_span(self, rec: SpanRecord) -> None:
        """A span's latest snapshot."""

    def put_run(self, summary: Mapping[str, Any], summary_json: str | None = None) -> None:
        """A run's summary."""

    def put_event(self, event_id: str, trace_id: str, type_: str, data: str | None, span_id: str | None = None) -> None:
        """An event of a run: its envelope JSON; or, with ``span_id``, span-referenced events rebuilt from their
        span on reading (``data``: what the span's row does not tell, see :mod:`viewer.history.rows`)."""

    def put_alert(self, alert: Mapping[str, Any]) -> None:
        """An alert's latest state (its ``id`` names it)."""

    @property
    def full(self) -> bool:
        """Too much waits to be written: new spans must be refused until it drains."""

    def health(self) -> tuple[str, str | None]:
        """``("ok", None)`` or ``("degraded", why)``."""


class HistoryReader(Protocol):
    """Answers the REST API and restores live runs after a restart."""

    async def resolve(self, key: str) -> str | None:
        """The trace id of a stored run named by trace id or ``otelflow.run.id``."""

    async def list_runs(self, query: RunQuery) -> tuple[list[dict[str, Any]], int]:
        """The runs ``query`` asks for, and how many match it."""

    async def get_run(self, trace_id: str) -> tuple[dict[str, Any] | None, list[SpanRecord]]:
        """A run's summary and its spans."""

    async def events(self, trace_id: str, after: str | None, limit: int = 10_000) -> list[dict[str, Any]] | None:
        """A run's stored events after ``after`` (``None``: that event is unknown)."""

    async def stats_by_name(self, kinds: Iterable[str], since_ns: int | None = None) -> list[dict[str, Any]]:
        """Per (kind, name): count, p50/p95 duration in ms, error rate (of the hours from ``since_ns``'s on)."""

    async def load_live(self) -> tuple[list[dict[str, Any]], list[SpanRecord]]:
        """Runs still running when the viewer last stopped, and their spans."""

    async def alerts(self, status: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
        """Stored alerts, newest first (``status``: ``open`` or ``resolved``)."""
