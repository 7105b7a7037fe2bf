"""Fixtures for the browser tests: Debian's chromium through Playwright, a real viewer, a gated workflow process.

Without a browser the tests skip, except in CI (``$CI`` set), where they fail: CI must run them.
"""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.viewer.conftest import Viewer, make_viewer, viewer  # noqa: F401 - fixtures re-exported
from viewer.app import create_app, make_server

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


class Workflow:
    """The gated workflow subprocess: ``wait_node()`` returns the node waiting to run, ``send()`` releases it."""

    def __init__(self, viewer_url: str) -> None:
        env = {**os.environ, "OTEL_TRACES_EXPORTER": "none", "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKFLOW), viewer_url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.trace_id = ""
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
            raise AssertionError("the workflow process said nothing") from None

    def wait_node(self) -> str:
        line = self.next_line()
        assert line.startswith("waiting "), line
        _, name, trace = line.split()
        self.trace_id = trace
        return name

    def send(self, command: str = "go") -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def finish(self, timeout: float = 20.0) -> None:
        assert self.next_line(timeout) == "done"
        assert self.proc.wait(timeout) == 0

    def close(self) -> None:
        """Kill the process if it still runs and close its pipes."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self.reader.join(10)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


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
