"""Worker side of the Tide KV connector: copies blocks between the paged cache and staged
KV files. Runs next to the model (vLLM's worker process)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import time

import torch
from vllm.logger import init_logger

from actors.kv.connector_stats import TideConnectorStats
from actors.kv.cross_memory import allow_readers
from actors.kv.layout import (
    StagedKVError,
    load_staged_kv,
    plan_layout,
    release_stage_import,
    release_staged_kv,
    write_direct_kv,
    write_staged_kv,
)
from actors.kv.specs import ExportSpec, ImportSpec

if TYPE_CHECKING:
    from vllm.v1.kv_cache_interface import KVCacheConfig

logger = init_logger(__name__)


def find_block_dim(cache: torch.Tensor, num_blocks: int) -> int:
    """The dimension that indexes blocks: 0 in vLLM's CPU layout, 1 in layouts that put
    K/V first. Found by size, so the connector follows whatever the backend allocated."""
    for dim in (0, 1):
        if cache.shape[dim] == num_blocks:
            return dim
    raise ValueError(f"cannot find the block dimension of a KV cache of shape {tuple(cache.shape)}")


class TideConnectorWorker:
    def __init__(self, block_size: int, kv_cache_config: KVCacheConfig, stage: int = 0, num_stages: int = 1):
        """`stage` of `num_stages`: a pipeline engine's worker holds its stage's layers
        only; it imports those layers from a staged file the other stages read too."""
        self._block_size = block_size
        self._stage, self._num_stages = stage, num_stages
        self._num_blocks = kv_cache_config.num_blocks
        self._kv_caches: dict[str, torch.Tensor] = {}
        self._block_dim = 0
        self._failed_block_ids: set[int] = set()
        self._stats = TideConnectorStats()
        # Direct exports whose blocks are held: request id -> lease file the importer deletes.
        self._held: dict[str, Path] = {}
        self._finished_held: set[str] = set()

    def register_kv_caches(self, kv_caches: dict[str, torch.Tensor]) -> None:
        # Layers that share one cache tensor are stored once.
        seen: set[int] = set()
        for name, cache in kv_caches.items():
            if cache.data_ptr() not in seen:
                seen.add(cache.data_ptr())
                self._kv_caches[name] = cache
        self._block_dim = find_block_dim(next(iter(self._kv_caches.values())), self._num_blocks)
        allow_readers()

    def save(self, exports: list[ExportSpec]) -> None:
        for spec in exports:
            header = plan_layout(
                self._kv_caches, self._block_dim, self._block_size, len(spec.block_ids), spec.num_tokens
            )
            started = time.perf_counter()
            direct = spec.direct and self._block_dim == 0
            if spec.direct:
                # Held until the importer is done; released at once if staging fails.
                self._held[spec.request_id] = Path(spec.path + ".lease")
            try:
                write = write_direct_kv if direct else write_staged_kv
                num_bytes = write(Path(spec.path), self._kv_caches, spec.block_ids, header)
            except OSError as exc:
                # The importer sees no file and computes instead; nothing waits on it.
                logger.error("request %s: staging KV to %s failed: %s", spec.request_id, spec.path, exc)
                Path(spec.path + ".lease").unlink(missing_ok=True)
                continue
            self._stats.add("num_exports", 1)
            self._stats.add("export_bytes", num_bytes)
            self._stats.add("export_s", time.perf_counter() - started)

    def stage_blocks(self, path: Path, block_ids: list[int], num_tokens: int) -> int:
        """Writes `block_ids` of every layer to a staged file at `path` now, outside any
        step (the caller holds the blocks); returns its size."""
        header = plan_layout(self._kv_caches, self._block_dim, self._block_size, len(block_ids), num_tokens)
        num_bytes = write_staged_kv(path, self._kv_caches, block_ids, header)
        self._stats.add("num_exports", 1)
        self._stats.add("export_bytes", num_bytes)
        return num_bytes

    def load(self, imports: list[ImportSpec]) -> None:
        for spec in imports:
            started = time.perf_counter()
            shared = self._num_stages > 1
            try:
                num_bytes = load_staged_kv(Path(spec.path), self._kv_caches, spec.src_block_start, spec.dst_block_ids,
                                           shared_claim=shared)
            except (StagedKVError, OSError, RuntimeError) as exc:
                logger.error("request %s: loading staged KV failed: %s", spec.request_id, exc)
                self._failed_block_ids.update(spec.dst_block_ids)
                self._stats.add("num_import_failures", 1)
                continue
            finally:
                # A staged file is consumed once, loaded or not: the importer owns it.
                if shared:
                    release_stage_import(Path(spec.path), self._stage, self._num_stages)
                else:
                    release_staged_kv(Path(spec.path))
            self._stats.add("num_imports", 1)
            self._stats.add("import_bytes", num_bytes)
            self._stats.add("import_s", time.perf_counter() - started)

    def finished_sending(self, finished_req_ids: set[str]) -> set[str] | None:
        """Held direct exports whose request has finished and whose lease is gone (the
        importer read the blocks, gave up, or the lease expired)."""
        self._finished_held |= finished_req_ids & self._held.keys()
        done = {r for r in self._finished_held if not _lease_alive(self._held[r])}
        for req_id in done:
            del self._held[req_id]
        self._finished_held -= done
        return done or None

    def take_stats(self) -> TideConnectorStats | None:
        if self._stats.is_empty():
            return None
        stats, self._stats = self._stats, TideConnectorStats()
        return stats

    def take_failed_block_ids(self) -> set[int]:
        failed, self._failed_block_ids = self._failed_block_ids, set()
        return failed


def _lease_alive(lease: Path) -> bool:
    return lease.exists() or Path(str(lease) + ".claimed").exists()
