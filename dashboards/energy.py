"""Energy: clocks, power and joules per token per pool. Every series carries its clock
backend: `nvml` (a real GPU) or `emulated` (a modeled power curve, see
actors/clocks/curves/); the backend is part of every legend."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard

from dashboards.panels import FRONT_DOOR, MODEL, RATE, REPLICAS, graph, new_dashboard, query, single

DEVICES = REPLICAS
ENGINES = f'{REPLICAS}, role!="ingress", {MODEL}'


def build() -> dashboard.Dashboard:
    energy = f"ray_tide_device_energy_joules_total{{{DEVICES}}}"
    return (
        new_dashboard("tide-energy", "Tide / Energy",
                      "Device clocks, power and energy per token, per pool (backend: nvml or emulated).")
        .with_row(dashboard.Row("Energy per token"))
        .with_panel(single(
            "Joules per output token (cluster)", "J",
            f"sum(rate({energy}[{RATE}])) / "
            f"sum(rate(ray_vllm_generation_tokens_total{{{FRONT_DOOR}, {MODEL}}}[{RATE}]))",
            "All devices' energy over the tokens clients received (idle devices included)."))
        .with_panel(single("Power (cluster)", "watt", f"sum(ray_tide_device_power_watts{{{DEVICES}}})"))
        .with_panel(graph("Joules per token processed, by pool", "J", [
            query(f"sum by (pool, backend) (rate({energy}[{RATE}])) / on (pool) group_left sum by (pool) ("
                  f"rate(ray_vllm_prompt_tokens_total{{{ENGINES}}}[{RATE}]) "
                  f"+ rate(ray_vllm_generation_tokens_total{{{ENGINES}}}[{RATE}]))",
                  "{{pool}} ({{backend}})")],
            "A pool's energy over the prompt and generated tokens its engines processed.", width=12))
        .with_row(dashboard.Row("Clock control"))
        .with_panel(graph("Pool clock chosen by the controller", "MHz", [
            query('ray_tide_pool_clock_mhz{pool=~"$pool"}', "{{pool}}")],
            "Per pool: the clock the mode (off, fixed, per_pool, shared) set; off shows the replicas' clock."))
        .with_panel(graph("SLO metric the clock policy follows (P90)", "s", [
            query(f'ray_tide_replica_latency_p90_seconds{{{DEVICES}, role=~"prefill|colocated", metric="ttft"}}',
                  "{{replica}} TTFT"),
            query(f'ray_tide_replica_latency_p90_seconds{{{DEVICES}, role=~"decode|colocated", metric="itl"}}',
                  "{{replica}} time between tokens"),
            query('ray_tide_slo_target_seconds{metric="ttft"}', "TTFT target"),
            query('ray_tide_slo_target_seconds{metric="tpot"}', "TPOT target")],
            "The engine's P90 over each replica's latency window at its current clock, against the SLO targets "
            "in force (the controller's config, or the latest set_slo)."))
        .with_panel(single("Devices under clock control", "percentunit",
                           f"avg(ray_tide_device_clock_control{{{DEVICES}}})",
                           "1: Tide sets every clock; below 1, some devices refused (observe-only: NVML "
                           "permission) and keep the driver's clocks."))
        .with_row(dashboard.Row("Devices"))
        .with_panel(graph("SM clock", "MHz", [
            query(f"ray_tide_device_clock_mhz{{{DEVICES}}}", "{{replica}} ({{backend}})")]))
        .with_panel(graph("Power by pool", "watt", [
            query(f"sum by (pool, backend) (ray_tide_device_power_watts{{{DEVICES}}})", "{{pool}} ({{backend}})")]))
        .with_panel(graph("Utilization", "percentunit", [
            query(f"ray_tide_device_utilization_ratio{{{DEVICES}}}", "{{replica}} ({{backend}})")]))
        .with_panel(graph("Energy by pool", "J", [
            query(f"sum by (pool, backend) (increase({energy}[{RATE}]))", "{{pool}} ({{backend}})")]))
    )
