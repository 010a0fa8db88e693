"""How long one engine step takes, as data.

    step_s = base_s + prefill_token_s * prefill_tokens + prefill_pair_s * prefill_pairs
             + decode_seq_s * decode_seqs + context_token_s * context_tokens

(context_tokens: the tokens the step's attention reads, summed over the batch;
prefill_pairs: the query-key pairs of the prefill chunks' attention, a chunk of c tokens
after n computed ones has c * (n + (c + 1) / 2), so a long prompt costs more than linearly); a
request reaches its replica `request_overhead_s` after it arrives, and where the serving
path shares the engine's CPU its first step carries `request_step_s`; on the CPU backend
a step of a size the engine has not run before costs `new_shape_s` more, and a request
joins a busy replica `busy_admission_s` per running request later; the machine's speed may
vary (`speed_noise_sd`, seeded per replica). The coefficients come
from a calibration file: measured here on a real engine alone (`python -m sim.calibrate`)
or on the real serving path, front door included (`python -m sim.calibrate_cluster`), or
derived from a published GPU profile; every simulation result names the calibration it
used. A clock below the maximum stretches the compute-bound share of each part of a step:
most of the prefill work, a small share of the rest (decode is bound by memory bandwidth;
see `step_s` and actors/clocks/power_curve.py, whose shares the simulator uses too).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import yaml  # type: ignore[import-untyped]

CALIBRATIONS_DIR = Path(__file__).parent / "calibrations"


@dataclass(frozen=True)
class StepCostModel:
    name: str
    # Where the numbers come from: the machine and command, or the publication.
    source: str
    base_s: float
    prefill_token_s: float
    decode_seq_s: float
    context_token_s: float
    # The engine the coefficients describe.
    block_size: int
    num_blocks: int
    kv_bytes_per_token: int
    weight_bytes: int
    max_num_batched_tokens: int
    max_num_seqs: int
    # Share of the prefill part, and of the rest of a step (decode, attention over the
    # context, fixed cost), that scales with 1/clock; the remainder (memory traffic) does not.
    prefill_compute_frac: float = 0.9
    decode_compute_frac: float = 0.25
    # From a request's arrival to its replica's queue (the serving path's fixed latency;
    # 0 for an engine profiled alone).
    request_overhead_s: float = 0.0
    # Per query-key pair of prefill attention (0: folded into prefill_token_s).
    prefill_pair_s: float = 0.0
    # CPU time the serving path spends on a request (admission, streaming, teardown) that
    # the engine's steps lose where both share a machine's cores; added to the step its
    # first chunk runs in. 0 on a GPU, whose steps the host's CPU work does not slow.
    request_step_s: float = 0.0
    # A step whose number of scheduled tokens the engine has not run before: vLLM's CPU
    # backend builds its kernels (oneDNN primitives) per shape on first use. 0 on a GPU.
    new_shape_s: float = 0.0
    # Admission time per request already running on the replica: its engine's frontend
    # streams their tokens in the loop that takes new requests in (0 for an engine alone).
    busy_admission_s: float = 0.0
    # How much the machine's speed varies (log standard deviation; a new speed every
    # `speed_noise_period_s`), as the calibration's repeated measurements vary on a shared
    # CPU. 0: every step takes exactly its cost.
    speed_noise_sd: float = 0.0
    speed_noise_period_s: float = 1.0

    def step_s(self, prefill_tokens: float, decode_seqs: int, context_tokens: int, clock_frac: float = 1.0,
               prefill_pairs: float = 0.0) -> float:
        """One step at `clock_frac` of the maximum clock."""
        prefill = self.prefill_token_s * prefill_tokens + self.prefill_pair_s * prefill_pairs
        rest = self.base_s + self.decode_seq_s * decode_seqs + self.context_token_s * context_tokens
        if clock_frac == 1.0:
            return prefill + rest
        return (prefill * (1.0 - self.prefill_compute_frac + self.prefill_compute_frac / clock_frac)
                + rest * (1.0 - self.decode_compute_frac + self.decode_compute_frac / clock_frac))

    def decode_run_s(self, num_steps: int, batch: int, context_tokens: int, clock_frac: float = 1.0) -> float:
        """`num_steps` decode-only steps of `batch` sequences starting from `context_tokens`
        cached tokens (each step reads one more token per sequence): an arithmetic series."""
        first, growth = self.decode_step_series(batch, context_tokens, clock_frac)
        return num_steps * first + growth * num_steps * (num_steps - 1) / 2

    def decode_step_series(self, batch: int, context_tokens: int, clock_frac: float = 1.0) -> tuple[float, float]:
        """(first, growth): step k of a decode run takes first + k * growth seconds."""
        first = self.step_s(0, batch, context_tokens + batch, clock_frac)
        growth = self.step_s(0, 0, batch, clock_frac) - self.step_s(0, 0, 0, clock_frac)
        return first, growth

    def capacity_rps(self, prompt_tokens: float, output_tokens: float, batch: int = 32) -> float:
        """Requests per second one replica sustains at a steady batch of `batch` requests of
        these mean lengths (a rough capacity, to set offered loads)."""
        step = self.step_s(prompt_tokens * batch / output_tokens, batch, int(batch * (prompt_tokens + output_tokens / 2)))
        return batch / (step * output_tokens)

    def prefill_s(self, prompt_tokens: int) -> float:
        """A whole prompt in one step, alone."""
        return self.step_s(prompt_tokens, 0, prompt_tokens, prefill_pairs=prefill_pairs(prompt_tokens, 0))

    def kv_bytes(self, num_tokens: int) -> int:
        return num_tokens * self.kv_bytes_per_token

    def with_capacity(self, num_blocks: int) -> StepCostModel:
        return replace(self, num_blocks=num_blocks)

    @classmethod
    def load(cls, name_or_path: str | Path) -> StepCostModel:
        path = Path(name_or_path)
        if not path.exists():
            path = CALIBRATIONS_DIR / f"{name_or_path}.yaml"
        if not path.exists():
            known = sorted(p.stem for p in CALIBRATIONS_DIR.glob("*.yaml"))
            raise FileNotFoundError(f"no calibration {name_or_path!r}; known: {', '.join(known)}")
        return cls(**yaml.safe_load(path.read_text()))

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(asdict(self), sort_keys=False))


def prefill_pairs(chunk: int, num_computed: int) -> float:
    """Query-key pairs of a prefill chunk's causal attention: each of its tokens reads the
    ones computed before it and the chunk's earlier tokens."""
    return chunk * (num_computed + (chunk + 1) / 2)


@dataclass(frozen=True)
class StepSample:
    prefill_tokens: int
    decode_seqs: int
    context_tokens: int
    step_s: float


def fit_coefficients(samples: list[StepSample], relative: bool = False) -> tuple[float, float, float, float]:
    """Least-squares (base, per prefill token, per decode sequence, per context token),
    each kept non-negative (a negative cost is noise, refit without that term).
    `relative`: minimize relative rather than absolute errors, so the long steps of wide
    batches do not outweigh the short ones a light load runs."""
    x = np.array([[1.0, s.prefill_tokens, s.decode_seqs, s.context_tokens] for s in samples])
    y = np.array([s.step_s for s in samples])
    if relative:
        x, y = x / y[:, None], np.ones_like(y)
    active = list(range(4))
    while True:
        coef, *_ = np.linalg.lstsq(x[:, active], y, rcond=None)
        negative = [i for i, c in zip(active, coef) if c < 0]
        if not negative:
            break
        active.remove(min(negative, key=lambda i: coef[active.index(i)]))
    full = [0.0] * 4
    for i, c in zip(active, coef):
        full[i] = float(c)
    return full[0], full[1], full[2], full[3]
