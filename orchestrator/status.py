"""Human-readable view of a cluster snapshot (for `tide status` and `tide up`)."""

from __future__ import annotations

from policies.snapshot import ClusterSnapshot


def format_snapshot(snapshot: ClusterSnapshot) -> str:
    lines = [f"{'replica':<16}{'pool':<12}{'role':<11}{'health':<10}{'run':>5}{'wait':>6}{'kv used':>9}{'step ms':>9}"]
    for pool in snapshot.pools:
        if not pool.replicas:
            lines.append(f"{'-':<16}{pool.name:<12}{pool.role.value:<11}{'(none)':<10}")
        for r in pool.replicas:
            lines.append(
                f"{r.replica_id:<16}{r.pool:<12}{r.role.value:<11}{r.health.value:<10}"
                f"{r.num_running:>5}{r.num_waiting:>6}{r.kv_usage_frac:>8.0%} {r.mean_step_s * 1000:>8.1f}"
            )
    return "\n".join(lines)
