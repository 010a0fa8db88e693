"""A simulated vLLM replica: a paged KV pool, continuous batching with chunked prefill
and recompute preemption, as vLLM v1's scheduler does it, timed by a `StepCostModel`.

A run of decode-only steps with nothing to admit is simulated as one "macro-step" (its
length is known: until the first sequence finishes or the blocks run out), and cut short
at the next step boundary when something arrives. That is what makes an hour of a
thousand replicas affordable; the result is the same as stepping one by one.
"""

from __future__ import annotations

import math
import random
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from actors.latency_window import LatencyWindow
from policies.snapshot import Health, ReplicaId, ReplicaSnapshot, Role
from sim.config import TransferLink
from sim.cost_model import StepCostModel, prefill_pairs
from sim.sequence import SimSequence


@dataclass(frozen=True, slots=True)
class DecodeRun:
    """`num_steps` decode steps, step k taking first_s + k * growth_s, each producing a
    token for `num_tokens` sequences."""

    first_s: float
    growth_s: float
    num_steps: int
    num_tokens: int

    def step_durations(self) -> list[float]:
        return [self.first_s + k * self.growth_s for k in range(self.num_steps)]


@dataclass
class StepOutcome:
    """What a (macro-)step produced, for the simulation to act on."""

    finished: list[SimSequence] = field(default_factory=list)
    # Prefill replicas: sequences whose prompt is done, to hand to a decode replica.
    handed_off: list[SimSequence] = field(default_factory=list)
    # Sequences a migration stopped here.
    stopped: list[SimSequence] = field(default_factory=list)
    # The decode steps, for inter-token latency: runs of steps whose lengths grow evenly.
    decode_runs: list[DecodeRun] = field(default_factory=list)
    # Time to first token of the sequences whose first token came in this step.
    ttfts: list[float] = field(default_factory=list)


class SimReplica:
    def __init__(self, replica_id: ReplicaId, pool: str, role: Role, cost: StepCostModel, clock_frac: float = 1.0,
                 max_run_steps: int | None = None, dynamic_w: float = 0.0, clock_mhz: int = 0,
                 latencies: LatencyWindow | None = None):
        self.replica_id = replica_id
        self.max_run_steps = max_run_steps
        self.pool = pool
        self.role = role
        self.cost = cost
        self.clock_frac = clock_frac
        # Power above idle while stepping, at the replica's clock; its integral over steps.
        self.dynamic_w = dynamic_w
        self.dynamic_j = 0.0
        self.clock_mhz = clock_mhz
        # Recent TTFT and inter-token latencies at the current clock, for the clock policy.
        self.latencies = latencies
        self.health = Health.HEALTHY
        self.waiting: deque[SimSequence] = deque()
        self.running: list[SimSequence] = []
        self.num_blocks = cost.num_blocks
        self.free_blocks = cost.num_blocks
        # Step sizes (scheduled tokens) the engine has run, when a new one costs more.
        self._shapes_run: set[int] = set()
        # The machine's speed over the current noise period (see StepCostModel.speed_noise_sd),
        # drawn from a stream seeded by the replica's id, so a run is reproducible.
        self._speed = 1.0
        self._speed_period = -1
        self._speed_draws = random.Random(zlib.crc32(replica_id.encode())) if cost.speed_noise_sd else None
        # Serving as a pipeline stage after a parameter drop: steps stretch by
        # `pipeline_factor` (bubbles) plus hidden-state hops, set by the simulation.
        self.pipeline_factor = 1.0
        self.pipeline_hop_s: Callable[[int], float] | None = None  # tokens in a step -> seconds of hops
        # KV offload (swap) preemption instead of recompute: preempted KV goes to host
        # memory over this link and comes back when readmitted; the copies block the step.
        self.offload_link: TransferLink | None = None
        self._offload_copy_s = 0.0
        # The (macro-)step in progress: its sequences (each one's `chunk` is what it
        # computes), start, length in steps.
        self._batch: list[SimSequence] = []
        # A migration asked a running sequence to stop at the next step boundary.
        self._stop_requested = False
        self._step_started_s = 0.0
        self._num_steps = 0
        self._context_at_start = 0
        self.step_ends_s: float | None = None
        # Bumped whenever the step in progress changes, so stale end events are ignored.
        self.version = 0
        self.busy_s = 0.0
        self._recent_step_s = 0.0

    # ---- the simulation's interface ----
    def add(self, sequence: SimSequence) -> None:
        self.waiting.append(sequence)

    @property
    def idle(self) -> bool:
        return self.step_ends_s is None

    @property
    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    def start_step(self, now_s: float) -> float | None:
        """Plans the next (macro-)step from `now_s`; returns when it ends (None: nothing to do)."""
        self._batch, admission_stuck = self._schedule()
        if not self._batch:
            self.step_ends_s = None
            return None
        prefill_tokens = context = num_prefilling = num_starting = 0
        pairs = 0.0
        for seq in self._batch:
            context += seq.num_computed + seq.chunk
            if seq.num_computed < seq.target_tokens:
                prefill_tokens += seq.chunk
                pairs += prefill_pairs(seq.chunk, seq.num_computed)
                num_prefilling += 1
                num_starting += seq.num_computed == 0
        num_decoding = len(self._batch) - num_prefilling
        new_shape = bool(self.cost.new_shape_s) and prefill_tokens + num_decoding not in self._shapes_run
        if self._speed_draws is not None:
            self._draw_speed(now_s)
        num_steps = 1
        if not num_prefilling and (not self.waiting or admission_stuck) and not self._offload_copy_s and not new_shape:
            num_steps = self._decode_run_length()
            if self._speed_draws is not None:
                # A run takes the speed of the period it starts in, so it ends there.
                left_s = (self._speed_period + 1) * self.cost.speed_noise_period_s - now_s
                step_s = self.cost.step_s(0, len(self._batch), context, self.clock_frac) * self._speed
                num_steps = max(1, min(num_steps, int(left_s / step_s)))
        self._step_started_s = now_s
        self._num_steps = num_steps
        self._context_at_start = context - len(self._batch)
        if num_steps == 1:
            duration = self.cost.step_s(prefill_tokens, num_decoding, context, self.clock_frac, pairs)
            duration = self._as_pipeline(duration, prefill_tokens + num_decoding, 1)
            duration += self.cost.request_step_s * num_starting
            if new_shape:
                self._shapes_run.add(prefill_tokens + num_decoding)
                duration += self.cost.new_shape_s
            duration *= self._speed
        else:
            duration = self._decode_run_s(num_steps)
            self._reserve_blocks(num_steps)
        duration += self._offload_copy_s
        self._offload_copy_s = 0.0
        self.step_ends_s = now_s + duration
        self.version += 1
        return self.step_ends_s

    def cut_short(self, now_s: float) -> float | None:
        """Ends the macro-step in progress at the first step boundary at or after `now_s`
        (something arrived that the next step may take). Returns the new end time."""
        if self.step_ends_s is None or self._num_steps == 1:
            return self.step_ends_s
        elapsed = now_s - self._step_started_s
        lo, hi = 1, self._num_steps
        while lo < hi:
            mid = (lo + hi) // 2
            if self._decode_run_s(mid) >= elapsed:
                hi = mid
            else:
                lo = mid + 1
        if lo < self._num_steps:
            self._release_blocks(lo)
            self._num_steps = lo
            self.step_ends_s = self._step_started_s + self._decode_run_s(lo)
            self.version += 1
        return self.step_ends_s

    def finish_step(self) -> StepOutcome:
        """Applies the (macro-)step that just ended."""
        outcome = StepOutcome()
        ended_s = self.step_ends_s
        assert ended_s is not None, "no step in progress"
        duration = ended_s - self._step_started_s
        self.busy_s += duration
        self.dynamic_j += duration * self.dynamic_w
        self._recent_step_s = duration / self._num_steps
        n = self._num_steps
        if n > 1:
            outcome.decode_runs.append(DecodeRun(*self._decode_step_series(), n, len(self._batch)))
        else:
            decoding = sum(1 for seq in self._batch if not seq.in_prefill)
            if decoding:
                outcome.decode_runs.append(DecodeRun(duration, 0.0, 1, decoding))
        advance = n > 1
        for seq in self._batch:
            was_prefilling = seq.num_computed < seq.target_tokens
            seq.num_computed += n if advance else seq.chunk
            if seq.num_computed < seq.target_tokens:
                continue  # a chunk of a longer prompt
            # Read the record (a pointer away, rarely in cache) only for a first token.
            if seq.num_generated == 0 and seq.record.first_token_s < 0:
                seq.record.first_token_s = ended_s
                outcome.ttfts.append(ended_s - seq.record.request.arrival_s)
            seq.num_generated += n
            if seq.num_generated >= seq.output_tokens:
                seq.record.finish_s = ended_s
                self._drop(seq)
                outcome.finished.append(seq)
            elif self.role == Role.PREFILL and was_prefilling:
                self._drop(seq)
                outcome.handed_off.append(seq)
            elif seq.stopping:
                self._drop(seq)
                outcome.stopped.append(seq)
        if self._stop_requested:
            for seq in [s for s in self.running if s.stopping]:
                self._drop(seq)  # stopped while prefilling a chunk: moves with its computed KV
                outcome.stopped.append(seq)
            # One preempted since the stop was asked stops once it runs again.
            self._stop_requested = any(s.stopping for s in self.waiting)
        self._batch = []
        self.step_ends_s = None
        return outcome

    def set_clock(self, clock_mhz: int, clock_frac: float, dynamic_w: float) -> None:
        """From the next step on (the step in progress keeps its clock)."""
        if clock_mhz != self.clock_mhz and self.latencies is not None:
            self.latencies.restart()
        self.clock_mhz, self.clock_frac, self.dynamic_w = clock_mhz, clock_frac, dynamic_w

    def record_latencies(self, now_s: float, outcome: StepOutcome) -> None:
        if self.latencies is not None:
            self.latencies.add(now_s, outcome.ttfts, [])
            for run in outcome.decode_runs:
                for duration in run.step_durations():
                    self.latencies.add_itl(now_s, duration, run.num_tokens)

    def request_stop(self, seq: SimSequence) -> None:
        """A migration's copy caught up: `seq` stops here at the next step boundary."""
        seq.stopping = True
        self._stop_requested = True

    def take_running(self, newest: int) -> list[SimSequence]:
        """The `newest` running sequences that are decoding and not already moving."""
        return [s for s in reversed(self.running) if not s.in_prefill and s.migration is None][:newest]

    def snapshot(self, now_s: float) -> ReplicaSnapshot:
        head = self.waiting[0] if self.waiting else None
        bs = self.cost.block_size
        return ReplicaSnapshot(
            replica_id=self.replica_id, pool=self.pool, role=self.role, health=self.health,
            num_running=len(self.running), num_waiting=len(self.waiting),
            num_total_blocks=self.num_blocks, num_free_blocks=self.free_blocks,
            num_head_waiting_blocks=_blocks(head.num_tokens, bs) if head else 0,
            num_waiting_blocks=sum(_blocks(s.num_tokens, bs) for s in self.waiting),
            num_queued_prompt_tokens=sum(s.target_tokens - s.num_computed for s in self.waiting)
            + sum(s.target_tokens - s.num_computed for s in self.running if s.in_prefill),
            mean_step_s=self._recent_step_s, clock_mhz=self.clock_mhz, observed_at_s=now_s,
            **self._latency_fields(now_s),
        )

    def _latency_fields(self, now_s: float) -> dict:
        if self.latencies is None:
            return {}
        ttft, itl = self.latencies.ttft(now_s), self.latencies.itl(now_s)
        return {"ttft_p90_s": ttft.p90_s, "num_ttft_samples": ttft.num_samples,
                "itl_p90_s": itl.p90_s, "num_itl_samples": itl.num_samples}

    # ---- vLLM v1's scheduling ----
    def _schedule(self) -> tuple[list[SimSequence], bool]:
        """The step's batch (each sequence's `chunk` set to the tokens it computes), and
        whether admission is stuck (a waiting request fits no more)."""
        budget = self.cost.max_num_batched_tokens
        block_size = self.cost.block_size
        batch: list[SimSequence] = []
        preempted = False
        i = 0
        running = self.running
        while i < len(running) and budget > 0:
            seq = running[i]
            chunk = seq.next_chunk(budget)
            if seq.num_computed + chunk <= seq.num_blocks * block_size:  # fits its blocks
                seq.chunk = chunk
                batch.append(seq)
                budget -= chunk
                i += 1
                continue
            while not self._grow(seq, seq.num_computed + chunk):
                victim = self.running[-1]
                self._preempt(victim)
                preempted = True
                if victim is seq:
                    break
            else:
                seq.chunk = chunk
                batch.append(seq)
                budget -= chunk
                i += 1
                continue
            break  # the sequence itself was preempted: nothing after it runs either
        stuck = False
        while self.waiting and not preempted and budget > 0:
            if len(self.running) >= self.cost.max_num_seqs:
                stuck = True
                break
            seq = self.waiting[0]
            chunk = seq.next_chunk(budget)
            if not self._grow(seq, seq.num_computed + chunk):
                stuck = True
                break
            self.waiting.popleft()
            self.running.append(seq)
            if seq.offloaded and self.offload_link is not None:
                seq.offloaded = False
                self._offload_copy_s += self.offload_link.seconds(self.cost.kv_bytes(seq.num_computed))
            seq.chunk = chunk
            batch.append(seq)
            budget -= chunk
        return batch, stuck

    def _grow(self, seq: SimSequence, num_tokens: int) -> bool:
        needed = _blocks(num_tokens, self.cost.block_size) - seq.num_blocks
        if needed > self.free_blocks:
            return False
        if needed > 0:
            self.free_blocks -= needed
            seq.num_blocks += needed
        return True

    def _preempt(self, seq: SimSequence) -> None:
        """vLLM's recompute preemption: free the blocks, prefill again later; with an
        offload link, the KV is copied to host memory and loaded back instead."""
        self.running.remove(seq)
        self.free_blocks += seq.num_blocks
        seq.num_blocks = 0
        if self.offload_link is not None and not seq.in_prefill:
            seq.offloaded = True
            self._offload_copy_s += self.offload_link.seconds(self.cost.kv_bytes(seq.num_computed))
        else:
            seq.num_computed = 0
            seq.target_tokens = seq.num_tokens
        seq.record.num_preemptions += 1
        self.waiting.appendleft(seq)

    def _drop(self, seq: SimSequence) -> None:
        self.running.remove(seq)
        self.free_blocks += seq.num_blocks
        seq.num_blocks = 0

    # ---- decode runs ----
    def _decode_run_length(self) -> int:
        """Steps until the first sequence finishes, or fewer if the blocks run out first."""
        if self.migrating():
            return 1
        lo, hi = 1, min(seq.remaining_output for seq in self._batch)
        if self.max_run_steps is not None:
            hi = min(hi, self.max_run_steps)
        if self._extra_blocks(hi) <= self.free_blocks:
            return hi  # the common case: the blocks last until the first sequence finishes
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self._extra_blocks(mid) <= self.free_blocks:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def migrating(self) -> bool:
        return any(seq.stopping for seq in self._batch)

    def _extra_blocks(self, num_steps: int) -> int:
        bs = self.cost.block_size
        return sum(max(0, (seq.num_computed + num_steps + bs - 1) // bs - seq.num_blocks) for seq in self._batch)

    def _reserve_blocks(self, num_steps: int) -> None:
        for seq in self._batch:
            self._grow(seq, seq.num_computed + num_steps)

    def _release_blocks(self, num_steps: int) -> None:
        bs = self.cost.block_size
        for seq in self._batch:
            keep = _blocks(seq.num_computed + num_steps, bs)
            if seq.num_blocks > keep:
                self.free_blocks += seq.num_blocks - keep
                seq.num_blocks = keep

    def _decode_run_s(self, num_steps: int) -> float:
        run_s = self.cost.decode_run_s(num_steps, len(self._batch), self._context_at_start, self.clock_frac)
        return self._as_pipeline(run_s, len(self._batch), num_steps) * self._speed

    def _decode_step_series(self) -> tuple[float, float]:
        """(first, growth) of the steps of the decode run in progress (see `_decode_run_s`)."""
        first, growth = self.cost.decode_step_series(len(self._batch), self._context_at_start, self.clock_frac)
        if self.pipeline_hop_s is not None:
            first = first * self.pipeline_factor + self.pipeline_hop_s(len(self._batch))
            growth *= self.pipeline_factor
        return first * self._speed, growth * self._speed

    def _draw_speed(self, now_s: float) -> None:
        period = int(now_s / self.cost.speed_noise_period_s)
        if period != self._speed_period and self._speed_draws is not None:
            self._speed_period = period
            sd = self.cost.speed_noise_sd
            self._speed = math.exp(self._speed_draws.gauss(-sd * sd / 2, sd))  # mean 1

    def _as_pipeline(self, seconds: float, tokens_per_step: int, num_steps: int) -> float:
        if self.pipeline_hop_s is None:
            return seconds
        return seconds * self.pipeline_factor + num_steps * self.pipeline_hop_s(tokens_per_step)

    def resize_kv(self, num_blocks: int) -> None:
        """A parameter drop (more blocks) or a restore (back to the original count; the
        caller checks the used blocks fit)."""
        self.free_blocks += num_blocks - self.num_blocks
        self.num_blocks = num_blocks

    @property
    def used_blocks(self) -> int:
        return self.num_blocks - self.free_blocks


def _blocks(num_tokens: int, block_size: int) -> int:
    return math.ceil(num_tokens / block_size)
