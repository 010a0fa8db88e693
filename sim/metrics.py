"""What a simulation run reports: latency percentiles, SLO attainment and goodput
(DistServe: a request counts when it meets both its TTFT and its TPOT SLO)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sim.sequence import RequestRecord

PERCENTILES = (50, 90, 99)


@dataclass(frozen=True)
class SLO:
    ttft_s: float = 1.0
    tpot_s: float = 0.1


class LogHistogram:
    """Weighted samples in 1 % wide bins from 10 us to 1000 s: percentiles of billions of
    inter-token latencies in constant memory."""

    LOW_S = 1e-5
    RATIO = 1.01

    def __init__(self) -> None:
        self._num_bins = int(math.log(1e8) / math.log(self.RATIO)) + 2
        self.counts = np.zeros(self._num_bins)

    def add(self, value_s: float, weight: float = 1.0) -> None:
        self.counts[self._bin(value_s)] += weight

    def add_series(self, first_s: float, step_s: float, count: int, weight: float = 1.0) -> None:
        """Adds first_s + k * step_s for k in range(count) (step_s >= 0), one bin at a time
        rather than one value at a time: a decode run of n steps costs the bins it spans."""
        k = 0
        while k < count:
            b = self._bin(first_s + step_s * k)
            if step_s <= 0 or b == self._num_bins - 1:
                self.counts[b] += weight * (count - k)
                return
            # Bin b holds values below LOW_S * RATIO ** b.
            next_k = min(count, max(k + 1, math.ceil((self.LOW_S * self.RATIO ** b - first_s) / step_s)))
            self.counts[b] += weight * (next_k - k)
            k = next_k

    def _bin(self, value_s: float) -> int:
        if value_s <= self.LOW_S:
            return 0
        return min(self._num_bins - 1, 1 + int(math.log(value_s / self.LOW_S) / math.log(self.RATIO)))

    def percentile(self, q: float) -> float:
        total = self.counts.sum()
        if total == 0:
            return float("nan")
        index = int(np.searchsorted(np.cumsum(self.counts), total * q / 100.0))
        return self.LOW_S * self.RATIO ** (index - 0.5) if index else self.LOW_S


def percentiles(values: np.ndarray) -> dict[str, float]:
    if len(values) == 0:
        return {f"p{q}": float("nan") for q in PERCENTILES}
    return {f"p{q}": float(np.percentile(values, q)) for q in PERCENTILES}


def latency_summary(records: list[RequestRecord], itl: LogHistogram, slo: SLO, span_s: float) -> dict:
    done = [r for r in records if r.finished]
    ttft = np.array([r.ttft_s for r in done])
    tpot = np.array([r.tpot_s for r in done if r.request.output_tokens > 1])
    e2e = np.array([r.e2e_s for r in done])
    met = sum(1 for r in done if r.ttft_s <= slo.ttft_s and r.tpot_s <= slo.tpot_s)
    return {
        "num_requests": len(records),
        "num_finished": len(done),
        "ttft_s": percentiles(ttft),
        "tpot_s": percentiles(tpot),
        "itl_s": {f"p{q}": itl.percentile(q) for q in PERCENTILES},
        "e2e_s": percentiles(e2e),
        "slo": {"ttft_s": slo.ttft_s, "tpot_s": slo.tpot_s},
        "slo_attainment": met / len(records) if records else float("nan"),
        "goodput_rps": met / span_s if span_s > 0 else float("nan"),
        "num_preemptions": sum(r.num_preemptions for r in records),
        "num_migrated_requests": sum(1 for r in records if r.num_migrations),
        "num_migrations": sum(r.num_migrations for r in records),
    }
