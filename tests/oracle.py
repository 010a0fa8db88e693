"""The greedy oracle: one plain vLLM engine (no connector, no Tide code) in a Ray actor.
Every path through Tide must return exactly its token ids for the same prompt."""

from __future__ import annotations

import uuid

from vllm import SamplingParams
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.v1.engine.async_llm import AsyncLLM


class PlainEngine:
    def __init__(self, model: str, dtype: str, block_size: int, max_model_len: int, kv_cache_bytes: int):
        self._args = AsyncEngineArgs(
            model=model, dtype=dtype, block_size=block_size, max_model_len=max_model_len,
            kv_cache_memory_bytes=kv_cache_bytes, enforce_eager=True, enable_prefix_caching=False,
        )
        self._engine: AsyncLLM | None = None

    async def start(self) -> None:
        self._engine = AsyncLLM.from_engine_args(self._args)

    async def greedy(self, prompt_token_ids: list[int], max_tokens: int) -> list[int]:
        sampling = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
        final = None
        async for output in self._engine.generate({"prompt_token_ids": prompt_token_ids}, sampling, uuid.uuid4().hex):
            final = output
        return list(final.outputs[0].token_ids)
