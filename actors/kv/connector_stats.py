"""Per-step copy statistics of the Tide KV connector's worker side, carried to the
frontend by vLLM's own connector-stats path (`SchedulerStats.kv_connector_stats`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vllm.distributed.kv_transfer.kv_connector.v1.metrics import KVConnectorStats

FIELDS = (
    "num_exports", "export_bytes", "export_s",
    "num_imports", "import_bytes", "import_s", "num_import_failures",
)


def empty_totals() -> dict[str, float]:
    return dict.fromkeys(FIELDS, 0)


@dataclass
class TideConnectorStats(KVConnectorStats):
    data: dict[str, Any] = field(default_factory=empty_totals)

    def reset(self) -> None:
        self.data = empty_totals()

    def add(self, key: str, value: float) -> None:
        self.data[key] = self.data.get(key, 0) + value

    def aggregate(self, other: KVConnectorStats) -> KVConnectorStats:
        for key, value in other.data.items():
            self.add(key, value)
        return self

    def reduce(self) -> dict[str, int | float]:
        return dict(self.data)

    def is_empty(self) -> bool:
        return not any(self.data.values())
