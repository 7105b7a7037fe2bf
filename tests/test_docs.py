"""The README tells the truth: every setting is documented, the test command is the one CI runs."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import otelflow
from otelflow import config

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_every_otelflow_environment_variable_is_documented() -> None:
    names = [v for k, v in vars(config).items() if k.startswith("ENV_") and isinstance(v, str)]
    assert names, "config.py defines its environment variables as ENV_* constants"
    missing = [n for n in names if f"`{n}" not in README]
    assert missing == []


def test_every_configure_argument_is_documented() -> None:
    params = [p for p in config.configure.__code__.co_varnames[: config.configure.__code__.co_kwonlyargcount + 1]]
    missing = [p for p in params if p != "extra_processors" and f"`{p}`" not in README]
    assert missing == []


def test_ci_runs_the_readme_test_command() -> None:
    awk = (
        "/<!-- test-command -->/{found=1; next} found && /^```/{if (started) exit; started=1; next} "
        "found && started {print; exit}"
    )
    cmd = subprocess.run(["awk", awk, "README.md"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert cmd.strip() == 'pip install -e ".[dev]" && python -m pytest'
    assert awk in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


def test_public_names_are_documented() -> None:
    undocumented = [n for n in otelflow.__all__ if n != "__version__" and not getattr(otelflow, n).__doc__]
    assert undocumented == []


def test_readme_lists_every_lifecycle_event() -> None:
    from otelflow import attributes as A

    for name in A.LIFECYCLE_EVENTS:
        assert re.search(rf"`{re.escape(name)}`", README), name


def test_every_environment_variable_the_code_reads_is_documented() -> None:
    sources = [p for d in ("otelflow", "viewer") for p in (ROOT / d).rglob("*.py")]
    names = {m for p in sources for m in re.findall(r"OTELFLOW_[A-Z_]+", p.read_text(encoding="utf-8"))}
    assert len(names) >= 8
    missing = sorted(n for n in names if f"`{n}" not in README and f"{n}=" not in README)
    assert missing == []
