"""Rate-limited logging for telemetry problems, which are logged and never raised into user code."""

from __future__ import annotations

import logging
import threading
import time

logger = logging.getLogger("otelflow")


class RateLimitedLog:
    """Logs a given problem at most once per ``interval_s``, saying how many were suppressed meanwhile."""

    def __init__(self, interval_s: float = 30.0) -> None:
        self._interval = interval_s
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._lock = threading.Lock()

    def warning(self, key: str, message: str, *args: object, exc_info: bool = False) -> None:
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self._interval:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return
            self._last[key] = now
            suppressed = self._suppressed.pop(key, 0)
        if suppressed:
            message += f" ({suppressed} similar messages suppressed)"
        logger.warning(message, *args, exc_info=exc_info)


problems = RateLimitedLog()
