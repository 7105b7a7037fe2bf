"""A send deadline shared by the stream writers: a client that stops reading is cut, not waited for."""

from __future__ import annotations

import asyncio
import sys

from starlette.types import Message, Send

__all__ = ["Deadline"]


class Deadline:
    """Cancels the current task when a send takes longer than allowed, or when the client is cut."""

    __slots__ = ("deadline_s", "fired", "in_send", "loop", "task")

    def __init__(self, deadline_s: float) -> None:
        self.deadline_s = deadline_s
        self.task = asyncio.current_task()
        self.loop = asyncio.get_running_loop()
        self.in_send = False
        self.fired = False

    def fire(self) -> None:
        if self.in_send and not self.fired and self.task is not None:
            self.fired = True
            self.task.cancel()

    def cut(self) -> None:
        """The hub dropped this client: stop a send that is stuck now; a later send will see ``closed``."""
        self.fire()

    async def send(self, send: Send, message: Message) -> None:
        self.in_send = True
        handle = self.loop.call_later(self.deadline_s, self.fire)
        try:
            await send(message)
        finally:
            handle.cancel()
            self.in_send = False

    def absorb(self) -> bool:
        """After a ``CancelledError``: ``True`` (and the cancellation undone) if this object caused it."""
        if not self.fired:
            return False
        if sys.version_info >= (3, 11) and self.task is not None:
            self.task.uncancel()
        return True
