"""The `tide` command line: clear messages for bad input, and `status` against the running
test cluster."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from orchestrator.model_builder import directory_digest

TIDE = [sys.executable, "-m", "orchestrator.cli"]


def tide(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*TIDE, *args], capture_output=True, text=True, timeout=timeout)


def test_missing_config_is_a_clear_error(tmp_path):
    result = tide("up", "--config", str(tmp_path / "nope.yaml"))
    assert result.returncode != 0
    assert "nope.yaml does not exist" in result.stderr
    assert "Traceback" not in result.stderr


def test_invalid_config_names_the_field(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("pools:\n  - {name: p, role: prefill, num_replicas: -1}\n")
    result = tide("up", "--config", str(path))
    assert result.returncode != 0
    assert "is invalid" in result.stderr and "num_replicas" in result.stderr


def test_model_build_prints_the_digest_and_is_reproducible(tmp_path, tiny_model):
    result = tide("model", "build", "tiny", "--out", str(tmp_path / "tiny"))
    assert result.returncode == 0, result.stderr
    digest = directory_digest(tmp_path / "tiny")
    assert digest[:16] in result.stdout
    assert digest == directory_digest(Path(tiny_model))


@pytest.mark.engine
def test_status_shows_the_running_pools(controller, cluster_config):
    result = tide("status", "--cluster", cluster_config.name)
    assert result.returncode == 0, result.stderr
    for pool in cluster_config.pools:
        assert f"{pool.name}-0" in result.stdout
    assert "healthy" in result.stdout


@pytest.mark.engine
def test_status_of_an_unknown_cluster_says_so(controller):
    result = tide("status", "--cluster", "nosuchcluster")
    assert result.returncode == 1
    assert "no cluster 'nosuchcluster'" in result.stderr


CLI_CLUSTER_YAML = """
name: clitest
engine: {model: tiny, kv_cache_bytes: 67108864, cpu_threads_bind: nobind}
pools:
  - {name: colocated, role: colocated, num_replicas: 1}
serve: {port: 8331}
"""


@pytest.mark.engine
def test_up_serves_the_printed_endpoint_and_stops_on_interrupt(tmp_path, tiny_model):
    """`tide up --prometheus` on its own local Ray: progress, the endpoint and a curl that
    works, a Prometheus that scrapes the cluster, and a clean stop of all of it on Ctrl-C."""
    config = tmp_path / "clitest.yaml"
    config.write_text(CLI_CLUSTER_YAML)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    up = subprocess.Popen([*TIDE, "up", "--config", str(config), "--prometheus", "--prometheus-port", "9392"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, env=env)
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 300
        while not any(line.startswith("serving; Ctrl-C") for line in lines):
            assert time.monotonic() < deadline and up.poll() is None, "".join(lines)
            lines.append(up.stdout.readline())
        output = "".join(lines)
        assert "colocated 1/1" in output
        assert "OpenAI API at http://127.0.0.1:8331/v1" in output
        curl = output.split("try:\n", 1)[1].split("\n\n", 1)[0]
        answer = subprocess.run(["bash", "-c", curl + " --fail --silent --show-error"], capture_output=True,
                                text=True, timeout=60)
        assert answer.returncode == 0, answer.stderr
        assert json.loads(answer.stdout)["usage"]["completion_tokens"] == 16
        assert "Prometheus at http://127.0.0.1:9392" in output
        deadline = time.monotonic() + 90
        while not _prometheus_has("http://127.0.0.1:9392", 'ray_tide_pool_replicas{pool="colocated", health="healthy"}'):
            assert time.monotonic() < deadline, "Prometheus never scraped the cluster's series"
            time.sleep(1)
    finally:
        up.send_signal(signal.SIGINT)
        rest, _ = up.communicate(timeout=120)
    assert up.returncode == 0, rest
    assert "stopping" in rest and "Traceback" not in rest
    with pytest.raises(httpx.ConnectError):
        httpx.get("http://127.0.0.1:9392/-/ready", timeout=5)


def _prometheus_has(url: str, expr: str) -> bool:
    try:
        answer = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=5).json()
    except httpx.HTTPError:
        return False
    return bool(answer["data"]["result"]) and answer["data"]["result"][0]["value"][1] == "1"
