"""KV transfers per medium as Prometheus series: bytes, seconds, failures, and fallbacks
to recompute when a decode replica could not fetch a prompt's KV."""

from __future__ import annotations

from ray.util import metrics

from actors.engine_metrics import SeriesIdentity
from actors.messages import TransferRecord

TRANSFER_BUCKETS_S = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]
TAGS = ("replica", "pool", "role", "medium", "direction")


class TransferMetrics:
    def __init__(self, identity: SeriesIdentity):
        self._tags = identity.tags()
        self.bytes = metrics.Counter(
            "tide_kv_transfer_bytes", "KV bytes published (prefill) or fetched (decode).", tag_keys=TAGS)
        self.seconds = metrics.Histogram(
            "tide_kv_transfer_duration_seconds", "Time to publish or fetch one request's KV.",
            boundaries=TRANSFER_BUCKETS_S, tag_keys=TAGS)
        self.failures = metrics.Counter("tide_kv_transfer_failures", "KV transfers that failed.", tag_keys=TAGS)
        self.recompute_fallbacks = metrics.Counter(
            "tide_kv_transfer_recompute_fallbacks", "Requests whose KV could not be fetched and was recomputed.",
            tag_keys=("replica", "pool", "role", "medium"))

    def record(self, record: TransferRecord) -> None:
        tags = {**self._tags, "medium": record.medium, "direction": record.direction}
        if record.ok:
            self.bytes.inc(record.num_bytes, tags=tags)
            self.seconds.observe(record.seconds, tags=tags)
        else:
            self.failures.inc(1, tags=tags)

    def recomputed(self, medium: str) -> None:
        self.recompute_fallbacks.inc(1, tags={**self._tags, "medium": medium})
