"""How long a vLLM engine (AsyncLLM) as Tide configures it (actors/engine_spec.py) takes to
start and to stop here, with the model run inside the engine core process (VLLM_ENABLE_V1_MULTIPROCESSING=0, what Tide's
single-stage replicas use) against vLLM's default on the CPU platform (a worker process
beside the engine core), in one run; each measurement in a fresh process, medians over
--repeats.

    .venv/bin/python -m bench.engine_start [--model tiny] [--repeats 3] [--grace-s 5] \
        [--out bench/results/engine_start.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from actors.engine_spec import EngineSpec
from orchestrator.models import resolve_model

MODES = {"in the engine core (Tide)": "0", "worker process (vLLM's default)": "1"}


async def _measure(model: str, grace_s: float) -> dict[str, float]:
    from vllm.v1.engine.async_llm import AsyncLLM

    args = EngineSpec(model, kv_cache_bytes=64 << 20).engine_args()
    started = time.perf_counter()
    engine = AsyncLLM.from_engine_args(args)
    start_s = time.perf_counter() - started
    started = time.perf_counter()
    engine.shutdown(timeout=grace_s)
    return {"start_s": start_s, "stop_s": time.perf_counter() - started}


def _one_run(model: str, multiprocessing: str, grace_s: float) -> dict[str, float]:
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": multiprocessing}
    run = subprocess.run([sys.executable, "-m", "bench.engine_start", "--child", model, "--grace-s", str(grace_s)],
                         env=env, capture_output=True, text=True, timeout=300, check=True)
    return json.loads(run.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--grace-s", type=float, default=5.0, help="the stop's grace (vLLM's default: 5 s)")
    parser.add_argument("--out", default="bench/results/engine_start.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(_measure(args.child, args.grace_s))))
        return
    model = resolve_model(args.model)
    # One untimed start first: the first engine on a machine also builds kernels.
    _one_run(model, "1", args.grace_s)
    runs = {name: [] for name in MODES}
    for i in range(args.repeats):
        for name, multiprocessing in MODES.items():
            runs[name].append(_one_run(model, multiprocessing, args.grace_s))
            print(f"  run {i + 1} {name}: {runs[name][-1]}", flush=True)
    medians = {name: {k: statistics.median(r[k] for r in rs) for k in ("start_s", "stop_s")}
               for name, rs in runs.items()}
    baseline = medians["worker process (vLLM's default)"]
    for name, m in medians.items():
        print(f"{name:32} start {m['start_s']:5.1f} s ({m['start_s'] / baseline['start_s']:.2f}x)  "
              f"stop {m['stop_s']:4.1f} s")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"command": "python -m bench.engine_start", "args": vars(args),
                                          "medians": medians, "runs": runs}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
