"""An open-loop load generator for any OpenAI-compatible endpoint: replays the Azure 2023
traces or synthetic arrivals (Poisson, Gamma, burst steps) as streamed `/v1/completions`
requests, bounded in count and time, and reports TTFT/TPOT/ITL/E2E percentiles, goodput at
an SLO, errors by kind and a latency timeline (PNG) with control events marked.

    .venv/bin/python -m bench.loadgen --base-url http://127.0.0.1:8000/v1 --workload conv --time-scale 0.5

See docs/loadgen.md. Modules: `workload` (CLI choices -> `sim.workload` request lists),
`client` (one streamed, timed request), `runner` (the open loop, its bounds and progress),
`events` (control events from a Tide controller or a file), `report` (the JSON report),
`plot` (PNGs), `__main__` (the CLI).
"""
