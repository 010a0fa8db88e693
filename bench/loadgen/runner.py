"""The open loop: each request sent at its arrival time whatever the others are doing;
sending stops at `max_duration_s`, then in-flight requests get at most `drain_timeout_s`
(the rest fail as `timeout`). A one-line progress report goes to stderr at most once a
second."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

import httpx

from bench.loadgen.client import RequestResult, Target, stream_completion
from bench.loadgen.workload import DEFAULT_VOCAB_RANGE, prompt_token_ids
from sim.workload import SimRequest


@dataclass(frozen=True)
class Bounds:
    max_duration_s: float | None = None  # stop sending after this
    drain_timeout_s: float = 30.0  # then wait at most this for in-flight requests
    connect_timeout_s: float = 10.0


@dataclass
class RunResult:
    results: list[RequestResult]  # one per planned request, in arrival order
    started_at_wall_s: float  # time.time() at the run's time 0
    duration_s: float  # time 0 to the end of the last request
    send_span_s: float  # time 0 to the last send


class Progress:
    """`sent/done/errors/elapsed` on one line, at most once a second (in place on a
    terminal, one line each otherwise)."""

    def __init__(self, results: list[RequestResult], total: int, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.perf_counter):
        self.results, self.total, self.stream, self.clock = results, total, stream or sys.stderr, clock
        self.started = clock()
        self._last_s = -1.0

    def line(self) -> str:
        sent = sum(1 for r in self.results if r.sent)
        done = sum(1 for r in self.results if r.ok)
        errors = sum(1 for r in self.results if r.failed)
        return (f"loadgen: sent {sent}/{self.total} done {done} errors {errors} in-flight {sent - done - errors} "
                f"elapsed {self.clock() - self.started:.0f}s")

    def show(self, final: bool = False) -> None:
        now = self.clock()
        if not final and self._last_s >= 0 and now - self._last_s < 1.0:
            return
        self._last_s = now
        if self.stream.isatty():
            self.stream.write("\r\033[K" + self.line() + ("\n" if final else ""))
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()

    async def every_second(self) -> None:
        while True:
            self.show()
            await asyncio.sleep(1.0)


async def run_open_loop(requests: list[SimRequest], target: Target, bounds: Bounds, seed: int = 0,
                        vocab_range: tuple[int, int] = DEFAULT_VOCAB_RANGE, progress: bool = True) -> RunResult:
    results = [RequestResult(r) for r in requests]
    reporter = Progress(results, len(results))
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=256)
    timeout = httpx.Timeout(None, connect=bounds.connect_timeout_s)
    started_wall, started = time.time(), time.perf_counter()
    ticker = asyncio.create_task(reporter.every_second()) if progress else None
    tasks: list[asyncio.Task] = []
    try:
        async with httpx.AsyncClient(limits=limits, timeout=timeout) as http:
            for result in results:
                arrival = result.request.arrival_s
                if bounds.max_duration_s is not None and arrival > bounds.max_duration_s:
                    break
                await asyncio.sleep(max(0.0, arrival - (time.perf_counter() - started)))
                if bounds.max_duration_s is not None and time.perf_counter() - started > bounds.max_duration_s:
                    break
                prompt = prompt_token_ids(result.request.request_id, result.request.prompt_tokens, seed, vocab_range)
                tasks.append(asyncio.create_task(stream_completion(http, target, result, prompt, started)))
            send_span = time.perf_counter() - started
            await _drain(tasks, bounds.drain_timeout_s)
            for result in results:
                if result.sent and not result.ok and not result.failed:
                    result.fail("timeout", f"unfinished {bounds.drain_timeout_s:g}s after sending stopped")
    finally:
        if ticker is not None:
            ticker.cancel()
        for task in tasks:
            task.cancel()
    duration = max([r.ended_s for r in results if r.sent] + [send_span])
    if progress:
        reporter.show(final=True)
    return RunResult(results, started_wall, duration, send_span)


async def _drain(tasks: list[asyncio.Task], timeout_s: float) -> None:
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=timeout_s)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
