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


def with_pipeline(target: int, health: Health, *others: Health) -> ClusterSnapshot:
    """A pipeline replica standing for 2 members, then single replicas."""
    replicas = (ReplicaSnapshot(ReplicaId("decode-p"), "decode", Role.DECODE, health, num_members=2),) + tuple(
        ReplicaSnapshot(ReplicaId(f"decode-{i}"), "decode", Role.DECODE, h) for i, h in enumerate(others))
    return ClusterSnapshot(1, 0.0, (PoolSnapshot("decode", Role.DECODE, target, replicas),))


def test_a_pipeline_counts_as_its_members():
    assert decide_repairs(with_pipeline(3, Health.HEALTHY, Health.HEALTHY), InFlight()) == []
    assert decide_repairs(with_pipeline(3, Health.STARTING, Health.HEALTHY), InFlight()) == []
    # Never removed as an extra: the single replicas go first.
    assert decide_repairs(with_pipeline(2, Health.HEALTHY, Health.HEALTHY), InFlight()) == [
        RemoveReplica(ReplicaId("decode-0"), "decode", "above_target")]


def test_a_dead_pipeline_is_replaced_and_its_other_members_started():
    assert decide_repairs(with_pipeline(3, Health.DEAD, Health.HEALTHY), InFlight()) == [
        ReplaceReplica(ReplicaId("decode-p"), "decode", "dead"), StartReplica("decode", "below_target")]
