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
class Sent:
    """Work a router sent a replica that its snapshot does not show yet."""

    num_requests: int = 0
    num_prompt_tokens: int = 0
    num_blocks: int = 0

    def plus(self, demand: RequestDemand) -> Sent:
        return Sent(self.num_requests + 1, self.num_prompt_tokens + demand.num_prompt_tokens,
                    self.num_blocks + demand.num_blocks)


NOTHING_SENT = Sent()


@dataclass(frozen=True)
class RouterState:
    """What a router carries between decisions: a round-robin cursor per role, and what it
    sent each replica since the snapshot it routes on was taken (so a burst between two
    snapshots spreads instead of piling onto the replica that looked freest)."""

    cursors: tuple[tuple[Role, int], ...] = ()
    sent: tuple[tuple[ReplicaId, Sent], ...] = ()

    def cursor(self, role: Role) -> int:
        return dict(self.cursors).get(role, 0)

    def advanced(self, role: Role) -> RouterState:
        cursors = dict(self.cursors)
        cursors[role] = cursors.get(role, 0) + 1
        return RouterState(tuple(sorted(cursors.items(), key=lambda kv: kv[0].value)), self.sent)

    def sent_by_replica(self) -> dict[ReplicaId, Sent]:
        return dict(self.sent)

    def after_sending(self, replica_id: ReplicaId, demand: RequestDemand) -> RouterState:
        sent = self.sent_by_replica()
        sent[replica_id] = sent.get(replica_id, NOTHING_SENT).plus(demand)
        return RouterState(self.cursors, tuple(sent.items()))

    def on_new_snapshot(self) -> RouterState:
        """The new snapshot counts what was sent before it."""
        return RouterState(self.cursors)


class NoReplicaAvailable(Exception):
    """No healthy replica of the role can take the request."""


class Router(Protocol):
    def choose(
        self, candidates: Sequence[ReplicaSnapshot], role: Role, demand: RequestDemand, state: RouterState
    ) -> tuple[ReplicaId, RouterState]: ...


def _serving(candidates: Sequence[ReplicaSnapshot], role: Role) -> list[ReplicaSnapshot]:
    serving = [r for r in candidates if r.accepts_requests]
    if not serving:
        raise NoReplicaAvailable(f"no healthy {role.value} replica")
    return serving


class RoundRobinRouter:
    """Baseline: cycles over healthy replicas in id order, blind to load."""

    def choose(
        self, candidates: Sequence[ReplicaSnapshot], role: Role, demand: RequestDemand, state: RouterState
    ) -> tuple[ReplicaId, RouterState]:
        serving = sorted(_serving(candidates, role), key=lambda r: r.replica_id)
        chosen = serving[state.cursor(role) % len(serving)]
        return chosen.replica_id, state.advanced(role)


def decode_freeness(replica: ReplicaSnapshot, demand: RequestDemand, sent: Sent = NOTHING_SENT) -> float:
    """Llumnix freeness: decode steps the batch can still run, (free - demand) / batch.

    Free blocks are reduced by the head-of-line waiting request's demand, so a replica
    with a queue looks loaded even while its running batch is small."""
    free = replica.num_free_blocks - sent.num_blocks - replica.num_head_waiting_blocks - demand.num_blocks
    return free / (replica.num_running + replica.num_waiting + sent.num_requests + 1)


def prefill_backlog(replica: ReplicaSnapshot, sent: Sent = NOTHING_SENT) -> int:
    return replica.num_queued_prompt_tokens + sent.num_prompt_tokens


class LoadAwareRouter:
    """Prefill (and colocated admission): least queued prompt tokens.
    Decode: highest Llumnix freeness. Ties go to the lowest replica id."""

    def choose(
        self, candidates: Sequence[ReplicaSnapshot], role: Role, demand: RequestDemand, state: RouterState
    ) -> tuple[ReplicaId, RouterState]:
        serving = _serving(candidates, role)
        sent = state.sent_by_replica()

        def sent_to(r: ReplicaSnapshot) -> Sent:
            return sent.get(r.replica_id, NOTHING_SENT)

        if role == Role.DECODE:
            chosen = max(serving, key=lambda r: (decode_freeness(r, demand, sent_to(r)), _reverse_id(r)))
        elif role == Role.PREFILL:
            chosen = min(serving, key=lambda r: (prefill_backlog(r, sent_to(r)), r.replica_id))
        else:
            # Colocated replicas both prefill and decode: queued prompt work first, then
            # decode headroom.
            chosen = min(serving, key=lambda r: (prefill_backlog(r, sent_to(r)), -decode_freeness(r, demand, sent_to(r)),
                                                 r.replica_id))
        return chosen.replica_id, state.after_sending(chosen.replica_id, demand)


def _reverse_id(replica: ReplicaSnapshot) -> tuple[int, ...]:
    return tuple(-ord(c) for c in replica.replica_id)


ROUTERS: dict[RoutingPolicyKind, type] = {
    RoutingPolicyKind.ROUND_ROBIN: RoundRobinRouter,
    RoutingPolicyKind.LOAD_AWARE: LoadAwareRouter,
}


def make_router(kind: RoutingPolicyKind) -> Router:
    return ROUTERS[kind]()
