"""The engine core, as vLLM's frontend sees it, made of the cluster's replicas.

vLLM's `AsyncLLM` talks to its engine core through `add_request_async`,
`abort_requests_async` and `get_output_async`. This class answers those three with the
Tide data path: each request goes through the `TokenClient` (routing, prefill -> decode,
replay after a replica dies), and every token delta comes back as vLLM's own
`EngineCoreOutput`, so detokenization, stop strings, logprobs, `n`, usage and metrics are
vLLM's code, unchanged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable

from vllm import SamplingParams
from vllm.v1.engine import (
    EngineCoreOutput,
    EngineCoreOutputs,
    EngineCoreRequest,
    FinishReason,
)
from vllm.v1.metrics.stats import PrefillStats

from actors.messages import TokenDelta, TokenRequest
from orchestrator.logprob_rows import prompt_logprob_tensors, sample_logprob_lists
from orchestrator.token_client import TokenClient
from policies.snapshot import RequestId

logger = logging.getLogger(__name__)

FINISH_REASONS = {str(reason): reason for reason in FinishReason}

RequestErrorSink = Callable[[str, Exception], None]


class ClusterCoreClient:
    # One logical engine for vLLM's stat loggers; per-replica statistics come from the
    # replicas' own engines.
    engine_ranks_managed = [0]

    def __init__(self, tokens: TokenClient, on_request_error: RequestErrorSink):
        self._tokens = tokens
        self._on_request_error = on_request_error
        self._outputs: asyncio.Queue[EngineCoreOutput] = asyncio.Queue()
        self._requests: dict[str, asyncio.Task] = {}

    @property
    def num_requests(self) -> int:
        return len(self._requests)

    async def add_request_async(self, request: EngineCoreRequest) -> None:
        token_request = TokenRequest(
            request_id=RequestId(request.request_id),
            prompt_token_ids=list(request.prompt_token_ids or []),
            sampling=replica_sampling(request.sampling_params),
        )
        self._requests[request.request_id] = asyncio.create_task(self._serve(request, token_request))

    async def abort_requests_async(self, request_ids: Iterable[str]) -> None:
        for request_id in request_ids:
            task = self._requests.pop(request_id, None)
            if task is not None:
                task.cancel()

    async def get_output_async(self) -> EngineCoreOutputs:
        outputs = [await self._outputs.get()]
        while not self._outputs.empty():
            outputs.append(self._outputs.get_nowait())
        return EngineCoreOutputs(outputs=outputs, timestamp=time.monotonic())

    async def get_supported_tasks_async(self) -> tuple[str, ...]:
        return ("generate",)

    def shutdown(self, timeout: float | None = None) -> None:
        for task in self._requests.values():
            task.cancel()
        self._requests.clear()

    async def _serve(self, request: EngineCoreRequest, token_request: TokenRequest) -> None:
        sampling = request.sampling_params
        first = True
        try:
            async for delta in self._tokens.generate(token_request):
                self._outputs.put_nowait(core_output(request.request_id, delta, sampling, token_request, first))
                first = False
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.info("request %s failed: %s: %s", request.request_id, type(exc).__name__, exc)
            self._on_request_error(request.request_id, exc)
        finally:
            self._requests.pop(request.request_id, None)


def replica_sampling(params: SamplingParams | None) -> SamplingParams:
    """What a replica runs: the frontend's parameters minus the text-level work the
    frontend does itself (stop strings, detokenization)."""
    if params is None:
        raise ValueError("pooling requests are not served")
    sampling = params.clone()
    sampling.stop = []
    sampling.detokenize = False
    return sampling


def core_output(
    request_id: str, delta: TokenDelta, sampling: SamplingParams | None, request: TokenRequest, first: bool
) -> EngineCoreOutput:
    new_logprobs = None
    if delta.logprobs and sampling is not None and sampling.logprobs is not None:
        new_logprobs = sample_logprob_lists(delta.token_ids, delta.logprobs, sampling.logprobs)
    prompt_logprobs = None
    if first and delta.prompt_logprobs and sampling is not None and sampling.prompt_logprobs is not None:
        prompt_logprobs = prompt_logprob_tensors(request.prompt_token_ids, delta.prompt_logprobs, sampling.prompt_logprobs)
    prefill_stats = None
    if first:
        # What vLLM's frontend counts as the request's prompt tokens (and prefix-cache hits).
        prefill_stats = PrefillStats()
        prefill_stats.set(len(request.prompt_token_ids), min(delta.num_cached_tokens, len(request.prompt_token_ids)), 0)
    return EngineCoreOutput(
        request_id=request_id,
        prefill_stats=prefill_stats,
        new_token_ids=list(delta.token_ids),
        new_logprobs=new_logprobs,
        new_prompt_logprobs_tensors=prompt_logprobs,
        finish_reason=FINISH_REASONS[delta.finish_reason] if delta.finish_reason else None,
        stop_reason=delta.stop_reason,
    )
