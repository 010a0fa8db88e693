from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from bench.vllm_server import vllm_server, wait_http_ok
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


SERVE_PORT = 8321  # and 8322: one port per app (direct ingress)
PROXY_PORT = 8341
REFERENCE_PORT = 8329


@pytest.fixture(scope="session")
def openai_urls(engines, cluster_config, tiny_model) -> dict[DataPath, str]:
    """The cluster behind two OpenAI apps, each ingress serving HTTP on its own port: one
    always colocated, one always prefill -> decode. Maps each data path to its base URL."""
    from ray import serve

    from orchestrator.serve_app import deploy

    urls = {}
    for path in (DataPath.COLOCATED, DataPath.DISAGGREGATED):
        config = cluster_config.model_copy(update={"serve": ServeSettings(
            port=SERVE_PORT, proxy_port=PROXY_PORT, route_prefix=f"/{path.value}", data_path=path,
        )})
        urls[path] = deploy(config, tiny_model, app_name=f"{config.name}-{path.value}", num_ingress_apps=2)
    for url in urls.values():
        wait_http_ok(f"{url}/health", 180)
    yield urls
    serve.shutdown()


@pytest.fixture(scope="session")
def reference_url(tiny_model, cluster_config):
    """vLLM's own OpenAI server on the same model and engine arguments: what Tide's
    answers must equal."""
    log_path = Path(tempfile.gettempdir()) / "tide-reference-server.log"
    with vllm_server(cluster_config.engine, tiny_model, REFERENCE_PORT, log_path) as url:
        yield url
