"""Every Ray call to a replica goes through `ReplicaHandle`, so the controller, the front
door and tests see one shape."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import ray
from ray.actor import ActorHandle

from actors.engine_spec import EngineSpec
from actors.kv.medium import MediumKind
from actors.messages import PrefillResult, ReplicaInfo, TokenDelta, TokenRequest, TransferRecord
from actors.replica import ReplicaActor
from orchestrator.config import PoolConfig
from policies.snapshot import ReplicaId, ReplicaSnapshot


def replica_actor_name(cluster: str, replica_id: ReplicaId) -> str:
    return f"{cluster}-replica-{replica_id}"


class ReplicaHandle:
    def __init__(self, replica_id: ReplicaId, actor: ActorHandle):
        self.replica_id = replica_id
        self.actor = actor

    @classmethod
    def create(cls, cluster: str, replica_id: ReplicaId, pool: PoolConfig, spec: EngineSpec) -> ReplicaHandle:
        actor_cls = ray.remote(ReplicaActor)
        # A pipeline replica holds the devices of the members it stands for.
        members = spec.pipeline_stages
        # Detached and named: replicas outlive a controller crash, and a restarted
        # controller finds them by name.
        actor = actor_cls.options(
            name=replica_actor_name(cluster, replica_id),
            namespace=cluster,
            lifetime="detached",
            num_cpus=pool.num_cpus * members,
            num_gpus=pool.num_gpus * members,
            resources={k: v * members for k, v in pool.resources.items()} or None,
            max_restarts=0,
            max_concurrency=1000,
        ).remote(replica_id, pool.name, pool.role, spec)
        return cls(replica_id, actor)

    async def start(self, timeout_s: float, gate_wait_s: float | None = None) -> ReplicaInfo:
        """With `gate_wait_s`, the engine waits before its weights until `open_gate` (see
        actors/weights_gate.py), at most that long; the start has `timeout_s` besides."""
        return await asyncio.wait_for(self.actor.start.remote(gate_wait_s), timeout_s + (gate_wait_s or 0.0))

    async def wait_at_gate(self, timeout_s: float) -> bool:
        try:
            return await asyncio.wait_for(self.actor.wait_at_gate.remote(timeout_s), timeout_s + 5)
        except (ray.exceptions.RayError, asyncio.TimeoutError):
            return False

    async def open_gate(self) -> None:
        """A replica that died behind its gate fails its start instead."""
        try:
            await self.actor.open_gate.remote()
        except ray.exceptions.RayError:
            pass

    async def stats(self, timeout_s: float) -> ReplicaSnapshot:
        return await asyncio.wait_for(self.actor.stats.remote(), timeout_s)

    async def prefill(self, request: TokenRequest, medium: MediumKind | None = None) -> PrefillResult:
        return await self.actor.prefill.remote(request, medium)

    async def stream(self, request: TokenRequest) -> AsyncIterator[TokenDelta]:
        refs = self.actor.generate.options(num_returns="streaming").remote(request)
        finished = False
        try:
            async for ref in refs:
                delta: TokenDelta = await ref
                finished = delta.finished
                yield delta
        finally:
            if not finished:
                # The consumer went away (or failed): stop generating for nobody.
                ray.cancel(refs)

    async def abort(self, request_id: str) -> None:
        await self.actor.abort.remote(request_id)

    async def drain(self, timeout_s: float) -> int:
        return await self.actor.drain.remote(timeout_s)

    async def take_transfer_records(self) -> list[TransferRecord]:
        return await self.actor.take_transfer_records.remote()

    async def hand_over_all(self, destinations: list[str], timeout_s: float) -> tuple[int, int]:
        """Moves every request running here to one of `destinations` with its KV staged
        (see `ReplicaActor.hand_over_all`): how many moved, and how many with their KV;
        (0, 0) if the replica does not answer in time."""
        try:
            return await asyncio.wait_for(self.actor.hand_over_all.remote(destinations), timeout_s)
        except (ray.exceptions.RayError, asyncio.TimeoutError):
            return 0, 0

    async def shutdown(self, timeout_s: float = 30.0) -> None:
        try:
            await asyncio.wait_for(self.actor.shutdown.remote(), timeout_s)
        except (ray.exceptions.RayError, asyncio.TimeoutError):
            pass
        self.kill()

    def kill(self) -> None:
        try:
            ray.kill(self.actor, no_restart=True)
        except ray.exceptions.RayError:
            pass

