"""Energy per token against SLO attainment on the simulator (same clock policy as the
real controller): maximum clocks, one clock for all pools, and per-pool clocks, under the
emulated A100 power model (actors/clocks/curves/a100-sxm4-40gb.yaml) and an A100 step-time
calibration.

Every static pair (prefill clock, decode clock) of a grid is one point; the points with
both clocks equal are "one clock for all". The policy runs (modes shared and per_pool)
are points too, and so is a colocated cluster of as many replicas (maximum clocks and the
policy), the baseline of the "Revisiting Disaggregated LLM Serving" study. At equal SLO attainment (within `--tolerance` of maximum clocks'), the
lowest energy per token of each family is compared with maximum clocks.

Writes bench/results/sim_dvfs.png (the Pareto plot) and sim_dvfs.json.

    .venv/bin/python -m bench.sim_dvfs [--calibration a100-llama2-7b] [--load 0.5]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from policies.dvfs import ClockMode, ClockPolicySettings  # noqa: E402
from policies.snapshot import Role  # noqa: E402
from sim.cluster import Simulation  # noqa: E402
from sim.config import SimConfig, SimPool  # noqa: E402
from sim.cost_model import StepCostModel  # noqa: E402
from sim.metrics import SLO  # noqa: E402
from sim.workload import poisson_arrivals, trace_lengths  # noqa: E402

RESULTS = Path(__file__).parent / "results"
GRID_MHZ = (390, 570, 750, 930, 1110, 1290, 1410)


def _point(config: SimConfig, requests) -> dict:
    sim = Simulation(config)
    summary = sim.run(requests).summary
    clocks = sim.clocks.chosen if sim.clocks else summary["energy"]["pool_clocks_mhz"]
    return {"attainment": summary["slo_attainment"], "joules_per_token": summary["energy"]["joules_per_output_token"],
            "p90_ttft_s": summary["ttft_s"]["p90"], "p90_tpot_s": summary["tpot_s"]["p90"], "final_clocks_mhz": clocks}


def _best(points: list[dict], floor: float) -> dict | None:
    eligible = [p for p in points if p["attainment"] >= floor]
    return min(eligible, key=lambda p: p["joules_per_token"]) if eligible else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calibration", default="a100-llama2-7b")
    parser.add_argument("--prefill", type=int, default=2)
    parser.add_argument("--decode", type=int, default=2)
    parser.add_argument("--load", type=float, default=0.5, help="offered load as a share of the decode capacity")
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--ttft-slo", type=float, default=0.5)
    parser.add_argument("--tpot-slo", type=float, default=0.05)
    parser.add_argument("--tolerance", type=float, default=0.01, help="attainment counted as equal within this")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    cost = StepCostModel.load(args.calibration)
    lengths = trace_lengths("conv")
    capacity = cost.capacity_rps(float(lengths.prompt_tokens.mean()), float(lengths.output_tokens.mean())) * args.decode
    rate = round(capacity * args.load, 2)
    requests = poisson_arrivals(rate, args.requests, lengths, args.seed, max_total=4096)
    slo = SLO(args.ttft_slo, args.tpot_slo)
    base = SimConfig(pools=(SimPool("prefill", Role.PREFILL, args.prefill), SimPool("decode", Role.DECODE, args.decode)),
                     calibration=args.calibration, slo=slo)
    print(f"{args.calibration}: {args.prefill}P + {args.decode}D, Poisson {rate} req/s (conv lengths), "
          f"SLO TTFT {slo.ttft_s} s / TPOT {slo.tpot_s} s", flush=True)

    static = []
    for prefill_mhz in GRID_MHZ:
        for decode_mhz in GRID_MHZ:
            pools = (SimPool("prefill", Role.PREFILL, args.prefill, prefill_mhz),
                     SimPool("decode", Role.DECODE, args.decode, decode_mhz))
            point = {"prefill_mhz": prefill_mhz, "decode_mhz": decode_mhz, **_point(replace(base, pools=pools), requests)}
            static.append(point)
            print(f"  static {prefill_mhz:4d}/{decode_mhz:4d} MHz: attainment {point['attainment']:.3f}, "
                  f"{point['joules_per_token']:.3f} J/token", flush=True)
    policy = {}
    for mode in (ClockMode.SHARED, ClockMode.PER_POOL):
        policy[mode.value] = _point(replace(base, clock_mode=mode, clock_policy=ClockPolicySettings()), requests)
        print(f"  policy {mode.value}: {policy[mode.value]}", flush=True)

    colocated = replace(base, pools=(SimPool("colocated", Role.COLOCATED, args.prefill + args.decode),))
    policy["colocated_max"] = _point(colocated, requests)
    policy["colocated_policy"] = _point(replace(colocated, clock_mode=ClockMode.PER_POOL), requests)
    print(f"  colocated: maximum {policy['colocated_max']}\n  colocated: policy {policy['colocated_policy']}", flush=True)

    at_max = next(p for p in static if p["prefill_mhz"] == p["decode_mhz"] == 1410)
    floor = at_max["attainment"] - args.tolerance
    best = {
        "one clock for all (best static)": _best([p for p in static if p["prefill_mhz"] == p["decode_mhz"]], floor),
        "per-pool clocks (best static)": _best(static, floor),
        "one clock for all (policy)": policy["shared"] if policy["shared"]["attainment"] >= floor else None,
        "per-pool clocks (policy)": policy["per_pool"] if policy["per_pool"]["attainment"] >= floor else None,
        "colocated, maximum clocks": policy["colocated_max"] if policy["colocated_max"]["attainment"] >= floor else None,
        "colocated, clock policy": (policy["colocated_policy"] if policy["colocated_policy"]["attainment"] >= floor
                                    else None),
    }
    print(f"\nat SLO attainment >= {floor:.3f} (maximum clocks: {at_max['attainment']:.3f}, "
          f"{at_max['joules_per_token']:.3f} J/token):")
    comparison = {}
    for label, point in best.items():
        if point is None:
            print(f"  {label:32} misses the attainment")
            continue
        saving = 1.0 - point["joules_per_token"] / at_max["joules_per_token"]
        comparison[label] = {**point, "energy_saving_vs_max": saving}
        clocks = point.get("final_clocks_mhz")
        print(f"  {label:32} {point['joules_per_token']:.3f} J/token ({saving:+.1%} less than maximum), "
              f"attainment {point['attainment']:.3f}, clocks {clocks}")

    RESULTS.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter([p["attainment"] * 100 for p in static], [p["joules_per_token"] for p in static], s=12,
               color="lightgray", label="static (prefill, decode) clock pairs")
    uniform = sorted((p for p in static if p["prefill_mhz"] == p["decode_mhz"]), key=lambda p: p["decode_mhz"])
    ax.plot([p["attainment"] * 100 for p in uniform], [p["joules_per_token"] for p in uniform], marker="o",
            label="one clock for all (static sweep)")
    ax.scatter([at_max["attainment"] * 100], [at_max["joules_per_token"]], marker="s", s=60, color="black",
               label="maximum clocks", zorder=3)
    for mode, marker, label in (("shared", "^", "policy: one clock for all"), ("per_pool", "*", "policy: per pool"),
                                ("colocated_max", "D", "colocated, maximum clocks"),
                                ("colocated_policy", "P", "colocated, clock policy")):
        ax.scatter([policy[mode]["attainment"] * 100], [policy[mode]["joules_per_token"]], marker=marker, s=110,
                   label=label, zorder=3)
    ax.set_xlabel("SLO attainment (%)")
    ax.set_ylabel("joules per output token")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"Energy per token vs SLO attainment, {args.prefill}P+{args.decode}D, {rate} req/s\n"
                 f"calibration {args.calibration}, power curve a100-sxm4-40gb (emulated)", fontsize=9)
    fig.tight_layout()
    fig.savefig(RESULTS / "sim_dvfs.png", dpi=110)
    plt.close(fig)
    (RESULTS / "sim_dvfs.json").write_text(json.dumps({
        "command": "python -m bench.sim_dvfs " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
        "calibration": args.calibration, "calibration_source": cost.source, "rate_rps": rate, "slo": vars(slo),
        "maximum_clocks": at_max, "best_at_equal_attainment": comparison, "policy": policy, "static": static,
    }, indent=2) + "\n")
    print(f"wrote {RESULTS / 'sim_dvfs.png'}")


if __name__ == "__main__":
    main()
