"""How fast the simulator runs at scale, and how long one controller tick takes.

For each cluster size: colocated replicas with the A100 calibration, kept busy by the
Azure conv trace's arrival pattern scaled to `--load` of their capacity; the controller's
policies run every simulated second. Reports simulated seconds per wall second (it must
not fall faster than the cluster grows), and the time of one policy tick (snapshot +
repair + migration decisions) over the largest cluster's snapshot.

The simulator runs compiled (sim/native.py, built on first use) unless `--pure-python`.

    .venv/bin/python -m bench.sim_scale [--replicas 100 300 1000] [--simulated-s 60] [--pure-python]
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sim import native
from sim.workload import read_trace, tiled_trace


def run(num_replicas: int, simulated_s: float, load: float, calibration: str) -> dict:
    # Imported here, not at the top: the native build must be activated first.
    from policies.snapshot import Role
    from sim.cluster import Simulation
    from sim.config import MigrationPlan, SimConfig, SimPool
    from sim.cost_model import StepCostModel

    started = time.perf_counter()
    cost = StepCostModel.load(calibration)
    _, prompts, outputs = read_trace("conv")
    rate = load * num_replicas * cost.capacity_rps(float(prompts.mean()), float(outputs.mean()))
    requests = tiled_trace("conv", rate, simulated_s, seed=0, max_total=4096)
    config = SimConfig(pools=(SimPool("colocated", Role.COLOCATED, num_replicas),), calibration=calibration,
                       migration=MigrationPlan(), max_timeline_replicas=0)
    sim = Simulation(config)
    workload_s = time.perf_counter() - started
    with few_gc_passes():
        result = sim.run(requests, until_s=simulated_s)
    tick_ms = _tick_ms(sim)
    row = {"replicas": num_replicas, "requests": len(requests), "rate_rps": rate, "simulated_s": result.simulated_s,
           "wall_s": result.wall_s, "simulated_s_per_wall_s": result.simulated_s / result.wall_s,
           "workload_s": workload_s,
           "events": result.num_events, "policy_tick_ms": tick_ms,
           "finished": result.summary["num_finished"], "ttft_p50_s": result.summary["ttft_s"]["p50"],
           "native": native.is_active()}
    print(f"{num_replicas:>6} replicas  {len(requests):>8} requests  {result.simulated_s:7.1f} simulated s in "
          f"{result.wall_s:7.1f} s = {row['simulated_s_per_wall_s']:7.2f} sim-s/s  tick {tick_ms:6.2f} ms  "
          f"(workload built in {workload_s:.1f} s)", flush=True)
    return row


@contextmanager
def few_gc_passes() -> Iterator[None]:
    """CPython's cyclic GC at thresholds for millions of live objects: a run holds a record
    per request (12.7 million for an hour of 1,000 replicas) and, at the default thresholds,
    scans them all in a full pass every few simulated seconds, which costs more the larger
    the cluster. The simulator makes few reference cycles, so fewer passes cost no memory
    to speak of."""
    default = gc.get_threshold()
    gc.set_threshold(100_000, 50, 100)
    try:
        yield
    finally:
        gc.set_threshold(*default)


def _tick_ms(sim, repeats: int = 20) -> float:
    """One controller tick over the simulation's current (loaded) cluster."""
    from policies.migration import MigrationHistory, MigrationSettings, decide_migrations
    from policies.repair import InFlight, decide_repairs

    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        snapshot = sim.snapshot()
        decide_repairs(snapshot, InFlight())
        decide_migrations(snapshot, MigrationHistory(), MigrationSettings(), sim.now_s)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicas", type=int, nargs="+", default=[100, 300, 1000])
    parser.add_argument("--simulated-s", type=float, default=60.0)
    parser.add_argument("--load", type=float, default=0.8, help="offered load as a fraction of capacity")
    parser.add_argument("--calibration", default="a100-llama2-7b")
    parser.add_argument("--pure-python", action="store_true", help="run the simulator uncompiled")
    parser.add_argument("--out", default="bench/results/sim_scale.json")
    args = parser.parse_args()
    if not args.pure_python:
        built = native.build()
        native.activate()
        print(f"native simulator: {built.directory}", flush=True)
    rows = [run(n, args.simulated_s, args.load, args.calibration) for n in args.replicas]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"command": "python -m bench.sim_scale", "args": vars(args), "rows": rows},
                                         indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
