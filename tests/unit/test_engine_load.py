"""EngineLoad: a replica's load as vLLM's stat-logger hook reports it."""

from vllm.v1.metrics.stats import IterationStats, SchedulerStats

from actors.engine_load import EngineLoad


def _iteration(generated: int, preempted: int) -> IterationStats:
    stats = IterationStats()
    stats.num_generation_tokens = generated
    stats.num_preempted_reqs = preempted
    return stats


def test_preemptions_and_generated_tokens_accumulate_over_steps():
    load = EngineLoad(block_size=32)
    load.on_engine_step(SchedulerStats(num_running_reqs=3, num_waiting_reqs=1, kv_cache_usage=0.97), 1.0,
                        _iteration(generated=3, preempted=2))
    load.on_engine_step(SchedulerStats(num_running_reqs=2, num_waiting_reqs=2, kv_cache_usage=0.9), 1.5,
                        _iteration(generated=2, preempted=1))
    assert load.num_preemptions == 3
    assert load.num_generated_tokens == 5
    # Counts are the latest step's, not sums.
    assert (load.num_running, load.num_waiting, load.kv_usage_frac) == (2, 2, 0.9)
    assert load.busy_s == 0.5


def test_a_step_without_iteration_stats_leaves_the_counters_alone():
    load = EngineLoad(block_size=32)
    load.on_engine_step(SchedulerStats(num_running_reqs=1), 1.0, _iteration(generated=1, preempted=1))
    load.on_engine_step(SchedulerStats(num_running_reqs=1), 2.0, None)
    assert (load.num_preemptions, load.num_generated_tokens) == (1, 1)
