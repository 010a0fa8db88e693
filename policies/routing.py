"""Routing: which replica of a pool takes a request. Pure functions over snapshots."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from policies.snapshot import ReplicaId, ReplicaSnapshot, Role


class RoutingPolicyKind(str, Enum):
    ROUND_ROBIN = "round_robin"
    LOAD_AWARE = "load_aware"


class DataPath(str, Enum):
    """How a request is served: prefill -> decode when the cluster has both pools
    (`auto`), or always on one of them."""

    AUTO = "auto"
    COLOCATED = "colocated"
    DISAGGREGATED = "disaggregated"


@dataclass(frozen=True)
class RequestDemand:
    num_prompt_tokens: int
    num_blocks: int


@dataclass(frozen=True)
class RouterState:
    """What a router carries between decisions (a round-robin cursor per role)."""

    cursors: tuple[tuple[Role, int], ...] = ()

    def cursor(self, role: Role) -> int:
        return dict(self.cursors).get(role, 0)

    def advanced(self, role: Role) -> RouterState:
        cursors = dict(self.cursors)
        cursors[role] = cursors.get(role, 0) + 1
        return RouterState(tuple(sorted(cursors.items(), key=lambda kv: kv[0].value)))


class NoReplicaAvailable(Exception):
    """No healthy replica of the role can take the request."""


class Router(Protocol):
    def choose(
        self, candidates: Sequence[ReplicaSnapshot], role: Role, demand: RequestDemand, state: RouterState
    ) -> tuple[ReplicaId, RouterState]: ...


def _serving(candidates: Sequence[ReplicaSnapshot], role: Role) -> list[ReplicaSnapshot]:
    serving = sorted((r for r in candidates if r.accepts_requests), key=lambda r: r.replica_id)
    if not serving:
        raise NoReplicaAvailable(f"no healthy {role.value} replica")
    return serving


class RoundRobinRouter:
    """Baseline: cycles over healthy replicas in id order, blind to load."""

    def choose(
        self, candidates: Sequence[ReplicaSnapshot], role: Role, demand: RequestDemand, state: RouterState
    ) -> tuple[ReplicaId, RouterState]:
        serving = _serving(candidates, role)
        chosen = serving[state.cursor(role) % len(serving)]
        return chosen.replica_id, state.advanced(role)


def decode_freeness(replica: ReplicaSnapshot, demand: RequestDemand) -> float:
    """Llumnix freeness: decode steps the batch can still run, (free - demand) / batch.

    Free blocks are reduced by the head-of-line waiting request's demand, so a replica
    with a queue looks loaded even while its running batch is small."""
    free = replica.num_free_blocks - replica.num_head_waiting_blocks - demand.num_blocks
    return free / (replica.num_running + replica.num_waiting + 1)


def prefill_backlog(replica: ReplicaSnapshot) -> int:
    return replica.num_queued_prompt_tokens


class LoadAwareRouter:
    """Prefill (and colocated admission): least queued prompt tokens.
    Decode: highest Llumnix freeness. Ties go to the lowest replica id."""

    def choose(
        self, candidates: Sequence[ReplicaSnapshot], role: Role, demand: RequestDemand, state: RouterState
    ) -> tuple[ReplicaId, RouterState]:
        serving = _serving(candidates, role)
        if role == Role.DECODE:
            chosen = max(serving, key=lambda r: (decode_freeness(r, demand), _reverse_id(r)))
        elif role == Role.PREFILL:
            chosen = min(serving, key=lambda r: (prefill_backlog(r), r.replica_id))
        else:
            # Colocated replicas both prefill and decode: queued prompt work first, then
            # decode headroom.
            chosen = min(serving, key=lambda r: (prefill_backlog(r), -decode_freeness(r, demand), r.replica_id))
        return chosen.replica_id, state


def _reverse_id(replica: ReplicaSnapshot) -> tuple[int, ...]:
    return tuple(-ord(c) for c in replica.replica_id)


ROUTERS: dict[RoutingPolicyKind, type] = {
    RoutingPolicyKind.ROUND_ROBIN: RoundRobinRouter,
    RoutingPolicyKind.LOAD_AWARE: LoadAwareRouter,
}


def make_router(kind: RoutingPolicyKind) -> Router:
    return ROUTERS[kind]()
