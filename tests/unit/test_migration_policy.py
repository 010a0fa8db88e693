"""The migration policy: load balancing with hysteresis, de-fragmentation, draining, at
most one migration per replica, no ping-pong, nothing from prefill pools."""

from __future__ import annotations

from policies.migration import (
    MigrateRequests,
    MigrationHistory,
    MigrationMode,
    MigrationReason,
    MigrationSettings,
    decide_migrations,
)
from policies.snapshot import ClusterSnapshot, Health, PoolSnapshot, ReplicaId, ReplicaSnapshot, Role

SETTINGS = MigrationSettings(source_below=4.0, destination_above=16.0, min_gap=8.0, max_per_tick=2, cooldown_s=10.0)


def replica(rid: str, running: int, free: int, waiting: int = 0, head: int = 0, health=Health.HEALTHY,
            role=Role.DECODE, pool="decode") -> ReplicaSnapshot:
    return ReplicaSnapshot(ReplicaId(rid), pool, role, health, num_running=running, num_waiting=waiting,
                           num_total_blocks=1000, num_free_blocks=free, num_head_waiting_blocks=head)


def cluster(*replicas: ReplicaSnapshot, role=Role.DECODE, pool="decode") -> ClusterSnapshot:
    return ClusterSnapshot(version=1, taken_at_s=0.0, pools=(PoolSnapshot(pool, role, len(replicas), replicas),))


def decide(snapshot, history=MigrationHistory(), now=100.0):
    return decide_migrations(snapshot, history, SETTINGS, now)


def test_a_loaded_replica_hands_a_request_to_the_freest():
    # freeness: a = 20/(10+1) ~ 1.8 (below 4); b = 900/(2+1) = 300; c = 400/(3+1) = 100
    snapshot = cluster(replica("a", 10, 20), replica("b", 2, 900), replica("c", 3, 400))
    assert decide(snapshot) == [MigrateRequests(ReplicaId("a"), ReplicaId("b"), 1, MigrationReason.LOAD_BALANCE)]


def test_hysteresis_needs_a_gap_and_a_free_destination():
    # a below 4, but the best destination (b: 36/(1+1) = 18) is only 16.2 ahead... and above 16
    close = cluster(replica("a", 10, 20), replica("b", 1, 20))  # b = 10: not above 16
    assert decide(close) == []
    balanced = cluster(replica("a", 4, 200), replica("b", 4, 300))  # nobody below 4
    assert decide(balanced) == []


def test_a_queue_that_cannot_fit_is_defragmented():
    # a's head-of-line request needs 80 blocks and only 60 are free; b could take it.
    snapshot = cluster(replica("a", 5, 60, waiting=1, head=80), replica("b", 1, 900))
    assert decide(snapshot) == [MigrateRequests(ReplicaId("a"), ReplicaId("b"), 1, MigrationReason.DEFRAGMENT)]


def test_a_draining_replica_hands_over_everything():
    snapshot = cluster(replica("a", 3, 900, health=Health.DRAINING), replica("b", 1, 900))
    assert decide(snapshot) == [MigrateRequests(ReplicaId("a"), ReplicaId("b"), 3, MigrationReason.DRAIN)]


def test_one_migration_per_replica_and_per_tick_limit():
    snapshot = cluster(replica("a", 10, 20), replica("b", 10, 20), replica("c", 0, 900), replica("d", 0, 800))
    actions = decide(snapshot)
    assert [(a.source, a.destination) for a in actions] == [("a", "c")]
    busy = MigrationHistory(in_flight=((ReplicaId("a"), ReplicaId("c")),))
    assert decide(snapshot, busy) == []  # c (the freest) and a are busy; b waits for the next tick


def test_no_ping_pong_within_the_cooldown():
    snapshot = cluster(replica("a", 10, 20), replica("b", 1, 900))
    just_moved_back = MigrationHistory(recent=((ReplicaId("b"), ReplicaId("a"), 95.0),))
    assert decide(snapshot, just_moved_back, now=100.0) == []
    assert decide(snapshot, just_moved_back, now=106.0) != []


def test_prefill_pools_and_dead_replicas_are_left_alone():
    prefill = cluster(replica("p0", 10, 20, role=Role.PREFILL, pool="prefill"),
                      replica("p1", 0, 900, role=Role.PREFILL, pool="prefill"), role=Role.PREFILL, pool="prefill")
    assert decide(prefill) == []
    dead_destination = cluster(replica("a", 10, 20), replica("b", 0, 900, health=Health.DEAD))
    assert decide(dead_destination) == []


def test_the_mode_is_carried():
    snapshot = cluster(replica("a", 10, 20), replica("b", 1, 900))
    [action] = decide_migrations(snapshot, MigrationHistory(), SETTINGS, 0.0, MigrationMode.STOP_AND_COPY)
    assert action.mode == MigrationMode.STOP_AND_COPY
