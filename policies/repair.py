"""Keeps pools at their target size: replace dead replicas, start missing ones, remove
extras. Pure: a function of the snapshot and of what is already in flight."""

from __future__ import annotations

from dataclasses import dataclass

from policies.actions import Action, RemoveReplica, ReplaceReplica, StartReplica
from policies.snapshot import ClusterSnapshot, Health, ReplicaId


@dataclass(frozen=True)
class InFlight:
    """Actions the executor has started and not finished: never planned twice."""

    replacing: frozenset[ReplicaId] = frozenset()
    starting_per_pool: tuple[tuple[str, int], ...] = ()

    def starting(self, pool: str) -> int:
        return dict(self.starting_per_pool).get(pool, 0)


def decide_repairs(snapshot: ClusterSnapshot, in_flight: InFlight) -> list[Action]:
    actions: list[Action] = []
    for pool in snapshot.pools:
        dead = [r for r in pool.replicas if r.health == Health.DEAD]
        for replica in dead:
            if replica.replica_id not in in_flight.replacing:
                actions.append(ReplaceReplica(replica.replica_id, pool.name, reason=replica.health_reason or "dead"))
        alive = [r for r in pool.replicas if r.health != Health.DEAD]
        # A pipeline (a dropped group) counts as its members. Replacements keep the count
        # (a dead pipeline is replaced by one replica; the rest are started fresh).
        num_alive = sum(r.num_members for r in alive)
        num_present = num_alive + len(dead) + in_flight.starting(pool.name)
        for _ in range(pool.target_size - num_present):
            actions.append(StartReplica(pool.name, reason="below_target"))
        if num_alive > pool.target_size:
            singles = [r for r in alive if r.num_members == 1]
            extras = sorted(singles, key=lambda r: (r.num_running + r.num_waiting, r.replica_id))
            for replica in extras[: num_alive - pool.target_size]:
                actions.append(RemoveReplica(replica.replica_id, pool.name, reason="above_target"))
    return actions
