"""The live side: a backend orders ingested batches, the live state folds them into runs, the broadcast tells."""

from __future__ import annotations

from .backends import Backend, MemoryBackend
from .broadcast import Broadcast, Filters, Subscription, Tap
from .events import Event
from .hub import INGEST_SLICE, Hub
from .state import Batch, Change, LiveState, RunState

__all__ = [
    "INGEST_SLICE",
    "Backend",
    "Batch",
    "Broadcast",
    "Change",
    "Event",
    "Filters",
    "Hub",
    "LiveState",
    "MemoryBackend",
    "RunState",
    "Subscription",
    "Tap",
]
