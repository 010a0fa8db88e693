"""Cluster configuration: pydantic at the edge (YAML, CLI), frozen once loaded."""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from actors.clocks.backend import ClockBackendKind
from actors.engine_spec import EngineSpec, TransferFailurePolicy
from actors.kv.medium import MediumKind
from actors.migration_spec import MigrationSettingsSpec
from orchestrator.replica_memory import ReplicaMemory, measure_replica_memory
from policies.burst import BurstSettings
from policies.dvfs import ClockMode, ClockPolicySettings, LatencyMetric, SloTargets
from policies.migration import MigrationMode, MigrationSettings
from policies.routing import DataPath, RoutingPolicyKind
from policies.snapshot import Role


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class EngineConfig(_Frozen):
    model: str | None = Field(
        None, description="Hugging Face model directory; empty means the built-in tiny model"
    )
    served_model_name: str = "tide-tiny"
    dtype: str = "float32"
    block_size: int = Field(32, gt=0, description="KV block size in tokens (a multiple of 32 on CPU)")
    max_model_len: int = Field(2048, gt=0)
    kv_cache_bytes: int = Field(256 << 20, gt=0, description="KV cache per replica; always set on CPU")
    max_num_seqs: int = Field(64, gt=0)
    max_num_batched_tokens: int = Field(2048, gt=0)
    enable_prefix_caching: bool = True
    enforce_eager: bool = True
    seed: int = 0
    cpu_threads_bind: str | None = Field(
        None, description="VLLM_CPU_OMP_THREADS_BIND for each engine ('nobind' when engines share cores)"
    )
    cpu_threads: int | None = Field(
        None, ge=1, description="OpenMP threads per engine on CPU; empty: this machine's cores shared evenly by the "
        "cluster's replicas (set it when replicas spread over several nodes)",
    )


class KVTransferSettings(_Frozen):
    medium: MediumKind = MediumKind.SHARED_MEMORY
    shm_dir: str = "/dev/shm/tide"
    disk_dir: str = "/tmp/tide-kv"
    on_failure: TransferFailurePolicy = TransferFailurePolicy.RECOMPUTE
    fetch_timeout_s: float = Field(30.0, gt=0, description="a KV transfer slower than this has failed")
    staged_ttl_s: float = Field(120.0, gt=0, description="staged KV never fetched is deleted after this")


class PoolConfig(_Frozen):
    name: str = Field(min_length=1, pattern=r"^[a-z0-9][a-z0-9-]*$")
    role: Role
    num_replicas: int = Field(1, ge=0)
    num_cpus: float = Field(0.0, ge=0, description="Ray CPUs reserved per replica actor")
    num_gpus: float = Field(0.0, ge=0, description="Ray GPUs per replica actor (its engine's devices; "
                            "NVML clock control needs them)")
    resources: dict[str, float] = Field(default_factory=dict, description="Ray custom resources per replica")


class MigrationConfig(_Frozen):
    """Live migration between replicas of a pool (policies/migration.py decides,
    actors/migration_source.py moves). Off by default."""

    enabled: bool = False
    mode: MigrationMode = MigrationMode.PRE_COPY
    source_below: float = Field(4.0, description="Llumnix freeness under which a replica hands requests off")
    destination_above: float = Field(16.0, description="freeness a destination must have")
    min_gap: float = Field(8.0, ge=0, description="freeness gap required between the two (hysteresis)")
    max_per_tick: int = Field(2, ge=0)
    cooldown_s: float = Field(10.0, ge=0, description="no move back along a pair within this time")
    max_stages: int = Field(3, ge=1, description="pre-copy stages, the stop stage included (Llumnix: 3)")
    last_stage_blocks: int = Field(0, ge=0, description="stop when at most this many full blocks are left to copy; "
                                   "the destination recomputes them")
    boundary_slack_tokens: int = Field(2, ge=0, description="the last pre-copy stage starts at most this many tokens "
                                       "past a block boundary, so the stop leaves little to recompute")
    stop_wait_s: float = Field(1.0, ge=0, description="the stop waits at most this long for the request's next "
                               "token, so it lands at a step boundary")
    stage_timeout_s: float = Field(30.0, gt=0)

    def policy_settings(self) -> MigrationSettings:
        return MigrationSettings(self.source_below, self.destination_above, self.min_gap, self.max_per_tick,
                                 self.cooldown_s)

    def mechanism_settings(self) -> MigrationSettingsSpec:
        return MigrationSettingsSpec(max_stages=self.max_stages, last_stage_blocks=self.last_stage_blocks,
                                     boundary_slack_tokens=self.boundary_slack_tokens, stop_wait_s=self.stop_wait_s,
                                     stage_timeout_s=self.stage_timeout_s)


class ParameterDropConfig(_Frozen):
    """Parameter dropping for memory bursts (KunServe; policies/burst.py decides,
    docs/parameter_dropping.md). A dropped group of replicas is replaced by one vLLM
    pipeline-parallel engine over their devices, each member holding 1/g of the layers;
    the freed weight memory becomes KV blocks. Colocated and decode pools (a pipeline
    replica imports KV but does not export it, so prefill pools are not dropped). Off by
    default."""

    enabled: bool = False
    replica_memory_bytes: int | None = Field(
        None, gt=0, description="device memory per replica for weights + KV cache; each replica's KV cache is what "
        "the weights leave of it (engine.kv_cache_bytes is then not used). Required when enabled")
    drop_usage: float = Field(0.95, gt=0, le=1, description="a replica votes to drop at this KV usage or more when "
                              "its waiting requests need at least its free blocks")
    restore_usage: float = Field(0.5, gt=0, le=1, description="a group restores once its blocks in use fit the "
                                 "restored members at this usage, falling, with nothing waiting")
    min_vote_share: float = Field(0.5, gt=0, le=1, description="a group drops when at least this share of its "
                                  "members vote")
    max_group_size: int = Field(2, ge=2)
    min_dropped_s: float = Field(10.0, ge=0, description="a group serves dropped at least this long before the "
                                 "policy restores it")
    start_behind_gate: bool = Field(
        True, description="start the new engines while the group serves, as far as their weights, and switch "
        "once they are there (actors/weights_gate.py); off: stop the old engines first, then start the new ones. "
        "On a GPU node the start costs the serving engines nothing; on a few CPU cores it competes with them")
    standby_pipeline: bool = Field(
        False, description="keep a pipeline of max_group_size stages started behind its weights gates in each "
        "pool that has a group to drop, so a drop of that size switches without waiting for a start; it is "
        "started again after each drop it serves. The cost is the waiting processes: no weights, no KV; on a "
        "GPU, a device context per stage. Needs start_behind_gate")
    retry_after_s: float = Field(30.0, ge=0, description="after a drop's, restore's or standby's new engines "
                                 "fail to start, the next try of that kind in that pool waits this long")
    standby_wait_s: float = Field(3600.0, gt=0, description="a standby pipeline not used within this time "
                                  "stops (its start counts as failed), and a new one starts after retry_after_s")

    @model_validator(mode="after")
    def _budget_when_enabled(self) -> ParameterDropConfig:
        if self.enabled and self.replica_memory_bytes is None:
            raise ValueError("parameter_drop.enabled needs parameter_drop.replica_memory_bytes")
        if self.standby_pipeline and not self.start_behind_gate:
            raise ValueError("parameter_drop.standby_pipeline needs parameter_drop.start_behind_gate")
        return self

    def settings(self) -> BurstSettings:
        return BurstSettings(self.drop_usage, self.restore_usage, self.min_vote_share, self.max_group_size,
                             roles=(Role.DECODE, Role.COLOCATED), min_dropped_s=self.min_dropped_s)


class ClockSettings(_Frozen):
    """Device clocks and energy. A replica's device is its GPU through NVML, or, with no GPU,
    an emulated device: a modeled power curve (actors/clocks/curves/<power_curve>.yaml) at
    the replica's measured utilization whose clock really slows the engine's steps,
    labelled `emulated` in every series."""

    backend: ClockBackendKind = ClockBackendKind.AUTO
    mode: ClockMode = ClockMode.OFF
    fixed_clock_mhz: int | None = Field(None, gt=0, description="the clock of every pool in mode fixed")
    power_curve: str = "a100-sxm4-40gb"
    energy_meter_s: float = Field(1.0, gt=0, description="how often energy is metered")
    latency_window_s: float = Field(10.0, gt=0, description="the latencies a replica reports cover this long")
    margin: float = Field(0.25, ge=0, lt=1, description="keep the SLO metric under target x (1 - margin)")
    lower_band: float = Field(0.15, ge=0, lt=1, description="lower a clock only if the metric is predicted "
                              "to stay this share under the bound (hysteresis)")
    hold_s: float = Field(5.0, ge=0, description="no lowering within this long of the last change")
    raise_hold_s: float = Field(30.0, ge=0, description="no lowering within this long of a rise for the SLO")
    max_steps_down: int = Field(3, ge=1, description="supported clocks a pool moves down at once, at most")
    min_ttft_samples: int = Field(8, ge=1, description="TTFT samples a pool's reading needs to count")
    min_itl_samples: int = Field(64, ge=1, description="inter-token samples a pool's reading needs to count")
    fresh_s: float = Field(5.0, gt=0, description="older readings do not move a clock")
    missing_after_s: float = Field(30.0, gt=0, description="no readings this long: back to the maximum clock")

    @model_validator(mode="after")
    def _fixed_has_a_clock(self) -> ClockSettings:
        if self.mode == ClockMode.FIXED and self.fixed_clock_mhz is None:
            raise ValueError("clocks.mode fixed needs clocks.fixed_clock_mhz")
        return self

    def policy_settings(self) -> ClockPolicySettings:
        return ClockPolicySettings(
            margin=self.margin, lower_band=self.lower_band, hold_s=self.hold_s, raise_hold_s=self.raise_hold_s,
            max_steps_down=self.max_steps_down,
            min_samples=((LatencyMetric.TTFT, self.min_ttft_samples), (LatencyMetric.ITL, self.min_itl_samples)),
            fresh_s=self.fresh_s, missing_after_s=self.missing_after_s)


class SLOConfig(_Frozen):
    ttft_s: float = Field(2.0, gt=0)
    tpot_s: float = Field(0.2, gt=0)

    def targets(self) -> SloTargets:
        return SloTargets(self.ttft_s, self.tpot_s)


class ControllerSettings(_Frozen):
    tick_s: float = Field(0.5, gt=0)
    health_timeout_s: float = Field(10.0, gt=0, description="a replica silent this long is dead")
    start_timeout_s: float = Field(600.0, gt=0)
    resources: dict[str, float] = Field(
        default_factory=dict, description="Ray custom resources of the controller actor (to pin it, e.g. to the head)")


class ServeSettings(_Frozen):
    """The OpenAI-compatible HTTP front door (a Ray Serve application)."""

    host: str = "127.0.0.1"
    port: int = Field(8000, gt=0, lt=65536)
    direct_ingress: bool = Field(
        True, description="the ingress replicas listen on `port` themselves (Ray Serve direct ingress); "
        "false puts Serve's HTTP proxy on `port` in front of them, one more hop per request",
    )
    proxy_port: int = Field(
        8500, gt=0, lt=65535, description="with direct ingress, where Serve's HTTP proxy listens (and its "
        "fallback proxy on the next port); Ray starts them either way",
    )
    route_prefix: str = "/"
    num_ingress_replicas: int = Field(1, ge=1)
    ingress_resources: dict[str, float] = Field(
        default_factory=dict, description="Ray custom resources of each ingress replica (to pin the front door)")
    api_keys: tuple[str, ...] = Field((), description="accepted Bearer tokens; empty means no authentication")
    max_queued_requests: int | None = Field(
        None, gt=0, description="requests in flight beyond this are refused with 503 and Retry-After"
    )
    retry_after_s: int = Field(1, ge=0, description="Retry-After on 429/503 answers")
    max_replays: int = Field(3, ge=0, description="replays of a request whose replica died before it fails")
    routing_refresh_s: float = Field(0.2, gt=0, description="how often the ingress refreshes its routing table")
    routing_sample_size: int | None = Field(
        16, ge=1, description="load-aware routing ranks a pool larger than this on a fresh sample of this many "
        "replicas per request (power of d choices); null ranks every replica"
    )
    data_path: DataPath = Field(
        DataPath.AUTO, description="auto: prefill -> decode when both pools exist, else colocated"
    )


class ClusterConfig(_Frozen):
    name: str = Field("tide", pattern=r"^[a-z0-9][a-z0-9-]*$")
    engine: EngineConfig = EngineConfig()
    kv: KVTransferSettings = KVTransferSettings()
    pools: tuple[PoolConfig, ...] = (
        PoolConfig(name="prefill", role=Role.PREFILL, num_replicas=1),
        PoolConfig(name="decode", role=Role.DECODE, num_replicas=1),
    )
    routing: RoutingPolicyKind = RoutingPolicyKind.LOAD_AWARE
    slo: SLOConfig = SLOConfig()
    controller: ControllerSettings = ControllerSettings()
    serve: ServeSettings = ServeSettings()
    clocks: ClockSettings = ClockSettings()
    migration: MigrationConfig = MigrationConfig()
    parameter_drop: ParameterDropConfig = ParameterDropConfig()

    @model_validator(mode="after")
    def _pools_serve(self) -> ClusterConfig:
        names = [p.name for p in self.pools]
        if len(set(names)) != len(names):
            raise ValueError(f"pool names must be unique, got {names}")
        roles = {p.role for p in self.pools}
        if Role.COLOCATED not in roles and not {Role.PREFILL, Role.DECODE} <= roles:
            raise ValueError("pools must include a colocated pool, or both a prefill and a decode pool")
        return self

    @property
    def disaggregated(self) -> bool:
        roles = {p.role for p in self.pools}
        return {Role.PREFILL, Role.DECODE} <= roles

    def pool(self, name: str) -> PoolConfig:
        for pool in self.pools:
            if pool.name == name:
                return pool
        raise KeyError(name)

    def _cpu_threads_per_replica(self) -> int:
        """Engines that share cores must not each run a thread per core: OpenMP threads
        that outnumber the cores spin against each other."""
        return max(1, (os.cpu_count() or 1) // max(1, sum(p.num_replicas for p in self.pools)))

    def replica_memory(self, model_path: str) -> ReplicaMemory | None:
        budget = self.parameter_drop.replica_memory_bytes
        if budget is None:
            return None
        return measure_replica_memory(model_path, budget, self.engine.block_size, self.engine.dtype)

    def engine_spec(self, model_path: str) -> EngineSpec:
        e = self.engine
        memory = self.replica_memory(model_path)
        return EngineSpec(
            model=model_path, served_model_name=e.served_model_name, dtype=e.dtype, block_size=e.block_size,
            max_model_len=e.max_model_len, kv_cache_bytes=memory.kv_bytes() if memory else e.kv_cache_bytes,
            max_num_seqs=e.max_num_seqs,
            max_num_batched_tokens=e.max_num_batched_tokens, enable_prefix_caching=e.enable_prefix_caching,
            enforce_eager=e.enforce_eager, seed=e.seed, medium=self.kv.medium, shm_dir=f"{self.kv.shm_dir}/{self.name}",
            disk_dir=f"{self.kv.disk_dir}/{self.name}", on_transfer_failure=self.kv.on_failure,
            kv_fetch_timeout_s=self.kv.fetch_timeout_s, staged_kv_ttl_s=self.kv.staged_ttl_s,
            cpu_threads_bind=e.cpu_threads_bind, cpu_threads=e.cpu_threads or self._cpu_threads_per_replica(),
            power_curve=self.clocks.power_curve, energy_meter_s=self.clocks.energy_meter_s,
            clock_backend=self.clocks.backend, latency_window_s=self.clocks.latency_window_s,
        )

    @classmethod
    def from_yaml(cls, path: Path) -> ClusterConfig:
        return cls.model_validate(yaml.safe_load(Path(path).read_text()) or {})
