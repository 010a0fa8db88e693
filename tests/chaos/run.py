"""A chaos run: Tide on a multi-node local Ray cluster (a head, a prefill node, two decode
nodes, each its own `ray start`), its OpenAI front door under steady Poisson load, and
faults one at a time, then combined: a decode replica killed mid-stream, a prefill replica
killed, the controller killed, the KV staging area deleted under the transfers, a replica
slowed (its emulated clock at the minimum), a load burst, a whole decode node stopped, and
a replica kill + controller kill + staging loss at once.

Every request must complete with exactly the oracle's tokens (one plain vLLM engine) or
end with a retriable error (503 with Retry-After); after each fault the pools must be back
at full size within the stated time; each fault must show in Prometheus. Writes a report:

    .venv/bin/python -m tests.chaos.run --report chaos-report.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import ray
from ray import serve
from ray._common.utils import import_attr
from ray.serve._private.api import call_user_app_builder_with_args_if_necessary

from actors.kv.medium import MediumKind
from orchestrator.config import (
    ClusterConfig,
    ControllerSettings,
    EngineConfig,
    KVTransferSettings,
    PoolConfig,
    ServeSettings,
)
from orchestrator.events import ActionKind
from orchestrator.launcher import find_controller
from orchestrator.models import resolve_model
from orchestrator.prometheus_runner import PrometheusSettings, ray_metrics_targets, running_prometheus
from orchestrator.serve_app import endpoint_url
from orchestrator.serve_ingress_env import ray_serve_env
from policies.snapshot import Role
from tests.chaos import faults
from tests.chaos.event_log import ControllerEventLog
from tests.chaos.local_cluster import LOOPBACK_ENV, LocalRayCluster, NodeSpec
from tests.chaos.traffic import OpenLoop, Outcome
from tests.integration.helpers import ask
from tests.oracle import PlainEngine

CLUSTER = "tidechaos"
# Time to notice a fault and act on it, by kind (a stopped node is declared dead by Ray's
# health checks).
NOTICE_S = {"replica": 30.0, "controller": 30.0, "node": 60.0, "none": 30.0}
# A fault also waits for new processes, in units of the slowest engine start of the run's
# own first start (the same machine, the same engines): a replica or node fault for a new
# engine, up to twice that (a replacement starts under the load the first start did not
# have); a killed controller for its new process, which imports vLLM and adopts what runs,
# up to once that.
ENGINE_STARTS = {"replica": 2.0, "controller": 1.0, "node": 2.0, "none": 0.0}
CONTROL = {"tide_control": 0.01}
# The import path of k8s/overlays/*/rayservice.yaml's serveConfigV2.
IMPORT_PATH = "orchestrator.serve_app:app_builder"


@dataclass
class FaultRecord:
    name: str
    kind: str
    injected_at_s: float
    recovered_after_s: float | None
    bound_s: float
    detail: str = ""
    # Unix time of the injection, to line the fault up with the controller's events.
    injected_at_unix_s: float = 0.0
    # What still fell short when the bound ran out.
    missing: str = ""
    # The replicas whose actors the fault killed (with their node, for a node fault).
    lost_replicas: list[str] = field(default_factory=list)
    kills_controller: bool = False


def recovery_bounds_s(engine_start_s: float) -> dict[str, float]:
    return {kind: notice + ENGINE_STARTS[kind] * engine_start_s for kind, notice in NOTICE_S.items()}


def cluster_config(port: int, proxy_port: int) -> ClusterConfig:
    return ClusterConfig(
        name=CLUSTER,
        engine=EngineConfig(model="tiny", kv_cache_bytes=64 << 20, max_model_len=2048, max_num_seqs=32,
                            cpu_threads_bind="nobind", cpu_threads=1),
        kv=KVTransferSettings(medium=MediumKind.RAY, fetch_timeout_s=5.0, staged_ttl_s=10.0),
        pools=(PoolConfig(name="prefill", role=Role.PREFILL, num_replicas=1, resources={"tide_prefill": 1}),
               PoolConfig(name="decode", role=Role.DECODE, num_replicas=2, resources={"tide_decode": 1})),
        controller=ControllerSettings(tick_s=0.25, health_timeout_s=5.0, start_timeout_s=600.0, resources=CONTROL),
        serve=ServeSettings(port=port, proxy_port=proxy_port, direct_ingress=False, ingress_resources=CONTROL,
                            max_replays=3),
    )


def deploy_from_import_path(config: ClusterConfig) -> str:
    """What KubeRay's `serveConfigV2` does: Serve imports `IMPORT_PATH` and calls it with
    the config's `args` (Ray Serve's own builder call); the builder starts the controller.
    Serve's HTTP proxy is the front door (`serve.direct_ingress: false`, as on KubeRay)."""
    settings = config.serve
    serve.start(http_options={"host": settings.host, "port": settings.port},
                controller_options={"runtime_env": {"env_vars": ray_serve_env(settings)}})
    app = call_user_app_builder_with_args_if_necessary(import_attr(IMPORT_PATH),
                                                      {"config": config.model_dump(mode="json")})
    serve.run(app, name=CLUSTER, route_prefix=settings.route_prefix, blocking=False)
    return endpoint_url(config)


async def wait_recovered(controller, started: float, timeout_s: float, gone: frozenset[str],
                         restarted_below: int | None) -> tuple[float | None, str]:
    """Seconds from `started` until every pool serves its target size again without the
    actors in `gone` (the ones the fault killed; a replacement may reuse a name); with
    `restarted_below`, only once a restarted controller answers (its snapshot versions
    start again from 0). On time-out, None and what still fell short."""
    deadline = time.monotonic() + timeout_s
    missing = "the controller never answered"
    restarted = restarted_below is None
    while time.monotonic() < deadline:
        try:
            table = await asyncio.wait_for(controller.routing_table.remote(), timeout=5.0)
            snapshot = table.snapshot
            serving = {r.replica_id for r in snapshot.serving(Role.PREFILL) + snapshot.serving(Role.DECODE)}
            present = {actor_id(a) for rid, a in table.actors.items() if rid in serving}
            # Seen once is enough: the new controller's count soon passes the old one's.
            restarted = restarted or snapshot.version < restarted_below
            if restarted and not gone & present and all(len(p.serving) >= p.target_size for p in snapshot.pools):
                return time.monotonic() - started, ""
            missing = "; ".join(
                [f"{p.name}: {len(p.serving)}/{p.target_size} serving "
                 f"({', '.join(f'{r.replica_id} {r.health.value}' for r in p.replicas)})" for p in snapshot.pools]
                + ([] if restarted else ["the controller has not restarted"])
                + ([f"{len(gone & present)} killed actor(s) still listed"] if gone & present else []))
        except (ray.exceptions.RayError, asyncio.TimeoutError):
            pass
        await asyncio.sleep(0.25)
    return None, missing


def actor_id(actor) -> str:
    return actor._actor_id.hex()


async def dead_actors(actors: list) -> frozenset[str]:
    """The actors that no longer answer (a killed actor fails at once; one on a stopped
    node within the timeout)."""
    dead = set()
    for actor in actors:
        try:
            await asyncio.wait_for(actor.check_health.remote(), timeout=10.0)
        except (ray.exceptions.RayError, asyncio.TimeoutError):
            dead.add(actor_id(actor))
    return frozenset(dead)


async def run_faults(controller, cluster: LocalRayCluster, load: OpenLoop, staging: Path,
                     records: list[FaultRecord], bounds_s: dict[str, float]) -> None:
    async def inject(name: str, kind: str, action, settle_s: float = 3.0, kills_controller: bool = False) -> None:
        table = await ask(controller.routing_table.remote)
        started, started_unix = time.monotonic(), time.time()
        detail = action()
        if asyncio.iscoroutine(detail):
            detail = await detail
        gone = await dead_actors(list(table.actors.values())) if kind in ("replica", "node") else frozenset()
        lost = sorted(rid for rid, actor in table.actors.items() if actor_id(actor) in gone)
        recovered, missing = await wait_recovered(controller, started, bounds_s[kind], gone,
                                                  table.snapshot.version if kills_controller else None)
        records.append(FaultRecord(name, kind, started, recovered, bounds_s[kind], str(detail or ""),
                                   started_unix, missing, lost, kills_controller))
        print(f"  {name}: recovered after {recovered if recovered is None else round(recovered, 1)} s"
              f"{' (' + missing + ')' if missing else ''}", flush=True)
        await asyncio.sleep(settle_s)

    await asyncio.sleep(5.0)
    await inject("kill a decode replica mid-stream", "replica",
                 lambda: faults.kill_busiest_replica(controller, Role.DECODE))
    await inject("kill the prefill replica", "replica", lambda: faults.kill_busiest_replica(controller, Role.PREFILL))
    await inject("kill the controller", "controller", lambda: faults.kill_controller(controller),
                 kills_controller=True)
    await inject("KV staging lost for 6 s", "none", lambda: faults.break_staging(staging, 6.0))
    await inject("a decode replica slowed to 210 MHz for 8 s", "none",
                 lambda: faults.slow_replica(controller, Role.DECODE, 210, 8.0))
    await inject("load burst x3 for 8 s", "none", lambda: load.burst(load.rate * 3, 8.0))
    await inject("stop the node of a decode replica", "node",
                 lambda: faults.stop_node_hosting(cluster, controller, Role.DECODE))

    async def combined():
        victim = await faults.kill_busiest_replica(controller, Role.DECODE)
        faults.kill_controller(controller)
        removed = await faults.break_staging(staging, 5.0)
        return f"killed {victim}, controller, {removed} staged files removed"

    await inject("decode replica + controller + staging at once", "replica", combined, settle_s=5.0,
                 kills_controller=True)


async def prometheus_evidence(url: str, window_s: int) -> dict[str, float]:
    # A killed process's counters restart from zero (and a series born at 1 has no
    # `increase`): the highest value each series reached, summed, counts the events.
    window = f"{window_s}s"
    queries = {
        "replacements": f'sum(max_over_time(ray_tide_controller_actions_total{{kind="replace"}}[{window}]))',
        "adoptions_after_controller_restart":
            f'sum(max_over_time(ray_tide_controller_actions_total{{kind="adopt"}}[{window}]))',
        "ingress_replays": f"sum(max_over_time(ray_tide_ingress_replays_total[{window}]))",
        "kv_transfer_failures": f"sum(max_over_time(ray_tide_kv_transfer_failures_total[{window}]))",
        "replicas_down_seen": f"min_over_time(sum(ray_tide_replica_up)[{window}:1s]) "
                              f"< bool max_over_time(sum(ray_tide_replica_up)[{window}:1s])",
        "lowest_device_clock_mhz": f"min(min_over_time(ray_tide_device_clock_mhz[{window}]))",
    }
    found = {}
    async with httpx.AsyncClient(timeout=30.0) as http:
        for name, expr in queries.items():
            answer = (await http.get(f"{url}/api/v1/query", params={"query": expr})).json()
            result = answer.get("data", {}).get("result", [])
            found[name] = float(result[0]["value"][1]) if result else 0.0
    return found


def summarize(outcomes: list[Outcome], oracle_tokens: dict[int, list[int]]) -> dict:
    errors = Counter(o.error for o in outcomes if o.error)
    mismatched = [o.request_id for o in outcomes if o.finished and not o.error and o.tokens != oracle_tokens[o.request_id]]
    lost = [o.request_id for o in outcomes if o.error and not o.retriable]
    return {"requests": len(outcomes), "completed": sum(1 for o in outcomes if o.finished and not o.error),
            "retriable_errors": sum(1 for o in outcomes if o.error and o.retriable), "errors_by_kind": dict(errors),
            "lost": lost, "oracle_mismatches": mismatched}


async def main_async(args) -> dict:
    cluster = LocalRayCluster(
        head=NodeSpec("head", 2, {"tide_control": 1}),
        # Either decode node can hold both decode replicas when the other stops.
        workers=[NodeSpec("prefill-a", 1, {"tide_prefill": 2}), NodeSpec("decode-a", 1, {"tide_decode": 2}),
                 NodeSpec("decode-b", 1, {"tide_decode": 2})],
        port=args.ray_port)
    print("starting a 4-node local Ray cluster", flush=True)
    os.environ.update(LOOPBACK_ENV)
    records: list[FaultRecord] = []
    try:
        cluster.start()
        ray.init(address=cluster.address, namespace=CLUSTER, log_to_driver=False)
        config = cluster_config(args.port, args.proxy_port)
        model = resolve_model("tiny")
        e = config.engine
        oracle = ray.remote(PlainEngine).options(num_cpus=0, resources=CONTROL).remote(
            model, e.dtype, e.block_size, e.max_model_len, e.kv_cache_bytes)
        print("starting engines (prefill, 2 decode, oracle) through the Serve config's import path", flush=True)
        url = deploy_from_import_path(config)
        controller = find_controller(CLUSTER)
        await asyncio.gather(oracle.start.remote(), controller.start.remote())
        engine_start_s = max(e.duration_s for e in await ask(controller.events.remote)
                             if e.kind == ActionKind.SCALE and e.outcome.startswith("ok"))
        bounds_s = recovery_bounds_s(engine_start_s)
        print(f"front door at {url}; the slowest engine start took {engine_start_s:.1f} s, so the recovery bounds "
              f"are {bounds_s}", flush=True)
        staging = Path(config.kv.shm_dir) / CLUSTER
        with running_prometheus(ray_metrics_targets(), PrometheusSettings(port=args.prometheus_port,
                                                                          scrape_interval_s=1.0)) as prometheus:
            load = OpenLoop(url, e.served_model_name, rate=args.rate, seed=args.seed)
            event_log = ControllerEventLog(controller)
            started = time.monotonic()
            event_log.start()
            load.start()
            await run_faults(controller, cluster, load, staging, records, bounds_s)
            await asyncio.sleep(5.0)
            outcomes = await load.stop()
            events = await event_log.stop()
            await asyncio.sleep(3.0)  # one more scrape
            evidence = await prometheus_evidence(prometheus, int(time.monotonic() - started) + 30)
        print(f"checking {len(outcomes)} requests against the oracle", flush=True)
        finished = [o for o in outcomes if o.finished and not o.error]
        answers = await asyncio.gather(*(oracle.greedy.remote(o.prompt, o.max_tokens) for o in finished))
        summary = summarize(outcomes, {o.request_id: a for o, a in zip(finished, answers, strict=True)})
        return {"faults": [asdict(r) for r in records], **summary, "metrics": evidence, "engine_start_s": engine_start_s,
                "controller_events": Counter(f"{e.kind.value}:{e.outcome.split(':')[0]}" for e in events),
                # Every controller's, the killed ones' included.
                "controller_event_log": [
                    {"at_unix_s": e.at_s, "kind": e.kind.value, "reason": e.reason, "replica": e.replica,
                     "pool": e.pool, "outcome": e.outcome[:200], "duration_s": round(e.duration_s, 2)}
                    for e in events]}
    finally:
        ray.shutdown()
        cluster.shutdown()
        faults.clear_dir(Path(cluster_config(args.port, args.proxy_port).kv.shm_dir) / CLUSTER)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", type=Path, default=Path("chaos-report.json"))
    parser.add_argument("--rate", type=float, default=1.5, help="steady Poisson arrivals per second")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--ray-port", type=int, default=6399)
    parser.add_argument("--port", type=int, default=8351)
    parser.add_argument("--proxy-port", type=int, default=8361)
    parser.add_argument("--prometheus-port", type=int, default=9391)
    args = parser.parse_args()
    # Stopped from outside (the test's time limit), the run still stops its Ray cluster.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("chaos run terminated"))
    report = asyncio.run(main_async(args))
    args.report.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "faults"}, indent=2))
    for fault in report["faults"]:
        print(f"  {fault['name']}: recovered after {fault['recovered_after_s']} s (bound {fault['bound_s']} s)")
    sys.exit(0)


if __name__ == "__main__":
    main()
