"""Shared, session-scoped fixtures: one local Ray cluster, one Tide cluster (colocated,
prefill and decode pools) and one plain vLLM engine as the greedy oracle. Engines take
~20 s to start, so they are started once and shared by every test."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import ray

from orchestrator.config import ClusterConfig, ControllerSettings, EngineConfig, KVTransferSettings, PoolConfig
from orchestrator.controller import ControllerActor
from orchestrator.models import resolve_model
from policies.snapshot import Role
from tests.oracle import PlainEngine

# Three engines share two cores: one thread each.
TEST_ENGINE = EngineConfig(
    model="tiny", kv_cache_bytes=96 << 20, max_model_len=2048, max_num_seqs=32, cpu_threads_bind="nobind",
    cpu_threads=1,
)


def pytest_collection_modifyitems(config, items):
    """Tests that kill or drain shared replicas run after every other test."""
    items.sort(key=lambda item: item.get_closest_marker("disruptive") is not None)


@pytest.fixture(scope="session")
def tiny_model() -> str:
    return resolve_model("tiny")


@pytest.fixture(scope="session")
def ray_session():
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    # Metrics reach the node agents every second (Ray: 10 s), so the telemetry test is quick.
    ray.init(namespace="tidetest", num_cpus=4, log_to_driver=False, include_dashboard=False,
             _system_config={"metrics_report_interval_ms": 1000})
    yield
    ray.shutdown()


def _cluster_config() -> ClusterConfig:
    return ClusterConfig(
        name="tidetest",
        engine=TEST_ENGINE,
        kv=KVTransferSettings(fetch_timeout_s=3.0, staged_ttl_s=4.0),
        pools=(
            PoolConfig(name="colocated", role=Role.COLOCATED, num_replicas=1),
            PoolConfig(name="prefill", role=Role.PREFILL, num_replicas=1),
            PoolConfig(name="decode", role=Role.DECODE, num_replicas=1),
        ),
        controller=ControllerSettings(tick_s=0.25, health_timeout_s=5.0, start_timeout_s=600.0),
    )


@pytest.fixture(scope="session")
def cluster_config() -> ClusterConfig:
    config = _cluster_config()
    # Staged KV left by an earlier, interrupted run.
    for root in (config.kv.shm_dir, config.kv.disk_dir):
        shutil.rmtree(Path(root) / config.name, ignore_errors=True)
    return config


@pytest.fixture(scope="session")
def engines(ray_session, tiny_model, cluster_config):
    """Starts the Tide cluster and the oracle together (their start-ups overlap)."""
    e = cluster_config.engine
    oracle = ray.remote(PlainEngine).options(num_cpus=0).remote(
        tiny_model, e.dtype, e.block_size, e.max_model_len, e.kv_cache_bytes
    )
    controller = ray.remote(ControllerActor).options(
        name="tidetest-controller", max_concurrency=1000, num_cpus=0, max_restarts=-1
    ).remote(cluster_config, tiny_model)
    ray.get([oracle.start.remote(), controller.start.remote()])
    yield controller, oracle
    ray.get(controller.stop.remote())


@pytest.fixture(scope="session")
def controller(engines):
    return engines[0]


@pytest.fixture(scope="session")
def oracle(engines):
    return engines[1]
