"""Calibrates the simulator on the real serving path: a Tide cluster of one colocated
replica (a vLLM engine in a Ray actor behind the front door's token client), timed as a
client sees it. What the engine-only calibration (`sim.calibrate`) leaves out — the
replica actor, the Ray hops, the front door, and their share of the CPU — lands in the
coefficients, so the simulator predicts what a client of this machine measures.

- Decode: batches of B requests of context C started together; each request's time per
  output token after the first is one step of a B-wide batch at about C + output/2 context.
  Fit: base, per decode sequence, per context token.
- Prefill: single requests of P prompt tokens and one output token, one at a time; their
  time to first token is the request overhead plus one prefill step. Fit, given the decode
  fit: per prefill token and the request overhead.

The fit minimizes relative errors. The samples are kept in
bench/results/calibration-cluster-<model>.json; `--refit` fits them again without measuring.

    .venv/bin/python -m sim.calibrate_cluster --model tiny [--out sim/calibrations/cluster-tiny.yaml] [--refit]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from sim.cost_model import CALIBRATIONS_DIR, StepCostModel, StepSample, fit_coefficients

PREFILL_LENGTHS = (32, 128, 256, 512, 1024, 1536)
DECODE_BATCHES = (1, 2, 4, 8, 16, 32)
DECODE_CONTEXTS = (64, 512, 1024)
OUTPUT_TOKENS = 48
ROOT = Path(__file__).resolve().parent.parent
SAMPLES_DIR = ROOT / "bench" / "results"


async def measure(model: str, repeats: int, cpu_threads: int) -> tuple[list[StepSample], list[tuple[int, float]], dict]:
    import ray

    from bench.token_load import timed_request
    from orchestrator.config import ClusterConfig, EngineConfig, PoolConfig
    from orchestrator.controller import ControllerActor
    from orchestrator.models import resolve_model
    from orchestrator.token_client import TokenClient
    from policies.routing import LoadAwareRouter
    from policies.snapshot import Role

    config = ClusterConfig(name="sim-calibration", engine=EngineConfig(model=model, cpu_threads_bind="nobind",
                                                                                   cpu_threads=cpu_threads),
                           pools=(PoolConfig(name="colocated", role=Role.COLOCATED),))
    controller = ray.remote(ControllerActor).options(num_cpus=0, max_concurrency=100).remote(config, resolve_model(model))
    await controller.start.remote()
    table = await controller.routing_table.remote()
    [replica] = [r for p in table.snapshot.pools for r in p.replicas]
    client = TokenClient(controller, LoadAwareRouter(), config.engine.block_size)
    await client.start()
    rng = random.Random(0)
    decode: list[StepSample] = []
    prefill: list[tuple[int, float]] = []
    try:
        for _ in range(3):
            await timed_request(client, 64, 8, rng)  # warm-up
        print(f"  prefills of {PREFILL_LENGTHS} tokens ...", flush=True)
        for length in PREFILL_LENGTHS:
            for _ in range(repeats):
                prefill.append((length, (await timed_request(client, length, 1, rng)).ttft_s))
        for context in DECODE_CONTEXTS:
            print(f"  decode batches {DECODE_BATCHES} at context {context} ...", flush=True)
            for batch in DECODE_BATCHES:
                for _ in range(repeats):
                    timed = await asyncio.gather(*(timed_request(client, context, OUTPUT_TOKENS, rng)
                                                   for _ in range(batch)))
                    step = statistics.median(t.tpot_s for t in timed)
                    decode.append(StepSample(0, batch, batch * (context + OUTPUT_TOKENS // 2), step))
    finally:
        await client.close()
        await controller.stop.remote()
    engine = {"block_size": config.engine.block_size, "num_blocks": replica.num_total_blocks, "threads": config.engine_spec(model).cpu_threads,
              "max_num_batched_tokens": config.engine.max_num_batched_tokens,
              "max_num_seqs": config.engine.max_num_seqs}
    return decode, prefill, engine


def fit(decode: list[StepSample], prefill: list[tuple[int, float]]) -> tuple[float, float, float, float, float]:
    """(base, per prefill token, per decode sequence, per context token, request overhead),
    fit to relative errors: the simulator is judged on percent error at every load."""
    base, _, per_seq, per_context = fit_coefficients(decode, relative=True)
    lengths = np.array([p for p, _ in prefill], dtype=float)
    ttfts = np.array([t for _, t in prefill])
    rest = ttfts - base - per_context * lengths
    slope, intercept = np.polyfit(lengths, rest, 1, w=1.0 / ttfts)
    return base, max(0.0, float(slope)), per_seq, per_context, max(0.0, float(intercept))


def fits_the_cache(sample: StepSample, capacity_tokens: int) -> bool:
    """Whether the sample's batch ran whole: B requests of context C and OUTPUT_TOKENS
    outputs need B x (C + OUTPUT_TOKENS) tokens of KV; a wider batch is preempted and
    recomputed, and its time per token measures that, not a B-wide step."""
    return sample.context_tokens + sample.decode_seqs * (OUTPUT_TOKENS - OUTPUT_TOKENS // 2) <= capacity_tokens


def save_samples(path: Path, decode: list[StepSample], prefill: list[tuple[int, float]], engine: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"decode": [asdict(s) for s in decode], "prefill": prefill, "engine": engine},
                               indent=1) + "\n")


def load_samples(path: Path) -> tuple[list[StepSample], list[tuple[int, float]], dict]:
    data = json.loads(path.read_text())
    return ([StepSample(**s) for s in data["decode"]], [(int(p), float(t)) for p, t in data["prefill"]],
            data["engine"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cpu-threads", type=int, default=1, help="OpenMP threads of the engine")
    parser.add_argument("--out", help="calibration file (default sim/calibrations/cluster-<model>.yaml)")
    parser.add_argument("--refit", action="store_true",
                        help="fit the samples the last measurement saved instead of measuring again")
    args = parser.parse_args()

    from orchestrator.models import resolve_model

    model_path = Path(resolve_model(args.model))
    samples_file = SAMPLES_DIR / f"calibration-cluster-{model_path.name}.json"
    if args.refit:
        decode, prefill, engine = load_samples(samples_file)
    else:
        import ray

        ray.init(include_dashboard=False, log_to_driver=False, namespace="sim-calibration")
        print("measuring on a one-replica cluster ...", flush=True)
        decode, prefill, engine = asyncio.run(measure(args.model, args.repeats, args.cpu_threads))
        ray.shutdown()
        save_samples(samples_file, decode, prefill, engine)
    capacity = engine["num_blocks"] * engine["block_size"]
    whole = [sample for sample in decode if fits_the_cache(sample, capacity)]
    print(f"{len(whole)} of {len(decode)} decode samples ran their whole batch ({capacity} KV tokens)", flush=True)
    decode = whole
    base, per_prefill, per_seq, per_context, overhead = fit(decode, prefill)
    name = Path(args.out).stem if args.out else f"cluster-{model_path.name}"
    model = StepCostModel(
        name=name, source="", base_s=base, prefill_token_s=per_prefill, decode_seq_s=per_seq,
        context_token_s=per_context, block_size=engine["block_size"], num_blocks=engine["num_blocks"],
        kv_bytes_per_token=StepCostModel.load(f"cpu-{model_path.name}").kv_bytes_per_token,
        weight_bytes=sum(p.stat().st_size for p in model_path.glob("*.safetensors")),
        max_num_batched_tokens=engine["max_num_batched_tokens"], max_num_seqs=engine["max_num_seqs"],
        request_overhead_s=overhead,
    )
    errors = [abs(model.step_s(s.prefill_tokens, s.decode_seqs, s.context_tokens) - s.step_s) / s.step_s for s in decode]
    errors += [abs(overhead + model.step_s(p, 0, p) - t) / t for p, t in prefill]
    source = (f"measured on the serving path: a one-replica Tide cluster (vLLM {_vllm_version()} in a Ray actor, "
              f"front door token client) on CPU ({platform.machine()}, {os.cpu_count()} cores, {engine['threads']} "
              f"engine threads), model {model_path.name}; python -m sim.calibrate_cluster --model {args.model} "
              f"(samples: {samples_file.relative_to(ROOT)}); relative-error fit, "
              f"{len(errors)} samples, median fit error {statistics.median(errors) * 100:.1f} %")
    model = replace(model, source=source)
    out = Path(args.out) if args.out else CALIBRATIONS_DIR / f"{name}.yaml"
    model.save(out)
    print(json.dumps({"base_ms": base * 1e3, "per_prefill_token_us": per_prefill * 1e6, "per_decode_seq_us": per_seq * 1e6,
                      "per_context_token_us": per_context * 1e6, "request_overhead_ms": overhead * 1e3,
                      "median_fit_error": statistics.median(errors)}, indent=2))
    print(f"wrote {out}")


def _vllm_version() -> str:
    import vllm

    return vllm.__version__


if __name__ == "__main__":
    main()
