"""The pages' ES modules take every contract value from ``/static/wire.js``: no file under ``viewer/static``
spells an event type, status, kind, lifecycle event or attribute key itself, and every name they import from
``./wire.js`` is one that :func:`otelflow.wire.wire_js` exports."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from otelflow import attributes as A
from otelflow.viewer import pages
from otelflow.wire import _js_names, wire_js

STATIC = Path(pages.__file__).resolve().parent / "static"
MODULES = sorted(STATIC.glob("*.js"))

# A literal that names an HTML element is not the span kind of the same spelling: h("span", ...) builds DOM.
HTML_TAGS = frozenset({"span"})
_TAG_ARGUMENT = re.compile(r"(?:\bh|\bsvg|\.createElement|\btag\s*=)\s*\(?\s*$")

_STRING = re.compile(r""""(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*'""", re.S)
_REGEX = re.compile(r"/(?:[^/\\\[\n]|\\.|\[(?:[^\]\\\n]|\\.)*\])+/[a-z]*")
_KEYWORDS_BEFORE_REGEX = ("return", "typeof", "case", "of", "in", "yield", "await", "void", "delete")


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def string_literals(src: str) -> list[tuple[int, int, str]]:
    """``(line, offset, value)`` of every string literal of a JavaScript source, and of every text part of its
    template literals (substitutions are scanned as code); comments and regular expressions are skipped."""
    out: list[tuple[int, int, str]] = []
    braces: list[bool] = []  # per open "{": whether it is a template's "${"
    prev = ""  # the last code character, to tell a regular expression from a division
    i, n = 0, len(src)

    def line(at: int) -> int:
        return src.count("\n", 0, at) + 1

    while i < n:
        c = src[i]
        if src.startswith("//", i):
            end = src.find("\n", i)
            i = n if end < 0 else end
        elif src.startswith("/*", i):
            i = src.index("*/", i + 2) + 2
        elif c in "\"'":
            match = _STRING.match(src, i)
            assert match, f"unterminated string at line {line(i)}"
            out.append((line(i), i, _unescape(match.group()[1:-1])))
            i, prev = match.end(), '"'
        elif c == "`" or (c == "}" and braces and braces[-1]):
            if c == "}":
                braces.pop()
            j, start = i + 1, i + 1
            while src[j] != "`" and not src.startswith("${", j):
                j += 2 if src[j] == "\\" else 1
            out.append((line(i), start, _unescape(src[start:j])))
            if src[j] == "`":
                i, prev = j + 1, '"'
            else:
                braces.append(True)
                i, prev = j + 2, "("
        elif c == "/":
            word = re.search(r"[\w$]+$", src[:i].rstrip())
            after_word = bool(word) and word.group() in _KEYWORDS_BEFORE_REGEX
            if after_word or not (prev.isalnum() or prev in "_$)]\"'"):
                match = _REGEX.match(src, i)
                assert match, f"unreadable regular expression at line {line(i)}"
                i, prev = match.end(), '"'
            else:
                i, prev = i + 1, c
        else:
            if c == "{":
                braces.append(False)
            elif c == "}" and braces:
                braces.pop()
            if not c.isspace():
                prev = c
            i += 1
    return out


def contract_values() -> dict[str, list[str]]:
    """Every string ``wire.js`` exports (tuples element by element) -> the names it is exported under."""
    values: dict[str, list[str]] = {}
    for name, value in _js_names().items():
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str):
                values.setdefault(item, []).append(name)
    return values


def test_the_literal_scanner_reads_strings_templates_comments_and_regexes() -> None:
    src = r"""
    // a comment with "quotes" and an apostrophe: don't
    const a = "ok"; const b = 'it\'s';  /* "not a string" */
    const re = /"[/]"/g.test(x) ? 1 / 2 : 3 / 4; const url = "http://a/b";
    const t = `kind-${span.kind === "agent" ? `x${"y"}` : "z"}-end`;
    if (x) return /'/.test(y);
    """
    values = [value for _, _, value in string_literals(src)]
    assert values == ["ok", "it's", "http://a/b", "kind-", "agent", "x", "y", "", "z", "-end"]


def test_every_static_module_is_scanned() -> None:
    names = {p.name for p in MODULES}
    assert {"common.js", "run.js", "graph.js", "timeline.js", "inspector.js", "runs.js", "stats.js"} <= names
    assert "wire.js" not in names  # served from otelflow.wire, never a file


@pytest.mark.parametrize("module", MODULES, ids=lambda p: p.name)
def test_no_module_spells_a_contract_value(module: Path) -> None:
    values = contract_values()
    src = module.read_text(encoding="utf-8")
    found = []
    for line, offset, value in string_literals(src):
        if value in HTML_TAGS and _TAG_ARGUMENT.search(src[max(0, offset - 40) : offset]):
            continue
        if value in values:
            found.append(f"{module.name}:{line}: {value!r} is {' / '.join(values[value])}: import it from ./wire.js")
    assert found == []


IMPORT_WIRE = re.compile(r"import\s*\{([^}]*)\}\s*from\s*\"\./wire\.js\"")


@pytest.mark.parametrize("module", MODULES, ids=lambda p: p.name)
def test_names_imported_from_wire_js_exist(module: Path) -> None:
    exported = set(re.findall(r"^export const (\w+) = ", wire_js(), re.M))
    for group in IMPORT_WIRE.findall(module.read_text(encoding="utf-8")):
        names = {name.split(" as ")[0].strip() for name in group.split(",") if name.strip()}
        assert names <= exported, f"{module.name} imports {sorted(names - exported)}, which wire.js does not export"


def test_log_levels_are_listed_least_severe_first() -> None:
    """run.js ranks a log line by its level's place in LOG_LEVELS."""
    ranks = [logging.getLevelName(level.upper()) for level in A.LOG_LEVELS]
    assert all(isinstance(rank, int) for rank in ranks), ranks
    assert ranks == sorted(ranks)
