"""A multi-node Ray cluster on this machine: a head and worker nodes, each started by its
own `ray start` on loopback, each advertising a custom resource that pins a pool to it.
A node stops like a machine does: its raylet and everything under it are killed.

Only this cluster's processes are touched (found by its private temp directory), so a
test session's own Ray keeps running beside it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil


# A loopback-only test cluster: no token authentication between its nodes and drivers.
LOOPBACK_ENV = {"RAY_AUTH_MODE": "disabled"}
# Each node advertises one unit of `<prefix><name>`, so its Ray node id maps back to it.
NODE_RESOURCE_PREFIX = "chaos_node_"


@dataclass(frozen=True)
class NodeSpec:
    name: str
    num_cpus: int
    resources: dict[str, float] = field(default_factory=dict)


class LocalRayCluster:
    def __init__(self, head: NodeSpec, workers: list[NodeSpec], port: int = 6399):
        self.head, self.workers, self.port = head, workers, port
        self.temp_dir = Path(tempfile.mkdtemp(prefix="tide-chaos-ray-"))
        self._node_manager_ports: dict[str, int] = {}

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        # Metrics leave each process every second (Ray: 10 s), so short faults show.
        system_config = json.dumps({"metrics_report_interval_ms": 1000})
        self._ray_start(self.head, ["--head", f"--port={self.port}", "--include-dashboard=false",
                                    f"--system-config={system_config}"])
        for worker in self.workers:
            self._ray_start(worker, [f"--address={self.address}"])

    def stop_node(self, name: str) -> None:
        """Kills the node's raylet and every process it started (its workers and actors)."""
        port = self._node_manager_ports[name]
        for raylet in self._processes(f"--node_manager_port={port}"):
            victims = [raylet, *raylet.children(recursive=True)]
            for process in victims:
                _kill(process)

    def shutdown(self) -> None:
        for _ in range(3):
            processes = self._processes(str(self.temp_dir))
            if not processes:
                return
            for process in processes:
                _kill(process)
            time.sleep(0.5)

    def _ray_start(self, node: NodeSpec, extra: list[str]) -> None:
        port = self._free_port()
        self._node_manager_ports[node.name] = port
        resources = {**node.resources, f"{NODE_RESOURCE_PREFIX}{node.name}": 1.0}

        command = [sys.executable, "-m", "ray.scripts.scripts", "start", *extra, f"--num-cpus={node.num_cpus}",
                   f"--resources={json.dumps(resources)}", f"--node-manager-port={port}",
                   f"--temp-dir={self.temp_dir}", "--disable-usage-stats", "--node-ip-address=127.0.0.1"]
        env = {**os.environ, **LOOPBACK_ENV}
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
        if result.returncode != 0:
            raise RuntimeError(f"ray start for {node.name} failed:\n{result.stdout}\n{result.stderr}")

    def _processes(self, needle: str) -> list[psutil.Process]:
        found = []
        for process in psutil.process_iter(["cmdline"]):
            try:
                if needle in " ".join(process.info["cmdline"] or []):
                    found.append(process)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return found

    @staticmethod
    def _free_port() -> int:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]


def _kill(process: psutil.Process) -> None:
    try:
        process.send_signal(signal.SIGKILL)
    except psutil.NoSuchProcess:
        pass
