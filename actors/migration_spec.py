"""How a live migration runs on the source replica."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MigrationSettingsSpec:
    max_stages: int = 3
    # Pre-copy stages repeat until at most this many full blocks are left uncopied; at the
    # stop the destination recomputes those instead of receiving them, because staging
    # them would cost the stopped request an engine step on the source (Llumnix copies up
    # to 16 blocks in its last stage; its copies need no engine step).
    last_stage_blocks: int = 2
    # A stage, or the destination's liveness check, slower than this fails the migration.
    stage_timeout_s: float = 30.0
