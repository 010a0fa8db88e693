"""Migrations seen from the source replica: by mode and outcome, stages, bytes copied
before the stop, and how long each took."""

from __future__ import annotations

from ray.util import metrics

from actors.engine_metrics import SeriesIdentity
from actors.migration_source import MigrationReport

TAGS = ("replica", "pool", "role", "mode")
DURATION_BUCKETS_S = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]


class MigrationMetrics:
    def __init__(self, identity: SeriesIdentity):
        self._tags = identity.tags()
        self.migrations = metrics.Counter(
            "tide_migrations", "Live migrations started on this replica, by mode and outcome.",
            tag_keys=(*TAGS, "outcome"))
        self.stages = metrics.Histogram(
            "tide_migration_stages", "Copy stages per completed migration (the stop stage included).",
            boundaries=[1, 2, 3, 4, 5, 8], tag_keys=TAGS)
        self.bytes = metrics.Counter(
            "tide_migration_bytes", "KV bytes copied while the request kept running (pre-copy stages).",
            tag_keys=TAGS)
        self.duration = metrics.Histogram(
            "tide_migration_duration_seconds", "From the decision to the hand-over.",
            boundaries=DURATION_BUCKETS_S, tag_keys=TAGS)

    def record(self, report: MigrationReport) -> None:
        tags = {**self._tags, "mode": report.mode}
        self.migrations.inc(1, tags={**tags, "outcome": report.outcome})
        if report.outcome == "migrated":
            self.stages.observe(report.num_stages, tags=tags)
            self.duration.observe(report.duration_s, tags=tags)
        if report.bytes_copied:
            self.bytes.inc(report.bytes_copied, tags=tags)
