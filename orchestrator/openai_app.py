"""The OpenAI-compatible HTTP app: vLLM's own API server app (protocol models, chat
templates, error schema, API keys) on a `ClusterEngineClient`, with only the public
routes mounted."""

from __future__ import annotations

import argparse

from fastapi import FastAPI
from starlette.routing import BaseRoute
from vllm.config import VllmConfig
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.entrypoints.launchers.api_server.app_state import init_app_state
from vllm.entrypoints.launchers.app import build_app
from vllm.entrypoints.launchers.cli_args import make_arg_parser
from vllm.utils.argparse_utils import FlexibleArgumentParser

from actors.engine_metrics import SeriesIdentity, engine_stat_logger
from actors.engine_spec import EngineSpec
from orchestrator.config import ServeSettings
from orchestrator.engine_client import ClusterEngineClient
from orchestrator.ingress_metrics import HTTPMetrics, IngressMetrics
from orchestrator.token_client import TokenClient

# Everything else vLLM's server mounts (profiling, LoRA loading, elastic scaling, sleep,
# cache resets, RPC) changes the engines: that is the controller's job, not the public
# port's.
PUBLIC_ROUTES = frozenset({
    "/v1/models", "/v1/completions", "/v1/chat/completions",
    "/tokenize", "/detokenize",
    "/health", "/ping", "/version", "/load", "/metrics",
    "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc",
})


def server_args(spec: EngineSpec, serve: ServeSettings) -> argparse.Namespace:
    """vLLM's own server arguments for this model, as `vllm serve` would parse them."""
    argv = [
        "--model", spec.model, "--served-model-name", spec.served_model_name,
        "--dtype", spec.dtype, "--max-model-len", str(spec.max_model_len),
        "--block-size", str(spec.block_size), "--seed", str(spec.seed),
        "--max-num-seqs", str(spec.max_num_seqs),
        "--host", serve.host, "--port", str(serve.port),
    ]
    for key in serve.api_keys:
        argv += ["--api-key", key]
    if serve.max_queued_requests is not None:
        argv += ["--max-num-queued-reqs", str(serve.max_queued_requests)]
    return make_arg_parser(FlexibleArgumentParser()).parse_args(argv)


def frontend_config(args: argparse.Namespace) -> VllmConfig:
    return AsyncEngineArgs.from_cli_args(args).create_engine_config()


async def build_openai_app(
    args: argparse.Namespace, tokens: TokenClient, retry_after_s: int, ingress: str = "ingress"
) -> FastAPI:
    """`ingress` names this front door instance in its metrics. vLLM's frontend statistics
    (TTFT, inter-token latency, end-to-end latency as the front door sees them) are
    exported with role `ingress`."""
    identity = SeriesIdentity(replica=ingress, pool="ingress", role="ingress")
    engine = ClusterEngineClient(frontend_config(args), tokens, log_stats=not args.disable_log_stats,
                                 stat_loggers=[engine_stat_logger(identity)])
    metrics = IngressMetrics(ingress, PUBLIC_ROUTES)
    tokens.on_replay = metrics.on_replay
    tokens.on_migration = metrics.on_migration
    app = build_app(args, supported_tasks=("generate",), model_config=engine.model_config)
    app.router.routes[:] = [r for r in app.router.routes if _is_public(r)]
    # vLLM's app has built its middleware stack already; the outer layers go around it.
    inner = app.middleware_stack or app.build_middleware_stack()
    app.middleware_stack = HTTPMetrics(RetryAfter(inner, retry_after_s), metrics)
    await init_app_state(engine, app.state, args, supported_tasks=("generate",))
    return app


def _is_public(route: BaseRoute) -> bool:
    return getattr(route, "path", None) in PUBLIC_ROUTES


class RetryAfter:
    """Overload answers (429, 503) tell the client when to come back. Plain ASGI, so
    streaming responses and client disconnects pass through untouched."""

    def __init__(self, app, seconds: int):
        self.app = app
        self.header = (b"retry-after", str(seconds).encode())

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_retry_after(message):
            if message["type"] == "http.response.start" and message["status"] in (429, 503):
                headers = list(message.get("headers", []))
                if not any(name.lower() == b"retry-after" for name, _ in headers):
                    message = {**message, "headers": headers + [self.header]}
            await send(message)

        await self.app(scope, receive, send_with_retry_after)
