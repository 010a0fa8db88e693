"""Routing: which replica of a pool takes a request. Pure functions over snapshots."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
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
    """What a router carries between decisions: a round-robin cursor per role, what it sent
    each replica since the snapshot it routes on was taken (so a burst between two
    snapshots spreads instead of piling onto the replica that looked freest), and how many
    requests it has routed (the seed of its sampling)."""

    cursors: tuple[tuple[Role, int], ...] = ()
    # Never mutated: each decision returns a state with a new mapping.
    sent: Mapping[ReplicaId, Sent] = field(default_factory=dict)
    num_routed: int = 0

    def cursor(self, role: Role) -> int:
        return dict(self.cursors).get(role, 0)

    def advanced(self, role: Role) -> RouterState:
        cursors = dict(self.cursors)
        cursors[role] = cursors.get(role, 0) + 1
        return RouterState(tuple(sorted(cursors.items(), key=lambda kv: kv[0].value)), self.sent, self.num_routed + 1)

    def after_sending(self, replica_id: ReplicaId, demand: RequestDemand) -> RouterState:
        sent = dict(self.sent)
        sent[replica_id] = sent.get(replica_id, NOTHING_SENT).plus(demand)
        return RouterState(self.cursors, sent, self.num_routed + 1)

    def on_new_snapshot(self) -> RouterState:
        """The new snapshot counts what was sent before it."""
        return RouterState(self.cursors, num_routed=self.num_routed)


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


@dataclass(frozen=True)
class LoadAwareRouter:
    """Prefill (and colocated admission): least queued prompt tokens.
    Decode: highest Llumnix freeness. Ties go to the lowest replica id.

    A pool larger than `sample_size` is ranked on `sample_size` of its replicas, drawn
    afresh for each request (power of d choices, as Ray Serve's router does with d = 2):
    a decision then costs the same at 1,000 replicas as at 16, and the sample's best is
    almost always among the pool's least loaded. None ranks every replica."""

    sample_size: int | None = 16

    def choose(
        self, candidates: Sequence[ReplicaSnapshot], role: Role, demand: RequestDemand, state: RouterState
    ) -> tuple[ReplicaId, RouterState]:
        serving = [r for r in _sample(candidates, self.sample_size, state.num_routed) if r.accepts_requests]
        if not serving:
            serving = _serving(candidates, role)
        sent = state.sent

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


def _sample(candidates: Sequence[ReplicaSnapshot], size: int | None, seed: int) -> Sequence[ReplicaSnapshot]:
    """Up to `size` distinct candidates, a deterministic function of `seed`."""
    n = len(candidates)
    if size is None or n <= size:
        return candidates
    return [candidates[i] for i in sorted({hash((seed, j)) % n for j in range(size)})]


def _reverse_id(replica: ReplicaSnapshot) -> tuple[int, ...]:
    return tuple(-ord(c) for c in replica.replica_id)


def make_router(kind: RoutingPolicyKind, sample_size: int | None = 16) -> Router:
    if kind == RoutingPolicyKind.LOAD_AWARE:
        return LoadAwareRouter(sample_size)
    return RoundRobinRouter()
