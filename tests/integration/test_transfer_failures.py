"""A failed or missing KV transfer, injected in each medium, ends in recompute (correct
tokens) or, when asked, in a clear error; it never hangs and never gives wrong tokens."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest
import ray

from actors.engine_spec import TransferFailurePolicy
from actors.kv.medium import MediumKind
from actors.replica import KVTransferFailed
from policies.snapshot import Role
from tests.integration.helpers import MAX_TOKENS, break_handle, greedy_request, prefill_then_decode, prompt_of

pytestmark = pytest.mark.engine

SEEDS = {MediumKind.SHARED_MEMORY: 41, MediumKind.RAY: 42, MediumKind.DISK: 43}


def _truncate(handle) -> None:
    with open(handle.path, "r+b") as f:
        f.truncate(os.path.getsize(handle.path) // 2)


@pytest.mark.parametrize("medium", [MediumKind.SHARED_MEMORY, MediumKind.RAY, MediumKind.DISK])
async def test_lost_transfer_recomputes_with_correct_tokens(client, oracle, medium):
    # A prompt of its own per case, so no replica has it in its prefix cache.
    prompt = prompt_of(180, seed=SEEDS[medium])
    expected = await oracle.greedy.remote(prompt, MAX_TOKENS)
    tokens, deltas, decode = await prefill_then_decode(client, greedy_request(prompt), medium, break_handle)
    assert tokens == expected
    assert deltas[0].num_cached_tokens == 0  # nothing was loaded: the prompt was recomputed
    records = await decode.take_transfer_records()
    assert any(not r.ok and r.medium == medium.value for r in records)


@pytest.mark.parametrize("medium", [MediumKind.SHARED_MEMORY, MediumKind.DISK])
async def test_truncated_staged_kv_is_rejected(client, oracle, medium):
    prompt = prompt_of(250, seed=SEEDS[medium] + 100)
    expected = await oracle.greedy.remote(prompt, MAX_TOKENS)
    tokens, deltas, _ = await prefill_then_decode(client, greedy_request(prompt), medium, _truncate)
    assert tokens == expected
    assert deltas[0].num_cached_tokens == 0


@pytest.mark.parametrize("medium", [MediumKind.SHARED_MEMORY, MediumKind.RAY, MediumKind.DISK])
async def test_lost_transfer_fails_clearly_when_configured(client, medium):
    request = greedy_request(prompt_of(120, seed=SEEDS[medium] + 200))
    with pytest.raises(ray.exceptions.RayTaskError) as info:
        await prefill_then_decode(client, request, medium, break_handle, TransferFailurePolicy.FAIL)
    assert isinstance(info.value.cause, KVTransferFailed)
    assert medium.value in str(info.value.cause)


async def test_zeroed_kv_changes_tokens(client, oracle):
    """Negative control: the decode replica really uses the moved bytes. Zeroing the
    staged KV (header intact) must change the output."""
    prompt = prompt_of(300, seed=45)
    expected = await oracle.greedy.remote(prompt, MAX_TOKENS)

    def zero_data(handle) -> None:
        size = os.path.getsize(handle.path)
        with open(handle.path, "r+b") as f:
            f.seek(4096)
            f.write(b"\0" * (size - 4096))

    tokens, deltas, _ = await prefill_then_decode(client, greedy_request(prompt), MediumKind.DISK, zero_data)
    assert deltas[0].num_cached_tokens == 288
    assert tokens != expected


async def test_unfetched_staged_kv_is_swept_and_its_blocks_freed(client, cluster_config):
    """Staged KV that no importer takes is deleted by its owner after the configured time
    to live; over shared memory that also ends the lease, so the held blocks are freed."""
    request = greedy_request(prompt_of(200, seed=46))
    prefill = client.choose(Role.PREFILL, 200)
    result = await prefill.prefill(request, MediumKind.SHARED_MEMORY)
    staged = Path(result.kv_handle.path)
    assert staged.exists()
    deadline = time.monotonic() + 4 * cluster_config.kv.staged_ttl_s
    while time.monotonic() < deadline:
        stats = await prefill.stats(5.0)
        if not staged.exists() and stats.num_free_blocks == stats.num_total_blocks:
            break
        await asyncio.sleep(0.2)
    assert not staged.exists()
    assert stats.num_free_blocks == stats.num_total_blocks
