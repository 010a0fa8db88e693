"""Step-time calibration for an A100 running Llama-2-7B, from Microsoft Vidur's published profile.

Vidur (github.com/microsoft/vidur, MIT license) ships per-operation GPU times (medians, ms, one
layer): `mlp.csv` for the operations that depend only on the batch's token count (norms,
projections, rotary embedding, MLP, residual add), `attention.csv` for attention by prompt length
(prefill) or by batch size and KV length (decode). As in Vidur's predictor
(`vidur/entities/execution_time.py`), a step takes num_layers x one layer's summed operations, with
no embedding, LM head, sampling or CPU overhead (Vidur's `skip_cpu_overhead_modeling` default).
This sums the profile at prefill, decode and mixed steps and fits `StepCostModel` to them; the
data is read from the user's copy of Vidur, not kept here.

    python -m sim.gpu_profile --vidur-dir ~/src/vidur --out sim/calibrations/a100-llama2-7b.yaml
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
from collections import defaultdict
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from sim.cost_model import CALIBRATIONS_DIR, StepCostModel, StepSample, fit_coefficients

PROFILE_DIR = Path("data/profiling/compute/a100/meta-llama/Llama-2-7b-hf")
NUM_LAYERS = 32
TOKEN_OPS = ("input_layernorm", "attn_pre_proj", "attn_rope", "attn_post_proj", "post_attention_layernorm",
             "mlp_up_proj", "mlp_act", "mlp_down_proj", "add")
MLP_MATCH = {"n_head": "32", "n_kv_head": "32", "n_embd": "4096", "n_expanded_embd": "11008",
             "use_gated_mlp": "True", "num_tensor_parallel_workers": "1"}
ATTENTION_MATCH = {"n_q_head": "32", "n_kv_head": "32", "n_embd": "4096", "block_size": "16",
                   "num_tensor_parallel_workers": "1"}

# Points Vidur profiled (prompt lengths from its chunk-size grid, batches up to its maximum of
# 128, KV lengths below 4096 on its 64-token grid), so attention is read, never interpolated.
# Vidur times one layer, so its decode grid reaches batches whose KV would not fit in a 40 GB
# card; they stay, as they pin the per-context-token cost. Mixed steps (prompt, batch, KV) fit.
PREFILL_LENGTHS = (64, 192, 416, 800, 1536, 2048, 2560, 3072, 4032)
DECODE_BATCHES = (1, 2, 4, 8, 16, 32, 64, 96, 128)
DECODE_CONTEXTS = (128, 512, 1728, 3072, 4032)
MIXED_STEPS = ((416, 16, 1728), (800, 64, 512), (1536, 8, 3072), (2048, 128, 128), (3072, 8, 4032))

BLOCK_SIZE = 16
KV_BYTES_PER_TOKEN = 2 * 32 * 32 * 128 * 2  # K and V x 32 layers x 32 KV heads x head dim 128 x fp16
WEIGHT_BYTES = 13_476_839_424  # ~6.74e9 fp16 parameters
GIB = 1024**3
# vLLM at gpu_memory_utilization 0.9 on a 40 GiB A100: 36 GiB, less 12.55 GiB of weights and ~1.5 GiB
# of activations and CUDA context, leaves 21.95 GiB for KV; a block is 16 tokens x 512 KiB = 8 MiB,
# so 21.95 GiB / 8 MiB = 2809 blocks (44,944 tokens).
NUM_BLOCKS = int((0.9 * 40 * GIB - WEIGHT_BYTES - 1.5 * GIB) // (BLOCK_SIZE * KV_BYTES_PER_TOKEN))


@dataclass(frozen=True)
class LayerProfile:
    """One layer's profiled times in ms: token-wise operations by token count, and attention."""

    token_ops_ms: dict[int, float]
    prefill_ms: dict[int, float]  # by prompt length, empty KV cache
    decode_ms: dict[tuple[int, int], float]  # by (batch size, cached tokens per sequence)

    def step_s(self, prefill_tokens: int, decode_batch: int, decode_context: int) -> float:
        """One prefill of `prefill_tokens` (0 for none) and `decode_batch` decodes of
        `decode_context` cached tokens each, as Vidur would predict the step."""
        tokens = -(-(prefill_tokens + decode_batch) // 8) * 8  # Vidur rounds up to a multiple of 8
        counts = sorted(self.token_ops_ms)
        layer_ms = float(np.interp(tokens, counts, [self.token_ops_ms[n] for n in counts]))
        if prefill_tokens:
            layer_ms += _attention(self.prefill_ms, prefill_tokens)
        if decode_batch:
            layer_ms += _attention(self.decode_ms, (decode_batch, decode_context))
        return NUM_LAYERS * layer_ms * 1e-3


def _attention(table: dict, key: Hashable) -> float:
    if key not in table:
        raise ValueError(f"attention.csv has no row for {key}")
    return table[key]


def _rows(path: Path, match: dict[str, str]) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return [row for row in csv.DictReader(f) if all(row[k] == v for k, v in match.items())]


def _mean_by(pairs: Iterable[tuple[Hashable, float]]) -> dict:
    """Averages repeated measurements of a point (Vidur's grids list some points twice)."""
    groups: dict = defaultdict(list)
    for key, value in pairs:
        groups[key].append(value)
    return {key: sum(values) / len(values) for key, values in groups.items()}


def load_profile(profile_dir: Path) -> LayerProfile:
    mlp = _rows(profile_dir / "mlp.csv", MLP_MATCH)
    attention = _rows(profile_dir / "attention.csv", ATTENTION_MATCH)
    prefills = [r for r in attention if r["is_prefill"] == "True" and r["kv_cache_size"] == "0"]
    decodes = [r for r in attention if r["is_prefill"] == "False"]
    return LayerProfile(
        token_ops_ms=_mean_by((int(r["num_tokens"]), sum(float(r[f"time_stats.{op}.median"]) for op in TOKEN_OPS))
                              for r in mlp),
        prefill_ms=_mean_by((int(r["prefill_chunk_size"]), float(r["time_stats.attn_prefill.median"]))
                            for r in prefills),
        decode_ms=_mean_by(((int(r["batch_size"]), int(r["kv_cache_size"])), float(r["time_stats.attn_decode.median"]))
                           for r in decodes),
    )


def step_samples(profile: LayerProfile) -> list[StepSample]:
    """Prefill-only, decode-only and mixed steps; a decode with c cached tokens reads c + 1."""
    samples = [StepSample(p, 0, p, profile.step_s(p, 0, 0)) for p in PREFILL_LENGTHS]
    samples += [StepSample(0, b, b * (c + 1), profile.step_s(0, b, c)) for c in DECODE_CONTEXTS for b in DECODE_BATCHES]
    samples += [StepSample(p, b, p + b * (c + 1), profile.step_s(p, b, c)) for p, b, c in MIXED_STEPS]
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vidur-dir", type=Path, required=True, help="a copy of github.com/microsoft/vidur")
    parser.add_argument("--out", type=Path, default=CALIBRATIONS_DIR / "a100-llama2-7b.yaml")
    parser.add_argument("--commit", help="Vidur commit of the data (default: the copy's git HEAD)")
    parser.add_argument("--source-note", default="", help="more provenance for the source line")
    args = parser.parse_args()
    commit = args.commit or subprocess.run(["git", "-C", str(args.vidur_dir), "rev-parse", "HEAD"],
                                           capture_output=True, text=True).stdout.strip() or "unknown"

    samples = step_samples(load_profile(args.vidur_dir / PROFILE_DIR))
    base, per_prefill, per_decode, per_context = fit_coefficients(samples)
    model = StepCostModel(
        name=args.out.stem, source="", base_s=base, prefill_token_s=per_prefill, decode_seq_s=per_decode,
        context_token_s=per_context, block_size=BLOCK_SIZE, num_blocks=NUM_BLOCKS,
        kv_bytes_per_token=KV_BYTES_PER_TOKEN, weight_bytes=WEIGHT_BYTES,
        max_num_batched_tokens=8192, max_num_seqs=256,
    )
    errors = [abs(model.step_s(s.prefill_tokens, s.decode_seqs, s.context_tokens) - s.step_s) / s.step_s
              for s in samples]
    median, p90 = float(np.median(errors)), float(np.percentile(errors, 90))
    source = (f"derived from Microsoft Vidur's A100 profile (github.com/microsoft/vidur, MIT license) at commit "
              f"{commit}: {PROFILE_DIR}/mlp.csv and attention.csv, tensor parallel 1, median per-op times; "
              f"{args.source_note + '; ' if args.source_note else ''}step = {NUM_LAYERS} layers x summed ops, "
              f"no CPU overhead (Vidur's default); fit by python -m sim.gpu_profile over {len(samples)} steps "
              f"(prefill 64..4032, decode batch 1..128 x KV 128..4032, mixed), "
              f"median fit error {median * 100:.1f} %, p90 {p90 * 100:.1f} %")
    replace(model, source=source).save(args.out)
    print(json.dumps({"base_ms": base * 1e3, "per_prefill_token_us": per_prefill * 1e6,
                      "per_decode_seq_us": per_decode * 1e6, "per_context_token_us": per_context * 1e6,
                      "median_fit_error": round(median, 4), "p90_fit_error": round(p90, 4),
                      "samples": len(samples), "num_blocks": NUM_BLOCKS}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
