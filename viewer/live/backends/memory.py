"""The in-memory backend: one viewer process; a published batch is delivered at once, in the caller's turn."""

from __future__ import annotations

from collections.abc import Callable

from ..state import Batch

__all__ = ["MemoryBackend"]


class MemoryBackend:
    """Delivers each batch as it is published (the order of publishing is the order)."""

    leading = True  # the only viewer

    def __init__(self) -> None:
        self._deliver: Callable[[Batch], None] | None = None

    def bind(self, deliver: Callable[[Batch], None]) -> None:
        self._deliver = deliver

    def publish(self, batch: Batch) -> None:
        if self._deliver is None:
            raise RuntimeError("the backend is not bound to a live state")
        self._deliver(batch)

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass
