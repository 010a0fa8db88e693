"""Compare an OpenAI response from Tide with vLLM's own server's answer to the same request."""

from __future__ import annotations

import math
from typing import Any

# Differ between any two servers by construction (the fingerprint hashes server arguments).
VOLATILE = frozenset({"id", "created", "system_fingerprint"})


def normalized(response: Any) -> Any:
    data = response.model_dump() if hasattr(response, "model_dump") else response
    return _strip(data)


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def assert_same(tide: Any, reference: Any, path: str = "$") -> None:
    """Equal structure, text and token ids; floats (logprobs) equal to float32 precision."""
    if isinstance(reference, dict):
        assert isinstance(tide, dict) and tide.keys() == reference.keys(), f"{path}: keys {tide} != {reference}"
        for key in reference:
            assert_same(tide[key], reference[key], f"{path}.{key}")
    elif isinstance(reference, list):
        assert isinstance(tide, list) and len(tide) == len(reference), f"{path}: {tide} != {reference}"
        for i, (a, b) in enumerate(zip(tide, reference)):
            assert_same(a, b, f"{path}[{i}]")
    elif isinstance(reference, float) and isinstance(tide, float):
        assert math.isclose(tide, reference, rel_tol=1e-4, abs_tol=1e-4), f"{path}: {tide} != {reference}"
    else:
        assert tide == reference, f"{path}: {tide!r} != {reference!r}"


def joined_stream(chunks: list[Any]) -> dict[str, Any]:
    """What a streamed answer adds up to: per choice, its text and finish reason; and usage."""
    texts: dict[int, str] = {}
    finish: dict[int, str | None] = {}
    usage = None
    for chunk in chunks:
        if chunk.usage is not None:
            usage = chunk.usage.model_dump()
        for choice in chunk.choices:
            piece = choice.delta.content if hasattr(choice, "delta") else choice.text
            texts[choice.index] = texts.get(choice.index, "") + (piece or "")
            if choice.finish_reason is not None:
                finish[choice.index] = choice.finish_reason
    return {"texts": texts, "finish": finish, "usage": usage}
