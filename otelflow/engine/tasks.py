"""Running engine work under a time limit or concurrently, and cancelling what is left when one part fails."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from otelflow.engine.errors import NodeTimeoutError

__all__ = ["await_with_timeout", "call_with_timeout", "gather_or_cancel"]

_T = TypeVar("_T")


def call_with_timeout(func: Callable[[Any], _T], arg: Any, timeout: float, node_name: str) -> _T:
    """Run ``func(arg)`` in a daemon thread with the caller's contextvars; raise NodeTimeoutError on overrun."""
    context = contextvars.copy_context()
    outcome: list[tuple[bool, Any]] = []
    done = threading.Event()

    def target() -> None:
        try:
            outcome.append((True, context.run(func, arg)))
        except BaseException as exc:  # noqa: BLE001 - handed to the calling thread, which re-raises it
            outcome.append((False, exc))
        finally:
            done.set()

    thread = threading.Thread(target=target, name=f"otelflow-exec-{node_name}", daemon=True)
    thread.start()
    if not done.wait(timeout):
        raise NodeTimeoutError(node_name, timeout)
    ok, value = outcome[0]
    if ok:
        return value  # type: ignore[no-any-return]
    raise value


async def _settle(tasks: Sequence[asyncio.Future[Any]]) -> None:
    """Wait until every task is done and mark their errors as retrieved (they were cancelled or superseded)."""
    pending = [task for task in tasks if not task.done()]
    if pending:
        await asyncio.wait(pending)
    for task in tasks:
        if task.done() and not task.cancelled():
            task.exception()


async def await_with_timeout(awaitable: Awaitable[_T], timeout: float | None, node_name: str) -> _T:
    """Await ``awaitable``, cancelling it (and waiting for its cleanup) after ``timeout`` seconds."""
    if timeout is None:
        return await awaitable
    task = asyncio.ensure_future(awaitable)
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout)
    except BaseException:  # we were cancelled: stop the attempt too, then propagate
        task.cancel()
        await _settle([task])
        raise
    if task in done:
        return task.result()
    task.cancel()
    await _settle([task])
    raise NodeTimeoutError(node_name, timeout)


async def gather_or_cancel(awaitables: Sequence[Awaitable[_T]]) -> list[_T]:
    """Run ``awaitables`` concurrently; on the first error or on cancellation, cancel and await the rest.

    Returns the results in order. The first error (or the cancellation) propagates after every task ended.
    """
    tasks = [asyncio.ensure_future(awaitable) for awaitable in awaitables]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await _settle(tasks)
        raise
