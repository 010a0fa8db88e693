"""The NVML clock backend (through `nvidia-ml-py`): supported graphics clocks, a locked
clock range set and reset, power and the total-energy counter.

Locking clocks needs root or CAP_SYS_ADMIN on most drivers. When the platform refuses
(NVML_ERROR_NO_PERMISSION) or the device cannot lock clocks (NVML_ERROR_NOT_SUPPORTED),
the device becomes observe-only: power and energy are still read, the clock is left to
the driver, and the replica says so in a log line and in `tide_device_clock_control`.

A process that dies holding a locked clock leaves it locked; so a device is reset when it
is opened (the next process on it clears a stale lock), and when it is closed (replica
stop, drain, controller shutdown).

Not run on a GPU here: tested against a stand-in for the NVML library only
(tests/unit/test_nvml_clocks.py).
"""

from __future__ import annotations

import importlib
import logging
from types import ModuleType

from actors.clocks.backend import DeviceSample, lowest_at_or_above

logger = logging.getLogger(__name__)

BACKEND = "nvml"


class NvmlDevice:
    backend = BACKEND

    def __init__(self, device: str, nvml: ModuleType | None = None):
        """`device`: an NVML index ("0") or a UUID ("GPU-..."), as in CUDA_VISIBLE_DEVICES."""
        self._nvml = nvml or importlib.import_module("pynvml")
        self._nvml.nvmlInit()
        if device.startswith("GPU-") or device.startswith("MIG-"):
            self._handle = self._nvml.nvmlDeviceGetHandleByUUID(device)
        else:
            self._handle = self._nvml.nvmlDeviceGetHandleByIndex(int(device))
        self.device = device
        memory_mhz = max(self._nvml.nvmlDeviceGetSupportedMemoryClocks(self._handle))
        self.supported_clocks_mhz = tuple(sorted(set(
            self._nvml.nvmlDeviceGetSupportedGraphicsClocks(self._handle, memory_mhz))))
        self.controllable = True
        self.observe_only_reason = ""
        self._locked_mhz: int | None = None
        self._energy_mj = self._read_energy_mj()
        self.reset()

    @property
    def clock_mhz(self) -> int:
        return self._locked_mhz or self.supported_clocks_mhz[-1]

    def set_clock(self, clock_mhz: int) -> int:
        clock = lowest_at_or_above(self.supported_clocks_mhz, clock_mhz)
        if not self.controllable:
            return self.clock_mhz
        try:
            self._nvml.nvmlDeviceSetGpuLockedClocks(self._handle, clock, clock)
        except self._nvml.NVMLError as exc:
            self._refused("set locked clocks", exc)
            return self.clock_mhz
        self._locked_mhz = clock
        return clock

    def reset(self) -> None:
        if not self.controllable:
            return
        try:
            self._nvml.nvmlDeviceResetGpuLockedClocks(self._handle)
        except self._nvml.NVMLError as exc:
            self._refused("reset locked clocks", exc)
            return
        self._locked_mhz = None

    def sample(self, elapsed_s: float, utilization: float) -> DeviceSample:
        clock = self._nvml.nvmlDeviceGetClockInfo(self._handle, self._nvml.NVML_CLOCK_SM)
        power_w = self._nvml.nvmlDeviceGetPowerUsage(self._handle) / 1000.0
        energy_mj = self._read_energy_mj()
        if energy_mj is None or self._energy_mj is None:
            joules = power_w * max(0.0, elapsed_s)
        else:
            joules = max(0, energy_mj - self._energy_mj) / 1000.0
        self._energy_mj = energy_mj
        return DeviceSample(clock, power_w, joules)

    def close(self) -> None:
        try:
            self.reset()
        finally:
            self._nvml.nvmlShutdown()

    def _read_energy_mj(self) -> int | None:
        """The device's total-energy counter (Volta and later), None where unsupported."""
        try:
            return self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)
        except self._nvml.NVMLError as exc:
            if getattr(exc, "value", None) == self._nvml.NVML_ERROR_NOT_SUPPORTED:
                return None
            raise

    def _refused(self, what: str, exc: Exception) -> None:
        code = getattr(exc, "value", None)
        if code not in (self._nvml.NVML_ERROR_NO_PERMISSION, self._nvml.NVML_ERROR_NOT_SUPPORTED):
            raise exc
        self.controllable = False
        self.observe_only_reason = "no_permission" if code == self._nvml.NVML_ERROR_NO_PERMISSION else "not_supported"
        logger.warning("GPU %s: NVML refused to %s (%s); clocks are observed only, the driver keeps "
                       "control (grant CAP_SYS_ADMIN to lock clocks)", self.device, what, exc)
