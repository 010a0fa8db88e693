"""Picks and opens a replica's clock backend."""

from __future__ import annotations

import logging
from pathlib import Path

from actors.clocks.backend import ClockBackend, ClockBackendKind
from actors.clocks.emulated import EmulatedDevice
from actors.clocks.nvml import NvmlDevice
from actors.clocks.power_curve import PowerCurve

logger = logging.getLogger(__name__)


def open_clock_backend(kind: ClockBackendKind, curve: PowerCurve, clock_file: Path,
                       gpu_ids: list[str]) -> ClockBackend:
    if kind == ClockBackendKind.NVML:
        if not gpu_ids:
            raise ValueError("clocks.backend is nvml but this replica holds no GPU")
        return NvmlDevice(str(gpu_ids[0]))
    if kind == ClockBackendKind.AUTO and gpu_ids:
        try:
            return NvmlDevice(str(gpu_ids[0]))
        except Exception as exc:  # noqa: BLE001 - any NVML failure falls back to the emulated device
            logger.warning("GPU %s: NVML unavailable (%s); using the emulated clock", gpu_ids[0], exc)
    return EmulatedDevice(curve, clock_file)
