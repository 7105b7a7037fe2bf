"""A shared history (PostgreSQL behind viewer replicas) is written by the replica that leads; the others stand by.

Every replica turns the same broker entries into the same rows (:class:`viewer.history.Recorder`). The leading
one writes them, each entry's rows with the entry's number (the store's ``position`` commits with them); the
others keep the rows of each entry in a :class:`Standby` until the store's position passes it. A replica that
comes to lead writes what it kept beyond the store's position first, so that a leader's death loses no entry
(an entry written twice, by the old leader's last commit and the new one, is stored once: its rows are keyed).
What a standby keeps is bounded (``max_rows``); beyond it the oldest entries are forgotten and counted.

:class:`SharedHistory` wires it: a replica starts reading the broker after the store's position, and the leading
one lets rows go (counted) while the store's backlog is full — the broker holds the requests, so nothing is
refused — then, once the store takes rows again, writes every run of its live state again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from otelflow.records import SpanRecord

from .protocols import HistoryWriter
from .recorder import Recorder

if TYPE_CHECKING:
    from ..live import Hub
    from ..live.backends import RedisBackend
    from .postgres import PostgresHistory

__all__ = ["SharedHistory", "Standby"]

log = logging.getLogger("otelflow.viewer")

_Call = tuple[str, tuple[Any, ...]]


class Standby:
    """The rows of recent entries, kept by a replica that does not lead (a :class:`HistoryWriter` that writes
    nothing)."""

    full = False

    def __init__(self, max_rows: int = 500_000) -> None:
        self.max_rows = max_rows
        self.entries: deque[tuple[int, list[_Call]]] = deque()
        self.rows = 0
        self.forgotten = 0
        self._open: list[_Call] = []

    @contextlib.contextmanager
    def batch(self, *, droppable: bool = False, journal_end: int = 0) -> Iterator[None]:
        yield
        if journal_end:
            self.entries.append((journal_end, self._open))
            self._open = []
            while self.rows > self.max_rows and self.entries:
                _, calls = self.entries.popleft()
                self.rows -= len(calls)
                self.forgotten += 1
                if self.forgotten == 1 or self.forgotten % 1000 == 0:
                    log.warning(
                        "a standby replica forgot %d broker entries the shared history had not written yet",
                        self.forgotten,
                    )

    def _keep(self, name: str, *args: Any) -> None:
        self._open.append((name, args))
        self.rows += 1

    def put_span(self, rec: SpanRecord) -> None:
        self._keep("put_span", rec)

    def put_run(self, summary: Mapping[str, Any], summary_json: str | None = None) -> None:
        self._keep("put_run", summary, summary_json)

    def put_event(self, event_id: str, trace_id: str, type_: str, data: str | None, span_id: str | None = None) -> None:
        self._keep("put_event", event_id, trace_id, type_, data, span_id)

    def put_alert(self, alert: Mapping[str, Any]) -> None:
        self._keep("put_alert", alert)

    def health(self) -> tuple[str, str | None]:
        return ("ok", None)

    def forget(self, position: int) -> None:
        """Drop the entries the store holds (numbered up to ``position``)."""
        entries = self.entries
        while entries and entries[0][0] <= position:
            self.rows -= len(entries.popleft()[1])

    def hand_over(self, store: HistoryWriter, position: int) -> int:
        """Write to ``store`` what it does not hold yet (entries after ``position``); returns how many entries."""
        self.forget(position)
        count = 0
        for n, calls in self.entries:
            with store.batch(journal_end=n):
                for name, args in calls:
                    getattr(store, name)(*args)
            count += 1
        if self._open:
            with store.batch():
                for name, args in self._open:
                    getattr(store, name)(*args)
        self.entries.clear()
        self._open = []
        self.rows = 0
        return count


class SharedHistory:
    """The history of a replica sharing a broker: written while this replica leads, else kept in a
    :class:`Standby` (see the module docstring); it also restarts the broker's reading where the history ends."""

    def __init__(self, hub: Hub, broker: RedisBackend, store: PostgresHistory, recorder: Recorder) -> None:
        self.hub, self.broker, self.store, self.recorder = hub, broker, store, recorder
        self.standby = Standby()
        recorder.positions = True
        recorder.droppable = True
        recorder.history = self.standby
        broker.on_lead = self.lead
        self._dropped = 0

    async def start(self) -> None:
        """Read the broker from the entry after the last one the store holds."""
        self.broker.start_after = await self.store.position()

    async def lead(self, leading: bool) -> None:
        if leading:
            position = await self.store.position()
            written = self.standby.hand_over(self.store, position)  # no await from here on: nothing comes between
            self.recorder.history = self.store
            if written:
                log.warning("this replica leads now: it wrote %d broker entries the shared history lacked", written)
        else:
            self.standby = Standby()
            self.recorder.history = self.standby

    async def watch(self) -> None:
        """Every 2 s: standing by, forget the rows the store holds by now; leading, write again what the live state
        holds once the store took rows again after dropping some (its backlog was full: it was away too long)."""
        while True:
            await asyncio.sleep(2.0)
            try:
                if self.recorder.history is self.standby:
                    self.standby.forget(await self.store.position())
                elif self.store.dropped_rows > self._dropped and not self.store.full and self.store.failure is None:
                    self._catch_up()
            except Exception:
                log.warning("cannot read the shared history's position; the standby rows wait", exc_info=True)

    def _catch_up(self) -> None:
        lost, self._dropped = self.store.dropped_rows - self._dropped, self.store.dropped_rows
        runs = self.hub.runs()
        with self.store.batch(journal_end=self.broker.last_n):
            for run in runs:
                self.store.put_run(run.to_dict())
                for rec in run.spans.values():
                    self.store.put_span(rec)
        log.warning(
            "the shared history takes rows again after dropping %d while its backlog was full; the %d runs in memory "
            "were written again (events of that time that are not part of a span are not in it)",
            lost,
            len(runs),
        )
