"""Brings a Tide cluster up on Ray and finds it again: the Ray connection, the named
controller actor, and the record of what `tide up` started so `tide down` stops just that."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import ray
from ray.actor import ActorHandle

from orchestrator.config import ClusterConfig
from orchestrator.controller import ControllerActor
from orchestrator.models import resolve_model
from policies.snapshot import ClusterSnapshot

STATE_DIR = Path.home() / ".cache" / "tide" / "clusters"


def controller_name(cluster: str) -> str:
    return f"{cluster}-controller"


@dataclass(frozen=True)
class LaunchRecord:
    cluster: str
    address: str
    started_ray: bool
    endpoint: str | None = None
    # A local Prometheus `tide up --prometheus` started.
    prometheus_url: str | None = None
    prometheus_pid: int | None = None

    def save(self, state_dir: Path = STATE_DIR) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        (state_dir / f"{self.cluster}.json").write_text(json.dumps(asdict(self)))

    @classmethod
    def load(cls, cluster: str, state_dir: Path = STATE_DIR) -> LaunchRecord | None:
        path = state_dir / f"{cluster}.json"
        return cls(**json.loads(path.read_text())) if path.exists() else None

    @staticmethod
    def remove(cluster: str, state_dir: Path = STATE_DIR) -> None:
        (state_dir / f"{cluster}.json").unlink(missing_ok=True)


def start_local_ray_head() -> str:
    """Starts a detached local Ray head (what `tide up --detach` needs to outlive itself)."""
    subprocess.run([sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--disable-usage-stats"],
                   check=True, stdout=subprocess.DEVNULL)
    return "auto"


def connect(address: str | None, cluster: str) -> None:
    if not ray.is_initialized():
        ray.init(address=address, namespace=cluster, log_to_driver=False)


def launch_controller(config: ClusterConfig, detached: bool) -> ActorHandle:
    model_path = resolve_model(config.engine.model)
    options = {"name": controller_name(config.name), "namespace": config.name, "get_if_exists": True, "max_restarts": -1,
               "max_concurrency": 1000, "num_cpus": 0, "resources": dict(config.controller.resources) or None}
    if detached:
        options["lifetime"] = "detached"
    return ray.remote(ControllerActor).options(**options).remote(config, model_path)


def find_controller(cluster: str) -> ActorHandle:
    return ray.get_actor(controller_name(cluster), namespace=cluster)


def wait_ready(
    controller: ActorHandle, timeout_s: float, on_progress: Callable[[ClusterSnapshot], None]
) -> ClusterSnapshot:
    ray.get(controller.start.remote(wait_ready=False))
    deadline = time.monotonic() + timeout_s
    while True:
        snapshot: ClusterSnapshot = ray.get(controller.snapshot.remote())
        on_progress(snapshot)
        if snapshot.pools and all(p.num_serving_members >= p.target_size for p in snapshot.pools):
            return snapshot
        if time.monotonic() > deadline:
            raise TimeoutError(f"cluster not ready after {timeout_s:.0f}s")
        time.sleep(1.0)
