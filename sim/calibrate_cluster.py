"""Calibrates the simulator on the real serving path: a Tide cluster of one colocated
replica (a vLLM engine in a Ray actor behind the front door's token client), timed as a
client sees it. What the engine-only calibration (`sim.calibrate`) leaves out — the
replica actor, the Ray hops, the front door, and their share of the CPU — lands in the
coefficients, so the simulator predicts what a client of this machine measures.

- Decode: batches of B requests of context C started together; while all B decode (after
  the last one's first token, before the first one finishes) each token a request receives
  is one step of a B-wide batch at about C + output/2 context. Fit: base, per decode
  sequence, per context token.
- Prefill: single requests of P prompt tokens and one output token, one at a time; their
  time to first token is the request overhead plus one prefill step. Fit, given the decode
  fit: per prefill token, per prefill attention pair (P (P + 1) / 2 of them) and the
  request overhead.
- New shapes: vLLM's CPU backend builds kernels per step size on first use; single requests
  of prompt lengths the engine has not run, each run twice: the first time's extra time to
  first token, median over lengths. (Each prefill length above is run once before it is timed.)
- Interference: D requests decode while short requests (32 prompt tokens, one output)
  arrive every k of their steps. On a machine the serving path shares with the engine, each
  request's admission, streaming and teardown take CPU time the engine's steps lose; the
  decoders' slowdown gives that time per request (beyond the short's own prefill chunk),
  which the simulator adds to the step a request's first chunk runs in. The shorts' time
  to first token beyond what the simulator gives them, per running decoder, is the busy
  admission time (the engine's frontend streams the running requests' tokens in the loop
  that takes new requests in).
- Speed noise: how much repeats of the same decode batch differ (a shared machine's speed
  varies); the simulator varies each replica's speed by as much, seeded.

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
import time
from dataclasses import replace
from pathlib import Path

from sim.cluster_calibration_fit import (
    INTERFERENCE_CONTEXT,
    INTERFERENCE_SHORT_PROMPT,
    INTERFERENCE_STEPS,
    OUTPUT_TOKENS,
    InterferenceSample,
    Samples,
    busy_admission_s,
    fit_step_costs,
    fits_the_cache,
    new_shape_s,
    request_step_s,
    speed_noise,
    time_per_token_s,
    whole_batch_step_s,
)
from sim.cost_model import CALIBRATIONS_DIR, StepCostModel, StepSample

PREFILL_LENGTHS = (32, 128, 256, 512, 1024, 1536)
DECODE_BATCHES = (1, 2, 4, 8, 16, 32)
DECODE_CONTEXTS = (64, 512, 1024)
# (decoders, k): short requests arrive every k decode steps of the decoders they interfere with.
INTERFERENCE = ((1, 8), (1, 4), (1, 2), (4, 4))
# A decoder's first tokens share steps with the other decoders' prefill: not timed as alone.
INTERFERENCE_SETTLE_TOKENS = 5
# Prompt lengths no other measurement runs, so the engine meets each first here.
NEW_SHAPE_LENGTHS = tuple(range(201, 225, 2))
ROOT = Path(__file__).resolve().parent.parent
SAMPLES_DIR = ROOT / "bench" / "results"


async def interference_sample(client, decoders: int, every_steps: int, step_s: float,
                              rng: random.Random) -> InterferenceSample:
    from bench.token_load import timed_request, token_times

    decoding = [asyncio.create_task(token_times(client, INTERFERENCE_CONTEXT, INTERFERENCE_STEPS + 150, rng)) for _ in range(decoders)]
    await asyncio.sleep(40 * step_s)  # their prefill, then decoding alone
    window_start = time.perf_counter()
    shorts = []
    for i in range(INTERFERENCE_STEPS // every_steps):
        await asyncio.sleep(max(0.0, window_start + i * every_steps * step_s - time.perf_counter()))
        shorts.append(asyncio.create_task(timed_request(client, INTERFERENCE_SHORT_PROMPT, 1, rng)))
    short_ttfts = [timed.ttft_s for timed in await asyncio.gather(*shorts)]
    window_end = time.perf_counter()
    alone_s, during_s = [], []
    for _, arrivals in await asyncio.gather(*decoding):
        alone = [t for t in arrivals[INTERFERENCE_SETTLE_TOKENS:] if t < window_start]
        during = [t for t in arrivals if window_start <= t <= window_end]
        if len(alone) < 2 or len(during) < 2 or arrivals[-1] < window_end:
            raise RuntimeError("a decoder did not span the interference window; raise INTERFERENCE_STEPS' margin")
        alone_s.append(time_per_token_s(alone))
        during_s.append(time_per_token_s(during))
    return InterferenceSample(decoders, len(shorts) / (window_end - window_start), statistics.median(alone_s),
                              statistics.median(during_s), statistics.median(short_ttfts))


async def measure(model: str, repeats: int, cpu_threads: int) -> Samples:
    import ray

    from bench.token_load import timed_request, token_times
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
    interference: list[InterferenceSample] = []
    new_shape: list[tuple[float, float]] = []
    try:
        for _ in range(3):
            await timed_request(client, 64, 8, rng)  # warm-up
        print(f"  new step sizes: prompts of {NEW_SHAPE_LENGTHS[0]}..{NEW_SHAPE_LENGTHS[-1]} tokens, twice ...", flush=True)
        for length in NEW_SHAPE_LENGTHS:
            first, again = [(await timed_request(client, length, 1, rng)).ttft_s for _ in range(2)]
            new_shape.append((first, again))
        print(f"  prefills of {PREFILL_LENGTHS} tokens ...", flush=True)
        for length in PREFILL_LENGTHS:
            await timed_request(client, length, 1, rng)  # the engine's first step of this size
            for _ in range(repeats):
                prefill.append((length, (await timed_request(client, length, 1, rng)).ttft_s))
        for context in DECODE_CONTEXTS:
            print(f"  decode batches {DECODE_BATCHES} at context {context} ...", flush=True)
            for batch in DECODE_BATCHES:
                width = StepSample(0, batch, batch * (context + OUTPUT_TOKENS // 2), 0.0)
                if not fits_the_cache(width, replica.num_total_blocks * config.engine.block_size):
                    print(f"    {batch} x {context} tokens do not fit the KV cache: not measured", flush=True)
                    continue
                for _ in range(repeats):
                    streams = await asyncio.gather(*(token_times(client, context, OUTPUT_TOKENS, rng)
                                                     for _ in range(batch)))
                    step = whole_batch_step_s([arrivals for _, arrivals in streams])
                    decode.append(StepSample(0, batch, batch * (context + OUTPUT_TOKENS // 2), step))
        single_step_s = statistics.median(s.step_s for s in decode if s.decode_seqs == 1)
        print(f"  interference: (decoders, short requests every k steps) {INTERFERENCE} ...", flush=True)
        for decoders, every_steps in INTERFERENCE:
            for _ in range(repeats):
                interference.append(await interference_sample(client, decoders, every_steps, single_step_s, rng))
    finally:
        await client.close()
        await controller.stop.remote()
    engine = {"block_size": config.engine.block_size, "num_blocks": replica.num_total_blocks, "threads": config.engine_spec(model).cpu_threads,
              "max_num_batched_tokens": config.engine.max_num_batched_tokens,
              "max_num_seqs": config.engine.max_num_seqs}
    return Samples(decode, prefill, interference, new_shape, engine)


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
        samples = Samples.load(samples_file)
    else:
        import ray

        ray.init(include_dashboard=False, log_to_driver=False, namespace="sim-calibration")
        print("measuring on a one-replica cluster ...", flush=True)
        samples = asyncio.run(measure(args.model, args.repeats, args.cpu_threads))
        ray.shutdown()
        samples.save(samples_file)
    decode, prefill, interference, engine = samples.decode, samples.prefill, samples.interference, samples.engine
    capacity = engine["num_blocks"] * engine["block_size"]
    whole = [sample for sample in decode if fits_the_cache(sample, capacity)]
    print(f"{len(whole)} of {len(decode)} decode samples ran their whole batch ({capacity} KV tokens)", flush=True)
    decode = whole
    base, per_prefill, per_seq, per_context, overhead, per_pair = fit_step_costs(decode, prefill)
    name = Path(args.out).stem if args.out else f"cluster-{model_path.name}"
    model = StepCostModel(
        name=name, source="", base_s=base, prefill_token_s=per_prefill, decode_seq_s=per_seq,
        context_token_s=per_context, block_size=engine["block_size"], num_blocks=engine["num_blocks"],
        kv_bytes_per_token=StepCostModel.load(f"cpu-{model_path.name}").kv_bytes_per_token,
        weight_bytes=sum(p.stat().st_size for p in model_path.glob("*.safetensors")),
        max_num_batched_tokens=engine["max_num_batched_tokens"], max_num_seqs=engine["max_num_seqs"],
        request_overhead_s=overhead, prefill_pair_s=per_pair,
    )
    errors = [abs(model.step_s(s.prefill_tokens, s.decode_seqs, s.context_tokens) - s.step_s) / s.step_s for s in decode]
    errors += [abs(overhead + model.prefill_s(p) - t) / t for p, t in prefill]
    per_request = request_step_s(model, interference)
    source = (f"measured on the serving path: a one-replica Tide cluster (vLLM {_vllm_version()} in a Ray actor, "
              f"front door token client) on CPU ({platform.machine()}, {os.cpu_count()} cores, {engine['threads']} "
              f"engine threads), model {model_path.name}; python -m sim.calibrate_cluster --model {args.model} "
              f"(samples: {samples_file.relative_to(ROOT)}); relative-error fit, "
              f"{len(errors)} samples, median fit error {statistics.median(errors) * 100:.1f} %; serving CPU per "
              f"request from {len(interference)} interference samples, new step sizes from {len(samples.new_shape)}")
    model = replace(model, source=source, request_step_s=per_request,
                    request_overhead_s=max(0.0, overhead - per_request), new_shape_s=new_shape_s(samples.new_shape))
    noise_sd, noise_period_s = speed_noise(decode)
    model = replace(model, busy_admission_s=busy_admission_s(model, interference), speed_noise_sd=noise_sd,
                    speed_noise_period_s=noise_period_s)
    out = Path(args.out) if args.out else CALIBRATIONS_DIR / f"{name}.yaml"
    model.save(out)
    print(json.dumps({"base_ms": base * 1e3, "per_prefill_token_us": per_prefill * 1e6, "per_decode_seq_us": per_seq * 1e6,
                      "per_context_token_us": per_context * 1e6, "request_overhead_ms": model.request_overhead_s * 1e3,
                      "per_prefill_pair_ns": per_pair * 1e9,
                      "request_step_ms": per_request * 1e3, "new_shape_ms": model.new_shape_s * 1e3,
                      "busy_admission_ms": model.busy_admission_s * 1e3, "speed_noise_sd": noise_sd,
                      "speed_noise_period_s": noise_period_s,
                      "median_fit_error": statistics.median(errors)}, indent=2))
    print(f"wrote {out}")


def _vllm_version() -> str:
    import vllm

    return vllm.__version__


if __name__ == "__main__":
    main()
