"""A replica's device: its clock backend, the loop that meters power and energy at the
engine's measured utilization, and the device's Prometheus series."""

from __future__ import annotations

import asyncio
import logging
import time

import ray

from actors.clocks.backend import ClockBackend
from actors.clocks.device_metrics import DeviceMetrics
from actors.clocks.emulated import EmulatedDevice
from actors.clocks.open_device import open_clock_backend
from actors.clocks.power_curve import PowerCurve
from actors.engine_load import EngineLoad
from actors.engine_metrics import SeriesIdentity
from actors.engine_spec import EngineSpec

logger = logging.getLogger(__name__)


class ReplicaDevice:
    def __init__(self, backend: ClockBackend, metrics: DeviceMetrics, load: EngineLoad, meter_s: float):
        self.backend = backend
        self._metrics = metrics
        self._load = load
        self._meter_s = meter_s
        self.energy_j = 0.0
        self._meter: asyncio.Task | None = None
        logger.info("device %s: clocks %s", backend.backend,
                    "controlled" if backend.controllable else f"observed only ({backend.observe_only_reason})")

    @classmethod
    def open(cls, spec: EngineSpec, replica_id: str, identity: SeriesIdentity, load: EngineLoad) -> ReplicaDevice:
        gpu_ids = [str(g) for g in ray.get_gpu_ids()] if ray.is_initialized() else []
        backend = open_clock_backend(spec.clock_backend, PowerCurve.load(spec.power_curve),
                                     spec.clock_file(replica_id), gpu_ids)
        return cls(backend, DeviceMetrics(identity, backend.backend), load, spec.energy_meter_s)

    @property
    def emulated(self) -> bool:
        return isinstance(self.backend, EmulatedDevice)

    @property
    def clock_mhz(self) -> int:
        return self.backend.clock_mhz

    def set_clock(self, clock_mhz: int) -> int:
        before = self.backend.clock_mhz
        applied = self.backend.set_clock(clock_mhz)
        if applied != before:
            self._load.latencies.restart()
        return applied

    def start_metering(self) -> None:
        self._meter = asyncio.create_task(self._meter_forever())

    def close(self) -> None:
        if self._meter is not None:
            self._meter.cancel()
        self.backend.close()

    async def _meter_forever(self) -> None:
        last_at, last_busy = time.monotonic(), self._load.busy_s
        while True:
            await asyncio.sleep(self._meter_s)
            now, busy = time.monotonic(), self._load.busy_s
            utilization = min(1.0, (busy - last_busy) / max(now - last_at, 1e-9))
            sample = self.backend.sample(now - last_at, utilization)
            self.energy_j += sample.joules
            self._metrics.record(sample.clock_mhz, sample.power_w, sample.joules, utilization, self.backend.controllable)
            last_at, last_busy = now, busy
