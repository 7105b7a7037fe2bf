"""Nodes: one unit of work (prep → exec with retries → post), its batch, async and parallel variants."""

from __future__ import annotations

import asyncio
import time
import warnings
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, ClassVar, Final, NoReturn, TypedDict, TypeVar

from otelflow.engine.errors import EngineWarning, FlowDefinitionError
from otelflow.engine.tasks import await_with_timeout, call_with_timeout, gather_or_cancel

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = [
    "DEFAULT_ACTION",
    "AsyncBatchNode",
    "AsyncNode",
    "AsyncParallelBatchNode",
    "BatchNode",
    "Node",
    "NodeOptions",
    "Parallel",
    "Shared",
    "as_action",
    "check_branch",
    "require_node",
    "require_shared",
]

DEFAULT_ACTION: Final = "default"
"""The action of ``a >> b`` and of a ``post`` that returns ``None``."""

_NODE_KINDS: Final = frozenset({"node", "agent", "tool"})

Shared = dict[str, Any]
_N = TypeVar("_N", bound="Node")


def require_node(value: object, context: str) -> None:
    if not isinstance(value, Node):
        raise TypeError(f"{context}: expected a Node, got {type(value).__name__} {value!r}")


def _require_action(value: object, node: Node) -> None:
    if not isinstance(value, str) or not value:
        raise TypeError(f"node {node.name!r}: an action must be a non-empty str, got {value!r}")


def require_shared(shared: object, who: Node) -> None:
    if not isinstance(shared, dict):
        raise TypeError(f"{who.name!r}: shared state must be a dict, got {type(shared).__name__}")


def _warn_if_successors(node: Node, method: str, container: str) -> None:
    if node.successors:
        warnings.warn(
            f"node {node.name!r} has successors, which {method} does not follow; put the node in {container}",
            EngineWarning,
            stacklevel=3,
        )


def as_action(value: object, node: Node) -> str:
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
        require_node(successor, f"cannot connect node {self.name!r} to a non-node")
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
        require_shared(shared, self)
        _warn_if_successors(self, "Node.run", "a Flow")
        return self._run_node(shared)

    def _run_node(self, shared: Shared) -> str:
        """Hook point: run the whole node (prep → exec attempts → post) and return the action."""
        prep_result = self.prep(shared)
        self._on_prepared(prep_result)
        exec_result = self._exec_all(prep_result)
        self._on_executed(exec_result)
        return as_action(self.post(shared, prep_result, exec_result), self)

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
        return call_with_timeout(self.exec, prep_result, self.timeout, self.name)

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
        require_shared(shared, self)
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
        return as_action(await self.post_async(shared, prep_result, exec_result), self)

    async def _exec_all_async(self, prep_result: Any) -> Any:
        return await self._exec_with_retries_async(prep_result)

    def _has_fallback(self) -> bool:
        return super()._has_fallback() or type(self).exec_fallback_async is not AsyncNode.exec_fallback_async

    async def _exec_with_retries_async(self, prep_result: Any) -> Any:
        attempt = 1
        while True:
            try:
                return await await_with_timeout(self.exec_async(prep_result), self.timeout, self.name)
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
            return await gather_or_cancel([self._exec_with_retries_async(item) for item in items])
        semaphore = asyncio.Semaphore(self.max_concurrency)

        async def limited(item: Any) -> Any:
            async with semaphore:
                return await self._exec_with_retries_async(item)

        return await gather_or_cancel([limited(item) for item in items])


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
            require_node(branch, f"Parallel {self.name!r} branch")
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
            check_branch(self, branch)
        return await gather_or_cancel([branch._run_node_async(prep_result) for branch in self.branches])

    async def post_async(self, shared: Shared, prep_result: Any, exec_result: Any) -> str | None:
        """Returns ``None`` (the default action) once every branch finished."""
        return None


def check_branch(parallel: Parallel, branch: Node) -> None:
    if branch.successors:
        raise FlowDefinitionError(
            f"Parallel {parallel.name!r}: branch {branch.name!r} has successors, which a branch does not "
            f"follow; put the chain in an AsyncFlow and use that flow as the branch"
        )
