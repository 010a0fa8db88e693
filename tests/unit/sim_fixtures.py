"""A step-cost model with round numbers, so expected times can be written down."""

from __future__ import annotations

from sim.cost_model import StepCostModel


def cost_model(num_blocks: int = 1000, block_size: int = 16, max_num_batched_tokens: int = 512,
               max_num_seqs: int = 64) -> StepCostModel:
    return StepCostModel(
        name="test", source="round numbers for tests", base_s=0.010, prefill_token_s=0.0001,
        decode_seq_s=0.001, context_token_s=0.000001, block_size=block_size, num_blocks=num_blocks,
        kv_bytes_per_token=1000, weight_bytes=10**9, max_num_batched_tokens=max_num_batched_tokens,
        max_num_seqs=max_num_seqs,
    )
