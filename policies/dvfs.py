"""Per-pool clocks (DVFS): each pool runs at the lowest clock that keeps its SLO metric
under target with a margin.

SLO metric per role: prefill pools, P90 time to first token against the TTFT target;
decode pools, P90 time between tokens against the TPOT target; colocated pools, both.

Latency against clock is modeled per metric as L(f) = a + b / f (the compute-bound part
scales with 1/f, the memory-bound part does not), fitted by least squares over the
pool's own observations at different clocks. The fit gives the shape, the compute-bound
share at the current clock; the level is the newest observation, so a change of load
between observations does not shift the prediction. Until the pool has been seen at two
clocks (or when the fit is not physical), a prior share per metric stands in.

Hysteresis: a clock rises at once when the metric is over the bound (target x (1 -
margin)), so it rises before the SLO breaks (to the maximum if it has broken); it falls
only to a clock predicted to stay a band below the bound by the worst recent reading, only
after `hold_s` without a change (`raise_hold_s` after a rise: load that just grew tends to
grow on), and a few steps at a time.
Safe default: with no data for `missing_after_s`, the maximum clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np

from policies.snapshot import Role


class ClockMode(str, Enum):
    # Clocks are left to the driver (an emulated device runs at its maximum).
    OFF = "off"
    # Every pool locked at one given clock.
    FIXED = "fixed"
    # This policy, one clock per pool.
    PER_POOL = "per_pool"
    # This policy, one clock for all pools: the highest any pool needs.
    SHARED = "shared"


class LatencyMetric(str, Enum):
    TTFT = "ttft"
    # Time between tokens, the engine's measure of TPOT.
    ITL = "itl"


ROLE_METRICS: dict[Role, tuple[LatencyMetric, ...]] = {
    Role.PREFILL: (LatencyMetric.TTFT,),
    Role.DECODE: (LatencyMetric.ITL,),
    Role.COLOCATED: (LatencyMetric.TTFT, LatencyMetric.ITL),
}


@dataclass(frozen=True)
class ClockPolicySettings:
    margin: float = 0.25
    lower_band: float = 0.15
    hold_s: float = 5.0
    raise_hold_s: float = 30.0
    max_steps_down: int = 3
    # Samples a reading needs to count, per metric (a decode replica yields an inter-token
    # sample per running request per step, a prefill replica one TTFT per request).
    min_samples: tuple[tuple[LatencyMetric, int], ...] = ((LatencyMetric.TTFT, 8), (LatencyMetric.ITL, 64))
    # Readings older than this do not move a clock; none for `missing_after_s`: maximum.
    fresh_s: float = 5.0
    missing_after_s: float = 30.0
    # Compute-bound share of each metric before the pool's own fit exists.
    prior_compute_frac: tuple[tuple[LatencyMetric, float], ...] = (
        (LatencyMetric.TTFT, 0.9), (LatencyMetric.ITL, 0.25))
    # One clock for every pool: the highest any pool needs (the baseline per-pool clocks
    # are compared against).
    shared: bool = False


@dataclass(frozen=True)
class SloTargets:
    ttft_s: float
    tpot_s: float

    def of(self, metric: LatencyMetric) -> float:
        return self.ttft_s if metric == LatencyMetric.TTFT else self.tpot_s


@dataclass(frozen=True)
class ClockObservation:
    """A pool's P90 of one metric over its replicas' latency windows at one clock."""

    metric: LatencyMetric
    clock_mhz: int
    p90_s: float
    num_samples: int
    at_s: float


@dataclass(frozen=True)
class PoolClockView:
    pool: str
    role: Role
    supported_clocks_mhz: tuple[int, ...]
    clock_mhz: int
    changed_at_s: float
    # Oldest first.
    observations: tuple[ClockObservation, ...] = ()
    raised_at_s: float = float("-inf")


@dataclass(frozen=True)
class SetPoolClock:
    pool: str
    clock_mhz: int
    # slo_risk (raised), slack (lowered), no_data (back to the maximum), shared
    reason: str


def decide_clocks(pools: tuple[PoolClockView, ...], slo: SloTargets, settings: ClockPolicySettings,
                  now_s: float) -> list[SetPoolClock]:
    wanted = {p.pool: _wanted_clock(p, slo, settings, now_s) for p in pools if p.supported_clocks_mhz}
    if settings.shared and wanted:
        highest = max(clock for clock, _ in wanted.values())
        reason = next(r for clock, r in wanted.values() if clock == highest)
        wanted = {pool: (highest, reason) for pool in wanted}
    return [SetPoolClock(p.pool, wanted[p.pool][0], wanted[p.pool][1])
            for p in pools if p.pool in wanted and wanted[p.pool][0] != p.clock_mhz]


def _wanted_clock(pool: PoolClockView, slo: SloTargets, settings: ClockPolicySettings,
                  now_s: float) -> tuple[int, str]:
    clocks = pool.supported_clocks_mhz
    current = pool.clock_mhz if pool.clock_mhz in clocks else clocks[-1]
    min_samples = dict(settings.min_samples)
    usable = [o for o in pool.observations
              if o.num_samples >= min_samples[o.metric] and now_s - o.at_s <= settings.missing_after_s]
    if not usable:
        if now_s - pool.changed_at_s >= settings.missing_after_s:
            return clocks[-1], "no_data"
        return current, ""
    needs: list[int] = []
    for metric in ROLE_METRICS[pool.role]:
        of_metric = [o for o in usable if o.metric == metric]
        recent = [o for o in of_metric if o.clock_mhz == current and o.at_s >= pool.changed_at_s
                  and now_s - o.at_s <= settings.fresh_s]
        if not recent:
            continue  # no recent reading at the current clock: hold
        bound = slo.of(metric) * (1.0 - settings.margin)
        share = _compute_share(of_metric, current, dict(settings.prior_compute_frac)[metric])
        latest = recent[-1].p90_s
        if latest > slo.of(metric):
            # Already breaking the SLO: the load jumped past what the fit has seen, and a
            # rise to the predicted clock can take a round of fresh readings per step.
            needs.append(clocks[-1])
        elif latest > bound:
            predict = _predictor(latest, current, share)
            above = [c for c in clocks if c > current]
            fits = [c for c in clocks if predict(c) <= bound]
            needs.append(max(fits[0] if fits else clocks[-1], above[0] if above else current))
        else:
            predict = _predictor(max(o.p90_s for o in recent), current, share)
            fits = [c for c in clocks if predict(c) <= bound * (1.0 - settings.lower_band)]
            needs.append(min(fits[0] if fits else current, current))
    if not needs:
        return current, ""
    need = max(needs)
    if need > current:
        return need, "slo_risk"
    if need < current and now_s - pool.changed_at_s >= settings.hold_s \
            and now_s - pool.raised_at_s >= settings.raise_hold_s:
        lowest_step = clocks[max(0, clocks.index(current) - settings.max_steps_down)]
        return max(need, lowest_step), "slack"
    return current, ""


def _predictor(latency_s: float, clock_mhz: int, share: float):
    """L(f) anchored at the newest observation: the compute-bound share scales with 1/f."""
    return lambda f: latency_s * (1.0 - share + share * clock_mhz / f)


def _compute_share(observations: list[ClockObservation], at_clock: int, prior: float) -> float:
    """The compute-bound share of the latency at `at_clock`, from a least-squares fit of
    L = a + b / f over the observations (weighted by samples), or `prior`."""
    if len({o.clock_mhz for o in observations}) < 2:
        return prior
    inverse = np.array([1.0 / o.clock_mhz for o in observations])
    latency = np.array([o.p90_s for o in observations])
    weight = np.sqrt(np.array([o.num_samples for o in observations], dtype=float))
    design = np.stack([np.ones_like(inverse), inverse], axis=1) * weight[:, None]
    (a, b), *_ = np.linalg.lstsq(design, latency * weight, rcond=None)
    # A fit whose clock-independent part is negative (beyond rounding) or whose latency
    # does not fall with the clock is load noise, not physics.
    if a < -1e-3 * float(latency.mean()) or b <= 0:
        return prior
    return float(np.clip((b / at_clock) / (max(a, 0.0) + b / at_clock), 0.02, 1.0))
