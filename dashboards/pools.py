"""Pools: every replica's engine, by pool and role (vLLM's engine statistics from inside
each replica actor, and the controller's view of each replica)."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard

from dashboards.panels import MODEL, RATE, REPLICAS, graph, new_dashboard, quantiles, query

ENGINES = f'{REPLICAS}, role!="ingress", {MODEL}'


def build() -> dashboard.Dashboard:
    return (
        new_dashboard("tide-pools", "Tide / Pools", "Per replica: KV cache, queues, batch size, step time, latency.")
        .with_row(dashboard.Row("Capacity and queues"))
        .with_panel(graph("KV cache usage", "percentunit", [
            query(f"ray_vllm_kv_cache_usage_perc{{{ENGINES}}}", "{{replica}}")]))
        .with_panel(graph("Requests running / waiting", "short", [
            query(f"sum by (replica) (ray_vllm_num_requests_running{{{ENGINES}}})", "{{replica}} running"),
            query(f"sum by (replica) (ray_vllm_num_requests_waiting{{{ENGINES}}})", "{{replica}} waiting")]))
        .with_panel(graph("Tokens per engine step (batch size)", "short",
                          quantiles("ray_vllm_iteration_tokens_total", ENGINES, by="replica", qs=(0.5, 0.9))))
        .with_panel(graph("Engine step time", "s", [
            query(f'ray_tide_replica_step_seconds{{{REPLICAS}}}', "{{replica}}")],
            "Recent mean time between engine steps, as the replica reports it to the controller."))
        .with_row(dashboard.Row("Work and latency per replica"))
        .with_panel(graph("Generated tokens per second", "short", [
            query(f"sum by (replica) (rate(ray_vllm_generation_tokens_total{{{ENGINES}}}[{RATE}]))", "{{replica}}")]))
        .with_panel(graph("Prompt tokens per second", "short", [
            query(f"sum by (replica) (rate(ray_vllm_prompt_tokens_total{{{ENGINES}}}[{RATE}]))", "{{replica}}")]))
        .with_panel(graph("Queue time p90", "s",
                          quantiles("ray_vllm_request_queue_time_seconds", ENGINES, by="replica", qs=(0.9,))))
        .with_panel(graph("Time to first token p90 (engine)", "s",
                          quantiles("ray_vllm_time_to_first_token_seconds", ENGINES, by="replica", qs=(0.9,))))
        .with_panel(graph("Preemptions per request", "short", [
            query(f"sum by (replica) (rate(ray_vllm_request_num_preemptions_sum{{{ENGINES}}}[{RATE}])) / "
                  f"sum by (replica) (rate(ray_vllm_request_num_preemptions_count{{{ENGINES}}}[{RATE}]))",
                  "{{replica}}")]))
        .with_panel(graph("Replicas by health", "short", [
            query('sum by (pool, health) (ray_tide_pool_replicas{pool=~"$pool"})', "{{pool}} {{health}}")]))
    )
