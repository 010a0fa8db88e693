"""The source side of a live migration (Llumnix-style), run by the replica that holds the
request.

Pre-copy: while the request keeps decoding here, each stage exports the request's full
blocks (its prompt plus the tokens so far; they sit in this engine's prefix cache, so the
export computes only the partial tail) and the destination imports them into its own
prefix cache (`ReplicaActor.warm`). The first stages copy what is there; the last one
waits until the request has just filled a block, so that at the stop only the few tokens
decoded since that block boundary are left uncopied (the destination recomputes them: a
partial block cannot be copied without an engine step). Stages end early once at most
`last_stage_blocks` full blocks are uncopied and the partial block is short. Then the
request is stopped right after its next token (an engine abort: the step the engine has
just begun is dropped, so the client loses no time it has already waited) and the
subscriber gets a `MigrationNotice`: continue on the destination with prompt + streamed
tokens. If the stages left at most `last_stage_blocks` full blocks
uncopied, the destination recomputes those and the partial block from its prefix cache
(no export: it would cost the source an engine step); otherwise a last export covers the
rest (the destination loads only the blocks its prefix cache lacks).
Stop-and-copy skips the stages; recompute sends no KV.

Failure rules: a destination that fails before the stop leaves the request running here
untouched; blocks it imported are ordinary prefix-cache blocks (evicted first when memory
is needed) and staged exports expire with the staged-KV TTL. A request that finishes (or
is aborted) first ends the migration cleanly.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from actors.kv.medium import KVHandle
from actors.messages import TokenRequest
from actors.migration_spec import MigrationSettingsSpec
from actors.outbox import Outbox
from policies.snapshot import RequestId


@dataclass
class RunningRequest:
    """A request the replica streams to a channel subscriber, as far as it has gone."""

    request: TokenRequest
    outbox: Outbox
    produced: list[int] = field(default_factory=list)
    # Set on every new token; a pre-copy stage that waits for a block boundary clears it.
    progressed: asyncio.Event = field(default_factory=asyncio.Event)
    # Set when the request stops here and continues on another replica; what the engine
    # produces after that is dropped.
    handover: MigrationTarget | None = None
    # "migrated" once the notice is out, "request_finished" if the request ended first.
    ended: asyncio.Future | None = None

    @property
    def token_ids(self) -> list[int]:
        return list(self.request.prompt_token_ids) + self.produced


@dataclass(frozen=True)
class MigrationTarget:
    destination: str
    mode: str
    # Full blocks already on the destination, and how many more it may recompute itself.
    precopied_blocks: int = 0
    recompute_blocks: int = 0

    def needs_final_export(self, num_tokens: int, block_size: int) -> bool:
        uncopied = blocks_of(num_tokens, block_size) - self.precopied_blocks
        return not (self.precopied_blocks and uncopied <= self.recompute_blocks)


@dataclass(frozen=True)
class MigrationReport:
    request_id: RequestId
    source: str
    destination: str
    mode: str
    # migrated | request_finished | destination_failed | no_request
    outcome: str
    num_stages: int = 0
    blocks_per_stage: tuple[int, ...] = ()
    bytes_copied: int = 0
    duration_s: float = 0.0
    error: str = ""


def blocks_of(num_tokens: int, block_size: int) -> int:
    return num_tokens // block_size


async def pre_copy(
    running: RunningRequest, block_size: int, settings: MigrationSettingsSpec,
    export, warm_destination,
) -> tuple[list[int], int]:
    """Copies the request's full blocks in stages while it keeps running; returns the
    blocks copied per stage and the bytes moved (sum(per_stage) blocks are on the
    destination). `export(tokens) -> KVHandle | None` stages
    KV on this replica; `warm_destination(handle, tokens)` imports it on the destination."""
    copied, per_stage, num_bytes = 0, [], 0
    num_stages = settings.max_stages - 1
    for stage in range(num_stages):
        if running.ended.done() or not running.produced:
            break
        if _short_tail(running, block_size, copied, settings):
            break
        if stage == num_stages - 1 and not await _reach_block_boundary(running, block_size, settings):
            break
        tokens = running.token_ids
        handle: KVHandle | None = await export(tokens)
        if handle is None:
            break
        await asyncio.wait_for(warm_destination(handle, tokens), settings.stage_timeout_s)
        per_stage.append(handle.num_blocks - copied)
        num_bytes += handle.num_bytes * (handle.num_blocks - copied) // max(handle.num_blocks, 1)
        copied = handle.num_blocks
    return per_stage, num_bytes


def _short_tail(running: RunningRequest, block_size: int, copied: int, settings: MigrationSettingsSpec) -> bool:
    """True when what is left for the destination to recompute is already small."""
    num_tokens = len(running.token_ids)
    uncopied_blocks = blocks_of(num_tokens, block_size) - copied
    return copied > 0 and uncopied_blocks <= settings.last_stage_blocks and (
        num_tokens % block_size <= settings.boundary_slack_tokens)


async def _reach_block_boundary(running: RunningRequest, block_size: int, settings: MigrationSettingsSpec) -> bool:
    """Waits until the request has just completed a block (at most `boundary_slack_tokens`
    into the next one). False when the request ended first."""
    while len(running.token_ids) % block_size > settings.boundary_slack_tokens:
        if not await next_token(running, settings.stage_timeout_s):
            return False
    return True


async def next_token(running: RunningRequest, timeout_s: float) -> bool:
    """Waits for the request's next token. False when it ended, or nothing came within
    `timeout_s`."""
    running.progressed.clear()
    waiter = asyncio.ensure_future(running.progressed.wait())
    await asyncio.wait({waiter, running.ended}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    return not running.ended.done() and running.progressed.is_set()
