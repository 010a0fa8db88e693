"""The simulator against the real local cluster, on the same requests.

Seeded Gamma arrivals with prompt and output lengths drawn from the Azure conv trace
(clipped to the model's context) are played on a real Tide cluster here (vLLM engines in
Ray actors, through the front door's token client) and on the simulator with the CPU
calibration of the same model (`python -m sim.calibrate_cluster`). The real cluster is run
`--real-runs` times, each from a fresh start, and judged by the median of each percentile
(a shared two-core machine's runs differ by 10-30 % in their tails). Prints P50/P90 TTFT
and TPOT of both, the real runs' spread and the simulator's error; writes
bench/results/sim_validation-<calibration>.json.

    .venv/bin/python -m bench.sim_validation [--model tiny] [--pools colocated:1] [--rate 4] [--real-runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
from pathlib import Path

import ray

from bench.token_load import open_loop, pct
from orchestrator.config import ClusterConfig, EngineConfig, PoolConfig
from orchestrator.controller import ControllerActor
from orchestrator.models import resolve_model
from orchestrator.token_client import TokenClient
from policies.routing import LoadAwareRouter
from sim.cluster import Simulation
from sim.config import SimConfig
from sim.run import parse_pool
from sim.workload import SimRequest, gamma_arrivals, trace_lengths

METRICS = ("ttft_p50", "ttft_p90", "tpot_p50", "tpot_p90")


async def run_real(model: str, pools, requests: list[SimRequest], kv_mib: int, cpu_threads: int) -> tuple[dict, int]:
    config = ClusterConfig(
        name="bench-sim-validation",
        engine=EngineConfig(model=model, kv_cache_bytes=kv_mib << 20, cpu_threads_bind="nobind",
                            cpu_threads=cpu_threads),
        pools=tuple(PoolConfig(name=p.name, role=p.role, num_replicas=p.num_replicas) for p in pools),
    )
    controller = ray.remote(ControllerActor).options(num_cpus=0, max_concurrency=100).remote(config, resolve_model(model))
    print("starting the real cluster: " + ", ".join(f"{p.name} x{p.num_replicas}" for p in pools), flush=True)
    await controller.start.remote()
    table = await controller.routing_table.remote()
    num_blocks = min(r.num_total_blocks for p in table.snapshot.pools for r in p.replicas)
    client = TokenClient(controller, LoadAwareRouter(), config.engine.block_size)
    await client.start()
    try:
        print(f"playing {len(requests)} requests ...", flush=True)
        results = await open_loop(client, [r.arrival_s for r in requests], [r.prompt_tokens for r in requests],
                                  [r.output_tokens for r in requests])
    finally:
        await client.close()
        await controller.stop.remote()
    failed = [r for r in results if isinstance(r, BaseException)]
    if failed:
        raise RuntimeError(f"{len(failed)} requests failed on the real cluster: {failed[0]!r}")
    ttft = [r.ttft_s for r in results]
    tpot = [r.tpot_s for r in results if r.num_tokens > 1]
    return {"ttft_p50": pct(ttft, 50), "ttft_p90": pct(ttft, 90), "tpot_p50": pct(tpot, 50),
            "tpot_p90": pct(tpot, 90)}, num_blocks


def run_sim(calibration: str, pools, requests: list[SimRequest], num_blocks: int) -> tuple[dict, str]:
    result = Simulation(SimConfig(pools=tuple(pools), calibration=calibration, num_blocks=num_blocks)).run(requests)
    s = result.summary
    return {"ttft_p50": s["ttft_s"]["p50"], "ttft_p90": s["ttft_s"]["p90"], "tpot_p50": s["tpot_s"]["p50"],
            "tpot_p90": s["tpot_s"]["p90"]}, result.calibration_source


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--pools", nargs="+", type=parse_pool, default=[parse_pool("colocated:1")])
    parser.add_argument("--rate", type=float, default=4.0)
    parser.add_argument("--cv", type=float, default=1.0)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--max-total", type=int, default=1024, help="prompt + output tokens at most")
    parser.add_argument("--kv-mib", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cpu-threads", type=int, default=1, help="OpenMP threads per engine (as calibrated)")
    parser.add_argument("--calibration", help="default: cluster-<model> (the serving path, measured here)")
    parser.add_argument("--real-runs", type=int, default=3, help="runs of the real cluster; each metric's median is compared")
    args = parser.parse_args()

    requests = gamma_arrivals(args.rate, args.cv, args.requests, trace_lengths("conv"), args.seed, max_total=args.max_total)
    runs = []
    for run in range(args.real_runs):
        print(f"real run {run + 1} of {args.real_runs}", flush=True)
        ray.init(include_dashboard=False, log_to_driver=False, namespace="tide-bench")
        measured, num_blocks = asyncio.run(run_real(args.model, args.pools, requests, args.kv_mib, args.cpu_threads))
        ray.shutdown()
        runs.append(measured)
    real = {m: statistics.median(run[m] for run in runs) for m in METRICS}
    calibration = args.calibration or f"cluster-{Path(str(resolve_model(args.model))).name}"
    simulated, source = run_sim(calibration, args.pools, requests, num_blocks)
    errors = {m: simulated[m] / real[m] - 1.0 for m in METRICS}
    print(f"\ncalibration {calibration}: {source}")
    print(f"{'':<10}{'real (ms)':>12}{'real runs (ms)':>24}{'sim (ms)':>10}{'error':>9}")
    for m in METRICS:
        spread = "/".join(f"{run[m] * 1e3:.1f}" for run in runs)
        print(f"{m:<10}{real[m] * 1e3:>12.2f}{spread:>24}{simulated[m] * 1e3:>10.2f}{errors[m] * 100:>8.1f}%")
    out = Path(__file__).parent / "results" / f"sim_validation-{Path(calibration).stem}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": "python -m bench.sim_validation", "args": {**vars(args), "pools": [
        f"{p.name}:{p.role.value}:{p.num_replicas}" for p in args.pools]}, "calibration": calibration,
        "calibration_source": source, "real": real, "real_runs": runs, "sim": simulated, "error": errors},
        indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
