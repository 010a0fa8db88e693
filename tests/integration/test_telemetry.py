"""Telemetry, end to end: a real Prometheus on loopback scrapes the running local cluster
while it serves traffic and a few faults (a decode replica killed mid-stream, a lost KV
transfer, a client that leaves, bad requests). Every PromQL expression of every dashboard
panel must return data through Prometheus' HTTP API, and the exported families must pass
`promtool check metrics`."""

from __future__ import annotations

import asyncio
import json
import math
import re
import subprocess
import time

import httpx
import pytest

from actors.engine_spec import TransferFailurePolicy
from actors.kv.medium import MediumKind
from dashboards.build import load_generated
from dashboards.elasticity import PANELS_AFTER_A_DROP
from dashboards.queries import expand, panel_queries, variable_values
from orchestrator.prometheus_runner import PrometheusSettings, ray_metrics_targets, running_prometheus
from orchestrator.replica_handle import ReplicaHandle
from policies.routing import DataPath
from policies.snapshot import Role
from tests.integration.helpers import (
    break_handle,
    greedy_request,
    prefill_then_decode,
    prompt_of,
    serving_ids,
    wait_for,
    wait_until_serving,
)

pytestmark = [pytest.mark.engine, pytest.mark.disruptive]

MODEL = "tide-tiny"
# A scrape times out at its interval; late in a loaded session the agents take over a
# second to answer.
PROMETHEUS = PrometheusSettings(port=9394, scrape_interval_s=2.0)
# Ray adds these identity labels to every series it exports (camelCase, which promtool's
# lint rejects); the families themselves are checked without them.
RAY_IDENTITY_LABELS = re.compile(r'(Component|NodeAddress|SessionName|Version|WorkerId|otel_scope_\w+)="[^"]*",?')
# vLLM names a histogram `vllm:iteration_tokens_total`; lint flags the suffix.
UPSTREAM_LINT = ("ray_vllm_iteration_tokens_total non-counter metrics should not have \"_total\" suffix",)


@pytest.fixture(scope="module")
def prometheus(openai_urls):
    with running_prometheus(ray_metrics_targets(), PROMETHEUS) as url:
        yield url


async def _query(http: httpx.AsyncClient, prometheus: str, expr: str) -> dict:
    response = await http.get(f"{prometheus}/api/v1/query", params={"query": expr})
    return response.json()


async def _has_data(http, prometheus, expr) -> bool:
    answer = await _query(http, prometheus, expr)
    return answer["status"] == "success" and bool(answer["data"]["result"])


async def _panel_problem(http: httpx.AsyncClient, prometheus: str, expr: str) -> str | None:
    answer = await _query(http, prometheus, expr)
    if answer["status"] != "success":
        return f"{answer.get('error')}: {expr}"
    values = [float(sample["value"][1]) for sample in answer["data"]["result"]]
    return None if any(math.isfinite(v) for v in values) else f"no data: {expr}"


async def _stream_through_replica_loss(url: str, controller) -> None:
    """A greedy stream whose decode replica is killed mid-way: the ingress replays it."""
    table = await controller.routing_table.remote()
    [decode_id] = [r.replica_id for r in table.snapshot.serving(Role.DECODE)]
    decode = ReplicaHandle(decode_id, table.actors[decode_id])
    body = {"model": MODEL, "prompt": "telemetry sees this", "max_tokens": 120, "temperature": 0,
            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
    chunks, usage = 0, None
    async with httpx.AsyncClient(timeout=120) as http:
        async with http.stream("POST", f"{url}/v1/completions", json=body) as response:
            async for line in response.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                chunks += 1
                usage = json.loads(line.removeprefix("data: ")).get("usage") or usage
                if chunks == 10:
                    decode.kill()
    assert chunks > 10 and usage["completion_tokens"] == 120
    async def replaced():
        return [r for r in await serving_ids(controller, "decode") if r != decode_id]

    await wait_for(replaced, 240, "a new decode replica")


async def _traffic(urls: dict[DataPath, str]) -> None:
    async with httpx.AsyncClient(timeout=120) as http:
        async def one(i: int):
            url = urls[DataPath.COLOCATED if i % 2 else DataPath.DISAGGREGATED]
            body = {"model": MODEL, "prompt": f"request {i} " * (10 + 7 * i), "max_tokens": 16 + i,
                    "temperature": 0, "ignore_eos": True, "stream": i % 3 == 0}
            response = await http.post(f"{url}/v1/completions", json=body)
            assert response.status_code == 200

        await asyncio.gather(*(one(i) for i in range(16)))
        assert (await http.post(f"{urls[DataPath.COLOCATED]}/v1/completions",
                                json={"model": "no-such-model", "prompt": "x"})).status_code == 404
        body = {"model": MODEL, "prompt": "I leave early", "max_tokens": 400, "stream": True, "ignore_eos": True}
        async with http.stream("POST", f"{urls[DataPath.COLOCATED]}/v1/completions", json=body) as response:
            async for line in response.aiter_lines():
                if line.startswith("data: {"):
                    break


async def _stream_across_migrations(url: str, controller, prometheus: str, moves: int = 3) -> None:
    """A stream the test moves between the decode and the colocated replica. Each move
    waits until the stream runs on its holder (after the prefill handoff, or the move
    before); the second waits until Prometheus has scraped the first (its stage count at
    the source and its downtime at the front door), so the migration histograms rise
    across scrapes. Only one such wait: a wait per move could outlast the stream."""
    table = await controller.routing_table.remote()
    [decode_id] = [r.replica_id for r in table.snapshot.serving(Role.DECODE)]
    [colocated_id] = [r.replica_id for r in table.snapshot.serving(Role.COLOCATED)]
    holder, other = (decode_id, table.actors[decode_id]), (colocated_id, table.actors[colocated_id])
    body = {"model": MODEL, "prompt": "migrate me " * 60, "max_tokens": 1800, "temperature": 0,
            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}

    async def scraped(count: int) -> bool:
        async with httpx.AsyncClient(timeout=30) as http:
            return all([await _has_data(http, prometheus, f"sum({family}) >= {count}")
                        for family in ("ray_tide_migration_stages_count", "ray_tide_migration_downtime_seconds_count")])

    async def runs_on(actor) -> bool:
        return (await actor.stats.remote()).num_running > 0

    async def move_around():
        nonlocal holder, other
        for i, mode in enumerate(("pre_copy", "stop_and_copy", "pre_copy")[:moves]):
            await asyncio.sleep(1.0)
            await wait_for(lambda: runs_on(holder[1]), 60, f"the stream to run on {holder[0]}")
            report = await holder[1].migrate_out.remote(other[0], other[1], mode)
            assert report.outcome == "migrated", report
            holder, other = other, holder
            if i == 0:
                await wait_for(lambda: scraped(1), 60, "the first migration in Prometheus")

    usage = None
    async with httpx.AsyncClient(timeout=120) as http:
        async with http.stream("POST", f"{url}/v1/completions", json=body) as response:
            mover = None
            async for line in response.aiter_lines():
                if line.startswith("data: {"):
                    mover = mover or asyncio.create_task(move_around())
                    usage = json.loads(line.removeprefix("data: ")).get("usage") or usage
    await mover
    assert usage["completion_tokens"] == 1800


async def test_every_dashboard_panel_returns_data(prometheus, openai_urls, controller, client):
    await wait_until_serving(controller)
    await prefill_then_decode(client, greedy_request(prompt_of(100, seed=77)), MediumKind.SHARED_MEMORY,
                              break_handle, on_failure=TransferFailurePolicy.RECOMPUTE)
    await _stream_through_replica_loss(openai_urls[DataPath.DISAGGREGATED], controller)
    await _traffic(openai_urls)
    await _stream_across_migrations(openai_urls[DataPath.DISAGGREGATED], controller, prometheus)
    async with httpx.AsyncClient(timeout=30) as http:
        for family in ("ray_tide_ingress_replays_total", "ray_tide_ingress_client_disconnects_total",
                       "ray_tide_kv_transfer_recompute_fallbacks_total", 'ray_tide_controller_actions_total{kind="replace"}',
                       'ray_vllm_time_to_first_token_seconds_count{role="ingress"}',
                       'ray_tide_device_energy_joules_total{backend="emulated"}',
                       "ray_tide_migration_downtime_seconds_count >= 2"):
            await wait_for(lambda: _has_data(http, prometheus, family), 60, f"{family} in Prometheus")
        await asyncio.sleep(3 * PROMETHEUS.scrape_interval_s)

        panels = {}
        for board in load_generated():
            variables = variable_values(board)
            for panel in panel_queries(board):
                if panel.panel in PANELS_AFTER_A_DROP:
                    continue  # no group drops in this cluster: checked in test_parameter_drop.py
                panels[f"{panel.dashboard} / {panel.panel} [{panel.ref_id}]"] = expand(panel.expr, variables,
                                                                                     rate_interval="5m")
        # Ray's metrics agent drops a gauge not re-reported within two report intervals
        # (2 s here), which a loaded two-core machine can miss now and then: a panel
        # without data is asked again for a while before it counts as a failure.
        failures = {name: await _panel_problem(http, prometheus, expr) for name, expr in panels.items()}
        deadline = time.monotonic() + 60
        while any(failures.values()) and time.monotonic() < deadline:
            await asyncio.sleep(PROMETHEUS.scrape_interval_s)
            for name in [n for n, problem in failures.items() if problem]:
                failures[name] = await _panel_problem(http, prometheus, panels[name])
    assert len(panels) >= 40
    failures = [f"{name}: {problem}" for name, problem in failures.items() if problem]
    assert not failures, "panels without data:\n" + "\n".join(failures)


def test_exported_families_pass_promtool(prometheus):
    exposition = "".join(httpx.get(f"http://{target}/metrics", timeout=10).text for target in ray_metrics_targets())
    ours = [RAY_IDENTITY_LABELS.sub("", line).replace(",}", "}").replace("{}", "")
            for line in exposition.splitlines()
            if re.match(r"(# (HELP|TYPE) )?ray_(tide|vllm)_", line)]
    assert any(line.startswith("ray_tide_") for line in ours) and any(line.startswith("ray_vllm_") for line in ours)
    result = subprocess.run(["promtool", "check", "metrics"], input="\n".join(ours) + "\n",
                            capture_output=True, text=True, timeout=60)
    problems = [line for line in (result.stdout + result.stderr).splitlines() if line and line not in UPSTREAM_LINT]
    assert not problems, "\n".join(problems)
