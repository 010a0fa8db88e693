"""Frozen views of cluster state that policies decide on. No Ray, no vLLM."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import NewType

ReplicaId = NewType("ReplicaId", str)
RequestId = NewType("RequestId", str)


class Role(str, Enum):
    PREFILL = "prefill"
    DECODE = "decode"
    COLOCATED = "colocated"


class Health(str, Enum):
    STARTING = "starting"
    HEALTHY = "healthy"
    DRAINING = "draining"
    # The engine reported itself dead or the actor stopped answering.
    DEAD = "dead"


@dataclass(frozen=True)
class ReplicaSnapshot:
    replica_id: ReplicaId
    pool: str
    role: Role
    health: Health
    # Why the replica is in that state (for DEAD: actor_died, engine_dead, unresponsive).
    health_reason: str = ""
    num_running: int = 0
    num_waiting: int = 0
    num_total_blocks: int = 0
    num_free_blocks: int = 0
    # Blocks the head-of-line waiting request needs (Llumnix's virtual usage) and all
    # waiting requests need (KunServe's pending blocks).
    num_head_waiting_blocks: int = 0
    num_waiting_blocks: int = 0
    num_queued_prompt_tokens: int = 0
    # Requests the engine preempted since it started (cumulative).
    num_preemptions: int = 0
    mean_step_s: float = 0.0
    # The device's clock, and the engine's P90 time to first token and P90 time between
    # tokens over the replica's latency window at that clock (0 samples: no data).
    clock_mhz: int = 0
    ttft_p90_s: float = 0.0
    num_ttft_samples: int = 0
    itl_p90_s: float = 0.0
    num_itl_samples: int = 0
    # The replicas this one stands for: > 1 for a dropped group serving as one pipeline.
    num_members: int = 1
    observed_at_s: float = 0.0

    @property
    def kv_usage_frac(self) -> float:
        if self.num_total_blocks == 0:
            return 0.0
        return 1.0 - self.num_free_blocks / self.num_total_blocks

    @property
    def accepts_requests(self) -> bool:
        return self.health == Health.HEALTHY


@dataclass(frozen=True)
class PoolSnapshot:
    name: str
    role: Role
    target_size: int
    replicas: tuple[ReplicaSnapshot, ...] = ()

    @property
    def serving(self) -> tuple[ReplicaSnapshot, ...]:
        return tuple(r for r in self.replicas if r.accepts_requests)

    @property
    def num_serving_members(self) -> int:
        """Serving replicas, a pipeline counted as the members it stands for."""
        return sum(r.num_members for r in self.serving)


@dataclass(frozen=True)
class ClusterSnapshot:
    version: int
    taken_at_s: float
    pools: tuple[PoolSnapshot, ...] = field(default_factory=tuple)

    def pools_with_role(self, role: Role) -> tuple[PoolSnapshot, ...]:
        return tuple(p for p in self.pools if p.role == role)

    def serving(self, role: Role) -> tuple[ReplicaSnapshot, ...]:
        return tuple(r for p in self.pools_with_role(role) for r in p.serving)

    def replica(self, replica_id: ReplicaId) -> ReplicaSnapshot | None:
        for pool in self.pools:
            for replica in pool.replicas:
                if replica.replica_id == replica_id:
                    return replica
        return None
