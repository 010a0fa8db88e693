"""The run's JSON report: counts, errors by kind, TTFT/TPOT/ITL/E2E percentiles, SLO
attainment and goodput, per-request rows.

Definitions (vLLM's `benchmarks/serve` ones; times from the request's send):
TTFT: first token; E2E: the stream's end; TPOT: (E2E - TTFT) / (output tokens - 1), for
requests of more than one token; ITL: the gaps between successive chunks that carry tokens.
The SLO arithmetic is the simulator's (`sim.metrics.latency_summary`) on records built from
the measured times: a request meets the SLO when it completed with TTFT <= the TTFT SLO and
TPOT <= the TPOT SLO; attainment is the share of sent requests that did, goodput
(DistServe) how many did per second of the run (time 0 to the end of its last request).
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from bench.loadgen.client import RequestResult
from bench.loadgen.events import MarkedEvent
from bench.loadgen.runner import RunResult
from sim.metrics import SLO, LogHistogram, latency_summary, percentiles
from sim.sequence import RequestRecord
from sim.workload import SimRequest

# Error messages kept per kind.
MAX_EXAMPLES = 3
# A load generator later than this behind its schedule (P99) is warned about.
SEND_LAG_WARNING_S = 0.05


def record_of(result: RequestResult) -> RequestRecord:
    """The simulator's record of a sent request: arrival = its send, the output tokens it
    got; unfinished (finish_s < 0) when it failed."""
    r = result.request
    request = SimRequest(r.request_id, result.sent_s, r.prompt_tokens, result.output_tokens if result.ok else r.output_tokens)
    if not result.ok:
        return RequestRecord(request)
    return RequestRecord(request, first_token_s=result.chunk_s[0] if result.chunk_s else result.finish_s,
                         finish_s=result.finish_s)


def inter_token_latencies(results: list[RequestResult]) -> np.ndarray:
    return np.array([gap for r in results if r.ok for gap in np.diff(r.chunk_s)], dtype=float)


def errors_by_kind(results: list[RequestResult]) -> dict[str, dict]:
    errors: dict[str, dict] = {}
    for r in results:
        if r.failed:
            entry = errors.setdefault(r.error_kind, {"count": 0, "examples": []})
            entry["count"] += 1
            if len(entry["examples"]) < MAX_EXAMPLES and r.error_message not in entry["examples"]:
                entry["examples"].append(r.error_message)
    return dict(sorted(errors.items(), key=lambda item: -item[1]["count"]))


def latency_metrics(results: list[RequestResult], slo: SLO, duration_s: float) -> dict:
    sent = [r for r in results if r.sent]
    summary = latency_summary([record_of(r) for r in sent], LogHistogram(), slo, duration_s)
    return {
        "ttft_s": summary["ttft_s"], "tpot_s": summary["tpot_s"],
        # Exact, not the simulator's 1 %-bin histogram: there are few enough here.
        "itl_s": percentiles(inter_token_latencies(sent)),
        "e2e_s": summary["e2e_s"],
        "slo": summary["slo"], "slo_attainment": summary["slo_attainment"], "goodput_rps": summary["goodput_rps"],
    }


def send_lag(results: list[RequestResult]) -> dict[str, float]:
    """How late requests were sent against their schedule: a busy client machine (or
    event loop) delays sends, and its delays are in the measured latencies too."""
    lags = np.array([r.sent_s - r.request.arrival_s for r in results if r.sent], dtype=float)
    return {**percentiles(lags), "max": float(lags.max()) if len(lags) else float("nan")}


def row(result: RequestResult) -> dict:
    r = result.request
    ok = result.ok
    first = result.chunk_s[0] if result.chunk_s else None
    tpot = None
    if ok and first is not None and result.output_tokens > 1:
        tpot = (result.finish_s - first) / (result.output_tokens - 1)
    return {
        "id": r.request_id, "scheduled_s": r.arrival_s, "sent_s": result.sent_s if result.sent else None,
        "prompt_tokens": r.prompt_tokens, "output_tokens": r.output_tokens,
        "usage_prompt_tokens": result.usage_prompt_tokens, "usage_completion_tokens": result.usage_completion_tokens,
        "tokens_received": result.tokens_received, "num_chunks": len(result.chunk_s),
        "ttft_s": first - result.sent_s if first is not None and result.sent else None,
        "tpot_s": tpot, "e2e_s": result.finish_s - result.sent_s if ok else None,
        "finish_reason": result.finish_reason, "ok": ok, "error_kind": result.error_kind, "error": result.error_message,
    }


def build_report(run: RunResult, slo: SLO, config: dict | None = None, events: list[MarkedEvent] = (),
                 events_source: list[str] = ()) -> dict:
    results = run.results
    sent = [r for r in results if r.sent]
    done = [r for r in sent if r.ok]
    failed = [r for r in sent if r.failed]
    output_tokens = sum(r.output_tokens for r in done)
    return {
        "config": config or {},
        "started_at_wall_s": run.started_at_wall_s,
        "duration_s": run.duration_s,
        "send_span_s": run.send_span_s,
        "counts": {
            "planned": len(results), "sent": len(sent), "not_sent": len(results) - len(sent),
            "completed": len(done), "failed": len(failed),
            # Completed with another number of tokens than asked (a server without
            # ignore_eos stops at EOS).
            "output_length_mismatch": sum(1 for r in done if r.output_tokens != r.request.output_tokens),
        },
        "errors": errors_by_kind(sent),
        "finish_reasons": dict(Counter(r.finish_reason for r in done)),
        "tokens": {"prompt": sum(r.request.prompt_tokens for r in done), "output": output_tokens},
        "throughput": {
            "offered_rps": len(sent) / run.send_span_s if run.send_span_s > 0 else float("nan"),
            "completed_rps": len(done) / run.duration_s if run.duration_s > 0 else float("nan"),
            "output_tokens_per_s": output_tokens / run.duration_s if run.duration_s > 0 else float("nan"),
        },
        **latency_metrics(results, slo, run.duration_s),
        "send_lag_s": send_lag(results),
        "events_source": list(events_source),
        "events": [e.to_json() for e in events],
        "requests": [row(r) for r in results],
    }


def summary_text(report: dict) -> str:
    """A few lines for the terminal."""
    c = report["counts"]

    def ms(metric: str) -> str:
        values = report[metric]
        return " ".join(f"{k} {v * 1000:.1f}" for k, v in values.items()) + " ms"

    lines = [
        (f"requests: {c['sent']} sent of {c['planned']} planned, {c['completed']} completed, {c['failed']} failed"
         f" in {report['duration_s']:.1f}s (offered {report['throughput']['offered_rps']:.2f} req/s,"
         f" {report['throughput']['output_tokens_per_s']:.1f} output tok/s)"),
        f"TTFT {ms('ttft_s')}", f"TPOT {ms('tpot_s')}", f"ITL  {ms('itl_s')}", f"E2E  {ms('e2e_s')}",
        (f"SLO TTFT <= {report['slo']['ttft_s']:g}s, TPOT <= {report['slo']['tpot_s']:g}s: attainment"
         f" {report['slo_attainment']:.1%}, goodput {report['goodput_rps']:.2f} req/s"),
    ]
    for kind, entry in report["errors"].items():
        lines.append(f"errors {kind}: {entry['count']} (e.g. {entry['examples'][0]})")
    if report["send_lag_s"]["p99"] > SEND_LAG_WARNING_S:
        lines.append(f"warning: requests were sent late (send lag P99 {report['send_lag_s']['p99'] * 1000:.0f} ms, max "
                     f"{report['send_lag_s']['max'] * 1000:.0f} ms): this machine is short of CPU for the client; "
                     "latencies include its delays")
    if c["output_length_mismatch"]:
        lines.append(f"warning: {c['output_length_mismatch']} completed requests got another output length than asked")
    if report["events"]:
        kinds = Counter(e["kind"] for e in report["events"])
        lines.append("events: " + ", ".join(f"{k} x{n}" for k, n in sorted(kinds.items())))
    return "\n".join(lines)


def json_safe(value):
    """NaN and infinities (no data) as null: strict JSON."""
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value
