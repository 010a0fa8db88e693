"""Open-loop load on an OpenAI-compatible endpoint (streamed /v1/completions): Azure 2023
traces (time-scaled) or Poisson, Gamma and burst arrivals; a JSON report and PNGs.

    .venv/bin/python -m bench.loadgen --base-url http://127.0.0.1:8000/v1 --workload conv \\
        --time-scale 0.5 --length-scale 0.25 --max-duration-s 30

Exit status: 0 every sent request completed, 1 some failed (the report is written), 2 bad
input. See docs/loadgen.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import sys
import time
from pathlib import Path

import httpx

from bench.loadgen.client import Target
from bench.loadgen.events import (
    EventsError,
    MarkedEvent,
    check_events_file,
    controller_events,
    from_record,
    in_window,
    read_events_file,
)
from bench.loadgen.report import build_report, json_safe, summary_text
from bench.loadgen.runner import Bounds, run_open_loop
from bench.loadgen.workload import (
    WORKLOADS,
    WorkloadError,
    WorkloadSpec,
    build_requests,
    parse_burst,
    parse_vocab_range,
)
from sim.metrics import SLO

RESULTS_DIR = Path(__file__).resolve().parents[1] / "results"


class InputError(Exception):
    """Bad input: one line, exit status 2."""


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str):
        raise InputError(message)


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m bench.loadgen", description=__doc__,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    target = p.add_argument_group("endpoint")
    target.add_argument("--base-url", required=True, help="the API's base URL, with /v1 (http://127.0.0.1:8000/v1)")
    target.add_argument("--model", help="model name (default: the first one /models lists)")
    target.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"), help="Bearer key (default: $OPENAI_API_KEY)")
    target.add_argument("--temperature", type=float, default=0.0)
    target.add_argument("--no-vllm-extensions", action="store_true",
                        help="send neither ignore_eos nor return_token_ids (for servers that reject them; output "
                             "lengths are then up to the model and tokens per chunk are estimated)")
    load = p.add_argument_group("workload")
    load.add_argument("--workload", required=True, help=f"one of {', '.join(WORKLOADS)}")
    load.add_argument("--rate", type=float, help="requests per second (poisson, gamma; a trace tiled to this rate)")
    load.add_argument("--cv", type=float, default=1.0, help="coefficient of variation of Gamma inter-arrivals")
    load.add_argument("--time-scale", type=float, help="trace speed-up: 2 replays it twice as fast (default 1)")
    load.add_argument("--burst", help="burst steps t0:rate0,t1:rate1,...: from second t_i on, Poisson at rate_i")
    load.add_argument("--lengths", help="conv, code or PROMPT,OUTPUT (default: a trace's own; conv for the others)")
    load.add_argument("--length-scale", type=float, default=1.0, help="multiplies prompt and output lengths")
    load.add_argument("--max-model-len", type=int, default=2048, help="prompt + output clipped to this")
    load.add_argument("--vocab-range", default="10..2000", help="prompt token ids drawn from [LO, HI)")
    load.add_argument("--seed", type=int, default=0)
    bounds = p.add_argument_group("bounds")
    bounds.add_argument("--num-requests", type=int, help="send at most this many")
    bounds.add_argument("--max-duration-s", type=float, default=60.0, help="stop sending after this (default 60)")
    bounds.add_argument("--drain-timeout-s", type=float, default=30.0,
                        help="then wait at most this for in-flight requests; the rest fail as timeout (default 30)")
    out = p.add_argument_group("report")
    out.add_argument("--slo-ttft-s", type=float, default=1.0)
    out.add_argument("--slo-tpot-s", type=float, default=0.1)
    out.add_argument("--out-dir", type=Path, help="default bench/results/loadgen-<timestamp>/")
    out.add_argument("--no-plot", action="store_true")
    out.add_argument("--no-progress", action="store_true")
    events = p.add_argument_group("control events")
    events.add_argument("--ray-address", help="Ray cluster of a Tide cluster (with --cluster-name; 'auto': local)")
    events.add_argument("--cluster-name", help="mark this Tide cluster's controller events on the timeline")
    events.add_argument("--events-file", type=Path, help="JSON lines of {at_s, kind, reason, replica} to mark")
    return p


def workload_spec(args: argparse.Namespace) -> WorkloadSpec:
    return WorkloadSpec(
        kind=args.workload, rate=args.rate, cv=args.cv, time_scale=args.time_scale,
        burst=parse_burst(args.burst) if args.burst is not None else (), lengths=args.lengths,
        length_scale=args.length_scale, max_model_len=args.max_model_len, num_requests=args.num_requests,
        max_duration_s=args.max_duration_s, seed=args.seed,
    )


def check_args(args: argparse.Namespace) -> None:
    if not args.base_url.startswith(("http://", "https://")):
        raise InputError(f"--base-url {args.base_url!r}: expected http(s)://HOST:PORT/v1")
    if not args.drain_timeout_s >= 0:
        raise InputError("--drain-timeout-s must be >= 0")
    if not (args.slo_ttft_s > 0 and args.slo_tpot_s > 0):
        raise InputError("--slo-ttft-s and --slo-tpot-s must be > 0")
    if args.ray_address and not args.cluster_name:
        raise InputError("--ray-address needs --cluster-name")
    if args.events_file is not None:
        check_events_file(args.events_file)


def served_model(base_url: str, api_key: str | None) -> str:
    """The first model `/models` lists."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    url = base_url.rstrip("/") + "/models"
    try:
        response = httpx.get(url, headers=headers, timeout=10)
    except httpx.HTTPError as exc:
        raise InputError(f"cannot reach {url} to find the model ({type(exc).__name__}: {exc}); "
                         "is the server up? (or give --model)") from None
    if response.status_code != 200:
        raise InputError(f"{url} answered {response.status_code}; give --model")
    try:
        return response.json()["data"][0]["id"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise InputError(f"{url} lists no model; give --model") from None


def gather_events(args: argparse.Namespace, started_wall_s: float, end_s: float) -> tuple[list[MarkedEvent], list[str]]:
    events: list[MarkedEvent] = []
    sources = []
    if args.events_file is not None:
        events += read_events_file(args.events_file, started_wall_s)
        sources.append(f"file:{args.events_file}")
    if args.cluster_name:
        try:
            records = controller_events(args.ray_address, args.cluster_name, started_wall_s)
        except Exception as exc:  # noqa: BLE001 - the run's results matter more than its events
            print(f"loadgen: warning: no controller events from cluster {args.cluster_name!r}: "
                  f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", file=sys.stderr)
        else:
            events += [from_record(r, started_wall_s) for r in records]
            sources.append(f"controller:{args.cluster_name}")
    return in_window(events, end_s), sources


def run(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_args(args)
    spec = workload_spec(args)
    vocab_range = parse_vocab_range(args.vocab_range)
    requests = build_requests(spec)
    if not requests:
        raise InputError("the workload has no requests within the bounds")
    model = args.model or served_model(args.base_url, args.api_key)
    target = Target(args.base_url, model, args.api_key, args.temperature, not args.no_vllm_extensions)
    bounds = Bounds(args.max_duration_s, args.drain_timeout_s)
    out_dir = args.out_dir or RESULTS_DIR / f"loadgen-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"--out-dir {out_dir}: {exc.strerror or exc}") from None
    slo = SLO(args.slo_ttft_s, args.slo_tpot_s)

    print(f"loadgen: {len(requests)} requests ({args.workload}) over {requests[-1].arrival_s:.1f}s to "
          f"{target.completions_url} ({model})", file=sys.stderr)
    result = asyncio.run(run_open_loop(requests, target, bounds, args.seed, vocab_range, progress=not args.no_progress))
    events, sources = gather_events(args, result.started_at_wall_s, result.duration_s)
    config = {
        "command": "python -m bench.loadgen " + shlex.join(sys.argv[1:] if argv is None else argv),
        **{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "api_key"},
        "model": model, "burst_steps": [list(p) for p in spec.burst], "vocab_range": list(vocab_range),
    }
    report = build_report(result, slo, config, events, sources)
    (out_dir / "report.json").write_text(json.dumps(json_safe(report), indent=1) + "\n")
    if not args.no_plot:
        from bench.loadgen.plot import plot_distributions, plot_timeline

        title = (f"{args.workload} -> {args.base_url} ({model}): {report['counts']['sent']} requests, "
                 f"{report['counts']['failed']} failed; SLO attainment {report['slo_attainment']:.0%}")
        plot_timeline(result.results, events, slo, out_dir / "timeline.png", title, result.duration_s)
        plot_distributions(result.results, out_dir / "latency_cdf.png", title)
    print(summary_text(report))
    print(f"report: {out_dir / 'report.json'}" + ("" if args.no_plot else f"; plots: {out_dir}/*.png"))
    failed, sent = report["counts"]["failed"], report["counts"]["sent"]
    if failed:
        kinds = ", ".join(f"{k} {e['count']}" for k, e in report["errors"].items())
        first = next(iter(report["errors"].values()))["examples"][0]
        share = f"all {sent}" if failed == sent else f"{failed} of {sent}"
        print(f"loadgen: {share} requests failed ({kinds}); first: {first}",
              file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        return run(argv)
    except (InputError, WorkloadError, EventsError) as exc:
        print(f"loadgen: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("loadgen: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
