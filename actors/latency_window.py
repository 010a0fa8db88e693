"""The latencies a replica's engine measured recently (time to first token and time
between tokens), at the replica's current clock only: a clock change starts a new window,
so a pool's latency-versus-clock model never mixes two clocks in one point."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LatencyPercentile:
    p90_s: float = 0.0
    num_samples: int = 0


class LatencyWindow:
    """Samples are (time, latency, weight): a simulated decode step stands for one
    inter-token latency per sequence in its batch."""

    def __init__(self, window_s: float, max_samples: int = 20_000):
        self.window_s = window_s
        self._ttft: deque[tuple[float, float, int]] = deque(maxlen=max_samples)
        self._itl: deque[tuple[float, float, int]] = deque(maxlen=max_samples)

    def add(self, now_s: float, ttfts_s: list[float], itls_s: list[float]) -> None:
        self._ttft.extend((now_s, v, 1) for v in ttfts_s)
        self._itl.extend((now_s, v, 1) for v in itls_s)

    def add_itl(self, now_s: float, itl_s: float, weight: int) -> None:
        self._itl.append((now_s, itl_s, weight))

    def restart(self) -> None:
        self._ttft.clear()
        self._itl.clear()

    def ttft(self, now_s: float) -> LatencyPercentile:
        return self._p90(self._ttft, now_s)

    def itl(self, now_s: float) -> LatencyPercentile:
        return self._p90(self._itl, now_s)

    def _p90(self, samples: deque[tuple[float, float, int]], now_s: float) -> LatencyPercentile:
        while samples and samples[0][0] < now_s - self.window_s:
            samples.popleft()
        if not samples:
            return LatencyPercentile()
        values = np.array([v for _, v, _ in samples])
        weights = np.array([w for _, _, w in samples])
        order = np.argsort(values)
        cumulative = np.cumsum(weights[order])
        at = int(np.searchsorted(cumulative, 0.9 * cumulative[-1]))
        return LatencyPercentile(float(values[order][at]), int(cumulative[-1]))
