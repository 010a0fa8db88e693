"""Prefill->decode handoff overhead per request against the prefill itself, on real engines.

For each prompt length, requests go prefill replica -> medium -> decode replica. Per
request the overhead is what disaggregation adds: the prefill engine's export copy, the
medium's publish and fetch, and the decode engine's import copy (the engine-side copies
come from the connector's statistics, the medium's from the replicas' transfer records).
It is reported next to the prefill time of the same request (vLLM's own request metrics).

    .venv/bin/python -m bench.handoff_overhead [--model small] [--lengths 128 512 1024 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import ray
from vllm import SamplingParams

from actors.kv.medium import MediumKind
from actors.messages import TokenRequest
from orchestrator.config import ClusterConfig, EngineConfig, KVTransferSettings, PoolConfig
from orchestrator.controller import ControllerActor
from orchestrator.models import resolve_model
from orchestrator.token_client import TokenClient
from policies.routing import LoadAwareRouter
from policies.snapshot import Role


@dataclass(frozen=True)
class Row:
    medium: str
    prompt_tokens: int
    prefill_s: float
    export_s: float
    publish_s: float
    fetch_s: float
    import_s: float
    overhead_s: float
    overhead_to_prefill: float
    kv_bytes: int


async def _one(client: TokenClient, prefill, decode, medium: MediumKind, length: int, rng: random.Random) -> dict:
    prompt = [rng.randrange(10, 2000) for _ in range(length)]
    request = TokenRequest(uuid.uuid4().hex, prompt, SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True))
    before_p = await prefill.connector_totals.remote()
    before_d = await decode.connector_totals.remote()
    await prefill.take_transfer_records.remote()
    await decode.take_transfer_records.remote()
    first = None
    async for delta in client.generate_disaggregated(request, medium):
        first = first or delta
    for _ in range(50):  # connector statistics arrive with the engines' next stats record
        after_p = await prefill.connector_totals.remote()
        after_d = await decode.connector_totals.remote()
        if after_p["num_exports"] > before_p["num_exports"] and after_d["num_imports"] > before_d["num_imports"]:
            break
        await asyncio.sleep(0.1)
    published = await prefill.take_transfer_records.remote()
    fetched = await decode.take_transfer_records.remote()
    return {
        "prefill_s": first.timings.prefill_s,
        "export_s": after_p["export_s"] - before_p["export_s"],
        "import_s": after_d["import_s"] - before_d["import_s"],
        "publish_s": sum(r.seconds for r in published),
        "fetch_s": sum(r.seconds for r in fetched),
        "kv_bytes": int(after_p["export_bytes"] - before_p["export_bytes"]),
    }


async def run(model: str, lengths: list[int], repeats: int, mediums: list[MediumKind]) -> list[Row]:
    config = ClusterConfig(
        name="bench-handoff",
        engine=EngineConfig(model=model, kv_cache_bytes=1 << 30, max_model_len=4096, max_num_batched_tokens=4096,
                            enable_prefix_caching=False),
        kv=KVTransferSettings(medium=MediumKind.SHARED_MEMORY),
        pools=(PoolConfig(name="prefill", role=Role.PREFILL), PoolConfig(name="decode", role=Role.DECODE)),
    )
    controller = ray.remote(ControllerActor).options(num_cpus=0, max_concurrency=100).remote(config, resolve_model(model))
    print("starting 1 prefill + 1 decode replica ...", flush=True)
    await controller.start.remote()
    client = TokenClient(controller, LoadAwareRouter(), config.engine.block_size)
    await client.start()
    table = await controller.routing_table.remote()
    prefill = table.actors[table.snapshot.serving(Role.PREFILL)[0].replica_id]
    decode = table.actors[table.snapshot.serving(Role.DECODE)[0].replica_id]
    rng = random.Random(0)
    rows = []
    try:
        for medium in mediums:
            for length in lengths:
                await _one(client, prefill, decode, medium, length, rng)  # warm-up
                samples = [await _one(client, prefill, decode, medium, length, rng) for _ in range(repeats)]
                med = {k: statistics.median(s[k] for s in samples) for k in samples[0]}
                overhead = med["export_s"] + med["publish_s"] + med["fetch_s"] + med["import_s"]
                row = Row(medium.value, length, med["prefill_s"], med["export_s"], med["publish_s"], med["fetch_s"],
                          med["import_s"], overhead, overhead / med["prefill_s"], int(med["kv_bytes"]))
                rows.append(row)
                print(f"{medium.value:<5}{length:>6} tok  prefill {row.prefill_s * 1e3:8.2f} ms  handoff "
                      f"{overhead * 1e3:7.2f} ms (export {row.export_s * 1e3:.2f}, publish {row.publish_s * 1e3:.2f}, "
                      f"fetch {row.fetch_s * 1e3:.2f}, import {row.import_s * 1e3:.2f})  "
                      f"ratio {row.overhead_to_prefill:.3f}  {row.kv_bytes / 2**20:.1f} MiB", flush=True)
    finally:
        await client.close()
        await controller.stop.remote()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="small", help="built-in size or model directory")
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 512, 1024, 2000])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--mediums", nargs="+", default=[m.value for m in (MediumKind.SHARED_MEMORY, MediumKind.RAY, MediumKind.DISK)])
    parser.add_argument("--out", default="bench/results/handoff_overhead.json")
    args = parser.parse_args()
    ray.init(include_dashboard=False, log_to_driver=False, namespace="tide-bench")
    rows = asyncio.run(run(args.model, args.lengths, args.repeats, [MediumKind(m) for m in args.mediums]))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
