"""Backends: what carries ingested batches to the live state, in one order for every viewer that shares it.

The embedded default (:class:`MemoryBackend`) hands each batch straight back, in this process. A backend on a
broker (Redis Streams, say) would carry the batches of every replica through the broker, so that each replica
applies the same batches in the same order and so derives the same runs, changes and event ids; time-based
decisions (:meth:`viewer.live.state.LiveState.due`) are then published by one replica only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from ..state import Batch
from .memory import MemoryBackend
from .redis import BrokerError, RedisBackend

__all__ = ["Backend", "BrokerError", "Deliver", "MemoryBackend", "RedisBackend"]

Deliver = Callable[[Batch], None]


class Backend(Protocol):
    """Publishes batches and delivers them, in one global order, to the function given to :meth:`bind`."""

    def bind(self, deliver: Deliver) -> None:
        """Where batches go once ordered (called once, before :meth:`start`)."""

    def publish(self, batch: Batch) -> None:
        """Hand a batch on; it comes back through ``deliver`` (at once or later). Never blocks the loop."""

    async def start(self) -> None:
        """Start delivering."""

    async def stop(self) -> None:
        """Stop delivering; what was published and not delivered may be dropped."""

    @property
    def leading(self) -> bool:
        """Whether this viewer takes the time-based decisions (one viewer of those sharing the backend)."""
