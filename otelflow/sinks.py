"""Where live records go: subscribers in this process (InProcessSink) or a viewer in another (LiveExporter)."""

from __future__ import annotations

import gzip
import http.client
import json
import os
import random
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from opentelemetry import context as otel_context

from otelflow import attributes as A
from otelflow._log import problems
from otelflow.otlp_json import otlp_json_bytes, otlp_resource
from otelflow.records import PHASE_START, SpanRecord, record_from_span

if TYPE_CHECKING:
    from otelflow.processor import LiveSpanProcessor

__all__ = ["InProcessSink", "LiveExporter", "Subscriber", "viewer_urls"]

Subscriber = Callable[[Sequence[SpanRecord]], None]


def viewer_urls(value: str | Sequence[str]) -> tuple[str, ...]:
    """The viewer URLs in ``value``: one URL, several separated by commas (spaces around them are ignored), or a
    sequence of URLs. Each must be ``http(s)://host[:port][/prefix]``; trailing slashes are dropped.

    Raises ``ValueError`` naming the offending item: an empty one (``a,,b``, a trailing comma), one that is
    not an http or https URL, a bad port, or no URL at all.
    """
    items = value.split(",") if isinstance(value, str) else list(value)
    if not items or (isinstance(value, str) and not value.strip()):
        raise ValueError("viewer URL must look like http://127.0.0.1:8080, got nothing")
    urls: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"viewer URL must be a string, got {item!r}")
        url = item.strip()
        if not url:
            raise ValueError(
                f"viewer URLs {value!r}: an empty item; separate several URLs with single commas, as in "
                "http://127.0.0.1:8081,http://127.0.0.1:8082"
            )
        parts = urlsplit(url)
        try:
            parts.port  # noqa: B018 - raises ValueError on a port that is not a number or out of range
        except ValueError as exc:
            raise ValueError(f"viewer URL {url!r}: {exc}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"viewer URL must look like http://127.0.0.1:8080, got {url!r}")
        urls.append(url.rstrip("/"))
    return tuple(urls)


class _Target:
    """One viewer replica: where to connect and what to call it in logs (no credentials, no query)."""

    __slots__ = ("host", "path", "port", "scheme", "shown", "url")

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.url = url
        self.scheme = parts.scheme
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.path = (parts.path.rstrip("/") or "") + "/v1/traces"
        host = f"[{self.host}]" if ":" in self.host else self.host
        netloc = f"{host}:{parts.port}" if parts.port else host
        self.shown = f"{self.scheme}://{netloc}{parts.path.rstrip('/')}"


class InProcessSink:
    """Delivers records to any number of subscribers in this process, in order.

    A subscriber is a callable taking a batch of records. It is called on the processor's worker thread
    or, since this sink is ``inline``, on the thread that ended a span, never on two threads at once. So it
    must be quick and must not block: hand the batch to a queue or an event loop. Records may be deferred
    (see :func:`otelflow.records.deferred_record`): reading their fields is what formats them, so do that
    on the consumer's side. A subscriber that raises is logged (rate-limited) and the others still get the
    batch.
    """

    inline = True  # the processor may deliver from on_end (see LiveSpanProcessor)

    def __init__(self) -> None:
        self._subscribers: tuple[Subscriber, ...] = ()
        self._lock = threading.Lock()
        self.active = False  # nobody subscribed: the live processor skips spans altogether

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Add a subscriber; returns a function that removes it again.

        A span already running when the first subscriber arrives is delivered when it ends.
        """
        with self._lock:
            self._subscribers += (subscriber,)
            self.active = True

        def unsubscribe() -> None:
            with self._lock:
                self._subscribers = tuple(s for s in self._subscribers if s is not subscriber)
                self.active = bool(self._subscribers)

        return unsubscribe

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def export(self, records: Sequence[SpanRecord]) -> None:
        for subscriber in self._subscribers:
            try:
                subscriber(records)
            except Exception:  # noqa: BLE001 - one bad subscriber must not starve the others
                problems.warning("subscriber", "otelflow: live subscriber %r failed", subscriber, exc_info=True)

    def force_flush(self, timeout_s: float) -> bool:
        return True

    def shutdown(self, timeout_s: float) -> None:
        with self._lock:
            self._subscribers = ()
            self.active = False


class LiveExporter:
    """Streams records to an otelflow viewer in another process as OTLP/HTTP JSON (``POST /v1/traces``).

    A background thread posts records over one keep-alive connection as soon as they arrive; whatever
    arrives while a request is in flight goes in the next one, so bursts batch themselves (``linger_s``
    adds a fixed wait before each post, for fewer, larger requests). Memory is bounded: the buffer keeps
    the newest snapshot of each span, up to ``max_spans`` spans, and counts what it drops. While the viewer
    is down the thread backs off exponentially (with jitter, up to ``max_backoff_s``) and makes no attempt
    in between; ``force_flush`` then returns False at once. When the viewer answers again, the snapshots of every
    running span are re-sent so a restarted viewer knows them. A heartbeat is posted every
    ``heartbeat_s`` so the viewer can tell a live worker from a dead one. Nothing here ever blocks or
    raises into the workflow, and the OTLP export to other backends is separate and unaffected.

    ``url`` may name several viewer replicas (a comma-separated string or a sequence, see :func:`viewer_urls`).
    Records and heartbeats go to one replica at a time, the first at the start. When a post to it fails (no
    connection, a timeout, or an answer of 5xx, 408 or 429), the same batch, with a snapshot of every running
    span, is posted at once to the next replica in the list, and so on; the exporter then stays on the replica
    that took it (it logs the switch once, rate-limited, naming the URLs without credentials). Only when every
    replica failed in turn does it back off as above, then go round the list again. A batch is thus sent at
    least once and may reach two replicas; the viewer merges repeated snapshots of a span. Other 4xx answers
    (a wrong token, a body too large) would be the same on every replica: they are logged and the batch is
    dropped, as with a single viewer. The token and ``headers`` go to every replica.
    """

    def __init__(
        self,
        url: str | Sequence[str],
        *,
        token: str | None = None,
        headers: Mapping[str, str] | None = None,
        max_spans: int = 20_000,
        linger_s: float = 0.0,
        timeout_s: float = 2.0,
        heartbeat_s: float = A.HEARTBEAT_INTERVAL_S,
        max_backoff_s: float = 5.0,
        compress_above: int = 64 * 1024,
    ) -> None:
        self.urls = viewer_urls(url)
        self._targets = tuple(_Target(u) for u in self.urls)
        self._headers = {"Content-Type": "application/json", **(headers or {})}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._max_spans = max_spans
        self._linger = linger_s
        self._timeout = timeout_s
        self._heartbeat = heartbeat_s
        self._max_backoff = max_backoff_s
        self._compress_above = compress_above
        self._processor: weakref.ref[LiveSpanProcessor] | None = None
        self.active = True  # a viewer may be listening at any time
        self.dropped = 0
        self.sent = 0
        self.failures = 0  # deliveries that failed on every replica (each then waits for the backoff)
        self.failovers = 0  # times the records moved on to another replica and it took them
        self._init_state()
        weak_self = weakref.ref(self)

        def _after_fork() -> None:
            exporter = weak_self()
            if exporter is not None:
                exporter._init_state()

        os.register_at_fork(after_in_child=_after_fork)

    def _init_state(self) -> None:
        self.worker_id = uuid.uuid4().hex
        self._pending: dict[tuple[str, str], SpanRecord] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._conn: http.client.HTTPConnection | None = None
        self._conn_target: _Target | None = None
        self._connected = False
        self._circuit_open = False
        self._current = 0  # index of the replica records go to
        self._error = ""  # why the last post failed, for the logs
        self._resource: dict[str, Any] = {}
        self._thread = threading.Thread(target=self._run, name="otelflow-live-exporter", daemon=True)
        self._thread.start()

    def bind(self, processor: LiveSpanProcessor) -> None:
        """Let the exporter ask ``processor`` for its running spans when a viewer comes (back) up."""
        self._processor = weakref.ref(processor)

    @property
    def connected(self) -> bool:
        """Whether the last post reached a viewer."""
        return self._connected

    @property
    def url(self) -> str:
        """The viewer (replica) records go to now, as given."""
        return self.urls[self._current]

    # --- called on the processor's worker thread ----------------------------------------------------
    def export(self, records: Sequence[SpanRecord]) -> None:
        with self._lock:
            pending = self._pending
            for rec in records:
                key = (rec.trace_id, rec.span_id)
                if key not in pending and len(pending) >= self._max_spans:
                    self.dropped += 1
                    continue
                # A newer snapshot replaces the older one and moves to the end, so a batch keeps the order
                # in which spans last changed (a workflow's end after its children's).
                pending.pop(key, None)
                pending[key] = rec
                if not self._resource:
                    self._resource = dict(rec.resource)
            self._idle.clear()
        self._wake.set()
        if self.dropped:
            problems.warning("live-buffer", "otelflow: live buffer full; %d span snapshots dropped", self.dropped)

    def force_flush(self, timeout_s: float) -> bool:
        """Wait until the buffer is posted; False at once while the viewer is known to be unreachable."""
        if self._circuit_open:
            return False
        self._wake.set()
        return self._idle.wait(timeout_s)

    def shutdown(self, timeout_s: float) -> None:
        self.force_flush(min(timeout_s, self._timeout))
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout_s)

    # --- the exporter's own thread ------------------------------------------------------------------
    def _run(self) -> None:
        # Our own HTTP calls must not be traced by instrumented http clients.
        otel_context.attach(otel_context.set_value(otel_context._SUPPRESS_INSTRUMENTATION_KEY, True))
        try:
            self._loop()
        finally:
            self._close()

    def _loop(self) -> None:
        backoff = 0.0
        last_post = 0.0
        while not self._stop.is_set():
            if backoff:
                # The circuit is open: no new attempt before the backoff ends, whatever arrives meanwhile
                # (records keep merging into the bounded buffer).
                self._stop.wait(backoff)
            elif not self._pending:
                self._wake.wait(max(0.0, self._heartbeat - (time.monotonic() - last_post)))
                self._wake.clear()
            if self._stop.is_set() and not self._pending:
                break
            if self._pending and not backoff and self._linger:
                time.sleep(self._linger)  # gather the rest of a burst into the same request
            with self._lock:
                batch = list(self._pending.values())
                self._pending = {}
            if not batch and time.monotonic() - last_post < self._heartbeat and not backoff:
                self._idle.set()
                continue
            resync = not self._connected
            if resync:
                batch = self._running_snapshots(batch)
            delivered, batch = self._deliver(batch)
            if delivered:
                last_post = time.monotonic()
                backoff = 0.0
                self._circuit_open = False
                self.sent += len(batch)
                with self._lock:
                    if not self._pending:
                        self._idle.set()
            else:
                self.failures += 1
                self._requeue(batch)
                backoff = min(self._max_backoff, max(0.1, backoff * 2)) * random.uniform(0.8, 1.2)
                self._circuit_open = True
                self._idle.set()  # flushing cannot make progress while the viewer is away
                if self._stop.is_set():
                    break

    def _deliver(self, batch: list[SpanRecord]) -> tuple[bool, list[SpanRecord]]:
        """Post ``batch`` to the current replica, else to each next one in turn (with the running spans' snapshots,
        which a replica new to us may not know); whether one took it, and the batch as last posted."""
        was_connected = self._connected
        first = self._current
        errors: list[str] = []
        for tried in range(len(self._targets)):
            if tried:
                self._current = (self._current + 1) % len(self._targets)
                batch = self._running_snapshots(batch)
            target = self._targets[self._current]
            if self._post(target, batch):
                if tried:
                    self.failovers += 1
                    problems.warning(
                        "live-failover",
                        "otelflow: viewer at %s unreachable (%s); live spans go to %s now",
                        self._targets[first].shown,
                        errors[0],
                        target.shown,
                    )
                return True, batch
            errors.append(self._error)
        # every replica failed: the next round starts where this one did
        self._current = (self._current + 1) % len(self._targets)
        if was_connected:
            if len(self._targets) == 1:
                shown = self._targets[0].shown
                problems.warning("live-down", "otelflow: viewer at %s unreachable: %s", shown, errors[0])
            else:
                problems.warning(
                    "live-down",
                    "otelflow: no viewer reachable (%s): %s",
                    ", ".join(t.shown for t in self._targets),
                    "; ".join(errors),
                )
        return False, batch

    def _running_snapshots(self, batch: list[SpanRecord]) -> list[SpanRecord]:
        """Add a snapshot of every running span the batch does not already carry (after a reconnect)."""
        processor = self._processor() if self._processor is not None else None
        if processor is None:
            return batch
        have = {(r.trace_id, r.span_id) for r in batch}
        extra = []
        for span in processor.active_spans():
            try:
                rec = record_from_span(span, PHASE_START)
            except Exception:  # noqa: BLE001, S112 - a span that cannot be read is simply not re-sent
                continue
            if (rec.trace_id, rec.span_id) not in have:
                extra.append(rec)
        return extra + batch

    def _requeue(self, batch: list[SpanRecord]) -> None:
        with self._lock:
            # snapshots that arrived meanwhile are newer: they replace their span's failed one, in their place
            merged = {(r.trace_id, r.span_id): r for r in batch if (r.trace_id, r.span_id) not in self._pending}
            merged.update(self._pending)
            if len(merged) > self._max_spans:
                over = len(merged) - self._max_spans
                self.dropped += over
                merged = dict(list(merged.items())[over:])
            self._pending = merged

    def _body(self, batch: list[SpanRecord]) -> bytes:
        worker = {A.WORKER_ID: self.worker_id}
        if batch:
            return otlp_json_bytes(batch, resource_extra=worker)
        # a heartbeat: the worker's resource and no spans
        resource = {**(self._resource or {}), **worker}
        payload = {"resourceSpans": [{"resource": otlp_resource(resource), "scopeSpans": []}]}
        return json.dumps(payload, separators=(",", ":")).encode("utf-8")

    def _post(self, target: _Target, batch: list[SpanRecord]) -> bool:
        """Post ``batch`` to ``target``: True when it took it (or refused it for good, a 4xx), False when it
        could not (no connection, a timeout, 5xx, 408, 429; ``self._error`` says which)."""
        try:
            body = self._body(batch)
        except Exception:  # noqa: BLE001
            problems.warning("live-encode", "otelflow: could not encode span records", exc_info=True)
            return True  # dropping a batch we cannot encode is better than retrying it forever
        headers = dict(self._headers)
        if len(body) > self._compress_above:
            body = gzip.compress(body, compresslevel=1)
            headers["Content-Encoding"] = "gzip"
        for attempt in (1, 2):  # a kept-alive connection may have been closed by the server: retry once
            try:
                conn = self._connection(target)
                conn.request("POST", target.path, body=body, headers=headers)
                response = conn.getresponse()
                response.read()
                if response.status >= 500 or response.status in (408, 429):
                    raise ConnectionError(f"viewer answered {response.status}")
                if response.status >= 400:
                    problems.warning(
                        "live-4xx",
                        "otelflow: viewer at %s refused live spans: HTTP %d",
                        target.shown,
                        response.status,
                    )
                self._connected = True
                return True
            except (OSError, http.client.HTTPException) as exc:
                self._close()
                # a timeout is not a stale connection: trying the same replica again would only wait as long again
                if attempt == 2 or not self._connected or isinstance(exc, TimeoutError):
                    self._error = str(exc) or type(exc).__name__
                    self._connected = False
                    return False
        return False

    def _connection(self, target: _Target) -> http.client.HTTPConnection:
        if self._conn is not None and self._conn_target is not target:
            self._close()  # moving to another replica
        if self._conn is None:
            cls = http.client.HTTPSConnection if target.scheme == "https" else http.client.HTTPConnection
            self._conn = cls(target.host, target.port, timeout=self._timeout)
            self._conn_target = target
        return self._conn

    def _close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None
