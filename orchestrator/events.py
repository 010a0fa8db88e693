"""Structured record of every controller action: what, why, on which replica, how long,
and how it ended (contract 6)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class ActionKind(str, Enum):
    SCALE = "scale"
    REPLACE = "replace"
    ADOPT = "adopt"
    MIGRATE = "migrate"
    CLOCK = "clock"
    DROP = "drop"
    RESTORE = "restore"


@dataclass(frozen=True)
class ControllerEvent:
    kind: ActionKind
    reason: str
    replica: str
    pool: str
    outcome: str
    duration_s: float
    at_s: float
