"""How Ray Serve runs the ingress: settings Ray Serve reads from the environment of its
processes, given to the Serve controller (`serve.start(controller_options=...)`) and to
the ingress replicas (their runtime environment) when the ingress is deployed.

Direct ingress: each ingress replica serves HTTP itself on `port` (the next ports for
more replicas on one node) instead of behind Serve's HTTP proxy, which saves a process hop
per request and per streamed chunk. The rest is Serve's "throughput optimized" profile
(request handling on the replica's event loop, no per-request logging).
"""

from __future__ import annotations

from orchestrator.config import ServeSettings


def ray_serve_env(settings: ServeSettings, num_ingress_apps: int = 1) -> dict[str, str]:
    """The environment for `settings`; `num_ingress_apps` Serve applications of this kind
    share the cluster (each gets its own ports)."""
    if not settings.direct_ingress:
        return {"RAY_SERVE_ENABLE_DIRECT_INGRESS": "0"}
    num_ports = settings.num_ingress_replicas * num_ingress_apps
    return {
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
        "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(settings.port),
        "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(settings.port + num_ports),
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(settings.proxy_port + 1),
        # No load balancer in front needs time to forget a replica: a restarted ingress
        # takes its port back at once, and a stopping one goes once its requests are done.
        "RAY_SERVE_PORT_QUARANTINE_S": "0",
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "0",
    }
