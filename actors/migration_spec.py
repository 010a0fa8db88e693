"""How a live migration runs on the source replica (Llumnix defaults)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MigrationSettingsSpec:
    max_stages: int = 3
    last_stage_blocks: int = 16
    # A stage, or the destination's liveness check, slower than this fails the migration.
    stage_timeout_s: float = 30.0
