"""`tide` command line: build models, bring a cluster up, look at it, take it down."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

from pydantic import ValidationError

from orchestrator.config import ClusterConfig
from orchestrator.model_builder import ModelSize, build_model, directory_digest
from orchestrator.models import DEFAULT_MODEL_ROOT
from orchestrator.prometheus_runner import PrometheusSettings
from orchestrator.status import format_snapshot


def _load_config(path: str | None) -> ClusterConfig:
    if path is None:
        return ClusterConfig()
    try:
        return ClusterConfig.from_yaml(Path(path))
    except FileNotFoundError:
        raise SystemExit(f"tide: config file {path} does not exist") from None
    except ValidationError as exc:
        raise SystemExit(f"tide: config file {path} is invalid:\n{exc}") from None


def cmd_model_build(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else DEFAULT_MODEL_ROOT / args.size
    started = time.monotonic()
    build_model(ModelSize(args.size), out, seed=args.seed)
    print(f"model {args.size} at {out} ({time.monotonic() - started:.1f}s, sha256 {directory_digest(out)[:16]})")
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    import ray

    from orchestrator import launcher

    config = _load_config(args.config)
    if args.model:
        config = config.model_copy(update={"engine": config.engine.model_copy(update={"model": args.model})})
    if args.port:
        config = config.model_copy(update={"serve": config.serve.model_copy(update={"port": args.port})})
    address = args.address
    started_ray = False
    if args.detach and address is None:
        print("starting a local Ray head ...", flush=True)
        address = launcher.start_local_ray_head()
        started_ray = True
    launcher.connect(address, config.name)
    controller = launcher.launch_controller(config, detached=args.detach)
    launcher.LaunchRecord(config.name, address or "local", started_ray).save()
    print(f"starting cluster {config.name!r}: " + ", ".join(f"{p.name} x{p.num_replicas} ({p.role.value})" for p in config.pools), flush=True)

    last_line = ""

    def progress(snapshot) -> None:
        nonlocal last_line
        line = "  " + "  ".join(f"{p.name} {p.num_serving_members}/{p.target_size}" for p in snapshot.pools) if snapshot.pools else "  starting controller"
        if line != last_line:
            print(f"{line}   ({time.strftime('%H:%M:%S')})", flush=True)
            last_line = line

    snapshot = launcher.wait_ready(controller, config.controller.start_timeout_s, progress)
    print(format_snapshot(snapshot))
    print("starting the OpenAI-compatible ingress (Ray Serve) ...", flush=True)
    from orchestrator.models import resolve_model
    from orchestrator.serve_app import deploy

    endpoint = deploy(config, str(resolve_model(config.engine.model)))
    prometheus = _start_prometheus(config.name, args.prometheus_port) if args.prometheus else None
    launcher.LaunchRecord(config.name, address or "local", started_ray, endpoint,
                          prometheus_url=prometheus and PrometheusSettings(port=args.prometheus_port).url,
                          prometheus_pid=prometheus and prometheus.pid).save()
    if prometheus is not None:
        print(f"\nPrometheus at {PrometheusSettings(port=args.prometheus_port).url} (scraping this Ray cluster); "
              f"Grafana dashboards: python -m dashboards.push --grafana-url URL")
    print(f"\nOpenAI API at {endpoint}/v1  (model {config.engine.served_model_name!r})")
    print(example_curl(endpoint, config))
    if args.detach:
        print(f"\ncluster {config.name!r} is up; `tide status` shows it, `tide down` stops it", flush=True)
        return 0
    print("\nserving; Ctrl-C stops the cluster", flush=True)
    # Also when started from a shell that ignores SIGINT for background jobs.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("\nstopping ...")
        try:
            from ray import serve

            serve.shutdown()
            ray.get(controller.stop.remote(), timeout=60)
        except (ray.exceptions.RayError, ray.exceptions.GetTimeoutError) as exc:
            print(f"tide: the cluster did not stop cleanly: {exc}", file=sys.stderr)
        if prometheus is not None:
            prometheus.terminate()
            prometheus.wait(timeout=30)
        launcher.LaunchRecord.remove(config.name)
    return 0


def _start_prometheus(cluster: str, port: int):
    from orchestrator.models import DEFAULT_MODEL_ROOT
    from orchestrator.prometheus_runner import PrometheusUnavailable, ray_metrics_targets, start_prometheus

    data_dir = DEFAULT_MODEL_ROOT.parent / "prometheus" / cluster
    print(f"starting Prometheus on port {port} (data in {data_dir}) ...", flush=True)
    try:
        return start_prometheus(ray_metrics_targets(), PrometheusSettings(port=port), data_dir)
    except PrometheusUnavailable as exc:
        raise SystemExit(f"tide: {exc}") from None


def example_curl(endpoint: str, config) -> str:
    auth = f" \\\n  -H 'Authorization: Bearer {config.serve.api_keys[0]}'" if config.serve.api_keys else ""
    body = f'{{"model": "{config.engine.served_model_name}", "prompt": "Hello, Tide", "max_tokens": 16}}'
    return (f"try:\n  curl {endpoint}/v1/completions -H 'Content-Type: application/json'{auth} \\\n"
            f"  -d '{body}'")


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def cmd_status(args: argparse.Namespace) -> int:
    import ray

    from orchestrator import launcher

    launcher.connect(args.address, args.cluster)
    try:
        controller = launcher.find_controller(args.cluster)
    except ValueError:
        print(f"tide: no cluster {args.cluster!r} on this Ray cluster", file=sys.stderr)
        return 1
    print(format_snapshot(ray.get(controller.snapshot.remote())))
    record = launcher.LaunchRecord.load(args.cluster)
    if record is not None and record.endpoint:
        print(f"OpenAI API at {record.endpoint}/v1")
    if record is not None and record.prometheus_url:
        print(f"Prometheus at {record.prometheus_url}")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    import ray

    from orchestrator import launcher

    record = launcher.LaunchRecord.load(args.cluster)
    launcher.connect(args.address, args.cluster)
    from ray import serve

    try:
        serve.delete(args.cluster)
        print(f"ingress {args.cluster!r} stopped")
    except Exception:  # noqa: BLE001 - Serve not running or the app gone: nothing to stop
        pass
    try:
        controller = launcher.find_controller(args.cluster)
        ray.get(controller.stop.remote())
        ray.kill(controller, no_restart=True)
        print(f"cluster {args.cluster!r} stopped")
    except ValueError:
        print(f"no cluster {args.cluster!r} running")
    ray.shutdown()
    if record is not None and record.prometheus_pid:
        import os

        try:
            os.kill(record.prometheus_pid, signal.SIGTERM)
            print("Prometheus stopped")
        except ProcessLookupError:
            pass
    if record is not None and record.started_ray:
        import subprocess

        subprocess.run([sys.executable, "-m", "ray.scripts.scripts", "stop"], check=False, stdout=subprocess.DEVNULL)
        print("local Ray head stopped")
    launcher.LaunchRecord.remove(args.cluster)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tide", description="Elastic LLM serving on Ray and vLLM")
    sub = parser.add_subparsers(dest="command", required=True)

    model = sub.add_parser("model", help="model utilities").add_subparsers(dest="model_command", required=True)
    build = model.add_parser("build", help="build a Llama-architecture model with random weights")
    build.add_argument("size", choices=[s.value for s in ModelSize])
    build.add_argument("--out", help=f"output directory (default {DEFAULT_MODEL_ROOT}/SIZE)")
    build.add_argument("--seed", type=int, default=0)
    build.set_defaults(func=cmd_model_build)

    up = sub.add_parser("up", help="start a cluster (local Ray unless --address)")
    up.add_argument("--config", help="cluster YAML (default: tiny model, 1 prefill + 1 decode, shm medium)")
    up.add_argument("--model", help="Hugging Face model directory or built-in size (tiny, small); overrides the config")
    up.add_argument("--address", help="join this Ray cluster instead of starting a local one")
    up.add_argument("--port", type=int, help="HTTP port of the OpenAI API (default 8000); overrides the config")
    up.add_argument("--detach", action="store_true", help="return once ready; the cluster keeps running")
    up.add_argument("--prometheus", action="store_true",
                    help="also start a local Prometheus (Debian's `prometheus`) scraping the cluster")
    up.add_argument("--prometheus-port", type=int, default=PrometheusSettings.port)
    up.set_defaults(func=cmd_up)

    for name, func, text in (("status", cmd_status, "show pools, replicas, health and load"),
                             ("down", cmd_down, "stop what `tide up` started")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--cluster", default="tide")
        p.add_argument("--address", default="auto")
        p.set_defaults(func=func)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
