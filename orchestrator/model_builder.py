"""Builds Llama-architecture models with seeded random weights and a locally trained tokenizer.

No model hub is needed: the output is a normal Hugging Face model directory (config.json,
model.safetensors, tokenizer.json, tokenizer_config.json with a chat template) that vLLM
loads like any other model. The same size and seed always give the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path

import torch
from safetensors.torch import save_file

from orchestrator.tokenizer_builder import build_tokenizer_files


class ModelSize(str, Enum):
    TINY = "tiny"
    SMALL = "small"


@dataclass(frozen=True)
class LlamaShape:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    max_position_embeddings: int
    # Larger than the usual 0.02 so greedy argmax has clear margins: random models with
    # flat logits would make token-for-token comparisons hinge on float rounding.
    initializer_range: float = 0.08


SHAPES: dict[ModelSize, LlamaShape] = {
    # ~1.2 M parameters, ~5 MB in float32: for tests.
    ModelSize.TINY: LlamaShape(
        vocab_size=2048, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
    ),
    # ~90 M parameters, ~360 MB in float32: for benchmarks where weight memory matters.
    ModelSize.SMALL: LlamaShape(
        vocab_size=8192, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
        num_attention_heads=12, num_key_value_heads=4, max_position_embeddings=4096,
    ),
}


def _hf_config(shape: LlamaShape, bos_token_id: int, eos_token_id: int) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_act": "silu",
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "head_dim": shape.hidden_size // shape.num_attention_heads,
        **asdict(shape),
    }


def _random_weights(shape: LlamaShape, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    head_dim = shape.hidden_size // shape.num_attention_heads
    kv_dim = shape.num_key_value_heads * head_dim

    def normal(*dims: int) -> torch.Tensor:
        return torch.randn(*dims, generator=generator) * shape.initializer_range

    hidden, inter = shape.hidden_size, shape.intermediate_size
    weights = {"model.embed_tokens.weight": normal(shape.vocab_size, hidden)}
    for i in range(shape.num_hidden_layers):
        prefix = f"model.layers.{i}"
        weights |= {
            f"{prefix}.self_attn.q_proj.weight": normal(hidden, hidden),
            f"{prefix}.self_attn.k_proj.weight": normal(kv_dim, hidden),
            f"{prefix}.self_attn.v_proj.weight": normal(kv_dim, hidden),
            f"{prefix}.self_attn.o_proj.weight": normal(hidden, hidden),
            f"{prefix}.mlp.gate_proj.weight": normal(inter, hidden),
            f"{prefix}.mlp.up_proj.weight": normal(inter, hidden),
            f"{prefix}.mlp.down_proj.weight": normal(hidden, inter),
            f"{prefix}.input_layernorm.weight": torch.ones(hidden),
            f"{prefix}.post_attention_layernorm.weight": torch.ones(hidden),
        }
    weights["model.norm.weight"] = torch.ones(hidden)
    weights["lm_head.weight"] = normal(shape.vocab_size, hidden)
    return {name: tensor.contiguous() for name, tensor in weights.items()}


def build_model(size: ModelSize, out_dir: Path, seed: int = 0) -> Path:
    """Writes the model directory and returns it. Idempotent: an existing complete
    directory built from the same recipe is left as it is."""
    shape = SHAPES[size]
    recipe = json.dumps({"size": size.value, "seed": seed, "shape": asdict(shape)}, sort_keys=True)
    recipe_digest = hashlib.sha256(recipe.encode()).hexdigest()
    stamp = out_dir / "tide_recipe.sha256"
    if stamp.exists() and stamp.read_text() == recipe_digest:
        return out_dir

    out_dir.mkdir(parents=True, exist_ok=True)
    special = build_tokenizer_files(out_dir, shape.vocab_size, random.Random(seed))
    config = _hf_config(shape, special.bos_token_id, special.eos_token_id)
    (out_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    generation_config = {
        "bos_token_id": special.bos_token_id,
        "eos_token_id": special.eos_token_id,
    }
    (out_dir / "generation_config.json").write_text(json.dumps(generation_config, indent=2) + "\n")
    save_file(_random_weights(shape, seed), str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    stamp.write_text(recipe_digest)
    return out_dir


def directory_digest(model_dir: Path) -> str:
    """Hash of every file's name and bytes: equal digests mean byte-identical models."""
    digest = hashlib.sha256()
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        digest.update(path.relative_to(model_dir).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()
