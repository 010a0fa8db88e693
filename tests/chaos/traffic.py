"""Load for a chaos run: greedy streamed completions over HTTP (prompts as token ids, so
every answer can be checked against the oracle), each request's outcome kept: its tokens,
or the error it ended with and whether the server said it may be retried."""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass, field

import httpx


@dataclass
class Outcome:
    request_id: int
    prompt: list[int]
    max_tokens: int
    sent_at_s: float
    tokens: list[int] = field(default_factory=list)
    finished: bool = False
    # "http_503", "connection", "timeout", "stream_cut", ...; None when it finished.
    error: str | None = None
    retriable: bool = False
    ended_at_s: float = 0.0


async def one_request(http: httpx.AsyncClient, url: str, model: str, outcome: Outcome, timeout_s: float) -> Outcome:
    body = {"model": model, "prompt": outcome.prompt, "max_tokens": outcome.max_tokens, "temperature": 0.0,
            "stream": True, "ignore_eos": True, "return_token_ids": True}
    try:
        async with asyncio.timeout(timeout_s):
            async with http.stream("POST", f"{url}/v1/completions", json=body) as response:
                if response.status_code != 200:
                    await response.aread()
                    outcome.error = f"http_{response.status_code}"
                    outcome.retriable = response.status_code in (429, 503) and "retry-after" in response.headers
                    return outcome
                async for line in response.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    if "error" in chunk:
                        outcome.error = f"stream_error_{chunk['error'].get('code')}"
                        outcome.retriable = chunk["error"].get("code") in (429, 503)
                        return outcome
                    for choice in chunk.get("choices", []):
                        outcome.tokens += choice.get("token_ids") or []
                        if choice.get("finish_reason"):
                            outcome.finished = True
        if not outcome.finished:
            outcome.error = "stream_cut"
    except TimeoutError:
        outcome.error = "timeout"
    except httpx.TransportError as exc:
        outcome.error = f"connection_{type(exc).__name__}"
    finally:
        outcome.ended_at_s = time.monotonic()
    return outcome


class OpenLoop:
    """Poisson arrivals at `rate` until stopped; `burst(rate, seconds)` raises it a while."""

    def __init__(self, url: str, model: str, rate: float, seed: int, max_tokens: int = 48,
                 timeout_s: float = 120.0):
        self._url, self._model, self.rate = url, model, rate
        self._rng = random.Random(seed)
        self._max_tokens, self._timeout_s = max_tokens, timeout_s
        self.outcomes: list[Outcome] = []
        self._tasks: set[asyncio.Task] = set()
        self._stop = asyncio.Event()
        self._runner: asyncio.Task | None = None

    def start(self) -> None:
        self._runner = asyncio.create_task(self._run())

    async def burst(self, rate: float, seconds: float) -> None:
        normal, self.rate = self.rate, rate
        await asyncio.sleep(seconds)
        self.rate = normal

    async def stop(self) -> list[Outcome]:
        self._stop.set()
        await self._runner
        await asyncio.gather(*self._tasks, return_exceptions=True)
        return self.outcomes

    async def _run(self) -> None:
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=64)
        async with httpx.AsyncClient(timeout=httpx.Timeout(self._timeout_s, connect=10.0), limits=limits) as http:
            while not self._stop.is_set():
                prompt = [self._rng.randrange(10, 2000) for _ in range(self._rng.randrange(40, 400))]
                outcome = Outcome(len(self.outcomes), prompt, self._max_tokens, time.monotonic())
                self.outcomes.append(outcome)
                task = asyncio.create_task(one_request(http, self._url, self._model, outcome, self._timeout_s))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
                await asyncio.sleep(self._rng.expovariate(self.rate))
            await asyncio.gather(*self._tasks, return_exceptions=True)
