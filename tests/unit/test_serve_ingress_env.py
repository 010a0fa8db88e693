"""Ray Serve's direct-ingress settings, derived from the `serve:` config."""

from __future__ import annotations

from orchestrator.config import ServeSettings
from orchestrator.serve_ingress_env import ray_serve_env


def test_direct_ingress_gives_each_ingress_replica_a_port_from_the_configured_one():
    env = ray_serve_env(ServeSettings(port=9100, proxy_port=9200, num_ingress_replicas=2), num_ingress_apps=3)
    assert env["RAY_SERVE_ENABLE_DIRECT_INGRESS"] == "1"
    assert (env["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"], env["RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT"]) == ("9100", "9106")
    assert env["RAY_SERVE_FALLBACK_PROXY_HTTP_PORT"] == "9201"
    assert env["RAY_SERVE_PORT_QUARANTINE_S"] == "0"


def test_the_proxy_mode_turns_direct_ingress_off():
    assert ray_serve_env(ServeSettings(direct_ingress=False)) == {"RAY_SERVE_ENABLE_DIRECT_INGRESS": "0"}
