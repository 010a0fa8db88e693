"""Faults seen from an HTTP client: a client that goes away stops its generation; a decode
replica that dies mid-stream costs the client nothing (one continuous stream,
oracle-identical, correct usage); a dead controller does not stop the ingress."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest
import ray

from orchestrator.config import ServeSettings
from orchestrator.openai_app import build_openai_app, server_args
from orchestrator.replica_handle import ReplicaHandle
from orchestrator.token_client import TokenClient
from policies.routing import DataPath, LoadAwareRouter
from policies.snapshot import Role
from tests.integration.helpers import serving_ids, wait_for

pytestmark = pytest.mark.engine

MODEL = "tide-tiny"


async def _replica(controller, role: Role) -> ReplicaHandle:
    table = await controller.routing_table.remote()
    [replica_id] = [r.replica_id for r in table.snapshot.serving(role)]
    return ReplicaHandle(replica_id, table.actors[replica_id])


async def test_client_disconnect_aborts_on_the_replica(openai_urls, controller):
    replica = await _replica(controller, Role.COLOCATED)
    body = {"model": MODEL, "prompt": "nobody reads this", "max_tokens": 1500, "ignore_eos": True,
            "temperature": 0, "stream": True}
    async with httpx.AsyncClient(timeout=60) as http:
        async with http.stream("POST", f"{openai_urls[DataPath.COLOCATED]}/v1/completions", json=body) as response:
            chunks = 0
            async for line in response.aiter_lines():
                chunks += line.startswith("data:")
                if chunks >= 5:
                    break
            assert (await replica.stats(5.0)).num_running == 1

    async def idle():
        stats = await replica.stats(5.0)
        return stats.num_running == 0 and stats.num_waiting == 0

    await wait_for(idle, 20, "the disconnected request to be aborted on its replica")


@pytest.fixture
async def no_replay_app(controller, cluster_config, tiny_model):
    """The OpenAI app, in-process, with no replay budget: a replica death fails the request."""
    settings = ServeSettings(max_replays=0, data_path=DataPath.DISAGGREGATED, retry_after_s=2)
    tokens = TokenClient(controller, LoadAwareRouter(), cluster_config.engine.block_size,
                         max_replays=settings.max_replays, data_path=settings.data_path)
    await tokens.start()
    app = await build_openai_app(server_args(cluster_config.engine_spec(tiny_model), settings), tokens,
                                 settings.retry_after_s)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://tide", timeout=120) as http:
        yield http
    await tokens.close()


@pytest.mark.disruptive
async def test_stream_survives_the_death_of_its_decode_replica(
    openai_urls, controller, oracle, reference_url, no_replay_app
):
    """Two requests decode on the replica that is killed: the one with a replay budget
    (through Ray Serve) streams on, the one without gets a retriable 503."""
    request = dict(model=MODEL, prompt="A long story about replicas:", max_tokens=160, temperature=0,
                   extra_body={"ignore_eos": True, "return_token_ids": True})
    client = openai.AsyncOpenAI(base_url=f"{openai_urls[DataPath.DISAGGREGATED]}/v1", api_key="unused", max_retries=0)
    decode = await _replica(controller, Role.DECODE)
    doomed = asyncio.create_task(no_replay_app.post("/v1/completions", json={
        "model": MODEL, "prompt": "no second chances", "max_tokens": 1500, "temperature": 0, "ignore_eos": True}))
    text, token_ids, prompt_ids, usage, finish = "", [], None, None, None
    killed = False
    stream = await client.completions.create(**request, stream=True, stream_options={"include_usage": True})
    async for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            text += choice.text
            token_ids += choice.token_ids or []
            prompt_ids = choice.prompt_token_ids or prompt_ids
            finish = choice.finish_reason or finish
        if len(token_ids) >= 20 and not killed:
            assert (await decode.stats(5.0)).num_running == 2, "both requests are decoding on the decode replica"
            decode.kill()
            killed = True
    assert killed
    failed = await doomed
    assert failed.status_code == 503 and failed.headers["retry-after"] == "2"
    assert "retry" in failed.json()["error"]["message"]
    assert token_ids == await oracle.greedy.remote(prompt_ids, 160)
    reference = openai.OpenAI(base_url=f"{reference_url}/v1", api_key="unused").completions.create(**request)
    assert text == reference.choices[0].text
    assert (usage.prompt_tokens, usage.completion_tokens, finish) == (len(prompt_ids), 160, "length")
    await wait_for(lambda: serving_ids(controller, "decode"), 240, "the decode pool to recover")


@pytest.mark.disruptive
async def test_ingress_serves_while_the_controller_is_down(openai_urls, controller):
    client = openai.AsyncOpenAI(base_url=f"{openai_urls[DataPath.DISAGGREGATED]}/v1", api_key="unused", max_retries=0)
    ray.kill(controller, no_restart=False)
    served_while_down = 0
    for _ in range(5):
        answer = await client.completions.create(model=MODEL, prompt="controller?", max_tokens=4, temperature=0)
        assert answer.usage.completion_tokens == 4
        try:
            await asyncio.wait_for(controller.snapshot.remote(), 0.2)
        except (TimeoutError, ray.exceptions.RayError):
            served_while_down += 1
    assert served_while_down >= 1

    async def back():
        try:
            snapshot = await asyncio.wait_for(controller.snapshot.remote(), 5)
        except (TimeoutError, ray.exceptions.RayError):
            return False
        return all(len(p.serving) >= p.target_size for p in snapshot.pools)

    await wait_for(back, 120, "the controller to come back")
