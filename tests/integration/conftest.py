from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from orchestrator.config import ServeSettings
from orchestrator.token_client import TokenClient
from policies.routing import DataPath, LoadAwareRouter


@pytest.fixture
async def client(controller, cluster_config):
    """A front-door token client on the shared cluster (per test: it lives on the test's loop)."""
    client = TokenClient(controller, LoadAwareRouter(), cluster_config.engine.block_size)
    await client.start()
    yield client
    await client.close()


SERVE_PORT = 8321
REFERENCE_PORT = 8322


@pytest.fixture(scope="session")
def openai_urls(engines, cluster_config, tiny_model) -> dict[DataPath, str]:
    """The cluster behind two OpenAI apps on one Ray Serve proxy: one always colocated,
    one always prefill -> decode. Maps each data path to its base URL."""
    from ray import serve

    from orchestrator.serve_app import deploy

    urls = {}
    for path in (DataPath.COLOCATED, DataPath.DISAGGREGATED):
        config = cluster_config.model_copy(update={"serve": ServeSettings(
            port=SERVE_PORT, route_prefix=f"/{path.value}", data_path=path,
        )})
        urls[path] = deploy(config, tiny_model, app_name=f"{config.name}-{path.value}")
    for url in urls.values():
        wait_http_ok(f"{url}/health", 180)
    yield urls
    serve.shutdown()


@pytest.fixture(scope="session")
def reference_url(tiny_model, cluster_config):
    """vLLM's own OpenAI server on the same model and engine arguments: what Tide's
    answers must equal."""
    e = cluster_config.engine
    argv = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", tiny_model,
        "--served-model-name", e.served_model_name, "--dtype", e.dtype, "--max-model-len", str(e.max_model_len),
        "--block-size", str(e.block_size), "--seed", str(e.seed), "--enforce-eager",
        "--kv-cache-memory-bytes", str(e.kv_cache_bytes), "--host", "127.0.0.1", "--port", str(REFERENCE_PORT),
    ]
    env = {**os.environ, "VLLM_CPU_OMP_THREADS_BIND": "nobind"}
    with open(Path(tempfile.gettempdir()) / "tide-reference-server.log", "w") as log:
        server = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_http_ok(f"http://127.0.0.1:{REFERENCE_PORT}/health", 300, server)
            yield f"http://127.0.0.1:{REFERENCE_PORT}"
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(60)


def wait_http_ok(url: str, timeout_s: float, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{process.args[:3]} exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError(f"{url} not ready after {timeout_s:.0f}s")
