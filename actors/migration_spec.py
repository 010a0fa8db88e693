"""How a live migration runs on the source replica."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MigrationSettingsSpec:
    max_stages: int = 3
    # Pre-copy stages end once at most this many full blocks are left uncopied (and the
    # partial block is short); at the stop the destination recomputes those instead of
    # receiving them, because staging them would cost the stopped request an engine step
    # on the source (Llumnix copies up to 16 blocks in its last stage; its copies need no
    # engine step).
    last_stage_blocks: int = 0
    # The last pre-copy stage starts once the request is at most this many tokens past a
    # block boundary, so the stop leaves little to recompute.
    boundary_slack_tokens: int = 2
    # The stop waits at most this long for the request's next token, so that it lands at a
    # step boundary (a stop mid-step discards the time the client already waited for it).
    stop_wait_s: float = 1.0
    # A stage, or the destination's liveness check, slower than this fails the migration.
    stage_timeout_s: float = 30.0
