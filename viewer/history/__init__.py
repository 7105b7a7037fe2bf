"""History: what the viewer keeps of runs, spans and events, behind a writer and a reader protocol.

The embedded default is SQLite (:class:`SqliteHistory`, one file beside its intake log); a shared PostgreSQL for
viewer replicas (:class:`PostgresHistory`) implements the same two protocols (:mod:`viewer.history.protocols`)
and the same surface; :data:`History` is either.
:class:`Recorder` turns the broadcast's events into the writer's rows, whatever the store.
"""

from __future__ import annotations

from typing import TypeAlias

from .journal import Journal, JournalError
from .postgres import PostgresHistory, is_postgres_url
from .protocols import HistoryReader, HistoryWriter, RunQuery
from .recorder import Recorder
from .sqlite import SqliteHistory, default_db_path
from .store import HistoryError

History: TypeAlias = SqliteHistory | PostgresHistory
"""A history store: the embedded SQLite one, or the PostgreSQL one that replicas share."""

__all__ = [
    "History",
    "HistoryError",
    "HistoryReader",
    "HistoryWriter",
    "Journal",
    "JournalError",
    "PostgresHistory",
    "Recorder",
    "RunQuery",
    "SqliteHistory",
    "default_db_path",
    "is_postgres_url",
]
