"""A batch as bytes, for a broker: the spans of this process, the workers heard from and the checker's decisions.

Requests from senders travel as their OTLP bodies (every viewer decodes them); this codec carries what has no
body: spans from the viewer's own process (``otelflow demo``/``run``), heartbeats and the time-based decisions of
the viewer that leads. Spans travel as OTLP/JSON (:func:`otelflow.otlp_json.to_otlp_json`), the rest as JSON.
"""

from __future__ import annotations

import json
from typing import Any, Final

from otelflow.otlp_json import to_otlp_json
from otelflow.records import EventRecord

from ...decode import from_otlp_json
from ..stall import Stall
from ..state import Batch

__all__ = ["KIND_BATCH", "decode_batch", "encode_batch"]

KIND_BATCH: Final = 100  # an entry holding an encoded batch (the OTLP kinds of viewer.decode are below 100)


def encode_batch(batch: Batch) -> bytes:
    """``batch`` (without its entry) as JSON bytes."""
    out: dict[str, Any] = {"at": batch.at_ns}
    if batch.records:
        out["spans"] = to_otlp_json(batch.records)
    if batch.workers:
        out["workers"] = list(batch.workers)
    if batch.local:
        out["local"] = True
    if batch.silent_workers:
        out["silent"] = [list(x) for x in batch.silent_workers]
    if batch.idle_runs:
        out["idle"] = [list(x) for x in batch.idle_runs]
    if batch.stalls:
        out["stalls"] = [
            [trace, span, since, [s.reason, s.seconds, s.since_ns, s.rule, s.limit_s, s.p95_ms]]
            for trace, span, since, s in batch.stalls
        ]
    if batch.logs:
        out["logs"] = [[trace, span, e.name, e.time_ns, dict(e.attributes)] for trace, span, e in batch.logs]
    return json.dumps(out, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def decode_batch(data: bytes, limit: int | None) -> Batch:
    """The batch :func:`encode_batch` made (values cut at ``limit`` characters, as a request's are)."""
    raw = json.loads(data)
    records = from_otlp_json(raw["spans"], limit)[0] if "spans" in raw else []
    return Batch(
        records,
        tuple(raw.get("workers", ())),
        int(raw["at"]),
        bool(raw.get("local", False)),
        tuple((str(w), int(t)) for w, t in raw.get("silent", ())),
        tuple((str(r), int(t)) for r, t in raw.get("idle", ())),
        tuple((str(t), str(s), int(since), Stall(*why)) for t, s, since, why in raw.get("stalls", ())),
        [(str(t), str(s), EventRecord(str(n), int(at), attrs)) for t, s, n, at, attrs in raw.get("logs", ())],
    )
