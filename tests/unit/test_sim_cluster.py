"""The simulated cluster: the real policies route and migrate, nothing is lost."""

from __future__ import annotations

import pytest

from policies.actions import RemoveReplica
from policies.dvfs import ClockMode, ClockPolicySettings
from policies.migration import MigrationSettings
from policies.routing import RoutingPolicyKind
from policies.snapshot import Role
from sim.cluster import Simulation
from sim.config import LINKS, MigrationPlan, SimConfig, SimPool
from sim.cost_model import StepCostModel
from sim.metrics import SLO
from sim.workload import (SimRequest, burst_steps, fixed_lengths, from_trace, gamma_arrivals, read_trace,
                          tiled_trace, trace_lengths)
from tests.unit.sim_fixtures import cost_model

COLOCATED_2 = (SimPool("colocated", Role.COLOCATED, 2),)
ONE_P_ONE_D = (SimPool("prefill", Role.PREFILL, 1), SimPool("decode", Role.DECODE, 1))


def _run(config: SimConfig, requests, cost=None):
    return Simulation(config, cost or cost_model()).run(requests)


def test_every_request_finishes_with_its_output_length():
    requests = gamma_arrivals(20, 2.0, 300, trace_lengths("conv"), seed=1, max_total=2048)
    result = _run(SimConfig(pools=COLOCATED_2), requests, cost_model(num_blocks=2000))
    assert result.summary["num_finished"] == 300
    assert all(r.finish_s >= r.first_token_s >= r.request.arrival_s for r in result.records)


def test_same_seed_same_result():
    requests = gamma_arrivals(30, 4.0, 200, trace_lengths("code"), seed=3, max_total=2048)
    first = _run(SimConfig(pools=COLOCATED_2), requests).summary
    assert _run(SimConfig(pools=COLOCATED_2), requests).summary == first


def test_disaggregated_first_token_comes_from_prefill_and_the_kv_crosses_the_link():
    cost = cost_model()
    request = SimRequest(0, 0.0, 200, 3)
    slow = SimConfig(pools=ONE_P_ONE_D, handoff_link=LINKS["disk"])
    fast = SimConfig(pools=ONE_P_ONE_D, handoff_link=LINKS["nvlink"])
    [slow_record] = _run(slow, [request], cost).records
    [fast_record] = _run(fast, [request], cost).records
    assert slow_record.first_token_s == pytest.approx(cost.step_s(200, 0, 200))
    transfer_gap = LINKS["disk"].seconds(cost.kv_bytes(200)) - LINKS["nvlink"].seconds(cost.kv_bytes(200))
    assert slow_record.finish_s - fast_record.finish_s == pytest.approx(transfer_gap)


def test_round_robin_alternates_and_load_aware_avoids_the_busy_replica():
    # One long request, then short ones: round-robin puts every other one behind it.
    requests = [SimRequest(0, 0.0, 1500, 400)] + [SimRequest(i, 0.5 + 0.3 * i, 100, 10) for i in range(1, 9)]
    rr = _run(SimConfig(pools=COLOCATED_2, routing=RoutingPolicyKind.ROUND_ROBIN), requests)
    la = _run(SimConfig(pools=COLOCATED_2, routing=RoutingPolicyKind.LOAD_AWARE), requests)
    assert la.summary["tpot_s"]["p90"] < rr.summary["tpot_s"]["p90"]


def test_migration_moves_requests_off_a_loaded_replica_and_loses_none():
    """Skewed load under round-robin: the controller's migration policy moves running
    requests to the freer replica; every request still finishes, with its full output."""
    cost = cost_model(num_blocks=600)
    requests = gamma_arrivals(12, 4.0, 400, fixed_lengths(300, 200), seed=7, max_total=2048)
    plan = MigrationPlan(settings=MigrationSettings(source_below=20, destination_above=40, min_gap=10, cooldown_s=2))
    base = SimConfig(pools=(SimPool("decode", Role.COLOCATED, 3),), routing=RoutingPolicyKind.ROUND_ROBIN)
    moved = SimConfig(pools=base.pools, routing=base.routing, migration=plan)
    without = _run(base, requests, cost)
    with_migration = _run(moved, requests, cost)
    assert with_migration.summary["num_finished"] == 400
    assert with_migration.summary["num_migrations"] > 0
    assert with_migration.actions.get("MigrateRequests", 0) >= with_migration.summary["num_migrations"] // 4
    assert without.summary["num_migrations"] == 0


def test_the_azure_trace_replays_scaled_in_time():
    full = from_trace("conv", time_scale=1.0)
    assert len(full) == 19366
    fast = from_trace("conv", time_scale=10.0, duration_s=60.0)
    assert fast and fast[-1].arrival_s <= 60.0
    assert [r.prompt_tokens for r in fast[:50]] == [r.prompt_tokens for r in full[:50]]
    assert fast[10].arrival_s == pytest.approx(full[10].arrival_s / 10.0)


def test_gamma_arrivals_have_the_asked_rate_and_burstiness():
    import numpy as np

    requests = gamma_arrivals(50, 4.0, 20000, fixed_lengths(10, 10), seed=0)
    gaps = np.diff([r.arrival_s for r in requests])
    assert gaps.mean() == pytest.approx(1 / 50, rel=0.05)
    assert gaps.std() / gaps.mean() == pytest.approx(4.0, rel=0.1)


def test_calibrations_load_and_name_their_source():
    model = StepCostModel.load("cpu-tiny")
    assert model.source and model.base_s > 0 and model.num_blocks > 0
    with pytest.raises(FileNotFoundError, match="known"):
        StepCostModel.load("no-such-calibration")


def test_a_request_no_replica_can_hold_ends_the_run_unfinished():
    cost = cost_model(num_blocks=4, block_size=16)
    result = _run(SimConfig(pools=COLOCATED_2), [SimRequest(0, 0.0, 100, 5), SimRequest(1, 0.1, 20, 5)], cost)
    assert result.summary["num_finished"] == 1 and result.summary["slo_attainment"] == 0.5


def test_a_tiled_trace_has_the_asked_average_rate():
    requests = tiled_trace("conv", rate_per_s=50.0, duration_s=600.0, seed=2)
    assert len(requests) / 600.0 == pytest.approx(50.0, rel=0.15)
    assert all(0 <= r.arrival_s < 600.0 for r in requests)
    assert [r.arrival_s for r in requests] == sorted(r.arrival_s for r in requests)


def test_a_tiled_trace_longer_than_the_trace_repeats_its_pattern_to_the_end():
    span = float(read_trace("conv")[0][-1])
    requests = tiled_trace("conv", rate_per_s=20.0, duration_s=2.5 * span, seed=2)
    assert len(requests) / (2.5 * span) == pytest.approx(20.0, rel=0.15)
    last_half_period = [r for r in requests if r.arrival_s >= 2.0 * span]
    assert len(last_half_period) / (0.5 * span) == pytest.approx(20.0, rel=0.25)
    assert max(r.arrival_s for r in requests) < 2.5 * span
    assert [r.arrival_s for r in requests] == sorted(r.arrival_s for r in requests)


def test_a_removed_replica_s_requests_are_replayed_elsewhere_and_finish():
    requests = [SimRequest(i, 0.01 * i, 200, 50) for i in range(20)]
    sim = Simulation(SimConfig(pools=COLOCATED_2), cost_model())
    doomed = sorted(sim.replicas)[0]
    sim.schedule(0.3, RemoveReplica(doomed, "colocated", "test"))
    result = sim.run(requests)
    assert doomed not in sim.replicas
    # The repair policy brings the pool back to its size, as on the real controller.
    assert result.actions == {"RemoveReplica": 1, "StartReplica": 1} and len(sim.replicas) == 2
    assert result.summary["num_finished"] == 20
    assert sum(1 for r in result.records if r.first_token_s < 0.3 < r.finish_s) > 0  # some were cut off


def test_burst_steps_change_the_arrival_rate_step_by_step():
    requests = burst_steps([(100.0, 2.0), (50.0, 40.0), (100.0, 2.0)], fixed_lengths(10, 10), seed=4)
    counts = [sum(1 for r in requests if lo <= r.arrival_s < hi) for lo, hi in ((0, 100), (100, 150), (150, 250))]
    assert counts[0] == pytest.approx(200, rel=0.25) and counts[2] == pytest.approx(200, rel=0.25)
    assert counts[1] == pytest.approx(2000, rel=0.1)
    assert [r.request_id for r in requests] == list(range(len(requests)))


def test_energy_is_idle_power_over_the_run_plus_dynamic_power_while_stepping():
    cost = cost_model()
    sim = Simulation(SimConfig(pools=(SimPool("colocated", Role.COLOCATED, 1),)), cost)
    result = sim.run([SimRequest(0, 0.0, 100, 20)])
    [replica] = sim.replicas.values()
    curve = sim.device
    energy = result.summary["energy"]
    assert energy["joules"] == pytest.approx(curve.idle_w * result.simulated_s + (curve.max_w - curve.idle_w) * replica.busy_s)
    assert energy["joules_per_output_token"] == pytest.approx(energy["joules"] / 20)


def test_a_lower_decode_clock_stretches_decode_little_and_saves_energy():
    cost = cost_model()
    requests = gamma_arrivals(2, 1.0, 40, fixed_lengths(200, 50), seed=2)
    at_max = _run(SimConfig(pools=ONE_P_ONE_D), requests, cost).summary
    slow_decode = (SimPool("prefill", Role.PREFILL, 1), SimPool("decode", Role.DECODE, 1, clock_mhz=705))
    lowered = _run(SimConfig(pools=slow_decode), requests, cost).summary
    # Half the clock: a decode step takes 1.25x (its compute-bound share is 0.25); TPOT a
    # little more, as requests stay longer and batches grow. A prefill would take 1.9x.
    assert 1.0 < lowered["tpot_s"]["p50"] / at_max["tpot_s"]["p50"] < 1.5
    assert lowered["energy"]["joules_per_output_token"] < at_max["energy"]["joules_per_output_token"]


def test_the_clock_policy_lowers_clocks_under_light_load_within_the_slo():
    cost = cost_model()
    requests = gamma_arrivals(2, 1.0, 400, fixed_lengths(200, 50), seed=3)
    slo = SLO(ttft_s=1.0, tpot_s=0.05)
    at_max = _run(SimConfig(pools=ONE_P_ONE_D, slo=slo), requests, cost).summary
    sim = Simulation(SimConfig(pools=ONE_P_ONE_D, slo=slo, clock_mode=ClockMode.PER_POOL,
                               clock_policy=ClockPolicySettings(hold_s=2.0)), cost)
    steered = sim.run(requests).summary
    assert sim.clocks.chosen["decode"] < 1410 and sim.clocks.chosen["prefill"] < 1410
    assert steered["energy"]["joules_per_output_token"] < 0.8 * at_max["energy"]["joules_per_output_token"]
    assert steered["slo_attainment"] >= 0.99 and at_max["slo_attainment"] >= 0.99
