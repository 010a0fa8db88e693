"""The NVML clock backend against a stand-in for the NVML library: no GPU exists here, so
the library boundary (the `pynvml` module of nvidia-ml-py) is replaced by a small model of
one device that keeps the state NVML would (locked clocks, counters) and refuses like a
driver without CAP_SYS_ADMIN. Not run on hardware here."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pynvml
import pytest

from actors.clocks.nvml import NvmlDevice

GRAPHICS_MHZ = [1410, 1395, 1380, 705, 210]


class StandInNvml(SimpleNamespace):
    """The subset of `pynvml` the backend calls, with pynvml's own error type and codes."""

    NVMLError = pynvml.NVMLError
    NVML_ERROR_NO_PERMISSION = pynvml.NVML_ERROR_NO_PERMISSION
    NVML_ERROR_NOT_SUPPORTED = pynvml.NVML_ERROR_NOT_SUPPORTED
    NVML_CLOCK_SM = pynvml.NVML_CLOCK_SM

    def __init__(self, allow_lock: bool = True, energy_counter: bool = True):
        super().__init__()
        self.allow_lock = allow_lock
        self.energy_counter = energy_counter
        self.locked: tuple[int, int] | None = None
        self.energy_mj = 1_000_000
        self.power_mw = 250_000
        self.initialized = 0
        self.calls: list[str] = []

    def nvmlInit(self):
        self.initialized += 1

    def nvmlShutdown(self):
        self.initialized -= 1

    def nvmlDeviceGetHandleByIndex(self, index):
        assert index == 0
        return "handle-0"

    def nvmlDeviceGetHandleByUUID(self, uuid):
        return f"handle-{uuid}"

    def nvmlDeviceGetSupportedMemoryClocks(self, handle):
        return [1215, 405]

    def nvmlDeviceGetSupportedGraphicsClocks(self, handle, memory_mhz):
        assert memory_mhz == 1215
        return list(GRAPHICS_MHZ)

    def nvmlDeviceSetGpuLockedClocks(self, handle, low, high):
        self.calls.append(f"lock {low} {high}")
        if not self.allow_lock:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NO_PERMISSION)
        self.locked = (low, high)

    def nvmlDeviceResetGpuLockedClocks(self, handle):
        self.calls.append("reset")
        if not self.allow_lock:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NO_PERMISSION)
        self.locked = None

    def nvmlDeviceGetClockInfo(self, handle, kind):
        assert kind == pynvml.NVML_CLOCK_SM
        return self.locked[0] if self.locked else 1410

    def nvmlDeviceGetPowerUsage(self, handle):
        return self.power_mw

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        if not self.energy_counter:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return self.energy_mj


def test_supported_clocks_lock_and_reset():
    nvml = StandInNvml()
    device = NvmlDevice("0", nvml)
    assert device.supported_clocks_mhz == (210, 705, 1380, 1395, 1410)
    assert device.controllable and device.backend == "nvml"
    assert device.set_clock(600) == 705 and nvml.locked == (705, 705)
    assert device.clock_mhz == 705
    device.reset()
    assert nvml.locked is None and device.clock_mhz == 1410


def test_energy_comes_from_the_total_energy_counter():
    nvml = StandInNvml()
    device = NvmlDevice("0", nvml)
    nvml.energy_mj += 45_500
    device.set_clock(210)
    sample = device.sample(elapsed_s=1.0, utilization=0.3)
    assert sample.joules == pytest.approx(45.5) and sample.power_w == 250.0 and sample.clock_mhz == 210


def test_without_an_energy_counter_power_is_integrated():
    nvml = StandInNvml(energy_counter=False)
    device = NvmlDevice("0", nvml)
    assert device.sample(elapsed_s=2.0, utilization=0.3).joules == pytest.approx(500.0)


def test_a_stale_lock_from_a_crashed_process_is_reset_on_open():
    nvml = StandInNvml()
    crashed = NvmlDevice("0", nvml)
    crashed.set_clock(210)
    # The process dies without closing; the next one opens the same device.
    restarted = NvmlDevice("0", nvml)
    assert nvml.locked is None and restarted.clock_mhz == 1410


def test_close_resets_the_clock_and_releases_nvml():
    nvml = StandInNvml()
    device = NvmlDevice("GPU-abc", nvml)
    device.set_clock(705)
    device.close()
    assert nvml.locked is None and nvml.initialized == 0


def test_permission_refused_makes_the_device_observe_only(caplog):
    nvml = StandInNvml(allow_lock=False)
    with caplog.at_level(logging.WARNING):
        device = NvmlDevice("0", nvml)
    assert not device.controllable and device.observe_only_reason == "no_permission"
    assert "observed only" in caplog.text and "CAP_SYS_ADMIN" in caplog.text
    assert device.set_clock(210) == 1410 and nvml.locked is None
    assert nvml.calls == ["reset"], "an observe-only device stops trying"
    nvml.energy_mj += 1000
    assert device.sample(1.0, 0.5).joules == pytest.approx(1.0)
    device.close()
    assert nvml.initialized == 0


def test_other_nvml_errors_are_not_swallowed():
    nvml = StandInNvml()
    device = NvmlDevice("0", nvml)

    def lost(handle, low, high):
        raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)

    nvml.nvmlDeviceSetGpuLockedClocks = lost
    with pytest.raises(pynvml.NVMLError):
        device.set_clock(705)
