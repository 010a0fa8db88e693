"""Small helpers shared by the integration tests."""

from __future__ import annotations

import asyncio
import random
import time
import uuid

from vllm import SamplingParams

from actors.messages import TokenRequest

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


async def wait_for(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(0.25)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
