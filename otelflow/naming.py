"""What a span is called and what kind of step it is, by otelflow's conventions, the GenAI semantic conventions
and OpenInference's."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from otelflow import attributes as A

__all__ = ["NAME_PREFIXES", "bare_name", "kind_of", "shown_name"]

# "<operation> <name>": the span names otelflow gives workflows, agents and tools (GenAI conventions)
NAME_PREFIXES: Final = (f"{A.OP_INVOKE_WORKFLOW} ", f"{A.OP_INVOKE_AGENT} ", f"{A.OP_EXECUTE_TOOL} ")


def bare_name(name: str) -> str:
    """A span name without its GenAI operation: ``search`` for ``execute_tool search``."""
    for prefix in NAME_PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix) :]
    return name


def shown_name(name: str, attributes: Mapping[str, Any]) -> str:
    """The name the pages show for a span (``displayName`` in graph.js): ``gen_ai.agent.name`` or
    ``gen_ai.tool.name``, else the span name without its operation."""
    named = attributes.get(A.GEN_AI_AGENT_NAME) or attributes.get(A.GEN_AI_TOOL_NAME)
    return str(named) if named else bare_name(name)


_GENAI_KINDS: Final = {
    A.OP_INVOKE_WORKFLOW: A.KIND_WORKFLOW,
    A.OP_INVOKE_AGENT: A.KIND_AGENT,
    "create_agent": A.KIND_AGENT,
    A.OP_EXECUTE_TOOL: A.KIND_TOOL,
    **{op: A.KIND_LLM for op in A.LLM_OPERATIONS},  # chat, text_completion, generate_content, embeddings
}
_OPENINFERENCE_KINDS: Final = {
    A.OI_AGENT: A.KIND_AGENT,
    A.OI_TOOL: A.KIND_TOOL,
    A.OI_CHAIN: A.KIND_NODE,
    A.OI_LLM: A.KIND_LLM,
    A.OI_EMBEDDING: A.KIND_LLM,
}


def kind_of(attributes: Mapping[str, Any]) -> str:
    """The otelflow kind of a span: ``otelflow.kind``, else its GenAI operation, else its OpenInference kind.
    Model calls (GenAI ``chat``, ``text_completion``, ``generate_content``, ``embeddings``; OpenInference ``LLM``,
    ``EMBEDDING``) are ``llm``."""
    kind = attributes.get(A.KIND)
    if isinstance(kind, str) and kind in A.KINDS:
        return kind
    op = attributes.get(A.GEN_AI_OPERATION_NAME)
    if isinstance(op, str) and op in _GENAI_KINDS:
        return _GENAI_KINDS[op]
    oi = attributes.get(A.OPENINFERENCE_SPAN_KIND)
    if isinstance(oi, str) and oi.upper() in _OPENINFERENCE_KINDS:
        return _OPENINFERENCE_KINDS[oi.upper()]
    return A.KIND_SPAN
