"""The part of a replica that streams requests to front-door channels, and moves them
to another replica while they run (live migration; see actors/migration_source.py).

A mixin of `ReplicaActor`: it uses the replica's engine calls (`generate`, `prefill`,
`abort`, `replica_id`, `spec`, `_publish`, `_require_engine`, `_migration_metrics`);
`_init_streams` sets up its state.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import ray
from ray.actor import ActorHandle
from vllm import SamplingParams
from vllm.v1.engine.exceptions import EngineDeadError, EngineGenerateError

from actors.engine_spec import TransferFailurePolicy
from actors.kv.layout import StagedKVError, merge_staged_kv, release_staged_kv, stage_part_path, staged_kv_path
from actors.kv.medium import KVHandle, MediumKind
from actors.kv.specs import STAGED_PARAM
from actors.messages import TokenRequest
from actors.migration_source import MigrationReport, MigrationTarget, RunningRequest, next_token, pre_copy
from actors.migration_spec import MigrationSettingsSpec
from actors.outbox import ChannelItem, MigrationNotice, Outbox, RequestError
from policies.handover import spread_by_tokens
from policies.migration import MigrationMode
from policies.snapshot import RequestId

# The mode of the notice that moves a request off a member of a group being dropped.
PARAMETER_DROP_HANDOVER = "parameter_drop"


logger = logging.getLogger(__name__)


class ReplicaNotStarted(Exception):
    pass


class ChannelStreams:
    def _init_streams(self) -> None:
        self._outboxes: dict[str, Outbox] = {}
        self._pumps: set[asyncio.Task] = set()
        self._running: dict[RequestId, RunningRequest] = {}
        # Set by `hand_over_all`: this replica is about to stop, and a request submitted
        # from then on (a prefill replica's hand-off still on its way) goes straight on.
        self._forward_to: list[str] = []
        self._num_forwarded = 0

    async def open_channel(self, channel_id: str) -> AsyncIterator[list[ChannelItem]]:
        """The subscriber's stream of batched deltas for the requests it `submit`s with
        `channel_id` (see actors/outbox.py). Closing it aborts the requests still running."""
        outbox = self._outboxes.setdefault(channel_id, Outbox())
        try:
            while True:
                yield await outbox.take()
        finally:
            self._outboxes.pop(channel_id, None)
            for request_id in list(outbox.request_ids):
                await self.abort(request_id)

    def submit(self, request: TokenRequest, channel_id: str) -> None:
        """Starts `request`; its deltas, or its error, go to the channel `channel_id`."""
        outbox = self._outboxes.setdefault(channel_id, Outbox())
        if self._forward_to:
            self._forward(request, outbox)
            return
        outbox.request_ids.add(request.request_id)
        pump = asyncio.create_task(self._pump(request, outbox))
        self._pumps.add(pump)
        pump.add_done_callback(self._pumps.discard)

    def _forward(self, request: TokenRequest, outbox: Outbox) -> None:
        """Sends a request that arrives after `hand_over_all` on to one of its destinations,
        with the KV it came with (a prefill replica's, which the destination loads)."""
        destination = self._forward_to[self._num_forwarded % len(self._forward_to)]
        self._num_forwarded += 1
        outbox.put(MigrationNotice(request.request_id, self.replica_id, destination, request.kv_handle,
                                   PARAMETER_DROP_HANDOVER))

    async def _pump(self, request: TokenRequest, outbox: Outbox) -> None:
        running = RunningRequest(request, outbox, ended=asyncio.get_running_loop().create_future())
        self._running[request.request_id] = running
        try:
            async for delta in self.generate(request):
                if running.handover is not None:
                    continue  # handed over: the destination computes from here
                running.produced += delta.token_ids
                running.progressed.set()
                outbox.put(delta)
                if delta.finished:
                    running.ended.set_result("request_finished")
        except Exception as exc:  # noqa: BLE001 - every error goes to the subscriber
            if running.handover is None:
                replica_failed = isinstance(exc, (EngineDeadError, EngineGenerateError, ReplicaNotStarted))
                outbox.put(RequestError(request.request_id, f"{type(exc).__name__}: {exc}", replica_failed))
        finally:
            if running.handover is None and not running.ended.done():
                running.ended.set_result("request_finished")
            self._running.pop(request.request_id, None)
            outbox.request_ids.discard(request.request_id)

    async def _stop_and_hand_over(self, running: RunningRequest, target: MigrationTarget) -> None:
        """Stops the request here and tells the subscriber where it continues. The request
        is handed over as streamed so far; the step the engine is in the middle of is
        discarded (the destination computes that token again)."""
        running.handover = target
        try:
            await self.abort(running.request.request_id)
        except Exception:  # noqa: BLE001 - the pump no longer reports errors: the notice must go out
            logger.warning("request %s: abort for migration failed; handing it over all the same",
                           running.request.request_id, exc_info=True)
        running.outbox.put(await self._hand_over(running))
        running.ended.set_result("migrated")

    async def _hand_over(self, running: RunningRequest) -> MigrationNotice:
        target = running.handover
        handle = None
        # A request that has produced nothing yet was queued (or prefilling): it moves
        # between queues, without KV.
        tokens = running.token_ids
        if (target.mode != MigrationMode.RECOMPUTE.value and running.produced
                and target.needs_final_export(len(tokens), self.spec.block_size)):
            try:
                handle = await self.export_kv(tokens)
            except Exception:  # noqa: BLE001 - the request is stopped: it moves, with or without KV
                logger.warning("request %s: final KV export failed; the destination recomputes",
                               running.request.request_id, exc_info=True)
        return MigrationNotice(running.request.request_id, self.replica_id, target.destination, handle, target.mode)

    async def hand_over_all(self, destinations: list[str], medium: MediumKind = MediumKind.DISK) -> tuple[int, int]:
        """Stops every request running here; each subscriber continues on one of
        `destinations`, which may not serve yet (a parameter drop's pipeline replica, or a
        restore's members, starting on the devices this replica is about to free), spread
        over them by tokens (policies.handover). Each request's KV is staged first, while it
        still holds its blocks, on `medium`: a file that outlives this replica (a direct
        shared-memory export reads this process's memory); a request with no token yet
        moves without KV. A request submitted from now on goes straight to a destination.
        Returns how many moved, and how many of them with their KV."""
        self._forward_to = list(destinations)
        moving = {rid: r for rid, r in self._running.items() if r.handover is None and not r.ended.done()}
        placement = spread_by_tokens([(rid, len(r.token_ids)) for rid, r in moving.items()], destinations)
        moved = await asyncio.gather(*(self._hand_over_staged(moving[rid], d, medium) for rid, d in placement.items()))
        return sum(m is not None for m in moved), sum(m is not None and m.kv_handle is not None for m in moved)

    async def _hand_over_staged(self, running: RunningRequest, destination: str,
                                medium: MediumKind) -> MigrationNotice | None:
        handle = None
        if running.produced:
            handle = await self._stage_running(running.request.request_id, destination, medium)
        if running.ended.done() or running.handover is not None:
            if handle is not None and handle.path:
                release_staged_kv(Path(handle.path))
            return None
        running.handover = MigrationTarget(destination, PARAMETER_DROP_HANDOVER)
        try:
            await self.abort(running.request.request_id)
        except Exception:  # noqa: BLE001 - the notice must go out all the same
            logger.warning("request %s: abort for hand-over failed", running.request.request_id, exc_info=True)
        notice = MigrationNotice(running.request.request_id, self.replica_id, destination, handle,
                                 PARAMETER_DROP_HANDOVER)
        running.outbox.put(notice)
        running.ended.set_result("migrated")
        return notice

    async def _stage_running(self, request_id: str, destination: str, medium: MediumKind) -> KVHandle | None:
        """The KV of a running request, staged where it is (no engine step, no new
        blocks: a member under a burst has none to spare) and published on `medium`. The
        file is named for `destination`, whose janitor removes it if it is never loaded
        (this replica is about to stop, and removes its own files when it does). A
        pipeline replica's stages each stage their own layers; the parts are merged into
        one file of every layer."""
        path = staged_kv_path(self.spec.staging_dir_for(medium), destination)
        try:
            if self.spec.pipeline_stages > 1:
                staged = await self._stage_pipeline_parts(request_id, path)
            else:
                [staged] = await self._require_engine().collective_rpc("stage_running_kv", args=(request_id, str(path)))
        except Exception:  # noqa: BLE001 - the destination recomputes instead
            logger.warning("request %s: staging its KV failed; the destination recomputes", request_id, exc_info=True)
            return None
        return self._publish(medium, {STAGED_PARAM: staged}) if staged else None

    async def _stage_pipeline_parts(self, request_id: str, path: Path, attempts: int = 3) -> dict | None:
        """A pipeline engine's stages each stage their layers of the request, merged into
        one file at `path`. A request the stages do not hold KV for (waiting, preempted, or
        just arrived) is asked for again a step later, then moves without KV."""
        for _ in range(attempts):
            staged = await self._require_engine().collective_rpc("stage_running_kv", args=(request_id, str(path)))
            if all(s is not None for s in staged):
                return await asyncio.to_thread(merge_stage_parts, path, staged)
            remove_stage_parts(path, len(staged))
            await asyncio.sleep(0.05)
        return None

    # ---- migration ----
    async def migrate_out(
        self, destination: str, destination_actor: ActorHandle, mode: str = MigrationMode.PRE_COPY.value,
        request_id: str | None = None, settings: MigrationSettingsSpec = MigrationSettingsSpec(),
    ) -> MigrationReport:
        """Moves one running request (`request_id`, or the newest) to `destination`; see
        actors/migration_source.py. Returns when the subscriber has been told, or when the
        migration ended without moving the request."""
        report = await self._migrate(destination, destination_actor, mode, request_id, settings)
        if self._migration_metrics is not None:
            self._migration_metrics.record(report)
        return report

    async def _migrate(
        self, destination: str, destination_actor: ActorHandle, mode: str, request_id: str | None,
        settings: MigrationSettingsSpec,
    ) -> MigrationReport:
        started = time.perf_counter()
        running = self._pick_running(request_id)
        if running is None:
            return MigrationReport(RequestId(request_id or ""), self.replica_id, destination, mode, "no_request")
        report = functools.partial(MigrationReport, running.request.request_id, self.replica_id, destination, mode)
        per_stage, num_bytes = [], 0
        try:
            if mode == MigrationMode.PRE_COPY.value:
                per_stage, num_bytes = await pre_copy(
                    running, self.spec.block_size, settings, self.export_kv,
                    lambda handle, tokens: destination_actor.warm.remote(handle, tokens))
            # The destination must be alive before the request stops here.
            await asyncio.wait_for(destination_actor.stats.remote(), settings.stage_timeout_s)
        except (ray.exceptions.RayError, asyncio.TimeoutError) as exc:
            outcome = "request_finished" if running.ended.done() else "destination_failed"
            return report(outcome, len(per_stage), tuple(per_stage), num_bytes, time.perf_counter() - started, error=str(exc)[:200])
        if running.produced:
            await next_token(running, settings.stop_wait_s)
        if running.ended.done():
            return report("request_finished", len(per_stage), tuple(per_stage), num_bytes, time.perf_counter() - started)
        await self._stop_and_hand_over(running, MigrationTarget(destination, mode, sum(per_stage), settings.last_stage_blocks))
        outcome = await running.ended
        return report(outcome, len(per_stage) + (outcome == "migrated"), tuple(per_stage), num_bytes, time.perf_counter() - started)

    def _pick_running(self, request_id: str | None) -> RunningRequest | None:
        candidates = [r for rid, r in self._running.items() if r.handover is None and not r.ended.done()
                      and (request_id is None or rid == request_id or rid.startswith(f"{request_id}+"))]
        return candidates[-1] if candidates else None

    def running_request_ids(self) -> list[str]:
        return list(self._running)

    async def export_kv(self, token_ids: list[int], medium: MediumKind | None = None) -> KVHandle | None:
        """Stages the KV of `token_ids`' full blocks (prefix-cache hits here; only the tail
        is computed) and publishes it. None when there is nothing worth moving, or when
        this is a pipeline replica (its engine does not export: the destination recomputes)."""
        if self.spec.pipeline_stages > 1 or len(token_ids) + 1 > self._require_engine().model_config.max_model_len:
            return None
        sampling = SamplingParams(max_tokens=1, temperature=0.0, detokenize=False)
        probe = TokenRequest(RequestId(f"export-{uuid.uuid4().hex}"), list(token_ids), sampling)
        return (await self.prefill(probe, medium)).kv_handle

    async def warm(self, handle: KVHandle, token_ids: list[int]) -> int:
        """Imports `handle` into this engine's prefix cache (a pre-copy stage); returns the
        number of blocks the handle carried."""
        sampling = SamplingParams(max_tokens=1, temperature=0.0, detokenize=False)
        request = TokenRequest(RequestId(f"warm-{uuid.uuid4().hex}"), list(token_ids), sampling, kv_handle=handle,
                               on_transfer_failure=TransferFailurePolicy.RECOMPUTE)
        async for _ in self.generate(request):
            pass
        return handle.num_blocks


def merge_stage_parts(path: Path, staged: list[dict]) -> dict:
    """One staged file at `path` of what a pipeline's stages staged of a request (one
    result per stage, each of its own layers)."""
    try:
        header = merge_staged_kv([stage_part_path(path, stage) for stage in range(len(staged))], path)
    except (StagedKVError, OSError):
        remove_stage_parts(path, len(staged))
        raise
    return {"path": str(path), "num_tokens": header.num_tokens, "num_blocks": header.num_blocks}


def remove_stage_parts(path: Path, num_stages: int) -> None:
    for stage in range(num_stages):
        stage_part_path(path, stage).unlink(missing_ok=True)
