"""What a simulation runs: pools, calibration, routing, the controller's policies and
the KV transfer links."""

from __future__ import annotations

from dataclasses import dataclass

from policies.burst import BurstSettings
from policies.dvfs import ClockMode, ClockPolicySettings
from policies.migration import MigrationMode, MigrationSettings
from policies.routing import RoutingPolicyKind
from policies.snapshot import Role
from sim.metrics import SLO

GB = 1e9


@dataclass(frozen=True)
class SimPool:
    name: str
    role: Role
    num_replicas: int
    # The pool's device clock; None: the device's maximum.
    clock_mhz: int | None = None


@dataclass(frozen=True)
class TransferLink:
    """A KV transfer medium as the simulator sees it: fixed latency plus bytes over bandwidth."""

    name: str
    bandwidth_bytes_s: float
    latency_s: float = 0.0

    def seconds(self, num_bytes: int) -> float:
        return self.latency_s + num_bytes / self.bandwidth_bytes_s


# Nominal link speeds (per direction) for the prefill -> decode and migration transfers.
LINKS = {
    "nvlink": TransferLink("nvlink", 300 * GB, 20e-6),
    "rdma": TransferLink("rdma", 25 * GB, 50e-6),
    "pcie": TransferLink("pcie", 25 * GB, 20e-6),
    "dram": TransferLink("dram", 10 * GB, 100e-6),
    "disk": TransferLink("disk", 2 * GB, 1e-3),
}


@dataclass(frozen=True)
class MigrationPlan:
    """Live migration as the controller runs it (Llumnix: multi-stage pre-copy, a last
    stage of at most `last_stage_blocks` blocks)."""

    settings: MigrationSettings = MigrationSettings()
    mode: MigrationMode = MigrationMode.PRE_COPY
    last_stage_blocks: int = 16
    link: TransferLink = LINKS["dram"]


@dataclass(frozen=True)
class BurstPlan:
    """Parameter dropping as the controller runs it (KunServe): the policy's settings, and
    what a pipeline costs. A member's steps stretch by `pipeline_factor` (pipeline bubbles;
    a modeled 10 %) plus one hop of the step's hidden states over `pipeline_link` per stage
    boundary; restoring reloads the dropped weights over `restore_link` (a host copy over
    PCIe by default) while the group keeps serving."""

    settings: BurstSettings = BurstSettings()
    pipeline_factor: float = 1.1
    pipeline_link: TransferLink = LINKS["nvlink"]
    # Llama-2-7B: hidden size 4096 in fp16.
    hidden_bytes_per_token: int = 8192
    restore_link: TransferLink = LINKS["pcie"]


@dataclass(frozen=True)
class SimConfig:
    pools: tuple[SimPool, ...]
    calibration: str = "cpu-tiny"
    # The device's power curve and compute-bound shares (actors/clocks/curves/).
    device: str = "a100-sxm4-40gb"
    routing: RoutingPolicyKind = RoutingPolicyKind.LOAD_AWARE
    # The ingress routes on a snapshot this old at most (Tide: serve.routing_refresh_s).
    routing_refresh_s: float = 0.2
    # Load-aware routing ranks a sample of this many replicas of a larger pool (Tide:
    # serve.routing_sample_size).
    routing_sample_size: int | None = 16
    tick_s: float = 1.0
    handoff_link: TransferLink = LINKS["dram"]
    migration: MigrationPlan | None = None
    slo: SLO = SLO()
    # Per-replica timelines are kept up to this many replicas.
    max_timeline_replicas: int = 64
    # KV pool per replica in blocks; None: the calibration's.
    num_blocks: int | None = None
    burst: BurstPlan | None = None
    # Preemption offloads KV to host memory over this link (vLLM's KV offloading) instead
    # of recomputing it; None: recompute (vLLM's default).
    offload_link: TransferLink | None = None
    # Device clocks: the pools' static `clock_mhz` (mode off), or the controller's clock
    # policy (per_pool, shared) fed by each replica's latencies over `latency_window_s`.
    clock_mode: ClockMode = ClockMode.OFF
    clock_policy: ClockPolicySettings = ClockPolicySettings()
    latency_window_s: float = 10.0
    # Longest run of decode steps simulated as one event (1: step by step, to check runs).
    max_decode_run_steps: int | None = None

    @property
    def disaggregated(self) -> bool:
        roles = {p.role for p in self.pools}
        return Role.PREFILL in roles and Role.DECODE in roles
