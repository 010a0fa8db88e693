"""The replica actor: one vLLM `AsyncLLM` engine with a role (prefill, decode, colocated).

It speaks tokens: prompt token ids and vLLM sampling parameters in, token-id deltas out
(a Ray streaming generator). Prefill replicas stage a request's KV and publish it on a
transfer medium; decode replicas fetch it and admit the request with it. The actor's
constructor does no work; `start()` builds the engine.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import ray
from vllm import SamplingParams
from vllm.outputs import RequestOutput
from vllm.sampling_params import RequestOutputKind
from vllm.v1.engine.async_llm import AsyncLLM

from actors.engine_load import EngineLoad
from actors.engine_metrics import SeriesIdentity, engine_stat_logger
from actors.engine_spec import EngineSpec, TransferFailurePolicy
from actors.kv.layout import sweep_staged_kv
from actors.kv.medium import KVHandle, MediumKind, StagedExport, TransferError, TransferMedium
from actors.kv.registry import MEDIUMS, make_medium
from actors.kv.specs import EXPORT_PARAM, IMPORT_PARAM, STAGED_PARAM
from actors.migration_metrics import MigrationMetrics
from actors.replica_device import ReplicaDevice
from actors.replica_streams import ChannelStreams, ReplicaNotStarted
from actors.transfer_metrics import TransferMetrics
from actors.weights_gate import GATE_ENV, GATE_TIMEOUT_ENV, StartBehindGate, WeightsGate
from actors.messages import PrefillResult, ReplicaInfo, RequestTimings, TokenDelta, TokenRequest, TransferRecord
from policies.snapshot import Health, ReplicaId, ReplicaSnapshot, Role


# How long a stopping engine's processes get to exit before they are killed. vLLM waits 5 s
# by default, and its engine core does not exit on SIGTERM in that time, so every stop took
# 5 s: a parameter drop's switch waits for its members to stop, a restore for its pipeline.
# Nothing of a stopped engine is kept (its requests are handed over first).
ENGINE_SHUTDOWN_GRACE_S = 1.0


class KVTransferFailed(Exception):
    """The request's KV could not be fetched and the replica is configured to fail rather
    than recompute. Retriable on another replica or after a new prefill."""


class ReplicaActor(ChannelStreams):
    def __init__(self, replica_id: ReplicaId, pool: str, role: Role, spec: EngineSpec):
        self.replica_id = replica_id
        self.pool = pool
        self.role = role
        self.spec = spec
        self._engine: AsyncLLM | None = None
        self._load = EngineLoad(spec.block_size, latency_window_s=spec.latency_window_s)
        self._mediums: dict[MediumKind, TransferMedium] = {}
        self._transfers: deque[TransferRecord] = deque(maxlen=4096)
        self._draining = False
        self._info: ReplicaInfo | None = None
        self._janitor: asyncio.Task | None = None
        self._identity = SeriesIdentity(replica_id, pool, role.value)
        self._transfer_metrics: TransferMetrics | None = None
        self._migration_metrics: MigrationMetrics | None = None
        self._device: ReplicaDevice | None = None
        self._gate = WeightsGate(spec.weights_gate_dir(replica_id))
        self._start_ended = False
        self._starting: asyncio.Future | None = None
        self._init_streams()

    # ---- lifecycle ----
    async def start(self, gated_timeout_s: float | None = None) -> ReplicaInfo:
        """Builds the engine. With `gated_timeout_s`, its processes stop before the
        weights until `open_gate` (within that time, or the start fails): `wait_at_gate`
        says when they are there."""
        if self._info is not None:
            return self._info
        if self._starting is not None:
            if self._gate.is_waiting and not self._start_ended:
                # Only whoever started it knows what the engine waits for (a restarted
                # controller stops it instead of waiting).
                raise StartBehindGate(f"{self.replica_id} is starting behind its weights gate")
            return await self._starting
        self._starting = asyncio.ensure_future(self._start(gated_timeout_s))
        return await self._starting

    async def _start(self, gated_timeout_s: float | None) -> ReplicaInfo:
        os.environ.update(self.spec.process_env())
        gated = gated_timeout_s is not None
        if gated:
            self._gate.reset()
            os.environ[GATE_ENV] = str(self._gate.directory)
            os.environ[GATE_TIMEOUT_ENV] = str(gated_timeout_s)
        # Opened first: a device left with a locked clock by a crashed process is reset, and
        # an emulated device publishes the clock file the engine reads.
        self._device = ReplicaDevice.open(self.spec, self.replica_id, self._identity, self._load)
        clock_file = self.spec.clock_file(self.replica_id) if self._device.emulated else None
        build = lambda: AsyncLLM.from_engine_args(  # noqa: E731
            self.spec.engine_args(clock_file, gated=gated),
            stat_loggers=[self._load.stat_logger_factory(), engine_stat_logger(self._identity)],
        )
        # A gated start waits for `open_gate`, so it must not hold the actor's event loop.
        try:
            self._engine = await asyncio.to_thread(build) if gated else build()
        finally:
            self._start_ended = True
        if self.spec.pipeline_stages > 1:
            await self._engine.collective_rpc("prepare_stage")
        self._transfer_metrics = TransferMetrics(self._identity)
        self._migration_metrics = MigrationMetrics(self._identity)
        node_id = ray.get_runtime_context().get_node_id()
        for kind in MEDIUMS:
            self._mediums[kind] = make_medium(
                kind, self.spec.staging_dir_for(kind), self.replica_id, node_id, self.spec.kv_fetch_timeout_s
            )
        self._info = ReplicaInfo(
            replica_id=self.replica_id, pool=self.pool, role=self.role, node_id=node_id, pid=os.getpid(),
            num_total_blocks=self._engine.vllm_config.cache_config.num_gpu_blocks or 0,
            block_size=self.spec.block_size, max_model_len=self._engine.model_config.max_model_len,
            clock_backend=self._device.backend.backend, clock_control=self._device.backend.controllable,
            supported_clocks_mhz=self._device.backend.supported_clocks_mhz,
            pipeline_stages=self.spec.pipeline_stages,
        )
        self._janitor = asyncio.create_task(self._sweep_staged_kv_forever())
        self._device.start_metering()
        return self._info

    async def wait_at_gate(self, timeout_s: float) -> bool:
        """True once every process of a gated start waits at the weights gate; False if
        the start ended (failed) or the time ran out first. It may be called before the
        start has begun."""
        deadline = time.monotonic() + timeout_s
        while self._gate.num_arrived() < self.spec.pipeline_stages:
            if self._start_ended or time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    def open_gate(self) -> None:
        self._gate.open()

    async def shutdown(self) -> None:
        if self._janitor is not None:
            self._janitor.cancel()
        if self._engine is not None:
            self._engine.shutdown(timeout=ENGINE_SHUTDOWN_GRACE_S)
            self._engine = None
        if self._device is not None:
            self._device.close()
            self._device = None
        self._sweep_staged_kv(older_than_s=0.0)
        self._gate.remove()

    async def drain(self, timeout_s: float = 60.0) -> int:
        """Stops taking new requests (routers see DRAINING) and waits for the admitted ones
        to finish; returns how many are still running at the timeout."""
        self._draining = True
        deadline = time.monotonic() + timeout_s
        while self._load.num_admitted and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return self._load.num_admitted

    def resume(self) -> None:
        """Takes new requests again after a `drain` (a scale-in that was called off)."""
        self._draining = False

    async def check_health(self) -> None:
        await self._require_engine().check_health()

    def set_clock(self, clock_mhz: int) -> int:
        """Locks the device's clock (the lowest supported at or above `clock_mhz`); returns
        the clock now in force (unchanged on an observe-only device)."""
        if self._device is None:
            raise ReplicaNotStarted(f"replica {self.replica_id} has no device")
        return self._device.set_clock(clock_mhz)

    def device_totals(self) -> dict[str, float]:
        """Energy the device used and tokens the engine generated since the replica started."""
        energy = self._device.energy_j if self._device else 0.0
        return {"energy_j": energy, "generated_tokens": float(self._load.num_generated_tokens)}

    async def stats(self) -> ReplicaSnapshot:
        head_blocks, waiting_blocks, queued_tokens = self._load.waiting_demand()
        total = self._info.num_total_blocks if self._info else 0
        now = time.monotonic()
        ttft, itl = self._load.latencies.ttft(now), self._load.latencies.itl(now)
        return ReplicaSnapshot(
            replica_id=self.replica_id, pool=self.pool, role=self.role, health=self._health(),
            num_running=self._load.num_running, num_waiting=self._load.num_waiting,
            num_total_blocks=total, num_free_blocks=round(total * (1.0 - self._load.kv_usage_frac)),
            num_head_waiting_blocks=head_blocks, num_waiting_blocks=waiting_blocks,
            num_queued_prompt_tokens=queued_tokens, num_preemptions=self._load.num_preemptions,
            mean_step_s=self._load.mean_step_s(),
            clock_mhz=self._device.clock_mhz if self._device else 0,
            ttft_p90_s=ttft.p90_s, num_ttft_samples=ttft.num_samples,
            itl_p90_s=itl.p90_s, num_itl_samples=itl.num_samples,
            num_members=self.spec.pipeline_stages, observed_at_s=time.time(),
        )

    async def stage_memory(self) -> list[dict[str, int]]:
        """Per pipeline stage (one for an ordinary replica): the decoder layers it holds, its
        KV cache bytes and its process id (actors/pipeline_stage.py)."""
        return await self._require_engine().collective_rpc("stage_memory")

    def connector_totals(self) -> dict[str, float]:
        """Cumulative copies between the engine's cache and staged KV (see connector_stats)."""
        return dict(self._load.connector_totals)

    def take_transfer_records(self) -> list[TransferRecord]:
        records = list(self._transfers)
        self._transfers.clear()
        return records

    # ---- serving ----
    async def generate(self, request: TokenRequest) -> AsyncIterator[TokenDelta]:
        """Streams the request's new tokens. With a KV handle, the handle's tokens are
        loaded instead of computed (or computed, if the transfer failed and the replica
        recomputes on failure)."""
        kv_params = await self._import_params(request.kv_handle, request.on_transfer_failure or self.spec.on_transfer_failure)
        async for delta in self._run(request, self._delta_sampling(request.sampling), kv_params):
            yield delta

    async def prefill(self, request: TokenRequest, medium: MediumKind | None = None) -> PrefillResult:
        """Computes the prompt and the first token, stages the prompt's KV and publishes it."""
        kind = medium or self.spec.medium
        sampling = self._delta_sampling(request.sampling)
        sampling.max_tokens = 1
        sampling.min_tokens = min(sampling.min_tokens, 1)
        export = {"do_remote_decode": True} if kind == MediumKind.NIXL else {EXPORT_PARAM: {
            "dir": str(self.spec.staging_dir_for(kind)), "owner": self.replica_id,
            "direct": kind == MediumKind.SHARED_MEMORY,
        }}
        first: TokenDelta | None = None
        staged: dict[str, Any] | None = None
        async for delta, output in self._run_outputs(request, sampling, export):
            first, staged = delta, output.kv_transfer_params
        assert first is not None
        if first.finish_reason == "length" and (request.sampling.max_tokens or 0) > 1:
            # Only the prefill's own one-token budget ran out; the request goes on.
            first = replace(first, finish_reason=None, stop_reason=None)
        return PrefillResult(first=first, kv_handle=self._publish(kind, staged))

    async def abort(self, request_id: str) -> None:
        await self._require_engine().abort(request_id)

    # ---- internals ----
    def _sweep_staged_kv(self, older_than_s: float) -> int:
        dirs = {self.spec.staging_dir_for(kind) for kind in MEDIUMS}
        return sum(sweep_staged_kv(d, self.replica_id, older_than_s, time.time()) for d in dirs)

    async def _sweep_staged_kv_forever(self) -> None:
        while True:
            await asyncio.sleep(self.spec.staged_kv_ttl_s / 2)
            await asyncio.to_thread(self._sweep_staged_kv, self.spec.staged_kv_ttl_s)

    def _require_engine(self) -> AsyncLLM:
        if self._engine is None:
            raise ReplicaNotStarted(f"replica {self.replica_id} has no engine")
        return self._engine

    def _health(self) -> Health:
        if self._engine is None:
            return Health.STARTING
        if self._engine.errored:
            return Health.DEAD
        return Health.DRAINING if self._draining else Health.HEALTHY

    @staticmethod
    def _delta_sampling(sampling: SamplingParams) -> SamplingParams:
        sampling = sampling.clone()
        sampling.output_kind = RequestOutputKind.DELTA
        return sampling

    async def _run(
        self, request: TokenRequest, sampling: SamplingParams, kv_params: dict[str, Any] | None
    ) -> AsyncIterator[TokenDelta]:
        async for delta, _ in self._run_outputs(request, sampling, kv_params):
            yield delta

    async def _run_outputs(
        self, request: TokenRequest, sampling: SamplingParams, kv_params: dict[str, Any] | None
    ) -> AsyncIterator[tuple[TokenDelta, RequestOutput]]:
        engine = self._require_engine()
        if kv_params:
            sampling.extra_args = {**(sampling.extra_args or {}), "kv_transfer_params": kv_params}
        self._load.admit(request.request_id, len(request.prompt_token_ids))
        submitted_at = time.monotonic()
        last_at = submitted_at
        intervals: list[float] = []
        try:
            stream = engine.generate({"prompt_token_ids": request.prompt_token_ids}, sampling, request.request_id)
            async for output in stream:
                now = time.monotonic()
                self._load.mark_started(request.request_id)
                completion = output.outputs[0]
                if completion.token_ids:
                    intervals.append(now - last_at)
                    last_at = now
                timings = _timings(output, intervals) if output.finished else None
                yield TokenDelta(
                    request_id=request.request_id, token_ids=list(completion.token_ids),
                    num_prompt_tokens=len(request.prompt_token_ids),
                    num_cached_tokens=output.num_cached_tokens or 0,
                    finish_reason=completion.finish_reason, stop_reason=completion.stop_reason,
                    logprobs=list(completion.logprobs) if completion.logprobs else None,
                    prompt_logprobs=list(output.prompt_logprobs) if output.prompt_logprobs else None,
                    timings=timings,
                ), output
        finally:
            self._load.release(request.request_id)

    async def _import_params(self, handle: KVHandle | None, on_failure: TransferFailurePolicy) -> dict[str, Any] | None:
        if handle is None:
            return None
        if handle.medium == MediumKind.NIXL:
            return handle.engine_params
        started = time.perf_counter()
        try:
            path = await asyncio.to_thread(self._mediums[handle.medium].fetch, handle)
        except TransferError as exc:
            self._record(handle.medium, "fetch", 0, started, error=str(exc))
            self._mediums[handle.medium].discard(handle)
            if on_failure == TransferFailurePolicy.FAIL:
                raise KVTransferFailed(f"KV transfer over {handle.medium.value} failed: {exc}") from exc
            if self._transfer_metrics is not None:
                self._transfer_metrics.recomputed(handle.medium.value)
            return None
        self._record(handle.medium, "fetch", handle.num_bytes, started)
        return {IMPORT_PARAM: {"path": str(path), "num_tokens": handle.num_tokens}}

    def _publish(self, kind: MediumKind, engine_params: dict[str, Any] | None) -> KVHandle | None:
        if kind == MediumKind.NIXL:
            return KVHandle(MediumKind.NIXL, self.replica_id, "", 0, 0, 0, engine_params=engine_params)
        staged = (engine_params or {}).get(STAGED_PARAM)
        if not staged:
            return None  # the prompt was shorter than one block: nothing worth moving
        started = time.perf_counter()
        try:
            handle = self._mediums[kind].publish(StagedExport(**staged))
        except TransferError as exc:
            self._record(kind, "publish", 0, started, error=str(exc))
            Path(staged["path"]).unlink(missing_ok=True)
            return None
        self._record(kind, "publish", handle.num_bytes, started)
        return handle

    def _record(self, kind: MediumKind, direction: str, num_bytes: int, started: float, error: str | None = None) -> None:
        seconds = time.perf_counter() - started
        record = TransferRecord(kind.value, direction, num_bytes, seconds, error is None, error)
        self._transfers.append(record)
        if self._transfer_metrics is not None:
            self._transfer_metrics.record(record)


def _timings(output: RequestOutput, intervals: list[float]) -> RequestTimings:
    metrics = output.metrics
    queue_s = prefill_s = 0.0
    if metrics is not None and metrics.scheduled_ts:
        queue_s = max(0.0, metrics.scheduled_ts - metrics.queued_ts)
        if metrics.first_token_ts:
            prefill_s = max(0.0, metrics.first_token_ts - metrics.scheduled_ts)
    first = intervals[0] if intervals else 0.0
    return RequestTimings(queue_s=queue_s, prefill_s=prefill_s, first_token_s=first, token_intervals_s=tuple(intervals[1:]))
