from __future__ import annotations

from policies.actions import RemoveReplica, ReplaceReplica, StartReplica
from policies.repair import InFlight, decide_repairs
from policies.snapshot import ClusterSnapshot, Health, PoolSnapshot, ReplicaId, ReplicaSnapshot, Role


def pool(target: int, *healths: Health, reason: str = "") -> ClusterSnapshot:
    replicas = tuple(
        ReplicaSnapshot(ReplicaId(f"decode-{i}"), "decode", Role.DECODE, h, health_reason=reason if h == Health.DEAD else "")
        for i, h in enumerate(healths)
    )
    return ClusterSnapshot(1, 0.0, (PoolSnapshot("decode", Role.DECODE, target, replicas),))


def test_healthy_pool_at_target_needs_nothing():
    assert decide_repairs(pool(2, Health.HEALTHY, Health.HEALTHY), InFlight()) == []


def test_dead_replica_is_replaced_with_its_reason():
    actions = decide_repairs(pool(2, Health.HEALTHY, Health.DEAD, reason="engine_dead"), InFlight())
    assert actions == [ReplaceReplica(ReplicaId("decode-1"), "decode", "engine_dead")]


def test_replacement_in_flight_is_not_planned_twice():
    snapshot = pool(2, Health.HEALTHY, Health.DEAD)
    assert decide_repairs(snapshot, InFlight(replacing=frozenset({ReplicaId("decode-1")}))) == []


def test_missing_replicas_are_started_minus_those_starting():
    assert decide_repairs(pool(3, Health.HEALTHY), InFlight()) == [StartReplica("decode", "below_target")] * 2
    assert decide_repairs(pool(3, Health.HEALTHY), InFlight(starting_per_pool=(("decode", 1),))) == [
        StartReplica("decode", "below_target")
    ]


def test_starting_replicas_count_towards_the_target():
    assert decide_repairs(pool(2, Health.HEALTHY, Health.STARTING), InFlight()) == []


def test_extra_replicas_are_removed_least_loaded_first():
    actions = decide_repairs(pool(1, Health.HEALTHY, Health.HEALTHY), InFlight())
    assert actions == [RemoveReplica(ReplicaId("decode-0"), "decode", "above_target")]
