"""Webhook delivery: a bounded queue and one task per action, so a receiver that is down or slow delays nothing
but its own deliveries. Each attempt has a timeout; failures are retried with exponential backoff (1 s, 2 s, 4 s...,
at most 60 s) up to the action's ``retries``; what is given up or does not fit the queue is counted."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, Final

import httpx

from otelflow.records import format_time
from otelflow.scrub import scrub_text

from .rules import Action

__all__ = ["Delivery", "slack_body"]

log = logging.getLogger("otelflow.viewer.alerts")
QUEUE_LIMIT: Final = 1000


def slack_body(alert: dict[str, Any]) -> dict[str, Any]:
    """A Slack-compatible incoming-webhook body (``text``, with mrkdwn)."""
    mark = ":rotating_light:" if alert.get("status") == "open" else ":white_check_mark:"
    state = "fired" if alert.get("status") == "open" else "resolved"
    return {"text": f"{mark} *{alert.get('rule')}* {state}: {alert.get('message')}"}


class Delivery:
    """Sends alert states to the actions' webhooks. :meth:`send` never blocks and never raises."""

    def __init__(self, actions: tuple[Action, ...], *, backoff_s: float = 1.0) -> None:
        self.actions = actions
        self.backoff_s = backoff_s
        self.stats: dict[str, Any] = {
            "sent": 0,
            "failed_attempts": 0,
            "retried": 0,
            "given_up": 0,
            "dropped": 0,
            "last_error": None,
            "last_error_time": None,
        }
        self._queues: list[asyncio.Queue[dict[str, Any]]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        if not self.actions:
            return
        self._client = httpx.AsyncClient(trust_env=False, follow_redirects=False)
        for action in self.actions:
            queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE_LIMIT)
            self._queues.append(queue)
            self._tasks.append(asyncio.create_task(self._deliver(action, queue), name="otelflow-webhook"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def send(self, alert: dict[str, Any]) -> None:
        """Queue ``alert`` (its current state) for every action."""
        for queue in self._queues:
            try:
                queue.put_nowait(dict(alert))
            except asyncio.QueueFull:
                self.stats["dropped"] += 1

    async def _deliver(self, action: Action, queue: asyncio.Queue[dict[str, Any]]) -> None:
        while True:
            alert = await queue.get()
            body = slack_body(alert) if action.format == "slack" else {"alert": alert}
            for attempt in range(action.retries + 1):
                if await self._post(action, body):
                    self.stats["sent"] += 1
                    break
                if attempt == action.retries:
                    self.stats["given_up"] += 1
                    log.warning("alert webhook %s: gave up after %d attempts", action.webhook, attempt + 1)
                    break
                self.stats["retried"] += 1
                await asyncio.sleep(min(60.0, self.backoff_s * 2**attempt))

    async def _post(self, action: Action, body: dict[str, Any]) -> bool:
        assert self._client is not None
        try:
            response = await self._client.post(
                action.webhook, json=body, headers=dict(action.headers), timeout=action.timeout_s
            )
        except (httpx.HTTPError, OSError) as exc:
            self._failed(f"{type(exc).__name__}: {exc}")
            return False
        if response.status_code >= 300:
            self._failed(f"HTTP {response.status_code}")
            return False
        return True

    def _failed(self, why: str) -> None:
        self.stats["failed_attempts"] += 1
        self.stats["last_error"] = scrub_text(why)
        self.stats["last_error_time"] = format_time(time.time_ns())
