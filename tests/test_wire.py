"""The stream contract is spelled once: the command line takes event types, statuses, kinds and lifecycle events
from otelflow/wire.py and otelflow/attributes.py, never from string literals of its own."""

from __future__ import annotations

import ast
from pathlib import Path

from otelflow import attributes as A
from otelflow import wire

CLI = Path(__file__).resolve().parent.parent / "otelflow" / "cli"

# Words of the contract that are also the names of JSON fields: an envelope's ``span`` object (like the kind
# ``span``), a span's ``error`` object and the viewer's ``{"error": ...}`` answers (like the status ``error``).
# As field names, and only there (a subscript, ``.get()``, a dict display key), they are not contract values.
FIELD_NAMES = frozenset({"span", "error", "llm"})  # envelope fields spelled like a contract value (a kind)
FIELD_METHODS = frozenset({"get", "pop", "setdefault"})


def contract() -> dict[str, str]:
    """Every value of the contract, with the constant that names it."""
    named = {
        **{value: f"wire.{name}" for name, value in vars(wire).items() if value in wire.EVENT_TYPES},
        **{value: f"attributes.{name}" for name, value in vars(A).items() if name.startswith(("STATUS_", "KIND_"))},
    }
    for name, value in vars(A).items():
        if not name.isupper() or not isinstance(value, str):
            continue
        # the lifecycle events and their attribute keys (otelflow.progress, otelflow.progress.percent...)
        if value in A.LIFECYCLE_EVENTS or value.startswith(tuple(f"{event}." for event in A.LIFECYCLE_EVENTS)):
            named[value] = f"attributes.{name}"
    return named


def field_positions(tree: ast.AST) -> set[int]:
    """The ids of the string constants that name a JSON field rather than state a value."""
    ids: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript):
            ids.add(id(node.slice))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args:
            if node.func.attr in FIELD_METHODS:
                ids.add(id(node.args[0]))
        elif isinstance(node, ast.Dict):
            ids.update(id(key) for key in node.keys if key is not None)
    return ids


def literals(tree: ast.AST) -> list[ast.Constant]:
    """String constants, leaving out the text fragments of f-strings (message text, not values)."""
    fragments = {id(part) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr) for part in node.values}
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in fragments
    ]


def test_the_contract_covers_event_types_statuses_kinds_and_lifecycle_events() -> None:
    values = contract()
    for value in (*wire.EVENT_TYPES, *A.STATUSES, *A.KINDS, *A.LIFECYCLE_EVENTS, A.PROGRESS_PERCENT, A.LOG_LEVEL):
        assert value in values, value
    assert set(values) >= FIELD_NAMES, "a field name that is no contract value needs no exception"


def test_the_command_line_spells_no_value_of_the_stream_contract() -> None:
    values = contract()
    modules = sorted(CLI.glob("*.py"))
    assert {path.name for path in modules} >= {"tail.py", "tail_view.py", "stream.py", "export.py", "main.py"}
    spelled: list[str] = []
    field_names_used: set[str] = set()
    for path in modules:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        fields = field_positions(tree)
        for node in literals(tree):
            if node.value not in values:
                continue
            if node.value in FIELD_NAMES and id(node) in fields:
                field_names_used.add(node.value)
                continue
            spelled.append(f"{path.name}:{node.lineno} {node.value!r}: use {values[node.value]}")
    assert spelled == []
    assert field_names_used == FIELD_NAMES, "an exception no module needs any more: drop it"
