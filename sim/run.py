"""Runs one simulation and writes its result (JSON) and timeline (PNG).

    .venv/bin/python -m sim.run --pools colocated:4 --trace conv --time-scale 4 --duration 600
    .venv/bin/python -m sim.run --pools prefill:2 decode:2 --gamma 20 --cv 4 --num-requests 5000 --migration
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from policies.routing import RoutingPolicyKind
from policies.snapshot import Role
from sim.cluster import Simulation
from sim.config import LINKS, MigrationPlan, SimConfig, SimPool
from sim.cost_model import StepCostModel
from sim.metrics import SLO
from sim.plots import plot_timeline
from sim.workload import fixed_lengths, from_trace, gamma_arrivals, trace_lengths


def parse_pool(text: str) -> SimPool:
    """`name:count` (the role is the name: prefill, decode, colocated) or `name:role:count`."""
    parts = text.split(":")
    if len(parts) == 2:
        parts = [parts[0], parts[0], parts[1]]
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"pool {text!r}: expected name:count or name:role:count")
    try:
        return SimPool(parts[0], Role(parts[1]), int(parts[2]))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"pool {text!r}: {exc}") from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pools", nargs="+", type=parse_pool, default=[SimPool("colocated", Role.COLOCATED, 2)])
    parser.add_argument("--calibration", default="cpu-tiny", help="name in sim/calibrations or a file")
    parser.add_argument("--routing", choices=[k.value for k in RoutingPolicyKind], default="load_aware")
    parser.add_argument("--trace", choices=["conv", "code"], help="replay an Azure 2023 trace")
    parser.add_argument("--time-scale", type=float, default=1.0, help="trace speed-up (2: twice the rate)")
    parser.add_argument("--duration", type=float, help="seconds of (scaled) trace")
    parser.add_argument("--gamma", type=float, metavar="RATE", help="Gamma arrivals at RATE req/s instead")
    parser.add_argument("--cv", type=float, default=1.0, help="coefficient of variation of Gamma arrivals")
    parser.add_argument("--num-requests", type=int, default=1000)
    parser.add_argument("--lengths", default="conv", help="conv, code, or PROMPT,OUTPUT")
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--migration", action="store_true", help="the controller migrates (Llumnix policy)")
    parser.add_argument("--link", choices=sorted(LINKS), default="dram", help="KV transfer link")
    parser.add_argument("--ttft-slo", type=float, default=1.0)
    parser.add_argument("--tpot-slo", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="sim/results/run", help="writes OUT.json and OUT.png")
    args = parser.parse_args()

    try:
        StepCostModel.load(args.calibration)
    except FileNotFoundError as exc:
        raise SystemExit(f"sim: {exc}") from None
    if args.gamma:
        if "," in args.lengths:
            prompt, output = (int(x) for x in args.lengths.split(","))
            lengths = fixed_lengths(prompt, output)
        else:
            lengths = trace_lengths(args.lengths)
        requests = gamma_arrivals(args.gamma, args.cv, args.num_requests, lengths, args.seed, max_total=args.max_model_len)
    else:
        requests = from_trace(args.trace or "conv", args.time_scale, args.duration, max_total=args.max_model_len)
    link = LINKS[args.link]
    config = SimConfig(
        pools=tuple(args.pools), calibration=args.calibration, routing=RoutingPolicyKind(args.routing),
        handoff_link=link, migration=MigrationPlan(link=link) if args.migration else None,
        slo=SLO(args.ttft_slo, args.tpot_slo),
    )
    result = Simulation(config).run(requests)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    document = {"command": "python -m sim.run " + " ".join(_argv()), **result.to_json()}
    out.with_suffix(".json").write_text(json.dumps(document, indent=2) + "\n")
    plot_timeline(result, out.with_suffix(".png"), " ".join(f"{p.name} x{p.num_replicas}" for p in config.pools))
    print(json.dumps(document, indent=2))


def _argv() -> list[str]:
    import sys

    return sys.argv[1:]


if __name__ == "__main__":
    main()
