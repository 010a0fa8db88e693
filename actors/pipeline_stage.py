"""The worker side of a pipeline replica (parameter dropping): a vLLM engine whose workers
each hold one contiguous slice of the model's layers (vLLM's pipeline parallelism), one
worker per member of the dropped group. Installed as vLLM's worker extension, so the
replica reaches every stage through `collective_rpc`."""

from __future__ import annotations

import os

from vllm.distributed import get_pp_group
from vllm.model_executor.models.utils import PPMissingLayer


class PipelineStageExtension:
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
