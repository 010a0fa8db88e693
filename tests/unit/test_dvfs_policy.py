"""The per-pool clock policy (pure): lowest clock under the SLO bound, raised at once when
the bound is crossed, lowered slowly, maximum when data is missing, fitted online."""

from __future__ import annotations

import pytest

from policies.dvfs import (
    ClockObservation,
    ClockPolicySettings,
    LatencyMetric,
    PoolClockView,
    SetPoolClock,
    SloTargets,
    decide_clocks,
)
from policies.snapshot import Role

CLOCKS = (210, 300, 390, 480, 570, 660, 750, 840, 930, 1020, 1110, 1200, 1290, 1410)
SLO = SloTargets(ttft_s=1.0, tpot_s=0.1)
SETTINGS = ClockPolicySettings(margin=0.25, lower_band=0.15, hold_s=5.0, max_steps_down=3,
                               missing_after_s=30.0)
ITL, TTFT = LatencyMetric.ITL, LatencyMetric.TTFT


def pool(clock: int, *observations: ClockObservation, role: Role = Role.DECODE, changed_at_s: float = 0.0,
         name: str = "decode") -> PoolClockView:
    return PoolClockView(name, role, CLOCKS, clock, changed_at_s, tuple(observations))


def obs(metric: LatencyMetric, clock: int, p90_s: float, at_s: float = 100.0, n: int = 100) -> ClockObservation:
    return ClockObservation(metric, clock, p90_s, n, at_s)


def test_slack_lowers_the_clock_a_few_steps_at_a_time():
    actions = decide_clocks((pool(1410, obs(ITL, 1410, 0.01)),), SLO, SETTINGS, now_s=100.0)
    # 3 steps down from 1410 (the prior predicts even 210 would be fine).
    assert actions == [SetPoolClock("decode", 1110, "slack")]


def test_no_lowering_within_the_hold_time_after_a_change():
    view = pool(1110, obs(ITL, 1110, 0.01, at_s=103.0), changed_at_s=99.0)
    assert decide_clocks((view,), SLO, SETTINGS, now_s=103.0) == []
    assert decide_clocks((view,), SLO, SETTINGS, now_s=104.5)[0].clock_mhz == 840


def test_after_a_rise_for_the_slo_the_clock_holds_longer():
    view = PoolClockView("decode", Role.DECODE, CLOCKS, 1110, 90.0, (obs(ITL, 1110, 0.01, at_s=100.0),),
                         raised_at_s=90.0)
    assert decide_clocks((view,), SLO, SETTINGS, now_s=100.0) == []
    later = PoolClockView("decode", Role.DECODE, CLOCKS, 1110, 90.0, (obs(ITL, 1110, 0.01, at_s=121.0),),
                          raised_at_s=90.0)
    assert decide_clocks((later,), SLO, SETTINGS, now_s=121.0)[0].reason == "slack"


def test_lowering_follows_the_worst_recent_reading():
    readings = (obs(ITL, 1410, 0.064, at_s=97.0), obs(ITL, 1410, 0.01, at_s=99.0))
    # The latest alone would lower; the worst of the last seconds (0.064) is within the band.
    assert decide_clocks((pool(1410, *readings),), SLO, SETTINGS, now_s=100.0) == []


def test_over_the_bound_raises_at_once_even_within_the_hold_time():
    # Bound 0.075 s; at 570 MHz the decode metric reads 0.08 s.
    view = pool(570, obs(ITL, 570, 0.080, at_s=101.0), changed_at_s=100.0)
    [action] = decide_clocks((view,), SLO, SETTINGS, now_s=101.0)
    assert action.reason == "slo_risk" and action.clock_mhz > 570
    # Prior decode share 0.25 at 570: L(f) = 0.08 (0.75 + 0.25 * 570 / f) <= 0.075 needs f >= 760.
    assert action.clock_mhz == 840


def test_a_broken_slo_raises_to_the_maximum_at_once():
    # 0.12 s against a 0.1 s TPOT target at 300 MHz: no waiting for a fit, the maximum.
    view = pool(300, obs(ITL, 300, 0.12, at_s=101.0), changed_at_s=100.0)
    assert decide_clocks((view,), SLO, SETTINGS, now_s=101.0) == [SetPoolClock("decode", 1410, "slo_risk")]


def test_the_raise_is_at_least_one_step():
    view = pool(1290, obs(ITL, 1290, 0.0751), changed_at_s=0.0)
    assert decide_clocks((view,), SLO, SETTINGS, now_s=100.0) == [SetPoolClock("decode", 1410, "slo_risk")]


def test_between_the_band_and_the_bound_the_clock_holds():
    # Bound 0.075; the band asks for <= 0.06375 before lowering; 0.07 holds.
    assert decide_clocks((pool(930, obs(ITL, 930, 0.07)),), SLO, SETTINGS, now_s=100.0) == []


def test_missing_data_returns_to_the_maximum_after_a_while():
    stale = obs(ITL, 570, 0.01, at_s=10.0)
    assert decide_clocks((pool(570, stale, changed_at_s=10.0),), SLO, SETTINGS, now_s=30.0) == []
    assert decide_clocks((pool(570, stale, changed_at_s=10.0),), SLO, SETTINGS, now_s=41.0) == [
        SetPoolClock("decode", 1410, "no_data")]
    too_few = obs(ITL, 570, 0.01, at_s=40.0, n=3)
    assert decide_clocks((pool(570, too_few, changed_at_s=0.0),), SLO, SETTINGS, now_s=41.0)[0].reason == "no_data"


def test_readings_from_another_clock_or_before_the_change_do_not_count():
    old = obs(ITL, 1410, 0.01, at_s=95.0)
    view = pool(1110, old, changed_at_s=96.0)
    assert decide_clocks((view,), SLO, SETTINGS, now_s=100.0) == []


def test_the_fit_replaces_the_prior_once_two_clocks_were_seen():
    # A metric that is fully compute-bound: L = 0.05 * 1410 / f.
    history = tuple(obs(ITL, f, 0.05 * 1410 / f, at_s=97.0 + i) for i, f in enumerate((1410, 1110, 840)))
    view = pool(840, *history, changed_at_s=50.0)
    [action] = decide_clocks((view,), SLO, SETTINGS, now_s=100.0)
    # At 840 the reading is 0.0839 > 0.075: with share 1, f >= 0.05*1410/0.075 = 940 -> 1020.
    assert action == SetPoolClock("decode", 1020, "slo_risk")


def test_a_prefill_pool_follows_ttft_and_a_colocated_pool_the_stricter_metric():
    prefill = pool(1410, obs(TTFT, 1410, 0.2), obs(ITL, 1410, 0.09), role=Role.PREFILL, name="prefill")
    assert decide_clocks((prefill,), SLO, SETTINGS, now_s=100.0)[0].reason == "slack"
    colocated = pool(1110, obs(TTFT, 1110, 0.2), obs(ITL, 1110, 0.09), role=Role.COLOCATED, name="colocated")
    assert decide_clocks((colocated,), SLO, SETTINGS, now_s=100.0)[0] == SetPoolClock("colocated", 1410, "slo_risk")


def test_shared_mode_gives_every_pool_the_highest_need():
    prefill = pool(1410, obs(TTFT, 1410, 0.2), role=Role.PREFILL, name="prefill")
    decode = pool(1410, obs(ITL, 1410, 0.07), name="decode")
    assert decide_clocks((prefill, decode), SLO, SETTINGS, now_s=100.0)[0] == SetPoolClock("prefill", 1110, "slack")
    shared = ClockPolicySettings(**{**SETTINGS.__dict__, "shared": True})
    assert decide_clocks((prefill, decode), SLO, shared, now_s=100.0) == []


@pytest.mark.parametrize("base_itl_s", [0.004, 0.02])
def test_closed_loop_settles_under_the_bound_and_rises_before_the_slo_breaks(base_itl_s):
    """A pool whose P90 ITL is base * (0.7 + 0.3 * 1410 / f): light load settles at a low
    clock; when the load (base) grows in 10 % steps the clock rises and the reading never
    passes the target."""
    def reading(clock, base):
        return base * (0.7 + 0.3 * 1410 / clock)

    clock, changed_at, history, now = 1410, 0.0, [], 0.0
    base = base_itl_s
    worst = 0.0
    for tick in range(400):
        now += 1.0
        if tick >= 150 and tick % 10 == 0:
            base = min(base * 1.1, 0.072)
        latency = reading(clock, base)
        worst = max(worst, latency)
        history.append(obs(ITL, clock, latency, at_s=now))
        view = PoolClockView("decode", Role.DECODE, CLOCKS, clock, changed_at, tuple(history[-60:]))
        for action in decide_clocks((view,), SLO, SETTINGS, now):
            clock, changed_at = action.clock_mhz, now
        if tick == 149:
            settled = clock
    assert settled < 1410 and reading(settled, base_itl_s) <= 0.075
    assert worst <= SLO.tpot_s, "the SLO was broken before the clock rose"
    assert clock > settled
