"""Stuck work and alerts: rules read from a TOML file (:mod:`.rules`), matched against the live stream
(:mod:`.engine`), delivered to the stream, the history and webhooks (:mod:`.webhook`)."""

from __future__ import annotations

from .engine import AlertEngine
from .rules import Action, AlertConfig, AlertConfigError, Rule, load_rules, parse_rules
from .webhook import Delivery

__all__ = ["Action", "AlertConfig", "AlertConfigError", "AlertEngine", "Delivery", "Rule", "load_rules", "parse_rules"]
