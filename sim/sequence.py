"""A request as a simulated replica holds it, and what the simulation records about it."""

from __future__ import annotations

from dataclasses import dataclass, field

from sim.workload import SimRequest


@dataclass(slots=True, eq=False)
class RequestRecord:
    request: SimRequest
    first_token_s: float = -1.0
    finish_s: float = -1.0
    num_preemptions: int = 0
    num_migrations: int = 0
    # Time without a token while the request moved (prefill -> decode handoff, migrations).
    stall_s: float = 0.0

    @property
    def finished(self) -> bool:
        return self.finish_s >= 0

    @property
    def ttft_s(self) -> float:
        return self.first_token_s - self.request.arrival_s

    @property
    def e2e_s(self) -> float:
        return self.finish_s - self.request.arrival_s

    @property
    def tpot_s(self) -> float:
        n = self.request.output_tokens
        return (self.finish_s - self.first_token_s) / (n - 1) if n > 1 else 0.0


@dataclass(slots=True, eq=False)
class SimSequence:
    """vLLM's view of a request: KV computed for `num_computed` tokens; the next token is
    sampled once `num_computed` reaches `target_tokens` (the prompt, or prompt plus the
    tokens generated so far when it is recomputed after a preemption)."""

    record: RequestRecord
    target_tokens: int
    num_computed: int = 0
    num_generated: int = 0
    num_blocks: int = 0
    # The migration moving it (a MigrateRequests), and whether it stops here at the next
    # step boundary (the copy has caught up).
    migration: object | None = None
    stopping: bool = False
    # Preempted with its KV offloaded to host memory: readmitted by loading it back.
    offloaded: bool = False
    # Tokens it computes in the step in progress (set by the scheduler).
    chunk: int = 0
    # The request's output length, kept beside the counters the scheduler reads every step
    # (the record is a pointer away).
    output_tokens: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.output_tokens = self.record.request.output_tokens

    @classmethod
    def fresh(cls, record: RequestRecord) -> SimSequence:
        return cls(record, record.request.prompt_tokens)

    @property
    def in_prefill(self) -> bool:
        return self.num_computed < self.target_tokens

    @property
    def remaining_output(self) -> int:
        return self.output_tokens - self.num_generated

    @property
    def num_tokens(self) -> int:
        """Prompt plus generated tokens: what a recompute has to prefill."""
        return self.record.request.prompt_tokens + self.num_generated

    def next_chunk(self, budget: int) -> int:
        return min(self.target_tokens - self.num_computed, budget) if self.in_prefill else 1
