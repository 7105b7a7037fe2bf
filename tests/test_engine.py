"""Engine semantics: transitions, loops, retries, fallback, batch, async, parallel, cancellation, timeouts, graph."""

from __future__ import annotations

import asyncio
import contextvars
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from otelflow.engine import (
    DEFAULT_ACTION,
    AsyncBatchNode,
    AsyncFlow,
    AsyncNode,
    AsyncParallelBatchNode,
    BatchNode,
    EngineWarning,
    Flow,
    FlowDefinitionError,
    MaxStepsExceeded,
    Node,
    NodeTimeoutError,
    Parallel,
    current_run_id,
)
from tests._engine_helpers import GUARD_S, Hang, Meet, cancel_once_started, run

# --- small nodes used throughout ------------------------------------------------------------------------


class Record(Node):
    """Appends its name to ``shared["trail"]`` and returns a fixed action."""

    def __init__(self, name: str, action: str | None = None, **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        self.action = action

    def post(self, shared: dict[str, Any], prep_result: Any, exec_result: Any) -> str | None:
        shared.setdefault("trail", []).append(self.name)
        return self.action


class AsyncRecord(AsyncNode):
    def __init__(self, name: str, action: str | None = None) -> None:
        super().__init__(name=name)
        self.action = action

    async def post_async(self, shared: dict[str, Any], prep_result: Any, exec_result: Any) -> str | None:
        await asyncio.sleep(0)
        shared.setdefault("trail", []).append(self.name)
        return self.action


class Flaky(Node):
    """Fails ``failures`` times, then returns ``"ok"``; records the hook calls."""

    def __init__(self, failures: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.failures = failures
        self.calls = 0
        self.failed: list[tuple[int, str, float | None]] = []
        self.fallbacks: list[Exception] = []

    def exec(self, prep_result: Any) -> Any:
        self.calls += 1
        if self.calls <= self.failures:
            raise ValueError(f"boom {self.calls}")
        return "ok"

    def post(self, shared: dict[str, Any], prep_result: Any, exec_result: Any) -> str | None:
        shared["result"] = exec_result
        return None

    def _on_attempt_failed(self, attempt: int, exc: Exception, wait_s: float | None) -> None:
        self.failed.append((attempt, str(exc), wait_s))

    def _on_fallback(self, exc: Exception) -> None:
        self.fallbacks.append(exc)


class RecordingFlow(Flow):
    def __init__(self, start: Node | None = None, **kwargs: Any) -> None:
        super().__init__(start, **kwargs)
        self.transitions: list[tuple[str, str | None, str, tuple[str, ...], int]] = []
        self.progress: list[tuple[int, int]] = []

    def _on_transition(self, source: Node, target: Node | None, action: str, keys: tuple[str, ...], size: int) -> None:
        self.transitions.append((source.name, None if target is None else target.name, action, keys, size))

    def _on_progress(self, completed: int, total: int) -> None:
        self.progress.append((completed, total))


class RecordingAsyncFlow(AsyncFlow, RecordingFlow):
    pass


# --- transitions and actions ----------------------------------------------------------------------------


def test_default_transitions_run_in_order_and_chain_returns_the_right_node() -> None:
    a, b, c = Record("a"), Record("b"), Record("c")
    assert (a >> b >> c) is c
    shared: dict[str, Any] = {}
    assert Flow(start=a).run(shared) == DEFAULT_ACTION
    assert shared["trail"] == ["a", "b", "c"]


@pytest.mark.parametrize(("action", "expected"), [("left", ["route", "L"]), ("right", ["route", "R"])])
def test_actions_choose_the_successor(action: str, expected: list[str]) -> None:
    route = Record("route", action)
    route - "left" >> Record("L")
    route - "right" >> Record("R")
    shared: dict[str, Any] = {}
    Flow(start=route).run(shared)
    assert shared["trail"] == expected


def test_unconnected_action_ends_the_flow_and_the_hook_sees_target_none() -> None:
    review = Record("review", "approve")
    review - "revise" >> Record("writer")
    flow = RecordingFlow(start=review)
    shared: dict[str, Any] = {}
    assert flow.run(shared) == DEFAULT_ACTION  # the flow has no successor for "approve"
    assert shared["trail"] == ["review"]
    assert flow.transitions == [("review", None, "approve", ("trail",), len('["review"]'))]


def test_post_returning_a_non_action_is_a_clear_error() -> None:
    class Bad(Node):
        def post(self, shared: dict[str, Any], prep_result: Any, exec_result: Any) -> Any:
            return 42

    with pytest.raises(TypeError, match="post must return an action name"):
        Flow(start=Bad()).run({})


def test_prep_exec_post_receive_each_others_results() -> None:
    class Double(Node):
        def prep(self, shared: dict[str, Any]) -> int:
            return int(shared["x"])

        def exec(self, prep_result: int) -> int:
            return prep_result * 2

        def post(self, shared: dict[str, Any], prep_result: int, exec_result: int) -> str:
            shared["seen"] = (prep_result, exec_result)
            return "done"

    shared: dict[str, Any] = {"x": 21}
    assert Double().run(shared) == "done"
    assert shared["seen"] == (21, 42)


# --- loops ----------------------------------------------------------------------------------------------


class Counter(Node):
    def __init__(self, until: int | None) -> None:
        super().__init__(name="counter")
        self.until = until

    def post(self, shared: dict[str, Any], prep_result: Any, exec_result: Any) -> str:
        shared["n"] = shared.get("n", 0) + 1
        return "again" if self.until is None or shared["n"] < self.until else "stop"


def test_loop_revisits_nodes_until_the_exit_action() -> None:
    counter = Counter(until=4)
    counter - "again" >> counter
    done = Record("done")
    counter - "stop" >> done
    flow = RecordingFlow(start=counter)
    shared: dict[str, Any] = {}
    flow.run(shared)
    assert shared["n"] == 4
    assert shared["trail"] == ["done"]
    # 5 steps for 2 distinct nodes: the planned total is raised to what actually ran
    assert flow.progress == [(1, 2), (2, 2), (3, 3), (4, 4), (5, 5)]


def test_endless_loop_stops_at_max_steps_with_a_clear_error() -> None:
    counter = Counter(until=None)
    counter - "again" >> counter
    shared: dict[str, Any] = {}
    with pytest.raises(MaxStepsExceeded, match=r"ran 7 steps without ending \(max_steps=7\).*'counter'"):
        Flow(start=counter, max_steps=7).run(shared)
    assert shared["n"] == 7


def test_max_steps_none_is_unlimited() -> None:
    counter = Counter(until=1500)
    counter - "again" >> counter
    shared: dict[str, Any] = {}
    Flow(start=counter, max_steps=None, track_writes=False).run(shared)
    assert shared["n"] == 1500


# --- retries, backoff, fallback -------------------------------------------------------------------------


def test_retries_until_success_with_backoff_waits_reported_to_the_hook() -> None:
    node = Flaky(failures=2, max_retries=3, wait=0.001, backoff=3.0)
    shared: dict[str, Any] = {}
    node.run(shared)
    assert shared["result"] == "ok"
    assert node.failed == [(1, "boom 1", 0.001), (2, "boom 2", pytest.approx(0.003))]
    assert node.fallbacks == []


def test_exhausted_retries_reraise_the_original_error_without_fallback_hook() -> None:
    node = Flaky(failures=5, max_retries=2)
    with pytest.raises(ValueError, match="boom 2"):
        node.run({})
    assert node.failed == [(1, "boom 1", 0.0), (2, "boom 2", None)]
    assert node.fallbacks == []  # the default fallback only re-raises: not reported as a fallback


def test_fallback_result_is_used_and_reported() -> None:
    class WithFallback(Flaky):
        def exec_fallback(self, prep_result: Any, exc: Exception) -> Any:
            return f"fallback after {exc}"

    node = WithFallback(failures=5, max_retries=2)
    shared: dict[str, Any] = {}
    node.run(shared)
    assert shared["result"] == "fallback after boom 2"
    assert [str(e) for e in node.fallbacks] == ["boom 2"]


def test_retry_settings_come_from_class_attributes_and_are_validated() -> None:
    class Patient(Node):
        max_retries = 4
        wait = 0.5
        backoff = 1.0

    node = Patient()
    assert (node.max_retries, node.wait, node.backoff) == (4, 0.5, 1.0)
    assert Patient(max_retries=2).max_retries == 2
    with pytest.raises(ValueError, match="max_retries is the total number of attempts"):
        Node(max_retries=0)
    with pytest.raises(ValueError, match="wait must be a number >= 0"):
        Node(wait=-1)
    with pytest.raises(ValueError, match="timeout must be a number > 0"):
        Node(timeout=0)


def test_keyboard_interrupt_is_not_retried() -> None:
    class Interrupted(Flaky):
        def exec(self, prep_result: Any) -> Any:
            self.calls += 1
            raise KeyboardInterrupt

    node = Interrupted(failures=0, max_retries=3)
    with pytest.raises(KeyboardInterrupt):
        node.run({})
    assert node.calls == 1
    assert node.failed == []


# --- batch ----------------------------------------------------------------------------------------------


class Squares(BatchNode):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.attempts: dict[int, int] = {}
        self.failed: list[tuple[int, float | None]] = []

    def prep(self, shared: dict[str, Any]) -> Any:
        return shared["items"]

    def exec(self, item: int) -> int:
        self.attempts[item] = self.attempts.get(item, 0) + 1
        if item == 3 and self.attempts[item] == 1:
            raise RuntimeError("first try of 3 fails")
        return item * item

    def post(self, shared: dict[str, Any], prep_result: Any, exec_result: Any) -> str | None:
        shared["squares"] = exec_result
        return None

    def _on_attempt_failed(self, attempt: int, exc: Exception, wait_s: float | None) -> None:
        self.failed.append((attempt, wait_s))


def test_batch_runs_exec_per_item_with_retries_per_item() -> None:
    node = Squares(max_retries=2)
    shared: dict[str, Any] = {"items": [1, 2, 3, 4]}
    node.run(shared)
    assert shared["squares"] == [1, 4, 9, 16]
    assert node.attempts == {1: 1, 2: 1, 3: 2, 4: 1}
    assert node.failed == [(1, 0.0)]


def test_batch_prep_must_return_an_iterable_of_items() -> None:
    shared: dict[str, Any] = {"items": None}
    Squares().run(shared)
    assert shared["squares"] == []
    with pytest.raises(TypeError, match="prep must return an iterable of items"):
        Squares().run({"items": "abc"})


# --- async ----------------------------------------------------------------------------------------------


def test_async_flow_mixes_async_and_sync_nodes() -> None:
    a, b, c = AsyncRecord("a"), Record("b"), AsyncRecord("c", "finish")
    a >> b >> c
    shared: dict[str, Any] = {}
    assert run(AsyncFlow(start=a).run_async(shared)) == DEFAULT_ACTION
    assert shared["trail"] == ["a", "b", "c"]


def test_async_retries_and_async_fallback() -> None:
    class AsyncFlaky(AsyncNode):
        def __init__(self) -> None:
            super().__init__(max_retries=3, wait=0.001, backoff=2.0)
            self.failed: list[tuple[int, float | None]] = []
            self.fallbacks: list[str] = []

        async def exec_async(self, prep_result: Any) -> Any:
            raise ConnectionError("down")

        async def exec_fallback_async(self, prep_result: Any, exc: Exception) -> Any:
            return "cached"

        async def post_async(self, shared: dict[str, Any], prep_result: Any, exec_result: Any) -> str | None:
            shared["answer"] = exec_result
            return None

        def _on_attempt_failed(self, attempt: int, exc: Exception, wait_s: float | None) -> None:
            self.failed.append((attempt, wait_s))

        def _on_fallback(self, exc: Exception) -> None:
            self.fallbacks.append(type(exc).__name__)

    node = AsyncFlaky()
    shared: dict[str, Any] = {}
    run(node.run_async(shared))
    assert shared["answer"] == "cached"
    assert node.failed == [(1, 0.001), (2, 0.002), (3, None)]
    assert node.fallbacks == ["ConnectionError"]


def test_async_batch_runs_items_in_order() -> None:
    class Upper(AsyncBatchNode):
        async def prep_async(self, shared: dict[str, Any]) -> Any:
            return shared["words"]

        async def exec_async(self, item: str) -> str:
            await asyncio.sleep(0)
            return item.upper()

        async def post_async(self, shared: dict[str, Any], prep_result: Any, exec_result: Any) -> str | None:
            shared["upper"] = exec_result
            return None

    shared: dict[str, Any] = {"words": ["a", "b", "c"]}
    run(Upper().run_async(shared))
    assert shared["upper"] == ["A", "B", "C"]


# --- parallel fan-out / fan-in --------------------------------------------------------------------------


def test_parallel_branches_run_concurrently_then_join() -> None:
    async def scenario() -> dict[str, Any]:
        events = {"left": asyncio.Event(), "right": asyncio.Event()}
        fan_out = Parallel(Meet("left", events, "right"), Meet("right", events, "left"), name="fan")

        class Join(AsyncNode):
            async def post_async(self, shared: dict[str, Any], prep_result: Any, exec_result: Any) -> str | None:
                shared["joined"] = shared["left"] and shared["right"]
                return None

        start = AsyncRecord("start")
        start >> fan_out >> Join()
        shared: dict[str, Any] = {}
        await AsyncFlow(start=start).run_async(shared)
        return shared

    shared = run(scenario())
    assert shared["joined"] is True


def test_parallel_exec_returns_branch_actions_for_post_to_route_on() -> None:
    class Vote(Parallel):
        async def post_async(self, shared: dict[str, Any], prep_result: Any, exec_result: Any) -> str | None:
            shared["votes"] = exec_result
            return "tie" if len(set(exec_result)) > 1 else exec_result[0]

    vote = Vote(AsyncRecord("x", "yes"), AsyncRecord("y", "no"))
    vote - "tie" >> Record("tiebreak")
    shared: dict[str, Any] = {}
    run(AsyncFlow(start=vote).run_async(shared))
    assert shared["votes"] == ["yes", "no"]
    assert shared["trail"][-1] == "tiebreak"


def test_parallel_batch_runs_items_concurrently_within_max_concurrency() -> None:
    class Probe(AsyncParallelBatchNode):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.in_flight = 0
            self.peak = 0

        async def prep_async(self, shared: dict[str, Any]) -> Any:
            return range(6)

        async def exec_async(self, item: int) -> int:
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
            for _ in range(3):
                await asyncio.sleep(0)
            self.in_flight -= 1
            return item * 10

        async def post_async(self, shared: dict[str, Any], prep_result: Any, exec_result: Any) -> str | None:
            shared["out"] = exec_result
            return None

    limited, unlimited = Probe(max_concurrency=2), Probe()
    shared: dict[str, Any] = {}
    run(limited.run_async(shared))
    assert shared["out"] == [0, 10, 20, 30, 40, 50]
    assert limited.peak == 2
    run(unlimited.run_async(shared))
    assert unlimited.peak == 6


def test_failing_branch_cancels_the_others_and_waits_for_their_cleanup() -> None:
    log: list[str] = []

    class FailAfter(AsyncNode):
        def __init__(self, others: list[asyncio.Event]) -> None:
            super().__init__(name="fail")
            self.others = others

        async def exec_async(self, prep_result: Any) -> Any:
            for event in self.others:
                await event.wait()
            raise ValueError("branch failed")

    async def scenario() -> None:
        started = [asyncio.Event(), asyncio.Event()]
        fan = Parallel(Hang("h1", started[0], log), FailAfter(started), Hang("h2", started[1], log))
        after = Record("after")
        fan >> after
        await AsyncFlow(start=fan).run_async({})

    with pytest.raises(ValueError, match="branch failed"):
        run(scenario())
    assert sorted(log) == ["h1 cancelled", "h1 cleanup", "h2 cancelled", "h2 cleanup"]


def test_cancelling_the_flow_task_cancels_running_branches() -> None:
    log: list[str] = []

    async def scenario() -> None:
        started = [asyncio.Event(), asyncio.Event()]
        flow = AsyncFlow(start=Parallel(Hang("h1", started[0], log), Hang("h2", started[1], log)))
        await cancel_once_started(flow, started)
        # both branches were cancelled and finished their cleanup before the flow task ended
        assert sorted(log) == ["h1 cancelled", "h1 cleanup", "h2 cancelled", "h2 cleanup"]

    run(scenario())


def test_failing_parallel_batch_item_cancels_the_other_items() -> None:
    log: list[str] = []

    class Items(AsyncParallelBatchNode):
        async def prep_async(self, shared: dict[str, Any]) -> Any:
            return ["slow", "bad"]

        async def exec_async(self, item: str) -> str:
            if item == "bad":
                await asyncio.sleep(0)
                raise LookupError("bad item")
            try:
                await asyncio.Event().wait()
            finally:
                log.append("slow cleanup")
            return item

    with pytest.raises(LookupError, match="bad item"):
        run(Items().run_async({}))
    assert log == ["slow cleanup"]


# --- nesting --------------------------------------------------------------------------------------------


def test_nested_flow_runs_as_a_node_and_continues_on_default() -> None:
    inner_review = Record("inner_review", "approve")
    inner_review - "revise" >> Record("never")
    inner = Flow(start=inner_review, name="inner")
    first = Record("first")
    first >> inner >> Record("last")
    outer = RecordingFlow(start=first, name="outer")
    shared: dict[str, Any] = {}
    outer.run(shared)
    assert shared["trail"] == ["first", "inner_review", "last"]
    assert [t[:3] for t in outer.transitions] == [
        ("first", "inner", "default"),
        ("inner", "last", "default"),
        ("last", None, "default"),
    ]


def test_nested_flow_can_route_on_its_ending_action() -> None:
    inner = Flow(start=Record("check", "escalate"), name="inner")
    inner >> Record("normal")
    inner - "escalate" >> Record("human")
    shared: dict[str, Any] = {}
    Flow(start=inner).run(shared)
    assert shared["trail"] == ["check", "human"]


def test_async_flows_nest_and_parallel_branches_can_be_flows() -> None:
    async def scenario() -> dict[str, Any]:
        events = {"a2": asyncio.Event(), "b2": asyncio.Event()}
        a1, b1 = AsyncRecord("a1"), Record("b1")
        a1 >> Meet("a2", events, "b2")
        b1 >> Meet("b2", events, "a2")
        branch_a = AsyncFlow(start=a1, name="branch_a")
        branch_b = AsyncFlow(start=b1, name="branch_b")
        flow = RecordingAsyncFlow(start=Parallel(branch_a, branch_b, name="fan"), name="outer")
        shared: dict[str, Any] = {}
        await flow.run_async(shared)
        assert flow.transitions[0][:3] == ("fan", None, "default")
        assert set(flow.transitions[0][3]) == {"trail", "a2", "b2"}
        return shared

    shared = run(scenario())
    assert sorted(shared["trail"]) == ["a1", "b1"]


# --- timeouts -------------------------------------------------------------------------------------------


def test_sync_timeout_raises_node_timeout_error_and_counts_as_attempts() -> None:
    release = threading.Event()

    class Slow(Node):
        timeout = 0.05

        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.failed: list[tuple[int, str]] = []

        def exec(self, prep_result: Any) -> Any:
            release.wait(GUARD_S)

        def _on_attempt_failed(self, attempt: int, exc: Exception, wait_s: float | None) -> None:
            self.failed.append((attempt, type(exc).__name__))

    node = Slow(max_retries=2, name="slow")
    try:
        with pytest.raises(NodeTimeoutError, match=r"node 'slow': exec did not finish within timeout=0.05 s") as info:
            node.run({})
    finally:
        release.set()
    assert isinstance(info.value, TimeoutError)
    assert node.failed == [(1, "NodeTimeoutError"), (2, "NodeTimeoutError")]


def test_sync_exec_with_timeout_sees_context_variables_and_returns_its_result() -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var")
    var.set("from caller")

    class ReadVar(Node):
        def exec(self, prep_result: Any) -> Any:
            return (var.get(), threading.current_thread() is threading.main_thread())

        def post(self, shared: dict[str, Any], prep_result: Any, exec_result: Any) -> str | None:
            shared["seen"] = exec_result
            return None

    shared: dict[str, Any] = {}
    ReadVar(timeout=GUARD_S).run(shared)
    assert shared["seen"] == ("from caller", False)

    class Raises(Node):
        def exec(self, prep_result: Any) -> Any:
            raise KeyError("inside thread")

    with pytest.raises(KeyError, match="inside thread"):
        Raises(timeout=GUARD_S).run({})


def test_async_timeout_cancels_the_attempt_and_waits_for_its_cleanup() -> None:
    log: list[str] = []

    class SlowAsync(AsyncNode):
        async def exec_async(self, prep_result: Any) -> Any:
            try:
                await asyncio.Event().wait()
            finally:
                log.append("cleanup")

    with pytest.raises(NodeTimeoutError, match=r"timeout=0\.02 s"):
        run(SlowAsync(timeout=0.02).run_async({}))
    assert log == ["cleanup"]


def test_a_timeout_error_raised_by_user_code_is_not_a_node_timeout() -> None:
    class Own(AsyncNode):
        async def exec_async(self, prep_result: Any) -> Any:
            raise TimeoutError("the remote said so")

    with pytest.raises(TimeoutError, match="the remote said so") as info:
        run(Own(timeout=GUARD_S).run_async({}))
    assert not isinstance(info.value, NodeTimeoutError)


# --- graph ----------------------------------------------------------------------------------------------


def test_graph_is_available_before_running_and_json_serialisable() -> None:
    load, write = Record("Load"), Record("Write")
    load >> write
    load - "skip" >> Record("Write")  # same name: gets a unique id
    inner = AsyncFlow(start=AsyncRecord("inner_step"), name="Sub")
    fan = Parallel(inner, AsyncRecord("other"), name="Fan", kind="agent")
    write >> fan
    flow = AsyncFlow(start=load, name="Pipeline")
    graph = flow.graph()
    assert json.loads(json.dumps(graph)) == graph
    assert {k: graph[k] for k in ("id", "name", "kind", "type", "start")} == {
        "id": "Pipeline",
        "name": "Pipeline",
        "kind": "workflow",
        "type": "flow",
        "start": "Load",
    }
    assert graph["nodes"] == [
        {"id": "Load", "name": "Load", "kind": "node", "type": "node", "parent": "Pipeline"},
        {"id": "Write", "name": "Write", "kind": "node", "type": "node", "parent": "Pipeline"},
        {"id": "Write-2", "name": "Write", "kind": "node", "type": "node", "parent": "Pipeline"},
        {"id": "Fan", "name": "Fan", "kind": "agent", "type": "parallel", "parent": "Pipeline"},
        {"id": "Sub", "name": "Sub", "kind": "workflow", "type": "flow", "parent": "Fan", "start": "inner_step"},
        {"id": "inner_step", "name": "inner_step", "kind": "node", "type": "node", "parent": "Sub"},
        {"id": "other", "name": "other", "kind": "node", "type": "node", "parent": "Fan"},
    ]
    assert graph["edges"] == [
        {"from": "Load", "to": "Write", "action": "default"},
        {"from": "Load", "to": "Write-2", "action": "skip"},
        {"from": "Write", "to": "Fan", "action": "default"},
    ]
    assert flow.graph() == graph  # ids are stable


def test_explicit_node_ids_win_and_duplicates_are_rejected() -> None:
    a = Record("step", node_id="first")
    b = Record("step")
    a >> b
    graph = Flow(start=a).graph()
    assert [n["id"] for n in graph["nodes"]] == ["first", "step"]
    c = Record("other", node_id="first")
    b >> c
    with pytest.raises(FlowDefinitionError, match="both have node_id 'first'"):
        Flow(start=a).graph()


def test_batch_and_kinds_appear_in_the_graph() -> None:
    class Search(Node):
        kind = "tool"

    class Writer(Node):
        name = "section_writer"

    assert Writer().name == "section_writer"
    assert Writer(name="other").name == "other"

    planner = Record("planner", kind="agent")
    planner >> Search() >> Squares(name="squares")
    nodes = Flow(start=planner).graph()["nodes"]
    assert [(n["id"], n["kind"], n["type"]) for n in nodes] == [
        ("planner", "agent", "node"),
        ("Search", "tool", "node"),
        ("squares", "node", "batch"),
    ]


# --- errors for bad input -------------------------------------------------------------------------------


def test_connecting_non_nodes_is_a_type_error() -> None:
    node = Record("a")
    with pytest.raises(TypeError, match="cannot connect node 'a' to a non-node: expected a Node, got int"):
        node >> 5  # type: ignore[type-var]
    with pytest.raises(TypeError, match="both sides of >> must be Node instances"):
        5 >> node
    with pytest.raises(TypeError, match="an action must be a non-empty str"):
        node - 3  # type: ignore[operator]
    with pytest.raises(TypeError, match="expected a Node"):
        node - "x" >> "b"  # type: ignore[type-var]
    with pytest.raises(TypeError, match="Flow 'Flow' start: expected a Node"):
        Flow(start="a")  # type: ignore[arg-type]


def test_rewiring_an_action_to_another_node_is_refused() -> None:
    a, b = Record("a"), Record("b")
    a >> b
    a >> b  # same target: fine
    with pytest.raises(FlowDefinitionError, match=r"already goes to 'b' on action 'default'"):
        a >> Record("c")
    del a.successors["default"]
    a >> Record("c")


def test_flow_without_start_node() -> None:
    with pytest.raises(FlowDefinitionError, match=r"flow 'empty' has no start node: pass Flow\(start=first_node\)"):
        Flow(name="empty").run({})


def test_sync_flow_with_async_node_says_to_use_async_flow() -> None:
    start = Record("a")
    start >> AsyncRecord("b")
    with pytest.raises(FlowDefinitionError, match=r"contains async node 'b'.*use AsyncFlow"):
        Flow(start=start).run({})
    with pytest.raises(FlowDefinitionError, match=r"use `await node\.run_async"):
        AsyncRecord("x").run({})
    with pytest.raises(FlowDefinitionError, match=r"use `await flow\.run_async"):
        AsyncFlow(start=AsyncRecord("x")).run({})


def test_parallel_rejects_sync_branches_and_branches_with_successors() -> None:
    with pytest.raises(FlowDefinitionError, match="branch 'a' is a sync Record; branches must be async"):
        Parallel(Record("a"))
    with pytest.raises(FlowDefinitionError, match="at least one branch"):
        Parallel()
    branch = AsyncRecord("b")
    branch >> AsyncRecord("c")
    with pytest.raises(FlowDefinitionError, match=r"branch 'b' has successors.*AsyncFlow"):
        AsyncFlow(start=Parallel(branch)).graph()


def test_flow_nested_in_itself_and_bad_arguments() -> None:
    flow = Flow(name="loop")
    flow.start_node = Record("a")
    flow.start_node >> flow
    with pytest.raises(FlowDefinitionError, match="contains itself"):
        flow.run({})
    with pytest.raises(ValueError, match="kind must be one of"):
        Node(kind="robot")
    with pytest.raises(ValueError, match="max_steps must be an int >= 1 or None"):
        Flow(max_steps=0)
    with pytest.raises(TypeError, match="shared state must be a dict"):
        Flow(start=Record("a")).run([])  # type: ignore[arg-type]


def test_running_a_node_with_successors_alone_warns() -> None:
    a = Record("a")
    a >> Record("b")
    shared: dict[str, Any] = {}
    with pytest.warns(EngineWarning, match="Node.run does not follow"):
        a.run(shared)
    assert shared["trail"] == ["a"]


# --- hook points ----------------------------------------------------------------------------------------


def test_transition_hook_reports_written_keys_and_sizes() -> None:
    class Write(Node):
        def __init__(self, name: str, writes: dict[str, Any]) -> None:
            super().__init__(name=name)
            self.writes = writes

        def post(self, shared: dict[str, Any], prep_result: Any, exec_result: Any) -> str | None:
            shared.update(self.writes)
            return None

    class Append(Node):
        def post(self, shared: dict[str, Any], prep_result: Any, exec_result: Any) -> str | None:
            shared["items"].append(3)  # mutated in place: still a write
            shared["same"] = "x"  # rebound to an equal value: not a change
            del shared["gone"]  # removals are not listed
            return "end"

    first = Write("first", {"topic": "otel", "items": [1, 2]})
    first >> Append()
    flow = RecordingFlow(start=first)
    flow.run({"same": "x", "gone": 1})
    assert flow.transitions == [
        ("first", "Append", "default", ("topic", "items"), len('"otel"') + len("[1,2]")),
        ("Append", None, "end", ("items",), len("[1,2,3]")),
    ]
    assert flow.progress == [(1, 2), (2, 2)]

    untracked = RecordingFlow(start=Write("w", {"k": "v"}), track_writes=False)
    untracked.run({})
    assert untracked.transitions == [("w", None, "default", (), 0)]


def test_values_json_cannot_encode_are_still_tracked() -> None:
    class Odd(Node):
        def post(self, shared: dict[str, Any], prep_result: Any, exec_result: Any) -> str | None:
            shared["obj"] = {(1, 2): "tuple key"}
            shared["set"] = {1}
            return None

    flow = RecordingFlow(start=Odd())
    flow.run({})
    assert flow.transitions[0][3] == ("obj", "set")
    assert flow.transitions[0][4] > 0


def test_hooks_run_in_the_caller_thread_and_flows_run_in_parallel_threads() -> None:
    barrier = threading.Barrier(2, timeout=GUARD_S)

    class Rendezvous(Node):
        def exec(self, prep_result: Any) -> Any:
            barrier.wait()  # both threads are inside this node at the same time
            return threading.get_ident()

        def post(self, shared: dict[str, Any], prep_result: Any, exec_result: Any) -> str | None:
            shared["thread"] = exec_result
            return None

    flow = Flow(start=Rendezvous())
    results: list[dict[str, Any]] = [{}, {}]
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(flow.run, shared) for shared in results]
        assert [future.result(GUARD_S) for future in futures] == [DEFAULT_ACTION, DEFAULT_ACTION]
    assert results[0]["thread"] != results[1]["thread"]


def test_hook_points_exist_where_documented() -> None:
    import otelflow.engine as engine

    doc = engine.__doc__ or ""
    for owner, method in [
        (Node, "_run_node"),
        (AsyncNode, "_run_node_async"),
        (Flow, "_run_flow"),
        (AsyncFlow, "_run_flow_async"),
        (Node, "_on_prepared"),
        (Node, "_on_executed"),
        (Node, "_on_attempt_failed"),
        (Node, "_on_fallback"),
        (Flow, "_on_transition"),
        (Flow, "_on_progress"),
    ]:
        assert method in vars(owner), f"{owner.__name__}.{method}"
        assert f"{owner.__name__}.{method}" in doc
    assert "_run_node" not in vars(BatchNode)  # batch nodes reuse Node._run_node
    assert "_run_node_async" not in vars(Parallel)  # so wrapping AsyncNode's covers Parallel too


def test_prepared_and_executed_hooks_see_what_prep_and_exec_returned() -> None:
    seen: list[tuple[str, Any]] = []

    class Watched(Squares):
        def _on_prepared(self, prep_result: Any) -> None:
            seen.append(("prepared", list(prep_result)))

        def _on_executed(self, exec_result: Any) -> None:
            seen.append(("executed", exec_result))

    class AsyncWatched(AsyncNode):
        async def prep_async(self, shared: dict[str, Any]) -> Any:
            return "question"

        async def exec_async(self, prep_result: Any) -> Any:
            return prep_result.upper()

        def _on_prepared(self, prep_result: Any) -> None:
            seen.append(("async prepared", prep_result))

        def _on_executed(self, exec_result: Any) -> None:
            seen.append(("async executed", exec_result))

    Watched(max_retries=2).run({"items": [2, 3]})
    run(AsyncWatched().run_async({}))
    assert seen == [
        ("prepared", [2, 3]),
        ("executed", [4, 9]),
        ("async prepared", "question"),
        ("async executed", "QUESTION"),
    ]


def test_a_node_reused_in_a_nested_flow_keeps_its_edges_at_both_levels() -> None:
    shared_step = Record("shared_step")
    inner = Flow(start=shared_step, name="inner")
    first = Record("first")
    first >> inner >> shared_step
    shared_step >> Record("tail")
    graph = Flow(start=first, name="outer").graph()
    assert [(n["id"], n["parent"]) for n in graph["nodes"]] == [
        ("first", "outer"),
        ("inner", "outer"),
        ("shared_step", "inner"),
        ("tail", "inner"),
    ]
    assert {(e["from"], e["to"]) for e in graph["edges"]} == {
        ("first", "inner"),
        ("inner", "shared_step"),
        ("shared_step", "tail"),
    }


# --- run ids --------------------------------------------------------------------------------------------


class SeeRunId(Node):
    """Records the current run id in prep, exec (also in a timeout thread) and post."""

    def prep(self, shared: dict[str, Any]) -> Any:
        shared.setdefault("seen", []).append(("prep", current_run_id()))

    def exec(self, prep_result: Any) -> Any:
        return current_run_id()

    def post(self, shared: dict[str, Any], prep_result: Any, exec_result: Any) -> str | None:
        shared["seen"] += [("exec", exec_result), ("post", current_run_id())]
        return None


class AsyncSeeRunId(AsyncNode):
    """Waits for ``gate`` between reading the run id twice, so that concurrent runs interleave."""

    def __init__(self, gate: asyncio.Event) -> None:
        super().__init__()
        self.gate = gate

    async def exec_async(self, prep_result: Any) -> Any:
        before = current_run_id()
        await self.gate.wait()
        return before, current_run_id()

    async def post_async(self, shared: dict[str, Any], prep_result: Any, exec_result: Any) -> str | None:
        shared["seen"] = exec_result
        return None


def test_run_id_is_visible_during_the_run_everywhere_and_reset_after() -> None:
    inner = Flow(start=SeeRunId(name="inner_node", timeout=GUARD_S), name="inner")  # exec in a worker thread
    outer_node = SeeRunId(name="outer_node")
    outer_node >> inner
    shared: dict[str, Any] = {}
    assert current_run_id() is None
    Flow(start=outer_node, name="outer").run(shared, run_id="job-123")
    assert shared["seen"] == [(step, "job-123") for step in ("prep", "exec", "post")] * 2
    assert current_run_id() is None


def test_run_id_is_reset_when_the_run_fails_and_absent_without_one() -> None:
    class Boom(Node):
        def exec(self, prep_result: Any) -> Any:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        Flow(start=Boom()).run({}, run_id="job-1")
    assert current_run_id() is None
    shared: dict[str, Any] = {}
    Flow(start=SeeRunId()).run(shared)
    assert {run_id for _, run_id in shared["seen"]} == {None}


def test_a_run_without_run_id_inside_a_run_keeps_the_outer_id_and_an_explicit_one_wins() -> None:
    class RunsAnother(Node):
        def exec(self, prep_result: Any) -> Any:
            plain: dict[str, Any] = {}
            Flow(start=SeeRunId()).run(plain)
            named: dict[str, Any] = {}
            Flow(start=SeeRunId()).run(named, run_id="inner-run")
            return plain["seen"][0][1], named["seen"][0][1], current_run_id()

        def post(self, shared: dict[str, Any], prep_result: Any, exec_result: Any) -> str | None:
            shared["ids"] = exec_result
            return None

    shared: dict[str, Any] = {}
    Flow(start=RunsAnother()).run(shared, run_id="outer-run")
    assert shared["ids"] == ("outer-run", "inner-run", "outer-run")


def test_run_ids_are_isolated_between_concurrent_runs_in_threads() -> None:
    barrier = threading.Barrier(4, timeout=GUARD_S)

    class Wait(Node):
        def exec(self, prep_result: Any) -> Any:
            before = current_run_id()
            barrier.wait()  # every run is inside its flow at the same time
            return before, current_run_id()

        def post(self, shared: dict[str, Any], prep_result: Any, exec_result: Any) -> str | None:
            shared["seen"] = exec_result
            return None

    flow = Flow(start=Wait(), name="shared_flow")  # one flow object, four concurrent runs

    def one(index: int) -> Any:
        shared: dict[str, Any] = {}
        flow.run(shared, run_id=f"job-{index}")
        return shared["seen"], current_run_id()

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(one, range(4)))
    assert results == [((f"job-{i}", f"job-{i}"), None) for i in range(4)]


def test_run_ids_are_isolated_between_concurrent_runs_in_tasks() -> None:
    async def scenario() -> list[Any]:
        gate = asyncio.Event()
        flow = AsyncFlow(start=AsyncSeeRunId(gate), name="shared_flow")
        shares: list[dict[str, Any]] = [{} for _ in range(3)]
        runs = [asyncio.create_task(flow.run_async(shared, run_id=f"task-{i}")) for i, shared in enumerate(shares)]
        await asyncio.sleep(0.01)  # all three are waiting inside their runs
        gate.set()
        await asyncio.gather(*runs)
        assert current_run_id() is None
        return [shared["seen"] for shared in shares]

    assert run(scenario()) == [(f"task-{i}", f"task-{i}") for i in range(3)]


@pytest.mark.parametrize(
    ("run_id", "error", "message"),
    [
        ("", ValueError, "must not be empty"),
        ("   ", ValueError, "must not be empty"),
        (123, TypeError, "run_id must be a str such as 'job-123'"),
    ],
)
def test_a_bad_run_id_is_a_clear_error_before_anything_runs(run_id: Any, error: type[Exception], message: str) -> None:
    shared: dict[str, Any] = {}
    with pytest.raises(error, match=message):
        Flow(start=SeeRunId(), name="f").run(shared, run_id=run_id)
    with pytest.raises(error, match=message):
        run(AsyncFlow(start=SeeRunId(), name="f").run_async(shared, run_id=run_id))
    assert shared == {}
