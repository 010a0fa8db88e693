"""The emulated clock backend: a device with a modeled power curve, for machines without
GPUs. It integrates energy from the modeled power at the replica's measured utilization,
so the energy series are real functions of real load, labelled `emulated` everywhere."""

from __future__ import annotations

from actors.clocks.power_curve import PowerCurve

BACKEND = "emulated"


class EmulatedDevice:
    backend = BACKEND

    def __init__(self, curve: PowerCurve, clock_mhz: int | None = None):
        self.curve = curve
        self.clock_mhz = clock_mhz or curve.max_clock_mhz
        self.energy_j = 0.0
        self.power_w = curve.power_w(self.clock_mhz, 0.0)

    def advance(self, seconds: float, utilization: float) -> float:
        """Accounts `seconds` at `utilization`; returns the joules they cost."""
        self.power_w = self.curve.power_w(self.clock_mhz, utilization)
        joules = self.power_w * max(0.0, seconds)
        self.energy_j += joules
        return joules
