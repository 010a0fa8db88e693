"""Calibrates the simulator's step-time model on a real vLLM engine here.

Runs one engine in this process (the engine core in-process, so each `step()` is one
engine step) on prefill-only steps over a range of prompt lengths, decode-only steps over
a range of batch sizes and context lengths, and mixed steps; fits the four coefficients of
`StepCostModel` by least squares and writes them, with the engine's KV geometry, to a
calibration file. Prints the fit's error on the samples.

    .venv/bin/python -m sim.calibrate --model tiny [--out sim/calibrations/cpu-tiny.yaml]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import time
from dataclasses import replace
from pathlib import Path

from sim.cost_model import CALIBRATIONS_DIR, StepCostModel, StepSample, fit_coefficients

PREFILL_LENGTHS = (32, 64, 128, 256, 512, 1024, 1536)
DECODE_BATCHES = (1, 2, 4, 8, 16, 32)
DECODE_CONTEXTS = (64, 512, 1024)
DECODE_STEPS_TIMED = 8


def _prompt(rng: random.Random, n: int) -> dict:
    return {"prompt_token_ids": [rng.randrange(10, 2000) for _ in range(n)]}


def _timed_steps(engine, num_steps: int | None = None) -> list[float]:
    """Steps the engine until idle (or `num_steps` times); the duration of each step."""
    times = []
    while engine.has_unfinished_requests() and (num_steps is None or len(times) < num_steps):
        started = time.perf_counter()
        engine.step()
        times.append(time.perf_counter() - started)
    return times


def measure(engine, sampling_cls, rng: random.Random, repeats: int, max_len: int) -> list[StepSample]:
    samples: list[StepSample] = []
    one_token = sampling_cls(max_tokens=1, temperature=0.0, ignore_eos=True)
    ids = iter(range(10**9))
    for length in PREFILL_LENGTHS:
        if length + 1 > max_len:
            continue
        for _ in range(repeats):
            engine.add_request(f"p{next(ids)}", _prompt(rng, length), one_token)
            [step] = _timed_steps(engine)
            samples.append(StepSample(length, 0, length, step))
    for context in DECODE_CONTEXTS:
        for batch in DECODE_BATCHES:
            if context + DECODE_STEPS_TIMED + 2 > max_len:
                continue
            sampling = sampling_cls(max_tokens=DECODE_STEPS_TIMED + 2, temperature=0.0, ignore_eos=True)
            for _ in range(batch):
                engine.add_request(f"d{next(ids)}", _prompt(rng, context), sampling)
            # Prefill them all; the steps timed next decode only.
            while not _all_decoding(engine):
                engine.step()
            for k, step in enumerate(_timed_steps(engine, DECODE_STEPS_TIMED)):
                samples.append(StepSample(0, batch, batch * (context + 2 + k), step))
            _timed_steps(engine)
    return samples


def _all_decoding(engine) -> bool:
    scheduler = engine.engine_core.engine_core.scheduler
    return not scheduler.waiting and all(r.num_computed_tokens >= r.num_prompt_tokens for r in scheduler.running)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help="built-in size (tiny, small) or model directory")
    parser.add_argument("--out", help="calibration file (default sim/calibrations/cpu-<model>.yaml)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cpu-threads", type=int, default=1, help="OpenMP threads of the engine")
    args = parser.parse_args()

    # Before torch loads (OpenMP reads its thread count once); the engine core runs in
    # this process so each step() is one engine step.
    os.environ.update({"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "OMP_NUM_THREADS": str(args.cpu_threads),
                       "VLLM_CPU_OMP_THREADS_BIND": "nobind"})
    from orchestrator.config import ClusterConfig, EngineConfig
    from orchestrator.models import resolve_model

    model_path = str(resolve_model(args.model))
    config = ClusterConfig(engine=EngineConfig(model=model_path, cpu_threads_bind="nobind", cpu_threads=args.cpu_threads))
    spec = config.engine_spec(model_path)
    os.environ.update(spec.process_env())
    from vllm import SamplingParams
    from vllm.engine.arg_utils import EngineArgs
    from vllm.v1.engine.llm_engine import LLMEngine

    engine_args = spec.engine_args()
    engine = LLMEngine.from_engine_args(EngineArgs(**{f: getattr(engine_args, f) for f in EngineArgs.__dataclass_fields__}))
    rng = random.Random(args.seed)
    print("warming up ...", flush=True)
    measure(engine, SamplingParams, rng, 1, 600)
    print("measuring step times ...", flush=True)
    samples = measure(engine, SamplingParams, rng, args.repeats, spec.max_model_len)
    base, per_prefill, per_decode, per_context = fit_coefficients(samples)

    model_config = engine.vllm_config.model_config
    cache_config = engine.vllm_config.cache_config
    num_layers = model_config.get_num_layers(engine.vllm_config.parallel_config)
    kv_heads = model_config.get_num_kv_heads(engine.vllm_config.parallel_config)
    dtype_bytes = 4 if spec.dtype == "float32" else 2
    kv_bytes_per_token = 2 * num_layers * kv_heads * model_config.get_head_size() * dtype_bytes
    weight_bytes = sum(p.stat().st_size for p in Path(model_path).glob("*.safetensors"))
    name = Path(args.out).stem if args.out else f"cpu-{Path(model_path).name}"
    model = StepCostModel(
        name=name,
        source=(f"measured: vLLM {_vllm_version()} on CPU ({platform.processor() or platform.machine()}, "
                f"{os.cpu_count()} cores, {args.cpu_threads} threads), model {Path(model_path).name}, {spec.dtype}; "
                f"python -m sim.calibrate --model {args.model}"),
        base_s=base, prefill_token_s=per_prefill, decode_seq_s=per_decode, context_token_s=per_context,
        block_size=spec.block_size, num_blocks=int(cache_config.num_gpu_blocks or 0),
        kv_bytes_per_token=kv_bytes_per_token, weight_bytes=weight_bytes,
        max_num_batched_tokens=spec.max_num_batched_tokens, max_num_seqs=spec.max_num_seqs,
    )
    errors = [abs(model.step_s(s.prefill_tokens, s.decode_seqs, s.context_tokens) - s.step_s) / s.step_s for s in samples]
    model = replace(model, source=model.source + f"; {len(samples)} samples, median fit error "
                    f"{statistics.median(errors) * 100:.1f} %")
    out = Path(args.out) if args.out else CALIBRATIONS_DIR / f"{name}.yaml"
    model.save(out)
    print(json.dumps({"base_ms": base * 1e3, "per_prefill_token_us": per_prefill * 1e6,
                      "per_decode_seq_us": per_decode * 1e6, "per_context_token_us": per_context * 1e6,
                      "median_fit_error": statistics.median(errors), "samples": len(samples)}, indent=2))
    print(f"wrote {out}")
    engine.engine_core.shutdown()


def _vllm_version() -> str:
    import vllm

    return vllm.__version__


if __name__ == "__main__":
    main()
