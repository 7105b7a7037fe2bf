"""The live state's stall rules, decided on a clock the test holds: what counts as moving, who is flagged, why a
flag clears, and that a run ends after the spans that came with it."""

from __future__ import annotations

from dataclasses import replace

from otelflow import attributes as A
from otelflow.viewer.live import Batch, Broadcast, LiveState
from otelflow.viewer.live.stall import StallPolicy
from otelflow.wire import RUN_ENDED, SPAN_ABANDONED, SPAN_ENDED, SPAN_STALLED, SPAN_UNSTALLED

from .conftest import record, span_id, trace_id

S = 1_000_000_000


def state(quiet_s: float = 1.0) -> LiveState:
    live = LiveState(abandon_after_s=10.0)
    live.stall = StallPolicy(default_quiet_s=quiet_s)
    return live


def check(live: LiveState, now: int) -> list[tuple[str, str]]:
    """Take the checker's decisions at ``now`` and apply them: the (type, span name) of what changed."""
    due = live.due(now)
    if due is None:
        return []
    return [(c.type, c.span.name) for c in live.apply(due) if c.span is not None]


def test_a_parent_is_quiet_from_when_its_child_ended_not_from_when_it_started() -> None:
    live = state(quiet_s=1.0)
    t, root, agent, tool = trace_id(), span_id(), span_id(), span_id()
    start = 1_000 * S
    live.apply(Batch([record(t, root, "wf", kind=A.KIND_WORKFLOW, start=start)], at_ns=start))
    live.apply(Batch([record(t, agent, "agent", parent=root, kind=A.KIND_AGENT, start=start)], at_ns=start))
    live.apply(Batch([record(t, tool, "tool", parent=agent, kind=A.KIND_TOOL, start=start)], at_ns=start))
    # the tool runs 5 s: it is the deepest running span, the one flagged
    assert check(live, start + 2 * S) == [(SPAN_STALLED, "tool")]
    ended = record(t, tool, "tool", parent=agent, kind=A.KIND_TOOL, start=start, ended=True, duration_ns=5 * S)
    changes = live.apply(Batch([ended], at_ns=start + 5 * S))
    cleared = next(c for c in changes if c.type == SPAN_UNSTALLED)
    assert cleared.cleared == ("ended", start + 5 * S)
    # the agent moved when its child ended: not stalled half a second later, stalled a second later
    assert check(live, start + 5 * S + S // 2) == []
    assert check(live, start + 6 * S + 1) == [(SPAN_STALLED, "agent")]


def test_a_stall_clears_with_why_and_when() -> None:
    live = state(quiet_s=1.0)
    t, root, agent = trace_id(), span_id(), span_id()
    start = 2_000 * S
    rec = record(t, agent, "agent", parent=root, kind=A.KIND_AGENT, start=start, worker="w1")
    live.apply(Batch([record(t, root, "wf", kind=A.KIND_WORKFLOW, start=start, worker="w1"), rec], at_ns=start))
    assert check(live, start + 2 * S) == [(SPAN_STALLED, "agent")]
    # an update moves it: cleared as "moved"
    moved = replace(rec, attributes={**rec.attributes, "step": 2})
    changes = live.apply(Batch([moved], at_ns=start + 3 * S))
    assert [(c.type, c.cleared) for c in changes if c.type == SPAN_UNSTALLED] == [
        (SPAN_UNSTALLED, ("moved", start + 3 * S))
    ]
    assert check(live, start + 5 * S) == [(SPAN_STALLED, "agent")]
    # its worker goes silent: the stall clears as "abandoned", on the abandoned span, before span.abandoned
    changes = live.apply(Batch(silent_workers=(("w1", start),), at_ns=start + 20 * S))
    of_agent = [c for c in changes if c.span is not None and c.span.span_id == agent]
    kinds = [(c.type, c.span.status if c.span else None, c.cleared[0] if c.cleared else None) for c in of_agent]
    assert kinds == [
        (SPAN_UNSTALLED, A.STATUS_ABANDONED, "abandoned"),
        (SPAN_ABANDONED, A.STATUS_ABANDONED, None),
    ]


def test_a_run_ends_after_every_span_that_arrived_with_its_root() -> None:
    live = state()
    t, root, a, b = trace_id(), span_id(), span_id(), span_id()
    batch = [
        record(t, root, "wf", kind=A.KIND_WORKFLOW, ended=True),
        record(t, a, "a", parent=root, ended=True),
        record(t, b, "b", parent=root, ended=True),
    ]
    changes = live.apply(Batch(batch, at_ns=1))
    assert changes[-1].type == RUN_ENDED
    assert [c.type for c in changes].count(SPAN_ENDED) == 3


def test_an_alert_names_its_run_also_when_the_run_left_the_live_state() -> None:
    broadcast = Broadcast()
    ev = broadcast.publish_alert("alert.fired", {"id": "x", "run_id": "abc", "otelflow_run_id": "job-1"})
    assert (ev.run_id, ev.alias) == ("abc", "job-1")
    assert ev.payload()["run_id"] == "abc"
