"""The Redis Streams backend: viewer replicas share one ordered log of what they received, and each applies all of
it, in the log's order, to its own live state.

Contracts:

- :meth:`RedisBackend.append` adds an entry (an OTLP request's body as received, or an encoded batch: see
  :mod:`viewer.live.backends.codec`) to one stream, ``MAXLEN ~ maxlen``; once it returns, the entry is in Redis
  (the receiver may acknowledge the request). It raises :class:`BrokerError` when Redis cannot be reached.
- Every entry gets a number ``n``, dense from 1 (one Lua script numbers and adds it, so the numbers follow the
  stream's order), and the log's epoch: a random name kept in Redis. When Redis loses its data (a restart
  without persistence) the first writer names a new epoch and numbers go on from the highest it had seen.
- One reader task per viewer reads every entry in order and delivers its batches (decoded by ``decode``) to the
  live state, each with its :class:`viewer.live.state.Entry`: the broadcast numbers their events from ``n``, so
  every replica gives an event the same id. A number missing within an epoch (the reader fell behind the
  stream's length) is a ``gap``; a new epoch, data lost: both reach clients as ``reset``. Entries numbered up to
  ``start_after`` (already in the shared history when the viewer started) are skipped.
- Redis unreachable: the reader and the lease retry with a growing pause (at most 2 s), logged once per outage;
  appends fail at once (the receiver answers 503 and the sender retries).
- One viewer at a time *leads* (a lease key with a TTL of ``lease_s``, renewed every third of it): it takes the
  time-based decisions and writes the shared history. ``on_lead(True)`` runs before a viewer starts leading,
  ``on_lead(False)`` once it stopped (lease lost or Redis gone for a lease's time).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any, Final

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from ..state import Batch, Entry
from .codec import KIND_BATCH, encode_batch

__all__ = ["DEFAULT_MAXLEN", "BrokerError", "Decode", "RedisBackend", "check_broker"]

log = logging.getLogger("otelflow.viewer")

DEFAULT_MAXLEN: Final = 20_000  # entries the stream keeps (about: MAXLEN ~), each a request or a batch
YIELD_AFTER_S: Final = 0.005  # the longest the reader holds the event loop at a time (about)

Decode = Callable[[int, bytes, int], list[Batch]]  # an entry's kind, body and arrival time -> its batches

# KEYS: stream, counter, epoch; ARGV: maxlen, kind, at, body, a new epoch's name, the first number of a new epoch
_APPEND: Final = """
local e = redis.call('GET', KEYS[3])
if not e then
  e = ARGV[5]
  redis.call('SET', KEYS[3], e)
  local n0 = tonumber(redis.call('GET', KEYS[2]) or '0')
  if n0 < tonumber(ARGV[6]) then redis.call('SET', KEYS[2], ARGV[6]) end
end
local n = redis.call('INCR', KEYS[2])
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'n', n, 'e', e, 'k', ARGV[2], 'at', ARGV[3], 'b', ARGV[4])
return n
"""
# KEYS: leader; ARGV: me, ttl ms
_RENEW: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class BrokerError(RuntimeError):
    """The broker cannot be used (one line saying why and what to do)."""


def _describe(url: str, exc: BaseException) -> str:
    where = url.split("@")[-1]  # never the password
    return f"cannot reach the broker at {where.split('://')[-1] if '://' in where else where}: {exc}"


def _client(url: str, *, blocking: bool = False) -> aioredis.Redis:
    try:
        return aioredis.Redis.from_url(
            url,
            socket_connect_timeout=5,
            socket_timeout=None if blocking else 10,
            health_check_interval=0 if blocking else 30,
        )
    except ValueError as exc:
        raise BrokerError(f"the broker URL is not one Redis understands ({exc}); use redis://host:port/db") from None


async def check_broker(url: str) -> None:
    """Raise :class:`BrokerError` unless ``url`` names a Redis server (7 or newer) that answers."""
    client = _client(url)
    try:
        info = await client.info("server")
    except (RedisError, OSError) as exc:
        raise BrokerError(_describe(url, exc)) from None
    finally:
        await client.aclose()
    version = str(info.get("redis_version", "0"))
    if int(version.split(".")[0] or 0) < 7:
        raise BrokerError(f"the broker runs Redis {version}; otelflow needs Redis 7 or newer")


class RedisBackend:
    """One Redis stream shared by viewer replicas (see the module docstring)."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "otelflow",
        maxlen: int = DEFAULT_MAXLEN,
        lease_s: float = 5.0,
        read_count: int = 64,
    ) -> None:
        if maxlen < 100:
            raise BrokerError(f"the stream's length must be at least 100 entries, not {maxlen}")
        self.url = url
        tag = "{" + prefix + "}"  # one hash slot: the script touches several keys
        self.stream, self._counter, self._epoch_key = f"{tag}:stream", f"{tag}:n", f"{tag}:epoch"
        self._leader_key = f"{tag}:leader"
        self.maxlen = maxlen
        self.lease_s = lease_s
        self.read_count = read_count
        self.me = secrets.token_hex(8)
        self.decode: Decode | None = None
        self.on_lead: Callable[[bool], Awaitable[None]] | None = None
        self.start_after = 0
        self.stats: dict[str, int] = {"entries_read": 0, "entries_added": 0, "gaps": 0, "epochs": 0, "decode_errors": 0}
        self._deliver: Callable[[Batch], None] | None = None
        self._client: aioredis.Redis | None = None
        self._reader: aioredis.Redis | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._sends: set[asyncio.Task[None]] = set()
        self._leading = False
        self._last_id: bytes | str = "0-0"
        self._last_n = 0
        self._epoch: str | None = None
        self._down_since: float | None = None  # when the broker stopped answering (monotonic), while it does not

    @property
    def leading(self) -> bool:
        return self._leading

    @property
    def failure(self) -> str | None:
        """Why the broker cannot be used now (``None``: it answers)."""
        if self._down_since is None:
            return None
        return f"the broker does not answer (for {time.monotonic() - self._down_since:.0f} s); live events wait for it"

    @property
    def last_n(self) -> int:
        """The number of the last entry read."""
        return self._last_n

    def bind(self, deliver: Callable[[Batch], None]) -> None:
        self._deliver = deliver

    async def start(self) -> None:
        """Connect (raises :class:`BrokerError` when Redis does not answer), then read and contend for the lease."""
        await check_broker(self.url)
        self._client = _client(self.url)
        self._reader = _client(self.url, blocking=True)
        self._append = self._client.register_script(_APPEND)
        self._renew = self._client.register_script(_RENEW)
        self._release = self._client.register_script(_RELEASE)
        self._last_n = max(self._last_n, self.start_after)
        self._tasks = [
            asyncio.create_task(self._read_loop(), name="otelflow-broker-reader"),
            asyncio.create_task(self._lease_loop(), name="otelflow-broker-lease"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self._sends:
            await asyncio.wait(self._sends, timeout=2.0)
        if self._leading and self._client is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._release(keys=[self._leader_key], args=[self.me])
            await self._set_leading(False)
        for client in (self._client, self._reader):
            if client is not None:
                with contextlib.suppress(RedisError, OSError):
                    await client.aclose()
        self._client = self._reader = None

    # ------------------------------------------------------------------ writing

    async def append(self, kind: int, body: bytes, at_ns: int) -> int:
        """Add an entry; its number once it is in Redis. Raises :class:`BrokerError` when it could not be added."""
        if self._client is None:
            raise BrokerError("the broker is not connected yet")
        try:
            args: list[bytes | str | int] = [self.maxlen, kind, at_ns, body, secrets.token_hex(4), self._last_n]
            n = int(await self._append(keys=[self.stream, self._counter, self._epoch_key], args=args))
        except (RedisError, OSError) as exc:
            self._outage("append", exc)
            raise BrokerError(_describe(self.url, exc)) from None
        self._recovered("append")
        self.stats["entries_added"] += 1
        return n

    def publish(self, batch: Batch) -> None:
        """Add a batch without a body (this process's spans, heartbeats, decisions); it comes back through the
        reader like every entry. Never blocks: a failure is logged and counted."""
        task = asyncio.get_running_loop().create_task(self._send(encode_batch(batch), batch.at_ns))
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

    async def _send(self, data: bytes, at_ns: int) -> None:
        try:
            await self.append(KIND_BATCH, data, at_ns)
        except BrokerError:
            self.stats["batches_lost"] = self.stats.get("batches_lost", 0) + 1

    # ------------------------------------------------------------------ reading

    async def _read_loop(self) -> None:
        pause = 0.05
        while True:
            reader = self._reader
            assert reader is not None
            try:
                reply: Any = await reader.xread({self.stream: self._last_id}, count=self.read_count, block=1000)
            except (RedisError, OSError) as exc:
                self._outage("read", exc)
                await asyncio.sleep(pause)
                pause = min(2.0, pause * 2)
                continue
            pause = 0.05
            self._recovered("read")
            for _stream, entries in reply or ():
                for entry_id, fields in entries:
                    self._last_id = entry_id
                    await self._entry(fields)

    async def _entry(self, fields: dict[bytes, bytes]) -> None:
        n, epoch = int(fields[b"n"]), fields[b"e"].decode()
        if epoch == self._epoch and n <= self._last_n:
            return  # read already
        gap = self._epoch == epoch and n != self._last_n + 1
        if self._epoch is not None and epoch != self._epoch:
            self.stats["epochs"] += 1
            log.warning("the broker lost its data (new epoch %s): clients are told to reset", epoch)
        elif gap:
            self.stats["gaps"] += 1
            log.warning("entries %d..%d left the broker before this viewer read them", self._last_n + 1, n - 1)
        if self._epoch is None and n <= self.start_after:
            return  # in the shared history already, from before this viewer started
        self._epoch, self._last_n = epoch, n
        self.stats["entries_read"] += 1
        kind, at_ns, body = int(fields[b"k"]), int(fields[b"at"]), fields[b"b"]
        try:
            assert self.decode is not None
            batches = self.decode(kind, body, at_ns) or [Batch(at_ns=at_ns)]
        except Exception:
            self.stats["decode_errors"] += 1
            log.exception("could not read entry %d of the broker's stream; skipped", n)
            batches = [Batch(at_ns=at_ns)]
        deliver = self._deliver
        assert deliver is not None
        last = len(batches) - 1
        since = time.perf_counter()
        for i, batch in enumerate(batches):
            deliver(replace(batch, entry=Entry(epoch, n, i == 0, i == last, gap and i == 0)))
            if i < last and time.perf_counter() - since >= YIELD_AFTER_S:
                await asyncio.sleep(0)
                since = time.perf_counter()

    # ------------------------------------------------------------------ the lease

    async def _lease_loop(self) -> None:
        client = self._client
        assert client is not None
        ttl_ms = int(self.lease_s * 1000)
        renewed = 0.0
        while True:
            try:
                if self._leading:
                    if await self._renew(keys=[self._leader_key], args=[self.me, ttl_ms]):
                        renewed = time.monotonic()
                    else:
                        await self._set_leading(False)
                elif await client.set(self._leader_key, self.me, nx=True, px=ttl_ms):
                    renewed = time.monotonic()
                    await self._set_leading(True)
            except (RedisError, OSError):
                if self._leading and time.monotonic() - renewed > self.lease_s * 0.8:
                    await self._set_leading(False)  # another viewer may hold it by now
            await asyncio.sleep(self.lease_s / 3)

    async def _set_leading(self, leading: bool) -> None:
        if leading == self._leading:
            return
        if not leading:
            self._leading = False
        if self.on_lead is not None:
            try:
                await self.on_lead(leading)
            except Exception:
                log.exception("the broker's lead hand-over failed")
        self._leading = leading
        log.info("this viewer %s the time-based decisions and the shared history", "takes" if leading else "leaves")

    # ------------------------------------------------------------------ outages

    def _outage(self, what: str, exc: BaseException) -> None:
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.warning("%s (%s); retrying", _describe(self.url, exc), what)

    def _recovered(self, what: str) -> None:
        if self._down_since is not None:  # it answers one: it answers
            log.warning("the broker answers again (%s), after %.1f s", what, time.monotonic() - self._down_since)
            self._down_since = None
