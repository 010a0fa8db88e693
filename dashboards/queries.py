"""Every PromQL expression of every panel, with the dashboard's variables expanded the way
Grafana would expand them (used to check each panel against a real Prometheus)."""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class PanelQuery:
    dashboard: str
    panel: str
    ref_id: str
    expr: str


def panel_queries(board: dict) -> list[PanelQuery]:
    found = []
    for panel in _panels(board.get("panels", [])):
        for target in panel.get("targets") or []:
            if target.get("expr"):
                found.append(PanelQuery(board["uid"], panel.get("title", ""), target.get("refId", ""), target["expr"]))
    return found


def _panels(panels: list[dict]):
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels") or [])


def variable_values(board: dict) -> dict[str, str]:
    """Each variable's default: its current value, or "all" (.*) for label variables."""
    values = {}
    for variable in board.get("templating", {}).get("list", []):
        current = (variable.get("current") or {}).get("value")
        values[variable["name"]] = current if isinstance(current, str) and current else ".*"
    return values


def expand(expr: str, variables: dict[str, str], rate_interval: str = "1m") -> str:
    expr = expr.replace("$__rate_interval", rate_interval)
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: variables[m.group(1) or m.group(2)], expr)
