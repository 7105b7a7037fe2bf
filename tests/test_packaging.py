"""What the distribution installs: `otelflow` and `otelflow.viewer`, never a bare top-level `viewer`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent


def test_every_package_folder_is_listed() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    dirs = config["package-dir"]
    assert dirs == {"otelflow": "otelflow", "otelflow.viewer": "viewer"}
    found = set()
    for name, folder in dirs.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder)
            found.add(".".join([name, *relative.parts]))
    assert sorted(config["packages"]) == sorted(found)


def test_the_viewer_is_imported_as_otelflow_viewer_only(tmp_path: Path) -> None:
    script = (
        "import importlib.util, otelflow.viewer\n"
        "from importlib.resources import files\n"
        "assert importlib.util.find_spec('viewer') is None, 'a bare viewer package is importable'\n"
        "assert (files('otelflow.viewer') / 'templates' / 'run.html').is_file()\n"
        "assert (files('otelflow.viewer') / 'static' / 'common.js').is_file()\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
