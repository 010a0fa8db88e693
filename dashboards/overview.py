"""Overview: the service level as clients see it, measured at the front door (vLLM's own
frontend statistics of the ingress, role="ingress", and the ingress's HTTP series)."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard

from dashboards.panels import FRONT_DOOR, MODEL, RATE, choice_variable, graph, new_dashboard, quantiles, query, single

INGRESS = f"{FRONT_DOOR}, {MODEL}"
# SLO choices are bucket bounds of vLLM's histograms, so attainment is exact per bucket.
TTFT_SLOS = ("0.1", "0.25", "0.5", "1.0", "2.5")
TPOT_SLOS = ("0.025", "0.05", "0.1", "0.2", "0.5")


def _attainment(histogram: str, slo_variable: str) -> str:
    return (f'sum(rate({histogram}_bucket{{{INGRESS}, le="${slo_variable}"}}[{RATE}])) / '
            f"sum(rate({histogram}_count{{{INGRESS}}}[{RATE}]))")


def build() -> dashboard.Dashboard:
    ttft = "ray_vllm_time_to_first_token_seconds"
    tpot = "ray_vllm_request_time_per_output_token_seconds"
    requests = "ray_tide_ingress_requests_total"
    return (
        new_dashboard("tide-overview", "Tide / Overview",
                      "Service level at the front door: latency percentiles, SLO attainment, goodput, errors.",
                      replica_variables=False)
        .with_variable(choice_variable("ttft_slo", "TTFT SLO (s)", TTFT_SLOS, "0.5"))
        .with_variable(choice_variable("tpot_slo", "TPOT SLO (s)", TPOT_SLOS, "0.1"))
        .with_row(dashboard.Row("Service level"))
        .with_panel(single("TTFT SLO attainment", "percentunit", _attainment(ttft, "ttft_slo"),
                           "Share of requests whose first token came within the TTFT SLO."))
        .with_panel(single("TPOT SLO attainment", "percentunit", _attainment(tpot, "tpot_slo"),
                           "Share of requests whose mean time per output token met the TPOT SLO."))
        .with_panel(single(
            "Goodput (upper bound)", "reqps",
            f'min(label_replace(sum(rate({ttft}_bucket{{{INGRESS}, le="$ttft_slo"}}[{RATE}])), "slo", "ttft", "", "")'
            f' or label_replace(sum(rate({tpot}_bucket{{{INGRESS}, le="$tpot_slo"}}[{RATE}])), "slo", "tpot", "", ""))',
            "Requests per second within the TTFT SLO or within the TPOT SLO, whichever is fewer: an upper bound "
            "of goodput (DistServe: requests meeting both); the load generator in bench/ measures it per request."))
        .with_panel(single(
            "Error rate", "percentunit",
            f'1 - sum(rate({requests}{{status_code!~"5.."}}[{RATE}])) / sum(rate({requests}[{RATE}]))',
            "Share of HTTP answers that were server errors (5xx)."))
        .with_row(dashboard.Row("Latency at the front door"))
        .with_panel(graph("Time to first token", "s", quantiles(ttft, INGRESS)))
        .with_panel(graph("Time per output token", "s", quantiles(tpot, INGRESS)))
        .with_panel(graph("Inter-token latency", "s", quantiles("ray_vllm_inter_token_latency_seconds", INGRESS)))
        .with_panel(graph("End-to-end latency", "s", quantiles("ray_vllm_e2e_request_latency_seconds", INGRESS)))
        .with_row(dashboard.Row("Traffic"))
        .with_panel(graph("Requests by route and status", "reqps", [
            query(f"sum by (route, status_code) (rate({requests}[{RATE}]))", "{{route}} {{status_code}}")]))
        .with_panel(graph("Tokens", "short", [
            query(f"sum(rate(ray_vllm_prompt_tokens_total{{{INGRESS}}}[{RATE}]))", "prompt tokens/s"),
            query(f"sum(rate(ray_vllm_generation_tokens_total{{{INGRESS}}}[{RATE}]))", "generated tokens/s")]))
        .with_panel(graph("Streams in flight", "short", [
            query("sum by (ingress) (ray_tide_ingress_streams_in_flight)", "{{ingress}}")]))
        .with_panel(graph("Replays and client disconnects", "short", [
            query(f"sum by (reason) (increase(ray_tide_ingress_replays_total[{RATE}]))", "replay: {{reason}}"),
            query(f"sum by (route) (increase(ray_tide_ingress_client_disconnects_total[{RATE}]))",
                  "disconnect: {{route}}")],
            "Requests replayed on another replica after theirs failed; clients that left mid-response."))
    )
