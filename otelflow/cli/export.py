"""``otelflow export RUN``: one run from the viewer as OTLP JSON or as JSON lines; and the small HTTP client it shares.

Exit codes: 0 written; 1 the viewer has no such run (or refused the request); 2 the viewer cannot be reached.
Only the standard library is used: the instrumentation side needs no web framework.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
from collections.abc import Mapping
from io import StringIO
from typing import IO, Any
from urllib.parse import quote, urlsplit

__all__ = [
    "ViewerError",
    "ViewerRequestError",
    "ViewerUnreachable",
    "connect",
    "get_json",
    "headers",
    "main",
    "problem",
    "run_path",
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
    out = {"Accept": "application/json", "User-Agent": "otelflow-cli"}
    if token:
        out["Authorization"] = f"Bearer {token}"
    out.update(extra or {})
    return out


def run_path(run: str, suffix: str = "") -> str:
    return f"/api/runs/{quote(run, safe='')}{suffix}"


def get_json(viewer: str, path: str, token: str | None, timeout: float = TIMEOUT_S) -> Any:
    """``GET viewer+path`` decoded as JSON; raises :class:`ViewerUnreachable` or :class:`ViewerRequestError`."""
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
    try:
        message = str(json.loads(body).get("error") or "")
    except (ValueError, AttributeError):
        message = ""
    if status == 401:
        return f"the viewer at {viewer} needs a token: pass --token or set OTELFLOW_TOKEN"
    return message or f"the viewer at {viewer} answered HTTP {status}"


def _write(out: IO[str], args: argparse.Namespace) -> None:
    if args.format == "jsonl":
        detail = get_json(args.viewer, run_path(args.run), args.token)
        for span in detail.get("spans", []):
            out.write(json.dumps(span, ensure_ascii=False, separators=(",", ":")) + "\n")
    else:
        payload = get_json(args.viewer, run_path(args.run, "/export"), args.token)
        out.write(json.dumps(payload, ensure_ascii=False, separators=(",", ":")) + "\n")


def main(args: argparse.Namespace) -> int:
    """Write the run to ``args.output`` or stdout; see the module docstring for exit codes."""
    try:
        if args.output and args.output != "-":
            # fetch first, so an unknown run does not leave an empty file behind
            buffer = StringIO()
            _write(buffer, args)
            with open(args.output, "w", encoding="utf-8") as fh:
                fh.write(buffer.getvalue())
        else:
            _write(sys.stdout, args)
            sys.stdout.flush()
    except ViewerUnreachable as exc:
        print(f"otelflow export: {exc}", file=sys.stderr)
        return 2
    except ViewerRequestError as exc:
        print(f"otelflow export: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"otelflow export: cannot write {args.output}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0
