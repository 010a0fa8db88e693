"""Open-loop load on a Tide cluster through the front door's token client (no HTTP):
each request at its arrival time, timed as a client sees it."""

from __future__ import annotations

import asyncio
import random
import statistics
import time
import uuid
from dataclasses import dataclass

from vllm import SamplingParams

from actors.messages import TokenRequest
from orchestrator.token_client import TokenClient


@dataclass(frozen=True)
class Timed:
    ttft_s: float
    tpot_s: float
    num_tokens: int


async def token_times(client: TokenClient, prompt_len: int, output_len: int,
                      rng: random.Random) -> tuple[float, list[float]]:
    """A greedy request of random prompt tokens that generates exactly `output_len` tokens:
    when it was sent, and when each token reached the client."""
    prompt = [rng.randrange(10, 2000) for _ in range(prompt_len)]
    request = TokenRequest(uuid.uuid4().hex, prompt, SamplingParams(max_tokens=output_len, temperature=0.0,
                                                                     ignore_eos=True))
    started = time.perf_counter()
    arrivals: list[float] = []
    async for delta in client.generate(request):
        now = time.perf_counter()
        arrivals.extend(now for _ in delta.token_ids)
    return started, arrivals


async def timed_request(client: TokenClient, prompt_len: int, output_len: int, rng: random.Random) -> Timed:
    started, arrivals = await token_times(client, prompt_len, output_len, rng)
    count = len(arrivals)
    tpot = (arrivals[-1] - arrivals[0]) / (count - 1) if count > 1 else 0.0
    return Timed(arrivals[0] - started, tpot, count)


async def open_loop(client: TokenClient, arrivals_s: list[float], prompt_lens: list[int], output_lens: list[int],
                    seed: int = 1) -> list[Timed | BaseException]:
    rng = random.Random(seed)
    started = time.perf_counter()

    async def at_arrival(i: int) -> Timed:
        await asyncio.sleep(max(0.0, arrivals_s[i] - (time.perf_counter() - started)))
        return await timed_request(client, prompt_lens[i], output_lens[i], rng)

    return await asyncio.gather(*(at_arrival(i) for i in range(len(arrivals_s))), return_exceptions=True)


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(sorted(values), n=100, method="inclusive")[min(98, max(0, round(p) - 1))]
