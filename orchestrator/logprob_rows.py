"""Logprobs as replicas return them (one `{token_id: Logprob}` dict per position) turned
back into the row form vLLM's output processor consumes: per position, the chosen token
first, then the top-k tokens by rank, with the chosen token's rank alongside."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from vllm.v1.outputs import LogprobsLists, LogprobsTensors


def _rows(
    chosen: Sequence[int], positions: Sequence[Mapping[int, Any]], num_top: int
) -> tuple[list[list[int]], list[list[float]], list[int]]:
    token_rows: list[list[int]] = []
    logprob_rows: list[list[float]] = []
    ranks: list[int] = []
    for token_id, position in zip(chosen, positions, strict=True):
        by_rank = sorted(((lp.rank, tid, lp.logprob) for tid, lp in position.items() if lp.rank is not None))
        top = [(tid, logprob) for rank, tid, logprob in by_rank if 1 <= rank <= num_top]
        # A position may come back with fewer than `num_top` alternatives when the chosen
        # token is among them; the chosen token's own entry fills the row.
        width = (num_top if num_top >= 0 else len(position)) + 1
        chosen_logprob = position[token_id]
        row_tokens = [token_id] + [tid for tid, _ in top]
        row_logprobs = [chosen_logprob.logprob] + [lp for _, lp in top]
        while len(row_tokens) < width:
            row_tokens.append(token_id)
            row_logprobs.append(chosen_logprob.logprob)
        token_rows.append(row_tokens[:width])
        logprob_rows.append(row_logprobs[:width])
        ranks.append(chosen_logprob.rank if chosen_logprob.rank is not None else 0)
    return token_rows, logprob_rows, ranks


def sample_logprob_lists(
    token_ids: Sequence[int], positions: Sequence[Mapping[int, Any]], num_top: int
) -> LogprobsLists:
    tokens, logprobs, ranks = _rows(token_ids, positions, num_top)
    return LogprobsLists(
        np.asarray(tokens, dtype=np.int64).reshape(len(tokens), -1),
        np.asarray(logprobs, dtype=np.float32).reshape(len(tokens), -1),
        np.asarray(ranks, dtype=np.int64),
    )


def prompt_logprob_tensors(
    prompt_token_ids: Sequence[int], positions: Sequence[Mapping[int, Any] | None], num_top: int
) -> LogprobsTensors:
    """`positions` is vLLM's prompt logprobs: `None` for the first prompt token, then one
    dict per following prompt token."""
    scored = [p for p in positions[1:] if p is not None]
    tokens, logprobs, ranks = _rows(prompt_token_ids[1 : 1 + len(scored)], scored, num_top)
    return LogprobsTensors(
        torch.tensor(tokens, dtype=torch.int64).reshape(len(tokens), -1),
        torch.tensor(logprobs, dtype=torch.float32).reshape(len(tokens), -1),
        torch.tensor(ranks, dtype=torch.int64),
    )
