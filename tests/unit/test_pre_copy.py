"""Pre-copy stages on the source (actors/migration_source.py), against a request that
decodes one token per tick and an export that stages its full blocks."""

import asyncio

from vllm import SamplingParams

from actors.kv.medium import KVHandle, MediumKind
from actors.messages import TokenRequest
from actors.migration_source import MigrationTarget, RunningRequest, next_token, pre_copy
from actors.migration_spec import MigrationSettingsSpec
from actors.outbox import Outbox
from policies.snapshot import RequestId

BLOCK = 32
BYTES_PER_BLOCK = 1000


class DecodingRequest:
    """A running request that gains a token every `step_s`, up to `max_tokens`."""

    def __init__(self, prompt_len: int, max_tokens: int, step_s: float = 0.001):
        request = TokenRequest(RequestId("r"), list(range(prompt_len)), SamplingParams(max_tokens=max(max_tokens, 1)))
        self.running = RunningRequest(request, Outbox(), ended=asyncio.get_running_loop().create_future())
        self.max_tokens, self.step_s = max_tokens, step_s
        self.task = asyncio.create_task(self._decode())

    async def _decode(self):
        while len(self.running.produced) < self.max_tokens:
            await asyncio.sleep(self.step_s)
            self.running.produced.append(7)
            self.running.progressed.set()
        self.running.ended.set_result("request_finished")


class Staging:
    """Export and import that record the token counts each stage saw."""

    def __init__(self, export_s: float = 0.0):
        self.exported_at: list[int] = []
        self.export_s = export_s

    async def export(self, tokens):
        self.exported_at.append(len(tokens))
        await asyncio.sleep(self.export_s)
        num_blocks = len(tokens) // BLOCK
        return KVHandle(MediumKind.SHARED_MEMORY, "src", "node", num_blocks * BLOCK, num_blocks,
                        num_blocks * BYTES_PER_BLOCK)

    async def warm(self, handle, tokens):
        return handle.num_blocks


async def test_the_last_stage_starts_at_a_block_boundary():
    request = DecodingRequest(prompt_len=1000, max_tokens=400)
    request.running.produced.append(7)
    staging = Staging(export_s=0.005)
    settings = MigrationSettingsSpec(max_stages=3, boundary_slack_tokens=2)
    per_stage, num_bytes = await pre_copy(request.running, BLOCK, settings, staging.export, staging.warm)

    assert len(per_stage) == 2
    assert staging.exported_at[0] == 1001
    assert staging.exported_at[1] % BLOCK <= 2 and staging.exported_at[1] > 1001
    assert sum(per_stage) == staging.exported_at[1] // BLOCK
    assert num_bytes == sum(per_stage) * BYTES_PER_BLOCK
    # What is left for the destination after the stop: the tokens decoded during the last
    # stage, not a block's worth.
    target = MigrationTarget("dst", "pre_copy", sum(per_stage), settings.last_stage_blocks)
    tokens_now = len(request.running.token_ids)
    assert tokens_now - sum(per_stage) * BLOCK < BLOCK // 2
    assert not target.needs_final_export(sum(per_stage) * BLOCK + 5, BLOCK)
    request.task.cancel()


async def test_a_request_ending_before_the_boundary_ends_the_stages():
    request = DecodingRequest(prompt_len=1000, max_tokens=10)
    request.running.produced.append(7)
    staging = Staging()
    per_stage, _ = await pre_copy(request.running, BLOCK, MigrationSettingsSpec(), staging.export, staging.warm)
    assert len(per_stage) == 1 and request.running.ended.done()


async def test_no_stage_runs_for_a_request_that_has_produced_nothing():
    request = DecodingRequest(prompt_len=100, max_tokens=0)
    staging = Staging()
    await asyncio.sleep(0.01)
    per_stage, num_bytes = await pre_copy(request.running, BLOCK, MigrationSettingsSpec(), staging.export, staging.warm)
    assert per_stage == [] and num_bytes == 0 and staging.exported_at == []


async def test_a_short_tail_after_the_first_stage_stops_at_once():
    # Decoding slower than the stage: the first stage leaves the request 1 token into a block.
    request = DecodingRequest(prompt_len=1024, max_tokens=400, step_s=10.0)
    request.running.produced.append(7)
    staging = Staging()
    per_stage, _ = await pre_copy(request.running, BLOCK, MigrationSettingsSpec(), staging.export, staging.warm)
    assert per_stage == [32] and staging.exported_at == [1025]
    request.task.cancel()


async def test_next_token_returns_just_after_a_token_arrives():
    request = DecodingRequest(prompt_len=10, max_tokens=400, step_s=0.02)
    before = len(request.running.produced)
    assert await next_token(request.running, timeout_s=1.0)
    assert len(request.running.produced) == before + 1
    request.task.cancel()


async def test_next_token_is_false_when_the_request_ends_or_stalls():
    ending = DecodingRequest(prompt_len=10, max_tokens=0)
    assert not await next_token(ending.running, timeout_s=1.0)
    stalled = DecodingRequest(prompt_len=10, max_tokens=400, step_s=10.0)
    assert not await next_token(stalled.running, timeout_s=0.05)
    stalled.task.cancel()
