"""Transports: the broadcast's events to clients, over SSE, WebSocket and the live-flow compat protocol."""

from __future__ import annotations

from .liveflow import LiveFlowSession
from .sse import SSE_HEADERS, SseEndpoint, query_filters, sse_stream, stream_route
from .ws import WsSession

__all__ = ["SSE_HEADERS", "LiveFlowSession", "SseEndpoint", "WsSession", "query_filters", "sse_stream", "stream_route"]
