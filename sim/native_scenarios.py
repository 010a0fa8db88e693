"""Small simulations that cover the simulator's paths (chunked prefill, preemption, decode
runs, handoffs, migration, parameter dropping, KV offload, clock policy, a shared CPU's
costs and speed noise), printed as one
JSON digest per scenario. `sim.native.check()` runs them pure and compiled and compares:
the compiled build must give the same results to the last bit.

    python -m sim.native_scenarios [--native]
"""

from __future__ import annotations

import argparse
import hashlib
import json


def digests() -> dict[str, dict]:
    # Imported here: with --native, the build is activated first.
    from dataclasses import replace

    from policies.dvfs import ClockMode
    from policies.routing import RoutingPolicyKind
    from policies.snapshot import Role
    from sim.cluster import Simulation
    from sim.config import LINKS, BurstPlan, MigrationPlan, SimConfig, SimPool
    from sim.cost_model import StepCostModel
    from sim.workload import burst_steps, fixed_lengths, gamma_arrivals, trace_lengths

    conv = trace_lengths("conv")
    bursty = gamma_arrivals(40.0, 4.0, 600, conv, seed=1, max_total=4096)
    colocated = SimConfig(pools=(SimPool("colocated", Role.COLOCATED, 6),), calibration="a100-llama2-7b",
                          routing_sample_size=4)
    disaggregated = SimConfig(pools=(SimPool("prefill", Role.PREFILL, 2), SimPool("decode", Role.DECODE, 3)),
                              calibration="a100-llama2-7b", handoff_link=LINKS["rdma"])
    small_kv = StepCostModel.load("a100-llama2-7b").with_capacity(300)
    burst = burst_steps([(20.0, 3.0), (10.0, 9.0), (30.0, 3.0)], fixed_lengths(1000, 400), seed=2)
    scenarios = {
        "colocated_migration": (replace(colocated, migration=MigrationPlan()), bursty, None),
        "round_robin_preempting": (replace(colocated, routing=RoutingPolicyKind.ROUND_ROBIN), bursty, small_kv),
        "disaggregated_per_pool_clocks": (replace(disaggregated, clock_mode=ClockMode.PER_POOL), bursty, None),
        "parameter_dropping": (replace(colocated, burst=BurstPlan()), burst, small_kv),
        "kv_offload": (replace(colocated, offload_link=LINKS["pcie"]), burst, small_kv),
        "shared_cpu": (SimConfig(pools=(SimPool("colocated", Role.COLOCATED, 2),), calibration="cluster-tiny"),
                       gamma_arrivals(8.0, 1.0, 300, conv, seed=3, max_total=1024), None),
    }
    out = {}
    for name, (config, requests, cost) in scenarios.items():
        result = Simulation(config, cost).run(requests)
        records = hashlib.sha256(repr([(r.first_token_s, r.finish_s, r.num_preemptions, r.num_migrations, r.stall_s)
                                       for r in result.records]).encode()).hexdigest()
        out[name] = {"summary": json.loads(json.dumps(result.summary, default=str)), "actions": result.actions,
                     "events": result.num_events, "records": records}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--native", action="store_true", help="run the compiled build (it must exist)")
    args = parser.parse_args()
    if args.native:
        from sim import native

        if native.activate() is None:
            raise SystemExit("no native build matches the sources; run: python -m sim.native")
    result = digests()
    if args.native:
        from sim import native

        assert native.is_active(), "the compiled modules did not load"
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()
