"""The engine's errors and warnings; the exceptions of user code propagate unchanged instead."""

from __future__ import annotations

__all__ = ["EngineError", "EngineWarning", "FlowDefinitionError", "MaxStepsExceeded", "NodeTimeoutError"]


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
