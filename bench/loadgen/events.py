"""Control events to mark on the timeline (migration, drop, clock, replace, ...): a Tide
controller's structured events (`orchestrator/events.py`), fetched over Ray after the run,
or JSON lines from any source."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
# Connecting to Ray and asking the controller.
FETCH_TIMEOUT_S = 60.0

# `at_s` above this is seconds since the epoch (a controller's `time.time()`); below, seconds
# since the run started.
EPOCH_THRESHOLD_S = 1e9

# The controller's kind names and the words for them, to one name each.
KIND_ALIASES = {"migration": "migrate", "migrate": "migrate", "drop": "drop", "param_drop": "drop",
                "clock": "clock", "dvfs": "clock", "replace": "replace", "scale": "scale", "adopt": "adopt"}


class EventsError(ValueError):
    """A malformed events file; its message is the one line the CLI prints."""


@dataclass(frozen=True)
class MarkedEvent:
    at_s: float  # seconds since the run started (when the action ended)
    kind: str
    reason: str = ""
    replica: str = ""
    duration_s: float = 0.0  # how long the action took, ending at at_s
    outcome: str = ""

    def to_json(self) -> dict:
        return asdict(self)


def normalize_kind(kind: str) -> str:
    kind = kind.strip().lower()
    return KIND_ALIASES.get(kind, kind)


def from_record(record: dict, run_started_wall_s: float) -> MarkedEvent:
    """One event from a dict with at least `at_s` and `kind` (`reason`, `replica`,
    `duration_s`, `outcome` optional); epoch times are made relative to the run."""
    try:
        at_s = float(record["at_s"])
        kind = record["kind"]
    except (KeyError, TypeError, ValueError) as exc:
        raise EventsError(f"event {record!r}: needs a numeric at_s and a kind ({exc})") from None
    if isinstance(kind, Enum):
        kind = kind.value
    if at_s > EPOCH_THRESHOLD_S:
        at_s -= run_started_wall_s
    return MarkedEvent(at_s, normalize_kind(str(kind)), str(record.get("reason", "") or ""),
                       str(record.get("replica", "") or ""), float(record.get("duration_s", 0.0) or 0.0),
                       str(record.get("outcome", "") or ""))


def read_events_file(path: Path, run_started_wall_s: float) -> list[MarkedEvent]:
    """JSON lines of {at_s, kind, reason, replica}; blank lines and # comments skipped."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise EventsError(f"--events-file {path}: {exc.strerror or exc}") from None
    events = []
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise EventsError(f"--events-file {path}:{number}: not JSON ({exc})") from None
        if not isinstance(record, dict):
            raise EventsError(f"--events-file {path}:{number}: expected an object")
        events.append(from_record(record, run_started_wall_s))
    return events


def check_events_file(path: Path) -> None:
    """Fails before the run, not after it, on an unreadable or malformed file."""
    read_events_file(path, 0.0)


def controller_events(ray_address: str | None, cluster: str, since_wall_s: float,
                      timeout_s: float = FETCH_TIMEOUT_S) -> list[dict]:
    """The Tide controller's events recorded at or after `since_wall_s` (epoch seconds), as
    dicts. Uses this process's Ray connection if it has one; else a child process connects
    (`ray_address`; None: the cluster running on this machine, never a new one) and is
    killed after `timeout_s` (Ray retries a wrong address for ever)."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        return _fetch(None, cluster, since_wall_s)
    argv = [sys.executable, "-m", "bench.loadgen.events", ray_address or "auto", cluster, repr(since_wall_s)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    try:
        done = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=timeout_s, env=env, cwd=REPO_ROOT)
    except subprocess.TimeoutExpired:
        raise TimeoutError(f"no answer from Ray at {ray_address or 'auto'} within {timeout_s:g}s") from None
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        raise RuntimeError(lines[-1] if lines else f"exit status {done.returncode}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _fetch(ray_address: str | None, cluster: str, since_wall_s: float) -> list[dict]:
    import ray

    from orchestrator import launcher

    launcher.connect(ray_address, cluster)
    controller = launcher.find_controller(cluster)
    events = ray.get(controller.events.remote(since_wall_s), timeout=FETCH_TIMEOUT_S)
    return [{**asdict(e), "kind": e.kind.value if isinstance(e.kind, Enum) else e.kind} for e in events]


def in_window(events: list[MarkedEvent], end_s: float) -> list[MarkedEvent]:
    """The events that overlap the run, in time order."""
    return sorted((e for e in events if e.at_s >= 0 and e.at_s - e.duration_s <= end_s), key=lambda e: e.at_s)


if __name__ == "__main__":
    # python -m bench.loadgen.events RAY_ADDRESS CLUSTER SINCE_WALL_S: the events as one JSON line.
    print(json.dumps(_fetch(sys.argv[1], sys.argv[2], float(sys.argv[3]))))
