"""otelflow's live viewer server: OTLP in, Server-Sent Events and WebSocket out, SQLite history.

Installed as ``otelflow.viewer``. The data flow: :mod:`.otlp` decodes, :mod:`.intake` logs and publishes,
:mod:`.live` folds batches into runs and broadcasts events, :mod:`.transports` serve them, :mod:`.history` keeps
them, :mod:`.api` and :mod:`.pages` answer the browser; :mod:`.app` wires it all behind :mod:`.security`.
"""

from __future__ import annotations

from .app import bind_socket, create_app, make_server, serve
from .history import HistoryError, SqliteHistory, default_db_path
from .live import Filters, Hub
from .security import ViewerConfigError, allowed_host, is_loopback

__all__ = [
    "Filters",
    "HistoryError",
    "Hub",
    "SqliteHistory",
    "ViewerConfigError",
    "allowed_host",
    "bind_socket",
    "create_app",
    "default_db_path",
    "is_loopback",
    "make_server",
    "serve",
]
