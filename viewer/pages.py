"""The viewer's HTML pages (runs ``/``, run ``/runs/{run}``, stats ``/stats``), their static files and headers.

Pages are jinja2 templates with autoescape on; all span data reaches the browser as JSON from the API and is
rendered by the ES modules in ``static/`` as text. Every page response carries a strict Content-Security-Policy
(scripts and styles from this origin only, no inline script, no framing) and the usual hardening headers.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from fastapi import FastAPI
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from otelflow.wire import wire_js

__all__ = [
    "CONTENT_SECURITY_POLICY",
    "HARDENING_HEADERS",
    "JAEGER_URL_ENV",
    "PageHeaders",
    "install_pages",
    "jaeger_url_from_env",
]

HERE: Final = Path(__file__).resolve().parent
JAEGER_URL_ENV: Final = "OTELFLOW_JAEGER_URL"

CONTENT_SECURITY_POLICY: Final = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "font-src 'self'",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "object-src 'none'",
    )
)
HARDENING_HEADERS: Final = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
)


class PageHeaders:
    """Adds the CSP and hardening headers to every HTTP response that does not set them itself."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for key, value in HARDENING_HEADERS:
                    name = key.decode()
                    if name not in headers:
                        headers.append(name, value.decode())
            await send(message)

        await self.app(scope, receive, send_with_headers)


def jaeger_url_from_env() -> str | None:
    """``$OTELFLOW_JAEGER_URL`` when it is an http(s) URL, else ``None``."""
    return _checked_jaeger_url(os.environ.get(JAEGER_URL_ENV))


def _checked_jaeger_url(url: str | None) -> str | None:
    if not url:
        return None
    url = url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{JAEGER_URL_ENV} must be an http(s) URL such as http://localhost:16686, got {url!r}")
    return url


def install_pages(app: FastAPI, *, jaeger_url: str | None = None) -> None:
    """Add the page routes, ``/static`` and :class:`PageHeaders` to ``app``.

    ``jaeger_url`` (e.g. ``http://localhost:16686``) makes the run page link to ``{jaeger_url}/trace/{id}``.
    """
    jaeger = _checked_jaeger_url(jaeger_url)
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        auto_reload=False,
    )

    def render(name: str, **context: object) -> Response:
        return HTMLResponse(env.get_template(name).render(**context), headers={"Cache-Control": "no-store"})

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def runs_page() -> Response:
        return render("runs.html", page="runs")

    @app.api_route("/runs/{run}", methods=["GET", "HEAD"], include_in_schema=False)
    async def run_page(run: str) -> Response:
        return render("run.html", page="run", run=run, jaeger_url=jaeger or "")

    @app.api_route("/stats", methods=["GET", "HEAD"], include_in_schema=False)
    async def stats_page() -> Response:
        return render("stats.html", page="stats")

    wire = wire_js().encode()

    @app.get("/static/wire.js", include_in_schema=False)
    async def wire_module() -> Response:
        """The stream contract for the pages' modules (rendered from otelflow.wire, never a copy)."""
        return Response(wire, media_type="text/javascript", headers={"Cache-Control": "no-cache"})

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon(request: Request) -> Response:
        return Response(status_code=204)

    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.add_middleware(PageHeaders)
