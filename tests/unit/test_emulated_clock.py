"""The emulated clock end to end on one machine: the replica's device writes the clock
file, the engine-side stretch reads it and sleeps for the modeled slowdown of each step."""

from __future__ import annotations

import time

import pytest

from actors.clocks.emulated import EmulatedDevice
from actors.clocks.power_curve import PowerCurve
from actors.clocks.step_stretch import EmulatedStepStretch


@pytest.fixture
def a100() -> PowerCurve:
    return PowerCurve.load("a100-sxm4-40gb")


def _timed_step(stretch: EmulatedStepStretch, work_s: float, prefill: int, decode: int) -> float:
    started = time.perf_counter()
    stretch.begin_step()
    time.sleep(work_s)
    stretch.end_step(prefill, decode)
    return time.perf_counter() - started


def test_set_clock_rounds_up_to_a_supported_clock_and_publishes_it(a100, tmp_path):
    clock_file = tmp_path / "clocks" / "decode-0"
    device = EmulatedDevice(a100, clock_file)
    assert clock_file.read_text().strip() == "1410"
    assert device.set_clock(500) == 570 and device.clock_mhz == 570
    assert clock_file.read_text().strip() == "570"
    assert device.set_clock(5000) == 1410
    device.set_clock(210)
    device.close()
    assert device.clock_mhz == 1410 and not clock_file.exists()


def test_steps_stretch_by_the_modeled_slowdown(a100, tmp_path):
    clock_file = tmp_path / "clock"
    device = EmulatedDevice(a100, clock_file)
    stretch = EmulatedStepStretch(a100, clock_file)
    at_max = _timed_step(stretch, 0.02, prefill=0, decode=8)
    assert at_max == pytest.approx(0.02, abs=0.01)

    device.set_clock(705)
    decode = _timed_step(stretch, 0.02, prefill=0, decode=8)
    prefill = _timed_step(stretch, 0.02, prefill=512, decode=0)
    assert decode == pytest.approx(0.02 * a100.slowdown(705, 0.0), rel=0.25)
    assert prefill == pytest.approx(0.02 * a100.slowdown(705, 1.0), rel=0.25)
    assert prefill > decode * 1.3

    device.reset()
    assert _timed_step(stretch, 0.02, prefill=512, decode=0) == pytest.approx(0.02, abs=0.01)


def test_no_clock_file_means_the_maximum_clock(a100, tmp_path):
    stretch = EmulatedStepStretch(a100, tmp_path / "missing")
    assert _timed_step(stretch, 0.01, prefill=100, decode=0) < 0.02
    assert stretch.stretched_s == 0.0
