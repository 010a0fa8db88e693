"""Scheduler side of the Tide KV connector: decides which blocks to load and to export.

Runs in vLLM's engine-core process. Side-effect free towards the engine: it only reads
scheduler outputs and the KV cache manager's block tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vllm.logger import init_logger

from actors.kv.layout import StagedKVError, read_header, release_staged_kv, staged_kv_path
from actors.kv.specs import EXPORT_PARAM, IMPORT_PARAM, STAGED_PARAM, ExportSpec, ImportSpec

if TYPE_CHECKING:
    from vllm.v1.core.kv_cache_manager import KVCacheManager
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.kv_cache_interface import KVCacheConfig
    from vllm.v1.request import Request

logger = init_logger(__name__)


def requests_holding_kv(kv_cache_manager: KVCacheManager) -> frozenset[str]:
    """The requests that hold KV blocks now (vLLM frees a request's blocks when it is
    preempted or finishes)."""
    [manager] = kv_cache_manager.coordinator.single_type_managers
    return frozenset(request_id for request_id, blocks in manager.req_to_blocks.items() if blocks)


@dataclass(frozen=True)
class _PendingImport:
    path: str
    num_external_tokens: int


@dataclass(frozen=True)
class _StagedExport:
    path: str
    num_tokens: int
    num_blocks: int
    direct: bool


class TideConnectorScheduler:
    def __init__(self, staging_dir: str, block_size: int, kv_cache_config: KVCacheConfig, num_stages: int = 1):
        """`num_stages` > 1: a pipeline engine, whose stages each hold some layers. It
        imports (each stage loads its layers) but does not export from a step: one staged
        file per request needs every stage's layers (a restore stages them between steps,
        stage by stage, through the worker extension)."""
        if len(kv_cache_config.kv_cache_groups) != 1:
            raise ValueError("TideKVConnector supports models with one KV cache group (full attention)")
        self._staging_dir = Path(staging_dir)
        self._staging_dir.mkdir(parents=True, exist_ok=True)
        self._block_size = block_size
        self._exports_enabled = num_stages == 1
        self._export_requests: dict[str, tuple[Request, Path, str, bool]] = {}
        self._pending_imports: dict[str, _PendingImport] = {}
        self._staged_exports: dict[str, _StagedExport] = {}
        # Blocks in each waiting request's staged KV, read once (the scheduler asks again
        # every step while the request waits).
        self._staged_blocks: dict[str, int] = {}

    def get_num_new_matched_tokens(self, request: Request, num_computed_tokens: int) -> int:
        params = request.kv_transfer_params or {}
        if EXPORT_PARAM in params and not self._exports_enabled:
            logger.warning("request %s: a pipeline engine does not export KV; the importer computes it",
                           request.request_id)
        elif EXPORT_PARAM in params and request.request_id not in self._export_requests:
            export = params[EXPORT_PARAM]
            export_dir = Path(export.get("dir") or self._staging_dir)
            export_dir.mkdir(parents=True, exist_ok=True)
            owner = export.get("owner") or "engine"
            self._export_requests[request.request_id] = (request, export_dir, owner, bool(export.get("direct")))
        spec = params.get(IMPORT_PARAM)
        if not spec:
            return 0
        # At least one token is computed here so the engine produces logits.
        loadable_blocks = (len(request.prompt_token_ids or []) - 1) // self._block_size
        staged_blocks = self._staged_blocks.get(request.request_id)
        if staged_blocks is None:
            try:
                staged_blocks = read_header(Path(spec["path"])).num_blocks
            except StagedKVError as exc:
                logger.warning("request %s: staged KV unusable, computing instead: %s", request.request_id, exc)
                staged_blocks = 0
            self._staged_blocks[request.request_id] = staged_blocks
        num_tokens = min(loadable_blocks, staged_blocks) * self._block_size
        return max(0, num_tokens - num_computed_tokens)

    def update_state_after_alloc(self, request: Request, num_external_tokens: int) -> None:
        spec = (request.kv_transfer_params or {}).get(IMPORT_PARAM)
        if not spec:
            return
        self._staged_blocks.pop(request.request_id, None)
        if num_external_tokens > 0:
            self._pending_imports[request.request_id] = _PendingImport(spec["path"], num_external_tokens)
        else:
            # Nothing to load (the local prefix cache already holds it): let it go now, so a
            # direct exporter does not hold its blocks until the lease expires.
            release_staged_kv(Path(spec["path"]))

    def build_specs(
        self, scheduler_output: SchedulerOutput, kv_cache_manager: KVCacheManager
    ) -> tuple[list[ExportSpec], list[ImportSpec]]:
        imports: list[ImportSpec] = []
        computed_before_step: dict[str, int] = {}
        for new_req in scheduler_output.scheduled_new_reqs:
            computed_before_step[new_req.req_id] = new_req.num_computed_tokens
            self._plan_import(new_req.req_id, new_req.num_computed_tokens, new_req.block_ids[0], imports)
        cached = scheduler_output.scheduled_cached_reqs
        for i, req_id in enumerate(cached.req_ids):
            computed_before_step[req_id] = cached.num_computed_tokens[i]
            if req_id in cached.resumed_req_ids and cached.new_block_ids[i] is not None:
                self._plan_import(req_id, cached.num_computed_tokens[i], cached.new_block_ids[i][0], imports)
        exports = self._plan_exports(scheduler_output, computed_before_step, kv_cache_manager)
        return exports, imports

    def _plan_import(self, req_id: str, num_computed_tokens: int, block_ids: list[int], out: list[ImportSpec]) -> None:
        pending = self._pending_imports.pop(req_id, None)
        if pending is None:
            return
        # num_computed_tokens counts local prefix-cache hits plus the external tokens.
        first_block = (num_computed_tokens - pending.num_external_tokens) // self._block_size
        num_blocks = pending.num_external_tokens // self._block_size
        dst = list(block_ids[first_block : first_block + num_blocks])
        out.append(ImportSpec(request_id=req_id, path=pending.path, src_block_start=first_block, dst_block_ids=dst))

    def _plan_exports(
        self,
        scheduler_output: SchedulerOutput,
        computed_before_step: dict[str, int],
        kv_cache_manager: KVCacheManager,
    ) -> list[ExportSpec]:
        exports = []
        for req_id, (request, export_dir, owner, direct) in list(self._export_requests.items()):
            if req_id not in computed_before_step:
                continue
            num_prompt = len(request.prompt_token_ids or [])
            scheduled = scheduler_output.num_scheduled_tokens.get(req_id, 0)
            if computed_before_step[req_id] + scheduled < num_prompt:
                continue  # the prompt is still being prefilled in chunks
            del self._export_requests[req_id]
            num_blocks = num_prompt // self._block_size
            if num_blocks == 0:
                continue  # nothing worth moving: the importer recomputes a sub-block prompt
            block_ids = list(kv_cache_manager.get_block_ids(req_id)[0][:num_blocks])
            path = str(staged_kv_path(export_dir, owner))
            num_tokens = num_blocks * self._block_size
            exports.append(ExportSpec(req_id, path, block_ids, num_tokens, direct))
            self._staged_exports[req_id] = _StagedExport(path, num_tokens, num_blocks, direct)
        return exports

    def request_finished(self, request: Request) -> tuple[bool, dict[str, Any] | None]:
        """(hold the blocks, params for the request's output). A direct export holds its
        blocks until the worker side reports the importer done (`get_finished`)."""
        req_id = request.request_id
        self._export_requests.pop(req_id, None)
        self._pending_imports.pop(req_id, None)
        self._staged_blocks.pop(req_id, None)
        imported = (request.kv_transfer_params or {}).get(IMPORT_PARAM)
        if imported:
            release_staged_kv(Path(imported["path"]))  # a no-op once the worker loaded it
        staged = self._staged_exports.pop(req_id, None)
        if staged is None:
            return False, None
        params = {STAGED_PARAM: {"path": staged.path, "num_tokens": staged.num_tokens, "num_blocks": staged.num_blocks}}
        return staged.direct, params
