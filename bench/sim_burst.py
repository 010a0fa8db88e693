"""A memory burst on the simulator (KunServe's setting): parameter dropping against no
drop (vLLM's default: queueing and recompute preemption), KV offload to host memory over
PCIe, and live migration alone, on the same requests.

Replicas are colocated A100s (Llama-2-7B step-time calibration) whose memory is split
between weights and KV at `--weight-share` (70B-class models on GPUs sit near one half);
the load steps from the sustainable rate of long-output requests to `--burst-factor` times
it for `--burst-s`, then back.

    .venv/bin/python -m bench.sim_burst [--replicas 4] [--weight-share 0.5] [--burst-factor 3]
                                        [--burst-s 10 20 30 60] [--out bench/results/sim_burst]

One table per burst length; P99 TTFT against burst length in bench/results/sim_burst.png.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from policies.snapshot import Role
from sim.cluster import Simulation
from sim.config import LINKS, BurstPlan, MigrationPlan, SimConfig, SimPool
from sim.cost_model import StepCostModel
from sim.plots import plot_curves
from sim.workload import burst_steps, fixed_lengths

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calibration", default="a100-llama2-7b")
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--weight-share", type=float, default=0.5, help="weights / (weights + KV) per replica")
    parser.add_argument("--prompt-tokens", type=int, default=1000)
    parser.add_argument("--output-tokens", type=int, default=600)
    parser.add_argument("--load", type=float, default=0.5, help="the steady rate as a share of the KV-bound capacity")
    parser.add_argument("--burst-factor", type=float, default=3.0)
    parser.add_argument("--before-s", type=float, default=60.0)
    parser.add_argument("--burst-s", type=float, nargs="+", default=[5.0, 10.0, 20.0, 30.0, 60.0])
    parser.add_argument("--after-s", type=float, default=120.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(RESULTS / "sim_burst"), help="path of the .json and .png, without suffix")
    args = parser.parse_args()
    out = Path(args.out)

    cost = StepCostModel.load(args.calibration)
    weight_blocks = cost.weight_bytes // (cost.kv_bytes_per_token * cost.block_size)
    num_blocks = int(weight_blocks * (1 - args.weight_share) / args.weight_share)
    cost = cost.with_capacity(num_blocks)
    # Sustainable: the batch the KV holds at the requests' mean length, each taking its
    # output length in steps.
    mean_tokens = args.prompt_tokens + args.output_tokens / 2
    batch = max(1, int(num_blocks * cost.block_size / mean_tokens))
    rate = round(cost.capacity_rps(args.prompt_tokens, args.output_tokens, batch) * args.replicas * args.load, 2)
    base = SimConfig(pools=(SimPool("colocated", Role.COLOCATED, args.replicas),), calibration=args.calibration)
    setups = {
        "no drop (queueing, recompute preemption)": base,
        "KV offload to host (PCIe 25 GB/s)": replace(base, offload_link=LINKS["pcie"]),
        "migration alone": replace(base, migration=MigrationPlan()),
        "parameter dropping": replace(base, burst=BurstPlan()),
    }
    print(f"{args.calibration}: {args.replicas} replicas, {num_blocks} KV blocks each (weights {weight_blocks} blocks, "
          f"share {args.weight_share:.0%}); {rate} req/s of {args.prompt_tokens}+{args.output_tokens} tokens, "
          f"x{args.burst_factor} during the burst", flush=True)
    runs, curves = {}, {}
    for burst_s in args.burst_s:
        requests = burst_steps([(args.before_s, rate), (burst_s, rate * args.burst_factor), (args.after_s, rate)],
                               fixed_lengths(args.prompt_tokens, args.output_tokens), args.seed)
        results = {}
        for label, config in setups.items():
            sim = Simulation(config, cost)
            s = sim.run(requests).summary
            results[label] = {"p50_ttft_s": s["ttft_s"]["p50"], "p99_ttft_s": s["ttft_s"]["p99"],
                              "p99_tpot_s": s["tpot_s"]["p99"], "finished": s["num_finished"],
                              "burst_events": sim.burst.events if sim.burst else []}
            curves.setdefault(label, []).append((burst_s, s["ttft_s"]["p99"]))
        runs[str(burst_s)] = results
        baseline = results["no drop (queueing, recompute preemption)"]
        print(f"\nburst of {burst_s:.0f} s ({len(requests)} requests)")
        print(f"{'setup':42} {'P50 TTFT':>9} {'P99 TTFT':>9} {'vs no drop':>10} {'P99 TPOT':>9} {'finished':>8}")
        for label, r in results.items():
            print(f"{label:42} {r['p50_ttft_s']:8.2f}s {r['p99_ttft_s']:8.2f}s "
                  f"{baseline['p99_ttft_s'] / r['p99_ttft_s']:9.1f}x {r['p99_tpot_s'] * 1000:7.1f}ms "
                  f"{r['finished']:5d}/{len(requests)}")
        print(f"drop/restore: {results['parameter dropping']['burst_events']}")
    out.parent.mkdir(parents=True, exist_ok=True)
    plot_curves(curves, out.with_suffix(".png"), f"Memory burst x{args.burst_factor}, {args.replicas} replicas, "
                f"weights {args.weight_share:.0%} of memory", "burst length (s)", "P99 TTFT (s, log)",
                note=f"calibration {args.calibration}", log_y=True)
    out.with_suffix(".json").write_text(json.dumps({
        "command": "python -m bench.sim_burst " + " ".join(
            f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in vars(args).items()),
        "calibration": args.calibration, "calibration_source": cost.source, "num_blocks": num_blocks,
        "weight_blocks": weight_blocks, "rate_rps": rate, "runs": runs}, indent=2) + "\n")
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
