from __future__ import annotations

import pytest

from orchestrator.token_client import TokenClient
from policies.routing import LoadAwareRouter


@pytest.fixture
async def client(controller, cluster_config):
    """A front-door token client on the shared cluster (per test: it lives on the test's loop)."""
    client = TokenClient(controller, LoadAwareRouter(), cluster_config.engine.block_size)
    await client.start()
    yield client
    await client.close()
