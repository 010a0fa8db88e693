"""vLLM's `EngineClient` for a whole Tide cluster.

It is vLLM's own `AsyncLLM` frontend (input processing, output processing, parallel
sampling, stat loggers, aborts on disconnect) over a `ClusterCoreClient` instead of an
engine-core process, so vLLM's OpenAI serving code runs on it as it runs on one engine.
"""

from __future__ import annotations

import asyncio
from http import HTTPStatus

from vllm.config import VllmConfig
from vllm.exceptions import GracefulHTTPError
from vllm.renderers import renderer_from_config
from vllm.v1.engine.async_llm import AsyncLLM
from vllm.v1.engine.input_processor import InputProcessor
from vllm.v1.engine.output_processor import OutputProcessor
from vllm.v1.metrics.loggers import StatLoggerFactory, StatLoggerManager

from orchestrator.cluster_core_client import ClusterCoreClient
from orchestrator.token_client import RequestFailed, TokenClient
from policies.routing import NoReplicaAvailable


class ClusterUnavailable(GracefulHTTPError):
    """No replica can take the request now, or it lost its replica more often than the
    replay budget allows. Retriable: HTTP 503."""

    def __init__(self, message: str):
        super().__init__(message, HTTPStatus.SERVICE_UNAVAILABLE)


class ClusterEngineClient(AsyncLLM):
    def __init__(
        self,
        vllm_config: VllmConfig,
        tokens: TokenClient,
        log_stats: bool = True,
        stat_loggers: list[StatLoggerFactory] | None = None,
    ):
        # AsyncLLM.__init__ would start an engine-core process; this builds the same
        # frontend with the cluster as its core.
        self.vllm_config = vllm_config
        self._elastic_ep_lock = asyncio.Lock()
        self.model_config = vllm_config.model_config
        self.scheduler_config = vllm_config.scheduler_config
        self.observability_config = vllm_config.observability_config
        self.log_requests = False
        self.log_stats = log_stats
        self.renderer = renderer_from_config(vllm_config)
        self.input_processor = InputProcessor(vllm_config, self.renderer)
        self.admission_stats = None
        self.output_processor = OutputProcessor(
            self.renderer.tokenizer,
            log_stats=log_stats,
            stream_interval=vllm_config.scheduler_config.stream_interval,
        )
        self.engine_core = ClusterCoreClient(tokens, self._fail_request)
        self.logger_manager = None
        if log_stats:
            self.logger_manager = StatLoggerManager(
                vllm_config=vllm_config,
                engine_idxs=self.engine_core.engine_ranks_managed,
                custom_stat_loggers=list(stat_loggers or []),
                enable_default_loggers=True,
                client_count=1,
            )
        self._client_count = 1
        self.output_handler = None
        self.profiler = None
        self._frontend_profiler_injected = False
        self._profile_lock = asyncio.Lock()
        self._profile_session_guard_enabled = False
        self._profile_session_active = False
        self.tokens = tokens

    @property
    def errored(self) -> bool:
        return not self.is_running

    def _fail_request(self, request_id: str, exc: Exception) -> None:
        """Ends a request (all of its `n` samples) with `exc` as its caller's error."""
        state = self.output_processor.request_states.get(request_id)
        if state is None:
            return
        siblings = [request_id]
        if state.parent_req is not None:
            siblings = [rid for rid, s in self.output_processor.request_states.items() if s.parent_req is state.parent_req]
        self.output_processor.abort_requests(siblings, internal=True)
        asyncio.get_running_loop().create_task(self.engine_core.abort_requests_async(siblings))
        if state.queue is not None:
            state.queue.put(client_error(exc))


def client_error(exc: Exception) -> Exception:
    """The error a caller sees for a request the cluster could not finish."""
    if isinstance(exc, (RequestFailed, NoReplicaAvailable)):
        return ClusterUnavailable(f"{exc}; retry the request")
    return exc
