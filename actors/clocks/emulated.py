"""The emulated clock backend: a device with a modeled power curve, for machines without
GPUs. Power is the curve at the chosen clock and the replica's measured utilization, and
energy its integral, so the energy series are real functions of real load. The chosen
clock is written to a small file that the engine's process reads every step to stretch
the step by the curve's modeled slowdown (`step_stretch.py`), so a lower clock really
makes the engine slower. Labelled `emulated` in every metric, log and dashboard."""

from __future__ import annotations

import os
from pathlib import Path

from actors.clocks.backend import DeviceSample, lowest_at_or_above
from actors.clocks.power_curve import PowerCurve

BACKEND = "emulated"


class EmulatedDevice:
    backend = BACKEND
    controllable = True
    observe_only_reason = ""

    def __init__(self, curve: PowerCurve, clock_file: Path | None = None):
        self.curve = curve
        self.supported_clocks_mhz = curve.supported_clocks_mhz
        self._clock_file = clock_file
        self._clock_mhz = curve.max_clock_mhz
        self.energy_j = 0.0
        self.power_w = curve.power_w(self._clock_mhz, 0.0)
        self._publish()

    @property
    def clock_mhz(self) -> int:
        return self._clock_mhz

    def set_clock(self, clock_mhz: int) -> int:
        self._clock_mhz = lowest_at_or_above(self.supported_clocks_mhz, clock_mhz)
        self._publish()
        return self._clock_mhz

    def reset(self) -> None:
        self.set_clock(self.curve.max_clock_mhz)

    def sample(self, elapsed_s: float, utilization: float) -> DeviceSample:
        self.power_w = self.curve.power_w(self._clock_mhz, utilization)
        joules = self.power_w * max(0.0, elapsed_s)
        self.energy_j += joules
        return DeviceSample(self._clock_mhz, self.power_w, joules)

    def close(self) -> None:
        self.reset()
        if self._clock_file is not None:
            self._clock_file.unlink(missing_ok=True)

    def _publish(self) -> None:
        if self._clock_file is None:
            return
        self._clock_file.parent.mkdir(parents=True, exist_ok=True)
        partial = self._clock_file.with_suffix(".partial")
        partial.write_text(f"{self._clock_mhz}\n")
        os.replace(partial, self._clock_file)
