"""A replica's device memory: the model's weights and, in what they leave, the KV cache.

With a memory budget per replica (a GPU's memory, or a share of a CPU host's), each
replica's KV cache is the budget minus the weights. A dropped group of g replicas serving
as one pipeline holds 1/g of the weights per member, and each member's KV blocks cover
only its 1/g of the layers, so the group's KV capacity grows by the freed weights:
weight_bytes x (g - 1) / kv_bytes_per_block blocks (KunServe's arithmetic).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open


@dataclass(frozen=True)
class ReplicaMemory:
    budget_bytes: int
    weight_bytes: int
    # One block of every layer's K and V.
    kv_bytes_per_block: int

    def kv_bytes(self, stages: int = 1) -> int:
        """KV cache per member when the weights are split over `stages` members."""
        kv = self.budget_bytes - math.ceil(self.weight_bytes / stages)
        if kv < self.kv_bytes_per_block // stages:
            raise ValueError(f"a replica memory budget of {self.budget_bytes} bytes leaves no room for KV next to "
                             f"{math.ceil(self.weight_bytes / stages)} bytes of weights")
        return kv

    def num_blocks(self, stages: int = 1) -> int:
        """KV blocks of one replica, or of a pipeline of `stages` members."""
        return self.kv_bytes(stages) * stages // self.kv_bytes_per_block

    @property
    def weight_blocks(self) -> int:
        """KV blocks one replica's full weights would hold."""
        return self.weight_bytes // self.kv_bytes_per_block

    @property
    def weight_share(self) -> float:
        return self.weight_bytes / self.budget_bytes


def measure_replica_memory(model_path: str, budget_bytes: int, block_size: int, dtype: str) -> ReplicaMemory:
    itemsize = torch.empty((), dtype=getattr(torch, dtype)).element_size()
    return ReplicaMemory(budget_bytes, _num_parameters(Path(model_path)) * itemsize,
                         _kv_values_per_block(Path(model_path), block_size) * itemsize)


def _num_parameters(model_dir: Path) -> int:
    total = 0
    for path in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                total += math.prod(f.get_slice(name).get_shape())
    if total == 0:
        raise FileNotFoundError(f"no safetensors weights in {model_dir}")
    return total


def _kv_values_per_block(model_dir: Path, block_size: int) -> int:
    config = json.loads((model_dir / "config.json").read_text())
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads", heads)
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    return 2 * config["num_hidden_layers"] * kv_heads * head_dim * block_size
