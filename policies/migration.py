"""Which running requests move between replicas: Llumnix-style load balancing,
de-fragmentation and draining. Pure: a frozen snapshot in, actions out.

Freeness (policies.routing.decode_freeness) is Llumnix's: decode steps the batch could
still run, with the head-of-line waiting request's blocks counted as used. A replica whose
freeness falls below `source_below` hands requests to the replica of its pool with the
highest freeness, if that one is above `destination_above` and the gap is at least
`min_gap` (hysteresis). A replica with a waiting request it cannot fit (free blocks below
its head-of-line demand) while another replica could is de-fragmented the same way. A
draining replica hands everything over. Limits: one migration in flight per replica, at
most `max_per_tick` new ones, and no move back along a pair within `cooldown_s`, so
requests do not ping-pong.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from policies.routing import RequestDemand, decode_freeness
from policies.snapshot import ClusterSnapshot, Health, ReplicaId, ReplicaSnapshot, Role

NO_DEMAND = RequestDemand(0, 0)


class MigrationReason(str, Enum):
    LOAD_BALANCE = "load_balance"
    DEFRAGMENT = "defragment"
    DRAIN = "drain"


class MigrationMode(str, Enum):
    """Multi-stage pre-copy (Llumnix), stop-and-copy, or recompute on the destination."""

    PRE_COPY = "pre_copy"
    STOP_AND_COPY = "stop_and_copy"
    RECOMPUTE = "recompute"


@dataclass(frozen=True)
class MigrationSettings:
    source_below: float = 4.0
    destination_above: float = 16.0
    min_gap: float = 8.0
    max_per_tick: int = 2
    cooldown_s: float = 10.0


@dataclass(frozen=True)
class MigrateRequests:
    source: ReplicaId
    destination: ReplicaId
    # How many running requests the source hands over (it picks which: the newest).
    num_requests: int
    reason: MigrationReason
    mode: MigrationMode = MigrationMode.PRE_COPY


@dataclass(frozen=True)
class MigrationHistory:
    """Migrations in flight and recent ones: (source, destination, started_at_s)."""

    in_flight: tuple[tuple[ReplicaId, ReplicaId], ...] = ()
    recent: tuple[tuple[ReplicaId, ReplicaId, float], ...] = ()

    def busy(self) -> frozenset[ReplicaId]:
        return frozenset(r for pair in self.in_flight for r in pair)

    def moved_recently(self, source: ReplicaId, destination: ReplicaId, now_s: float, cooldown_s: float) -> bool:
        return any(s == source and d == destination and now_s - at < cooldown_s for s, d, at in self.recent)


def decide_migrations(
    snapshot: ClusterSnapshot, history: MigrationHistory, settings: MigrationSettings, now_s: float,
    mode: MigrationMode = MigrationMode.PRE_COPY,
) -> list[MigrateRequests]:
    actions: list[MigrateRequests] = []
    busy = set(history.busy())
    for pool in snapshot.pools:
        if pool.role == Role.PREFILL:
            continue  # prefill requests are short: nothing worth moving
        replicas = [r for r in pool.replicas if r.health in (Health.HEALTHY, Health.DRAINING)]
        for source, destination, count, reason in _pairs(replicas, settings):
            if len(actions) >= settings.max_per_tick:
                return actions
            if source.replica_id in busy or destination.replica_id in busy:
                continue
            # Ping-pong guard: not back along a pair that just moved the other way.
            if history.moved_recently(destination.replica_id, source.replica_id, now_s, settings.cooldown_s):
                continue
            actions.append(MigrateRequests(source.replica_id, destination.replica_id, count, reason, mode))
            busy |= {source.replica_id, destination.replica_id}
    return actions


def _pairs(replicas: list[ReplicaSnapshot], settings: MigrationSettings):
    """(source, destination, number of requests, reason), most urgent first."""
    healthy = sorted((r for r in replicas if r.health == Health.HEALTHY),
                     key=lambda r: (-decode_freeness(r, NO_DEMAND), r.replica_id))
    if not healthy:
        return
    best = healthy[0]
    best_freeness = decode_freeness(best, NO_DEMAND)
    for draining in sorted((r for r in replicas if r.health == Health.DRAINING and r.num_running), key=_id):
        yield draining, best, draining.num_running, MigrationReason.DRAIN
    for source in sorted(healthy[1:], key=lambda r: (decode_freeness(r, NO_DEMAND), r.replica_id)):
        if source.num_running == 0:
            continue
        freeness = decode_freeness(source, NO_DEMAND)
        if _fragmented(source) and best.num_free_blocks - best.num_head_waiting_blocks >= source.num_head_waiting_blocks:
            yield source, best, 1, MigrationReason.DEFRAGMENT
        elif (freeness < settings.source_below and best_freeness > settings.destination_above
              and best_freeness - freeness >= settings.min_gap):
            yield source, best, 1, MigrationReason.LOAD_BALANCE


def _fragmented(replica: ReplicaSnapshot) -> bool:
    """A waiting request that does not fit in the replica's free blocks."""
    return replica.num_waiting > 0 and replica.num_head_waiting_blocks > replica.num_free_blocks


def _id(replica: ReplicaSnapshot) -> str:
    return replica.replica_id
