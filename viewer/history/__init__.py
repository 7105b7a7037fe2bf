"""History: what the viewer keeps of runs, spans and events, behind a writer and a reader protocol.

The embedded default is SQLite (:class:`SqliteHistory`, one file beside its intake log); another store (a
shared PostgreSQL for viewer replicas) implements the same two protocols (:mod:`viewer.history.protocols`).
:class:`Recorder` turns the broadcast's events into the writer's rows, whatever the store.
"""

from __future__ import annotations

from .journal import Journal, JournalError
from .protocols import HistoryReader, HistoryWriter, RunQuery
from .recorder import Recorder
from .sqlite import HistoryError, SqliteHistory, default_db_path

__all__ = [
    "HistoryError",
    "HistoryReader",
    "HistoryWriter",
    "Journal",
    "JournalError",
    "Recorder",
    "RunQuery",
    "SqliteHistory",
    "default_db_path",
]
