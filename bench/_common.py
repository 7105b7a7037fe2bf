"""What the benchmark scripts share: server subprocesses, small HTTP helpers, raw-socket SSE client pieces.

Every bench runs from the repository root as ``python bench/bench_x.py``, so this module is found next to
the script (``from _common import ...``). Servers are children of the bench process, bound to 127.0.0.1,
and stopped with :func:`stop`.

Importing this module pins the checkout: the bench process and every child it starts import ``otelflow``
(and the viewer) from the repository this file sits in, not from whichever copy ``pip install -e`` points
at, so that two checkouts can be measured against each other by running each one's script.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import queue
import resource
import selectors
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[1]

# The viewer is the folder viewer/, installed as otelflow.viewer (pyproject's package-dir): putting the root on
# the path finds otelflow, not otelflow.viewer, which an editable install would then take from wherever it
# points. A sitecustomize module, on the path of this process and its children, maps it to this checkout.
_PIN = f"""import importlib.util, sys
class _Viewer:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name == "otelflow.viewer":
            return importlib.util.spec_from_file_location(
                name, {str(ROOT / "viewer" / "__init__.py")!r}, submodule_search_locations=[{str(ROOT / "viewer")!r}]
            )
        return None
sys.meta_path.insert(0, _Viewer)
"""
_PIN_DIR = Path(tempfile.gettempdir()) / f"otelflow-bench-pin-{hashlib.sha256(str(ROOT).encode()).hexdigest()[:12]}"
if (ROOT / "viewer" / "__init__.py").exists():
    _PIN_DIR.mkdir(exist_ok=True)
    if not (_PIN_DIR / "sitecustomize.py").exists() or (_PIN_DIR / "sitecustomize.py").read_text() != _PIN:
        (_PIN_DIR / "sitecustomize.py").write_text(_PIN)
    _paths = [str(_PIN_DIR), str(ROOT)]
    sys.path[:0] = _paths
    import sitecustomize  # noqa: F401  (this process: its site setup ran before the path had it)
else:
    _paths = [str(ROOT)]
    sys.path[:0] = _paths
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [*_paths, os.environ.get("PYTHONPATH")]))

HOST = "127.0.0.1"
VIEWER_READY = "listening on http://"

S = TypeVar("S")


# --------------------------------------------------------------------------------------------------
# processes
# --------------------------------------------------------------------------------------------------


def stop(proc: subprocess.Popen[Any]) -> None:
    """Terminate a child (then kill it if it does not exit within 10 s)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def read_port(proc: subprocess.Popen[str], marker: str, timeout: float = 20.0) -> int:
    """The port a child prints on its ``marker`` line (``...:PORT`` or ``...:PORT/``); stops it on failure."""
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not sel.select(max(0.0, deadline - time.monotonic())):
                break
            line = proc.stdout.readline()
            if not line:
                break
            if marker in line:
                return int(line.rsplit(":", 1)[1].strip().strip("/"))
    finally:
        sel.close()
    stop(proc)
    raise RuntimeError("the server did not start (see its output above)")


def start_server(cmd: list[str], marker: str, timeout: float = 20.0) -> tuple[subprocess.Popen[str], int]:
    """Run ``cmd`` with its stdout piped; returns it and the port from its ``marker`` line."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    return proc, read_port(proc, marker, timeout)


def start_viewer(db: Path, timeout: float = 20.0) -> tuple[subprocess.Popen[str], int]:
    """``otelflow serve --port 0 --db db`` as a subprocess; returns it and the port it listens on."""
    cmd = [sys.executable, "-m", "otelflow.cli", "serve", "--host", HOST, "--port", "0", "--db", str(db)]
    return start_server(cmd, VIEWER_READY, timeout)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def raise_nofile(want: int, *, required: bool = False) -> None:
    """Raise the soft open-file limit to ``want`` (at most the hard limit; ``required``: exit if it is lower)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        if required and hard < want:
            raise SystemExit(f"need {want} open files, the hard limit is {hard}: lower --connections")
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))


# --------------------------------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------------------------------


def get(port: int, path: str) -> bytes:
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        conn.request("GET", path)
        return conn.getresponse().read()
    finally:
        conn.close()


def healthz(port: int) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(get(port, "/healthz"))
    return data


# --------------------------------------------------------------------------------------------------
# raw-socket SSE clients
# --------------------------------------------------------------------------------------------------


def post_many(port: int, path: str, content_type: str, bodies: list[bytes], clients: int) -> list[str]:
    """POST every body over ``clients`` keep-alive connections (threads); returns error messages (none: ``[]``)."""
    work: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
    for body in bodies:
        work.put(body)
    for _ in range(clients):
        work.put(None)
    errors: list[str] = []
    headers = {"Content-Type": content_type}

    def worker() -> None:
        conn = http.client.HTTPConnection(HOST, port, timeout=60)
        try:
            while (body := work.get()) is not None:
                conn.request("POST", path, body=body, headers=headers)
                resp = conn.getresponse()
                resp.read()
                if resp.status != 200:
                    errors.append(f"HTTP {resp.status}")
        except (OSError, http.client.HTTPException) as exc:
            errors.append(repr(exc))
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return errors


def recv_some(sock: socket.socket) -> bytes | None:
    """One non-blocking read: the bytes, ``b""`` when the stream ended or failed, ``None`` if nothing yet."""
    try:
        return sock.recv(1 << 18)
    except BlockingIOError:
        return None
    except OSError:
        return b""


def sse_request(port: int, path: str = "/api/stream") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nAccept: text/event-stream\r\n\r\n".encode()


def open_streams(
    sel: selectors.BaseSelector,
    port: int,
    path: str,
    n: int,
    state: Callable[[int, socket.socket], S],
    *,
    pace_every: int = 0,
) -> list[S]:
    """Open ``n`` non-blocking SSE connections registered on ``sel`` with ``state(i, sock)`` as their data;
    ``pace_every``: pause 10 ms after that many (so as not to flood the accept backlog)."""
    request = sse_request(port, path)
    states = []
    for i in range(n):
        s = socket.create_connection((HOST, port), timeout=10)
        s.sendall(request)
        s.setblocking(False)
        st = state(i, s)
        states.append(st)
        sel.register(s, selectors.EVENT_READ, st)
        if pace_every and i % pace_every == pace_every - 1:
            time.sleep(0.01)
    return states


def take_head(head: bytes, chunk: bytes) -> tuple[bytes, bytes | None]:
    """Accumulate response headers: ``(head so far, None)`` until complete, then ``(b"", body bytes after them)``.
    Raises ``RuntimeError`` if the answer is not ``200``."""
    head += chunk
    if b"\r\n\r\n" not in head:
        return head, None
    status, rest = head.split(b"\r\n\r\n", 1)
    if not status.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"stream refused: {status[:100]!r}")
    return b"", rest


def whole_frames(rem: bytes, chunk: bytes) -> tuple[bytes, bytes]:
    """Split buffered SSE bytes into complete frames and the incomplete rest: ``(whole, rest)``.

    Chunked transfer framing never contains ``"\\ndata: "``, so counting that marker in ``whole`` is exact."""
    data = rem + chunk
    cut = max(data.rfind(b"\n\n"), data.rfind(b"\n\r\n"))
    if cut < 0:
        return b"", data
    return data[: cut + 1], data[cut + 1 :]
