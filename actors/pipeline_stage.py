"""Tide's vLLM worker extension (every engine's workers), reached through `collective_rpc`.

For a pipeline replica (parameter dropping: a vLLM engine whose workers each hold one
contiguous slice of the model's layers, one worker per member of the dropped group) it
prepares and reports the stages; for any replica it stages a running request's KV
without an engine step (a member handing its requests to the pipeline, or a pipeline's
stages each staging their layers when the group restores).

Importing it in the engine's processes also registers the gated weights loader
(actors/weights_gate.py) before the model loads."""

from __future__ import annotations

import os
from pathlib import Path

from vllm.distributed import get_pp_group
from vllm.distributed.kv_transfer import get_kv_transfer_group, has_kv_transfer_group
from vllm.model_executor.models.utils import PPMissingLayer

from actors import weights_gate  # noqa: F401 - registers the load format `tide_gated`
from actors.kv.layout import stage_part_path


class PipelineStageExtension:
    def stage_running_kv(self, request_id: str, path: str) -> dict[str, int | str] | None:
        """Stages the KV of the running request `request_id` (the full blocks of the tokens
        computed before the last step) to a file at `path`, between steps and without one:
        the blocks are read where the request holds them. A pipeline stage holds only its
        layers: it writes them to `stage_part_path(path, rank)`. Returns {"path",
        "num_tokens", "num_blocks"}, or None when the request is not running here or has no
        full block."""
        # The runner keeps every request's state, also while it is not in the batch of
        # the last step (a pipeline runs its micro-batches in turn, and an empty one
        # clears the batch); the connector says whether its blocks are still its own.
        runner = self.model_runner
        engine_id = next((r for r in runner.requests if r == request_id or r.startswith(f"{request_id}-")), None)
        connector = get_kv_transfer_group() if has_kv_transfer_group() else None
        if engine_id is None or connector is None or not connector.holds_kv(engine_id):
            return None
        state = runner.requests[engine_id]
        block_size = runner.cache_config.block_size
        num_blocks = state.num_computed_tokens // block_size
        if num_blocks == 0:
            return None
        block_ids = list(state.block_ids[0][:num_blocks])
        pp = get_pp_group()
        if pp.world_size > 1:
            path = str(stage_part_path(Path(path), pp.rank_in_group))
        connector.stage_blocks(Path(path), block_ids, num_blocks * block_size)
        return {"path": path, "num_tokens": num_blocks * block_size, "num_blocks": num_blocks}

    def prepare_stage(self) -> None:
        """Allocates the buffer a later stage receives the previous stage's hidden states
        in. vLLM's CPU runner allocates it only in a profiling or compile warm-up, which an
        eager engine with a fixed KV size never runs."""
        runner = self.model_runner
        if get_pp_group().is_first_rank or runner.intermediate_tensors is not None:
            return
        runner.intermediate_tensors = runner.model.make_empty_intermediate_tensors(
            batch_size=runner.max_num_tokens, dtype=runner.model_config.dtype, device=runner.device)

    def stage_memory(self) -> dict[str, int]:
        """What this stage holds: its decoder layers, its KV cache in bytes, and its process.
        (Weight bytes are not read from the model: vLLM's CPU backend repacks linear
        weights outside the module's parameters.)"""
        layers = self.model_runner.model.model.layers
        held = sum(1 for layer in layers if not isinstance(layer, PPMissingLayer))
        kv = sum(t.numel() * t.element_size() for t in _tensors(self.model_runner.kv_caches))
        return {"rank": get_pp_group().rank_in_group, "layers": held, "num_layers": len(layers), "kv_bytes": kv,
                "pid": os.getpid()}


def _tensors(caches) -> list:
    if isinstance(caches, dict):
        caches = list(caches.values())
    out = []
    for cache in caches:
        out += _tensors(cache) if isinstance(cache, (list, tuple, dict)) else [cache]
    return out
