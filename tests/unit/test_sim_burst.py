"""Parameter dropping in the simulator: a burst that overflows the KV cache makes a group
drop (capacity grows by the freed weights), the queue drains faster than without, and the
group restores when the burst is over; no request is lost."""

from __future__ import annotations

from dataclasses import replace

import pytest

from policies.snapshot import ReplicaId, Role
from sim.cluster import Simulation
from sim.config import LINKS, BurstPlan, SimConfig, SimPool
from sim.replica import SimReplica
from sim.sequence import RequestRecord, SimSequence
from sim.workload import SimRequest, burst_steps, fixed_lengths
from tests.unit.sim_fixtures import cost_model

# 2 replicas of 200 blocks (3,200 tokens); the weights would hold 300 blocks each. Decode
# is memory-bound (a sequence adds 0.2 ms to a step), as on a GPU.
COST = replace(cost_model(num_blocks=200), weight_bytes=300 * 16 * 1000, decode_seq_s=0.0002,
               context_token_s=1e-7)
POOLS = (SimPool("colocated", Role.COLOCATED, 2),)
# 1 req/s of 200 + 300 tokens fits; 6 req/s for 10 s overflows the KV cache.
BURST = burst_steps([(10.0, 1.0), (10.0, 6.0), (20.0, 1.0)], fixed_lengths(200, 300), seed=4)


def _run(burst: BurstPlan | None):
    sim = Simulation(SimConfig(pools=POOLS, burst=burst), COST)
    return sim, sim.run(BURST)


def test_a_burst_drops_parameters_then_restores_and_loses_no_request():
    sim, result = _run(BurstPlan())
    assert result.actions["dropped"] >= 1 and result.actions["restored"] >= 1
    assert result.summary["num_finished"] == len(BURST)
    drops = [e for e in sim.burst.events if e[1] == "drop"]
    assert drops and all(len(members) == 2 for _, _, members in drops)
    # Restored: every replica back to its own blocks.
    assert all(r.num_blocks == 200 and r.pipeline_hop_s is None for r in sim.replicas.values())


def test_a_drop_adds_the_freed_weights_as_kv_blocks():
    sim = Simulation(SimConfig(pools=POOLS, burst=BurstPlan()), COST)
    sim.run(BURST, until_s=15.0)
    assert sim.burst.weight_blocks == 300
    grouped = [r for r in sim.replicas.values() if r.pipeline_hop_s is not None]
    assert len(grouped) == 2
    # A group of 2 frees half of each member's weights: 300 x (2 - 1) blocks in all.
    assert sum(r.num_blocks for r in grouped) == 2 * 200 + 300


def test_dropping_cuts_the_tail_ttft_of_the_burst():
    _, without = _run(None)
    _, with_drop = _run(BurstPlan())
    assert with_drop.summary["ttft_s"]["p99"] < 0.2 * without.summary["ttft_s"]["p99"]


def test_offloaded_preemptions_keep_their_kv_and_pay_the_copies():
    recompute = Simulation(SimConfig(pools=POOLS), COST)
    recomputed = recompute.run(BURST)
    offload = Simulation(SimConfig(pools=POOLS, offload_link=LINKS["pcie"]), COST)
    offloaded = offload.run(BURST)
    assert offloaded.summary["num_finished"] == recomputed.summary["num_finished"] == len(BURST)
    assert sum(r.num_preemptions for r in offloaded.records) > 0


def test_an_offloaded_preemption_keeps_the_computed_tokens():
    replica = SimReplica(ReplicaId("r"), "colocated", Role.COLOCATED, COST)
    replica.offload_link = LINKS["pcie"]
    seq = SimSequence.fresh(RequestRecord(SimRequest(0, 0.0, 100, 10)))
    replica.add(seq)
    replica.start_step(0.0)
    replica.finish_step()
    assert seq.num_computed == 100 and seq.num_generated == 1
    replica._preempt(seq)
    assert seq.offloaded and seq.num_computed == 100 and replica.free_blocks == 200
    ends = replica.start_step(1.0)
    copy_s = LINKS["pcie"].seconds(COST.kv_bytes(100))
    # Out to host memory at the preemption, back in at the readmission; no prefill again.
    assert not seq.offloaded and ends == pytest.approx(1.0 + COST.step_s(0, 1, 101) + 2 * copy_s)


def test_pipeline_steps_are_slower():
    sim = Simulation(SimConfig(pools=POOLS, burst=BurstPlan(pipeline_factor=1.5)), COST)
    [a, _] = sim.replicas.values()
    plain = a._as_pipeline(0.1, 8, 1)
    a.pipeline_factor, a.pipeline_hop_s = 1.5, lambda tokens: 0.001
    assert plain == 0.1 and a._as_pipeline(0.1, 8, 3) == pytest.approx(0.15 + 0.003)
