"""A memory burst on real engines: P99 TTFT and P99 TPOT with parameter dropping, against
no drop (requests queue for KV: vLLM's default) and migration alone, in one run. Parameter
dropping three ways: with the new engines started behind their weights gates while the
group serves (the default), with a standby pipeline already waiting at its gates before
the burst (parameter_drop.standby_pipeline), and with a cold switch (the old engines
stop, then the new start).

Two colocated replicas of the model under a replica memory budget where the weights are
most of it (--budget-mb; 90 % for `small` by default, as for a 70B-class model on two
80 GB GPUs); Poisson arrivals at --base-rate, stepping to --burst-factor x for --burst-s,
then back; the same seeded requests for every setup, each setup on a fresh cluster.
KV offload (vLLM's offloading connector) does not run on the CPU backend; its comparison
is in the simulator (python -m bench.sim_burst).

    .venv/bin/python -m bench.burst_drop [--model small] [--budget-mb 391]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import ray

from bench.token_load import open_loop, pct
from orchestrator.config import ClusterConfig, ControllerSettings, EngineConfig, MigrationConfig, ParameterDropConfig, PoolConfig
from orchestrator.controller import ControllerActor
from orchestrator.events import ActionKind
from orchestrator.models import resolve_model
from orchestrator.token_client import TokenClient
from policies.routing import LoadAwareRouter
from policies.snapshot import Role


@dataclass(frozen=True)
class Result:
    setup: str
    completed: int
    failed: int
    p50_ttft_s: float
    p99_ttft_s: float
    p50_tpot_s: float
    p99_tpot_s: float
    drops: int
    restores: int
    switch_s: tuple[float, ...]
    # Each switch's wait for its new engines to start behind their weights gates while the
    # group served (with a standby pipeline, the drop's wait for it).
    behind_gate_s: tuple[float, ...]
    migrations: int


def burst_arrivals(base_rate: float, factor: float, base_s: float, burst_s: float, after_s: float,
                   seed: int) -> list[float]:
    rng = random.Random(seed)
    arrivals, t = [], 0.0
    for rate, end in ((base_rate, base_s), (base_rate * factor, base_s + burst_s),
                      (base_rate, base_s + burst_s + after_s)):
        while True:
            t += rng.expovariate(rate)
            if t >= end:
                t = end
                break
            arrivals.append(t)
    return arrivals


# (parameter dropping, migration, the new engines started behind their weights gates,
#  a standby pipeline)
SETUPS = {
    "no drop": (False, False, True, False),
    "migration alone": (False, True, True, False),
    "parameter dropping": (True, False, True, False),
    "parameter dropping, standby pipeline": (True, False, True, True),
    "parameter dropping, cold switch": (True, False, False, False),
}


async def run_setup(name: str, args, arrivals: list[float], drop: bool, migration: bool,
                    behind_gate: bool = True, standby: bool = False) -> Result:
    config = ClusterConfig(
        name="bench-burst-" + re.sub(r"[^a-z0-9]+", "-", name),
        engine=EngineConfig(model=args.model, max_model_len=args.max_model_len, cpu_threads_bind="nobind",
                            max_num_seqs=64),
        pools=(PoolConfig(name="colocated", role=Role.COLOCATED, num_replicas=2),),
        controller=ControllerSettings(tick_s=0.25, start_timeout_s=600.0),
        parameter_drop=ParameterDropConfig(enabled=drop, replica_memory_bytes=args.budget_mb * 10**6,
                                           min_dropped_s=args.min_dropped_s, drop_usage=args.drop_usage,
                                           start_behind_gate=behind_gate, standby_pipeline=standby),
        migration=MigrationConfig(enabled=migration),
    )
    model_path = resolve_model(args.model)
    memory = config.replica_memory(model_path)
    controller = ray.remote(ControllerActor).options(num_cpus=0, max_concurrency=100).remote(config, model_path)
    print(f"[{name}] starting 2 replicas (weights {memory.weight_share:.0%} of {args.budget_mb} MB, "
          f"{memory.num_blocks(1)} KV blocks each, {memory.num_blocks(2)} as one pipeline) ...", flush=True)
    await controller.start.remote()
    if standby:
        await wait_for_standby(controller, name)
    client = TokenClient(controller, LoadAwareRouter(), config.engine.block_size, replica_wait_s=300.0)
    await client.start()
    n = len(arrivals)
    try:
        results = await open_loop(client, arrivals, [args.prompt] * n, [args.output] * n)
        events = await controller.events.remote()
    finally:
        await client.close()
        await controller.stop.remote()
    done = [r for r in results if not isinstance(r, BaseException)]
    for error in {repr(r)[:200] for r in results if isinstance(r, BaseException)}:
        print(f"[{name}] error: {error}", flush=True)
    ttfts = sorted(r.ttft_s for r in done)
    tpots = sorted(r.tpot_s for r in done if r.tpot_s > 0)
    switches = [e for e in events if e.kind in (ActionKind.DROP, ActionKind.RESTORE) and e.outcome.startswith("ok")]
    result = Result(
        name, len(done), n - len(done), pct(ttfts, 50), pct(ttfts, 99), pct(tpots, 50), pct(tpots, 99),
        sum(1 for e in switches if e.kind == ActionKind.DROP), sum(1 for e in switches if e.kind == ActionKind.RESTORE),
        tuple(round(e.duration_s, 2) for e in switches),
        tuple(float(m.group(1)) for e in switches
              if (m := re.search(r"(?:gates in|the drop waited) ([\d.]+) s", e.outcome))),
        sum(1 for e in events if e.kind == ActionKind.MIGRATE and e.outcome == "ok"),
    )
    print(f"[{name}] completed {result.completed}/{n}  TTFT p50 {result.p50_ttft_s:.2f} s p99 {result.p99_ttft_s:.2f} s  "
          f"TPOT p50 {result.p50_tpot_s * 1e3:.0f} ms p99 {result.p99_tpot_s * 1e3:.0f} ms  drops {result.drops} "
          f"restores {result.restores} switch s {list(result.switch_s)} (started behind the gate in {list(result.behind_gate_s)} s)  migrations {result.migrations}", flush=True)
    return result


async def wait_for_standby(controller, name: str, timeout_s: float = 600.0) -> None:
    """The standby pipeline starts once the pool serves; traffic starts once it waits at
    its gates, as it would have long before a burst on a serving cluster."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    while not any(s.at_gate for s in await controller.standby_pipelines.remote()):
        if loop.time() - started > timeout_s:
            raise TimeoutError(f"[{name}] no standby pipeline at its gates after {timeout_s:.0f} s")
        await asyncio.sleep(0.5)
    print(f"[{name}] standby pipeline at its weights gates after {loop.time() - started:.1f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="small")
    parser.add_argument("--budget-mb", type=int, default=391, help="replica memory budget (weights + KV), MB")
    parser.add_argument("--max-model-len", type=int, default=1024)
    parser.add_argument("--prompt", type=int, default=512)
    parser.add_argument("--output", type=int, default=128)
    parser.add_argument("--base-rate", type=float, default=0.5, help="requests per second before and after")
    parser.add_argument("--burst-factor", type=float, default=3.0)
    parser.add_argument("--base-s", type=float, default=20.0)
    parser.add_argument("--burst-s", type=float, default=30.0)
    parser.add_argument("--after-s", type=float, default=40.0)
    parser.add_argument("--min-dropped-s", type=float, default=10.0)
    parser.add_argument("--drop-usage", type=float, default=0.75,
                        help="KV usage at which a replica votes (KunServe: 0.95; with requests of 20 blocks in 49 the "
                        "usage of a full replica stays near 80 %%)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--setups", nargs="+", choices=list(SETUPS), default=list(SETUPS))
    parser.add_argument("--out", default="bench/results/burst_drop.json")
    args = parser.parse_args()
    arrivals = burst_arrivals(args.base_rate, args.burst_factor, args.base_s, args.burst_s, args.after_s, args.seed)
    print(f"{len(arrivals)} requests of {args.prompt} + {args.output} tokens", flush=True)
    ray.init(include_dashboard=False, log_to_driver=False, namespace="tide-bench")
    results = [asyncio.run(run_setup(name, args, arrivals, *SETUPS[name])) for name in args.setups]
    base = results[0]
    for r in results:
        print(f"{r.setup:<36} P99 TTFT {r.p99_ttft_s:7.2f} s ({base.p99_ttft_s / r.p99_ttft_s:4.2f}x lower than "
              f"{base.setup})  P99 TPOT {r.p99_tpot_s * 1e3:6.0f} ms ({r.p99_tpot_s / base.p99_tpot_s:4.2f}x)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"command": "python -m bench.burst_drop", "args": vars(args),
                                          "results": [asdict(r) for r in results]}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
