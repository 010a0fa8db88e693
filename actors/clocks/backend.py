"""What a replica needs from its device's clock: the supported clocks, a locked clock it can
set and reset, and power and energy readings. Two backends: NVML (a real GPU) and emulated
(a modeled device, for machines without GPUs)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Protocol


@dataclass(frozen=True)
class DeviceSample:
    clock_mhz: float
    power_w: float
    # Energy since the previous sample.
    joules: float


class ClockBackend(Protocol):
    backend: str
    supported_clocks_mhz: tuple[int, ...]
    # False when the platform refused clock control: the device is only observed.
    controllable: bool
    observe_only_reason: str

    @property
    def clock_mhz(self) -> int:
        """The clock Tide last set (the maximum when none is locked)."""
        ...

    def set_clock(self, clock_mhz: int) -> int:
        """Locks the clock at the lowest supported clock at or above `clock_mhz`; returns it."""
        ...

    def reset(self) -> None:
        """Gives the clock back to the device's default policy."""
        ...

    def sample(self, elapsed_s: float, utilization: float) -> DeviceSample: ...

    def close(self) -> None:
        """Resets the clock and releases the device."""
        ...


def lowest_at_or_above(supported_mhz: tuple[int, ...], clock_mhz: float) -> int:
    return next((c for c in supported_mhz if c >= clock_mhz), supported_mhz[-1])


class ClockBackendKind(str, Enum):
    # NVML when the replica holds a GPU and NVML answers, else emulated.
    AUTO = "auto"
    EMULATED = "emulated"
    NVML = "nvml"
