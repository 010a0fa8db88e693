"""A replica's view of its engine's load, fed by vLLM's stat-logger hook and by the
requests the replica admits. Read by `ReplicaActor.stats()` into a `ReplicaSnapshot`."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

from vllm.config import VllmConfig
from vllm.v1.metrics.loggers import StatLoggerBase
from vllm.v1.metrics.stats import IterationStats, SchedulerStats

from actors.kv.connector_stats import empty_totals
from actors.latency_window import LatencyWindow


@dataclass
class _Admitted:
    num_prompt_tokens: int
    num_blocks: int
    started: bool = False


class EngineLoad:
    """Running/waiting counts and KV usage come from the engine's scheduler stats; the
    demand of requests that have not produced a token yet is tracked here, because vLLM
    does not report the block demand of its waiting queue."""

    def __init__(self, block_size: int, step_window: int = 32, latency_window_s: float = 10.0):
        self.block_size = block_size
        self.num_running = 0
        self.num_waiting = 0
        self.kv_usage_frac = 0.0
        self._step_times_s: deque[float] = deque(maxlen=step_window)
        self._last_step_at_s: float | None = None
        # Seconds the engine spent stepping with requests running (its utilization).
        self.busy_s = 0.0
        self._admitted: dict[str, _Admitted] = {}
        # Cumulative KV connector copy statistics (exports/imports, bytes, seconds).
        self.connector_totals: dict[str, float] = empty_totals()
        self.latencies = LatencyWindow(latency_window_s)
        self.num_generated_tokens = 0
        # Requests the scheduler preempted (KV freed, recomputed later), since the start.
        self.num_preemptions = 0

    def admit(self, request_id: str, num_prompt_tokens: int) -> None:
        self._admitted[request_id] = _Admitted(num_prompt_tokens, -(-num_prompt_tokens // self.block_size))

    def mark_started(self, request_id: str) -> None:
        if request_id in self._admitted:
            self._admitted[request_id].started = True

    def release(self, request_id: str) -> None:
        self._admitted.pop(request_id, None)

    @property
    def num_admitted(self) -> int:
        return len(self._admitted)

    def waiting_demand(self) -> tuple[int, int, int]:
        """(head-of-line blocks, all waiting blocks, queued prompt tokens)."""
        waiting = [a for a in self._admitted.values() if not a.started]
        head = waiting[0].num_blocks if waiting else 0
        return head, sum(a.num_blocks for a in waiting), sum(a.num_prompt_tokens for a in waiting)

    def mean_step_s(self) -> float:
        return sum(self._step_times_s) / len(self._step_times_s) if self._step_times_s else 0.0

    def on_engine_step(self, scheduler_stats: SchedulerStats | None, now_s: float,
                       iteration_stats: IterationStats | None = None) -> None:
        if iteration_stats is not None:
            self.num_generated_tokens += iteration_stats.num_generation_tokens
            self.num_preemptions += iteration_stats.num_preempted_reqs
            self.latencies.add(now_s, iteration_stats.time_to_first_tokens_iter,
                               iteration_stats.inter_token_latencies_iter)
        if scheduler_stats is not None:
            self.num_running = scheduler_stats.num_running_reqs
            self.num_waiting = scheduler_stats.num_waiting_reqs + scheduler_stats.num_skipped_waiting_reqs
            self.kv_usage_frac = scheduler_stats.kv_cache_usage
            for key, value in (scheduler_stats.kv_connector_stats or {}).items():
                if key in self.connector_totals:
                    self.connector_totals[key] += value
        if self._last_step_at_s is not None and self.num_running > 0:
            self._step_times_s.append(now_s - self._last_step_at_s)
            self.busy_s += now_s - self._last_step_at_s
        self._last_step_at_s = now_s

    def stat_logger_factory(self):
        load = self

        class _EngineLoadLogger(StatLoggerBase):
            def __init__(self, vllm_config: VllmConfig, engine_index: int = 0):
                self.engine_index = engine_index

            def record(
                self,
                scheduler_stats: SchedulerStats | None,
                iteration_stats: IterationStats | None,
                mm_cache_stats=None,
                engine_idx: int = 0,
            ) -> None:
                load.on_engine_step(scheduler_stats, time.monotonic(), iteration_stats)

            def log_engine_initialized(self) -> None:
                return None

        return _EngineLoadLogger
