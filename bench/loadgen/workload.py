"""What to send and when: the CLI's workload choices mapped onto `sim.workload`'s seeded
request lists (arrival time, prompt tokens, output tokens), and the prompt token ids."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from sim.workload import (
    LengthTable,
    SimRequest,
    burst_steps,
    clip_lengths,
    fixed_lengths,
    from_trace,
    gamma_arrivals,
    tiled_trace,
    trace_lengths,
)

TRACES = ("conv", "code")
WORKLOADS = (*TRACES, "poisson", "gamma", "burst")
DEFAULT_VOCAB_RANGE = (10, 2000)


class WorkloadError(ValueError):
    """Bad workload input; its message is the one line the CLI prints."""


@dataclass(frozen=True)
class WorkloadSpec:
    kind: str
    rate: float | None = None
    cv: float = 1.0
    # Trace speed-up (2: twice the trace's rate); None: 1.
    time_scale: float | None = None
    # Burst steps as (start_s, rate_per_s); the last one lasts until max_duration_s.
    burst: tuple[tuple[float, float], ...] = ()
    # "conv", "code" or "PROMPT,OUTPUT"; None: a trace's own lengths, conv's for the others.
    lengths: str | None = None
    length_scale: float = 1.0
    # Prompt + output are clipped to this (None: no limit).
    max_model_len: int | None = 2048
    num_requests: int | None = None
    max_duration_s: float | None = None
    seed: int = 0


def parse_burst(text: str) -> tuple[tuple[float, float], ...]:
    """"t0:rate0,t1:rate1,...": from second t_i on, Poisson arrivals at rate_i per second."""
    points = []
    for part in text.split(","):
        fields = part.strip().split(":")
        if len(fields) != 2:
            raise WorkloadError(f"--burst {text!r}: expected t0:rate0,t1:rate1,... (got {part.strip()!r})")
        try:
            start, rate = float(fields[0]), float(fields[1])
        except ValueError:
            raise WorkloadError(f"--burst {text!r}: {part.strip()!r} is not two numbers") from None
        if not (math.isfinite(start) and math.isfinite(rate)) or start < 0 or rate < 0:
            raise WorkloadError(f"--burst {text!r}: times and rates must be finite and >= 0")
        if points and start <= points[-1][0]:
            raise WorkloadError(f"--burst {text!r}: step times must increase")
        points.append((start, rate))
    return tuple(points)


def burst_durations(points: tuple[tuple[float, float], ...], end_s: float | None) -> list[tuple[float, float]]:
    """(start_s, rate) points -> `sim.workload.burst_steps`' (duration_s, rate) steps; a
    first step after 0 starts with a silent one; the last step ends at `end_s` (without one
    it must have rate 0: an explicit end)."""
    if not points:
        raise WorkloadError("--workload burst needs --burst t0:rate0,t1:rate1,...")
    steps = [(points[0][0], 0.0)] if points[0][0] > 0 else []
    for (start, rate), (following, _) in itertools.pairwise(points):
        steps.append((following - start, rate))
    last_start, last_rate = points[-1]
    if end_s is None:
        if last_rate > 0:
            raise WorkloadError("--burst: the last step needs an end: give --max-duration-s or end with T:0")
    elif end_s <= last_start:
        raise WorkloadError(f"--burst: the last step starts at {last_start:g}s, at or after --max-duration-s {end_s:g}")
    else:
        steps.append((end_s - last_start, last_rate))
    return steps


def parse_vocab_range(text: str) -> tuple[int, int]:
    """"LO..HI" (or LO:HI): token ids are drawn from [LO, HI)."""
    for separator in ("..", ":"):
        if separator in text:
            low_text, high_text = text.split(separator, 1)
            break
    else:
        raise WorkloadError(f"--vocab-range {text!r}: expected LO..HI")
    try:
        low, high = int(low_text), int(high_text)
    except ValueError:
        raise WorkloadError(f"--vocab-range {text!r}: LO and HI must be integers") from None
    if low < 0 or high <= low:
        raise WorkloadError(f"--vocab-range {text!r}: need 0 <= LO < HI")
    return low, high


def length_table(text: str, scale: float = 1.0) -> LengthTable:
    """"conv" or "code" (the trace's (prompt, output) pairs) or "PROMPT,OUTPUT", each
    length multiplied by `scale`."""
    if text in TRACES:
        table = trace_lengths(text)
    else:
        try:
            prompt, output = (int(x) for x in text.split(","))
        except ValueError:
            raise WorkloadError(f"--lengths {text!r}: expected conv, code or PROMPT,OUTPUT") from None
        if prompt < 1 or output < 1:
            raise WorkloadError(f"--lengths {text!r}: lengths must be >= 1")
        table = fixed_lengths(prompt, output)
    if scale == 1.0:
        return table
    return LengthTable(np.rint(table.prompt_tokens * scale).astype(int), np.rint(table.output_tokens * scale).astype(int))


def build_requests(spec: WorkloadSpec) -> list[SimRequest]:
    """The requests to send, in arrival order (ids 0, 1, ...): at most `num_requests`,
    none arriving after `max_duration_s`."""
    _check(spec)
    if spec.kind in TRACES:
        requests = _trace_requests(spec)
    elif spec.kind == "burst":
        table = length_table(spec.lengths or "conv", spec.length_scale)
        requests = burst_steps(burst_durations(spec.burst, spec.max_duration_s), table, spec.seed, spec.max_model_len)
    else:
        requests = _gamma_requests(spec)
    if spec.max_duration_s is not None:
        requests = [r for r in requests if r.arrival_s <= spec.max_duration_s]
    if spec.num_requests is not None:
        requests = requests[: spec.num_requests]
    return [SimRequest(i, r.arrival_s, r.prompt_tokens, r.output_tokens) for i, r in enumerate(requests)]


def _check(spec: WorkloadSpec) -> None:
    if spec.kind not in WORKLOADS:
        raise WorkloadError(f"unknown workload {spec.kind!r}: choose one of {', '.join(WORKLOADS)}")
    if spec.kind in ("poisson", "gamma") and spec.rate is None:
        raise WorkloadError(f"--workload {spec.kind} needs --rate")
    if spec.rate is not None and not spec.rate > 0:
        raise WorkloadError("--rate must be > 0")
    if not spec.cv > 0:
        raise WorkloadError("--cv must be > 0")
    if spec.time_scale is not None and not spec.time_scale > 0:
        raise WorkloadError("--time-scale must be > 0")
    if spec.kind in TRACES and spec.rate is not None and spec.time_scale is not None:
        raise WorkloadError("give a trace either --time-scale or --rate, not both")
    if spec.kind in TRACES and spec.rate is not None and spec.max_duration_s is None:
        raise WorkloadError("a trace at --rate needs --max-duration-s")
    if spec.kind != "burst" and spec.burst:
        raise WorkloadError("--burst is for --workload burst")
    if not spec.length_scale > 0:
        raise WorkloadError("--length-scale must be > 0")
    if spec.max_model_len is not None and spec.max_model_len < 2:
        raise WorkloadError("--max-model-len must be >= 2")
    if spec.num_requests is not None and spec.num_requests < 1:
        raise WorkloadError("--num-requests must be >= 1")
    if spec.max_duration_s is not None and not spec.max_duration_s > 0:
        raise WorkloadError("--max-duration-s must be > 0")
    if spec.kind in ("poisson", "gamma") and spec.num_requests is None and spec.max_duration_s is None:
        raise WorkloadError(f"--workload {spec.kind} needs --num-requests or --max-duration-s")


def _trace_requests(spec: WorkloadSpec) -> list[SimRequest]:
    if spec.rate is not None:
        raw = tiled_trace(spec.kind, spec.rate, spec.max_duration_s, spec.seed)
    else:
        raw = from_trace(spec.kind, spec.time_scale or 1.0, spec.max_duration_s)
    if spec.lengths is not None:
        # The trace's arrivals with lengths drawn from another table.
        pairs = length_table(spec.lengths, spec.length_scale).sample(np.random.default_rng(spec.seed), len(raw),
                                                                      spec.max_model_len)
        return [SimRequest(r.request_id, r.arrival_s, p, o) for r, (p, o) in zip(raw, pairs)]
    return [SimRequest(r.request_id, r.arrival_s,
                       *clip_lengths(round(r.prompt_tokens * spec.length_scale),
                                     round(r.output_tokens * spec.length_scale), spec.max_model_len))
            for r in raw]


def _gamma_requests(spec: WorkloadSpec) -> list[SimRequest]:
    table = length_table(spec.lengths or "conv", spec.length_scale)
    cv = spec.cv if spec.kind == "gamma" else 1.0
    if spec.num_requests is not None:
        return gamma_arrivals(spec.rate, cv, spec.num_requests, table, spec.seed, max_total=spec.max_model_len)
    # Bounded by time only: enough requests to pass max_duration_s.
    n = max(16, math.ceil(spec.rate * spec.max_duration_s * 1.25))
    while True:
        requests = gamma_arrivals(spec.rate, cv, n, table, spec.seed, max_total=spec.max_model_len)
        if requests[-1].arrival_s > spec.max_duration_s or n >= 10_000_000:
            return requests
        n *= 2


def prompt_token_ids(request_id: int, num_tokens: int, seed: int,
                     vocab_range: tuple[int, int] = DEFAULT_VOCAB_RANGE) -> list[int]:
    """A prompt of exactly `num_tokens` token ids, the same for the same (seed, request):
    any tokenizer's length is then exact (the completions API takes a list of ids)."""
    rng = np.random.default_rng([seed, request_id])
    return rng.integers(vocab_range[0], vocab_range[1], num_tokens).tolist()
