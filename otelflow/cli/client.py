"""The small HTTP client ``otelflow tail`` and ``otelflow export`` share to read the viewer's REST API.

Only the standard library is used: the instrumentation side needs no web framework.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlsplit

__all__ = [
    "ViewerError",
    "ViewerRequestError",
    "ViewerUnreachable",
    "connect",
    "get_json",
    "headers",
    "problem",
    "run_path",
    "viewers",
]

TIMEOUT_S = 10.0


class ViewerError(Exception):
    """The viewer could not answer; the message says what to do."""


class ViewerUnreachable(ViewerError):
    """No HTTP answer at all (refused, timed out, bad URL)."""


class ViewerRequestError(ViewerError):
    """The viewer answered with an error status (``status``: 401, 404 …)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def viewers(value: str) -> list[str]:
    """The viewer URLs in ``value``: one, or several replicas separated by commas (as ``OTELFLOW_VIEWER_URL``)."""
    return [v.strip() for v in value.split(",") if v.strip()] or [value]


def connect(viewer: str, timeout: float = TIMEOUT_S) -> tuple[http.client.HTTPConnection, str]:
    """An unopened connection to ``viewer`` (``http://host:port[/prefix]``) and its path prefix."""
    parts = urlsplit(viewer if "://" in viewer else f"http://{viewer}")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ViewerUnreachable(f"viewer URL must look like http://127.0.0.1:8080, got {viewer!r}")
    try:
        port = parts.port
    except ValueError as exc:
        raise ViewerUnreachable(f"viewer URL {viewer!r}: {exc}") from None
    cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    return cls(parts.hostname, port, timeout=timeout), parts.path.rstrip("/")


def headers(token: str | None, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The request headers: JSON wanted, the bearer ``token`` when there is one, then ``extra``."""
    out = {"Accept": "application/json", "User-Agent": "otelflow-cli"}
    if token:
        out["Authorization"] = f"Bearer {token}"
    out.update(extra or {})
    return out


def run_path(run: str, suffix: str = "") -> str:
    """The REST path of one run (a trace id or ``otelflow.run.id``, quoted), then ``suffix``."""
    return f"/api/runs/{quote(run, safe='')}{suffix}"


def get_json(viewer: str, path: str, token: str | None, timeout: float = TIMEOUT_S) -> Any:
    """``GET viewer+path`` decoded as JSON; raises :class:`ViewerUnreachable` or :class:`ViewerRequestError`.

    ``viewer`` may name several replicas separated by commas: each is asked in turn until one answers.
    """
    replicas = viewers(viewer)
    for replica in replicas[:-1]:
        try:
            return _get_json(replica, path, token, timeout)
        except ViewerUnreachable:
            continue
    return _get_json(replicas[-1], path, token, timeout)


def _get_json(viewer: str, path: str, token: str | None, timeout: float) -> Any:
    conn, prefix = connect(viewer, timeout)
    try:
        try:
            conn.request("GET", prefix + path, headers=headers(token))
            response = conn.getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise ViewerUnreachable(f"cannot reach the viewer at {viewer}: {exc or type(exc).__name__}") from None
    finally:
        conn.close()
    if response.status != 200:
        raise ViewerRequestError(problem(viewer, response.status, body), response.status)
    try:
        return json.loads(body)
    except ValueError:
        raise ViewerRequestError(f"{viewer}{path} did not answer JSON; is this an otelflow viewer?", 502) from None


def problem(viewer: str, status: int, body: bytes) -> str:
    """What to tell the user about an error answer: the viewer's own message, or what to do about a 401."""
    try:
        message = str(json.loads(body).get("error") or "")
    except (ValueError, AttributeError):
        message = ""
    if status == 401:
        return f"the viewer at {viewer} needs a token: pass --token or set OTELFLOW_TOKEN"
    return message or f"the viewer at {viewer} answered HTTP {status}"
