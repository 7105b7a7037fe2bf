"""The price table model-call costs are estimated with: ``prices.json`` shipped beside this module (USD per 1M
tokens, with its date and a source per entry), with the entries of a user's file (``otelflow serve --prices
FILE`` or ``$OTELFLOW_PRICES``, the same shape) added or replacing them."""

from __future__ import annotations

import json
import os
from importlib.resources import files

from otelflow.genai import PriceError, Prices

__all__ = ["PriceError", "load_prices", "shipped_prices"]


def shipped_prices() -> Prices:
    """The table that comes with otelflow."""
    text = (files(__package__ or "otelflow.viewer") / "prices.json").read_text(encoding="utf-8")
    return Prices.from_json(json.loads(text), "prices.json")


def load_prices(path: str | os.PathLike[str] | None = None) -> Prices:
    """The shipped table, with ``path`` (default ``$OTELFLOW_PRICES``) over it; :class:`PriceError` (one line,
    naming the file) when that file cannot be used."""
    if path is None:
        path = os.environ.get("OTELFLOW_PRICES") or None
    table = shipped_prices()
    if path is None:
        return table
    return table.merged(Prices.load(os.fspath(path)))
