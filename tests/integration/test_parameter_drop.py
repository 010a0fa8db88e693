"""Parameter dropping on real engines: a group of two colocated replicas becomes one vLLM
pipeline (each stage half the layers), gains the freed weights as KV blocks, and serves
every request with the tokens of one plain engine — requests in flight at the drop (handed
to the pipeline with their KV), during the pipeline phase and across the restore (handed
back to the members with their KV); a stage dying loses no request; under a burst
the controller drops by itself and restores after; a restarted controller stops the
standby pipeline it finds behind its gates and starts its own, and a standby whose start
fails is replaced after the back-off. Its own cluster, with a
replica memory budget where the weights are 70 % of it."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time

import httpx
import pytest
import ray

from actors.weights_gate import StartBehindGate
from dashboards.build import load_generated
from dashboards.elasticity import PANELS_AFTER_A_DROP
from dashboards.queries import expand, panel_queries, variable_values
from orchestrator.config import ClusterConfig, ControllerSettings, ParameterDropConfig, PoolConfig
from orchestrator.controller import ControllerActor
from orchestrator.events import ActionKind
from orchestrator.prometheus_runner import PrometheusSettings, ray_metrics_targets, running_prometheus
from orchestrator.replica_handle import replica_actor_name
from orchestrator.token_client import TokenClient
from policies.routing import LoadAwareRouter
from policies.snapshot import Role
from tests.conftest import TEST_ENGINE
from tests.integration.helpers import ask, collect, greedy_request, prompt_of, wait_for

pytestmark = pytest.mark.engine

# The tiny model's weights are 4.46 MB: 70 % of this budget (KV: 29 blocks of 32 tokens).
BUDGET_BYTES = 6_400_000
POOL = "colocated"
RETRY_AFTER_S = 15.0


@pytest.fixture(scope="module")
def drop_cluster(ray_session, tiny_model):
    config = ClusterConfig(
        name="tidedrop",
        engine=TEST_ENGINE.model_copy(update={"max_model_len": 512, "max_num_seqs": 16}),
        pools=(PoolConfig(name=POOL, role=Role.COLOCATED, num_replicas=2),),
        parameter_drop=ParameterDropConfig(enabled=True, replica_memory_bytes=BUDGET_BYTES, standby_pipeline=True,
                                           retry_after_s=RETRY_AFTER_S),
        controller=ControllerSettings(tick_s=0.25, health_timeout_s=10.0, start_timeout_s=600.0),
    )
    controller = ray.remote(ControllerActor).options(
        name="tidedrop-controller", max_concurrency=1000, num_cpus=0, max_restarts=1).remote(config, tiny_model)
    ray.get(controller.start.remote())
    yield controller, config.replica_memory(tiny_model)
    ray.get(controller.stop.remote())


@pytest.fixture(scope="module")
def prometheus(drop_cluster):
    with running_prometheus(ray_metrics_targets(), PrometheusSettings(port=9393, scrape_interval_s=1.0)) as url:
        yield url


async def _panels_without_data(prometheus: str, titles: tuple[str, ...]) -> list[str]:
    """The Elasticity dashboard's parameter-drop panels, queried as Grafana would."""
    missing = []
    async with httpx.AsyncClient(timeout=30) as http:
        for board in load_generated():
            variables = variable_values(board)
            for panel in panel_queries(board):
                if panel.panel not in titles:
                    continue
                expr = expand(panel.expr, variables, rate_interval="5m")
                answer = (await http.get(f"{prometheus}/api/v1/query", params={"query": expr})).json()
                if not answer["data"]["result"]:
                    missing.append(f"{panel.panel}: {expr}")
    return missing


@pytest.fixture
async def drop_client(drop_cluster):
    # Replays after a dead stage wait for the pool's repair to start both members again.
    client = TokenClient(drop_cluster[0], LoadAwareRouter(), TEST_ENGINE.block_size, refresh_s=0.2,
                         replica_wait_s=300.0)
    await client.start()
    yield client
    await client.close()


class Requests:
    """Greedy streamed requests, each checked against the oracle at the end."""

    def __init__(self, client: TokenClient):
        self._client = client
        self._running: list[tuple[list[int], int, asyncio.Task]] = []
        self._decoding: list[asyncio.Event] = []

    def send(self, count: int, prompt_len: int, max_tokens: int, seed: int) -> None:
        for i in range(count):
            prompt = prompt_of(prompt_len, seed=seed + i)
            decoding = asyncio.Event()
            stream = _noting_decode(self._client.generate(greedy_request(prompt, max_tokens)), decoding)
            self._running.append((prompt, max_tokens, asyncio.create_task(collect(stream))))
            self._decoding.append(decoding)

    async def all_decoding(self, timeout_s: float = 180) -> None:
        """Every request has streamed tokens past its first: the replica it runs on has
        decoded it (a decode replica's first step can come well after the prefill
        replica's token), so it holds KV that a hand-over moves."""
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in self._decoding)), timeout_s)

    def num_unfinished(self) -> int:
        return sum(1 for _, _, task in self._running if not task.done())

    async def check(self, oracle) -> int:
        """The oracle runs them all at once (one engine batches them)."""
        got = await asyncio.gather(*(task for _, _, task in self._running))
        expected = await asyncio.gather(*(oracle.greedy.remote(prompt, n) for prompt, n, _ in self._running))
        for (tokens, _), want in zip(got, expected):
            assert tokens == want
        return len(self._running)


async def _keeping_in_flight(action, requests: Requests, count: int, prompt_len: int, max_tokens: int, seed: int):
    """Runs a drop or restore (`action()`, a Ray call) once `count` requests decode, and
    keeps `count` in flight until it is done: the group serves on while the new engines
    start behind their weights gates, so requests run at the switch whenever it comes."""
    requests.send(count, prompt_len, max_tokens, seed)
    seed += count
    await requests.all_decoding()

    async def awaited():
        return await action()

    done = asyncio.create_task(awaited())
    while not done.done():
        while requests.num_unfinished() < count:
            requests.send(1, prompt_len, max_tokens, seed)
            seed += 1
        await asyncio.wait({done}, timeout=0.1)
    return done.result()


async def _noting_decode(stream, decoding: asyncio.Event, tokens: int = 3):
    streamed = 0
    async for delta in stream:
        streamed += len(delta.token_ids)
        if streamed >= tokens:
            decoding.set()
        yield delta


def _handed_over(outcome: str, at_least: int) -> int:
    """How many requests a switch handed over with their KV: at least `at_least - 1` of the
    requests kept in flight (one may have just finished, or just been sent and not yet
    hold KV)."""
    moved, with_kv = map(int, re.search(r"(\d+) running requests handed over, (\d+) with their KV", outcome).groups())
    assert moved >= at_least - 1 and with_kv >= moved - 1 and with_kv >= 1, outcome
    return with_kv


async def _serving(controller) -> list:
    snapshot = await controller.snapshot.remote()
    return [r for p in snapshot.pools for r in p.serving]


async def _standby_at_gate(controller) -> bool:
    return any(s.at_gate for s in await controller.standby_pipelines.remote())


async def _two_replicas_serving(controller) -> bool:
    serving = await _serving(controller)
    return len(serving) == 2 and all(r.num_members == 1 for r in serving)


async def test_a_dropped_group_gains_the_freed_weights_and_keeps_every_token(drop_cluster, drop_client, oracle,
                                                                             prometheus):
    controller, memory = drop_cluster
    table = await controller.routing_table.remote()
    before = sorted(table.infos)
    single_blocks = [table.infos[r].num_total_blocks for r in before]
    [single_stage] = await table.actors[before[0]].stage_memory.remote()

    # A standby pipeline waits at its weights gates; only its starter may open them (a
    # restarted controller's second start is refused, and it stops the standby).
    await wait_for(lambda: _standby_at_gate(controller), 240, "a standby pipeline at its weights gates")
    [standby] = await controller.standby_pipelines.remote()
    assert standby.stages == 2 and standby.replica_id not in table.infos
    standby_actor = ray.get_actor(replica_actor_name("tidedrop", standby.replica_id), namespace="tidedrop")
    with pytest.raises(StartBehindGate):
        await standby_actor.start.remote()

    in_flight = Requests(drop_client)  # in flight at the drop: 4 at a time, 10 blocks each
    pipeline_id = await _keeping_in_flight(lambda: controller.drop_parameters.remote(POOL), in_flight, 4,
                                           prompt_len=100, max_tokens=200, seed=100)
    table = await controller.routing_table.remote()
    assert sorted(table.infos) == [pipeline_id] == [standby.replica_id]
    info = table.infos[pipeline_id]
    assert info.pipeline_stages == 2
    # The requests in flight moved with their KV: each stage loads its layers of it.
    [drop] = [e for e in await controller.events.remote() if e.kind == ActionKind.DROP and e.replica == pipeline_id]
    with_kv = _handed_over(drop.outcome, at_least=4)
    assert "a standby pipeline took over" in drop.outcome, drop.outcome

    async def imported_all() -> bool:
        totals = await table.actors[pipeline_id].connector_totals.remote()
        return totals["num_imports"] >= with_kv * info.pipeline_stages and totals["num_import_failures"] == 0

    await wait_for(imported_all, 60, "the pipeline's stages to load the handed-over KV")
    assert await in_flight.check(oracle) >= 4

    # Memory: the group's blocks grew by the freed weights (one replica's weights) within 5 %.
    gained = info.num_total_blocks - sum(single_blocks)
    assert abs(gained - memory.weight_blocks) <= 0.05 * memory.weight_blocks, (gained, memory)
    stages = await table.actors[pipeline_id].stage_memory.remote()
    assert [s["layers"] for s in stages] == [single_stage["layers"] // 2] * 2
    for stage in stages:
        # Each stage's KV is what half the weights leave of its budget (to a block).
        assert abs(stage["kv_bytes"] - memory.kv_bytes(2)) <= memory.kv_bytes_per_block
    assert single_stage["kv_bytes"] <= memory.kv_bytes(1)
    # ... and Prometheus sees the group and its gain.
    for expr in ('max(ray_tide_pool_dropped_groups{cluster="tidedrop"}) == 1',
                 f'max(ray_tide_pool_pipeline_gained_kv_blocks{{cluster="tidedrop"}}) == {gained}'):
        await wait_for(lambda: _has_data(prometheus, expr), 30, expr)

    admitted = Requests(drop_client)
    admitted.send(4, prompt_len=200, max_tokens=60, seed=200)  # admitted by the pipeline
    assert await admitted.check(oracle) == 4
    # Running at the restore, 3 at a time: 13 blocks each, so two on one restored member
    # (29 blocks) fit and the policy does not drop again.
    requests = Requests(drop_client)
    members = await _keeping_in_flight(lambda: controller.restore_parameters.remote(pipeline_id), requests, 3,
                                       prompt_len=100, max_tokens=300, seed=300)
    assert len(members) == 2
    # The requests running moved back with their KV: the stages staged their layers,
    # whichever micro-batch the request was in, merged into one file per request that
    # each member loads whole.
    [restore] = [e for e in await controller.events.remote()
                 if e.kind == ActionKind.RESTORE and e.replica == pipeline_id]
    handed_back = _handed_over(restore.outcome, at_least=3)
    table = await controller.routing_table.remote()

    async def members_imported_all() -> bool:
        totals = [await table.actors[m].connector_totals.remote() for m in members]
        return (sum(t["num_imports"] for t in totals) >= handed_back
                and not any(t["num_import_failures"] for t in totals))

    await wait_for(members_imported_all, 60, "the restored members to load the handed-back KV")
    assert await requests.check(oracle) >= 3
    assert await _two_replicas_serving(controller)

    events = await controller.events.remote()
    drops = [e for e in events if e.kind == ActionKind.DROP and e.replica == pipeline_id]
    restores = [e for e in events if e.kind == ActionKind.RESTORE and e.replica == pipeline_id]
    assert drops and drops[-1].outcome.startswith("ok") and drops[-1].duration_s > 0
    assert restores and restores[-1].outcome.startswith("ok")

    # The Elasticity dashboard shows the drop: groups, blocks gained, switch time.
    titles = ("Dropped groups (serving as a pipeline)", "KV blocks gained by dropping", *PANELS_AFTER_A_DROP)
    await wait_for(lambda: _no_panel_missing(prometheus, titles), 60, "the drop panels to have data")


async def _has_data(prometheus: str, expr: str) -> bool:
    async with httpx.AsyncClient(timeout=30) as http:
        answer = (await http.get(f"{prometheus}/api/v1/query", params={"query": expr})).json()
    return bool(answer["data"]["result"])


async def _no_panel_missing(prometheus: str, titles: tuple[str, ...]) -> bool:
    return not await _panels_without_data(prometheus, titles)


async def test_a_stage_dying_while_dropped_loses_no_request(drop_cluster, drop_client, oracle):
    controller, _ = drop_cluster
    await wait_for(lambda: _two_replicas_serving(controller), 240, "two replicas serving alone")
    pipeline_id = await controller.drop_parameters.remote(POOL)
    table = await controller.routing_table.remote()
    stages = await table.actors[pipeline_id].stage_memory.remote()
    requests = Requests(drop_client)
    requests.send(4, prompt_len=120, max_tokens=300, seed=400)
    await asyncio.sleep(2.0)
    os.kill(next(s["pid"] for s in stages if s["rank"] == 1), signal.SIGKILL)

    assert await requests.check(oracle) == 4
    await wait_for(lambda: _two_replicas_serving(controller), 240, "the members back as two replicas")
    assert await controller.dropped_groups.remote() == []
    events = await controller.events.remote()
    assert any(e.kind == ActionKind.RESTORE and e.replica == pipeline_id and e.reason.startswith("pipeline_")
               for e in events)


async def test_a_burst_drops_by_itself_and_restores_after(drop_cluster, drop_client, oracle):
    controller, _ = drop_cluster
    await wait_for(lambda: _two_replicas_serving(controller), 240, "two replicas serving alone")
    since = (await controller.snapshot.remote()).taken_at_s
    # 12 requests of 470 tokens need 12 x 15 blocks; two replicas hold 2 x 29.
    requests = Requests(drop_client)
    requests.send(12, prompt_len=150, max_tokens=320, seed=500)
    assert await requests.check(oracle) == 12

    async def restored():
        events = await controller.events.remote(since)
        return any(e.kind == ActionKind.RESTORE and e.outcome.startswith("ok") for e in events)

    await wait_for(restored, 120, "the policy to restore the group")
    events = await controller.events.remote(since)
    [drop] = [e for e in events if e.kind == ActionKind.DROP]
    assert drop.reason == "kv_deficit" and drop.outcome.startswith("ok")
    await wait_for(lambda: _two_replicas_serving(controller), 240, "two replicas serving alone")


async def test_a_restarted_controller_stops_the_standby_it_finds_and_starts_its_own(drop_cluster, drop_client,
                                                                                   oracle):
    controller, _ = drop_cluster
    await wait_for(lambda: _two_replicas_serving(controller), 240, "two replicas serving alone")
    await wait_for(lambda: _standby_at_gate(controller), 240, "a standby pipeline at its weights gates")
    [old] = await controller.standby_pipelines.remote()
    ray.kill(controller, no_restart=False)  # Ray starts the controller again; the replicas live on

    async def old_standby_stopped():
        await ask(lambda: controller.start.remote(wait_ready=False))  # as a front door's poll does
        events = await ask(controller.events.remote)
        return any(e.kind == ActionKind.ADOPT and e.replica == old.replica_id and e.outcome.startswith("stopped")
                   for e in events)

    await wait_for(old_standby_stopped, 240, "the restarted controller to stop the old standby")
    # Its loop (and so its own standby) starts once it has adopted all it found.
    await wait_for(lambda: _standby_at_gate(controller), 240, "the restarted controller's standby at its gates")
    [new] = await controller.standby_pipelines.remote()
    assert new.replica_id != old.replica_id
    events = await controller.events.remote()
    assert sorted(e.replica for e in events if e.kind == ActionKind.ADOPT and e.outcome.startswith("ok")) == sorted(
        r.replica_id for r in await _serving(controller))

    async def old_standby_gone() -> bool:
        try:
            ray.get_actor(replica_actor_name("tidedrop", old.replica_id), namespace="tidedrop")
        except ValueError:
            return True
        return False

    await wait_for(old_standby_gone, 30, "the old standby's actor to be gone")
    requests = Requests(drop_client)
    requests.send(2, prompt_len=60, max_tokens=40, seed=600)
    assert await requests.check(oracle) == 2

    # A standby whose start fails (here: its actor dies) is replaced, after retry_after_s.
    ray.kill(ray.get_actor(replica_actor_name("tidedrop", new.replica_id), namespace="tidedrop"), no_restart=True)

    async def no_standby() -> bool:
        return not await controller.standby_pipelines.remote()

    await wait_for(no_standby, 60, "the controller to see its standby's start fail")
    failed_at = time.monotonic()
    [again] = await wait_for(controller.standby_pipelines.remote, 60, "a new standby after the back-off",
                             every_s=0.05)
    assert time.monotonic() - failed_at >= RETRY_AFTER_S - 1  # not started before the back-off
    assert again.replica_id not in (old.replica_id, new.replica_id)
    await wait_for(lambda: _standby_at_gate(controller), 240, "the new standby at its gates")


@pytest.fixture(scope="module")
def decode_drop_cluster(ray_session, tiny_model):
    """Prefill -> decode serving with two decode replicas under the same budget, and cold
    switches (the old engines stop before the new ones start)."""
    config = ClusterConfig(
        name="tidedropd",
        engine=TEST_ENGINE.model_copy(update={"max_model_len": 512, "max_num_seqs": 16}),
        pools=(PoolConfig(name="prefill", role=Role.PREFILL, num_replicas=1),
               PoolConfig(name="decode", role=Role.DECODE, num_replicas=2)),
        parameter_drop=ParameterDropConfig(enabled=True, replica_memory_bytes=BUDGET_BYTES, start_behind_gate=False),
        controller=ControllerSettings(tick_s=0.25, health_timeout_s=10.0, start_timeout_s=600.0),
    )
    controller = ray.remote(ControllerActor).options(
        name="tidedropd-controller", max_concurrency=1000, num_cpus=0).remote(config, tiny_model)
    ray.get(controller.start.remote())
    yield controller
    ray.get(controller.stop.remote())


async def test_a_decode_pool_drops_and_its_pipeline_takes_prefill_handoffs(decode_drop_cluster, oracle):
    """Decode requests move to the pipeline with their KV (a cold switch); new requests
    prefill on the prefill replica and the pipeline's stages each load their layers of
    that KV."""
    controller = decode_drop_cluster
    client = TokenClient(controller, LoadAwareRouter(), TEST_ENGINE.block_size, refresh_s=0.2)
    await client.start()
    try:
        in_flight = Requests(client)
        pipeline_id = await _keeping_in_flight(lambda: controller.drop_parameters.remote("decode"), in_flight, 4,
                                               prompt_len=100, max_tokens=200, seed=600)
        [drop] = [e for e in await controller.events.remote() if e.kind == ActionKind.DROP]
        with_kv = _handed_over(drop.outcome, at_least=4)
        assert "engines started once the old ones stopped" in drop.outcome, drop.outcome
        assert await in_flight.check(oracle) >= 4

        handed_off = Requests(client)
        handed_off.send(4, prompt_len=200, max_tokens=40, seed=700)
        assert await handed_off.check(oracle) == 4
        table = await controller.routing_table.remote()

        async def imported_all() -> bool:
            # The requests handed over with KV and 4 from the prefill replica, 2 stages
            # each; the stages' counts reach the replica with the engine's step stats.
            totals = await table.actors[pipeline_id].connector_totals.remote()
            assert totals["num_import_failures"] == 0, totals
            return totals["num_imports"] >= (with_kv + 4) * 2

        await wait_for(imported_all, 30, "both stages to count every import")

        across = Requests(client)
        members = await _keeping_in_flight(lambda: controller.restore_parameters.remote(pipeline_id), across, 3,
                                           prompt_len=100, max_tokens=300, seed=800)
        assert len(members) == 2
        assert await across.check(oracle) >= 3
    finally:
        await client.close()
