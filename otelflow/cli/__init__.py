"""The ``otelflow`` command line: serve | demo | run | tail | export (``main`` is the console script)."""

from __future__ import annotations

from otelflow.cli.main import main

__all__ = ["main"]
