"""The controller's series: every action by kind, reason and outcome with its duration;
pool membership by health; per-replica load and KV capacity from the snapshot it builds;
policy tick time. Exported through Ray's metrics pipeline (see docs/telemetry.md)."""

from __future__ import annotations

from ray.util import metrics

from orchestrator.events import ControllerEvent
from policies.dvfs import SloTargets
from policies.snapshot import ClusterSnapshot, Health

ACTION_BUCKETS_S = [0.001, 0.01, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0]
TICK_BUCKETS_S = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0]
REPLICA_TAGS = ("cluster", "replica", "pool", "role")


class ControllerMetrics:
    def __init__(self, cluster: str):
        self._cluster = {"cluster": cluster}
        self._last_durations: dict[tuple[str, str], float] = {}
        self.actions = metrics.Counter(
            "tide_controller_actions", "Controller actions by kind, reason and outcome.",
            tag_keys=("cluster", "kind", "reason", "outcome", "pool"))
        self.action_duration = metrics.Histogram(
            "tide_controller_action_duration_seconds", "How long each controller action took.",
            boundaries=ACTION_BUCKETS_S, tag_keys=("cluster", "kind", "pool"))
        self.last_action_duration = metrics.Gauge(
            "tide_controller_action_last_duration_seconds", "Duration of the latest action of each kind.",
            tag_keys=("cluster", "kind", "pool"))
        self._last_gated_starts: dict[tuple[str, str], float] = {}
        self.last_gated_start = metrics.Gauge(
            "tide_controller_gated_start_last_seconds", "How long the latest drop's or restore's new engines took to "
            "start behind their weights gates while the group served (kind drop or restore; a drop that takes a "
            "standby pipeline: its wait for the standby).",
            tag_keys=("cluster", "kind", "pool"))
        self.tick_duration = metrics.Histogram(
            "tide_controller_tick_duration_seconds", "One observe -> decide -> act tick.",
            boundaries=TICK_BUCKETS_S, tag_keys=("cluster",))
        self.tick_errors = metrics.Counter(
            "tide_controller_tick_errors", "Ticks that raised (the loop goes on).", tag_keys=("cluster",))
        self.pool_replicas = metrics.Gauge(
            "tide_pool_replicas", "Replicas per pool by health.", tag_keys=("cluster", "pool", "role", "health"))
        self.pool_target = metrics.Gauge(
            "tide_pool_target_replicas", "Replicas each pool should have.", tag_keys=("cluster", "pool", "role"))
        self.kv_blocks = metrics.Gauge(
            "tide_replica_kv_blocks", "KV cache blocks per replica (state: total or free).",
            tag_keys=(*REPLICA_TAGS, "state"))
        self.pool_kv_blocks = metrics.Gauge(
            "tide_pool_kv_blocks", "KV cache blocks of a pool's serving replicas (state: total or free): its capacity.",
            tag_keys=("cluster", "pool", "role", "state"))
        self.requests = metrics.Gauge(
            "tide_replica_requests", "Requests on each replica (state: running or waiting).",
            tag_keys=(*REPLICA_TAGS, "state"))
        self.step_seconds = metrics.Gauge(
            "tide_replica_step_seconds", "Recent mean engine step time per replica.", tag_keys=REPLICA_TAGS)
        self.pool_clock = metrics.Gauge(
            "tide_pool_clock_mhz", "The clock the controller chose for each pool.", tag_keys=("cluster", "pool"))
        self.slo_target = metrics.Gauge(
            "tide_slo_target_seconds", "The latency targets the clock policy keeps (metric=ttft or tpot).",
            tag_keys=("cluster", "metric"))
        self.latency_p90 = metrics.Gauge(
            "tide_replica_latency_p90_seconds", "P90 of the engine's time to first token (metric=ttft) and time "
            "between tokens (metric=itl) over the replica's latency window: the DVFS policy's input.",
            tag_keys=(*REPLICA_TAGS, "metric"))
        self.dropped_groups = metrics.Gauge(
            "tide_pool_dropped_groups", "Groups of a pool serving as one pipeline with their weights dropped.",
            tag_keys=("cluster", "pool"))
        self.pipeline_gained_blocks = metrics.Gauge(
            "tide_pool_pipeline_gained_kv_blocks", "KV blocks a pool's pipeline replicas hold beyond what their members "
            "hold restored: the freed weights.", tag_keys=("cluster", "pool"))
        self.standby_pipelines = metrics.Gauge(
            "tide_pool_standby_pipelines", "Pipelines of a pool waiting at their weights gates for a drop "
            "(parameter_drop.standby_pipeline).", tag_keys=("cluster", "pool"))
        self.replica_up = metrics.Gauge(
            "tide_replica_up", "1 if the replica serves (healthy or draining), else 0.", tag_keys=REPLICA_TAGS)

    def record_event(self, event: ControllerEvent) -> None:
        # Outcomes are "ok", a bounded word, or "failed: <details>": the label keeps the word.
        outcome = event.outcome.split(":", 1)[0]
        self.actions.inc(1, tags={**self._cluster, "kind": event.kind.value, "reason": event.reason,
                                  "outcome": outcome, "pool": event.pool})
        tags = {**self._cluster, "kind": event.kind.value, "pool": event.pool}
        self.action_duration.observe(event.duration_s, tags=tags)
        self._last_durations[(event.kind.value, event.pool)] = event.duration_s
        self.last_action_duration.set(event.duration_s, tags=tags)

    def record_gated_start(self, kind: str, pool: str, seconds: float) -> None:
        self._last_gated_starts[(kind, pool)] = seconds
        self.last_gated_start.set(seconds, tags={**self._cluster, "kind": kind, "pool": pool})

    def record_dropped_groups(self, pool: str, num_groups: int, gained_blocks: int, standby_at_gate: int) -> None:
        tags = {**self._cluster, "pool": pool}
        self.dropped_groups.set(num_groups, tags=tags)
        self.pipeline_gained_blocks.set(gained_blocks, tags=tags)
        self.standby_pipelines.set(standby_at_gate, tags=tags)

    def record_pool_clocks(self, clocks: dict[str, int]) -> None:
        for pool, clock in clocks.items():
            self.pool_clock.set(clock, tags={**self._cluster, "pool": pool})

    def record_slo(self, slo: SloTargets) -> None:
        self.slo_target.set(slo.ttft_s, tags={**self._cluster, "metric": "ttft"})
        self.slo_target.set(slo.tpot_s, tags={**self._cluster, "metric": "tpot"})

    def record_tick(self, seconds: float, failed: bool) -> None:
        self.tick_duration.observe(seconds, tags=self._cluster)
        # Ray drops a gauge nobody sets for two export intervals: re-set the rare ones.
        for (kind, pool), duration in self._last_durations.items():
            self.last_action_duration.set(duration, tags={**self._cluster, "kind": kind, "pool": pool})
        for (kind, pool), seconds in self._last_gated_starts.items():
            self.last_gated_start.set(seconds, tags={**self._cluster, "kind": kind, "pool": pool})
        if failed:
            self.tick_errors.inc(1, tags=self._cluster)

    def record_snapshot(self, snapshot: ClusterSnapshot) -> None:
        for pool in snapshot.pools:
            pool_tags = {**self._cluster, "pool": pool.name, "role": pool.role.value}
            self.pool_target.set(pool.target_size, tags=pool_tags)
            for health in Health:
                count = sum(1 for r in pool.replicas if r.health == health)
                self.pool_replicas.set(count, tags={**pool_tags, "health": health.value})
            for replica in pool.replicas:
                tags = {**pool_tags, "replica": replica.replica_id}
                self.replica_up.set(1 if replica.health in (Health.HEALTHY, Health.DRAINING) else 0, tags=tags)
                # A dead replica's series drop to zero: Ray keeps a gauge's last value.
                alive = replica.health != Health.DEAD
                self.kv_blocks.set(replica.num_total_blocks if alive else 0, tags={**tags, "state": "total"})
                self.kv_blocks.set(replica.num_free_blocks if alive else 0, tags={**tags, "state": "free"})
                self.requests.set(replica.num_running if alive else 0, tags={**tags, "state": "running"})
                self.requests.set(replica.num_waiting if alive else 0, tags={**tags, "state": "waiting"})
                self.step_seconds.set(replica.mean_step_s if alive else 0, tags=tags)
                self.latency_p90.set(replica.ttft_p90_s if alive else 0, tags={**tags, "metric": "ttft"})
                self.latency_p90.set(replica.itl_p90_s if alive else 0, tags={**tags, "metric": "itl"})
            serving = pool.serving
            self.pool_kv_blocks.set(sum(r.num_total_blocks for r in serving), tags={**pool_tags, "state": "total"})
            self.pool_kv_blocks.set(sum(r.num_free_blocks for r in serving), tags={**pool_tags, "state": "free"})
