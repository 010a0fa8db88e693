"""Clock, power and energy per device as Prometheus series, labelled with the backend
(`nvml` or `emulated`). Joules per token is energy over tokens, in PromQL."""

from __future__ import annotations

from ray.util import metrics

from actors.engine_metrics import SeriesIdentity

TAGS = ("replica", "pool", "role", "backend")


class DeviceMetrics:
    def __init__(self, identity: SeriesIdentity, backend: str):
        self.tags = {**identity.tags(), "backend": backend}
        self.clock = metrics.Gauge("tide_device_clock_mhz", "The device's SM clock.", tag_keys=TAGS)
        self.power = metrics.Gauge("tide_device_power_watts", "The device's power draw.", tag_keys=TAGS)
        self.energy = metrics.Counter("tide_device_energy_joules", "Energy the device used.", tag_keys=TAGS)
        self.utilization = metrics.Gauge(
            "tide_device_utilization_ratio", "Share of time the engine was stepping.", tag_keys=TAGS)
        self.clock_control = metrics.Gauge(
            "tide_device_clock_control", "1: Tide sets the device's clock; 0: observed only (the platform "
            "refused clock control).", tag_keys=TAGS)

    def record(self, clock_mhz: float, power_w: float, joules: float, utilization: float, controllable: bool) -> None:
        self.clock.set(clock_mhz, tags=self.tags)
        self.clock_control.set(1.0 if controllable else 0.0, tags=self.tags)
        self.power.set(power_w, tags=self.tags)
        self.utilization.set(utilization, tags=self.tags)
        if joules > 0:
            self.energy.inc(joules, tags=self.tags)
