"""What a replica's vLLM engine is made of: typed, frozen, turned into vLLM's own
`AsyncEngineArgs` in one place."""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from actors.clocks.backend import ClockBackendKind
from actors.kv.medium import MediumKind


class TransferFailurePolicy(str, Enum):
    """What an importer does when KV cannot be had: compute it, or fail the request."""

    RECOMPUTE = "recompute"
    FAIL = "fail"


@dataclass(frozen=True)
class EngineSpec:
    model: str
    served_model_name: str = "tide-tiny"
    dtype: str = "float32"
    block_size: int = 32
    max_model_len: int = 2048
    kv_cache_bytes: int = 256 << 20
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 2048
    enable_prefix_caching: bool = True
    enforce_eager: bool = True
    seed: int = 0
    medium: MediumKind = MediumKind.SHARED_MEMORY
    # Where exports are staged: shared memory for the shm and ray mediums, a directory
    # (local, or shared between nodes) for the disk medium.
    shm_dir: str = "/dev/shm/tide"
    disk_dir: str = "/tmp/tide-kv"
    on_transfer_failure: TransferFailurePolicy = TransferFailurePolicy.RECOMPUTE
    # A transfer that has not delivered by then has failed (no request waits forever).
    kv_fetch_timeout_s: float = 30.0
    # Staged KV nobody fetched (the importer died, the transfer failed) is deleted after this.
    staged_kv_ttl_s: float = 120.0
    # vLLM's CPU backend binds OpenMP threads to cores; "nobind" leaves placement to the OS,
    # which is what several engines sharing a few cores need.
    cpu_threads_bind: str | None = None
    # OpenMP threads of the engine (Ray sets OMP_NUM_THREADS=1 in actors, which the
    # engine's process would otherwise inherit); None: all cores.
    cpu_threads: int | None = None
    # The emulated device's power curve (actors/clocks/curves/) and how often its energy
    # is metered.
    power_curve: str = "a100-sxm4-40gb"
    energy_meter_s: float = 1.0
    clock_backend: ClockBackendKind = ClockBackendKind.AUTO
    # Latencies the replica reports (P90 TTFT and inter-token) cover this many seconds.
    latency_window_s: float = 10.0
    # > 1: a pipeline replica (a dropped group of that many members, each stage holding a
    # contiguous slice of the layers; see actors/pipeline_stage.py). kv_cache_bytes is
    # then per stage.
    pipeline_stages: int = 1

    def staging_dir_for(self, medium: MediumKind) -> Path:
        return Path(self.disk_dir if medium == MediumKind.DISK else self.shm_dir)

    def clock_file(self, replica_id: str) -> Path:
        """Where an emulated device publishes its clock to its engine's process."""
        return Path(self.shm_dir) / "clocks" / replica_id

    def weights_gate_dir(self, replica_id: str) -> Path:
        """Where a replica's engine waits before loading weights (actors/weights_gate.py)."""
        return Path(self.shm_dir) / "gates" / replica_id

    def engine_args(self, emulated_clock_file: Path | None = None, gated: bool = False):
        """`gated`: the engine's processes wait at the weights gate named by the process
        environment (TIDE_WEIGHTS_GATE) before they load weights."""
        from vllm.config import KVTransferConfig
        from vllm.engine.arg_utils import AsyncEngineArgs

        from actors.weights_gate import LOAD_FORMAT

        return AsyncEngineArgs(
            model=self.model,
            served_model_name=[self.served_model_name],
            dtype=self.dtype,
            block_size=self.block_size,
            max_model_len=self.max_model_len,
            kv_cache_memory_bytes=self.kv_cache_bytes,
            max_num_seqs=self.max_num_seqs,
            max_num_batched_tokens=self.max_num_batched_tokens,
            enable_prefix_caching=self.enable_prefix_caching,
            enforce_eager=self.enforce_eager,
            seed=self.seed,
            **({"load_format": LOAD_FORMAT} if gated else {}),
            worker_extension_cls="actors.pipeline_stage.PipelineStageExtension",
            **self._parallel_fields(),
            kv_transfer_config=KVTransferConfig(**self._kv_transfer_fields(emulated_clock_file)),
        )

    def _parallel_fields(self) -> dict:
        if self.pipeline_stages == 1:
            return {}
        return {"pipeline_parallel_size": self.pipeline_stages, "distributed_executor_backend": "mp"}

    def _kv_transfer_fields(self, emulated_clock_file: Path | None) -> dict:
        if self.medium == MediumKind.NIXL:
            return {"kv_connector": "NixlConnector", "kv_role": "kv_both"}
        extra: dict = {"staging_dir": self.shm_dir}
        if emulated_clock_file is not None:
            # The connector stretches each step by the emulated clock's slowdown.
            extra["emulated_clock"] = {"curve": self.power_curve, "file": str(emulated_clock_file)}
        return {
            "kv_connector": "TideKVConnector",
            "kv_connector_module_path": "actors.kv.connector",
            "kv_role": "kv_both",
            "kv_connector_extra_config": extra,
            "kv_load_failure_policy": self.on_transfer_failure.value,
        }

    def process_env(self) -> dict[str, str]:
        env = {"OMP_NUM_THREADS": str(self.cpu_threads or os.cpu_count() or 1)}
        if self.pipeline_stages == 1:
            # The model runs inside the engine core process (vLLM's UniProcExecutor; its CPU
            # platform otherwise adds a worker process). One process fewer to start (a tiny
            # engine here: see python -m bench.engine_start), and no worker and core
            # busy-polling each other's queue for a second after every step, which on a
            # two-core machine starves the other engines. AsyncLLM still runs the engine
            # core in its own process.
            env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        bind = self.cpu_threads_bind
        if bind is None and self.pipeline_stages > 1:
            # vLLM's automatic binding gives each stage of one node its own NUMA node and
            # refuses to start with fewer nodes than stages; the stages share the members' cores.
            bind = "nobind"
        if bind is not None:
            env["VLLM_CPU_OMP_THREADS_BIND"] = bind
        return env
