"""Live-migration downtime against context length, per mode, on real engines.

Two colocated replicas; a greedy request decodes on one, and after `--after` tokens it is
moved to the other (multi-stage pre-copy, stop-and-copy, or recompute). Downtime is what
the client sees: the time from the last token on the source to the first token on the
destination, measured by the front door's token client. It is reported against the
request's own median inter-token time before the move (one decode step).

    .venv/bin/python -m bench.migration_downtime [--model small] [--contexts 256 512 1024 1792]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import ray
from vllm import SamplingParams

from actors.messages import TokenRequest
from orchestrator.config import ClusterConfig, EngineConfig, PoolConfig
from orchestrator.controller import ControllerActor
from orchestrator.models import resolve_model
from orchestrator.token_client import TokenClient
from policies.migration import MigrationMode
from policies.routing import DataPath, RoundRobinRouter
from policies.snapshot import Role


@dataclass(frozen=True)
class Row:
    mode: str
    context_tokens: int
    downtime_s: float
    decode_step_s: float
    downtime_in_steps: float
    stages: float


async def _holder(actors: dict, request_id: str) -> str:
    for replica_id, actor in actors.items():
        if any(i.startswith(request_id) for i in await actor.running_request_ids.remote()):
            return replica_id
    raise RuntimeError(f"request {request_id} runs nowhere")


async def _one(client: TokenClient, actors: dict, mode: str, context: int, after: int, rng: random.Random) -> dict:
    prompt = [rng.randrange(10, 2000) for _ in range(context - after)]
    request = TokenRequest(uuid.uuid4().hex, prompt, SamplingParams(max_tokens=after + 128, temperature=0.0,
                                                                     ignore_eos=True))
    downtimes: list[float] = []
    client.on_migration = lambda _mode, seconds: downtimes.append(seconds)
    arrivals: list[float] = []
    report = None
    async for delta in client.generate(request):
        arrivals += [time.perf_counter()] * len(delta.token_ids)
        if report is None and len(arrivals) >= after:
            holder = await _holder(actors, request.request_id)
            other = next(rid for rid in actors if rid != holder)
            report = asyncio.ensure_future(actors[holder].migrate_out.remote(other, actors[other], mode,
                                                                            request_id=request.request_id))
    report = await report
    assert report.outcome == "migrated", report
    steps = [b - a for a, b in zip(arrivals[1:after], arrivals[2:after])]
    return {"downtime_s": downtimes[0], "decode_step_s": statistics.median(steps), "stages": report.num_stages}


async def run(model: str, contexts: list[int], modes: list[str], repeats: int, after: int) -> list[Row]:
    config = ClusterConfig(
        name="bench-migration",
        engine=EngineConfig(model=model, kv_cache_bytes=1 << 30, max_model_len=2048, cpu_threads_bind="nobind"),
        pools=(PoolConfig(name="colocated", role=Role.COLOCATED, num_replicas=2),),
    )
    controller = ray.remote(ControllerActor).options(num_cpus=0, max_concurrency=100).remote(config, resolve_model(model))
    print("starting 2 replicas ...", flush=True)
    await controller.start.remote()
    client = TokenClient(controller, RoundRobinRouter(), config.engine.block_size, data_path=DataPath.COLOCATED)
    await client.start()
    table = await controller.routing_table.remote()
    rng = random.Random(0)
    rows = []
    try:
        for mode in modes:
            for context in contexts:
                await _one(client, table.actors, mode, context, after, rng)  # warm-up
                samples = [await _one(client, table.actors, mode, context, after, rng) for _ in range(repeats)]
                med = {k: statistics.median(s[k] for s in samples) for k in samples[0]}
                row = Row(mode, context, med["downtime_s"], med["decode_step_s"],
                          med["downtime_s"] / med["decode_step_s"], med["stages"])
                rows.append(row)
                print(f"{mode:<14}{context:>6} tok  downtime {row.downtime_s * 1e3:8.2f} ms  decode step "
                      f"{row.decode_step_s * 1e3:6.2f} ms  = {row.downtime_in_steps:5.2f} steps  "
                      f"stages {row.stages:.0f}", flush=True)
    finally:
        await client.close()
        await controller.stop.remote()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="small", help="built-in size or model directory")
    parser.add_argument("--contexts", type=int, nargs="+", default=[256, 512, 1024, 1792])
    parser.add_argument("--modes", nargs="+", default=[m.value for m in MigrationMode])
    parser.add_argument("--repeats", type=int, default=7, help="moves per context and mode; the median is reported")
    parser.add_argument("--after", type=int, default=24, help="tokens decoded before the move")
    parser.add_argument("--out", default="bench/results/migration_downtime.json")
    args = parser.parse_args()
    ray.init(include_dashboard=False, log_to_driver=False, namespace="tide-bench")
    rows = asyncio.run(run(args.model, args.contexts, args.modes, args.repeats, args.after))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"command": "python -m bench.migration_downtime", "args": vars(args),
                                          "rows": [asdict(r) for r in rows]}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
