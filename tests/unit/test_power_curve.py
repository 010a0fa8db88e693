"""The emulated device's power model: idle at zero load, the TDP at full load and maximum
clock, dynamic power falling faster than linearly with the clock (f * V^2), and energy
as power integrated over time."""

from __future__ import annotations

import pytest

from actors.clocks.emulated import EmulatedDevice
from actors.clocks.power_curve import PowerCurve


@pytest.fixture
def a100() -> PowerCurve:
    return PowerCurve.load("a100-sxm4-40gb")


def test_curve_end_points(a100):
    assert a100.source and a100.max_clock_mhz == 1410 and a100.min_clock_mhz == 210
    assert a100.power_w(1410, 0.0) == a100.idle_w == 55.0
    assert a100.power_w(1410, 1.0) == pytest.approx(a100.max_w)
    assert a100.power_w(1410, 7.0) == a100.power_w(1410, 1.0)


def test_dynamic_power_falls_faster_than_the_clock(a100):
    full = a100.power_w(1410, 1.0) - a100.idle_w
    half_clock = a100.power_w(705, 1.0) - a100.idle_w
    assert half_clock < 0.5 * full
    powers = [a100.power_w(f, 0.6) for f in a100.supported_clocks_mhz]
    assert powers == sorted(powers)


def test_energy_integrates_power(a100):
    device = EmulatedDevice(a100)
    assert device.clock_mhz == 1410 and device.backend == "emulated"
    sample = device.sample(2.0, 0.5)
    assert sample.joules == pytest.approx(2.0 * a100.power_w(1410, 0.5)) and sample.clock_mhz == 1410
    device.sample(1.0, 0.0)
    assert device.energy_j == pytest.approx(sample.joules + a100.idle_w)


def test_prefill_slows_with_the_clock_and_decode_much_less(a100):
    assert a100.slowdown(1410, 1.0) == a100.slowdown(1410, 0.0) == 1.0
    prefill, decode = a100.slowdown(705, 1.0), a100.slowdown(705, 0.0)
    assert prefill == pytest.approx(1 - 0.9 + 0.9 * 2)
    assert decode == pytest.approx(1 - 0.25 + 0.25 * 2)
    assert a100.slowdown(705, 0.5) == pytest.approx(1 - 0.575 + 0.575 * 2)


def test_lower_clock_costs_less_energy_per_decode_step(a100):
    """Energy of one decode step at full utilization: power x stretched time."""
    def step_energy(clock):
        return a100.power_w(clock, 1.0) * a100.slowdown(clock, 0.0)
    energies = [step_energy(c) for c in a100.supported_clocks_mhz]
    assert min(energies) < 0.6 * step_energy(1410)


def test_unknown_curve_names_the_known_ones():
    with pytest.raises(ValueError, match="a100-sxm4-40gb"):
        PowerCurve.load("h900")


def test_invalid_curve_is_rejected():
    with pytest.raises(ValueError, match="ascending"):
        PowerCurve("bad", "none", (1410, 210), 50.0, 400.0, 0.7, 1.05)
