"""Statistics per model (``GET /api/stats/models``), kept as model calls are stored: counts, tokens, estimated
cost, latency and time-to-first-token quantiles within the sketch's 1%, narrowed by time, trimmed by retention,
and built for a schema-5 history when it is opened."""

from __future__ import annotations

import random
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from otelflow import attributes as A
from otelflow.viewer.history import History, SqliteHistory

from .conftest import Viewer, record, span_id, trace_id, wait_for
from .test_name_stats import HOUR_NS, exact

DAY_NS = 24 * HOUR_NS


def call(
    trace: str,
    model: str,
    duration_ms: float,
    *,
    tokens: tuple[Any, Any] = (100, 10),
    ttft_ms: float | None = None,
    error: bool = False,
    ended_ago_ns: int = 0,
    provider: str = "openai",
) -> Any:
    attrs: dict[str, Any] = {
        A.GEN_AI_OPERATION_NAME: A.OP_CHAT,
        A.GEN_AI_PROVIDER_NAME: provider,
        A.GEN_AI_RESPONSE_MODEL: model,
        A.GEN_AI_USAGE_INPUT_TOKENS: tokens[0],
        A.GEN_AI_USAGE_OUTPUT_TOKENS: tokens[1],
    }
    if ttft_ms is not None:
        attrs[A.LLM_TIME_TO_FIRST_TOKEN_MS] = ttft_ms
    duration_ns = int(duration_ms * 1e6)
    start = time.time_ns() - ended_ago_ns - duration_ns
    rec = record(
        trace, span_id(), f"chat {model}", kind=A.KIND_LLM, ended=True, error=error, start=start,
        duration_ns=duration_ns, attributes=attrs,
    )  # fmt: skip
    rec.attributes.pop(A.KIND)  # recognised by its GenAI operation, as instrumentations send it
    rec.kind = A.KIND_SPAN
    return rec


def models(viewer: Viewer, since: str = "all") -> dict[str, dict[str, Any]]:
    got = httpx.get(f"{viewer.url}/api/stats/models", params={"since": since}, timeout=5).json()
    return {s["model"]: s for s in got["models"]}


def test_per_model_counts_tokens_cost_and_quantiles(
    make_viewer: Callable[..., Viewer], new_db: Callable[[], str]
) -> None:
    viewer = make_viewer(db=new_db())
    rng = random.Random(3)
    latencies = [rng.lognormvariate(6.0, 0.8) for _ in range(200)]
    ttfts = [rng.lognormvariate(4.0, 0.5) for _ in range(200)]
    trace = trace_id()
    calls = [
        call(trace, "gpt-4o-mini-2024-07-18", lat, ttft_ms=ttft, error=i % 10 == 0)
        for i, (lat, ttft) in enumerate(zip(latencies, ttfts, strict=True))
    ]
    calls.append(call(trace, "my-model", 30.0, tokens=("many", -1), provider="local"))
    assert viewer.post_json(calls).is_success
    stats = wait_for(lambda: (m := models(viewer)).get("my-model") and len(m) == 2 and m, what="the statistics")

    mini = stats["gpt-4o-mini-2024-07-18"]
    assert (mini["provider"], mini["calls"], mini["errors"]) == ("openai", 200, 20)
    assert mini["error_rate"] == pytest.approx(0.1)
    assert (mini["input_tokens"], mini["output_tokens"]) == (20_000, 2_000)
    assert mini["cost_usd"] == pytest.approx((20_000 * 0.15 + 2_000 * 0.6) / 1e6)
    assert mini["cost_estimate"] is True
    for key, values in (("p50_ms", latencies), ("ttft_p50_ms", ttfts)):
        assert abs(mini[key] - exact(values, 0.5)) <= 0.011 * exact(values, 0.5), key
    for key, values in (("p95_ms", latencies), ("ttft_p95_ms", ttfts)):
        assert abs(mini[key] - exact(values, 0.95)) <= 0.011 * exact(values, 0.95), key

    mine = stats["my-model"]
    assert (mine["provider"], mine["calls"], mine["input_tokens"], mine["output_tokens"]) == ("local", 1, 0, 0)
    assert (mine["cost_usd"], mine["unpriced_calls"], mine["ttft_p50_ms"]) == (None, 1, None)
    assert models(viewer, "1h") == stats


def test_narrowed_by_time_and_trimmed_by_retention(
    make_viewer: Callable[..., Viewer], new_db: Callable[[], str]
) -> None:
    viewer = make_viewer(db=new_db(), retention_days=2.0)
    trace = trace_id()
    old = [call(trace, "gpt-4o", 100.0, ended_ago_ns=3 * DAY_NS) for _ in range(2)]
    assert viewer.post_json([*old, call(trace, "gpt-4o", 200.0)]).is_success
    wait_for(lambda: models(viewer).get("gpt-4o", {}).get("calls") == 3, what="three calls")
    assert models(viewer, "1h")["gpt-4o"]["calls"] == 1
    assert models(viewer, "7d")["gpt-4o"]["calls"] == 3
    history: History = viewer.app.state.history
    history.retention_now()
    assert models(viewer, "7d")["gpt-4o"]["calls"] == 1  # the hours past retention left
    assert models(viewer, "all")["gpt-4o"]["calls"] == 3  # all time is a running total, as per name


def test_a_schema_5_history_gets_model_statistics_when_opened(
    make_viewer: Callable[..., Viewer], tmp_path: Path
) -> None:
    db = tmp_path / "v5.db"
    first = make_viewer(db=db)
    trace = trace_id()
    root = record(trace, span_id(), "invoke_workflow w", kind=A.KIND_WORKFLOW, ended=True, run_id="old-run")
    calls = [call(trace, "gpt-4o-mini", 50.0), call(trace, "gpt-4o-mini", 70.0, error=True)]
    for c in calls:
        c.parent_span_id = root.span_id
    assert first.post_json([root, *calls]).is_success
    wait_for(lambda: models(first).get("gpt-4o-mini", {}).get("calls") == 2, what="the statistics")
    first.stop()
    with sqlite3.connect(db) as conn:  # what schema 5 stored: no model_stats, model calls of kind span
        conn.execute("DROP TABLE model_stats")
        conn.execute("UPDATE spans SET kind = 'span' WHERE kind = 'llm'")
        conn.execute("UPDATE meta SET value = '5' WHERE key = 'schema'")
    reopened = make_viewer(db=SqliteHistory(db))
    got = models(reopened)["gpt-4o-mini"]
    assert (got["calls"], got["errors"], got["input_tokens"]) == (2, 1, 200)
    detail = httpx.get(f"{reopened.url}/api/runs/old-run", timeout=5).json()
    assert sorted(s["kind"] for s in detail["spans"]) == ["llm", "llm", "workflow"]
    assert all(s["llm"]["model"] == "gpt-4o-mini" for s in detail["spans"] if s["kind"] == "llm")
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() == ("6",)


def test_bad_since_is_refused(viewer: Viewer) -> None:
    response = httpx.get(f"{viewer.url}/api/stats/models", params={"since": "2w"}, timeout=5)
    assert response.status_code == 400
