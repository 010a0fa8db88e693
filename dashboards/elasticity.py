"""Elasticity: pool sizes and capacity, parameter dropping (groups serving as a pipeline,
the KV blocks they gained, how long each drop and restore switch took), and every
controller action (scale, replace, adopt, drop, restore) with its reason, outcome and
duration."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard

from dashboards.panels import RATE, graph, label_variable, new_dashboard, quantiles, query

POOLS = 'pool=~"$pool"'
# Has data once a group has dropped (tests/integration/test_parameter_drop.py checks it).
SWITCH_TIME_PANEL = "Drop and restore switch time"
PANELS_AFTER_A_DROP = (SWITCH_TIME_PANEL,)


def build() -> dashboard.Dashboard:
    return (
        new_dashboard("tide-elasticity", "Tide / Elasticity",
                      "Pool sizes, KV capacity and controller actions.", replica_variables=False)
        .with_variable(label_variable("pool", "ray_tide_pool_replicas", "pool"))
        .with_row(dashboard.Row("Capacity"))
        .with_panel(graph("Serving replicas vs target", "short", [
            query(f'sum by (pool) (ray_tide_pool_replicas{{{POOLS}, health=~"healthy|draining"}})', "{{pool}} serving"),
            query(f"sum by (pool) (ray_tide_pool_target_replicas{{{POOLS}}})", "{{pool}} target")]))
        .with_panel(graph("KV capacity (blocks)", "short", [
            query(f'sum by (pool) (ray_tide_pool_kv_blocks{{{POOLS}, state="total"}})', "{{pool}} total"),
            query(f'sum by (pool) (ray_tide_pool_kv_blocks{{{POOLS}, state="free"}})', "{{pool}} free")]))
        .with_row(dashboard.Row("Parameter dropping"))
        .with_panel(graph("Dropped groups (serving as a pipeline)", "short", [
            query(f"max by (pool) (ray_tide_pool_dropped_groups{{{POOLS}}})", "{{pool}}"),
            query(f"max by (pool) (ray_tide_pool_standby_pipelines{{{POOLS}}})", "{{pool}}: standby at its gates")],
            "Standby: a pipeline waiting at its weights gates, so the next drop has no start to wait for "
            "(parameter_drop.standby_pipeline)."))
        .with_panel(graph("KV blocks gained by dropping", "short", [
            query(f"max by (pool) (ray_tide_pool_pipeline_gained_kv_blocks{{{POOLS}}})", "{{pool}}")],
            "Blocks the pool's pipelines hold beyond what their members hold restored: the freed weights."))
        .with_panel(graph(SWITCH_TIME_PANEL, "s", [
            query(f'max by (kind, pool) (ray_tide_controller_action_last_duration_seconds{{{POOLS}, kind=~"drop|restore"}})',
                  "{{kind}} {{pool}}"),
            query(f'max by (kind, pool) (ray_tide_controller_gated_start_last_seconds{{{POOLS}}})',
                  "{{kind}} {{pool}}: started behind the gate")],
            "From the hand-over to the new engine serving: the running requests move with their KV, the old "
            "engines stop, the new one (started behind its weights gate while the group served) loads its "
            "weights and KV. The group serves nothing meanwhile. 'Started behind the gate': how long the new engine "
            "took to get there while the group served (with parameter_drop.start_behind_gate)."))
        .with_row(dashboard.Row("Controller actions"))
        .with_panel(graph("Actions by kind, reason and outcome", "short", [
            query(f"sum by (kind, reason, outcome) (increase(ray_tide_controller_actions_total{{{POOLS}}}[{RATE}]))",
                  "{{kind}} {{reason}} {{outcome}}")]))
        .with_panel(graph("Latest action duration by kind", "s", [
            query(f"max by (kind, pool) (ray_tide_controller_action_last_duration_seconds{{{POOLS}}})",
                  "{{kind}} {{pool}}")],
            "Actions are rare: the latest duration of each kind (the histogram "
            "ray_tide_controller_action_duration_seconds keeps all of them)."))
        .with_panel(graph("Controller tick time", "s",
                          quantiles("ray_tide_controller_tick_duration_seconds", "", qs=(0.5, 0.99))))
        .with_panel(graph("Replica up", "short", [
            query(f"ray_tide_replica_up{{{POOLS}}}", "{{replica}}")]))
    )

