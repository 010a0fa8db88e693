"""Tide's KV connector for vLLM (`KVConnectorBase_V1`), loaded through
`kv_connector_module_path="actors.kv.connector"`, `kv_connector="TideKVConnector"`.

It moves a request's KV blocks, keyed by layer name, between an engine's paged cache and a
staged KV file (see `layout.py`). What crosses replicas is that file, carried by a transfer
medium (`medium.py`); the connector itself only stages and loads. It also carries the
emulated device clock (`actors/clocks/step_stretch.py`): with `emulated_clock` in its extra
config, the worker side stretches each forward pass by the clock's modeled slowdown (the
connector is the one hook vLLM calls around every forward pass in the worker process).

Requests opt in through `kv_transfer_params`:
- `{"tide_export": {"dir", "owner"}}` on the exporting engine (both optional): when the request's prompt has been
  computed, its full blocks are written to a staged file, and the request's output carries
  `kv_transfer_params={"tide_staged": {"path", "num_tokens", "num_blocks"}}`.
- `{"tide_import": {"path", "num_tokens"}}` on the importing engine: the staged blocks are
  loaded into the blocks the scheduler allocates, and only the remaining tokens are
  computed (at least one, so the engine produces logits).

Roles (as in vLLM): the SCHEDULER side runs in the engine-core process and plans; the
WORKER side runs next to the model and copies bytes. Both loads and saves are synchronous
within a step: a load completes before the step's forward pass reads the blocks; a save
completes after the forward pass wrote them and before the step's output is returned, so
blocks are never freed while being copied and no delayed free is needed.

A staged file that is missing, truncated or mismatched is a load failure: its blocks are
reported through `get_block_ids_with_load_errors`, and vLLM's `kv_load_failure_policy`
decides (`recompute` the blocks, or `fail` the request).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from vllm.distributed import get_pp_group
from vllm.distributed.kv_transfer.kv_connector.v1.base import (
    KVConnectorBase_V1,
    KVConnectorMetadata,
    KVConnectorRole,
)
from vllm.distributed.kv_transfer.kv_connector.v1.metrics import KVConnectorStats

from actors.clocks.power_curve import PowerCurve
from actors.clocks.step_stretch import EmulatedStepStretch
from actors.kv.connector_scheduler import TideConnectorScheduler, requests_holding_kv
from actors.kv.connector_stats import TideConnectorStats
from actors.kv.connector_worker import TideConnectorWorker
from actors.kv.specs import ExportSpec, ImportSpec

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.forward_context import ForwardContext
    from vllm.v1.core.kv_cache_manager import KVCacheBlocks
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.kv_cache_interface import KVCacheConfig
    from vllm.v1.request import Request

@dataclass
class TideConnectorMetadata(KVConnectorMetadata):
    exports: list[ExportSpec] = field(default_factory=list)
    imports: list[ImportSpec] = field(default_factory=list)
    # The step's work, for the emulated clock's slowdown.
    prefill_tokens: int = 0
    decode_tokens: int = 0
    # The requests that hold KV blocks as of this step's scheduling (running, neither
    # preempted nor finished): the ones whose block tables a worker may stage between steps.
    holding_kv: frozenset[str] = frozenset()


def step_work(scheduler_output: SchedulerOutput) -> tuple[int, int]:
    """(prefill tokens, decode tokens) of a step: a request scheduled for one token decodes."""
    prefill = decode = 0
    for num_tokens in scheduler_output.num_scheduled_tokens.values():
        if num_tokens == 1:
            decode += 1
        else:
            prefill += num_tokens
    return prefill, decode


class TideKVConnector(KVConnectorBase_V1):
    def __init__(self, vllm_config: VllmConfig, role: KVConnectorRole, kv_cache_config: KVCacheConfig):
        super().__init__(vllm_config=vllm_config, role=role, kv_cache_config=kv_cache_config)
        staging_dir = self._kv_transfer_config.get_from_extra_config("staging_dir", "/dev/shm/tide")
        block_size = vllm_config.cache_config.block_size
        self._scheduler: TideConnectorScheduler | None = None
        self._worker: TideConnectorWorker | None = None
        self._stretch: EmulatedStepStretch | None = None
        self._holding_kv: frozenset[str] = frozenset()
        if role == KVConnectorRole.SCHEDULER:
            self._scheduler = TideConnectorScheduler(staging_dir, block_size, kv_cache_config,
                                                     vllm_config.parallel_config.pipeline_parallel_size)
        else:
            parallel = vllm_config.parallel_config
            stage = get_pp_group().rank_in_group if parallel.pipeline_parallel_size > 1 else 0
            self._worker = TideConnectorWorker(block_size, kv_cache_config, stage, parallel.pipeline_parallel_size)
            clock = self._kv_transfer_config.get_from_extra_config("emulated_clock", None)
            if clock:
                self._stretch = EmulatedStepStretch(PowerCurve.load(clock["curve"]), Path(clock["file"]))

    # ---- worker side ----
    def bind_connector_metadata(self, connector_metadata: KVConnectorMetadata) -> None:
        super().bind_connector_metadata(connector_metadata)
        assert isinstance(connector_metadata, TideConnectorMetadata)
        self._holding_kv = connector_metadata.holding_kv
        if self._stretch is not None:
            self._stretch.begin_step()

    def register_kv_caches(self, kv_caches: dict[str, torch.Tensor]) -> None:
        assert self._worker is not None
        self._worker.register_kv_caches(kv_caches)

    def start_load_kv(self, forward_context: ForwardContext, **kwargs: Any) -> None:
        assert self._worker is not None
        metadata = self._get_connector_metadata()
        assert isinstance(metadata, TideConnectorMetadata)
        self._worker.load(metadata.imports)

    def wait_for_layer_load(self, layer_name: str) -> None:
        return None

    def save_kv_layer(self, layer_name: str, kv_layer: torch.Tensor, attn_metadata: Any, **kwargs: Any) -> None:
        return None

    def wait_for_save(self) -> None:
        assert self._worker is not None
        metadata = self._get_connector_metadata()
        assert isinstance(metadata, TideConnectorMetadata)
        self._worker.save(metadata.exports)
        if self._stretch is not None:
            self._stretch.end_step(metadata.prefill_tokens, metadata.decode_tokens)

    def holds_kv(self, request_id: str) -> bool:
        """Whether the request held KV blocks when the last step bound here was scheduled:
        the runner's block table for it is current (a preempted request's is not)."""
        return request_id in self._holding_kv

    def stage_blocks(self, path: Path, block_ids: list[int], num_tokens: int) -> int:
        """Stages blocks a running request holds, between steps (see TideConnectorWorker)."""
        assert self._worker is not None
        return self._worker.stage_blocks(path, block_ids, num_tokens)

    def get_kv_connector_stats(self) -> KVConnectorStats | None:
        return self._worker.take_stats() if self._worker is not None else None

    @classmethod
    def build_kv_connector_stats(cls, data: dict[str, Any] | None = None) -> KVConnectorStats | None:
        return TideConnectorStats(data=dict(data)) if data is not None else TideConnectorStats()

    def get_finished(self, finished_req_ids: set[str]) -> tuple[set[str] | None, set[str] | None]:
        assert self._worker is not None
        return self._worker.finished_sending(finished_req_ids), None

    def get_block_ids_with_load_errors(self) -> set[int]:
        assert self._worker is not None
        return self._worker.take_failed_block_ids()

    # ---- scheduler side ----
    def get_num_new_matched_tokens(self, request: Request, num_computed_tokens: int) -> tuple[int | None, bool]:
        assert self._scheduler is not None
        return self._scheduler.get_num_new_matched_tokens(request, num_computed_tokens), False

    def update_state_after_alloc(self, request: Request, blocks: KVCacheBlocks, num_external_tokens: int) -> None:
        assert self._scheduler is not None
        self._scheduler.update_state_after_alloc(request, num_external_tokens)

    def build_connector_meta(self, scheduler_output: SchedulerOutput) -> KVConnectorMetadata:
        assert self._scheduler is not None
        assert self._kv_cache_manager is not None
        exports, imports = self._scheduler.build_specs(scheduler_output, self._kv_cache_manager)
        prefill_tokens, decode_tokens = step_work(scheduler_output)
        return TideConnectorMetadata(exports=exports, imports=imports, prefill_tokens=prefill_tokens,
                                     decode_tokens=decode_tokens,
                                     holding_kv=requests_holding_kv(self._kv_cache_manager))

    def request_finished(self, request: Request, block_ids: list[int]) -> tuple[bool, dict[str, Any] | None]:
        assert self._scheduler is not None
        return self._scheduler.request_finished(request)
