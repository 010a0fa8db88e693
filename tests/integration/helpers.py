"""Small helpers shared by the integration tests."""

from __future__ import annotations

import asyncio
import random
import time
import uuid

import dataclasses
import os

import ray
from vllm import SamplingParams

from actors.kv.medium import MediumKind
from actors.messages import TokenRequest
from orchestrator.token_client import continuation
from policies.snapshot import Role

MAX_TOKENS = 24


def prompt_of(length: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(10, 2000) for _ in range(length)]


def greedy_request(prompt: list[int], max_tokens: int = MAX_TOKENS, **fields) -> TokenRequest:
    sampling = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    return TokenRequest(request_id=uuid.uuid4().hex, prompt_token_ids=prompt, sampling=sampling, **fields)


async def collect(stream) -> tuple[list[int], list]:
    tokens, deltas = [], []
    async for delta in stream:
        tokens += delta.token_ids
        deltas.append(delta)
    return tokens, deltas


async def serving_ids(controller, pool: str) -> list[str]:
    snapshot = await controller.snapshot.remote()
    return [r.replica_id for p in snapshot.pools if p.name == pool for r in p.serving]


async def wait_until_serving(controller, timeout_s: float = 240) -> None:
    """Every pool at its target of serving replicas (after an earlier test disturbed one),
    and a front-door refresh period for token clients to see it."""
    async def serving():
        snapshot = await controller.snapshot.remote()
        return bool(snapshot.pools) and all(len(p.serving) >= p.target_size for p in snapshot.pools)

    await wait_for(serving, timeout_s, "every pool to serve at its target size")
    await asyncio.sleep(0.5)


async def wait_for(predicate, timeout_s: float, what: str, every_s: float = 0.25):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


async def ask(call, timeout_s: float = 120.0):
    """A controller call that waits out the controller's restart."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return await asyncio.wait_for(call(), timeout=10.0)
        except (ray.exceptions.RayError, asyncio.TimeoutError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.25)


@ray.remote(num_cpus=0)
def _stalled_transfer():
    time.sleep(600)


def break_handle(handle):
    """Makes the published KV unavailable the way each medium loses it: the staged file
    disappears, or the Ray object never arrives (a stalled transfer, cut by the timeout)."""
    if handle.medium != MediumKind.RAY:
        os.unlink(handle.path)
        return handle
    return dataclasses.replace(handle, object_ref=_stalled_transfer.remote())


async def prefill_then_decode(client, request, medium, damage, on_failure=None):
    prefill = client.choose(Role.PREFILL, len(request.prompt_token_ids))
    result = await prefill.prefill(request, medium)
    assert result.kv_handle is not None
    handle = damage(result.kv_handle) or result.kv_handle
    decode = client.choose(Role.DECODE, len(request.prompt_token_ids))
    rest = continuation(request, result.first.token_ids, handle)
    if on_failure is not None:
        rest = dataclasses.replace(rest, on_transfer_failure=on_failure)
    tokens, deltas = await collect(decode.stream(rest))
    return result.first.token_ids + tokens, deltas, decode
