"""vLLM's own OpenAI server on a Tide engine config: the reference peer for tests and
benchmarks (same model, engine arguments and KV cache size as Tide's replicas)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from orchestrator.config import EngineConfig


@contextmanager
def vllm_server(engine: EngineConfig, model_path: str, port: int, log_path: Path) -> Iterator[str]:
    """Runs `python -m vllm.entrypoints.openai.api_server` until the block ends; yields its URL."""
    argv = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_path,
        "--served-model-name", engine.served_model_name, "--dtype", engine.dtype,
        "--max-model-len", str(engine.max_model_len), "--block-size", str(engine.block_size),
        "--max-num-seqs", str(engine.max_num_seqs), "--max-num-batched-tokens", str(engine.max_num_batched_tokens),
        "--kv-cache-memory-bytes", str(engine.kv_cache_bytes), "--seed", str(engine.seed), "--enforce-eager",
        "--enable-prefix-caching" if engine.enable_prefix_caching else "--no-enable-prefix-caching",
        "--port", str(port), "--host", "127.0.0.1",
    ]
    # The environment Tide gives its replicas' engines.
    env = {**os.environ, **({"VLLM_CPU_OMP_THREADS_BIND": engine.cpu_threads_bind} if engine.cpu_threads_bind else {}),
           **({"OMP_NUM_THREADS": str(engine.cpu_threads)} if engine.cpu_threads else {})}
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "w") as log:
        server = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        try:
            wait_http_ok(f"{url}/health", 600, server)
            yield url
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(60)


def wait_http_ok(url: str, timeout_s: float, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{process.args[:3]} exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError(f"{url} not ready after {timeout_s:.0f}s")
