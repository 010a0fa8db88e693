"""Replica stats, abort, drain and health; death detection and replacement; a controller
crash that loses nothing. Runs after the oracle tests (it kills replicas)."""

from __future__ import annotations

import asyncio

import psutil
import pytest
import ray

from orchestrator.replica_handle import replica_actor_name
from orchestrator.token_client import RequestFailed, TokenClient
from policies.routing import LoadAwareRouter
from policies.snapshot import Health, ReplicaId, Role
from tests.integration.helpers import (
    ask,
    collect,
    greedy_request,
    prompt_of,
    serving_ids,
    wait_for,
    wait_until_serving,
)

pytestmark = [pytest.mark.engine, pytest.mark.disruptive]


async def test_stats_report_running_requests_and_kv_blocks(client, controller):
    replica = client.choose(Role.COLOCATED, 600)
    requests = [greedy_request(prompt_of(600, seed=900 + i), max_tokens=200) for i in range(4)]
    streams = [asyncio.create_task(collect(replica.stream(r))) for r in requests]

    async def busy():
        stats = await replica.stats(5.0)
        return stats if stats.num_running + stats.num_waiting >= 2 and stats.num_free_blocks < stats.num_total_blocks else None

    stats = await wait_for(busy, 60, "the replica to report its running batch")
    assert stats.health == Health.HEALTHY
    assert stats.kv_usage_frac > 0
    await asyncio.gather(*streams)
    idle = await replica.stats(5.0)
    assert idle.num_running == 0 and idle.num_head_waiting_blocks == 0


async def test_abort_stops_generation(client):
    replica = client.choose(Role.COLOCATED, 50)
    request = greedy_request(prompt_of(50, seed=910), max_tokens=1500)
    tokens: list[int] = []
    deltas = []

    async def consume():
        async for delta in replica.stream(request):
            tokens.extend(delta.token_ids)
            deltas.append(delta)
            if len(tokens) >= 5 and len(deltas) == 5:
                await replica.abort(request.request_id)

    await asyncio.wait_for(consume(), 60)
    assert deltas[-1].finish_reason == "abort"
    assert len(tokens) < 1500


async def test_disconnected_consumer_aborts_on_replica(client):
    """A consumer that stops reading (a client disconnect) frees the replica."""
    replica = client.choose(Role.COLOCATED, 50)
    request = greedy_request(prompt_of(50, seed=911), max_tokens=1500)
    stream = replica.stream(request)
    async for _ in stream:
        break
    await stream.aclose()

    async def idle():
        stats = await replica.stats(5.0)
        return stats.num_running == 0 and stats.num_waiting == 0

    await wait_for(idle, 30, "the abandoned request to be aborted")


async def test_stream_survives_the_death_of_its_decode_replica(controller, oracle):
    """Kill the decode replica mid-stream: the client's stream goes on (replayed elsewhere
    with prompt + tokens so far), with no gap or duplicate and oracle-identical tokens. A
    client with no replay budget gets a clear, retriable error instead."""
    resilient = TokenClient(controller, LoadAwareRouter(), 32, max_replays=2)
    strict = TokenClient(controller, LoadAwareRouter(), 32, max_replays=0)
    await resilient.start()
    await strict.start()
    prompt_a, prompt_b = prompt_of(150, seed=950), prompt_of(90, seed=951)
    streamed: list[int] = []
    deltas = []
    killed = asyncio.Event()

    async def consume_resilient():
        async for delta in resilient.generate(greedy_request(prompt_a, max_tokens=120)):
            streamed.extend(delta.token_ids)
            deltas.append(delta)
            if len(streamed) >= 20:
                await killed.wait()

    strict_tokens: list[int] = []

    async def consume_strict():
        async for delta in strict.generate(greedy_request(prompt_b, max_tokens=400)):
            strict_tokens.extend(delta.token_ids)

    async def kill_decode_when_streaming():
        # Both streams are on the decode replica when it dies.
        while len(streamed) < 20 or len(strict_tokens) < 5:
            await asyncio.sleep(0.01)
        table = await controller.routing_table.remote()
        [decode_id] = [r.replica_id for r in table.snapshot.serving(Role.DECODE)]
        ray.kill(table.actors[decode_id])
        killed.set()

    results = await asyncio.gather(consume_resilient(), consume_strict(), kill_decode_when_streaming(),
                                   return_exceptions=True)
    assert results[0] is None, results[0]
    assert isinstance(results[1], RequestFailed) and "retry" in str(results[1])
    assert streamed == await oracle.greedy.remote(prompt_a, 120)
    assert resilient.num_replays == 1
    assert all(d.num_prompt_tokens == len(prompt_a) for d in deltas)
    assert deltas[-1].finish_reason == "length"
    await resilient.close()
    await strict.close()
    await wait_for(lambda: serving_ids(controller, "decode"), 240, "the decode pool to recover")


async def test_killed_replica_is_replaced(client, controller, oracle):
    [old_id] = await serving_ids(controller, "decode")
    table = await controller.routing_table.remote()
    ray.kill(table.actors[old_id])

    async def replaced():
        ids = await serving_ids(controller, "decode")
        return ids if ids and old_id not in ids else None

    [new_id] = await wait_for(replaced, 240, "a new decode replica")
    events = await controller.events.remote()
    assert any(e.kind == "replace" and e.replica == old_id and e.reason == "actor_died" for e in events), events

    await _a_fresh_client_gets_the_oracle_s_tokens(controller, oracle, prompt_of(130, seed=920))


async def test_engine_death_is_detected_and_not_hung_on(client, controller):
    """Killing a replica's engine process ends its in-flight stream with an error (no hang),
    the replica reports itself dead and the controller replaces it."""
    [old_id] = await serving_ids(controller, "colocated")
    table = await controller.routing_table.remote()
    replica = client.choose(Role.COLOCATED, 50)
    stream = asyncio.create_task(collect(replica.stream(greedy_request(prompt_of(50, seed=930), max_tokens=1500))))
    await asyncio.sleep(1.0)
    for child in psutil.Process(table.infos[old_id].pid).children(recursive=True):
        child.kill()
    with pytest.raises(ray.exceptions.RayTaskError):
        await asyncio.wait_for(stream, 60)

    async def replaced():
        ids = await serving_ids(controller, "colocated")
        return ids if ids and old_id not in ids else None

    await wait_for(replaced, 240, "a new colocated replica")
    events = await controller.events.remote()
    assert any(e.kind == "replace" and e.replica == old_id and e.reason == "engine_dead" for e in events), events


async def test_controller_crash_loses_no_replica(client, controller, oracle):
    """The data path keeps serving while the controller is down; the restarted controller
    adopts the running replicas instead of starting new ones."""
    before = await controller.routing_table.remote()
    ray.kill(controller, no_restart=False)
    prompt = prompt_of(90, seed=940)
    tokens, _ = await collect(client.generate_disaggregated(greedy_request(prompt)))
    assert tokens == await oracle.greedy.remote(prompt, 24)

    async def back():
        try:
            snapshot = await asyncio.wait_for(controller.snapshot.remote(), 5)
        except (TimeoutError, ray.exceptions.RayError):
            return None
        ready = snapshot.pools and all(len(p.serving) >= p.target_size for p in snapshot.pools)
        return snapshot if ready else None

    await wait_for(back, 120, "the restarted controller to adopt the replicas")
    after = await controller.routing_table.remote()
    assert sorted(after.actors) == sorted(before.actors)
    events = await controller.events.remote()
    assert {e.replica for e in events if e.kind == "adopt"} == set(before.actors)


async def test_a_replica_starting_when_the_controller_dies_is_adopted_not_orphaned(client, controller, oracle):
    """The controller dies while a replacement builds its engine. An ordinary start holds
    the replica's event loop for the whole build, so the replica cannot answer the
    restarted controller within health_timeout_s: it is counted as starting and adopted
    once its start returns. No second replica starts, and no actor is left running unowned."""
    [old_id] = await serving_ids(controller, "decode")
    table = await controller.routing_table.remote()
    ray.kill(table.actors[old_id])

    async def starting():
        snapshot = await controller.snapshot.remote()
        return [r.replica_id for p in snapshot.pools if p.name == "decode" for r in p.replicas
                if r.health == Health.STARTING] or None

    [new_id] = await wait_for(starting, 60, "a replacement to start")
    ray.kill(controller, no_restart=False)
    # Far less than an engine start: the restarted controller must answer while the
    # replacement still builds.
    await ask(controller.snapshot.remote)

    async def adopted():
        events = await ask(controller.events.remote)
        return [e for e in events if e.kind == "adopt" and e.replica == new_id] or None

    [event] = await wait_for(adopted, 240, f"{new_id} to be adopted")
    assert event.outcome.startswith("ok: answered after"), event
    await wait_until_serving(controller)
    assert await serving_ids(controller, "decode") == [new_id]
    prefix = replica_actor_name("tidetest", ReplicaId(""))
    named = {a["name"].removeprefix(prefix) for a in ray.util.list_named_actors(all_namespaces=True)
             if a["namespace"] == "tidetest" and a["name"].startswith(prefix)}
    assert named == set((await controller.routing_table.remote()).actors)

    await _a_fresh_client_gets_the_oracle_s_tokens(controller, oracle, prompt_of(110, seed=945))


async def test_drain_stops_routing_to_replica(controller):
    snapshot = await controller.snapshot.remote()
    table = await controller.routing_table.remote()
    [prefill_id] = [r.replica_id for r in snapshot.serving(Role.PREFILL)]
    try:
        remaining = await table.actors[prefill_id].drain.remote(5.0)
        assert remaining == 0
        stats = await table.actors[prefill_id].stats.remote()
        assert stats.health == Health.DRAINING
        assert not stats.accepts_requests
    finally:
        await table.actors[prefill_id].resume.remote()
    assert (await table.actors[prefill_id].stats.remote()).accepts_requests


async def _a_fresh_client_gets_the_oracle_s_tokens(controller, oracle, prompt: list[int]) -> None:
    """A client that starts after the fault (its routing table is the controller's now)."""
    fresh = TokenClient(controller, LoadAwareRouter(), 32)
    await fresh.start()
    tokens, _ = await collect(fresh.generate_disaggregated(greedy_request(prompt)))
    assert tokens == await oracle.greedy.remote(prompt, 24)
    await fresh.close()
