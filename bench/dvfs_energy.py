"""Energy per token against SLO attainment on a real local cluster with emulated clocks:
maximum clocks, one clock for all pools chosen by the policy (mode shared), and a clock
per pool chosen by the policy (mode per_pool), in one run.

1 prefill + 1 decode replica (tiny model), emulated A100 devices (actors/clocks/curves/:
a modeled power curve, engine steps really stretched by the modeled slowdown). One open
loop of Poisson arrivals runs throughout; the clock mode switches live, and each mode is
measured after the policy has settled. Energy per token: every device's energy over the
tokens clients received. SLO attainment: requests meeting both TTFT and TPOT targets.

    .venv/bin/python -m bench.dvfs_energy [--rate 6] [--settle-s 25] [--measure-s 45]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import ray

from bench.token_load import Timed, pct, timed_request
from orchestrator.config import (
    ClockMode,
    ClockSettings,
    ClusterConfig,
    ControllerSettings,
    EngineConfig,
    PoolConfig,
    SLOConfig,
)
from orchestrator.controller import ControllerActor
from orchestrator.models import resolve_model
from orchestrator.token_client import TokenClient
from policies.routing import LoadAwareRouter
from policies.snapshot import Role

MODES = (("maximum clocks", ClockMode.OFF), ("one clock for all (policy)", ClockMode.SHARED),
         ("per-pool clocks (policy)", ClockMode.PER_POOL))


@dataclass(frozen=True)
class ModeResult:
    setup: str
    requests: int
    slo_attainment: float
    joules_per_token: float
    p90_ttft_s: float
    p90_tpot_s: float
    clocks_mhz: dict[str, int]


async def _device_energy_j(actors) -> float:
    totals = await asyncio.gather(*(a.device_totals.remote() for a in actors))
    return sum(t["energy_j"] for t in totals)


async def run(args) -> list[ModeResult]:
    model = resolve_model("tiny")
    slo = SLOConfig(ttft_s=args.slo_ttft_s, tpot_s=args.slo_tpot_s)
    config = ClusterConfig(
        name="tidebenchdvfs",
        engine=EngineConfig(model="tiny", kv_cache_bytes=96 << 20, max_num_seqs=64, cpu_threads_bind="nobind",
                            cpu_threads=1),
        pools=(PoolConfig(name="prefill", role=Role.PREFILL, num_replicas=1),
               PoolConfig(name="decode", role=Role.DECODE, num_replicas=1)),
        slo=slo, controller=ControllerSettings(tick_s=0.25),
        clocks=ClockSettings(energy_meter_s=0.25, latency_window_s=5.0, hold_s=3.0, raise_hold_s=15.0),
    )
    controller = ray.remote(ControllerActor).options(name="tidebenchdvfs-controller", max_concurrency=1000,
                                                      num_cpus=0).remote(config, model)
    await controller.start.remote()
    table = await controller.routing_table.remote()
    actors = list(table.actors.values())
    client = TokenClient(controller, LoadAwareRouter(), config.engine.block_size)
    await client.start()
    rng = random.Random(args.seed)
    timed: list[tuple[float, Timed]] = []
    stop = asyncio.Event()

    async def one() -> None:
        sent = time.monotonic()
        result = await timed_request(client, args.prompt_tokens, args.output_tokens, rng)
        timed.append((sent, result))

    async def open_loop() -> None:
        pending = set()
        while not stop.is_set():
            task = asyncio.create_task(one())
            pending.add(task)
            task.add_done_callback(pending.discard)
            await asyncio.sleep(rng.expovariate(args.rate))
        await asyncio.gather(*pending, return_exceptions=True)

    loop = asyncio.create_task(open_loop())
    results = []
    try:
        for setup, mode in MODES:
            await controller.set_clock_mode.remote(mode.value)
            print(f"{setup}: settling {args.settle_s:.0f} s", flush=True)
            await asyncio.sleep(args.settle_s)
            started, energy_before = time.monotonic(), await _device_energy_j(actors)
            await asyncio.sleep(args.measure_s)
            ended, energy = time.monotonic(), await _device_energy_j(actors) - energy_before
            window = [t for sent, t in timed if started <= sent and sent + t.ttft_s + t.tpot_s * t.num_tokens <= ended]
            tokens = sum(t.num_tokens for sent, t in timed if started <= sent <= ended)
            met = sum(1 for t in window if t.ttft_s <= slo.ttft_s and t.tpot_s <= slo.tpot_s)
            result = ModeResult(
                setup=setup, requests=len(window), slo_attainment=met / max(1, len(window)),
                joules_per_token=energy / max(1, tokens), p90_ttft_s=pct([t.ttft_s for t in window], 90),
                p90_tpot_s=pct([t.tpot_s for t in window], 90), clocks_mhz=await controller.pool_clocks.remote())
            results.append(result)
            print(f"  {result}", flush=True)
    finally:
        stop.set()
        await loop
        await client.close()
        await controller.stop.remote()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=6.0, help="Poisson arrivals per second")
    parser.add_argument("--prompt-tokens", type=int, default=200)
    parser.add_argument("--output-tokens", type=int, default=64)
    parser.add_argument("--slo-ttft-s", type=float, default=0.5)
    parser.add_argument("--slo-tpot-s", type=float, default=0.04)
    parser.add_argument("--settle-s", type=float, default=25.0)
    parser.add_argument("--measure-s", type=float, default=45.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("bench/results/dvfs_energy.json"))
    args = parser.parse_args()
    ray.init(namespace="tidebenchdvfs", log_to_driver=False, include_dashboard=False)
    results = asyncio.run(run(args))
    base = results[0]
    print(f"\n{'setup':30} {'requests':>8} {'SLO met':>8} {'J/token':>8} {'vs max':>7} "
          f"{'P90 TTFT':>9} {'P90 TPOT':>9}  clocks (MHz)")
    for r in results:
        print(f"{r.setup:30} {r.requests:8d} {r.slo_attainment:8.1%} {r.joules_per_token:8.3f} "
              f"{r.joules_per_token / base.joules_per_token:7.2f} {r.p90_ttft_s * 1000:7.1f}ms "
              f"{r.p90_tpot_s * 1000:7.1f}ms  {r.clocks_mhz}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                    "results": [asdict(r) for r in results]}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
