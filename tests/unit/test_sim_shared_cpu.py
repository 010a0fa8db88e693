"""What the cluster calibration measures beyond a step's compute, and how the simulator
charges it: prefill attention pairs, the serving path's CPU per request, new step sizes,
admission into a busy replica, and a shared machine's varying speed."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest

from policies.snapshot import ReplicaId, Role
from sim.cluster import Simulation
from sim.cluster_calibration_fit import (
    INTERFERENCE_CONTEXT,
    INTERFERENCE_SHORT_PROMPT,
    INTERFERENCE_STEPS,
    InterferenceSample,
    Samples,
    busy_admission_s,
    new_shape_s,
    request_step_s,
    speed_noise,
    whole_batch_step_s,
)
from sim.config import SimConfig, SimPool
from sim.cost_model import StepSample, prefill_pairs
from sim.replica import SimReplica
from sim.sequence import RequestRecord, SimSequence
from sim.workload import SimRequest
from tests.unit.sim_fixtures import cost_model


def _seq(i: int, prompt: int, output: int, arrival: float = 0.0) -> SimSequence:
    return SimSequence.fresh(RequestRecord(SimRequest(i, arrival, prompt, output)))


def _first_token_s(replica: SimReplica, seq: SimSequence, now: float = 0.0) -> float:
    replica.add(seq)
    ends = replica.start_step(now)
    while ends is not None and seq.record.first_token_s < 0:
        replica.finish_step()
        ends = replica.start_step(ends) if replica.has_work else None
    return seq.record.first_token_s - now


def test_prefill_attention_pairs_count_each_token_reading_the_ones_before_it():
    assert prefill_pairs(4, 0) == 1 + 2 + 3 + 4
    assert prefill_pairs(2, 3) == 4 + 5
    cost = replace(cost_model(), prefill_pair_s=1e-6)
    replica = SimReplica(ReplicaId("r"), "p", Role.COLOCATED, cost)
    assert _first_token_s(replica, _seq(0, 100, 1)) == pytest.approx(cost.step_s(100, 0, 100) + 1e-6 * 5050)
    assert cost.prefill_s(100) == pytest.approx(cost.step_s(100, 0, 100) + 1e-6 * 5050)


def test_a_request_s_serving_cpu_lands_on_the_step_of_its_first_chunk_only():
    cost = replace(cost_model(max_num_batched_tokens=128), request_step_s=0.005)
    replica = SimReplica(ReplicaId("r"), "p", Role.COLOCATED, cost)
    chunks = sum(cost.step_s(n, 0, ctx) for n, ctx in [(128, 128), (128, 256), (44, 300)])
    assert _first_token_s(replica, _seq(0, 300, 1)) == pytest.approx(chunks + 0.005)


def test_a_step_size_the_engine_has_not_run_costs_more_once():
    cost = replace(cost_model(), new_shape_s=0.003)
    replica = SimReplica(ReplicaId("r"), "p", Role.COLOCATED, cost)
    assert _first_token_s(replica, _seq(0, 100, 1)) == pytest.approx(cost.step_s(100, 0, 100) + 0.003)
    assert _first_token_s(replica, _seq(1, 100, 1), now=1.0) == pytest.approx(cost.step_s(100, 0, 100))
    assert _first_token_s(replica, _seq(2, 101, 1), now=2.0) == pytest.approx(cost.step_s(101, 0, 101) + 0.003)


def _second_request_ttft(tmp_path, busy_admission: float) -> float:
    path = tmp_path / f"busy-{busy_admission}.yaml"
    replace(cost_model(), busy_admission_s=busy_admission).save(path)
    config = SimConfig(pools=(SimPool("colocated", Role.COLOCATED, 1),), calibration=str(path))
    result = Simulation(config).run([SimRequest(0, 0.0, 50, 200), SimRequest(1, 0.5, 50, 5)])
    return next(r for r in result.records if r.request.request_id == 1).ttft_s


def test_a_request_joins_a_busy_replica_later_per_running_request(tmp_path):
    cost = cost_model()
    added = _second_request_ttft(tmp_path, 0.02) - _second_request_ttft(tmp_path, 0.0)
    # One request running: 20 ms later, give or take where the step boundaries fall.
    assert 0.02 - cost.step_s(0, 1, 300) <= added <= 0.02 + cost.step_s(0, 1, 300)


def _step_times(replica_id: str, noise_sd: float) -> list[float]:
    cost = replace(cost_model(), speed_noise_sd=noise_sd, speed_noise_period_s=0.05)
    replica = SimReplica(ReplicaId(replica_id), "p", Role.COLOCATED, cost, max_run_steps=1)
    replica.add(_seq(0, 10, 2000))
    times, now = [], 0.0
    while replica.has_work:
        ends = replica.start_step(now)
        assert ends is not None
        replica.finish_step()
        times.append((ends - now) / cost.step_s(0, 1, 10))
        now = ends
    return times[1:200]  # decode steps, context growing little


def test_a_shared_machine_s_speed_varies_reproducibly_per_replica_around_the_cost():
    assert _step_times("a", 0.0) == pytest.approx([1.0] * 199, rel=0.03)
    noisy = _step_times("a", 0.2)
    assert noisy == _step_times("a", 0.2)
    assert noisy != _step_times("b", 0.2)
    assert sum(noisy) / len(noisy) == pytest.approx(1.0, abs=0.08)
    assert 0.1 < math.sqrt(sum(math.log(x) ** 2 for x in noisy) / len(noisy)) < 0.3


def test_the_decode_step_is_timed_while_the_whole_batch_decodes():
    # A's tokens before B's first one share steps with B's prefill; after A's last, B runs alone.
    a = [0.0, 0.5, 1.8, 3.0, 4.0, 5.0, 6.0]
    b = [3.0, 4.0, 5.0, 6.0, 6.2, 6.4]
    assert whole_batch_step_s([a, b]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="never decoded whole"):
        whole_batch_step_s([[0.0, 1.0], [2.0, 3.0]])


def test_interference_gives_the_serving_cpu_per_request_beyond_the_short_s_own_chunk():
    cost = cost_model()
    # 20 shorts per second made each decode step go from 10.0 to 12.5 ms: 10 ms lost per short.
    sample = InterferenceSample(1, 20.0, 0.010, 0.0125, 0.0)
    assert sample.seconds_per_request() == pytest.approx(0.01)
    short = INTERFERENCE_SHORT_PROMPT
    context = INTERFERENCE_CONTEXT
    chunk = cost.step_s(short, 1, context + short, prefill_pairs=prefill_pairs(short, 0)) - cost.step_s(0, 1, context)
    assert request_step_s(cost, [sample]) == pytest.approx(0.01 - chunk)
    assert request_step_s(cost, []) == 0.0


def test_busy_admission_is_the_shorts_unexplained_wait_per_decoder():
    cost = replace(cost_model(), request_overhead_s=0.002, request_step_s=0.001)
    short = INTERFERENCE_SHORT_PROMPT

    def sample(decoders: int, extra: float) -> InterferenceSample:
        during = 0.012
        own = cost.step_s(short, decoders, decoders * (INTERFERENCE_CONTEXT + INTERFERENCE_STEPS // 2) + short,
                          prefill_pairs=prefill_pairs(short, 0)) + cost.request_step_s
        return InterferenceSample(decoders, 50.0, 0.01, during, cost.request_overhead_s + during / 2 + own + extra)

    assert busy_admission_s(cost, [sample(1, 0.003), sample(4, 0.012)]) == pytest.approx(0.003)
    assert busy_admission_s(cost, [sample(1, -0.001)]) == 0.0
    assert busy_admission_s(cost, []) == 0.0


def test_speed_noise_is_the_pooled_spread_of_repeated_batches():
    decode = [StepSample(0, 1, 100, 0.01 * math.exp(d)) for d in (-0.1, 0.1)]
    decode += [StepSample(0, 4, 400, 0.02 * math.exp(d)) for d in (-0.1, 0.1)]
    decode += [StepSample(0, 8, 800, 0.03)]  # no repeat: no spread to see
    sd, period = speed_noise(decode)
    assert sd == pytest.approx(math.sqrt(4 * 0.01 / 2))
    assert period > 0
    assert speed_noise(decode[-1:]) == (0.0, 1.0)


def test_calibration_samples_round_trip_and_older_files_load(tmp_path):
    samples = Samples([StepSample(0, 2, 200, 0.01)], [(32, 0.008)], [InterferenceSample(4, 60.0, 0.01, 0.012, 0.011)],
                      [(0.012, 0.009)], {"block_size": 32, "num_blocks": 100})
    path = tmp_path / "samples.json"
    samples.save(path)
    assert Samples.load(path) == samples
    older = json.loads(path.read_text())
    del older["interference"], older["new_shape"]
    path.write_text(json.dumps(older))
    assert Samples.load(path) == replace(samples, interference=[], new_shape=[])


def test_a_new_step_size_s_cost_is_the_median_extra_of_its_first_run():
    assert new_shape_s([(0.012, 0.009), (0.013, 0.009), (0.010, 0.009)]) == pytest.approx(0.003)
    assert new_shape_s([(0.009, 0.010)]) == 0.0
    assert new_shape_s([]) == 0.0
