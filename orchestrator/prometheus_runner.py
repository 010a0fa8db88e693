"""A local Prometheus (Debian's `prometheus` binary) scraping a local Ray cluster.

Every Ray node runs a metrics agent that exports all metrics of that node's processes
(`ray.util.metrics`, vLLM's Ray stat logger, Ray Serve's own). This scrapes the agents of
the nodes alive when it starts (from `ray.nodes()`; Ray's own service-discovery file is
only kept up to date by its dashboard, which a local cluster may not run). Under KubeRay a
PodMonitor scrapes the same agents instead (k8s/).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml


@dataclass(frozen=True)
class PrometheusSettings:
    port: int = 9090
    host: str = "127.0.0.1"
    scrape_interval_s: float = 5.0
    binary: str = "prometheus"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def scrape_config(targets: list[str], scrape_interval_s: float) -> dict:
    interval = f"{max(1, round(scrape_interval_s * 1000))}ms"
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "scrape_configs": [{"job_name": "ray", "static_configs": [{"targets": targets}]}],
    }


def ray_metrics_targets() -> list[str]:
    """host:port of the metrics agent of every alive node of the connected Ray cluster."""
    import ray

    return sorted(f"{n['NodeManagerAddress']}:{n['MetricsExportPort']}" for n in ray.nodes() if n["Alive"])


class PrometheusUnavailable(RuntimeError):
    pass


def start_prometheus(targets: list[str], settings: PrometheusSettings, data_dir: Path) -> subprocess.Popen:
    """Starts Prometheus in the background and waits until it answers; the caller owns the
    process (terminate it to stop)."""
    binary = shutil.which(settings.binary)
    if binary is None:
        raise PrometheusUnavailable(
            f"no `{settings.binary}` binary on PATH; install it (Debian: apt-get install prometheus)")
    if _port_taken(settings.host, settings.port):
        # Another server there would answer the readiness check below in this one's place.
        raise PrometheusUnavailable(f"{settings.host}:{settings.port} is already in use; choose another port")
    data_dir.mkdir(parents=True, exist_ok=True)
    config_path = data_dir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(scrape_config(targets, settings.scrape_interval_s)))
    log = open(data_dir / "prometheus.log", "wb")
    process = subprocess.Popen(
        [binary, f"--config.file={config_path}", f"--storage.tsdb.path={data_dir / 'tsdb'}",
         f"--web.listen-address={settings.host}:{settings.port}", "--web.enable-lifecycle"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise PrometheusUnavailable(f"prometheus exited ({process.returncode}); see {data_dir / 'prometheus.log'}")
        try:
            if httpx.get(f"{settings.url}/-/ready", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.terminate()
    raise PrometheusUnavailable(f"prometheus did not become ready on {settings.url}")


def _port_taken(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        return probe.connect_ex((host, port)) == 0


@contextmanager
def running_prometheus(targets: list[str], settings: PrometheusSettings) -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="tide-prometheus-") as data_dir:
        process = start_prometheus(targets, settings, Path(data_dir))
        try:
            yield settings.url
        finally:
            process.terminate()
            process.wait(timeout=30)

