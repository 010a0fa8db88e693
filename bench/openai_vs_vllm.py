"""Tide's OpenAI front door against vLLM's own OpenAI server, measured by vLLM's own
benchmark client (`vllm.benchmarks.serve`, random dataset, fixed seed), in one run:

  1. vLLM's OpenAI server, one engine;
  2. Tide colocated, one replica behind the Ray Serve ingress;
  3. Tide 1 prefill + 1 decode replica (shared-memory KV handoff).

Same model, engine arguments (KV cache size included), requests and request rate for all
three; they run one after another so they never share the CPU. Prints throughput and
latency ratios against vLLM's server and writes bench/results/openai_vs_vllm-<model>.json.

    .venv/bin/python -m bench.openai_vs_vllm [--model tiny|small|PATH] [--request-rate 8]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import ray

from bench.vllm_server import vllm_server
from orchestrator import launcher
from orchestrator.config import ClusterConfig, EngineConfig, PoolConfig, ServeSettings
from orchestrator.models import resolve_model
from orchestrator.serve_app import deploy
from policies.snapshot import Role

RESULTS_DIR = Path(__file__).parent / "results"
METRICS = ("request_throughput", "output_throughput", "median_ttft_ms", "p99_ttft_ms", "median_tpot_ms",
           "p99_tpot_ms", "median_itl_ms", "completed", "idle_one_token_latency_ms")
PORTS = {"vllm": 8401, "tide-colocated": 8402, "tide-1p1d": 8403}


def idle_latency_ms(base_url: str, served_model_name: str, prompt_words: int, num_requests: int = 20) -> float:
    """Median latency of one-token completions sent one at a time: the fixed cost of the
    path with no load."""
    body = {"model": served_model_name, "prompt": "hello " * prompt_words, "max_tokens": 1, "temperature": 0}
    latencies = []
    with httpx.Client(timeout=60) as http:
        for i in range(num_requests + 3):
            started = time.perf_counter()
            http.post(f"{base_url}/v1/completions", json=body).raise_for_status()
            if i >= 3:  # the first few warm caches
                latencies.append(time.perf_counter() - started)
    return statistics.median(latencies) * 1000


def run_benchmark_client(label: str, base_url: str, args: argparse.Namespace, model_path: str, out_dir: Path) -> dict:
    """An idle-latency probe, then vLLM's benchmark client, unmodified, in its own process."""
    idle_ms = idle_latency_ms(base_url, args.served_model_name, args.input_len)
    print(f"[{label}] idle one-token latency {idle_ms:.1f} ms", flush=True)
    code = ("import sys; from vllm.benchmarks.serve import add_cli_args, main; "
            "from vllm.utils.argparse_utils import FlexibleArgumentParser as P; "
            "p = P(); add_cli_args(p); main(p.parse_args(sys.argv[1:]))")
    argv = [
        sys.executable, "-c", code, "--backend", "openai", "--base-url", base_url, "--endpoint", "/v1/completions",
        "--model", args.served_model_name, "--tokenizer", model_path,
        "--dataset-name", "random", "--random-input-len", str(args.input_len),
        "--random-output-len", str(args.output_len), "--num-prompts", str(args.num_prompts),
        "--request-rate", str(args.request_rate), "--seed", str(args.seed), "--ignore-eos",
        "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,90,99",
        "--save-result", "--result-dir", str(out_dir), "--result-filename", f"{label}.json", "--label", label,
    ]
    print(f"[{label}] vllm.benchmarks.serve: {args.num_prompts} prompts at {args.request_rate} req/s", flush=True)
    subprocess.run(argv, check=True)
    return {**json.loads((out_dir / f"{label}.json").read_text()), "idle_one_token_latency_ms": idle_ms}


def run_vllm_server(engine: EngineConfig, model_path: str, args, out_dir: Path) -> dict:
    print("[vllm] starting vLLM's OpenAI server ...", flush=True)
    with vllm_server(engine, model_path, PORTS["vllm"], out_dir / "vllm-server.log") as url:
        return run_benchmark_client("vllm", url, args, model_path, out_dir)


def run_tide(label: str, engine: EngineConfig, pools: tuple[PoolConfig, ...], model_path: str, args, out_dir: Path) -> dict:
    config = ClusterConfig(name=f"bench-{label}", engine=engine, pools=pools,
                           serve=ServeSettings(port=PORTS[label]))
    print(f"[{label}] starting Tide: " + ", ".join(f"{p.name} x{p.num_replicas}" for p in pools), flush=True)
    ray.init(namespace=config.name, log_to_driver=False, include_dashboard=False)
    try:
        controller = launcher.launch_controller(config, detached=False)
        launcher.wait_ready(controller, 600, lambda snapshot: None)
        url = deploy(config, model_path)
        return run_benchmark_client(label, url, args, model_path, out_dir)
    finally:
        from ray import serve

        serve.shutdown()
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--served-model-name", default="tide-bench")
    parser.add_argument("--input-len", type=int, default=256)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--num-prompts", type=int, default=200)
    parser.add_argument("--request-rate", type=float, default=8.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kv-cache-mb", type=int, default=256)
    parser.add_argument("--cpu-threads", type=int,
                        help="OpenMP threads of every engine, vLLM's server included (default: vLLM's server all "
                             "cores, Tide the cores shared by its replicas)")
    parser.add_argument("--only", nargs="+", choices=tuple(PORTS), default=tuple(PORTS),
                        help="run a subset (ratios need vllm)")
    args = parser.parse_args()

    model_path = str(resolve_model(args.model))
    engine = EngineConfig(model=model_path, served_model_name=args.served_model_name,
                          kv_cache_bytes=args.kv_cache_mb << 20, cpu_threads_bind="nobind", cpu_threads=args.cpu_threads)
    out_dir = Path(tempfile.mkdtemp(prefix="tide-bench-"))
    runs = {
        "vllm": lambda: run_vllm_server(engine, model_path, args, out_dir),
        "tide-colocated": lambda: run_tide("tide-colocated", engine, (PoolConfig(name="colocated", role=Role.COLOCATED),),
                                           model_path, args, out_dir),
        "tide-1p1d": lambda: run_tide("tide-1p1d", engine, (PoolConfig(name="prefill", role=Role.PREFILL),
                                                            PoolConfig(name="decode", role=Role.DECODE)),
                                      model_path, args, out_dir),
    }
    results = {label: run() for label, run in runs.items() if label in args.only}
    baseline = results.get("vllm")
    rows = {}
    print(f"\n{'':<16}" + "".join(f"{m:>20}" for m in METRICS))
    for label, result in results.items():
        rows[label] = {m: result.get(m) for m in METRICS}
        print(f"{label:<16}" + "".join(f"{result.get(m, float('nan')):>20.2f}" for m in METRICS))
    ratios = {label: {"throughput_ratio": r["output_throughput"] / baseline["output_throughput"],
                      "median_ttft_ratio": r["median_ttft_ms"] / baseline["median_ttft_ms"],
                      "median_tpot_ratio": r["median_tpot_ms"] / baseline["median_tpot_ms"]}
              for label, r in results.items() if label != "vllm"} if baseline else {}
    for label, ratio in ratios.items():
        print(f"{label}: throughput {ratio['throughput_ratio']:.3f}x, median TTFT {ratio['median_ttft_ratio']:.3f}x, "
              f"median TPOT {ratio['median_tpot_ratio']:.3f}x of vLLM's server")
    if set(results) != set(PORTS):
        return  # a partial run does not replace the recorded results
    results_path = RESULTS_DIR / f"openai_vs_vllm-{Path(args.model).name}.json"
    results_path.parent.mkdir(parents=True, exist_ok=True)
    results_path.write_text(json.dumps({"args": vars(args), "metrics": rows, "ratios": ratios,
                                   "command": "python -m bench." + Path(__file__).stem + " " + " ".join(sys.argv[1:])},
                                  indent=2))
    print(f"results: {results_path}")


if __name__ == "__main__":
    main()
