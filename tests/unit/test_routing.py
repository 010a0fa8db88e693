from __future__ import annotations

import random

import pytest

from policies.routing import (
    LoadAwareRouter,
    NoReplicaAvailable,
    RequestDemand,
    RoundRobinRouter,
    RouterState,
    Sent,
    SentTally,
    decode_freeness,
)
from policies.snapshot import Health, ReplicaId, ReplicaSnapshot, Role

DEMAND = RequestDemand(num_prompt_tokens=64, num_blocks=2)


def replica(name: str, role: Role = Role.DECODE, health: Health = Health.HEALTHY, **load) -> ReplicaSnapshot:
    return ReplicaSnapshot(ReplicaId(name), pool=role.value, role=role, health=health, num_total_blocks=100, **load)


def test_round_robin_cycles_over_healthy_replicas_in_id_order():
    replicas = [replica("d-2"), replica("d-0"), replica("d-1", health=Health.DEAD)]
    router, state, chosen = RoundRobinRouter(), RouterState(), []
    for _ in range(4):
        replica_id, state = router.choose(replicas, Role.DECODE, DEMAND, state)
        chosen.append(replica_id)
    assert chosen == ["d-0", "d-2", "d-0", "d-2"]


def test_round_robin_keeps_a_cursor_per_role():
    state = RouterState().advanced(Role.PREFILL)
    assert state.cursor(Role.PREFILL) == 1 and state.cursor(Role.DECODE) == 0


def test_no_healthy_replica_is_a_clear_error():
    with pytest.raises(NoReplicaAvailable, match="no healthy decode replica"):
        LoadAwareRouter().choose([replica("d-0", health=Health.DRAINING)], Role.DECODE, DEMAND, RouterState())


def test_decode_prefers_the_freest_replica():
    busy = replica("d-0", num_free_blocks=50, num_running=10)
    free = replica("d-1", num_free_blocks=40, num_running=1)
    replica_id, _ = LoadAwareRouter().choose([busy, free], Role.DECODE, DEMAND, RouterState())
    assert replica_id == "d-1"


def test_decode_freeness_counts_the_head_of_line_waiting_request():
    queued = replica("d-0", num_free_blocks=60, num_running=1, num_waiting=1, num_head_waiting_blocks=55)
    idle = replica("d-1", num_free_blocks=30, num_running=1)
    assert decode_freeness(queued, DEMAND) < decode_freeness(idle, DEMAND)
    replica_id, _ = LoadAwareRouter().choose([queued, idle], Role.DECODE, DEMAND, RouterState())
    assert replica_id == "d-1"


def test_prefill_prefers_least_queued_prompt_tokens_ties_by_id():
    replicas = [
        replica("p-1", Role.PREFILL, num_queued_prompt_tokens=100),
        replica("p-0", Role.PREFILL, num_queued_prompt_tokens=100),
        replica("p-2", Role.PREFILL, num_queued_prompt_tokens=900),
    ]
    replica_id, _ = LoadAwareRouter().choose(replicas, Role.PREFILL, DEMAND, RouterState())
    assert replica_id == "p-0"


def test_decode_ties_go_to_lowest_id():
    replicas = [replica("d-1", num_free_blocks=10), replica("d-0", num_free_blocks=10)]
    replica_id, _ = LoadAwareRouter().choose(replicas, Role.DECODE, DEMAND, RouterState())
    assert replica_id == "d-0"


def test_load_aware_spreads_a_burst_between_two_snapshots():
    """Requests routed on the same snapshot count against the replica they went to, so a
    burst does not pile onto the replica that looked freest."""
    replicas = [replica("d-0", num_running=2, num_free_blocks=100), replica("d-1", num_running=2, num_free_blocks=100)]
    router, state, chosen = LoadAwareRouter(), RouterState(), []
    for _ in range(6):
        replica_id, state = router.choose(replicas, Role.DECODE, DEMAND, state)
        chosen.append(replica_id)
    assert chosen.count("d-0") == 3 and chosen.count("d-1") == 3
    assert state.on_new_snapshot().sent == {}
    prefill = [replica("p-0", role=Role.PREFILL), replica("p-1", role=Role.PREFILL)]
    first, state = router.choose(prefill, Role.PREFILL, DEMAND, RouterState())
    second, _ = router.choose(prefill, Role.PREFILL, DEMAND, state)
    assert first != second


def test_a_sent_tally_is_a_value_each_version_keeps_its_counts():
    d0, d1 = ReplicaId("d-0"), ReplicaId("d-1")
    one = SentTally().plus(d0, DEMAND)
    two = one.plus(d0, DEMAND)
    branch = one.plus(d1, DEMAND)  # from an older version: its own log from there on
    three = two.plus(d1, DEMAND)
    assert dict(one) == {d0: Sent(1, 64, 2)}
    assert dict(two) == {d0: Sent(2, 128, 4)}
    assert dict(branch) == {d0: Sent(1, 64, 2), d1: Sent(1, 64, 2)}
    assert dict(three) == {d0: Sent(2, 128, 4), d1: Sent(1, 64, 2)}
    assert dict(one) == {d0: Sent(1, 64, 2)} and len(two) == 1


def test_a_long_sent_tally_starts_over_from_its_totals_and_keeps_the_counts():
    tally, ids = SentTally(), [ReplicaId(f"d-{i}") for i in range(3)]
    for n in range(SentTally.MAX_ENTRIES + 10):
        tally = tally.plus(ids[n % 3], RequestDemand(1, 1))
    assert sum(s.num_requests for s in tally.values()) == SentTally.MAX_ENTRIES + 10
    assert tally._length < SentTally.MAX_ENTRIES  # the log holds the totals, not every decision


def _pool(loads: list[int]) -> list:
    return [replica(f"c-{i:04d}", role=Role.COLOCATED, num_queued_prompt_tokens=load) for i, load in enumerate(loads)]


def test_a_large_pool_is_ranked_on_a_sample_that_changes_per_request():
    rng = random.Random(0)
    pool = _pool([rng.randrange(0, 100_000) for _ in range(1000)])
    router, state = LoadAwareRouter(sample_size=16), RouterState()
    ranks = sorted(r.num_queued_prompt_tokens for r in pool)
    chosen = []
    for _ in range(200):
        replica_id, state = router.choose(pool, Role.COLOCATED, DEMAND, state.on_new_snapshot())
        chosen.append(next(r for r in pool if r.replica_id == replica_id))
    # Different samples, so different choices; each the best of 16: in the least loaded
    # tenth of the pool nearly always (1 - 0.9 ** 16 = 81 % per request).
    assert len({r.replica_id for r in chosen}) > 50
    top_tenth = ranks[len(ranks) // 10]
    assert sum(r.num_queued_prompt_tokens <= top_tenth for r in chosen) >= 0.7 * len(chosen)
    # The same state gives the same decision (a pure function of its inputs).
    assert router.choose(pool, Role.COLOCATED, DEMAND, state)[0] == router.choose(pool, Role.COLOCATED, DEMAND, state)[0]


def test_without_sampling_the_whole_pool_is_ranked():
    loads = [50_000] * 1000
    loads[777] = 0
    replica_id, _ = LoadAwareRouter(sample_size=None).choose(_pool(loads), Role.COLOCATED, DEMAND, RouterState())
    assert replica_id == "c-0777"


def test_a_sample_with_no_serving_replica_falls_back_to_the_pool():
    pool = [replica(f"c-{i:04d}", role=Role.COLOCATED, health=Health.DRAINING) for i in range(100)]
    pool[42] = replica("c-0042", role=Role.COLOCATED)
    for seed in range(20):
        replica_id, _ = LoadAwareRouter(sample_size=4).choose(pool, Role.COLOCATED, DEMAND, RouterState(num_routed=seed))
        assert replica_id == "c-0042"
