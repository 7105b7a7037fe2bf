"""otelflow's live viewer server: OTLP in, Server-Sent Events and WebSocket out, SQLite history."""

from __future__ import annotations

from viewer.app import ViewerConfigError, create_app, serve
from viewer.hub import Filters, Hub
from viewer.store import Store, StoreError

__all__ = ["Filters", "Hub", "Store", "StoreError", "ViewerConfigError", "create_app", "serve"]
