"""KV movement: prompt KV handed from prefill to decode replicas, per transfer medium
(bytes, time, failures, recompute fallbacks), and live migrations of running requests
(by mode and outcome, downtime, stages, bytes pre-copied)."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard

from dashboards.panels import RATE, REPLICAS, graph, new_dashboard, quantiles, query

MIGRATION_SOURCES = REPLICAS

TRANSFERS = REPLICAS


def build() -> dashboard.Dashboard:
    return (
        new_dashboard("tide-kv-movement", "Tide / KV movement",
                      "Prefill -> decode KV handoffs by medium: throughput, latency, failures, fallbacks.")
        .with_row(dashboard.Row("Handoffs"))
        .with_panel(graph("KV bytes per second by medium", "Bps", [
            query(f"sum by (medium, direction) (rate(ray_tide_kv_transfer_bytes_total{{{TRANSFERS}}}[{RATE}]))",
                  "{{medium}} {{direction}}")]))
        .with_panel(graph("Transfers per second by medium", "ops", [
            query(f"sum by (medium, direction) "
                  f"(rate(ray_tide_kv_transfer_duration_seconds_count{{{TRANSFERS}}}[{RATE}]))",
                  "{{medium}} {{direction}}")]))
        .with_panel(graph("Transfer time by medium", "s",
                          quantiles("ray_tide_kv_transfer_duration_seconds", TRANSFERS, by="medium", qs=(0.5, 0.99))))
        .with_panel(graph("Bytes per transfer", "bytes", [
            query(f"sum by (medium) (rate(ray_tide_kv_transfer_bytes_total{{{TRANSFERS}}}[{RATE}])) / sum by (medium) "
                  f"(rate(ray_tide_kv_transfer_duration_seconds_count{{{TRANSFERS}}}[{RATE}]))", "{{medium}}")]))
        .with_row(dashboard.Row("Failures"))
        .with_panel(graph("Failed transfers", "short", [
            query(f"sum by (medium, direction) (increase(ray_tide_kv_transfer_failures_total{{{TRANSFERS}}}[{RATE}]))",
                  "{{medium}} {{direction}}")]))
        .with_panel(graph("Recomputed instead of fetched", "short", [
            query(f"sum by (medium) "
                  f"(increase(ray_tide_kv_transfer_recompute_fallbacks_total{{{TRANSFERS}}}[{RATE}]))", "{{medium}}")],
            "Decode replicas that could not fetch a prompt's KV and recomputed it."))
        .with_row(dashboard.Row("Live migration"))
        .with_panel(graph("Migrations by mode and outcome", "short", [
            query(f"sum by (mode, outcome) (increase(ray_tide_migrations_total{{{MIGRATION_SOURCES}}}[{RATE}]))",
                  "{{mode}} {{outcome}}")],
            "Started on source replicas; outcome migrated, request_finished, destination_failed or no_request."))
        .with_panel(graph("Migration downtime", "s",
                          quantiles("ray_tide_migration_downtime_seconds", "", by="mode", qs=(0.5, 0.99)),
                          "Time a migrated stream went without a token, measured at the front door."))
        .with_panel(graph("Stages per migration", "short", [
            query(f"sum by (mode) (rate(ray_tide_migration_stages_sum{{{MIGRATION_SOURCES}}}[{RATE}])) / "
                  f"sum by (mode) (rate(ray_tide_migration_stages_count{{{MIGRATION_SOURCES}}}[{RATE}]))",
                  "{{mode}}")]))
        .with_panel(graph("KV pre-copied while running", "Bps", [
            query(f"sum by (mode) (rate(ray_tide_migration_bytes_total{{{MIGRATION_SOURCES}}}[{RATE}]))",
                  "{{mode}}")]))
    )
