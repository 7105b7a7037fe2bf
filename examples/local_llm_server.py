r"""A small OpenAI-compatible server on loopback: deterministic replies, no key, no network.

It stands in for a model provider in the examples and tests, so that the real ``openai`` client and the real
OpenTelemetry instrumentations can be exercised offline:

    python examples/local_llm_server.py --port 8765          # prints its base URL, Ctrl-C stops it
    OPENAI_BASE_URL=http://127.0.0.1:8765/v1 OPENAI_API_KEY=unused python my_llm_script.py

or, in-process, ``with serve() as base_url: openai.OpenAI(base_url=base_url, api_key="unused")``.

Endpoints:

- ``POST /v1/chat/completions``: replies ``"Echo: <the last user message>"``; with ``stream: true`` the reply
  comes as Server-Sent Events, a chunk per word with ``chunk_delay`` seconds between chunks, then
  ``data: [DONE]``; ``stream_options: {"include_usage": true}`` adds a last chunk carrying the usage. When the
  request offers ``tools`` and the conversation has no tool result yet, the reply is a call to the first tool
  (``finish_reason: "tool_calls"``), with the last user message as its ``query`` argument.
- ``POST /v1/embeddings``: one vector of 8 numbers per input, derived from the text.
- ``GET /v1/models``: the models the server names.

Usage counts are words (whitespace-separated) of the messages in, and of the reply out. The model ``gpt-4o-mini``
answers as ``gpt-4o-mini-2024-07-18`` and ``gpt-4o`` as ``gpt-4o-2024-08-06`` (as the real API reports dated
snapshots); any other model answers under its own name. A request for the model ``fail`` gets a 400 error.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.server
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

SNAPSHOTS = {"gpt-4o-mini": "gpt-4o-mini-2024-07-18", "gpt-4o": "gpt-4o-2024-08-06"}
CREATED = 1_700_000_000  # a fixed timestamp: replies are the same every time


def _text_of(content: Any) -> str:
    """A message's content as text: a string, or the text parts of a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def _words(text: str) -> int:
    return len(text.split())


def echo_reply(messages: list[dict[str, Any]]) -> str:
    """The default reply: ``Echo: `` and the last user message."""
    users = [_text_of(m.get("content")) for m in messages if m.get("role") == "user"]
    return f"Echo: {users[-1] if users else ''}".strip()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests and examples print their own lines
        pass

    def _send_json(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _read_json(self) -> dict[str, Any] | None:
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            body = None
        if not isinstance(body, dict):
            self._send_json(400, {"error": {"message": "the body must be a JSON object", "type": "invalid_request"}})
            return None
        return body

    def do_GET(self) -> None:
        if self.path.rstrip("/") == "/v1/models":
            names = sorted({*SNAPSHOTS, *SNAPSHOTS.values(), "text-embedding-3-small"})
            data = [{"id": n, "object": "model", "created": CREATED, "owned_by": "local"} for n in names]
            self._send_json(200, {"object": "list", "data": data})
        else:
            self._send_json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0].rstrip("/")
        if path not in ("/v1/chat/completions", "/v1/embeddings"):
            self._send_json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
            return
        body = self._read_json()
        if body is None:
            return
        model = str(body.get("model") or "")
        if model == "fail":
            self._send_json(400, {"error": {"message": "the model 'fail' always fails", "type": "invalid_request"}})
            return
        self.server.requests.append({"path": path, **body})
        if path == "/v1/embeddings":
            self._embeddings(model, body)
        elif body.get("stream"):
            self._chat_stream(model, body)
        else:
            self._chat(model, body)

    def _answer(self, body: dict[str, Any]) -> tuple[str, dict[str, Any] | None, dict[str, int]]:
        """The reply's text, the tool call (or None) and the usage of a chat request."""
        messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
        tools = [t for t in body.get("tools") or [] if isinstance(t, dict)]
        tool_call = None
        if tools and not any(m.get("role") == "tool" for m in messages):
            users = [_text_of(m.get("content")) for m in messages if m.get("role") == "user"]
            name = str((tools[0].get("function") or {}).get("name") or "tool")
            arguments = json.dumps({"query": users[-1] if users else ""})
            tool_call = {"id": "call_0001", "type": "function", "function": {"name": name, "arguments": arguments}}
            text = ""
        else:
            text = self.server.reply(messages)
        prompt = sum(_words(_text_of(m.get("content"))) for m in messages)
        completion = _words(text) + (len(tool_call["function"]["arguments"].split()) if tool_call else 0)
        usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
        return text, tool_call, usage

    def _chat(self, model: str, body: dict[str, Any]) -> None:
        text, tool_call, usage = self._answer(body)
        message: dict[str, Any] = {"role": "assistant", "content": text or None}
        if tool_call:
            message["tool_calls"] = [tool_call]
        choice = {"index": 0, "message": message, "finish_reason": "tool_calls" if tool_call else "stop"}
        reply = {
            "id": f"chatcmpl-{self.server.next_id()}",
            "object": "chat.completion",
            "created": CREATED,
            "model": SNAPSHOTS.get(model, model),
            "choices": [choice],
            "usage": usage,
            "system_fingerprint": "fp_local",
        }
        self._send_json(200, reply)

    def _chat_stream(self, model: str, body: dict[str, Any]) -> None:
        text, tool_call, usage = self._answer(body)
        ident = f"chatcmpl-{self.server.next_id()}"
        base = {
            "id": ident,
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": SNAPSHOTS.get(model, model),
        }
        deltas: list[dict[str, Any]] = [{"role": "assistant", "content": ""}]
        if tool_call:
            deltas.append({"tool_calls": [{"index": 0, **tool_call}]})
        else:
            words = text.split(" ")
            deltas += [{"content": w if i == 0 else " " + w} for i, w in enumerate(words)]
        chunks = [{**base, "choices": [{"index": 0, "delta": d, "finish_reason": None}]} for d in deltas]
        finish = "tool_calls" if tool_call else "stop"
        chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
        if (body.get("stream_options") or {}).get("include_usage"):
            chunks.append({**base, "choices": [], "usage": usage})
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for index, chunk in enumerate(chunks):
                if index and self.server.chunk_delay:
                    time.sleep(self.server.chunk_delay)
                self._write_chunk(f"data: {json.dumps(chunk)}\n\n".encode())
            self._write_chunk(b"data: [DONE]\n\n")
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):  # the client stopped reading
            self.close_connection = True

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _embeddings(self, model: str, body: dict[str, Any]) -> None:
        raw = body.get("input")
        inputs = [raw] if isinstance(raw, str) else [str(i) for i in raw] if isinstance(raw, list) else []
        data = []
        for index, text in enumerate(inputs):
            digest = hashlib.sha256(text.encode()).digest()
            data.append({"object": "embedding", "index": index, "embedding": [b / 255 for b in digest[:8]]})
        tokens = sum(_words(t) for t in inputs)
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        self._send_json(200, {"object": "list", "data": data, "model": model, "usage": usage})


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], reply: Callable[[list[dict[str, Any]]], str], delay: float) -> None:
        super().__init__(address, _Handler)
        self.reply = reply
        self.chunk_delay = delay
        self.requests: list[dict[str, Any]] = []  # every request body accepted, for tests to look at
        self._ids = 0
        self._lock = threading.Lock()

    def next_id(self) -> str:
        with self._lock:
            self._ids += 1
            return f"{self._ids:06d}"


@contextlib.contextmanager
def serve(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    chunk_delay: float = 0.02,
    reply: Callable[[list[dict[str, Any]]], str] = echo_reply,
) -> Iterator[str]:
    """Run the server in a background thread; yields its base URL (``http://127.0.0.1:PORT/v1``).

    ``port=0`` takes a free port. ``reply`` makes the text of each chat reply from the request's messages.
    """
    server = _Server((host, port), reply, chunk_delay)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A local OpenAI-compatible server with deterministic replies.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    parser.add_argument("--chunk-delay", type=float, default=0.05, help="seconds between streamed chunks")
    args = parser.parse_args(argv)
    with serve(args.host, args.port, chunk_delay=args.chunk_delay) as base_url:
        print(f"OpenAI-compatible server at {base_url} (Ctrl-C stops it)", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    main()
