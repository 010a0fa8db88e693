"""API keys and overload, on the OpenAI app served in-process on the shared cluster (the
same app Ray Serve runs, built with authentication and a queue limit)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from orchestrator.config import ServeSettings
from orchestrator.openai_app import build_openai_app, server_args
from orchestrator.token_client import TokenClient
from policies.routing import DataPath, LoadAwareRouter

pytestmark = pytest.mark.engine

KEY = "tide-test-key"
MAX_QUEUED = 2
RETRY_AFTER_S = 3


@pytest.fixture
async def guarded_app(controller, cluster_config, tiny_model):
    settings = ServeSettings(api_keys=(KEY,), max_queued_requests=MAX_QUEUED, retry_after_s=RETRY_AFTER_S,
                             data_path=DataPath.COLOCATED)
    tokens = TokenClient(controller, LoadAwareRouter(), cluster_config.engine.block_size, data_path=settings.data_path)
    await tokens.start()
    app = await build_openai_app(server_args(cluster_config.engine_spec(tiny_model), settings), tokens,
                                 settings.retry_after_s)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://tide", timeout=120) as http:
        yield http, app.state.engine_client
    await tokens.close()


def _completion(max_tokens: int) -> dict:
    return {"model": "tide-tiny", "prompt": "guarded", "max_tokens": max_tokens, "temperature": 0,
            "ignore_eos": True}


async def test_api_key_is_required_when_configured(guarded_app):
    http, _ = guarded_app
    missing = await http.post("/v1/completions", json=_completion(2))
    wrong = await http.post("/v1/completions", json=_completion(2), headers={"Authorization": "Bearer nope"})
    right = await http.post("/v1/completions", json=_completion(2), headers={"Authorization": f"Bearer {KEY}"})
    assert (missing.status_code, wrong.status_code, right.status_code) == (401, 401, 200)
    assert "error" in missing.json()
    assert right.json()["usage"]["completion_tokens"] == 2
    assert (await http.get("/health")).status_code == 200


async def test_overload_is_503_with_retry_after(guarded_app):
    http, engine = guarded_app
    auth = {"Authorization": f"Bearer {KEY}"}
    busy = [asyncio.create_task(http.post("/v1/completions", json=_completion(600), headers=auth))
            for _ in range(MAX_QUEUED)]
    while engine.get_num_unfinished_requests() < MAX_QUEUED:
        await asyncio.sleep(0.01)
    refused = await http.post("/v1/completions", json=_completion(2), headers=auth)
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == str(RETRY_AFTER_S)
    assert refused.json()["error"]["code"] == 503
    # The admitted requests are untouched by the refusal.
    done = await asyncio.gather(*busy)
    assert [r.json()["usage"]["completion_tokens"] for r in done] == [600] * MAX_QUEUED
    accepted = await http.post("/v1/completions", json=_completion(2), headers=auth)
    assert accepted.status_code == 200
