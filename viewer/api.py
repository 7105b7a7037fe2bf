"""The REST API: runs (list, detail, recorded events, OTLP export), stats per name, what runs now, alerts, and
health.

``{run}`` is a trace id (as Jaeger shows it) or an ``otelflow.run.id``. Runs still in the live state are
answered from it; ended runs from the history. Every answer is JSON that always renders (:class:`ApiResponse`).
"""

from __future__ import annotations

import json
import time
from typing import Any, Final

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from starlette.responses import Response

from otelflow import attributes as A
from otelflow.otlp_json import to_otlp_json
from otelflow.records import SpanRecord
from otelflow.scrub import fix_surrogates
from otelflow.wire import STALLED, finite

from .alerts import AlertEngine
from .history import History, RunQuery
from .history.name_stats import HOUR_NS
from .live import Hub, RunState
from .live.backends import RedisBackend
from .live.llm_totals import llm_by_span

__all__ = ["ApiResponse", "api_router", "run_has_ended"]

_DEFAULT_KINDS: Final = (A.KIND_WORKFLOW, A.KIND_AGENT, A.KIND_NODE, A.KIND_TOOL)
# /api/stats?since=: how far back (whole hours: "1h" is the current hour and the one before)
_RANGES: Final[dict[str, int | None]] = {"1h": HOUR_NS, "1d": 24 * HOUR_NS, "7d": 168 * HOUR_NS, "all": None}


class ApiResponse(JSONResponse):
    """JSON that always renders: text stored before it was cleaned (lone surrogates) becomes U+FFFD and
    non-finite numbers strings, rather than the whole answer failing."""

    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except (UnicodeEncodeError, ValueError):
            text = json.dumps(finite(content), ensure_ascii=False, separators=(",", ":"), default=str)
            return fix_surrogates(text).encode("utf-8")


def _error(status: int, message: str) -> JSONResponse:
    return ApiResponse({"error": message}, status)


def _span_tree(spans: list[SpanRecord]) -> list[dict[str, Any]]:
    """Nested ``{"span_id", "children"}`` nodes; spans whose parent is unknown are roots."""
    nodes: dict[str, dict[str, Any]] = {s.span_id: {"span_id": s.span_id, "children": []} for s in spans}
    roots: list[dict[str, Any]] = []
    for s in spans:
        parent = nodes.get(s.parent_span_id) if s.parent_span_id else None
        if parent is not None and s.parent_span_id != s.span_id:
            parent["children"].append(nodes[s.span_id])
        else:
            roots.append(nodes[s.span_id])
    return roots


def _cursor(value: str) -> tuple[int, str] | None:
    """``<start_ns>.<trace id>`` (the ``next`` of a page of runs), or ``None`` when it is not one."""
    start, _, trace = value.partition(".")
    if not start.isdigit() or not trace or len(trace) > 64:
        return None
    return int(start), trace


async def run_has_ended(hub: Hub, history: History, run: str) -> bool:
    """Whether ``run`` is only in the history, ended: its stream then replays what is stored and closes."""
    if hub.resolve(run) is not None:
        return False
    trace = await history.resolve(run)
    if trace is None:
        return False
    summary, _ = await history.get_run(trace)
    return summary is not None and summary["status"] != A.STATUS_RUNNING


class _Api:
    """The route handlers, over ``hub`` (live runs) and ``history`` (the rest)."""

    def __init__(self, hub: Hub, history: History, alerts: AlertEngine | None) -> None:
        self.hub = hub
        self.history = history
        self.alerts = alerts

    async def _resolve(self, run: str) -> str | None:
        return self.hub.resolve(run) or self.hub.resolve(run.lower()) or await self.history.resolve(run)

    async def runs(
        self,
        status: str | None = None,
        name: str | None = None,
        service: str | None = None,
        limit: int = 50,
        offset: int = 0,
        after: str | None = None,
    ) -> Response:
        if not 1 <= limit <= 500 or offset < 0:
            return _error(400, "limit must be 1..500 and offset ≥ 0")
        cursor = _cursor(after) if after else None
        if after and cursor is None:
            return _error(400, "after must be the `next` of a previous page")
        statuses = tuple(s.strip() for s in status.split(",") if s.strip()) if status else ()
        if STALLED in statuses and not set(statuses) - {STALLED, A.STATUS_RUNNING}:
            # stalled is a live flag: the live state answers (with `running` too, it narrows to stalled runs)
            stalled = [r for r in self._live(name, service) if r.stalled]
            page = [r.to_dict() for r in stalled[offset : offset + limit]]
            return ApiResponse({"runs": page, "total": len(stalled), "limit": limit, "offset": offset})
        query = RunQuery(status=statuses, name=name, service=service, limit=limit, offset=offset, after=cursor)
        items, total = await self.history.list_runs(query)
        last = items[-1] if len(items) == limit else None
        following = f"{int(last.get('start_time_ns') or 0)}.{last['trace_id']}" if last else None
        for i, item in enumerate(items):
            live = self.hub.run(item["trace_id"])
            if live is not None:
                items[i] = live.to_dict()
        return ApiResponse({"runs": items, "total": total, "limit": limit, "offset": offset, "next": following})

    def _live(self, name: str | None = None, service: str | None = None) -> list[RunState]:
        """Running runs of the live state, newest first."""
        runs = [
            r
            for r in self.hub.runs()
            if r.status == A.STATUS_RUNNING
            and (name is None or name in (r.name, r.alias, r.workflow))
            and (service is None or r.service == service)
        ]
        return sorted(runs, key=lambda r: (-r.start_ns, r.trace_id))

    async def now(self) -> Response:
        """What runs now: running runs, those with stalled work, open alerts (the pages' header)."""
        running = self._live()
        return ApiResponse(
            {
                "running": len(running),
                "stalled": sum(1 for r in running if r.stalled),
                "open_alerts": len(self.alerts.open) if self.alerts is not None else 0,
                "last_event_id": self.hub.broadcast.last_id,
            }
        )

    async def alert_list(self, status: str = "open", limit: int = 200) -> Response:
        if status not in ("open", "resolved", "all") or not 1 <= limit <= 1000:
            return _error(400, "status must be open, resolved or all, and limit 1..1000")
        engine = self.alerts
        if status == "open":
            items = sorted(engine.open.values(), key=lambda a: -a["fired_ns"])[:limit] if engine else []
        else:
            stored = await self.history.alerts(None if status == "all" else status, limit)
            # the engine's own are the newest state (the history stores them a moment later)
            newest = {a["id"]: a for a in engine.resolved} if engine is not None else {}
            if engine is not None and status == "all":
                newest.update((a["id"], a) for a in engine.open.values())
            merged = {a["id"]: a for a in stored}
            merged.update(newest)
            items = sorted(merged.values(), key=lambda a: -a["fired_ns"])[:limit]
        return ApiResponse(
            {
                "alerts": items,
                "open": len(engine.open) if engine else 0,
                "rules": [r.name for r in engine.rules] if engine else [],
                "stats": engine.stats if engine else {},
                "delivery": engine.delivery.stats if engine else {},
            }
        )

    async def alert_resolve(self, alert_id: str) -> Response:
        done = self.alerts.resolve_by_id(alert_id) if self.alerts is not None else None
        if done is None:
            return _error(404, f"no open alert {alert_id!r}")
        return ApiResponse({"alert": done})

    async def run_detail(self, run: str, wait: bool = False) -> Response:
        """One run with its spans. ``wait``: a run not known (yet) answers 200 with ``run: null`` and no spans
        instead of 404, with the stream's last event id to subscribe from (a page opened before its run)."""
        live = self.hub.run(run)
        last = self.hub.broadcast.last_id
        stalled: dict[str, Any] = {}
        missing: dict[str, Any] = {"run": None, "spans": [], "tree": [], "progress": None, "stalled": {}}
        missing["last_event_id"] = last
        if live is not None:
            spans = sorted(live.spans.values(), key=lambda s: (s.start_time_ns, s.span_id))
            summary: dict[str, Any] | None = live.to_dict()
            stalled = {span_id: why.to_dict() for span_id, why in live.stalled.items()}
        else:
            trace = await self.history.resolve(run)
            if trace is None:
                return (
                    ApiResponse(missing)
                    if wait
                    else _error(404, f"no run {run!r}: give a trace id or an otelflow.run.id")
                )
            summary, spans = await self.history.get_run(trace)
            if summary is None:
                return ApiResponse(missing) if wait else _error(404, f"no run {run!r}")
        return ApiResponse(
            {
                "run": summary,
                "spans": [s.to_dict() for s in spans],
                "tree": _span_tree(spans),
                "llm_by_span": llm_by_span(spans),
                "progress": summary.get("progress") if summary else None,
                "stalled": stalled,
                "last_event_id": last,
            }
        )

    async def run_events(self, run: str, after: str | None = None, limit: int = 10_000) -> Response:
        trace = await self._resolve(run)
        if trace is None:
            return _error(404, f"no run {run!r}")
        events = await self.history.events(trace, after, max(1, min(limit, 10_000)))
        if events is None:
            return _error(404, f"event {after!r} is not in the history; fetch /api/runs/{run} instead")
        return ApiResponse({"run_id": trace, "events": events})

    async def run_export(self, run: str) -> Response:
        trace = await self._resolve(run)
        if trace is None:
            return _error(404, f"no run {run!r}")
        live = self.hub.run(trace)
        spans = list(live.spans.values()) if live is not None else (await self.history.get_run(trace))[1]
        headers = {"Content-Disposition": f'attachment; filename="{trace}.otlp.json"'}
        return ApiResponse(to_otlp_json(spans), headers=headers)

    async def stats(self, kind: str | None = None, since: str = "all") -> Response:
        kinds = [k.strip() for k in kind.split(",") if k.strip()] if kind else list(_DEFAULT_KINDS)
        if since not in _RANGES:
            return _error(400, f"since must be one of {', '.join(_RANGES)}")
        window = _RANGES[since]
        since_ns = time.time_ns() - window if window is not None else None
        return ApiResponse({"stats": await self.history.stats_by_name(kinds, since_ns), "since": since})

    async def model_stats(self, since: str = "all") -> Response:
        """Per (provider, model) of ended model calls: calls, tokens, estimated cost, p50/p95 latency and time to
        first token, error rate."""
        if since not in _RANGES:
            return _error(400, f"since must be one of {', '.join(_RANGES)}")
        window = _RANGES[since]
        since_ns = time.time_ns() - window if window is not None else None
        return ApiResponse({"models": await self.history.stats_by_model(since_ns), "since": since})

    async def healthz(self) -> Response:
        hub, history = self.hub, self.history
        status, reason = history.health()
        store = {**history.stats, "backlog_rows": history.backlog_rows, "backlog_bytes": history.backlog_bytes}
        broker: dict[str, Any] | None = None
        backend = hub.backend
        if isinstance(backend, RedisBackend):
            broker = {"leading": backend.leading, "last_entry": backend.last_n, **backend.stats}
            down = backend.failure
            if down is not None:
                status, reason = "degraded", down if reason is None else f"{down}; {reason}"
        return ApiResponse(
            {
                "status": "shutting_down" if hub.broadcast.shutting_down else status,
                "reason": reason,
                "epoch": hub.broadcast.epoch,
                "last_event_id": hub.broadcast.last_id,
                "subscribers": hub.broadcast.subscriber_count,
                "live_runs": sum(1 for r in hub.runs() if r.status == A.STATUS_RUNNING),
                "hub": {**hub.stats, "ring_bytes": hub.broadcast.ring_nbytes, "live_bytes": hub.state.live_nbytes},
                "store": store,
                **({"broker": broker} if broker is not None else {}),
            }
        )


def api_router(hub: Hub, history: History, alerts: AlertEngine | None = None) -> APIRouter:
    """The REST routes over ``hub`` (live runs), ``history`` (the rest) and ``alerts``."""
    api = _Api(hub, history, alerts)
    router = APIRouter()
    router.add_api_route("/api/now", api.now, methods=["GET"])
    router.add_api_route("/api/alerts", api.alert_list, methods=["GET"])
    router.add_api_route("/api/alerts/{alert_id}/resolve", api.alert_resolve, methods=["POST"])
    router.add_api_route("/api/runs", api.runs, methods=["GET"])
    router.add_api_route("/api/runs/{run}", api.run_detail, methods=["GET"])
    router.add_api_route("/api/runs/{run}/events", api.run_events, methods=["GET"])
    router.add_api_route("/api/runs/{run}/export", api.run_export, methods=["GET"])
    router.add_api_route("/api/stats", api.stats, methods=["GET"])
    router.add_api_route("/api/stats/models", api.model_stats, methods=["GET"])
    router.add_api_route("/healthz", api.healthz, methods=["GET", "HEAD"])  # HEAD: load balancers' checks
    return router
