"""The load generator's pure parts (workload mapping, burst parsing, error kinds, report
arithmetic on hand-made timings), its client against small local HTTP servers that answer,
fail and cut streams for real, and the CLI against a closed port and bad input."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from bench.loadgen.__main__ import main
from bench.loadgen.client import (
    HTTPStatusFailure,
    RequestResult,
    StreamCut,
    StreamErrorEvent,
    Target,
    classify,
    error_message,
    stream_completion,
)
from bench.loadgen.events import EventsError, MarkedEvent, from_record, in_window, read_events_file
from bench.loadgen.plot import in_flight_curve, plot_distributions, plot_timeline
from bench.loadgen.report import build_report, json_safe, summary_text
from bench.loadgen.runner import RunResult
from bench.loadgen.workload import (
    WorkloadError,
    WorkloadSpec,
    build_requests,
    burst_durations,
    length_table,
    parse_burst,
    parse_vocab_range,
    prompt_token_ids,
)
from sim.metrics import SLO
from sim.workload import SimRequest, burst_steps, from_trace, gamma_arrivals, tiled_trace

REPO = Path(__file__).resolve().parents[2]


# ---- workload mapping ----

def test_burst_points_become_steps_ending_at_the_duration():
    assert parse_burst("0:2, 10:8,20:2") == ((0.0, 2.0), (10.0, 8.0), (20.0, 2.0))
    assert burst_durations(parse_burst("0:2,10:8,20:2"), 30.0) == [(10.0, 2.0), (10.0, 8.0), (10.0, 2.0)]
    # A first step after 0 starts with a silent one; a rate-0 last step is an explicit end.
    assert burst_durations(parse_burst("5:3,15:0"), None) == [(5.0, 0.0), (10.0, 3.0)]


@pytest.mark.parametrize("text", ["", "abc", "0:2,10", "0:x", "0:2:3", "10:2,5:1", "0:2,0:3", "-1:2", "0:-2",
                                  "0:inf", "nan:1"])
def test_malformed_burst_is_refused(text):
    with pytest.raises(WorkloadError, match="--burst"):
        parse_burst(text)


def test_burst_last_step_needs_an_end():
    with pytest.raises(WorkloadError, match="needs an end"):
        burst_durations(parse_burst("0:2"), None)
    with pytest.raises(WorkloadError, match="at or after"):
        burst_durations(parse_burst("0:2,30:4"), 30.0)


def test_trace_workload_is_the_time_scaled_trace_cut_at_the_duration():
    requests = build_requests(WorkloadSpec("conv", time_scale=2.0, max_duration_s=20.0, max_model_len=None))
    expected = from_trace("conv", 2.0, 20.0)
    assert [(r.arrival_s, r.prompt_tokens, r.output_tokens) for r in requests] == \
        [(r.arrival_s, r.prompt_tokens, r.output_tokens) for r in expected]
    assert requests[-1].arrival_s <= 20.0 and [r.request_id for r in requests] == list(range(len(requests)))
    # Twice as fast: the first 20 s hold the trace's first 40 s.
    assert len(requests) == len(from_trace("conv", 1.0, 40.0))


def test_trace_lengths_scale_and_clip_to_the_model():
    requests = build_requests(WorkloadSpec("code", length_scale=0.5, max_model_len=512, max_duration_s=60.0))
    raw = from_trace("code", 1.0, 60.0)
    assert len(requests) == len(raw)
    for r, original in zip(requests, raw, strict=True):
        assert r.prompt_tokens + r.output_tokens <= 512 and r.prompt_tokens >= 1 and r.output_tokens >= 1
        if round(original.prompt_tokens * 0.5) + round(original.output_tokens * 0.5) <= 512:
            assert (r.prompt_tokens, r.output_tokens) == (max(1, round(original.prompt_tokens * 0.5)),
                                                          max(1, round(original.output_tokens * 0.5)))


def test_trace_at_a_rate_is_the_tiled_trace():
    requests = build_requests(WorkloadSpec("code", rate=7.0, max_duration_s=30.0, seed=3, max_model_len=2048))
    expected = tiled_trace("code", 7.0, 30.0, seed=3, max_total=2048)
    assert [(r.arrival_s, r.prompt_tokens, r.output_tokens) for r in requests] == \
        [(r.arrival_s, r.prompt_tokens, r.output_tokens) for r in expected]


def test_trace_with_other_lengths_keeps_its_arrivals():
    requests = build_requests(WorkloadSpec("conv", lengths="16,4", max_duration_s=10.0))
    assert [r.arrival_s for r in requests] == [r.arrival_s for r in from_trace("conv", 1.0, 10.0)]
    assert {(r.prompt_tokens, r.output_tokens) for r in requests} == {(16, 4)}


def test_poisson_and_gamma_are_the_simulator_streams_bounded_in_count():
    table = length_table("conv")
    poisson = build_requests(WorkloadSpec("poisson", rate=5.0, num_requests=40, seed=2, max_duration_s=None))
    assert poisson == gamma_arrivals(5.0, 1.0, 40, table, seed=2, max_total=2048)
    gamma = build_requests(WorkloadSpec("gamma", rate=5.0, cv=3.0, num_requests=40, seed=2, max_duration_s=None))
    assert gamma == gamma_arrivals(5.0, 3.0, 40, table, seed=2, max_total=2048)
    # Poisson ignores --cv.
    assert build_requests(WorkloadSpec("poisson", rate=5.0, cv=3.0, num_requests=40, seed=2)) == poisson


def test_poisson_bounded_in_time_only_fills_the_duration():
    requests = build_requests(WorkloadSpec("poisson", rate=20.0, max_duration_s=50.0, lengths="8,4"))
    assert requests[-1].arrival_s <= 50.0
    assert len(requests) == pytest.approx(1000, rel=0.15)
    assert requests[-1].arrival_s > 45.0


def test_count_and_time_bounds_both_cut():
    requests = build_requests(WorkloadSpec("poisson", rate=10.0, num_requests=500, max_duration_s=5.0))
    assert 0 < len(requests) < 500 and requests[-1].arrival_s <= 5.0
    assert len(build_requests(WorkloadSpec("conv", num_requests=7, max_duration_s=60.0))) == 7


def test_burst_workload_is_burst_steps():
    requests = build_requests(WorkloadSpec("burst", burst=parse_burst("0:2,10:20,20:2"), max_duration_s=30.0,
                                           lengths="32,8", seed=4))
    table = length_table("32,8")
    expected = burst_steps([(10.0, 2.0), (10.0, 20.0), (10.0, 2.0)], table, seed=4, max_total=2048)
    assert requests == expected
    per_step = np.histogram([r.arrival_s for r in requests], bins=[0, 10, 20, 30])[0]
    assert per_step[1] > 5 * max(per_step[0], per_step[2], 1) / 2


def test_fixed_lengths_scale():
    table = length_table("100,40", scale=0.25)
    assert (table.prompt_tokens.tolist(), table.output_tokens.tolist()) == ([25], [10])


@pytest.mark.parametrize("spec, message", [
    (WorkloadSpec("sharegpt"), "unknown workload"),
    (WorkloadSpec("poisson", num_requests=5), "needs --rate"),
    (WorkloadSpec("gamma", rate=1.0), "needs --num-requests or --max-duration-s"),
    (WorkloadSpec("gamma", rate=1.0, cv=0.0, num_requests=5), "--cv"),
    (WorkloadSpec("conv", rate=2.0, time_scale=2.0, max_duration_s=5.0), "not both"),
    (WorkloadSpec("conv", rate=2.0), "needs --max-duration-s"),
    (WorkloadSpec("burst", max_duration_s=5.0), "needs --burst"),
    (WorkloadSpec("poisson", rate=1.0, num_requests=5, burst=((0.0, 1.0),)), "--burst is for"),
    (WorkloadSpec("poisson", rate=1.0, num_requests=5, lengths="10"), "--lengths"),
    (WorkloadSpec("poisson", rate=1.0, num_requests=5, lengths="0,4"), "--lengths"),
    (WorkloadSpec("poisson", rate=-1.0, num_requests=5), "--rate"),
    (WorkloadSpec("conv", time_scale=0.0), "--time-scale"),
])
def test_bad_workload_input_is_one_clear_error(spec, message):
    with pytest.raises(WorkloadError, match=message):
        build_requests(spec)


def test_vocab_range_and_prompt_ids():
    assert parse_vocab_range("10..2000") == (10, 2000)
    assert parse_vocab_range("5:6") == (5, 6)
    for text in ("10", "a..b", "20..10", "-1..5"):
        with pytest.raises(WorkloadError, match="--vocab-range"):
            parse_vocab_range(text)
    ids = prompt_token_ids(3, 500, seed=1, vocab_range=(10, 20))
    assert len(ids) == 500 and min(ids) >= 10 and max(ids) < 20 and all(type(i) is int for i in ids)
    assert ids == prompt_token_ids(3, 500, seed=1, vocab_range=(10, 20))
    assert ids != prompt_token_ids(4, 500, seed=1, vocab_range=(10, 20))


# ---- error kinds ----

def test_error_classification():
    request = httpx.Request("POST", "http://x/v1/completions")
    assert classify(HTTPStatusFailure(503, "busy"), streaming=False) == "http_503"
    assert classify(httpx.ConnectError("refused", request=request), streaming=False) == "connection"
    assert classify(httpx.ConnectTimeout("slow", request=request), streaming=False) == "connection"
    assert classify(httpx.ReadTimeout("slow", request=request), streaming=True) == "timeout"
    assert classify(httpx.RemoteProtocolError("peer closed", request=request), streaming=True) == "stream_cut"
    assert classify(httpx.ReadError("reset", request=request), streaming=True) == "stream_cut"
    assert classify(httpx.RemoteProtocolError("bad status line", request=request), streaming=False) == "connection"
    assert classify(StreamCut("ended"), streaming=True) == "stream_cut"
    assert classify(StreamErrorEvent("engine died"), streaming=True) == "stream_error"
    assert classify(ValueError("bad json"), streaming=True) == "other"


def test_error_message_of_openai_and_other_bodies():
    body = {"error": {"message": "The model `x` does not exist.", "type": "NotFoundError", "code": 404}}
    assert error_message(json.dumps(body).encode()) == "The model `x` does not exist."
    assert error_message(b'{"error": "plain"}') == "plain"
    assert error_message(b"Internal Server Error") == "Internal Server Error"
    assert error_message(b"") == "(empty body)"


# ---- report arithmetic on hand-made timings ----

def _result(i, sent, chunks, finish, usage=None, error=None):
    tokens = [1] * len(chunks)
    r = RequestResult(SimRequest(i, sent, 10, usage if usage is not None else sum(tokens)), sent_s=sent,
                      chunk_s=list(chunks), chunk_tokens=tokens, finish_s=finish, finish_reason="length",
                      usage_prompt_tokens=10, usage_completion_tokens=usage, ended_s=finish)
    if error:
        r.finish_s, r.finish_reason = -1.0, None
        r.fail(*error)
    return r


def _hand_made_run() -> RunResult:
    results = [
        # TTFT 0.25, TPOT (1 - 0.25) / 2 = 0.375, E2E 1, ITL 0.25 0.25: meets the SLO.
        _result(0, 0.0, [0.25, 0.5, 0.75], 1.0, usage=3),
        # TTFT 0.5, TPOT 0.5 (misses 0.4), E2E 1, ITL 0.5.
        _result(1, 1.0, [1.5, 2.0], 2.0, usage=2),
        # TTFT 2 (misses 1), one token: no TPOT, E2E 2.
        _result(2, 2.0, [4.0], 4.0, usage=1),
        _result(3, 3.0, [], -1.0, error=("connection", "ConnectError: refused")),
        _result(4, 3.5, [3.75], -1.0, error=("stream_cut", "stream ended before [DONE] after 1 tokens")),
        _result(5, 3.5, [], -1.0, error=("connection", "ConnectError: refused")),
    ]
    results[3].ended_s = results[5].ended_s = 3.5
    results.append(RequestResult(SimRequest(6, 9.0, 10, 5)))  # never sent (cut by the duration)
    return RunResult(results, started_at_wall_s=1_700_000_000.0, duration_s=4.0, send_span_s=3.5)


def test_report_percentiles_attainment_and_goodput_exact():
    report = build_report(_hand_made_run(), SLO(ttft_s=1.0, tpot_s=0.4))
    assert report["counts"] == {"planned": 7, "sent": 6, "not_sent": 1, "completed": 3, "failed": 3,
                                "output_length_mismatch": 0}
    # numpy's linear interpolation: TTFT [0.25, 0.5, 2.0].
    assert report["ttft_s"] == pytest.approx({"p50": 0.5, "p90": 0.5 + 0.8 * 1.5, "p99": 0.5 + 0.98 * 1.5}, rel=1e-12)
    assert report["tpot_s"] == pytest.approx({"p50": 0.4375, "p90": 0.375 + 0.9 * 0.125,
                                              "p99": 0.375 + 0.99 * 0.125}, rel=1e-12)
    assert report["itl_s"] == pytest.approx({"p50": 0.25, "p90": 0.25 + 0.8 * 0.25, "p99": 0.25 + 0.98 * 0.25},
                                            rel=1e-12)
    assert report["e2e_s"] == pytest.approx({"p50": 1.0, "p90": 1.8, "p99": 1.98}, rel=1e-12)
    # One of six sent requests met both SLOs, in a 4 s run.
    assert report["slo_attainment"] == pytest.approx(1 / 6)
    assert report["goodput_rps"] == 0.25
    assert report["tokens"] == {"prompt": 30, "output": 6}
    assert report["throughput"]["output_tokens_per_s"] == 1.5
    assert report["throughput"]["offered_rps"] == pytest.approx(6 / 3.5)
    assert report["send_lag_s"] == {"p50": 0.0, "p90": 0.0, "p99": 0.0, "max": 0.0}
    assert report["errors"] == {
        "connection": {"count": 2, "examples": ["ConnectError: refused"]},
        "stream_cut": {"count": 1, "examples": ["stream ended before [DONE] after 1 tokens"]},
    }
    rows = report["requests"]
    assert rows[0]["ttft_s"] == 0.25 and rows[0]["tpot_s"] == 0.375
    assert rows[0]["e2e_s"] == 1.0 and rows[0]["ok"] and rows[0]["usage_completion_tokens"] == 3
    assert rows[2]["tpot_s"] is None and rows[3]["error_kind"] == "connection" and rows[6]["sent_s"] is None
    # A looser TPOT SLO lets request 1 in too.
    assert build_report(_hand_made_run(), SLO(1.0, 0.5))["goodput_rps"] == 0.5


def test_report_counts_a_short_output_and_is_strict_json():
    run = RunResult([_result(0, 0.0, [0.5], 0.5, usage=1)], 0.0, 0.5, 0.0)
    # Asked for 8, got 1 (an EOS); scheduled at -0.25: sent 0.25 s late.
    run.results[0].request = SimRequest(0, -0.25, 10, 8)
    report = build_report(run, SLO())
    assert report["counts"]["output_length_mismatch"] == 1
    assert report["send_lag_s"] == {"p50": 0.25, "p90": 0.25, "p99": 0.25, "max": 0.25}
    assert "sent late (send lag P99 250 ms" in summary_text(report)
    assert np.isnan(report["tpot_s"]["p50"]) and np.isnan(report["throughput"]["offered_rps"])
    text = json.dumps(json_safe(report), allow_nan=False)
    assert json.loads(text)["tpot_s"] == {"p50": None, "p90": None, "p99": None}


def test_in_flight_curve():
    times, counts = in_flight_curve(_hand_made_run().results, 4.0)
    # 0-1 s request 0, 1-2 s request 1, 2-4 s request 2, with 3 from 3 to 3.5 s and the
    # unfinished 4 from 3.5 s to the end.
    assert list(times) == [0.0, 1.0, 2.0, 3.0, 3.5, 4.0]
    assert list(counts) == [1, 1, 1, 2, 2, 0]


# ---- events ----

def test_events_file_epoch_and_relative_times(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join([
        json.dumps({"at_s": 1_700_000_012.5, "kind": "migration", "reason": "load_balance", "replica": "decode-0"}),
        "# a comment", "",
        json.dumps({"at_s": 3.0, "kind": "CLOCK", "reason": "slo", "replica": "prefill-0", "duration_s": 0.5}),
        json.dumps({"at_s": 99.0, "kind": "drop", "reason": "memory", "replica": "decode-1"}),
    ]))
    events = read_events_file(path, run_started_wall_s=1_700_000_000.0)
    assert events[0] == MarkedEvent(12.5, "migrate", "load_balance", "decode-0")
    assert events[1] == MarkedEvent(3.0, "clock", "slo", "prefill-0", 0.5)
    assert [e.kind for e in in_window(events, end_s=20.0)] == ["clock", "migrate"]


def test_controller_event_records_are_marked():
    from orchestrator.events import ActionKind

    record = {"kind": ActionKind.REPLACE, "reason": "dead", "replica": "decode-0", "pool": "decode", "outcome": "ok",
              "duration_s": 2.0, "at_s": 1_700_000_030.0}
    assert from_record(record, 1_700_000_000.0) == MarkedEvent(30.0, "replace", "dead", "decode-0", 2.0, "ok")


@pytest.mark.parametrize("content, message", [("{not json", "not JSON"), ("[1, 2]", "expected an object"),
                                              ('{"kind": "drop"}', "at_s")])
def test_malformed_events_file(tmp_path, content, message):
    path = tmp_path / "events.jsonl"
    path.write_text(content)
    with pytest.raises(EventsError, match=message):
        read_events_file(path, 0.0)


def test_plots_with_events_are_written(tmp_path):
    run = _hand_made_run()
    events = [MarkedEvent(1.2, "migrate", "load_balance", "decode-0", 0.3), MarkedEvent(2.5, "replace", "dead", "p-0"),
              MarkedEvent(3.0, "clock", "slo", "decode-1"), MarkedEvent(3.1, "something-new", "", "")]
    plot_timeline(run.results, events, SLO(1.0, 0.4), tmp_path / "timeline.png", "hand-made", run.duration_s)
    plot_distributions(run.results, tmp_path / "cdf.png", "hand-made")
    for name in ("timeline.png", "cdf.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---- the client against real local HTTP servers ----

def _sse(*chunks: dict, done: bool = True) -> bytes:
    body = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks)
    return body + (b"data: [DONE]\n\n" if done else b"")


def _choice(ids, finish=None):
    return {"choices": [{"index": 0, "text": "x" * len(ids), "token_ids": ids, "finish_reason": finish}]}


async def _serve_once(answer: bytes):
    """A local server that answers every connection with `answer` (raw HTTP) and closes."""

    async def handle(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"


def _http(status: str, body: bytes, content_type: bytes = b"text/event-stream", length: bool = True) -> bytes:
    head = b"HTTP/1.1 " + status.encode() + b"\r\nContent-Type: " + content_type + b"\r\nConnection: close\r\n"
    if length:
        head += b"Content-Length: " + str(len(body)).encode() + b"\r\n"
    return head + b"\r\n" + body


async def _one(answer: bytes, output_tokens: int = 3) -> RequestResult:
    server, url = await _serve_once(answer)
    try:
        async with httpx.AsyncClient() as http:
            result = RequestResult(SimRequest(0, 0.0, 4, output_tokens))
            return await stream_completion(http, Target(url, "m"), result, [11, 12, 13, 14], started=0.0)
    finally:
        server.close()


async def test_client_reads_a_complete_stream():
    body = _sse(_choice([5]), _choice([6, 7], finish="length"),
                {"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}})
    result = await _one(_http("200 OK", body))
    assert result.ok and result.error_kind is None
    assert result.chunk_tokens == [1, 2] and result.usage_completion_tokens == 3 and result.finish_reason == "length"
    assert result.sent_s <= result.chunk_s[0] <= result.chunk_s[1] <= result.finish_s <= result.ended_s


async def test_client_keeps_the_openai_error_message_of_an_http_error():
    body = json.dumps({"error": {"message": "server overloaded, retry later", "type": "ServiceUnavailable",
                                 "code": 503}}).encode()
    result = await _one(_http("503 Service Unavailable", body, b"application/json"))
    assert (result.error_kind, result.error_message) == ("http_503", "server overloaded, retry later")
    assert not result.ok and result.ended_s >= 0


async def test_client_sees_a_cut_stream_and_an_error_event():
    cut = await _one(_http("200 OK", _sse(_choice([5]), done=False), length=False))
    assert cut.error_kind == "stream_cut" and "before [DONE]" in cut.error_message and cut.tokens_received == 1
    # Promised more bytes than it sent: the connection closes mid-body.
    truncated = _http("200 OK", _sse(_choice([5]), _choice([6], finish="length")))
    short = await _one(truncated[:-20])
    assert short.error_kind == "stream_cut"
    error = await _one(_http("200 OK", _sse(_choice([5]), {"error": {"message": "engine died", "code": 500}})))
    assert (error.error_kind, error.error_message) == ("stream_error", "engine died")


# ---- the CLI ----

def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_closed_port_every_request_is_a_connection_error(tmp_path, capsys):
    events = tmp_path / "events.jsonl"
    events.write_text(json.dumps({"at_s": 0.0, "kind": "replace", "reason": "test", "replica": "r-0"}) + "\n")
    code = main(["--base-url", f"http://127.0.0.1:{_closed_port()}/v1", "--model", "m", "--workload", "poisson",
                 "--rate", "50", "--num-requests", "6", "--lengths", "8,4", "--out-dir", str(tmp_path / "out"),
                 "--events-file", str(events), "--no-progress"])
    assert code == 1
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["counts"]["sent"] == 6 and report["counts"]["failed"] == 6
    assert list(report["errors"]) == ["connection"] and report["errors"]["connection"]["count"] == 6
    assert report["events"][0]["kind"] == "replace"
    assert (tmp_path / "out" / "timeline.png").exists()
    err = capsys.readouterr().err
    assert "all 6 requests failed (connection 6)" in err


@pytest.mark.parametrize("args, message", [
    (["--workload", "sharegpt"], "unknown workload 'sharegpt'"),
    (["--workload", "burst", "--burst", "0:2,x"], "--burst"),
    (["--workload", "poisson", "--rate", "1", "--num-requests", "1", "--model", "m", "--events-file", "/nonexistent"],
     "--events-file"),
    (["--workload", "poisson", "--rate", "1", "--num-requests", "x"], "invalid int value"),
    (["--workload", "poisson", "--rate", "1", "--num-requests", "1"], "cannot reach"),
])
def test_bad_input_is_one_line_and_exit_2(args, message, tmp_path):
    base = ["--base-url", f"http://127.0.0.1:{_closed_port()}/v1", "--out-dir", str(tmp_path)]
    done = subprocess.run([sys.executable, "-m", "bench.loadgen", *base, *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("loadgen: error:") and message in lines[0], done.stderr
    assert "Traceback" not in done.stderr
