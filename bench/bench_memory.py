"""Viewer memory: idle RSS, and the cost of each idle SSE connection (1,000 of them).

``otelflow serve`` runs as a subprocess (loopback, free port, SQLite file in a temp dir); RSS is ``VmRSS`` from
``/proc/PID/status``. Idle: after startup and one ``GET /healthz``, settled for a second. Per connection:
another process (raw sockets, ``selectors``) opens 1,000 SSE streams on ``/api/stream`` and holds them
idle; once ``/healthz`` counts 1,000 subscribers and RSS has settled, (RSS after − RSS idle) / 1,000.

Baseline, measured in the same run the same way: a bare uvicorn + Starlette app (``/`` says hello,
``/stream`` is a ``StreamingResponse`` that sends one comment and then waits), same uvicorn settings.

Targets: idle <= 80 MiB; <= 16 KiB per idle SSE connection. Run: ``python bench/bench_memory.py
[--connections 1000]``. Raises the open-file limit as needed. Prints figures and ratios, not a verdict.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import selectors
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import HOST, get, open_streams, raise_nofile, start_server, start_viewer, stop, take_head

KIB = 1024


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def settled_rss(pid: int, seconds: float = 1.0) -> int:
    """RSS once it stops moving (two reads 0.25 s apart within 64 KiB), after at least ``seconds``."""
    time.sleep(seconds)
    last = rss_kib(pid)
    for _ in range(20):
        time.sleep(0.25)
        now = rss_kib(pid)
        if abs(now - last) <= 64:
            return now
        last = now
    return last


def start_hello() -> tuple[subprocess.Popen[str], int]:
    return start_server([sys.executable, __file__, "--_hello"], "hello listening on port:")


def hello_server() -> None:
    """The baseline: a bare uvicorn + Starlette app."""
    import asyncio

    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse, StreamingResponse
    from starlette.routing import Route

    async def hello(_request: Any) -> PlainTextResponse:
        return PlainTextResponse("hello")

    async def stream(_request: Any) -> StreamingResponse:
        async def body() -> Any:
            yield b": hello\n\n"
            await asyncio.Event().wait()

        return StreamingResponse(body(), media_type="text/event-stream")

    app = Starlette(routes=[Route("/", hello), Route("/healthz", hello), Route("/stream", stream)])
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, 0))
    sock.listen(4096)  # connections wait in the backlog until uvicorn accepts them
    print(f"hello listening on port:{sock.getsockname()[1]}", flush=True)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", backlog=4096)
    uvicorn.Server(config).run(sockets=[sock])


def clients_main(port: int, n: int, path: str, max_s: float) -> None:
    """Open ``n`` SSE streams, print ``ready`` once each answered 200, hold them until ``stop`` or ``max_s``."""
    raise_nofile(n + 64, required=True)
    sel = selectors.DefaultSelector()
    socks: list[socket.socket] = []

    def state(_i: int, s: socket.socket) -> list[Any]:
        socks.append(s)
        return [b"", False]

    open_streams(sel, port, path, n, state, pace_every=50)
    pending = n
    sel.register(sys.stdin, selectors.EVENT_READ, None)
    started = time.monotonic()
    while time.monotonic() - started < max_s:
        for key, _ in sel.select(0.5):
            st = key.data
            if st is None:
                return
            try:
                chunk = key.fileobj.recv(65536)  # type: ignore[union-attr]
            except BlockingIOError:
                continue
            except OSError:
                chunk = b""
            if not chunk:
                raise RuntimeError("a stream closed while idle")
            if not st[1]:
                st[0], body = take_head(st[0], chunk)
                if body is not None:
                    st[1] = True
                    pending -= 1
                    if not pending:
                        print("ready", flush=True)
    for s in socks:
        with contextlib.suppress(OSError):
            s.close()


def measure(proc: subprocess.Popen[str], port: int, path: str, n: int, count: Any) -> tuple[int, int, int]:
    """Idle RSS, and RSS with ``n`` idle streams on ``path`` (KiB). ``count()`` = streams the server sees."""
    get(port, "/healthz")
    idle = settled_rss(proc.pid)
    cmd = [sys.executable, __file__, "--_clients", str(port), "--_n", str(n), "--_path", path]
    clients = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert clients.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(clients.stdout, selectors.EVENT_READ)
        if not sel.select(60) or clients.stdout.readline().strip() != "ready":
            raise RuntimeError("the clients did not connect")
        sel.close()
        deadline = time.monotonic() + 30
        while count() < n and time.monotonic() < deadline:
            time.sleep(0.1)
        loaded = settled_rss(proc.pid)
        seen = count()
    finally:
        with contextlib.suppress(OSError):
            clients.communicate("stop\n", timeout=10)
        stop(clients)
    return idle, loaded, seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--_hello", action="store_true", help=argparse.SUPPRESS, dest="hello")
    parser.add_argument("--_clients", type=int, default=0, help=argparse.SUPPRESS, dest="clients_port")
    parser.add_argument("--_n", type=int, default=0, help=argparse.SUPPRESS, dest="n")
    parser.add_argument("--_path", default="/api/stream", help=argparse.SUPPRESS, dest="path")
    args = parser.parse_args()
    if args.hello:
        hello_server()
        return
    if args.clients_port:
        clients_main(args.clients_port, args.n, args.path, 120.0)
        return

    n = args.connections
    raise_nofile(n + 256, required=True)  # inherited by the servers
    with tempfile.TemporaryDirectory(prefix="otelflow-bench-") as tmpdir:
        proc, port = start_viewer(Path(tmpdir) / "viewer.db")
        try:

            def subscribers() -> int:
                return int(json.loads(get(port, "/healthz"))["subscribers"])

            idle, loaded, seen = measure(proc, port, "/api/stream", n, subscribers)
        finally:
            stop(proc)
    hproc, hport = start_hello()
    try:
        h_idle, h_loaded, _ = measure(hproc, hport, "/stream", n, lambda: n)
    finally:
        stop(hproc)

    per = (loaded - idle) * KIB / n
    h_per = (h_loaded - h_idle) * KIB / n
    print(f"otelflow serve idle RSS   : {idle / KIB:6.1f} MiB  (target <= 80 MiB)")
    print(f"baseline uvicorn+Starlette: {h_idle / KIB:6.1f} MiB  ratio {idle / h_idle:.2f}x")
    print(
        f"per idle SSE connection   : {per / KIB:6.1f} KiB  (target <= 16 KiB; {n} streams, "
        f"{seen} subscribers seen, RSS {loaded / KIB:.1f} MiB)"
    )
    print(f"baseline StreamingResponse: {h_per / KIB:6.1f} KiB  ratio {per / h_per:.2f}x")


if __name__ == "__main__":
    main()
