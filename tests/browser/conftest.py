"""Fixtures for the browser tests: Debian's chromium through Playwright, a real viewer, a gated workflow process.

Without a browser the tests skip, except in CI (``$CI`` set), where they fail: CI must run them.
"""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from otelflow.viewer.app import create_app, make_server
from tests.viewer.conftest import Viewer, viewer  # noqa: F401 - fixture re-exported

CHROMIUM = os.environ.get("OTELFLOW_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
WORKFLOW = Path(__file__).with_name("gated_workflow.py")
TIMEOUT_MS = 15_000

pytestmark = pytest.mark.browser


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"browser tests must run in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="package")  # not session: Playwright's sync API keeps an event loop running until it stops,
def browser() -> Iterator[Any]:  # and the tests after this package call asyncio.run()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (pip install playwright)")
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        _unavailable(f"no chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


class PageProbe:
    """Console errors, dialogs and non-local requests of one page."""

    def __init__(self, page: Any, origin: str = "http://127.0.0.1") -> None:
        self.page = page
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        self.external: list[str] = []
        page.on("console", lambda msg: self.errors.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))
        page.on("dialog", self._dialog)
        page.on("request", lambda req: None if req.url.startswith((origin, "data:")) else self.external.append(req.url))

    def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def assert_clean(self, allow: tuple[str, ...] = ()) -> None:
        errors = [e for e in self.errors if not any(a in e for a in allow)]
        assert errors == [], errors
        assert self.dialogs == []
        assert self.external == []


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    page.probe = PageProbe(page)
    yield page
    context.close()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


def start_viewer_on(port: int, db: Path) -> Viewer:
    """A viewer on a given port (to restart one in place) with a SQLite file."""
    app = create_app(db=db)
    v = Viewer.__new__(Viewer)
    v.app = app
    v.hub = app.state.hub
    v.port = 0
    v._ready = threading.Event()
    v.server = make_server(app, "127.0.0.1", port, ready_callback=v._on_ready, graceful_s=5)
    v.thread = threading.Thread(target=v.server.run, name="viewer", daemon=True)
    return v.start()


class LineProcess:
    """A Python child process driven by lines: commands go to its stdin, each answer is a line of its stdout
    (read by a thread, so that waiting for one has a timeout)."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        self.lines: queue.Queue[str] = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())
        self.lines.put("<eof>")

    def next_line(self, timeout: float = 20.0) -> str:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"{type(self).__name__} said nothing for {timeout:g} s") from None

    def write(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        """Kill the process if it still runs and close its pipes."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self.reader.join(10)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


class Workflow(LineProcess):
    """The gated workflow subprocess: ``wait_node()`` returns the node waiting to run, ``send()`` releases it."""

    def __init__(self, viewer_url: str) -> None:
        env = {**os.environ, "OTEL_TRACES_EXPORTER": "none", "PYTHONPATH": str(ROOT)}
        super().__init__([sys.executable, str(WORKFLOW), viewer_url], env)
        self.trace_id = ""

    def wait_node(self) -> str:
        line = self.next_line()
        assert line.startswith("waiting "), line
        _, name, trace = line.split()
        self.trace_id = trace
        return name

    def send(self, command: str = "go") -> None:
        self.write(command)

    def finish(self, timeout: float = 20.0) -> None:
        assert self.next_line(timeout) == "done"
        assert self.proc.wait(timeout) == 0


@pytest.fixture
def workflow() -> Iterator[Callable[[str], Workflow]]:
    started: list[Workflow] = []

    def start(url: str) -> Workflow:
        wf = Workflow(url)
        started.append(wf)
        return wf

    yield start
    for wf in started:
        wf.close()


class BufferingProxy:
    """A reverse proxy on loopback in front of a viewer that buffers SSE, like nginx with ``proxy_buffering on``.

    Every request is passed through (``Connection: close``, so each request gets a connection of its own and is
    inspected); WebSocket upgrades are piped both ways. For an SSE stream the response head is forwarded at once
    (the browser sees the stream open) but the body is held until ``BUFFER_BYTES`` have piled up: the page gets
    no frames at all while the viewer sends them.
    """

    BUFFER_BYTES = 1 << 20

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sse_requests = 0
        self.held_bytes = 0
        self.closing = threading.Event()
        self.lock = threading.Lock()
        self.sockets: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, name="buffering-proxy", daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self.closing.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                self.sockets.append(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = client.recv(65536)
                if not chunk:
                    return
                head += chunk
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            with self.lock:
                self.sockets.append(upstream)
                if self.closing.is_set():  # close() has run meanwhile: it would not see this one
                    upstream.close()
                    return
            request_line, _, rest = head.partition(b"\r\n")
            path = request_line.split(b" ")[1]
            if b"\r\nupgrade:" in b"\r\n" + rest.lower():
                upstream.sendall(head)
                threading.Thread(target=self._pipe, args=(upstream, client), daemon=True).start()
                self._pipe(client, upstream)
                return
            headers = [h for h in rest.split(b"\r\n") if not h.lower().startswith(b"connection:")]
            upstream.sendall(request_line + b"\r\nConnection: close\r\n" + b"\r\n".join(headers))
            threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()
            if path.startswith(b"/api/stream") or path.split(b"?")[0].endswith(b"/stream"):
                self._buffer_sse(upstream, client)
            else:
                self._pipe(upstream, client)
        except OSError:
            pass
        finally:
            client.close()

    def _buffer_sse(self, upstream: socket.socket, client: socket.socket) -> None:
        self.sse_requests += 1
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = upstream.recv(65536)
            if not chunk:
                return
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        client.sendall(head + b"\r\n\r\n")  # the stream opens ...
        held = [body]  # ... but its frames stay here
        self.held_bytes += len(body)
        while self.held_bytes < self.BUFFER_BYTES:
            chunk = upstream.recv(65536)
            if not chunk:
                return
            held.append(chunk)
            self.held_bytes += len(chunk)
        client.sendall(b"".join(held))
        self._pipe(upstream, client)

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        with self.lock:
            self.closing.set()
            self.listener.close()
            for sock in self.sockets:
                with contextlib.suppress(OSError):
                    sock.close()


@pytest.fixture
def buffering_proxy() -> Iterator[Callable[[int], BufferingProxy]]:
    proxies: list[BufferingProxy] = []

    def start(upstream_port: int) -> BufferingProxy:
        proxy = BufferingProxy(upstream_port)
        proxies.append(proxy)
        return proxy

    yield start
    for proxy in proxies:
        proxy.close()
