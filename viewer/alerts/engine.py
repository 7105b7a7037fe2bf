"""Alerts: rules matched against the live stream, each firing once per subject until it resolves.

The engine is a tap of the broadcast (it sees every event after the live state applied it) and ticks once a
second for what only time reveals (a run getting slow, a stalled span reaching a rule's own limit, an error
window emptying). A subject is what an alert is about: a stalled span, a failed or slow run, a workflow's or an
agent's error rate. While its alert is open the subject does not fire again. Firing and resolving publish
``alert.fired`` / ``alert.resolved`` on the stream, store the alert (it survives a restart) and hand it to the
webhooks. A rule fires at most ``max_per_minute`` times a minute; the rest are counted as suppressed.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from otelflow import attributes as A
from otelflow.records import SpanRecord, format_time
from otelflow.wire import (
    ALERT_FIRED,
    ALERT_RESOLVED,
    RUN_ENDED,
    SPAN_ABANDONED,
    SPAN_ENDED,
    SPAN_EVENT,
    SPAN_STALLED,
    SPAN_UNSTALLED,
    SPAN_UPDATED,
)

from ..history import HistoryWriter
from ..live import Batch, Event, Hub, RunState
from ..live.stall import MIN_SAMPLES, STALL_QUIET, agent_name
from .rules import ERROR_RATE, RUN_FAILED, RUN_SLOW, STALLED, AlertConfig, Rule
from .webhook import Delivery

__all__ = ["AlertEngine"]

log = logging.getLogger("otelflow.viewer.alerts")
_SPAN_MOVES = (SPAN_UNSTALLED, SPAN_ENDED, SPAN_ABANDONED, SPAN_UPDATED, SPAN_EVENT)


class AlertEngine:
    """See the module docstring. ``history`` keeps alerts; ``delivery`` sends them to webhooks."""

    def __init__(
        self,
        config: AlertConfig,
        hub: Hub,
        history: HistoryWriter,
        delivery: Delivery,
        *,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.rules = config.rules
        self.hub = hub
        self.history = history
        self.delivery = delivery
        self._clock_ns = clock_ns
        self.open: dict[str, dict[str, Any]] = {}  # subject -> alert
        self.resolved: deque[dict[str, Any]] = deque(maxlen=200)  # the latest, also before the history has them
        self._muted: set[str] = set()  # resolved by hand while their cause lasts: not fired again until it ends
        self.stats = {"fired": 0, "resolved": 0, "suppressed": 0, "ticks": 0}
        self._recent: dict[str, deque[float]] = {r.name: deque() for r in self.rules}
        self._samples: dict[tuple[str, str], deque[tuple[int, bool]]] = {}  # (rule, group) -> (ended ns, failed)
        self._stall_rules = {r.name: r.stall_rule() for r in self.rules if r.when == STALLED}
        self._per_agent = any(r.when == ERROR_RATE and r.per == "agent" for r in self.rules)
        self._busy = False
        self._later: list[tuple[str, dict[str, Any]]] = []

    # ------------------------------------------------------------------ restart

    def restore(self, alerts: list[dict[str, Any]]) -> None:
        """Take back the alerts that were open when the viewer stopped; those of rules the rules file no longer
        has are stored resolved."""
        names = {r.name for r in self.rules}
        for alert in alerts:
            if alert.get("status") != "open":
                continue
            if alert.get("rule") in names:
                self.open[str(alert["subject"])] = alert
            else:
                now = self._clock_ns()
                gone = {"status": "resolved", "resolved_at": format_time(now), "resolved_ns": now}
                self.history.put_alert({**alert, **gone, "resolution": "its rule is no longer in the rules file"})

    # ------------------------------------------------------------------ the stream

    def __call__(self, events: list[Event], batch: Batch) -> None:
        """The broadcast tap."""
        if self._busy or not self.rules:
            return  # our own alert events; or nothing to watch for
        self._busy = True
        try:
            for ev in events:
                self._on_event(ev)
        finally:
            self._busy = False
        self._flush()

    def _on_event(self, ev: Event) -> None:
        type_ = ev.type
        if type_ == SPAN_STALLED and ev.record is not None and ev.run_id:
            run = self.hub.state.run(ev.run_id)
            if run is not None:
                self._check_stalled(run, ev.record, self._clock_ns())
        elif type_ in _SPAN_MOVES and ev.record is not None:
            if type_ == SPAN_ENDED and ev.record.kind == A.KIND_AGENT and self._per_agent:
                self._sample_agent(ev.record)
            if not (self.open or self._muted):
                return
            # an update or a lifecycle event ends a quiet stall; a slow span stays slow until it ends
            quiet_only = type_ in (SPAN_UPDATED, SPAN_EVENT)
            why = (
                "the span moved again" if quiet_only or type_ == SPAN_UNSTALLED else f"the span {ev.status or 'ended'}"
            )
            tail = f":{ev.run_id}:{ev.record.span_id}"
            self._resolve_prefix(f"{STALLED}:", tail, why, quiet_only=quiet_only)
            if self._muted:
                self._muted = {s for s in self._muted if not s.endswith(tail)}
        elif type_ == RUN_ENDED and ev.run_id:
            self._muted = {s for s in self._muted if f":{ev.run_id}" not in s}
            run = self.hub.state.run(ev.run_id)
            if run is not None:
                self._run_ended(run)

    def _run_ended(self, run: RunState) -> None:
        failed = run.status in (A.STATUS_ERROR, A.STATUS_ABANDONED)
        workflow = run.workflow
        for rule in self.rules:
            if not self._run_matches(rule, run):
                continue
            if rule.when == RUN_FAILED:
                if failed:
                    message = f"run {run.alias or run.trace_id} of {workflow} ended {run.status}"
                    self._fire(rule, f"{RUN_FAILED}:{rule.name}:{run.trace_id}", run, message, {})
                else:
                    self._resolve_prefix(f"{RUN_FAILED}:{rule.name}:", "", "a later run succeeded", workflow)
            elif rule.when == RUN_SLOW:
                subject = f"{RUN_SLOW}:{rule.name}:{run.trace_id}"
                if subject not in self.open and run.end_ns is not None:
                    self._check_slow_run(rule, run, run.end_ns)
                self._resolve(subject, "the run ended")
            elif rule.when == ERROR_RATE and rule.per == "workflow":
                self._sample(rule, workflow, run.end_ns or self._clock_ns(), failed, run)

    def _sample_agent(self, rec: SpanRecord) -> None:
        run = self.hub.state.run(rec.trace_id)
        name = agent_name(rec)
        if run is None or name is None:
            return
        for rule in self.rules:
            if rule.when == ERROR_RATE and rule.per == "agent" and self._span_matches(rule, rec, run):
                self._sample(rule, name, rec.end_time_ns or self._clock_ns(), rec.status == A.STATUS_ERROR, run)

    # ------------------------------------------------------------------ time

    def tick(self) -> None:
        """Once a second: stalled spans reaching a rule's limit, slow runs, error windows."""
        self.stats["ticks"] += 1
        now = self._clock_ns()
        for run in self.hub.state.runs():
            if run.status != A.STATUS_RUNNING:
                continue
            for span_id in list(run.stalled):
                rec = run.spans.get(span_id)
                if rec is not None:
                    self._check_stalled(run, rec, now)
            for rule in self.rules:
                if rule.when == RUN_SLOW and self._run_matches(rule, run):
                    self._check_slow_run(rule, run, now)
        for subject, alert in list(self.open.items()):
            if alert.get("when") == STALLED:
                owner = self.hub.state.run(str(alert.get("run_id")))
                span = owner.spans.get(str(alert.get("span_id"))) if owner is not None else None
                if span is None or span.status != A.STATUS_RUNNING:
                    self._resolve(subject, "the span is no longer running")
        by_name = {r.name: r for r in self.rules}
        for (name, group), samples in list(self._samples.items()):
            if name in by_name:
                self._judge_rate(by_name[name], group, samples, now, None)
        self._flush()

    # ------------------------------------------------------------------ the rules

    def _check_stalled(self, run: RunState, rec: SpanRecord, now: int) -> None:
        since = run.quiet.get(rec.span_id)
        if since is None:
            return
        workflow = run.workflow
        for rule in self.rules:
            if rule.when != STALLED or not self._span_matches(rule, rec, run):
                continue
            subject = f"{STALLED}:{rule.name}:{run.trace_id}:{rec.span_id}"
            if subject in self.open:
                continue
            # against the durations the viewer last read
            why = self._stall_rules[rule.name].check(rec, workflow, since, now, self.hub.state.stall.p95_ms)
            if why is None:
                continue
            if why.reason == STALL_QUIET:
                message = f"{rec.name} has been quiet for {_duration(why.seconds)}"
            else:
                message = f"{rec.name} has run for {_duration(why.seconds)}, over {_duration(why.limit_s)}"
            self._fire(rule, subject, run, message, {"stalled": why.to_dict()}, rec)

    def _check_slow_run(self, rule: Rule, run: RunState, now: int) -> None:
        subject = f"{RUN_SLOW}:{rule.name}:{run.trace_id}"
        if subject in self.open or not run.start_ns:
            return
        took = (now - run.start_ns) / 1e9
        limits = []
        if rule.over_s is not None:
            limits.append(rule.over_s)
        known = self.hub.state.stall.p95_ms.get((A.KIND_WORKFLOW, run.name))
        if rule.slow_factor is not None and known is not None and known[0] >= MIN_SAMPLES:
            limits.append(rule.slow_factor * known[1] / 1000)
        if limits and took > min(limits):
            message = f"run {run.alias or run.trace_id} of {run.workflow} has run for {_duration(took)}"
            self._fire(rule, subject, run, message, {"seconds": round(took, 3), "limit_s": round(min(limits), 3)})

    def _sample(self, rule: Rule, group: str, at: int, failed: bool, run: RunState) -> None:
        samples = self._samples.setdefault((rule.name, group), deque())
        samples.append((at, failed))
        self._judge_rate(rule, group, samples, self._clock_ns(), run)

    def _judge_rate(
        self, rule: Rule, group: str, samples: deque[tuple[int, bool]], now: int, run: RunState | None
    ) -> None:
        horizon = now - int(rule.window_s * 1e9)
        while samples and samples[0][0] < horizon:
            samples.popleft()
        subject = f"{ERROR_RATE}:{rule.name}:{group}"
        failures = sum(1 for _, failed in samples if failed)
        rate = failures / len(samples) if samples else 0.0
        if len(samples) >= rule.min_count and rate >= rule.threshold:
            if subject not in self.open:
                what = "runs of" if rule.per == "workflow" else "spans of agent"
                message = f"{failures} of the last {len(samples)} {what} {group} failed ({rate:.0%})"
                details = {"failures": failures, "count": len(samples), "rate": round(rate, 4), "group": group}
                self._fire(rule, subject, run, message, details)
        elif rate < rule.threshold:
            self._muted.discard(subject)
            self._resolve(subject, f"the failure rate fell to {rate:.0%}")
        if not samples:
            self._samples.pop((rule.name, group), None)

    # ------------------------------------------------------------------ matching

    @staticmethod
    def _run_matches(rule: Rule, run: RunState) -> bool:
        if rule.workflows is not None and run.workflow not in rule.workflows:
            return False
        return rule.services is None or run.service in rule.services

    @staticmethod
    def _span_matches(rule: Rule, rec: SpanRecord, run: RunState) -> bool:
        if rule.kinds is not None and rec.kind not in rule.kinds:
            return False
        if rule.agents is not None and agent_name(rec) not in rule.agents:
            return False
        if rule.workflows is not None and run.workflow not in rule.workflows:
            return False
        return rule.services is None or rec.service in rule.services

    # ------------------------------------------------------------------ firing and resolving

    def _fire(
        self,
        rule: Rule,
        subject: str,
        run: RunState | None,
        message: str,
        details: dict[str, Any],
        rec: SpanRecord | None = None,
    ) -> None:
        if subject in self._muted:
            return
        now_s = time.monotonic()
        recent = self._recent[rule.name]
        while recent and now_s - recent[0] > 60:
            recent.popleft()
        if len(recent) >= rule.max_per_minute:
            self.stats["suppressed"] += 1
            return
        recent.append(now_s)
        now = self._clock_ns()
        alert: dict[str, Any] = {
            "id": secrets.token_hex(8),
            "subject": subject,
            "rule": rule.name,
            "when": rule.when,
            "status": "open",
            "message": message,
            "fired_at": format_time(now),
            "fired_ns": now,
            "resolved_at": None,
            "resolved_ns": None,
            "resolution": None,
            "run_id": run.trace_id if run else None,
            "otelflow_run_id": run.alias if run else None,
            "workflow": run.workflow if run else None,
            "service": (rec.service if rec else run.service) if run else None,
            "span_id": rec.span_id if rec else None,
            "span_name": rec.name if rec else None,
            "kind": rec.kind if rec else None,
            "agent": agent_name(rec) if rec else None,
            "details": details,
        }
        self.open[subject] = alert
        self.stats["fired"] += 1
        self._later.append((ALERT_FIRED, alert))

    def _resolve(self, subject: str, why: str) -> None:
        alert = self.open.pop(subject, None)
        if alert is None:
            return
        now = self._clock_ns()
        alert = {**alert, "status": "resolved", "resolved_at": format_time(now), "resolved_ns": now, "resolution": why}
        self.stats["resolved"] += 1
        self.resolved.append(alert)
        self._later.append((ALERT_RESOLVED, alert))

    def _resolve_prefix(
        self, head: str, tail: str, why: str, workflow: str | None = None, *, quiet_only: bool = False
    ) -> None:
        for subject, alert in list(self.open.items()):
            if not (subject.startswith(head) and subject.endswith(tail)):
                continue
            if workflow is not None and alert.get("workflow") != workflow:
                continue
            if quiet_only and alert.get("details", {}).get("stalled", {}).get("reason") != STALL_QUIET:
                continue
            self._resolve(subject, why)

    def resolve_by_id(self, alert_id: str, why: str = "resolved by hand") -> dict[str, Any] | None:
        """Resolve an open alert named by its id (the API's); the resolved alert, or ``None``. Its subject does
        not fire again while the cause lasts (the span stays stalled, the run runs, the rate stays high)."""
        for subject, alert in list(self.open.items()):
            if alert["id"] == alert_id:
                self._muted.add(subject)
                self._resolve(subject, why)
                done = self._later[-1][1] if self._later else None
                self._flush()
                return done
        return None

    def _flush(self) -> None:
        """Publish, store and send what fired or resolved (after the events that caused it)."""
        later, self._later = self._later, []
        for type_, alert in later:
            self._busy = True
            try:
                self.hub.broadcast.publish_alert(type_, alert)
            finally:
                self._busy = False
            self.history.put_alert(alert)
            if self.hub.backend.leading:  # replicas sharing a broker all see it fire; one of them calls the webhooks
                self.delivery.send(alert)
            log.warning(
                "alert %s: %s: %s", "fired" if type_ == ALERT_FIRED else "resolved", alert["rule"], alert["message"]
            )


def _duration(seconds: float) -> str:
    """``1 m 12 s``, ``45 s``, ``2 h 3 m``."""
    s = int(seconds)
    if s < 60:
        return f"{s} s" if seconds >= 1 else f"{seconds:.1f} s"
    if s < 3600:
        return f"{s // 60} m {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} m"
