"""The Ray Serve application: the OpenAI-compatible ingress of a Tide cluster.

`deploy()` runs it on the current Ray cluster (what `tide up` does); `app_builder` is the
import path for Serve config files and KubeRay's `serveConfigV2`
(`import_path: orchestrator.serve_app:app_builder`, `args: {config: <ClusterConfig>}`),
which also starts the cluster's controller if it is not running.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ray
from fastapi import FastAPI
from ray import serve
from ray.serve import Application

from orchestrator.config import ClusterConfig
from orchestrator.launcher import controller_name, launch_controller
from orchestrator.models import resolve_model
from orchestrator.openai_app import build_openai_app, server_args
from orchestrator.serve_ingress_env import ray_serve_env
from orchestrator.token_client import TokenClient
from policies.routing import make_router

INGRESS_NAME = "openai-ingress"
# Streams are long and cheap for the ingress; the replicas' own queues are the limit.
MAX_ONGOING_REQUESTS_PER_INGRESS = 4096


@serve.ingress()
class OpenAIIngress:
    def __init__(self, config: ClusterConfig, model_path: str):
        self.config = config
        self.model_path = model_path
        self.tokens: TokenClient | None = None

    async def __serve_build_asgi_app__(self) -> FastAPI:
        config = self.config
        controller = ray.get_actor(controller_name(config.name), namespace=config.name)
        spec = config.engine_spec(self.model_path)
        self.tokens = TokenClient(
            controller, make_router(config.routing, config.serve.routing_sample_size), spec.block_size,
            refresh_s=config.serve.routing_refresh_s, max_replays=config.serve.max_replays,
            data_path=config.serve.data_path,
        )
        await self.tokens.start()
        ingress = serve.get_replica_context().replica_id.unique_id
        return await build_openai_app(server_args(spec, config.serve), self.tokens, config.serve.retry_after_s, ingress)

    async def __del__(self):
        if self.tokens is not None:
            await self.tokens.close()


def application(config: ClusterConfig, model_path: str, num_ingress_apps: int = 1) -> Application:
    return serve.deployment(OpenAIIngress).options(
        name=INGRESS_NAME,
        num_replicas=config.serve.num_ingress_replicas,
        max_ongoing_requests=MAX_ONGOING_REQUESTS_PER_INGRESS,
        ray_actor_options={"num_cpus": 0, "resources": dict(config.serve.ingress_resources),
                           "runtime_env": {"env_vars": ray_serve_env(config.serve, num_ingress_apps)}},
    ).bind(config, model_path)


def deploy(config: ClusterConfig, model_path: str, app_name: str | None = None, num_ingress_apps: int = 1) -> str:
    """Runs the ingress (as Serve application `app_name`, the cluster's name by default)
    and returns its endpoint URL once it serves. The first deploy on a Ray cluster starts
    Serve for `num_ingress_apps` such applications (see serve_ingress_env)."""
    settings = config.serve
    env = ray_serve_env(settings, num_ingress_apps)
    serve.start(http_options={"host": settings.host, "port": settings.proxy_port if settings.direct_ingress else settings.port},
                controller_options={"runtime_env": {"env_vars": env}})
    app_name = app_name or config.name
    serve.run(application(config, model_path, num_ingress_apps), name=app_name, route_prefix=settings.route_prefix,
              blocking=False)
    if not settings.direct_ingress:
        return endpoint_url(config)
    port = direct_ingress_port(app_name, exclude=(settings.proxy_port, settings.proxy_port + 1))
    if port is None:
        raise RuntimeError(f"the ingress of {app_name!r} does not serve HTTP itself: Serve on this Ray cluster was "
                           "started without direct ingress (restart Serve, or set serve.direct_ingress: false)")
    return endpoint_url(config, port)


def direct_ingress_port(app_name: str, exclude: tuple[int, ...]) -> int | None:
    """The port the app's first ingress replica listens on, from the Serve controller's
    routing targets (what a load balancer in front of direct ingress reads). Serve lists
    its proxies (ports `exclude`) while no ingress replica serves."""
    from ray.serve._private.common import RequestProtocol
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    for group in ray.get(controller.get_target_groups.remote(app_name)):
        if group.app_name == app_name and group.protocol == RequestProtocol.HTTP and group.targets:
            ports = [target.port for target in group.targets if target.port not in exclude]
            if ports:
                return min(ports)
    return None


def endpoint_url(config: ClusterConfig, port: int | None = None) -> str:
    host = "127.0.0.1" if config.serve.host in ("0.0.0.0", "::") else config.serve.host
    return f"http://{host}:{port or config.serve.port}{config.serve.route_prefix.rstrip('/')}"


def undeploy(app_name: str) -> None:
    serve.delete(app_name)


def app_builder(args: dict[str, Any]) -> Application:
    """Serve config entry point. `args.config` is a ClusterConfig (inline mapping or a
    YAML path)."""
    raw = args.get("config", {})
    config = ClusterConfig.from_yaml(Path(raw)) if isinstance(raw, str) else ClusterConfig.model_validate(raw)
    model_path = str(resolve_model(config.engine.model))
    controller = launch_controller(config, detached=True)
    controller.start.remote(wait_ready=False)
    return application(config, model_path)
