"""The cluster calibration's samples and the fits that turn them into step costs (see
`sim.calibrate_cluster`, which measures them): pure functions of the samples, so a
calibration can be fit again (`--refit`) and tested without a cluster."""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from sim.cost_model import StepCostModel, StepSample, fit_coefficients, prefill_pairs

# Output tokens of each request of a measured decode batch.
OUTPUT_TOKENS = 48
# The interference measurement: decoders of this context while short requests of this
# prompt arrive, over this many of their steps.
INTERFERENCE_CONTEXT = 64
INTERFERENCE_SHORT_PROMPT = 32
INTERFERENCE_STEPS = 300


@dataclass(frozen=True)
class InterferenceSample:
    """`decoders` requests decoding, their time per token alone and while short requests
    arrived at `requests_per_s` (median over the decoders), and the shorts' median time to
    first token."""

    decoders: int
    requests_per_s: float
    alone_s: float
    during_s: float
    short_ttft_s: float

    def seconds_per_request(self) -> float:
        """Time the steps lost per short request: over a window T the decoders made n tokens
        each, T = n * alone + N * lost, so lost = (1 - alone / during) / (N / T)."""
        return (1.0 - self.alone_s / self.during_s) / self.requests_per_s


@dataclass(frozen=True)
class Samples:
    decode: list[StepSample]
    prefill: list[tuple[int, float]]  # (prompt tokens, time to first token)
    interference: list[InterferenceSample]
    new_shape: list[tuple[float, float]]  # time to first token of a new prompt length, then again
    engine: dict

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=1) + "\n")

    @classmethod
    def load(cls, path: Path) -> Samples:
        data = json.loads(path.read_text())
        return cls([StepSample(**s) for s in data["decode"]], [(int(p), float(t)) for p, t in data["prefill"]],
                   [InterferenceSample(**s) for s in data.get("interference", [])],
                   [(float(a), float(b)) for a, b in data.get("new_shape", [])], data["engine"])


def time_per_token_s(arrivals: list[float]) -> float:
    """Mean time between the tokens that arrived at these times (at least two)."""
    return (arrivals[-1] - arrivals[0]) / (len(arrivals) - 1)


def whole_batch_step_s(arrivals: list[list[float]]) -> float:
    """Time per token while every request of a batch decodes (from the last first token to
    the first request's last), the median over the requests. Before that window the batch
    shares steps with the prefill of its later members (chunked when B x C exceeds the token
    budget); after it, the batch shrinks."""
    all_decoding = max(times[0] for times in arrivals)
    first_done = min(times[-1] for times in arrivals)
    per_request = []
    for times in arrivals:
        window = [t for t in times if all_decoding <= t <= first_done]
        if len(window) > 1:
            per_request.append(time_per_token_s(window))
    if not per_request:
        raise ValueError("the batch never decoded whole: its first request finished before the last one started")
    return statistics.median(per_request)


def fit_step_costs(decode: list[StepSample], prefill: list[tuple[int, float]]) -> tuple[float, float, float, float, float, float]:
    """(base, per prefill token, per decode sequence, per context token, request overhead,
    per prefill attention pair), fit to relative errors: the simulator is judged on percent
    error at every load. The overhead still holds the request's serving CPU time (see
    `request_step_s`)."""
    base, _, per_seq, per_context = fit_coefficients(decode, relative=True)
    lengths = np.array([p for p, _ in prefill], dtype=float)
    ttfts = np.array([t for _, t in prefill])
    rest = (ttfts - base - per_context * lengths) / ttfts
    pairs = np.array([prefill_pairs(p, 0) for p, _ in prefill])
    columns = np.stack([np.ones_like(lengths), lengths, pairs], axis=1) / ttfts[:, None]
    active = [0, 1, 2]
    while True:
        coef, *_ = np.linalg.lstsq(columns[:, active], rest, rcond=None)
        if all(c >= 0 for c in coef):
            break
        active.pop(int(np.argmin(coef)))
    overhead, per_prefill, per_pair = (float(coef[active.index(i)]) if i in active else 0.0 for i in range(3))
    return base, per_prefill, per_seq, per_context, overhead, per_pair


def request_step_s(model: StepCostModel, interference: list[InterferenceSample]) -> float:
    """Serving CPU time per request that the engine's steps lose: what the decoders lost per
    short request, less what the short's own prefill chunk adds to a decode step (median
    over the samples; 0 without any)."""
    if not interference:
        return 0.0
    short = INTERFERENCE_SHORT_PROMPT
    context = INTERFERENCE_CONTEXT
    chunk_s = (model.step_s(short, 1, context + short, prefill_pairs=prefill_pairs(short, 0))
               - model.step_s(0, 1, context))
    return max(0.0, statistics.median(s.seconds_per_request() for s in interference) - chunk_s)


def busy_admission_s(model: StepCostModel, interference: list[InterferenceSample]) -> float:
    """Admission time per running request: the shorts' time to first token less the
    simulator's account of it (the request overhead, the rest of the step in progress, their
    own step), fit through the origin against the number of decoders (0 without samples)."""
    short = INTERFERENCE_SHORT_PROMPT
    excess = []
    for s in interference:
        own_step = (model.step_s(short, s.decoders, s.decoders * (INTERFERENCE_CONTEXT + INTERFERENCE_STEPS // 2) + short,
                                 prefill_pairs=prefill_pairs(short, 0)) + model.request_step_s)
        excess.append((s.decoders, s.short_ttft_s - model.request_overhead_s - s.during_s / 2 - own_step))
    if not excess:
        return 0.0
    return max(0.0, sum(d * e for d, e in excess) / sum(d * d for d, _ in excess))


def speed_noise(decode: list[StepSample]) -> tuple[float, float]:
    """(log standard deviation, period): how much repeats of the same decode batch differ,
    pooled over the batches, and the time each averages over (about OUTPUT_TOKENS / 2 steps),
    the shortest time over which the variation is seen."""
    groups: dict[tuple[int, int], list[float]] = {}
    for sample in decode:
        groups.setdefault((sample.decode_seqs, sample.context_tokens), []).append(math.log(sample.step_s))
    repeated = [logs for logs in groups.values() if len(logs) > 1]
    if not repeated:
        return 0.0, 1.0
    squares = sum((x - statistics.fmean(logs)) ** 2 for logs in repeated for x in logs)
    dof = sum(len(logs) - 1 for logs in repeated)
    return math.sqrt(squares / dof), statistics.median(s.step_s for s in decode) * OUTPUT_TOKENS / 2


def new_shape_s(new_shape: list[tuple[float, float]]) -> float:
    """The extra time of a step size's first run: median over prompt lengths of the first
    time to first token less the second (0 without samples)."""
    if not new_shape:
        return 0.0
    return max(0.0, statistics.median(first - again for first, again in new_shape))


def fits_the_cache(sample: StepSample, capacity_tokens: int) -> bool:
    """Whether the sample's batch ran whole: B requests of context C and OUTPUT_TOKENS
    outputs need B x (C + OUTPUT_TOKENS) tokens of KV; a wider batch is preempted and
    recomputed, and its time per token measures that, not a B-wide step."""
    return sample.context_tokens + sample.decode_seqs * (OUTPUT_TOKENS - OUTPUT_TOKENS // 2) <= capacity_tokens
