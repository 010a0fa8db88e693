"""The emulated clock inside the engine: runs in the engine's worker process and, after
each forward pass, sleeps for the extra time the pass would have taken at the emulated
clock (`PowerCurve.slowdown`: prefill stretches almost with 1/clock, decode much less).
The clock comes from the file the replica's `EmulatedDevice` writes; it is re-read only
when the file changes."""

from __future__ import annotations

import os
import time
from pathlib import Path

from actors.clocks.power_curve import PowerCurve


class EmulatedStepStretch:
    def __init__(self, curve: PowerCurve, clock_file: Path):
        self._curve = curve
        self._clock_file = clock_file
        self._clock_mhz = curve.max_clock_mhz
        self._file_version: tuple[int, int] | None = None
        self._step_started: float | None = None
        self.stretched_s = 0.0

    def begin_step(self) -> None:
        self._step_started = time.perf_counter()

    def end_step(self, prefill_tokens: int, decode_tokens: int) -> float:
        """Sleeps for the step's modeled slowdown; returns the seconds added."""
        started, self._step_started = self._step_started, None
        tokens = prefill_tokens + decode_tokens
        clock = self._current_clock_mhz()
        if started is None or tokens == 0 or clock >= self._curve.max_clock_mhz:
            return 0.0
        elapsed = time.perf_counter() - started
        extra = elapsed * (self._curve.slowdown(clock, prefill_tokens / tokens) - 1.0)
        if extra > 0:
            time.sleep(extra)
            self.stretched_s += extra
        return extra

    def _current_clock_mhz(self) -> int:
        try:
            stat = os.stat(self._clock_file)
            # Each write replaces the file, so a new inode or time means a new clock.
            version = (stat.st_ino, stat.st_mtime_ns)
            if version != self._file_version:
                self._clock_mhz = int(self._clock_file.read_text().strip())
                self._file_version = version
        except (OSError, ValueError):
            # No file (the replica has not written one yet, or removed it): maximum clock.
            self._clock_mhz = self._curve.max_clock_mhz
            self._file_version = None
        return self._clock_mhz
