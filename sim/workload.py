"""Seeded request streams: the Azure LLM 2023 traces (time-scalable), Poisson and Gamma
arrivals with a chosen coefficient of variation, and burst steps."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

TRACES_DIR = Path(__file__).parent / "traces"


@dataclass(frozen=True)
class SimRequest:
    request_id: int
    arrival_s: float
    prompt_tokens: int
    output_tokens: int


@dataclass(frozen=True)
class LengthTable:
    """(prompt, output) token counts to draw from, e.g. a trace's."""

    prompt_tokens: np.ndarray
    output_tokens: np.ndarray

    def sample(self, rng: np.random.Generator, n: int, max_total: int | None = None) -> list[tuple[int, int]]:
        index = rng.integers(0, len(self.prompt_tokens), n)
        pairs = [(int(self.prompt_tokens[i]), int(self.output_tokens[i])) for i in index]
        return [clip_lengths(p, o, max_total) for p, o in pairs]


def clip_lengths(prompt: int, output: int, max_total: int | None) -> tuple[int, int]:
    """At least one token each; prompt + output within the model's context."""
    prompt, output = max(1, prompt), max(1, output)
    if max_total is not None and prompt + output > max_total:
        prompt = max(1, min(prompt, max_total // 2))
        output = max(1, min(output, max_total - prompt))
    return prompt, output


def trace_path(name: str) -> Path:
    path = Path(name)
    return path if path.exists() else TRACES_DIR / f"azure_llm_2023_{name}.csv"


def read_trace(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(arrival seconds from the first request, prompt tokens, output tokens)."""
    stamps, prompts, outputs = [], [], []
    with trace_path(name).open() as f:
        for row in csv.DictReader(f):
            # Seven fractional digits: more than datetime parses.
            stamps.append(datetime.fromisoformat(row["TIMESTAMP"][:26]).timestamp())
            prompts.append(int(row["ContextTokens"]))
            outputs.append(int(row["GeneratedTokens"]))
    arrivals = np.array(stamps) - stamps[0]
    return arrivals, np.array(prompts), np.array(outputs)


def trace_lengths(name: str) -> LengthTable:
    _, prompts, outputs = read_trace(name)
    return LengthTable(prompts, outputs)


def from_trace(name: str, time_scale: float = 1.0, duration_s: float | None = None,
               max_total: int | None = None, length_scale: float = 1.0) -> list[SimRequest]:
    """The trace's requests with arrivals compressed by `time_scale` (2.0: twice the rate),
    cut at `duration_s` of scaled time, lengths multiplied by `length_scale`."""
    arrivals, prompts, outputs = read_trace(name)
    requests = []
    for i, (at, p, o) in enumerate(zip(arrivals / time_scale, prompts, outputs)):
        if duration_s is not None and at > duration_s:
            break
        p, o = clip_lengths(round(p * length_scale), round(o * length_scale), max_total)
        requests.append(SimRequest(i, float(at), p, o))
    return requests


def tiled_trace(name: str, rate_per_s: float, duration_s: float, seed: int = 0,
                max_total: int | None = None) -> list[SimRequest]:
    """The trace's arrival pattern at an average of `rate_per_s`, for the first
    `duration_s` seconds: copies of the trace, each shifted in time by a random offset
    (wrapping around its span), superposed and thinned to the rate, and repeated when
    `duration_s` is longer than the trace. Lengths stay with their requests."""
    arrivals, prompts, outputs = read_trace(name)
    span = float(arrivals[-1]) or 1.0
    base_rate = len(arrivals) / span
    copies = max(1, int(np.ceil(rate_per_s / base_rate)))
    rng = np.random.default_rng(seed)
    keep = rate_per_s / (base_rate * copies)
    # Longer than the trace: the pattern repeats, thinned afresh each period.
    periods = max(1, int(np.ceil(duration_s / span)))
    times, index = [], []
    for _ in range(copies):
        shifted = (arrivals + rng.uniform(0, span)) % span
        for period in range(periods):
            at = shifted + period * span
            mask = (rng.random(len(arrivals)) < keep) & (at < duration_s)
            times.append(at[mask])
            index.append(np.flatnonzero(mask))
    times_all, index_all = np.concatenate(times), np.concatenate(index)
    order = np.argsort(times_all, kind="stable")
    return [SimRequest(n, float(times_all[i]),
                       *clip_lengths(int(prompts[index_all[i]]), int(outputs[index_all[i]]), max_total))
            for n, i in enumerate(order)]


def gamma_arrivals(rate_per_s: float, cv: float, num_requests: int, lengths: LengthTable, seed: int = 0,
                   start_s: float = 0.0, first_id: int = 0, max_total: int | None = None) -> list[SimRequest]:
    """Gamma inter-arrival times with mean 1/rate and coefficient of variation `cv`
    (cv = 1 is Poisson; larger is burstier)."""
    rng = np.random.default_rng(seed)
    shape = 1.0 / (cv * cv)
    gaps = rng.gamma(shape, 1.0 / (rate_per_s * shape), num_requests)
    times = start_s + np.cumsum(gaps)
    return [SimRequest(first_id + i, float(t), p, o)
            for i, (t, (p, o)) in enumerate(zip(times, lengths.sample(rng, num_requests, max_total)))]


def poisson_arrivals(rate_per_s: float, num_requests: int, lengths: LengthTable, seed: int = 0,
                     start_s: float = 0.0, first_id: int = 0, max_total: int | None = None) -> list[SimRequest]:
    return gamma_arrivals(rate_per_s, 1.0, num_requests, lengths, seed, start_s, first_id, max_total)


def burst_steps(steps: list[tuple[float, float]], lengths: LengthTable, seed: int = 0,
                max_total: int | None = None) -> list[SimRequest]:
    """Poisson arrivals whose rate changes in steps: [(duration_s, rate_per_s), ...]."""
    requests: list[SimRequest] = []
    start = 0.0
    for i, (duration, rate) in enumerate(steps):
        if rate > 0:
            n = int(np.random.default_rng([seed, i]).poisson(rate * duration))
            part = poisson_arrivals(rate, n, lengths, seed=seed * 1000 + i, start_s=start, first_id=len(requests),
                                    max_total=max_total)
            requests += [r for r in part if r.arrival_s < start + duration]
        start += duration
    return [SimRequest(i, r.arrival_s, r.prompt_tokens, r.output_tokens) for i, r in enumerate(requests)]


def fixed_lengths(prompt_tokens: int, output_tokens: int) -> LengthTable:
    return LengthTable(np.array([prompt_tokens]), np.array([output_tokens]))
