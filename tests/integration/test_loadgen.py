"""The load generator against the shared Tide cluster's OpenAI front door, on both data
paths: Poisson arrivals, short outputs; every request completes with exactly the asked
number of tokens, the report's percentiles are ordered, the PNGs and the JSON are written,
and the controller's events are fetched by cluster name."""

from __future__ import annotations

import json

import pytest

from bench.loadgen.__main__ import main
from bench.loadgen.events import controller_events
from policies.routing import DataPath

pytestmark = pytest.mark.engine

MODEL = "tide-tiny"
NUM_REQUESTS = 16


@pytest.mark.parametrize("path", [DataPath.COLOCATED, DataPath.DISAGGREGATED], ids=lambda p: p.value)
def test_poisson_load_completes_with_exact_lengths(path, openai_urls, cluster_config, tmp_path):
    out = tmp_path / "out"
    code = main([
        "--base-url", f"{openai_urls[path]}/v1", "--model", MODEL, "--workload", "poisson", "--rate", "4",
        "--num-requests", str(NUM_REQUESTS), "--lengths", "conv", "--length-scale", "0.05", "--seed", "3",
        "--max-duration-s", "60", "--drain-timeout-s", "120", "--out-dir", str(out), "--no-progress",
        # The test session's Ray connection and controller (namespace = cluster name).
        "--cluster-name", cluster_config.name,
    ])
    report = json.loads((out / "report.json").read_text())
    assert code == 0, report["errors"]
    assert report["counts"] == {"planned": NUM_REQUESTS, "sent": NUM_REQUESTS, "not_sent": 0,
                                "completed": NUM_REQUESTS, "failed": 0, "output_length_mismatch": 0}
    assert report["errors"] == {}
    rows = report["requests"]
    assert len({r["output_tokens"] for r in rows}) > 1, "lengths should vary"
    for r in rows:
        assert r["ok"] and r["finish_reason"] == "length"
        assert r["usage_completion_tokens"] == r["output_tokens"] == r["tokens_received"]
        assert r["usage_prompt_tokens"] == r["prompt_tokens"]
        assert 0 < r["ttft_s"] <= r["e2e_s"]
    for metric in ("ttft_s", "tpot_s", "itl_s", "e2e_s"):
        values = report[metric]
        assert 0 < values["p50"] <= values["p90"] <= values["p99"], (metric, values)
    assert 0 <= report["slo_attainment"] <= 1 and report["goodput_rps"] >= 0
    assert report["events_source"] == [f"controller:{cluster_config.name}"]
    for name in ("timeline.png", "latency_cdf.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_controller_events_are_fetched_by_cluster_name(engines, cluster_config):
    """Since the epoch: the pools' start-up is recorded as scale events."""
    events = controller_events(None, cluster_config.name, since_wall_s=0.0)
    assert {"scale"} <= {e["kind"] for e in events}
    assert all(e["at_s"] > 1e9 and e["replica"] for e in events)
