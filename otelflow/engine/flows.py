"""Flows: graphs of nodes run along the actions their nodes return, nested or not; their graph and run ids."""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import threading
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar, Final

from otelflow.engine.errors import FlowDefinitionError, MaxStepsExceeded
from otelflow.engine.nodes import (
    DEFAULT_ACTION,
    AsyncNode,
    BatchNode,
    Node,
    Parallel,
    Shared,
    as_action,
    check_branch,
    require_node,
    require_shared,
)

__all__ = ["AsyncFlow", "Flow", "current_run_id"]

_FLOW_KINDS: Final = frozenset({"workflow", "node", "agent", "tool"})

# The module doc of otelflow.engine names this logger; it is the package's, wherever the flows live in it.
_logger = logging.getLogger("otelflow.engine")

# The run id given to the ``run``/``run_async`` call whose flow is running in this context (thread or task).
_RUN_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("otelflow_engine_run_id", default=None)

# Guards lazy node-id assignment: flows sharing nodes may be described or run from several threads.
_ID_LOCK = threading.Lock()


def current_run_id() -> str | None:
    """The ``run_id`` of the flow run this code is part of (``flow.run(shared, run_id="job-123")``), else None.

    Set for the duration of ``Flow.run`` / ``AsyncFlow.run_async`` in the caller's context, so nodes, nested
    flows and hooks of that run see it, while other threads and tasks see their own run's id. A run without a
    ``run_id`` keeps the id of the run it is part of, if any.
    """
    return _RUN_ID.get()


@contextlib.contextmanager
def _run_id_scope(run_id: str | None, flow: Node) -> Iterator[None]:
    """Make ``run_id`` (validated) the current run id while the body runs; ``None`` changes nothing."""
    if run_id is None:
        yield
        return
    if not isinstance(run_id, str):
        raise TypeError(f"flow {flow.name!r}: run_id must be a str such as 'job-123' (or None), got {run_id!r}")
    if not run_id.strip():
        raise ValueError(f"flow {flow.name!r}: run_id must not be empty or blank, got {run_id!r}")
    token = _RUN_ID.set(run_id)
    try:
        yield
    finally:
        _RUN_ID.reset(token)


# --- data flow bookkeeping ----------------------------------------------------------------------------------


def _encode(value: object) -> str:
    """Compact JSON of ``value``; ``repr`` for what JSON cannot express. Used to detect writes and sizes."""
    try:
        return json.dumps(value, default=repr, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError):
        return repr(value)


def _snapshot(shared: Shared) -> dict[Any, str]:
    return {key: _encode(value) for key, value in list(shared.items())}


def _diff(before: dict[Any, str], after: dict[Any, str]) -> tuple[tuple[str, ...], int]:
    keys: list[str] = []
    size = 0
    for key, encoded in after.items():
        if before.get(key) != encoded:
            keys.append(str(key))
            size += len(encoded)
    return tuple(keys), size


# --- flows --------------------------------------------------------------------------------------------------


class _Walk:
    """The nodes and edges of a flow, found by following transitions from the start, recursively."""

    def __init__(self) -> None:
        self.members: list[tuple[Node, Node]] = []  # (node, containing flow or Parallel), each node once
        self.edges: list[tuple[Node, str, Node]] = []
        self._members: set[int] = set()
        self._edges: set[tuple[int, str]] = set()
        self._expanded: set[int] = set()

    def add(self, node: Node, container: Node) -> None:
        if id(node) not in self._members:
            self._members.add(id(node))
            self.members.append((node, container))

    def add_edges(self, node: Node) -> None:
        for action, successor in node.successors.items():
            if (id(node), action) not in self._edges:
                self._edges.add((id(node), action))
                self.edges.append((node, action, successor))

    def expand(self, container: Node) -> bool:
        """True the first time ``container`` is seen: its contents still have to be walked."""
        if id(container) in self._expanded:
            return False
        self._expanded.add(id(container))
        return True


def _level(flow: Flow) -> list[Node]:
    """The distinct nodes reachable from ``flow``'s start, breadth first, successors in insertion order."""
    start = flow._require_start()
    order: list[Node] = [start]
    seen = {id(start)}
    index = 0
    while index < len(order):
        for successor in order[index].successors.values():
            if id(successor) not in seen:
                seen.add(id(successor))
                order.append(successor)
        index += 1
    return order


def _walk(root: Flow) -> _Walk:
    """Validate ``root`` and everything nested in it, assign node ids, and return nodes and edges."""
    walk = _Walk()

    def visit_flow(flow: Flow, ancestors: tuple[Node, ...]) -> None:
        is_async = isinstance(flow, AsyncNode)
        inside = (*ancestors, flow)
        for node in _level(flow):
            if not is_async and isinstance(node, AsyncNode):
                raise FlowDefinitionError(
                    f"Flow {flow.name!r} contains async node {node.name!r} ({type(node).__name__}); "
                    f"a sync Flow runs only sync nodes: use AsyncFlow(start=...) and "
                    f"`await flow.run_async(shared)`"
                )
            walk.add(node, flow)
            walk.add_edges(node)
            visit_inner(node, inside)

    def visit_inner(node: Node, ancestors: tuple[Node, ...]) -> None:
        if isinstance(node, Flow):
            if any(node is ancestor for ancestor in ancestors):
                raise FlowDefinitionError(f"flow {node.name!r} contains itself; a flow cannot be nested in itself")
            if walk.expand(node):
                visit_flow(node, ancestors)
        elif isinstance(node, Parallel) and walk.expand(node):
            for branch in node.branches:
                check_branch(node, branch)
                walk.add(branch, node)
                visit_inner(branch, (*ancestors, node))

    walk.expand(root)
    visit_flow(root, ())
    _assign_ids([root, *(node for node, _ in walk.members)])
    return walk


def _assign_ids(nodes: Sequence[Node]) -> None:
    """Give every node an id unique among ``nodes``; explicit ids win, auto ids are kept when still unique."""
    with _ID_LOCK:
        used: dict[str, Node] = {}
        for node in nodes:
            if node._explicit_id:
                assert node._node_id is not None
                other = used.setdefault(node._node_id, node)
                if other is not node:
                    raise FlowDefinitionError(
                        f"nodes {other.name!r} and {node.name!r} both have node_id {node._node_id!r}; "
                        f"node ids must be unique within a flow"
                    )
        for node in nodes:
            if node._explicit_id:
                continue
            current = node._node_id
            if current is not None and used.get(current, node) is node:
                used[current] = node
                continue
            candidate, suffix = node.name, 2
            while candidate in used:
                candidate, suffix = f"{node.name}-{suffix}", suffix + 1
            node._node_id = candidate
            used[candidate] = node


def _node_type(node: Node) -> str:
    if isinstance(node, Flow):
        return "flow"
    if isinstance(node, Parallel):
        return "parallel"
    if isinstance(node, BatchNode):
        return "batch"
    return "node"


class _FlowRun:
    """Bookkeeping of one run of one flow level: step budget, data-flow diff, transition and progress hooks."""

    __slots__ = ("flow", "planned", "shared", "snapshot", "steps")

    def __init__(self, flow: Flow, shared: Shared, planned: int) -> None:
        self.flow = flow
        self.shared = shared
        self.planned = planned
        self.steps = 0
        self.snapshot = _snapshot(shared) if flow.track_writes else None

    def before(self, node: Node) -> None:
        max_steps = self.flow.max_steps
        if max_steps is not None and self.steps >= max_steps:
            raise MaxStepsExceeded(self.flow.name, max_steps, node.name)

    def after(self, node: Node, action: str) -> Node | None:
        self.steps += 1
        keys: tuple[str, ...] = ()
        size = 0
        if self.snapshot is not None:
            current = _snapshot(self.shared)
            keys, size = _diff(self.snapshot, current)
            self.snapshot = current
        target = node.successors.get(action)
        if target is None and node.successors:
            _logger.debug(
                "flow %r ends after %r: action %r has no successor (connected: %s)",
                self.flow.name,
                node.name,
                action,
                ", ".join(node.successors),
            )
        self.flow._on_transition(node, target, action, keys, size)
        self.flow._on_progress(self.steps, max(self.planned, self.steps))
        return target


class Flow(Node):
    """A graph of sync nodes run from ``start`` along the actions their ``post`` returns.

    ``run(shared)`` returns the flow's action (see the module doc on nesting). ``max_steps`` bounds the
    number of node runs of one run of this flow (``None`` = unlimited); ``track_writes=False`` skips the
    per-step JSON snapshot of ``shared`` that reports written keys to ``_on_transition``. ``prep`` and
    ``post`` run before and after the steps; ``post`` receives the action that ended the flow as
    ``exec_result``. Retry, timeout and ``exec`` settings do not apply to flows.
    """

    kind: str = "workflow"
    _allowed_kinds: ClassVar[frozenset[str]] = _FLOW_KINDS

    def __init__(
        self,
        start: Node | None = None,
        *,
        name: str | None = None,
        node_id: str | None = None,
        kind: str | None = None,
        max_steps: int | None = 1000,
        track_writes: bool = True,
    ) -> None:
        super().__init__(name=name, node_id=node_id, kind=kind)
        if start is not None:
            require_node(start, f"Flow {self.name!r} start")
        if max_steps is not None and (isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1):
            raise ValueError(f"Flow {self.name!r}: max_steps must be an int >= 1 or None, got {max_steps!r}")
        self.start_node: Node | None = start
        self.max_steps = max_steps
        self.track_writes = track_writes

    def _require_start(self) -> Node:
        start = self.start_node
        if start is None:
            raise FlowDefinitionError(
                f"flow {self.name!r} has no start node: pass {type(self).__name__}(start=first_node)"
            )
        require_node(start, f"Flow {self.name!r} start")
        return start

    def graph(self) -> dict[str, Any]:
        """The flow's nodes and transitions as JSON-serialisable data (format in the module doc).

        Validates the flow like a run would, and assigns node ids; raises :class:`FlowDefinitionError`.
        """
        walk = _walk(self)
        nodes: list[dict[str, Any]] = []
        for node, container in walk.members:
            entry: dict[str, Any] = {
                "id": node.node_id,
                "name": node.name,
                "kind": node.kind,
                "type": _node_type(node),
                "parent": container.node_id,
            }
            if isinstance(node, Flow):
                entry["start"] = node._require_start().node_id
            nodes.append(entry)
        return {
            "id": self.node_id,
            "name": self.name,
            "kind": self.kind,
            "type": "flow",
            "start": self._require_start().node_id,
            "nodes": nodes,
            "edges": [
                {"from": source.node_id, "to": target.node_id, "action": action}
                for source, action, target in walk.edges
            ],
        }

    def post(self, shared: Shared, prep_result: Any, exec_result: Any) -> str | None:
        """The action that ended the flow if this flow has a successor for it, else ``None`` (default)."""
        if isinstance(exec_result, str) and exec_result in self.successors:
            return exec_result
        return None

    def run(self, shared: Shared, *, run_id: str | None = None) -> str:
        """Run the flow on ``shared``; returns the flow's action.

        ``run_id`` names this run (``"job-123"``): :func:`current_run_id` returns it while the flow runs, and
        tracing puts it on the workflow span as ``otelflow.run.id``, by which the viewer finds the run.
        """
        require_shared(shared, self)
        with _run_id_scope(run_id, self):
            return self._run_flow(shared)

    def _run_node(self, shared: Shared) -> str:
        return self._run_flow(shared)

    def _start_run(self, shared: Shared) -> tuple[Node, _FlowRun]:
        _walk(self)
        return self._require_start(), _FlowRun(self, shared, len(_level(self)))

    def _run_flow(self, shared: Shared) -> str:
        """Hook point: run the whole flow (validate, prep, steps, post) and return the flow's action."""
        node: Node | None
        node, run = self._start_run(shared)
        prep_result = self.prep(shared)
        action = DEFAULT_ACTION
        while node is not None:
            run.before(node)
            action = node._run_node(shared)
            node = run.after(node, action)
        return as_action(self.post(shared, prep_result, action), self)

    def _on_transition(self, source: Node, target: Node | None, action: str, keys: tuple[str, ...], size: int) -> None:
        """Hook point: ``source`` finished with ``action``; ``target`` runs next (None: the flow ends)."""

    def _on_progress(self, completed: int, total: int) -> None:
        """Hook point: ``completed`` node runs of this flow finished, of ``total`` planned."""


class AsyncFlow(AsyncNode, Flow):
    """A flow that may contain async nodes, parallel branches and sync nodes; run with ``run_async``."""

    def run(self, shared: Shared, *, run_id: str | None = None) -> str:
        """Not available: use ``await flow.run_async(shared)``."""
        raise FlowDefinitionError(
            f"{self.name!r} is an AsyncFlow; use `await flow.run_async(shared)` "
            f"(or asyncio.run(flow.run_async(shared)))"
        )

    async def run_async(self, shared: Shared, *, run_id: str | None = None) -> str:
        """Run the flow on ``shared``; returns the flow's action. ``run_id`` as for :meth:`Flow.run`."""
        require_shared(shared, self)
        with _run_id_scope(run_id, self):
            return await self._run_flow_async(shared)

    async def _run_node_async(self, shared: Shared) -> str:
        return await self._run_flow_async(shared)

    async def _run_flow_async(self, shared: Shared) -> str:
        """Hook point: run the whole async flow (validate, prep, steps, post) and return its action."""
        node: Node | None
        node, run = self._start_run(shared)
        prep_result = await self.prep_async(shared)
        action = DEFAULT_ACTION
        while node is not None:
            run.before(node)
            if isinstance(node, AsyncNode):
                action = await node._run_node_async(shared)
            else:
                action = node._run_node(shared)
            node = run.after(node, action)
        return as_action(await self.post_async(shared, prep_result, action), self)
