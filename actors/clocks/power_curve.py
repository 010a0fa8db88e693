"""A device's power and step time as functions of its clock, as data.

P(f, u) = P_idle + u * (P_max - P_idle) * (f * V(f)^2) / (f_max * V(f_max)^2)

Dynamic CMOS power is proportional to f * V^2; V rises with f along the DVFS curve (here
linear between the end points). A step that takes t at the maximum clock takes
t * (1 - c + c * f_max / f) at clock f, where c is the step's compute-bound share (high for
prefill, low for memory-bound decode). Curves live in actors/clocks/curves/*.yaml, each
with its source.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

CURVES_DIR = Path(__file__).parent / "curves"


@dataclass(frozen=True)
class PowerCurve:
    name: str
    source: str
    supported_clocks_mhz: tuple[int, ...]
    idle_w: float
    max_w: float
    volts_at_min_clock: float
    volts_at_max_clock: float
    prefill_compute_frac: float = 0.9
    decode_compute_frac: float = 0.25

    def __post_init__(self):
        if not self.supported_clocks_mhz or sorted(self.supported_clocks_mhz) != list(self.supported_clocks_mhz):
            raise ValueError(f"{self.name}: supported clocks must be a non-empty ascending list")
        if not 0 <= self.idle_w <= self.max_w:
            raise ValueError(f"{self.name}: need 0 <= idle_w <= max_w")
        if not (0 <= self.decode_compute_frac <= 1 and 0 <= self.prefill_compute_frac <= 1):
            raise ValueError(f"{self.name}: compute-bound shares must be within [0, 1]")

    def slowdown(self, clock_mhz: float, prefill_share: float) -> float:
        """How much longer a step takes at `clock_mhz` than at the maximum clock, for a step
        whose work is `prefill_share` prefill (the rest decode)."""
        share = min(1.0, max(0.0, prefill_share))
        compute = share * self.prefill_compute_frac + (1.0 - share) * self.decode_compute_frac
        return 1.0 - compute + compute * self.max_clock_mhz / max(clock_mhz, 1.0)

    @property
    def min_clock_mhz(self) -> int:
        return self.supported_clocks_mhz[0]

    @property
    def max_clock_mhz(self) -> int:
        return self.supported_clocks_mhz[-1]

    def volts(self, clock_mhz: float) -> float:
        span = self.max_clock_mhz - self.min_clock_mhz
        share = (clock_mhz - self.min_clock_mhz) / span if span else 1.0
        return self.volts_at_min_clock + share * (self.volts_at_max_clock - self.volts_at_min_clock)

    def power_w(self, clock_mhz: float, utilization: float) -> float:
        utilization = min(1.0, max(0.0, utilization))
        relative = (clock_mhz * self.volts(clock_mhz) ** 2) / (self.max_clock_mhz * self.volts_at_max_clock ** 2)
        return self.idle_w + utilization * (self.max_w - self.idle_w) * relative

    @classmethod
    def load(cls, name: str, directory: Path = CURVES_DIR) -> PowerCurve:
        path = directory / f"{name}.yaml"
        if not path.exists():
            known = sorted(p.stem for p in directory.glob("*.yaml"))
            raise ValueError(f"no power curve {name!r}; known: {known}")
        raw = yaml.safe_load(path.read_text())
        return cls(name=name, source=raw["source"], supported_clocks_mhz=tuple(raw["supported_clocks_mhz"]),
                   idle_w=raw["idle_w"], max_w=raw["max_w"], volts_at_min_clock=raw["volts_at_min_clock"],
                   volts_at_max_clock=raw["volts_at_max_clock"],
                   prefill_compute_frac=raw.get("prefill_compute_frac", 0.9),
                   decode_compute_frac=raw.get("decode_compute_frac", 0.25))
