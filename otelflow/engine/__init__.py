"""The workflow engine: nodes joined by named actions into flows, sync or async, with retries and parallel branches.

The engine knows nothing about OpenTelemetry; :mod:`otelflow.engine.instrumentor` traces it from the outside by
wrapping the hook points listed below, and :mod:`otelflow.engine.demo` holds the example flows. Inside:
:mod:`~otelflow.engine.nodes` (nodes and their variants), :mod:`~otelflow.engine.flows` (flows, their graph, run
ids), :mod:`~otelflow.engine.tasks` (time limits and cancellation), :mod:`~otelflow.engine.errors`.

Model
-----
A :class:`Node` runs in three steps: ``prep(shared)`` reads what it needs from the shared dict,
``exec(prep_result)`` does the work (no access to ``shared``; this is the part that is retried), and
``post(shared, prep_result, exec_result)`` writes results back and returns the name of the next *action*
(``None`` means ``"default"``).

A :class:`Flow` starts at its start node and follows transitions: ``a >> b`` connects ``a`` to ``b`` for the
``"default"`` action, ``a - "approve" >> b`` for the ``"approve"`` action. Cycles are allowed (each visit runs
the node again); ``Flow(max_steps=...)`` (default 1000) stops a loop that never exits with
:class:`MaxStepsExceeded`.

Ending: when a node returns an action that has no successor, the flow ends normally, also when the node has
successors for other actions. This is deliberate: ending on an unconnected action (``review - "revise" >>
writer`` plus ``"approve"`` with no successor) is how a loop finishes. The transition hook still reports the
ending action with ``target=None``, so a trace shows exactly why a flow ended, and the engine logs it at
DEBUG level on the ``otelflow.engine`` logger.

A flow is itself a node and can be nested. As a node, a flow returns the action that ended it when the
enclosing flow has a successor for that action, and ``"default"`` otherwise, so ``outer: a >> sub >> b`` runs
``b`` however ``sub`` ended, while ``sub - "escalate" >> human`` can route on the inner outcome. Override
``Flow.post`` to choose differently.

Retries: ``max_retries`` is the total number of ``exec`` attempts (default 1). Between attempts the node
waits ``wait * backoff ** (attempt - 1)`` seconds. When every attempt failed, ``exec_fallback(prep_result,
exc)`` provides the result; its default re-raises ``exc``. ``timeout`` bounds each attempt: a sync ``exec``
runs in a worker thread (with the caller's context variables copied) and an attempt that overruns raises
:class:`NodeTimeoutError`, which counts as a failed attempt; the overrunning thread cannot be killed and is
left to finish in the background, its result discarded. An async ``exec_async`` is cancelled on timeout.

:class:`BatchNode` runs ``exec`` once per item of the iterable returned by ``prep`` (retries per item).
Async variants: :class:`AsyncNode` (``prep_async``/``exec_async``/``post_async``/``exec_fallback_async``),
:class:`AsyncFlow`, :class:`AsyncBatchNode` (items one after another) and :class:`AsyncParallelBatchNode`
(items concurrently). :class:`Parallel` fans out to async branches that run concurrently on one shared dict
and joins into the parallel node's successor. An AsyncFlow may contain sync nodes (they run inline and
block the event loop while they run); a sync Flow may not contain async nodes.

Cancellation: concurrent work (parallel branches, parallel batch items, an async attempt with a timeout)
runs in tasks. When one of them fails, or the task running the flow is cancelled, every other task is
cancelled and awaited (its ``finally`` blocks run) before the first error, or the cancellation, propagates.

Shared state is a plain ``dict``. Nodes keep no per-run state, so one flow object may run in several threads
or tasks at once (concurrent runs on the *same* shared dict are the caller's business).

Run ids: ``flow.run(shared, run_id="job-123")`` (``await flow.run_async(shared, run_id=...)``) names a run.
:func:`current_run_id` returns the id anywhere inside that run (nodes, nested flows, hooks, timeout threads);
concurrent runs in other threads or tasks see their own. Tracing records it as ``otelflow.run.id`` on the
run's workflow span, so the viewer finds the run as ``/runs/job-123``.

Graph
-----
:meth:`Flow.graph` describes the flow before it runs, as JSON-serialisable data::

    {"id": "Pipeline", "name": "Pipeline", "kind": "workflow", "type": "flow", "start": "Load",
     "nodes": [{"id": "Load", "name": "Load", "kind": "node", "type": "node", "parent": "Pipeline"}, ...],
     "edges": [{"from": "Load", "to": "Write", "action": "default"}, ...]}

``nodes`` lists every node of the flow and, recursively, of nested flows and parallel branches (not the flow
itself, which is described by the top-level keys). ``parent`` is the id of the flow or :class:`Parallel`
that contains the node. ``type`` is ``"node"``, ``"batch"``, ``"flow"`` (nested flows also carry their
``"start"``) or ``"parallel"`` (its branches are the nodes whose ``parent`` is the parallel node). ``edges``
are the transitions of every flow level. Node ids are unique within the flow: a node's id is the
``node_id`` passed to it, else its name, made unique with a ``-2``, ``-3``... suffix the first time a flow
containing it is described or run.

Hook points
-----------
Private methods that are the single place where each of these happens, so that tracing can wrap them (with
``wrapt``) and restore them exactly. Their defaults are no-ops or just do the work; they are called in the
context (thread, task, context variables) of the node or flow they describe.

``Node._run_node(self, shared) -> str``
    Runs one whole node: prep, exec attempts (and fallback), post; returns the action (never ``None``).
``AsyncNode._run_node_async(self, shared) -> str``
    The same for async nodes (also :class:`Parallel` and the async batch nodes).
``Flow._run_flow(self, shared) -> str`` / ``AsyncFlow._run_flow_async(self, shared) -> str``
    Runs one whole flow (validation, prep, every step, post) and returns the flow's action. ``Flow._run_node``
    and ``AsyncFlow._run_node_async`` only delegate to these, so a nested flow is one flow run, not a node run.
``Node._on_prepared(self, prep_result) -> None`` / ``Node._on_executed(self, exec_result) -> None``
    Inside a node run (sync or async): after ``prep`` returned, and after the attempts (or the fallback)
    produced the result that ``post`` will receive (for batch nodes, the list of items / of results).
``Node._on_attempt_failed(self, attempt: int, exc: Exception, wait_s: float | None) -> None``
    After each failed ``exec`` attempt (1-based ``attempt``), before waiting. ``wait_s`` is the pause before
    the next attempt, or ``None`` when this was the last attempt. Sync and async nodes alike.
``Node._on_fallback(self, exc: Exception) -> None``
    Just before a user-defined ``exec_fallback``/``exec_fallback_async`` handles ``exc`` (the last attempt's
    error). Not called when the node keeps the default fallback, which only re-raises.
``Flow._on_transition(self, source: Node, target: Node | None, action: str, keys: tuple[str, ...],
size: int) -> None``
    After each node of the flow finished: ``target`` is the next node or ``None`` when the flow ends there;
    ``keys`` are the top-level keys of ``shared`` that the node added or changed (compared by their JSON
    encoding; removed keys are not listed) and ``size`` is the approximate JSON byte size of their new values
    (both empty when ``Flow(track_writes=False)``; approximate when concurrent branches share the dict).
``Flow._on_progress(self, completed: int, total: int) -> None``
    Right after ``_on_transition``: ``completed`` node runs of this flow so far, out of ``total``, the number of
    distinct nodes reachable from the start (raised to ``completed`` when a loop ran more steps than that).
"""

from __future__ import annotations

from otelflow.engine.errors import EngineError, EngineWarning, FlowDefinitionError, MaxStepsExceeded, NodeTimeoutError
from otelflow.engine.flows import AsyncFlow, Flow, current_run_id
from otelflow.engine.nodes import (
    DEFAULT_ACTION,
    AsyncBatchNode,
    AsyncNode,
    AsyncParallelBatchNode,
    BatchNode,
    Node,
    NodeOptions,
    Parallel,
)

__all__ = [
    "DEFAULT_ACTION",
    "AsyncBatchNode",
    "AsyncFlow",
    "AsyncNode",
    "AsyncParallelBatchNode",
    "BatchNode",
    "EngineError",
    "EngineWarning",
    "Flow",
    "FlowDefinitionError",
    "MaxStepsExceeded",
    "Node",
    "NodeOptions",
    "NodeTimeoutError",
    "Parallel",
    "current_run_id",
]

# The public names keep ``otelflow.engine`` as their module, the path users import them from: it is also how
# traces name the engine's errors (``error.type`` is ``otelflow.engine.NodeTimeoutError``) and how pickle finds
# them, wherever inside the package they are defined.
for _public in (
    AsyncBatchNode,
    AsyncFlow,
    AsyncNode,
    AsyncParallelBatchNode,
    BatchNode,
    EngineError,
    EngineWarning,
    Flow,
    FlowDefinitionError,
    MaxStepsExceeded,
    Node,
    NodeOptions,
    NodeTimeoutError,
    Parallel,
    current_run_id,
):
    _public.__module__ = __name__
del _public
