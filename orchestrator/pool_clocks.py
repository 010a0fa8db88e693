"""The controller's side of per-pool clocks: each pool's chosen clock and when it last
changed, the pool's latency readings over time, the decision for the configured mode, and
which replicas still run at another clock than their pool's (new, restarted, or a set
that failed). The simulator drives the same class."""

from __future__ import annotations

from collections import deque
from dataclasses import replace

from actors.clocks.backend import lowest_at_or_above
from policies.dvfs import (
    ClockMode,
    ClockObservation,
    ClockPolicySettings,
    LatencyMetric,
    PoolClockView,
    SetPoolClock,
    SloTargets,
    decide_clocks,
)
from policies.snapshot import ClusterSnapshot, PoolSnapshot, ReplicaId


class PoolClocks:
    def __init__(self, mode: ClockMode, fixed_clock_mhz: int | None, policy: ClockPolicySettings, slo: SloTargets,
                 pools: list[str], history: int = 240):
        self._mode = mode
        self._fixed_clock_mhz = fixed_clock_mhz
        self._policy = replace(policy, shared=mode == ClockMode.SHARED)
        self._slo = slo
        self._chosen: dict[str, int] = {}
        self._changed_at: dict[str, float] = {}
        self._raised_at: dict[str, float] = {}
        self._observations: dict[str, deque[ClockObservation]] = {
            pool: deque(maxlen=history) for pool in pools}

    def change_mode(self, mode: ClockMode, fixed_clock_mhz: int | None, now_s: float) -> None:
        """Switches mode live (e.g. to pin every pool during an incident); the policy's
        hold time counts from the switch."""
        if mode == ClockMode.FIXED and fixed_clock_mhz is None:
            raise ValueError("clock mode fixed needs a clock")
        self._mode, self._fixed_clock_mhz = mode, fixed_clock_mhz
        self._policy = replace(self._policy, shared=mode == ClockMode.SHARED)
        self._changed_at = {pool: now_s for pool in self._changed_at}
        if mode == ClockMode.OFF:
            self._chosen.clear()

    def change_slo(self, slo: SloTargets) -> None:
        """The targets the policy keeps, changed live."""
        self._slo = slo

    @property
    def slo(self) -> SloTargets:
        return self._slo

    @property
    def chosen(self) -> dict[str, int]:
        return dict(self._chosen)

    def decide(self, snapshot: ClusterSnapshot, supported: dict[str, tuple[int, ...]]) -> list[SetPoolClock]:
        """What the mode wants this tick. Pools start at their maximum clock."""
        if self._mode == ClockMode.OFF:
            return []
        now = snapshot.taken_at_s
        for pool in snapshot.pools:
            clocks = supported.get(pool.name)
            if clocks and pool.name not in self._chosen:
                self._chosen[pool.name], self._changed_at[pool.name] = clocks[-1], now
            if pool.name in self._chosen:
                self._observe(pool, now)
        if self._mode == ClockMode.FIXED:
            return [SetPoolClock(pool, fixed, "fixed") for pool, clocks in supported.items()
                    if pool in self._chosen
                    and self._chosen[pool] != (fixed := lowest_at_or_above(clocks, self._fixed_clock_mhz))]
        views = tuple(
            PoolClockView(p.name, p.role, supported[p.name], self._chosen[p.name], self._changed_at[p.name],
                          tuple(self._observations[p.name]), self._raised_at.get(p.name, float("-inf")))
            for p in snapshot.pools if p.name in self._chosen)
        return decide_clocks(views, self._slo, self._policy, now)

    def apply(self, action: SetPoolClock, now_s: float) -> None:
        if action.clock_mhz > self._chosen.get(action.pool, 0) and action.reason == "slo_risk":
            self._raised_at[action.pool] = now_s
        self._chosen[action.pool] = action.clock_mhz
        self._changed_at[action.pool] = now_s

    def out_of_step(self, snapshot: ClusterSnapshot, controllable: set[ReplicaId]) -> list[tuple[ReplicaId, int]]:
        """Serving replicas whose clock differs from their pool's."""
        return [(r.replica_id, self._chosen[pool.name]) for pool in snapshot.pools if pool.name in self._chosen
                for r in pool.serving if r.replica_id in controllable and r.clock_mhz != self._chosen[pool.name]]

    def _observe(self, pool: PoolSnapshot, now_s: float) -> None:
        clock = self._chosen[pool.name]
        at_clock = [r for r in pool.serving if r.clock_mhz == clock]
        readings = (
            (LatencyMetric.TTFT, [(r.ttft_p90_s, r.num_ttft_samples) for r in at_clock if r.num_ttft_samples]),
            (LatencyMetric.ITL, [(r.itl_p90_s, r.num_itl_samples) for r in at_clock if r.num_itl_samples]),
        )
        for metric, values in readings:
            if values:
                # The pool meets its SLO only if its slowest replica does.
                self._observations[pool.name].append(ClockObservation(
                    metric, clock, max(v for v, _ in values), sum(n for _, n in values), now_s))
