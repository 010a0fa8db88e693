"""The simulated replica: vLLM's scheduling rules, timed by the cost model."""

from __future__ import annotations

import pytest

from policies.snapshot import ReplicaId, Role
from sim.cost_model import StepSample, fit_coefficients
from sim.metrics import LogHistogram
from sim.replica import SimReplica
from sim.sequence import RequestRecord, SimSequence
from sim.workload import SimRequest
from tests.unit.sim_fixtures import cost_model


def _seq(i: int, prompt: int, output: int, arrival: float = 0.0) -> SimSequence:
    return SimSequence.fresh(RequestRecord(SimRequest(i, arrival, prompt, output)))


def _drain(replica: SimReplica, now: float = 0.0) -> list[SimSequence]:
    finished = []
    ends = replica.start_step(now)
    while ends is not None:
        finished += replica.finish_step().finished
        ends = replica.start_step(ends) if replica.has_work else None
    return finished


def test_one_request_takes_a_prefill_step_then_decode_steps():
    cost = cost_model()
    replica = SimReplica(ReplicaId("r"), "p", Role.COLOCATED, cost)
    seq = _seq(0, prompt=100, output=5)
    replica.add(seq)
    [done] = _drain(replica)
    prefill = cost.step_s(100, 0, 100)
    decodes = sum(cost.step_s(0, 1, 100 + k) for k in range(1, 5))
    assert done.record.first_token_s == pytest.approx(prefill)
    assert done.record.finish_s == pytest.approx(prefill + decodes)
    assert replica.free_blocks == cost.num_blocks


def test_long_prompts_are_prefilled_in_chunks():
    cost = cost_model(max_num_batched_tokens=128)
    replica = SimReplica(ReplicaId("r"), "p", Role.COLOCATED, cost)
    replica.add(_seq(0, prompt=300, output=1))
    [done] = _drain(replica)
    chunks = [(128, 128), (128, 256), (44, 300)]
    assert done.record.first_token_s == pytest.approx(sum(cost.step_s(n, 0, ctx) for n, ctx in chunks))


@pytest.mark.parametrize("arrivals", [[0.0, 0.0, 0.0], [0.0, 0.05, 0.31, 0.32, 1.7]])
def test_decode_runs_give_the_same_times_as_single_steps(arrivals):
    """A run of decode steps simulated as one event equals stepping one by one, also when
    arrivals cut runs short."""
    results, histograms = [], []
    for max_run in (None, 1):
        itl = LogHistogram()
        cost = cost_model()
        replica = SimReplica(ReplicaId("r"), "p", Role.COLOCATED, cost, max_run_steps=max_run)
        seqs = [_seq(i, 40 + 30 * i, 20 + 7 * i, at) for i, at in enumerate(arrivals)]
        events = sorted((s.record.request.arrival_s, i) for i, s in enumerate(seqs))
        now, ends, pending = 0.0, None, list(events)
        while pending or replica.has_work:
            next_arrival = pending[0][0] if pending else float("inf")
            if ends is not None and ends <= next_arrival:
                now = ends
                for run in replica.finish_step().decode_runs:
                    itl.add_series(run.first_s, run.growth_s, run.num_steps, run.num_tokens)
                ends = replica.start_step(now) if replica.has_work else None
            else:
                now, i = pending.pop(0)
                replica.add(seqs[i])
                ends = replica.start_step(now) if ends is None else replica.cut_short(now)
        results.append([t for s in seqs for t in (s.record.first_token_s, s.record.finish_s)])
        histograms.append(itl.counts)
    assert results[0] == pytest.approx(results[1], rel=1e-9)
    # The same inter-token latencies, token for token.
    assert histograms[0].sum() == histograms[1].sum() == sum(s.record.request.output_tokens - 1 for s in seqs)
    assert (histograms[0] == histograms[1]).all()


@pytest.mark.parametrize("first, growth, count", [(0.02, 1e-5, 500), (0.02, 0.0, 7), (3e-6, 2e-6, 40), (0.5, 0.01, 1)])
def test_a_series_lands_in_the_bins_of_its_values(first, growth, count):
    one_by_one, series = LogHistogram(), LogHistogram()
    for k in range(count):
        one_by_one.add(first + k * growth, 3)
    series.add_series(first, growth, count, 3)
    assert series.counts.sum() == one_by_one.counts.sum() == 3 * count
    # Values within rounding of a bin edge may land one bin over; nothing else moves.
    assert abs(series.counts - one_by_one.counts).sum() <= 2 * 3


def test_a_full_kv_pool_preempts_and_recomputes_and_every_request_finishes():
    cost = cost_model(num_blocks=24, block_size=16)
    replica = SimReplica(ReplicaId("r"), "p", Role.COLOCATED, cost)
    seqs = [_seq(i, prompt=60, output=80) for i in range(4)]
    for seq in seqs:
        replica.add(seq)
    finished = _drain(replica)
    assert len(finished) == 4
    assert sum(s.record.num_preemptions for s in seqs) > 0
    assert all(s.num_generated == 80 for s in seqs)
    assert replica.free_blocks == cost.num_blocks


def test_prefill_replicas_hand_over_after_the_first_token():
    replica = SimReplica(ReplicaId("r"), "p", Role.PREFILL, cost_model())
    seq = _seq(0, prompt=64, output=10)
    replica.add(seq)
    replica.start_step(0.0)
    outcome = replica.finish_step()
    assert outcome.handed_off == [seq] and seq.num_generated == 1 and seq.record.first_token_s > 0
    assert not replica.has_work and replica.free_blocks == replica.cost.num_blocks


def test_snapshot_counts_queue_and_head_of_line_demand():
    cost = cost_model(num_blocks=10, block_size=16)
    replica = SimReplica(ReplicaId("r"), "p", Role.COLOCATED, cost)
    replica.add(_seq(0, prompt=100, output=50))
    replica.add(_seq(1, prompt=100, output=50))
    replica.start_step(0.0)
    snap = replica.snapshot(0.0)
    assert (snap.num_running, snap.num_waiting) == (1, 1)
    assert snap.num_head_waiting_blocks == 7 and snap.num_free_blocks == 3


def test_the_fit_recovers_known_coefficients():
    cost = cost_model()
    points = [(p, d, c) for p in (0, 64, 512) for d in (0, 1, 8, 32) for c in (100, 1000, 5000) if p or d]
    samples = [StepSample(p, d, c, cost.step_s(p, d, c)) for p, d, c in points]
    assert fit_coefficients(samples) == pytest.approx(
        (cost.base_s, cost.prefill_token_s, cost.decode_seq_s, cost.context_token_s), rel=1e-6)
    assert fit_coefficients(samples, relative=True) == pytest.approx(
        (cost.base_s, cost.prefill_token_s, cost.decode_seq_s, cost.context_token_s), rel=1e-6)


def test_the_relative_fit_weighs_short_steps_as_much_as_long_ones():
    """Two regimes no single line fits: the relative fit keeps the short steps' percent
    errors small, where the absolute fit sacrifices them to the long steps."""
    samples = [StepSample(0, d, 0, 0.010 + 0.001 * d) for d in (1, 2, 3)]
    samples += [StepSample(0, d, 0, 0.002 * d) for d in (64, 96, 128)]

    def worst_short_error(coefficients):
        base, _, per_seq, _ = coefficients
        return max(abs(base + per_seq * s.decode_seqs - s.step_s) / s.step_s for s in samples[:3])

    assert worst_short_error(fit_coefficients(samples, relative=True)) < worst_short_error(fit_coefficients(samples))


def test_a_lower_clock_stretches_the_compute_bound_share():
    cost = cost_model()
    prefill = cost.step_s(100, 0, 0) - cost.step_s(0, 0, 0)
    rest = cost.step_s(0, 4, 1000)
    # Half the clock: the prefill part 0.1 + 0.9 * 2, the rest 0.75 + 0.25 * 2.
    assert cost.step_s(100, 4, 1000, clock_frac=0.5) == pytest.approx(prefill * 1.9 + rest * 1.25)
    assert cost.decode_run_s(3, 4, 1000) == pytest.approx(sum(cost.step_s(0, 4, 1000 + 4 * (k + 1)) for k in range(3)))


def test_calibration_keeps_only_decode_samples_whose_batch_fit_the_kv_cache():
    from sim.cluster_calibration_fit import OUTPUT_TOKENS, fits_the_cache

    def sample(batch: int, context: int) -> StepSample:  # as sim.calibrate_cluster records one
        return StepSample(0, batch, batch * (context + OUTPUT_TOKENS // 2), 0.05)

    capacity = 16 * (1024 + OUTPUT_TOKENS)
    assert fits_the_cache(sample(16, 1024), capacity)
    assert not fits_the_cache(sample(17, 1024), capacity)
    assert fits_the_cache(sample(32, 64), capacity)
