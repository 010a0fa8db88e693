"""Published findings, reproduced in shape on the simulator (same policies as the real
controller), each against its baseline:

  disaggregation  prefill/decode disaggregation vs colocated across load and KV transfer
                  bandwidth (DistServe, Splitwise; gains are not guaranteed): SLO attainment
                  against request rate.
  migration       live migration vs none under skewed load (Llumnix): P99 TTFT and P99 TPOT
                  against request rate, Gamma arrivals with CV 4, long-tailed outputs.

Writes bench/results/sim_<finding>.png and .json; each names its calibration.

    .venv/bin/python -m bench.sim_findings [--finding disaggregation migration] [--calibration a100-llama2-7b]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from policies.migration import MigrationSettings
from policies.routing import RoutingPolicyKind
from policies.snapshot import Role
from sim.cluster import Simulation
from sim.config import LINKS, MigrationPlan, SimConfig, SimPool
from sim.cost_model import StepCostModel
from sim.metrics import SLO
from sim.plots import plot_curves
from sim.workload import gamma_arrivals, trace_lengths

RESULTS = Path(__file__).parent / "results"


def _sweep(configs: dict[str, SimConfig], rates: list[float], requests_for, metrics: dict) -> dict[str, list]:
    """Runs every configuration at every rate on the same requests; one curve per
    (metric, configuration)."""
    curves: dict[str, list] = {}
    for rate in rates:
        requests = requests_for(rate)
        for label, config in configs.items():
            summary = Simulation(config).run(requests).summary
            for name, metric in metrics.items():
                curves.setdefault(f"{label}{name}", []).append((rate, metric(summary)))
            print(f"  rate {rate:6.2f}  {label:<28} " + "  ".join(f"{name.strip() or 'value'} {metric(summary):8.3f}"
                                                          for name, metric in metrics.items()), flush=True)
    return curves


def disaggregation(calibration: str, num_gpus: int, seed: int, slo: SLO) -> dict:
    cost = StepCostModel.load(calibration)
    lengths = trace_lengths("conv")
    colocated = SimConfig(pools=(SimPool("colocated", Role.COLOCATED, num_gpus),), calibration=calibration, slo=slo)
    split = (SimPool("prefill", Role.PREFILL, num_gpus // 2), SimPool("decode", Role.DECODE, num_gpus - num_gpus // 2))
    configs = {"colocated": colocated}
    for link in ("nvlink", "rdma", "disk"):
        configs[f"disaggregated ({link})"] = replace(colocated, pools=split, handoff_link=LINKS[link])
    capacity = cost.capacity_rps(float(lengths.prompt_tokens.mean()), float(lengths.output_tokens.mean())) * num_gpus
    rates = [round(capacity * f, 2) for f in (0.2, 0.4, 0.6, 0.8, 1.0, 1.2)]
    curves = _sweep(configs, rates, lambda r: gamma_arrivals(r, 1.0, max(300, int(r * 60)), lengths, seed, max_total=4096),
                    {"": lambda s: s["slo_attainment"] * 100})
    return {"curves": curves, "slo": vars(slo), "xlabel": "request rate (req/s)", "ylabel": "SLO attainment (%)",
            "title": f"Disaggregation vs colocated, {num_gpus} replicas, conv lengths, Poisson"}


def migration(calibration: str, num_gpus: int, seed: int, slo: SLO) -> dict:
    cost = StepCostModel.load(calibration)
    lengths = trace_lengths("conv")
    # Memory is the bottleneck: a KV pool of a quarter of the calibration's.
    base = SimConfig(pools=(SimPool("colocated", Role.COLOCATED, num_gpus),), calibration=calibration,
                     num_blocks=max(cost.num_blocks // 4, 4096 // cost.block_size * 2), slo=slo)
    plan = MigrationPlan(settings=MigrationSettings(cooldown_s=5.0))
    configs = {
        "round-robin": replace(base, routing=RoutingPolicyKind.ROUND_ROBIN),
        "load-aware": base,
        "load-aware + migration": replace(base, migration=plan),
    }
    capacity = cost.capacity_rps(float(lengths.prompt_tokens.mean()), float(lengths.output_tokens.mean())) * num_gpus * base.num_blocks / cost.num_blocks
    rates = [round(capacity * f, 2) for f in (0.4, 0.6, 0.8, 1.0)]
    curves = _sweep(configs, rates, lambda r: gamma_arrivals(r, 4.0, max(400, int(r * 120)), lengths, seed, max_total=4096),
                    {" P99 TTFT": lambda s: s["ttft_s"]["p99"], " P99 TPOT": lambda s: s["tpot_s"]["p99"]})
    return {"curves": curves, "xlabel": "request rate (req/s)", "ylabel": "seconds (log)", "log_y": True,
            "title": f"Migration under skewed load (Gamma CV 4), {num_gpus} replicas, KV pool {base.num_blocks} blocks"}


FINDINGS = {"disaggregation": disaggregation, "migration": migration}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--finding", nargs="+", choices=sorted(FINDINGS), default=sorted(FINDINGS))
    parser.add_argument("--calibration", default="a100-llama2-7b")
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ttft-slo", type=float, default=1.0)
    parser.add_argument("--tpot-slo", type=float, default=0.025)
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    for name in args.finding:
        print(f"{name} ({args.calibration})", flush=True)
        found = FINDINGS[name](args.calibration, args.replicas, args.seed, SLO(args.ttft_slo, args.tpot_slo))
        source = StepCostModel.load(args.calibration).source
        plot_curves(found["curves"], RESULTS / f"sim_{name}.png", found["title"], found["xlabel"], found["ylabel"],
                    note=f"calibration {args.calibration}", log_y=found.get("log_y", False))
        (RESULTS / f"sim_{name}.json").write_text(json.dumps(
            {"command": f"python -m bench.sim_findings --finding {name} --calibration {args.calibration}",
             "calibration": args.calibration, "calibration_source": source, **found}, indent=2) + "\n")
        print(f"wrote {RESULTS / f'sim_{name}.png'}")


if __name__ == "__main__":
    main()
