"""Who may use the viewer: the token (header, query or session cookie), the Host and the Origin, checked on every
HTTP request and WebSocket upgrade, so that another web page can neither read nor feed the viewer.

With a token, every request needs ``Authorization: Bearer <token>``, ``?token=<token>`` or the session cookie a
page opened with the token received (401 otherwise; WebSocket upgrades are closed with 1008). The ``Host``
header must name an allowed host (400), and an ``Origin`` header, when present, must be the same origin or an
allowed one (403).
"""

from __future__ import annotations

import hashlib
import hmac
import html
import ipaddress
import re
from collections.abc import Iterable
from typing import Final
from urllib.parse import parse_qs, quote, unquote_plus

from starlette.datastructures import Headers
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from otelflow.wire import CLOSE_POLICY

__all__ = [
    "LOOPBACK_HOSTS",
    "SESSION_COOKIE",
    "SecurityMiddleware",
    "ViewerConfigError",
    "allowed_host",
    "host_name",
    "is_loopback",
    "session_value",
]

LOOPBACK_HOSTS: Final = frozenset({"localhost", "127.0.0.1", "::1"})


class ViewerConfigError(ValueError):
    """A viewer setting that cannot work; the message says what to change."""


SESSION_COOKIE: Final = "otelflow_session"
_SESSION_MESSAGE: Final = b"otelflow-session-v1"
# A Host header is a name (letters, digits, '-', '_', dots), an IPv4 address or a bracketed IPv6 address, then
# an optional port; anything else ('127.0.0.1:80@evil.example', 'a, b', spaces) is refused rather than guessed at.
_HOST_RE: Final = re.compile(
    r"(?:(?P<name>[a-z0-9_](?:[a-z0-9_.-]*[a-z0-9_.])?)|\[(?P<ipv6>[0-9a-f:.]+)\])(?::[0-9]{1,5})?"
)
_PAGE_RE: Final = re.compile(r"/(?:stats|runs/[^/]+)?")


def session_value(token: str) -> str:
    """The session cookie's value for ``token``: HMAC-SHA256 keyed by the token, hex.

    Derived, so the cookie never carries the token itself; deterministic, so it stays valid across restarts
    and across viewer replicas that share one token.
    """
    return hmac.new(token.encode(), _SESSION_MESSAGE, hashlib.sha256).hexdigest()


def host_name(host: str) -> str | None:
    """The name in a ``Host`` header, lower case without port or brackets (``[::1]:8080`` → ``::1``);
    ``None`` when the header is not exactly a host name or address with an optional port."""
    match = _HOST_RE.fullmatch(host.strip().lower())
    if match is None:
        return None
    if match["ipv6"] is not None:
        try:
            ipaddress.IPv6Address(match["ipv6"])
        except ValueError:
            return None
        return match["ipv6"]
    return match["name"]


class SecurityMiddleware:
    """Token, Host and Origin checks for HTTP requests and WebSocket upgrades (see the module docstring).

    ``allowed_hosts`` ``None`` accepts any well-formed Host (use only with a token); ``allowed_origins`` are
    full origins such as ``https://example.org``, accepted besides the same origin.

    With a token, a page (``GET /``, ``/runs/{run}``, ``/stats``) requested with the token also gets the
    session cookie (:data:`SESSION_COOKIE`, :func:`session_value`; ``HttpOnly; SameSite=Strict; Path=/``,
    ``Secure`` over https), which every later request may send instead of the token: the page's scripts,
    styles, API calls and streams cannot carry a token themselves. A page requested with ``?token=`` is
    answered with a 303 to the same page without it, so the token leaves the address bar and the history
    (followed from another site's link, with a page that refreshes to it: see :meth:`__call__`).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        token: str | None,
        allowed_hosts: Iterable[str] | None,
        allowed_origins: Iterable[str] = (),
    ) -> None:
        self.app = app
        self.token = token.encode() if token else None
        self.session = session_value(token).encode() if token else None
        self.allowed_hosts = frozenset(h.lower() for h in allowed_hosts) if allowed_hosts is not None else None
        self.allowed_origins = frozenset(o.rstrip("/").lower() for o in allowed_origins)

    def _credential(self, scope: Scope, headers: Headers) -> str | None:
        """How the request proves it knows the token: ``"bearer"``, ``"query"``, ``"cookie"``, or ``None``."""
        if self.token is None or self.session is None:
            return None
        auth = headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            return "bearer" if hmac.compare_digest(auth[7:].strip().encode(), self.token) else None
        query = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token")
        if query:
            return "query" if hmac.compare_digest(query[0].encode(), self.token) else None
        cookie = _cookie(headers, SESSION_COOKIE)
        if cookie is not None and hmac.compare_digest(cookie.encode(), self.session):
            return "cookie"
        return None

    def problem(self, scope: Scope) -> tuple[int, str] | None:
        """Why this request or upgrade is refused, as (HTTP status, message); ``None`` when it may go on."""
        headers = Headers(scope=scope)
        host = headers.get("host", "")
        name = host_name(host) if host else ""
        if name is None:
            return 400, f"Host {host!r} is not a host name with an optional port"
        if self.allowed_hosts is not None and name not in self.allowed_hosts:
            return 400, (
                f"Host {host!r} is not allowed; use one of {sorted(self.allowed_hosts)}, "
                "or start the viewer with --allowed-host NAME"
            )
        origin = headers.get("origin")
        if origin is not None:
            origin = origin.rstrip("/").lower()
            same = origin in (f"http://{host.lower()}", f"https://{host.lower()}")
            if not same and origin not in self.allowed_origins:
                return 403, f"Origin {origin!r} is not allowed"
        if self.token is not None and self._credential(scope, headers) is None:
            return 401, "a token is required: send Authorization: Bearer <token> or ?token=<token>"
        return None

    def _page_login(self, scope: Scope) -> tuple[str | None, list[tuple[bytes, bytes]]] | None:
        """For a page requested with the token: where to redirect (``None``: serve it) and the cookie header."""
        if self.token is None or scope["type"] != "http" or scope["method"] != "GET":
            return None
        path: str = scope["path"]
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        if _PAGE_RE.fullmatch(path) is None:
            return None
        how = self._credential(scope, Headers(scope=scope))
        if how not in ("bearer", "query"):
            return None
        cookie = f"{SESSION_COOKIE}={(self.session or b'').decode()}; HttpOnly; SameSite=Strict; Path=/"
        if scope.get("scheme") == "https":
            cookie += "; Secure"
        headers = [(b"set-cookie", cookie.encode("latin-1"))]
        if how == "bearer":
            return None, headers  # the same URL again would be a loop for clients that resend the header
        raw_query: str = scope.get("query_string", b"").decode("latin-1")
        kept = [p for p in raw_query.split("&") if p and unquote_plus(p.partition("=")[0]) != "token"]
        # relative to the page itself, so that it also holds behind a proxy that serves the viewer under a prefix
        raw_path: bytes = scope.get("raw_path") or quote(scope["path"]).encode()
        target = "./" + raw_path.decode("latin-1").rsplit("/", 1)[-1]
        if kept:
            target += "?" + "&".join(kept)
        return target, headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        problem = self.problem(scope)
        if problem is not None:
            status, message = problem
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": CLOSE_POLICY, "reason": message[:120]})
                return
            headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
            await JSONResponse({"error": message}, status, headers=headers)(scope, receive, send)
            return
        login = self._page_login(scope)
        if login is None:
            await self.app(scope, receive, send)
            return
        target, cookie = login
        if target is not None:
            if Headers(scope=scope).get("sec-fetch-site") == "cross-site":
                # A link followed from another site: the browser would not send a SameSite=Strict cookie on
                # a redirect of that navigation, but it does on one that this page starts itself (and a
                # refresh replaces the history entry, so the token still leaves it).
                url = html.escape(target)
                body = f'<!doctype html><meta http-equiv="refresh" content="0; url={url}"><a href="{url}">otelflow</a>'
                moved: Response = HTMLResponse(body, headers={"Cache-Control": "no-store"})
            else:
                moved = Response(status_code=303, headers={"Location": target, "Cache-Control": "no-store"})
            moved.raw_headers.extend(cookie)
            await moved(scope, receive, send)
            return

        async def send_with_cookie(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), *cookie]}
            await send(message)

        await self.app(scope, receive, send_with_cookie)


def _cookie(headers: Headers, name: str) -> str | None:
    """The value of cookie ``name`` among the request's ``Cookie`` headers (the first, if sent twice)."""
    for line in headers.getlist("cookie"):
        for part in line.split(";"):
            key, sep, value = part.strip().partition("=")
            if sep and key == name:
                return value.strip()
    return None


def is_loopback(host: str) -> bool:
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def allowed_host(value: str) -> str:
    """A host name or address as :func:`serve` and ``--allowed-host`` take it: lower case, IPv6 without
    brackets; raises :class:`ViewerConfigError` when it is not one (a port, a URL, a list)."""
    name = value.strip().lower()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    if not name or host_name(f"[{name}]" if ":" in name else name) != name:
        raise ViewerConfigError(f"{value!r} is not a host name or address: give one such as viewer.example.org")
    return name
