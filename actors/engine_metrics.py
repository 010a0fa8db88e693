"""vLLM's own engine metrics, exported through Ray's metrics pipeline with the replica's
identity on every series.

vLLM ships `RayPrometheusStatLogger` (its Prometheus stat logger on `ray.util.metrics`),
so TTFT, inter-token latency, queue time, running/waiting, KV usage, preemptions and token
counters leave the actor through the node's metrics agent instead of dying in the
process's private prometheus-client registry. Its wrappers label series by Ray Serve
replica only; these label them by Tide replica, pool and role.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from vllm.v1.metrics.ray_wrappers import (
    RayCounterWrapper,
    RayGaugeWrapper,
    RayHistogramWrapper,
    RayKVConnectorProm,
    RayPerfMetricsProm,
    RayPrometheusStatLogger,
    RaySpecDecodingProm,
)


@dataclass(frozen=True)
class SeriesIdentity:
    """Who produced a series: a replica (pool, role) or a front door instance."""

    replica: str
    pool: str
    role: str

    def tags(self) -> dict[str, str]:
        return asdict(self)


def engine_stat_logger(identity: SeriesIdentity) -> type[RayPrometheusStatLogger]:
    """A `RayPrometheusStatLogger` class (vLLM's stat logger manager takes classes) whose
    series all carry `identity`."""
    tags = identity.tags()

    class IdentityTags:
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._tags = dict(tags)

        @staticmethod
        def _get_tag_keys(labelnames: list[str] | None) -> tuple[str, ...]:
            return (*(labelnames or ()), *tags)

        def _build_tags(self, *labels, **labelskwargs) -> dict[str, str]:
            own_keys = self.metric._tag_keys[: len(self.metric._tag_keys) - len(tags)]
            if labels and len(labels) != len(own_keys):
                raise ValueError(f"expected {len(own_keys)} label values, got {len(labels)}")
            labelskwargs.update(zip(own_keys, labels))
            labelskwargs.update(tags)
            return {k: str(v) for k, v in labelskwargs.items()}

    class Gauge(IdentityTags, RayGaugeWrapper):
        pass

    class Counter(IdentityTags, RayCounterWrapper):
        pass

    class Histogram(IdentityTags, RayHistogramWrapper):
        pass

    class SpecDecoding(RaySpecDecodingProm):
        _counter_cls = Counter

    class KVConnector(RayKVConnectorProm):
        _gauge_cls, _counter_cls, _histogram_cls = Gauge, Counter, Histogram

    class PerfMetrics(RayPerfMetricsProm):
        _counter_cls = Counter

    class EngineStatLogger(RayPrometheusStatLogger):
        _gauge_cls, _counter_cls, _histogram_cls = Gauge, Counter, Histogram
        _spec_decoding_cls, _kv_connector_cls, _perf_metrics_cls = SpecDecoding, KVConnector, PerfMetrics

    return EngineStatLogger
