"""The parameter-drop policy (pure): KunServe's votes, the fewest members that cover the
deficit, no replica in two groups, restore when pressure is gone."""

from __future__ import annotations

import dataclasses

from policies.burst import (
    BurstSettings,
    BurstState,
    DroppedGroup,
    DropParameters,
    RestoreParameters,
    decide_burst,
    group_size_for,
    votes_to_drop,
)
from policies.snapshot import ClusterSnapshot, Health, PoolSnapshot, ReplicaId, ReplicaSnapshot, Role

SETTINGS = BurstSettings()
WEIGHT_BLOCKS = {"decode": 100}


def replica(name: str, free: int, waiting_blocks: int = 0, total: int = 1000, waiting: int | None = None,
            health: Health = Health.HEALTHY) -> ReplicaSnapshot:
    return ReplicaSnapshot(ReplicaId(name), "decode", Role.DECODE, health, num_total_blocks=total,
                           num_free_blocks=free, num_waiting_blocks=waiting_blocks,
                           num_waiting=(1 if waiting_blocks else 0) if waiting is None else waiting)


def cluster(*replicas: ReplicaSnapshot) -> ClusterSnapshot:
    return ClusterSnapshot(1, 0.0, (PoolSnapshot("decode", Role.DECODE, len(replicas), tuple(replicas)),))


def test_a_replica_votes_when_full_and_its_queue_needs_more_than_is_free():
    assert votes_to_drop(replica("a", free=40, waiting_blocks=40), SETTINGS)
    assert not votes_to_drop(replica("a", free=40, waiting_blocks=39), SETTINGS)
    assert not votes_to_drop(replica("a", free=60, waiting_blocks=200), SETTINGS), "usage 94 % < 95 %"
    assert not votes_to_drop(replica("a", free=0, waiting_blocks=0), SETTINGS), "full but nothing waits"


def test_the_group_is_as_small_as_covers_the_deficit():
    assert group_size_for(deficit=90, weight_blocks=100, available=4, max_size=4) == 2
    assert group_size_for(deficit=150, weight_blocks=100, available=4, max_size=4) == 3
    assert group_size_for(deficit=1000, weight_blocks=100, available=3, max_size=4) == 3


def test_one_voter_with_a_small_deficit_pairs_with_the_least_loaded_peer():
    snap = cluster(replica("a", free=10, waiting_blocks=80), replica("b", free=500), replica("c", free=900))
    assert decide_burst(snap, BurstState(), WEIGHT_BLOCKS, SETTINGS) == [
        DropParameters("decode", (ReplicaId("a"), ReplicaId("c")), extra_blocks=100)]


def test_a_larger_deficit_takes_more_members_and_voters_lead_the_pipeline():
    snap = cluster(replica("a", free=10, waiting_blocks=100), replica("b", free=20, waiting_blocks=130),
                   replica("c", free=900), replica("d", free=800))
    [drop] = decide_burst(snap, BurstState(), WEIGHT_BLOCKS, SETTINGS)
    # Deficit 90 + 110 = 200 needs g = 3; b (the larger deficit) first.
    assert drop.members == ("b", "a", "c") and drop.extra_blocks == 200


def test_a_group_needs_half_its_members_to_vote():
    settings = BurstSettings(max_group_size=4, min_vote_share=0.5)
    # Deficit 290 needs 4 members with weight_blocks 100; only 1 of 4 votes.
    snap = cluster(replica("a", free=10, waiting_blocks=300), replica("b", free=900), replica("c", free=900),
                   replica("d", free=900))
    assert decide_burst(snap, BurstState(), WEIGHT_BLOCKS, settings) == []


def test_no_replica_in_two_groups_and_no_drop_without_weights_to_free():
    snap = cluster(replica("a", free=10, waiting_blocks=80), replica("b", free=10, waiting_blocks=80),
                   replica("c", free=900))
    state = BurstState(groups=(DroppedGroup("decode", (ReplicaId("a"), ReplicaId("c")), 0.0),))
    assert [a for a in decide_burst(snap, state, WEIGHT_BLOCKS, SETTINGS) if isinstance(a, DropParameters)] == []
    assert decide_burst(snap, BurstState(), {"decode": 0}, SETTINGS) == []


def test_restore_when_usage_is_low_falling_and_nothing_waits():
    group = DroppedGroup("decode", (ReplicaId("a"), ReplicaId("b")), 0.0)
    low = cluster(replica("a", free=600), replica("b", free=700))
    falling = BurstState((group,), (("a", 0.45), ("b", 0.35)))
    assert decide_burst(low, falling, WEIGHT_BLOCKS, SETTINGS) == [RestoreParameters("decode", ("a", "b"))]
    rising = BurstState((group,), (("a", 0.3), ("b", 0.3)))
    assert decide_burst(low, rising, WEIGHT_BLOCKS, SETTINGS) == []
    queued = cluster(replica("a", free=600, waiting=1), replica("b", free=700))
    assert decide_burst(queued, falling, WEIGHT_BLOCKS, SETTINGS) == []
    dead = cluster(replica("a", free=600), replica("b", free=700, health=Health.DEAD))
    assert decide_burst(dead, falling, WEIGHT_BLOCKS, SETTINGS) == []


def pipeline(name: str, free: int, total: int = 2000, waiting: int = 0, members: int = 2,
             health: Health = Health.HEALTHY) -> ReplicaSnapshot:
    return ReplicaSnapshot(ReplicaId(name), "decode", Role.DECODE, health, num_total_blocks=total,
                           num_free_blocks=free, num_waiting=waiting, num_members=members)


def test_a_pipeline_restores_once_its_blocks_fit_the_members():
    # The members hold 2 x 600 blocks restored; at 50 % that is 600 blocks in use.
    group = DroppedGroup("decode", (ReplicaId("a"), ReplicaId("b")), 0.0, serving_as=ReplicaId("p"),
                         restored_blocks=1200)
    state = BurstState((group,), (("p", 0.35),))
    fits = cluster(pipeline("p", free=1400), replica("c", free=900))
    assert decide_burst(fits, state, WEIGHT_BLOCKS, SETTINGS) == [RestoreParameters("decode", ("a", "b"))]
    too_full = cluster(pipeline("p", free=1300), replica("c", free=900))
    assert decide_burst(too_full, BurstState((group,), (("p", 0.40),)), WEIGHT_BLOCKS, SETTINGS) == []
    rising = BurstState((group,), (("p", 0.2),))
    assert decide_burst(fits, rising, WEIGHT_BLOCKS, SETTINGS) == []
    queued = cluster(pipeline("p", free=1400, waiting=1), replica("c", free=900))
    assert decide_burst(queued, state, WEIGHT_BLOCKS, SETTINGS) == []
    dead = cluster(pipeline("p", free=1400, health=Health.DEAD), replica("c", free=900))
    assert decide_burst(dead, state, WEIGHT_BLOCKS, SETTINGS) == []
    assert decide_burst(fits, BurstState((group,)), WEIGHT_BLOCKS, SETTINGS) == [], "no earlier look: not falling"
    held = BurstSettings(min_dropped_s=10.0)
    assert decide_burst(fits, state, WEIGHT_BLOCKS, held) == [], "dropped 0 s ago"
    later = dataclasses.replace(fits, taken_at_s=10.0)
    assert decide_burst(later, state, WEIGHT_BLOCKS, held) == [RestoreParameters("decode", ("a", "b"))]
    pinned = BurstState((dataclasses.replace(group, pinned=True),), (("p", 0.35),))
    assert decide_burst(fits, pinned, WEIGHT_BLOCKS, SETTINGS) == [], "dropped by hand: restored by hand"


def test_a_pipeline_joins_no_other_group():
    # The pipeline is full and its queue deep, but it is a group already.
    group = DroppedGroup("decode", (ReplicaId("a"), ReplicaId("b")), 0.0, serving_as=ReplicaId("p"),
                         restored_blocks=1200)
    snap = ClusterSnapshot(1, 0.0, (PoolSnapshot("decode", Role.DECODE, 3, (
        ReplicaSnapshot(ReplicaId("p"), "decode", Role.DECODE, Health.HEALTHY, num_total_blocks=2000,
                        num_free_blocks=10, num_waiting=5, num_waiting_blocks=500, num_members=2),
        replica("c", free=10, waiting_blocks=50))),))
    assert [a for a in decide_burst(snap, BurstState((group,)), WEIGHT_BLOCKS, SETTINGS)
            if isinstance(a, DropParameters)] == []
