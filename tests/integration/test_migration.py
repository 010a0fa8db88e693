"""Live migration of running requests: requests migrated 1, 2 and 5 times, at contexts from
under one block to near the model's maximum, in each mode, return exactly the tokens of
one plain vLLM engine; the KV really moves (the destination's connector imports it); and
each failure rule loses nothing."""

from __future__ import annotations

import asyncio

import pytest
import ray

from actors.replica import ReplicaActor
from orchestrator.replica_handle import ReplicaHandle
from policies.migration import MigrationMode
from policies.snapshot import Role
from tests.integration.helpers import collect, greedy_request, prompt_of, wait_for, wait_until_serving

pytestmark = pytest.mark.engine

PRE_COPY, STOP_AND_COPY, RECOMPUTE = (m.value for m in MigrationMode)


async def _replicas(controller) -> tuple[ReplicaHandle, ReplicaHandle]:
    """The decode replica and the colocated one: two full engines to move requests between."""
    await wait_until_serving(controller)
    table = await controller.routing_table.remote()
    [decode] = [r.replica_id for r in table.snapshot.serving(Role.DECODE)]
    [colocated] = [r.replica_id for r in table.snapshot.serving(Role.COLOCATED)]
    return ReplicaHandle(decode, table.actors[decode]), ReplicaHandle(colocated, table.actors[colocated])


async def _running_on(replica: ReplicaHandle, request_id: str) -> bool:
    ids = await replica.actor.running_request_ids.remote()
    return any(i == request_id or i.startswith(f"{request_id}+") for i in ids)


async def _fetched_bytes(*replicas: ReplicaHandle) -> int:
    """KV bytes the replicas fetched over a medium since last asked."""
    records = [r for replica in replicas for r in await replica.take_transfer_records()]
    return sum(r.num_bytes for r in records if r.direction == "fetch" and r.ok)


def _unstarted_replica(cluster_config, tiny_model):
    """A replica actor with no engine: it answers `stats` (as starting) and nothing else
    works on it. Killed, it is a destination that died."""
    spec = cluster_config.engine_spec(tiny_model)
    return ray.remote(ReplicaActor).options(num_cpus=0).remote("stand-in", "decode", Role.DECODE, spec)


@pytest.mark.parametrize("prompt_len,moves,mode", [
    (20, 1, PRE_COPY), (300, 2, PRE_COPY), (1000, 5, PRE_COPY),
    (300, 2, STOP_AND_COPY), (1600, 1, STOP_AND_COPY), (300, 2, RECOMPUTE),
])
async def test_migrated_requests_match_the_oracle(client, controller, oracle, prompt_len, moves, mode):
    decode, colocated = await _replicas(controller)
    prompt = prompt_of(prompt_len, seed=1000 + prompt_len + moves)
    # Long enough to outlive the moves: the request decodes on while a pre-copy move's
    # stages copy (over 100 tokens a move on a loaded machine), so five moves need several
    # hundred tokens of budget. Prompt + output stays under the model's 2048.
    max_tokens = 2000 - prompt_len if moves > 1 else 400
    request = greedy_request(prompt, max_tokens=max_tokens)
    await _fetched_bytes(colocated, decode)
    stream = asyncio.create_task(collect(client.generate(request)))
    holder, other = decode, colocated
    reports = []
    for _ in range(moves):
        await wait_for(lambda: _running_on(holder, request.request_id), 30, "the request to run on its replica")
        await asyncio.sleep(0.05)
        report = await holder.actor.migrate_out.remote(other.replica_id, other.actor, mode,
                                                       request_id=request.request_id)
        assert report.outcome == "migrated", report
        reports.append(report)
        holder, other = other, holder
    tokens, _ = await stream
    assert tokens == await oracle.greedy.remote(prompt, max_tokens)
    fetched = await _fetched_bytes(colocated, decode)
    if mode == RECOMPUTE:
        assert all(r.num_stages <= 1 for r in reports)
    elif prompt_len >= 32:
        assert fetched > 0, "the destination recomputed the request's KV instead of fetching it"
    if mode == PRE_COPY and prompt_len > 32 * 16:
        assert reports[0].num_stages >= 2 and reports[0].bytes_copied > 0, reports[0]


async def test_a_request_that_has_not_started_moves_between_queues(client, controller, oracle):
    decode, colocated = await _replicas(controller)
    prompt = prompt_of(400, seed=2000)
    # Long enough that polling cannot miss it on its replica (a short one could finish between polls).
    request = greedy_request(prompt, max_tokens=200)
    stream = asyncio.create_task(collect(client.generate(request)))
    await wait_for(lambda: _running_on(decode, request.request_id), 30, "the request to be admitted", every_s=0.01)
    report = await decode.actor.migrate_out.remote(colocated.replica_id, colocated.actor, PRE_COPY,
                                                   request_id=request.request_id)
    assert report.outcome in ("migrated", "request_finished")
    tokens, _ = await stream
    assert tokens == await oracle.greedy.remote(prompt, 200)


async def test_a_dead_destination_leaves_the_request_on_its_source(client, controller, oracle, cluster_config,
                                                                   tiny_model):
    decode, _ = await _replicas(controller)
    gone = _unstarted_replica(cluster_config, tiny_model)
    await gone.stats.remote()
    ray.kill(gone)
    prompt = prompt_of(700, seed=2001)
    request = greedy_request(prompt, max_tokens=200)
    stream = asyncio.create_task(collect(client.generate(request)))
    await wait_for(lambda: _running_on(decode, request.request_id), 30, "the request to run")
    report = await decode.actor.migrate_out.remote("gone-0", gone, PRE_COPY, request_id=request.request_id)
    assert report.outcome == "destination_failed"
    tokens, _ = await stream
    assert tokens == await oracle.greedy.remote(prompt, 200)


async def test_a_destination_lost_after_the_stop_hands_the_request_back(client, controller, oracle, cluster_config,
                                                                        tiny_model):
    """The source stops the request and names a destination the front door cannot reach:
    the stream continues on the source, with the KV the source staged."""
    decode, _ = await _replicas(controller)
    lost = _unstarted_replica(cluster_config, tiny_model)
    await lost.stats.remote()  # up before the request starts
    prompt = prompt_of(500, seed=2002)
    request = greedy_request(prompt, max_tokens=200)
    stream = asyncio.create_task(collect(client.generate(request)))
    await wait_for(lambda: _running_on(decode, request.request_id), 30, "the request to run")
    report = await decode.actor.migrate_out.remote("lost-0", lost, STOP_AND_COPY, request_id=request.request_id)
    assert report.outcome == "migrated"
    tokens, _ = await stream
    assert tokens == await oracle.greedy.remote(prompt, 200)


async def test_a_request_that_ends_during_migration_ends_it_cleanly(client, controller, oracle):
    decode, colocated = await _replicas(controller)
    prompt = prompt_of(1600, seed=2003)
    request = greedy_request(prompt, max_tokens=12)
    stream = asyncio.create_task(collect(client.generate(request)))
    while not await _running_on(decode, request.request_id) and not stream.done():
        await asyncio.sleep(0.005)
    report = await decode.actor.migrate_out.remote(colocated.replica_id, colocated.actor, PRE_COPY,
                                                   request_id=request.request_id)
    assert report.outcome in ("request_finished", "migrated", "no_request")
    tokens, _ = await stream
    assert tokens == await oracle.greedy.remote(prompt, 12)
    assert not await decode.actor.running_request_ids.remote()


async def test_an_aborted_request_during_migration_leaves_nothing_running(client, controller):
    decode, colocated = await _replicas(controller)
    request = greedy_request(prompt_of(1200, seed=2004), max_tokens=1500)
    stream = asyncio.create_task(collect(client.generate(request)))
    await wait_for(lambda: _running_on(decode, request.request_id), 30, "the request to run")
    migration = decode.actor.migrate_out.remote(colocated.replica_id, colocated.actor, PRE_COPY,
                                               request_id=request.request_id)
    await asyncio.sleep(0.02)
    stream.cancel()
    report = await migration
    assert report.outcome in ("migrated", "request_finished")

    async def idle():
        stats = [await r.stats(5.0) for r in (decode, colocated)]
        return all(s.num_running == 0 and s.num_waiting == 0 for s in stats)

    await wait_for(idle, 30, "both replicas to be idle")


async def test_pre_copied_blocks_do_not_hold_capacity(controller):
    """What a pre-copy stage imports on a destination is ordinary prefix cache: once the
    stage is done the blocks count as free (evicted first when memory is needed)."""
    decode, colocated = await _replicas(controller)
    tokens = prompt_of(900, seed=2005)
    handle = await decode.actor.export_kv.remote(tokens)
    assert handle is not None and handle.num_blocks == 900 // 32
    await colocated.actor.warm.remote(handle, tokens)
    # Engines report usage when they step: one short request later, only its block is in use.
    await collect(colocated.stream(greedy_request(prompt_of(10, seed=2006), max_tokens=2)))
    stats = await colocated.stats(5.0)
    assert stats.num_free_blocks >= stats.num_total_blocks - 1
