"""The viewer served from this process for ``otelflow demo`` and ``otelflow run``, with the run lines they print."""

from __future__ import annotations

import errno
import gc
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TextIO

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.trace import StatusCode

from otelflow import attributes as A
from otelflow._log import problems
from otelflow.sinks import InProcessSink

if TYPE_CHECKING:
    import uvicorn

__all__ = ["EmbeddedViewer", "RunAnnouncer", "ViewerStartError", "run_url"]


class ViewerStartError(RuntimeError):
    """The embedded viewer could not start; the message says what to do."""


def run_url(base_url: str, trace_id: int) -> str:
    """The viewer page of the run (trace) ``trace_id``."""
    return f"{base_url.rstrip('/')}/runs/{trace_id:032x}"


class EmbeddedViewer:
    """The viewer (:mod:`otelflow.viewer`) on a uvicorn thread of this process, fed by an :class:`InProcessSink`.

    Loopback only, no token. :meth:`start` binds the socket itself, so a busy port is reported at once with a
    message that says what to do (``port=0`` picks a free one); :meth:`stop` ends the streams (clients get
    ``shutdown``) and returns within ``timeout``. Needs the ``viewer`` extra (ImportError otherwise).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 8080, *, db: str = ":memory:") -> None:
        from otelflow.viewer import create_app, is_loopback

        if not is_loopback(host):
            raise ViewerStartError(
                f"the embedded viewer listens on loopback only, not {host}; for other addresses run "
                "`otelflow serve --host ... --token ...` and point workers at it with OTELFLOW_VIEWER_URL"
            )
        self.host = host
        self.port = port
        self._db = db
        self._create_app = create_app
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._unsubscribe: Callable[[], None] | None = None

    @property
    def url(self) -> str:
        shown = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{shown}:{self.port}"

    @property
    def serving(self) -> bool:
        """Whether the server thread is running."""
        return self._thread is not None and self._thread.is_alive()

    def _bind(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        # proto named: asyncio sets TCP_NODELAY only on sockets whose proto is IPPROTO_TCP, and without it every
        # small write (a response, an SSE event) waits for the peer's delayed ACK, up to 40 ms
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE:
                raise ViewerStartError(
                    f"port {self.port} on {self.host} is in use (is `otelflow serve` already running there? then "
                    f"pass --viewer http://{self.host}:{self.port}); or choose another with --port (0: any free port)"
                ) from None
            raise ViewerStartError(f"cannot listen on {self.host}:{self.port}: {exc.strerror or exc}") from None
        sock.listen(2048)
        sock.set_inheritable(True)
        self.port = int(sock.getsockname()[1])
        return sock

    def start(self, sink: InProcessSink | None = None, timeout: float = 15.0) -> EmbeddedViewer:
        """Bind, serve on a daemon thread, wait until it answers; subscribe the viewer to ``sink``."""
        from otelflow.viewer import HistoryError, SqliteHistory, make_server

        store = SqliteHistory(self._db)
        try:
            store.open()
        except HistoryError as exc:
            raise ViewerStartError(f"cannot open the viewer's database: {exc}") from None
        sock = self._bind()
        app = self._create_app(db=store)
        if sink is not None:
            self._unsubscribe = sink.subscribe(app.state.hub.ingest_threadsafe)
        self._server = server = make_server(app, self.host, self.port, ready_callback=self._on_ready)

        def serve() -> None:
            try:
                server.run(sockets=[sock])
            finally:
                sock.close()

        self._thread = threading.Thread(target=serve, name="otelflow-viewer", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.05):
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop(1.0)
                raise ViewerStartError(f"the viewer did not start on {self.url} within {timeout:g} s")
        _share_the_collector()
        return self

    def _on_ready(self, host: str, port: int) -> None:
        self._ready.set()

    def stop(self, timeout: float = 8.0) -> bool:
        """Stop serving (streams get ``shutdown`` first); ``False`` if the thread is still alive after ``timeout``."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()


def _share_the_collector() -> None:
    """Make the process's garbage collector fit a viewer living in it.

    What the viewer keeps (live runs, the replay ring, rows on their way to the history) is scanned by every
    full collection, and the application's thread, which allocates the most, runs most of them: about as
    much CPU per span as the SDK itself, with CPython's defaults. So, as ``otelflow serve`` does for its own
    process, the young generation is larger (never made smaller than it is), and what exists once the
    viewer is up (the modules of the SDK, the viewer and their libraries) is moved out of every later
    collection (:func:`gc.freeze`). The script run by ``otelflow run`` starts after this.
    """
    young, middle, old = gc.get_threshold()
    if young:  # 0: collection turned off by the program; leave it so
        gc.set_threshold(max(young, 20_000), max(middle, 20), max(old, 20))
    gc.freeze()


class RunAnnouncer(SpanProcessor):
    """Writes one line when a run (the root span of a trace) starts, with its viewer URL, and one when it ends.

    Both lines show the run's ``otelflow.run.id`` after its name, when the root span has one.

    Added to the tracer provider directly, so it stays when a script calls ``otelflow.configure()`` again.
    Writing is a short formatted line per run; failures are logged (rate-limited), never raised.
    """

    def __init__(self, base_url: str | Callable[[], str], stream: TextIO | None = None, *, prefix: str = "") -> None:
        self.base_url = base_url  # or a function giving it: the viewer replica spans go to now
        self._stream = stream
        self._prefix = prefix
        self._lock = threading.Lock()

    def _write(self, line: str) -> None:
        stream = self._stream or sys.stdout
        with self._lock:
            stream.write(f"{self._prefix}{line}\n")
            stream.flush()

    def _base(self) -> str:
        return self.base_url if isinstance(self.base_url, str) else self.base_url()

    @staticmethod
    def _is_root(span: ReadableSpan) -> bool:
        return span.parent is None or span.parent.is_remote

    @staticmethod
    def _title(span: ReadableSpan) -> str:
        """The span's name, padded, then its run id (if any) and a space."""
        run_id = (span.attributes or {}).get(A.RUN_ID)
        return f"{span.name:<40} " + (f"{run_id!s:<10} " if run_id else "")

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        try:
            if self._is_root(span) and span.context is not None:
                self._write(f"run started   {self._title(span)}{run_url(self._base(), span.context.trace_id)}")
        except Exception:  # noqa: BLE001 - telemetry never hurts the program
            problems.warning("announce", "otelflow: could not announce a run", exc_info=True)

    def on_end(self, span: ReadableSpan) -> None:
        try:
            if not self._is_root(span):
                return
            seconds = ((span.end_time or 0) - (span.start_time or 0)) / 1e9
            if span.status.status_code == StatusCode.ERROR:
                outcome = A.STATUS_CANCELLED if span.status.description == A.STATUS_CANCELLED else A.STATUS_ERROR
                failed = outcome == A.STATUS_ERROR
                detail = f"  ({span.status.description})" if failed and span.status.description else ""
            else:
                outcome, detail = A.STATUS_OK, ""
            self._write(f"run {outcome:<9} {self._title(span)}{seconds:6.2f} s{detail}")
        except Exception:  # noqa: BLE001
            problems.warning("announce", "otelflow: could not announce a run", exc_info=True)

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True
