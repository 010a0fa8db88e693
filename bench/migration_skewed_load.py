"""Migration under skewed load: P99 TTFT and P99 TPOT with live migration, against
load-aware routing alone and round-robin, in one run.

1 prefill + 2 decode replicas with small KV caches (so decode memory is the bottleneck);
Gamma arrivals with a high coefficient of variation (bursts), long-tailed (log-normal)
output lengths; the same seeded workload for each setup. Each setup runs on a fresh
cluster.

    .venv/bin/python -m bench.migration_skewed_load [--requests 300] [--rate 6] [--cv 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import ray

from bench.token_load import open_loop, pct
from orchestrator.config import (
    ClusterConfig,
    ControllerSettings,
    EngineConfig,
    MigrationConfig,
    PoolConfig,
)
from orchestrator.controller import ControllerActor
from orchestrator.events import ActionKind
from orchestrator.models import resolve_model
from orchestrator.token_client import TokenClient
from policies.routing import LoadAwareRouter, RoundRobinRouter
from policies.snapshot import Role


@dataclass(frozen=True)
class Workload:
    arrivals_s: tuple[float, ...]
    prompt_lens: tuple[int, ...]
    output_lens: tuple[int, ...]


@dataclass(frozen=True)
class Result:
    setup: str
    completed: int
    p50_ttft_s: float
    p99_ttft_s: float
    p50_tpot_s: float
    p99_tpot_s: float
    migrations: int
    preemptions: int


def workload(num: int, rate: float, cv: float, seed: int, max_output: int) -> Workload:
    """Gamma inter-arrivals with mean 1/rate and the given CV; log-normal outputs."""
    rng = random.Random(seed)
    shape = 1.0 / (cv * cv)
    t, arrivals = 0.0, []
    for _ in range(num):
        t += rng.gammavariate(shape, 1.0 / (rate * shape))
        arrivals.append(t)
    prompts = tuple(rng.randint(64, 256) for _ in range(num))
    outputs = tuple(min(max_output, max(4, int(rng.lognormvariate(4.0, 1.0)))) for _ in range(num))
    return Workload(tuple(arrivals), prompts, outputs)


async def run_setup(name: str, model: str, load: Workload, router, migration: bool, kv_mib: int) -> Result:
    config = ClusterConfig(
        name="bench-skew-" + "".join(c if c.isalnum() else "-" for c in name),
        engine=EngineConfig(model=model, kv_cache_bytes=kv_mib << 20, max_model_len=2048, cpu_threads_bind="nobind"),
        pools=(PoolConfig(name="prefill", role=Role.PREFILL), PoolConfig(name="decode", role=Role.DECODE, num_replicas=2)),
        controller=ControllerSettings(tick_s=0.25),
        migration=MigrationConfig(enabled=migration, source_below=2.0, destination_above=6.0, min_gap=4.0),
    )
    controller = ray.remote(ControllerActor).options(num_cpus=0, max_concurrency=100).remote(config, resolve_model(model))
    print(f"[{name}] starting 1 prefill + 2 decode replicas ...", flush=True)
    await controller.start.remote()
    client = TokenClient(controller, router, config.engine.block_size)
    await client.start()
    try:
        results = await open_loop(client, list(load.arrivals_s), list(load.prompt_lens), list(load.output_lens))
        events = await controller.events.remote()
        snapshot = await controller.snapshot.remote()
    finally:
        await client.close()
        await controller.stop.remote()
    done = [r for r in results if not isinstance(r, BaseException)]
    ttfts = sorted(r.ttft_s for r in done)
    tpots = sorted(r.tpot_s for r in done if r.tpot_s > 0)
    migrations = sum(1 for e in events if e.kind == ActionKind.MIGRATE and e.outcome == "ok")
    preemptions = sum(r.num_preemptions for pool in snapshot.pools for r in pool.replicas)
    result = Result(name, len(done), pct(ttfts, 50), pct(ttfts, 99), pct(tpots, 50), pct(tpots, 99), migrations,
                    preemptions)
    print(f"[{name}] completed {result.completed}/{len(results)}  TTFT p50 {result.p50_ttft_s * 1e3:.0f} ms "
          f"p99 {result.p99_ttft_s * 1e3:.0f} ms  TPOT p50 {result.p50_tpot_s * 1e3:.1f} ms "
          f"p99 {result.p99_tpot_s * 1e3:.1f} ms  migrations {migrations}  preemptions {preemptions}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--rate", type=float, default=6.0, help="mean requests per second")
    parser.add_argument("--cv", type=float, default=4.0, help="coefficient of variation of inter-arrival times")
    parser.add_argument("--max-output", type=int, default=1500)
    parser.add_argument("--kv-mib", type=int, default=5, help="KV cache per replica (5 MiB: 80 blocks, 2,560 tokens of the tiny model)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench/results/migration_skewed_load.json")
    args = parser.parse_args()
    load = workload(args.requests, args.rate, args.cv, args.seed, args.max_output)
    ray.init(include_dashboard=False, log_to_driver=False, namespace="tide-bench")
    setups = [("round-robin", RoundRobinRouter(), False), ("load-aware", LoadAwareRouter(), False),
              ("load-aware+migration", LoadAwareRouter(), True)]
    results = [asyncio.run(run_setup(name, args.model, load, router, migration, args.kv_mib))
               for name, router, migration in setups]
    base = results[0]
    for r in results:
        print(f"{r.setup:<22} P99 TTFT {r.p99_ttft_s / base.p99_ttft_s:5.2f}x  P99 TPOT "
              f"{r.p99_tpot_s / base.p99_tpot_s:5.2f}x of round-robin  ({r.migrations} migrations)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"command": "python -m bench.migration_skewed_load", "args": vars(args),
                                          "results": [asdict(r) for r in results]}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
