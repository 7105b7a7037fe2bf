"""otelflow's live viewer server: OTLP in, Server-Sent Events and WebSocket out, SQLite history."""

from __future__ import annotations

from .app import ViewerConfigError, create_app, serve
from .hub import Filters, Hub
from .store import Store, StoreError

__all__ = ["Filters", "Hub", "Store", "StoreError", "ViewerConfigError", "create_app", "serve"]
