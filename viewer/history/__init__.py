"""History: what the viewer keeps of runs, spans and events, behind a writer and a reader protocol.

The embedded default is SQLite (:class:`SqliteHistory`, one file beside its intake log); a shared PostgreSQL for
viewer replicas (:class:`PostgresHistory`) implements the same two protocols (:mod:`viewer.history.protocols`)
and the same surface; :data:`History` is either.
:class:`Recorder` turns the broadcast's events into the writer's rows, whatever the store.
"""

from __future__ import annotations

import os
from typing import TypeAlias

from .journal import Journal, JournalError
from .postgres import PostgresHistory, is_postgres_url
from .protocols import HistoryReader, HistoryWriter, RunQuery
from .recorder import Recorder
from .sqlite import SqliteHistory, default_db_path
from .store import HistoryError

History: TypeAlias = SqliteHistory | PostgresHistory
"""A history store: the embedded SQLite one, or the PostgreSQL one that replicas share."""


def history_for(
    db: str | os.PathLike[str],
    *,
    retention_days: float | None = 30.0,
    max_runs: int | None = 10_000,
    max_backlog_bytes: int = 128 * 1024 * 1024,
    max_db_bytes: int | None = None,
    create_folder: bool = False,
) -> History:
    """The store ``db`` names, not opened: a :class:`PostgresHistory` for a ``postgresql://`` (or ``postgres://``)
    URL, else a :class:`SqliteHistory` (``max_db_bytes`` and ``create_folder`` are SQLite's)."""
    if is_postgres_url(db):
        return PostgresHistory(
            str(db), retention_days=retention_days, max_runs=max_runs, max_backlog_bytes=max_backlog_bytes
        )
    return SqliteHistory(
        db,
        retention_days=retention_days,
        max_runs=max_runs,
        max_backlog_bytes=max_backlog_bytes,
        max_db_bytes=max_db_bytes,
        create_folder=create_folder,
    )


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
    "history_for",
    "is_postgres_url",
]
