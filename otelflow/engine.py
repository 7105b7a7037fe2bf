"""The workflow engine: nodes joined by named actions into flows, sync or async, with retries and parallel branches.

The engine knows nothing about OpenTelemetry; :mod:`otelflow.instrumentor` traces it from the outside by
wrapping the hook points listed below.

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

import asyncio
import contextlib
import contextvars
import json
import logging
import threading
import time
import warnings
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Final, NoReturn, TypedDict, TypeVar

if TYPE_CHECKING:
    from typing_extensions import Unpack

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

DEFAULT_ACTION: Final = "default"
"""The action of ``a >> b`` and of a ``post`` that returns ``None``."""

_NODE_KINDS: Final = frozenset({"node", "agent", "tool"})
_FLOW_KINDS: Final = frozenset({"workflow", "node", "agent", "tool"})

_logger = logging.getLogger(__name__)

# The run id given to the ``run``/``run_async`` call whose flow is running in this context (thread or task).
_RUN_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("otelflow_engine_run_id", default=None)

# Guards lazy node-id assignment: flows sharing nodes may be described or run from several threads.
_ID_LOCK = threading.Lock()

Shared = dict[str, Any]
_N = TypeVar("_N", bound="Node")
_T = TypeVar("_T")


class EngineError(Exception):
    """Base class of the errors the engine raises itself (user exceptions propagate unchanged)."""


class FlowDefinitionError(EngineError):
    """A flow is built or used wrongly (no start node, async node in a sync flow, duplicate node ids...)."""


class MaxStepsExceeded(EngineError):
    """A flow ran ``max_steps`` nodes without ending, usually a loop that never takes its exit action."""

    def __init__(self, flow_name: str, max_steps: int, next_node: str) -> None:
        self.flow_name = flow_name
        self.max_steps = max_steps
        super().__init__(
            f"flow {flow_name!r} ran {max_steps} steps without ending (max_steps={max_steps}) and was about "
            f"to run {next_node!r} again; end the loop with an action that has no successor, or pass a "
            f"larger Flow(max_steps=...) (None = unlimited)"
        )


class NodeTimeoutError(EngineError, TimeoutError):
    """One ``exec`` attempt of a node ran longer than the node's ``timeout``; counts as a failed attempt."""

    def __init__(self, node_name: str, timeout: float) -> None:
        self.node_name = node_name
        self.timeout = timeout
        super().__init__(
            f"node {node_name!r}: exec did not finish within timeout={timeout:g} s; "
            f"raise the node's timeout if the work legitimately takes longer"
        )


class EngineWarning(UserWarning):
    """Something that works but is probably not what was meant."""


def _require_node(value: object, context: str) -> None:
    if not isinstance(value, Node):
        raise TypeError(f"{context}: expected a Node, got {type(value).__name__} {value!r}")


def _require_action(value: object, node: Node) -> None:
    if not isinstance(value, str) or not value:
        raise TypeError(f"node {node.name!r}: an action must be a non-empty str, got {value!r}")


def _require_shared(shared: object, who: Node) -> None:
    if not isinstance(shared, dict):
        raise TypeError(f"{who.name!r}: shared state must be a dict, got {type(shared).__name__}")


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


def _warn_if_successors(node: Node, method: str, container: str) -> None:
    if node.successors:
        warnings.warn(
            f"node {node.name!r} has successors, which {method} does not follow; put the node in {container}",
            EngineWarning,
            stacklevel=3,
        )


def _as_action(value: object, node: Node) -> str:
    if value is None:
        return DEFAULT_ACTION
    if not isinstance(value, str) or not value:
        raise TypeError(f"node {node.name!r}: post must return an action name (non-empty str) or None, got {value!r}")
    return value


def _items(node: Node, prep_result: object) -> list[Any]:
    if prep_result is None:
        return []
    if isinstance(prep_result, (str, bytes)) or not isinstance(prep_result, Iterable):
        raise TypeError(
            f"batch node {node.name!r}: prep must return an iterable of items (e.g. a list), "
            f"got {type(prep_result).__name__}"
        )
    return list(prep_result)


def _check_number(name: str, value: float, minimum: float, *, inclusive: bool = True) -> None:
    ok = value >= minimum if inclusive else value > minimum
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok:
        bound = f">= {minimum:g}" if inclusive else f"> {minimum:g}"
        raise ValueError(f"{name} must be a number {bound}, got {value!r}")


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


# --- concurrency helpers ------------------------------------------------------------------------------------


def _call_with_timeout(func: Callable[[Any], _T], arg: Any, timeout: float, node: Node) -> _T:
    """Run ``func(arg)`` in a daemon thread with the caller's contextvars; raise NodeTimeoutError on overrun."""
    context = contextvars.copy_context()
    outcome: list[tuple[bool, Any]] = []
    done = threading.Event()

    def target() -> None:
        try:
            outcome.append((True, context.run(func, arg)))
        except BaseException as exc:  # noqa: BLE001 - handed to the calling thread, which re-raises it
            outcome.append((False, exc))
        finally:
            done.set()

    thread = threading.Thread(target=target, name=f"otelflow-exec-{node.name}", daemon=True)
    thread.start()
    if not done.wait(timeout):
        raise NodeTimeoutError(node.name, timeout)
    ok, value = outcome[0]
    if ok:
        return value  # type: ignore[no-any-return]
    raise value


async def _settle(tasks: Sequence[asyncio.Future[Any]]) -> None:
    """Wait until every task is done and mark their errors as retrieved (they were cancelled or superseded)."""
    pending = [task for task in tasks if not task.done()]
    if pending:
        await asyncio.wait(pending)
    for task in tasks:
        if task.done() and not task.cancelled():
            task.exception()


async def _await_with_timeout(awaitable: Awaitable[_T], timeout: float | None, node: Node) -> _T:
    """Await ``awaitable``, cancelling it (and waiting for its cleanup) after ``timeout`` seconds."""
    if timeout is None:
        return await awaitable
    task = asyncio.ensure_future(awaitable)
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout)
    except BaseException:  # we were cancelled: stop the attempt too, then propagate
        task.cancel()
        await _settle([task])
        raise
    if task in done:
        return task.result()
    task.cancel()
    await _settle([task])
    raise NodeTimeoutError(node.name, timeout)


async def _gather_or_cancel(awaitables: Sequence[Awaitable[_T]]) -> list[_T]:
    """Run ``awaitables`` concurrently; on the first error or on cancellation, cancel and await the rest.

    Returns the results in order. The first error (or the cancellation) propagates after every task ended.
    """
    tasks = [asyncio.ensure_future(awaitable) for awaitable in awaitables]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await _settle(tasks)
        raise


# --- nodes --------------------------------------------------------------------------------------------------


class _ConditionalTransition:
    """The ``node - "action"`` half of ``node - "action" >> successor``."""

    __slots__ = ("action", "source")

    def __init__(self, source: Node, action: str) -> None:
        self.source = source
        self.action = action

    def __rshift__(self, other: _N) -> _N:
        return self.source.connect(other, self.action)

    def __repr__(self) -> str:
        return f"<transition {self.source.name!r} - {self.action!r}>"


class NodeOptions(TypedDict, total=False):
    """The keyword arguments of :class:`Node` (for subclasses that add their own and pass these on)."""

    name: str | None
    node_id: str | None
    kind: str | None
    max_retries: int | None
    wait: float | None
    backoff: float | None
    timeout: float | None


class Node:
    """A unit of work: ``prep(shared)`` → ``exec(prep_result)`` (retried) → ``post(...)`` → action.

    Subclass it and override ``prep``/``exec``/``post`` (and ``exec_fallback``). Class attributes give the
    defaults that constructor arguments override per instance:

    - ``kind``: ``"node"``, ``"agent"`` or ``"tool"``; how tracing presents the node.
    - ``max_retries``: total exec attempts (>= 1). ``wait``: seconds before the second attempt;
      ``backoff``: multiplier per further attempt (wait before attempt n+1 = ``wait * backoff**(n-1)``).
    - ``timeout``: seconds per exec attempt, or ``None``.

    ``name`` defaults to a class attribute ``name``, else the class name. ``node_id`` identifies the node
    within a flow (see the module doc). ``successors`` maps action names to the next node.
    """

    kind: str = "node"
    max_retries: int = 1
    wait: float = 0.0
    backoff: float = 2.0
    timeout: float | None = None

    _allowed_kinds: ClassVar[frozenset[str]] = _NODE_KINDS

    def __init__(
        self,
        *,
        name: str | None = None,
        node_id: str | None = None,
        kind: str | None = None,
        max_retries: int | None = None,
        wait: float | None = None,
        backoff: float | None = None,
        timeout: float | None = None,
    ) -> None:
        class_name = getattr(type(self), "name", None)  # a subclass may set ``name = "..."``
        if name is None:
            name = class_name if isinstance(class_name, str) else type(self).__name__
        self.name: str = name
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name must be a non-empty str, got {self.name!r}")
        if node_id is not None and (not isinstance(node_id, str) or not node_id):
            raise ValueError(f"node {self.name!r}: node_id must be a non-empty str, got {node_id!r}")
        self._node_id: str | None = node_id
        self._explicit_id = node_id is not None
        self.kind = type(self).kind if kind is None else kind
        if self.kind not in self._allowed_kinds:
            raise ValueError(
                f"node {self.name!r}: kind must be one of {sorted(self._allowed_kinds)}, got {self.kind!r}"
            )
        self.max_retries = type(self).max_retries if max_retries is None else max_retries
        if isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int) or self.max_retries < 1:
            raise ValueError(
                f"node {self.name!r}: max_retries is the total number of attempts, an int >= 1, "
                f"got {self.max_retries!r}"
            )
        self.wait = type(self).wait if wait is None else wait
        _check_number(f"node {self.name!r}: wait", self.wait, 0)
        self.backoff = type(self).backoff if backoff is None else backoff
        _check_number(f"node {self.name!r}: backoff", self.backoff, 0, inclusive=False)
        self.timeout = type(self).timeout if timeout is None else timeout
        if self.timeout is not None:
            _check_number(f"node {self.name!r}: timeout", self.timeout, 0, inclusive=False)
        self.successors: dict[str, Node] = {}

    # --- identity and wiring ---------------------------------------------------------------------------

    @property
    def node_id(self) -> str:
        """The node's id: the ``node_id`` given, else the one assigned by a flow, else its name."""
        return self._node_id if self._node_id is not None else self.name

    def connect(self, successor: _N, action: str = DEFAULT_ACTION) -> _N:
        """Run ``successor`` after this node when ``post`` returns ``action``; returns ``successor``.

        Connecting the same action to a different node raises :class:`FlowDefinitionError`; to rewire,
        ``del node.successors[action]`` first.
        """
        _require_node(successor, f"cannot connect node {self.name!r} to a non-node")
        _require_action(action, self)
        current = self.successors.get(action)
        if current is not None and current is not successor:
            raise FlowDefinitionError(
                f"node {self.name!r} already goes to {current.name!r} on action {action!r}; use another "
                f"action (node - 'name' >> other) or `del node.successors[{action!r}]` to rewire"
            )
        self.successors[action] = successor
        return successor

    def __rshift__(self, other: _N) -> _N:
        return self.connect(other)

    def __rrshift__(self, other: object) -> NoReturn:
        raise TypeError(
            f"cannot connect {type(other).__name__} {other!r} to node {self.name!r}: both sides of >> must be "
            f"Node instances"
        )

    def __sub__(self, action: str) -> _ConditionalTransition:
        _require_action(action, self)
        return _ConditionalTransition(self, action)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} name={self.name!r} id={self.node_id!r} kind={self.kind!r}>"

    # --- the steps users override ----------------------------------------------------------------------

    def prep(self, shared: Shared) -> Any:
        """Read what ``exec`` needs from ``shared``; the result is passed to ``exec`` and ``post``."""
        return None

    def exec(self, prep_result: Any) -> Any:
        """Do the work. Must not touch ``shared``; it is retried ``max_retries`` times in total."""
        return None

    def exec_fallback(self, prep_result: Any, exc: Exception) -> Any:
        """Return a result when every attempt failed with ``exc``. The default re-raises ``exc``."""
        raise exc

    def post(self, shared: Shared, prep_result: Any, exec_result: Any) -> str | None:
        """Write results into ``shared`` and return the next action (``None`` = ``"default"``)."""
        return None

    # --- running -----------------------------------------------------------------------------------------

    def run(self, shared: Shared) -> str:
        """Run this node alone (without its successors) on ``shared``; returns the action."""
        _require_shared(shared, self)
        _warn_if_successors(self, "Node.run", "a Flow")
        return self._run_node(shared)

    def _run_node(self, shared: Shared) -> str:
        """Hook point: run the whole node (prep → exec attempts → post) and return the action."""
        prep_result = self.prep(shared)
        self._on_prepared(prep_result)
        exec_result = self._exec_all(prep_result)
        self._on_executed(exec_result)
        return _as_action(self.post(shared, prep_result, exec_result), self)

    def _exec_all(self, prep_result: Any) -> Any:
        return self._exec_with_retries(prep_result)

    def _retry_wait(self, attempt: int) -> float | None:
        """Seconds to wait after failed ``attempt`` (1-based), or None when it was the last one."""
        if attempt >= self.max_retries:
            return None
        return float(self.wait * self.backoff ** (attempt - 1))

    def _has_fallback(self) -> bool:
        return type(self).exec_fallback is not Node.exec_fallback

    def _attempt_failed(self, attempt: int, exc: Exception) -> float | None:
        """Report failed ``attempt``; returns the wait before the next one, or None: the fallback takes over."""
        wait_s = self._retry_wait(attempt)
        self._on_attempt_failed(attempt, exc, wait_s)
        if wait_s is None and self._has_fallback():
            self._on_fallback(exc)
        return wait_s

    def _exec_once(self, prep_result: Any) -> Any:
        if self.timeout is None:
            return self.exec(prep_result)
        return _call_with_timeout(self.exec, prep_result, self.timeout, self)

    def _exec_with_retries(self, prep_result: Any) -> Any:
        attempt = 1
        while True:
            try:
                return self._exec_once(prep_result)
            except Exception as exc:  # noqa: BLE001 - any error of user code is a failed attempt
                wait_s = self._attempt_failed(attempt, exc)
                if wait_s is None:
                    return self.exec_fallback(prep_result, exc)
            if wait_s > 0:
                time.sleep(wait_s)
            attempt += 1

    def _on_prepared(self, prep_result: Any) -> None:
        """Hook point: ``prep`` returned ``prep_result``; the exec attempts come next."""

    def _on_executed(self, exec_result: Any) -> None:
        """Hook point: the exec attempts (or the fallback) produced ``exec_result``; ``post`` comes next."""

    def _on_attempt_failed(self, attempt: int, exc: Exception, wait_s: float | None) -> None:
        """Hook point: exec attempt ``attempt`` failed with ``exc``; ``wait_s`` before the next, None if last."""

    def _on_fallback(self, exc: Exception) -> None:
        """Hook point: a user-defined fallback is about to handle ``exc``, the last attempt's error."""


class BatchNode(Node):
    """A node whose ``prep`` returns an iterable of items; ``exec`` runs once per item (retried per item).

    ``post`` receives the list of per-item results, in item order.
    """

    def _exec_all(self, prep_result: Any) -> Any:
        return [self._exec_with_retries(item) for item in _items(self, prep_result)]


class AsyncNode(Node):
    """A node with async steps: ``prep_async`` → ``exec_async`` (retried) → ``post_async``.

    Each ``*_async`` method defaults to calling its sync counterpart, so a subclass may mix them. Runs only in
    an :class:`AsyncFlow` or via ``await node.run_async(shared)``. ``timeout`` cancels ``exec_async``.
    """

    async def prep_async(self, shared: Shared) -> Any:
        """Async ``prep``; defaults to ``self.prep(shared)``."""
        return self.prep(shared)

    async def exec_async(self, prep_result: Any) -> Any:
        """Async ``exec``; defaults to ``self.exec(prep_result)`` (which then blocks the event loop)."""
        return self.exec(prep_result)

    async def exec_fallback_async(self, prep_result: Any, exc: Exception) -> Any:
        """Async ``exec_fallback``; defaults to ``self.exec_fallback(prep_result, exc)`` (re-raises)."""
        return self.exec_fallback(prep_result, exc)

    async def post_async(self, shared: Shared, prep_result: Any, exec_result: Any) -> str | None:
        """Async ``post``; defaults to ``self.post(shared, prep_result, exec_result)``."""
        return self.post(shared, prep_result, exec_result)

    def run(self, shared: Shared) -> str:
        """Not available: async nodes run with ``await node.run_async(shared)``."""
        raise FlowDefinitionError(
            f"{self.name!r} is async ({type(self).__name__}); use `await node.run_async(shared)` "
            f"(or asyncio.run(node.run_async(shared)))"
        )

    async def run_async(self, shared: Shared) -> str:
        """Run this node alone (without its successors) on ``shared``; returns the action."""
        _require_shared(shared, self)
        _warn_if_successors(self, "run_async", "an AsyncFlow")
        return await self._run_node_async(shared)

    def _run_node(self, shared: Shared) -> str:
        raise FlowDefinitionError(
            f"{self.name!r} is async ({type(self).__name__}) and cannot run in a sync Flow; use AsyncFlow"
        )

    async def _run_node_async(self, shared: Shared) -> str:
        """Hook point: run the whole async node (prep → exec attempts → post) and return the action."""
        prep_result = await self.prep_async(shared)
        self._on_prepared(prep_result)
        exec_result = await self._exec_all_async(prep_result)
        self._on_executed(exec_result)
        return _as_action(await self.post_async(shared, prep_result, exec_result), self)

    async def _exec_all_async(self, prep_result: Any) -> Any:
        return await self._exec_with_retries_async(prep_result)

    def _has_fallback(self) -> bool:
        return super()._has_fallback() or type(self).exec_fallback_async is not AsyncNode.exec_fallback_async

    async def _exec_with_retries_async(self, prep_result: Any) -> Any:
        attempt = 1
        while True:
            try:
                return await _await_with_timeout(self.exec_async(prep_result), self.timeout, self)
            except Exception as exc:  # noqa: BLE001 - any error of user code is a failed attempt
                wait_s = self._attempt_failed(attempt, exc)
                if wait_s is None:
                    return await self.exec_fallback_async(prep_result, exc)
            if wait_s > 0:
                await asyncio.sleep(wait_s)
            attempt += 1


class AsyncBatchNode(AsyncNode, BatchNode):
    """An async batch node: ``exec_async`` runs once per item, one item after another."""

    async def _exec_all_async(self, prep_result: Any) -> Any:
        return [await self._exec_with_retries_async(item) for item in _items(self, prep_result)]


class AsyncParallelBatchNode(AsyncBatchNode):
    """An async batch node whose items run concurrently (at most ``max_concurrency`` at a time, if set).

    Results keep item order. If an item fails after its retries and fallback, the other items are cancelled
    and awaited, then the error propagates.
    """

    max_concurrency: int | None = None

    def __init__(self, *, max_concurrency: int | None = None, **options: Unpack[NodeOptions]) -> None:
        super().__init__(**options)
        limit = type(self).max_concurrency if max_concurrency is None else max_concurrency
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise ValueError(f"node {self.name!r}: max_concurrency must be an int >= 1 or None, got {limit!r}")
        self.max_concurrency = limit

    async def _exec_all_async(self, prep_result: Any) -> Any:
        items = _items(self, prep_result)
        if self.max_concurrency is None:
            return await _gather_or_cancel([self._exec_with_retries_async(item) for item in items])
        semaphore = asyncio.Semaphore(self.max_concurrency)

        async def limited(item: Any) -> Any:
            async with semaphore:
                return await self._exec_with_retries_async(item)

        return await _gather_or_cancel([limited(item) for item in items])


class Parallel(AsyncNode):
    """Fan-out/fan-in: runs its async branches concurrently on the same shared dict, then continues.

    ``Parallel(a, b, c) >> join`` runs ``a``, ``b`` and ``c`` at the same time and ``join`` once all of them
    finished. Each branch is an :class:`AsyncNode` (an :class:`AsyncFlow` for a chain of steps) without
    successors of its own. If a branch fails, the others are cancelled and awaited before the error
    propagates. ``exec_async`` returns the branches' actions in order; ``post_async`` returns ``None``
    (override it to route on them). ``timeout`` bounds the whole fan-out. Usable only in an AsyncFlow.
    """

    def __init__(
        self,
        *branches: Node,
        name: str | None = None,
        node_id: str | None = None,
        kind: str | None = None,
        timeout: float | None = None,
    ) -> None:
        super().__init__(name=name, node_id=node_id, kind=kind, timeout=timeout)
        if not branches:
            raise FlowDefinitionError(f"Parallel {self.name!r} needs at least one branch: Parallel(a, b, ...)")
        for branch in branches:
            _require_node(branch, f"Parallel {self.name!r} branch")
            if not isinstance(branch, AsyncNode):
                raise FlowDefinitionError(
                    f"Parallel {self.name!r}: branch {branch.name!r} is a sync {type(branch).__name__}; "
                    f"branches must be async (AsyncNode, or AsyncFlow for several steps) so they can run "
                    f"concurrently and be cancelled"
                )
        if len({id(branch) for branch in branches}) != len(branches):
            raise FlowDefinitionError(f"Parallel {self.name!r}: the same node is given twice as a branch")
        self.branches: tuple[AsyncNode, ...] = tuple(b for b in branches if isinstance(b, AsyncNode))

    async def prep_async(self, shared: Shared) -> Any:
        """Returns ``shared``, which ``exec_async`` hands to every branch."""
        return shared

    async def exec_async(self, prep_result: Any) -> Any:
        """Runs every branch concurrently on ``prep_result`` (the shared dict); returns their actions."""
        for branch in self.branches:
            _check_branch(self, branch)
        return await _gather_or_cancel([branch._run_node_async(prep_result) for branch in self.branches])

    async def post_async(self, shared: Shared, prep_result: Any, exec_result: Any) -> str | None:
        """Returns ``None`` (the default action) once every branch finished."""
        return None


def _check_branch(parallel: Parallel, branch: Node) -> None:
    if branch.successors:
        raise FlowDefinitionError(
            f"Parallel {parallel.name!r}: branch {branch.name!r} has successors, which a branch does not "
            f"follow; put the chain in an AsyncFlow and use that flow as the branch"
        )


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
                _check_branch(node, branch)
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
            _require_node(start, f"Flow {self.name!r} start")
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
        _require_node(start, f"Flow {self.name!r} start")
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
        _require_shared(shared, self)
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
        return _as_action(self.post(shared, prep_result, action), self)

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
        _require_shared(shared, self)
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
        return _as_action(await self.post_async(shared, prep_result, action), self)
