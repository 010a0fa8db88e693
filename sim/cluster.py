"""The discrete-event simulation of a Tide cluster: arrivals routed by the ingress's
router on a periodically refreshed snapshot, replicas stepping, prefill -> decode
handoffs over a link, and a controller tick that runs the same pure policies as the real
controller and hands their actions to `SimExecutor`."""

from __future__ import annotations

import heapq
import itertools
import time
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from actors.clocks.power_curve import PowerCurve
from actors.latency_window import LatencyWindow
from orchestrator.pool_clocks import PoolClocks
from policies.burst import decide_burst
from policies.dvfs import ClockMode, SloTargets
from policies.migration import decide_migrations
from policies.repair import InFlight, decide_repairs
from policies.routing import RequestDemand, RouterState, make_router
from policies.snapshot import ClusterSnapshot, Health, PoolSnapshot, ReplicaId, Role
from sim.burst_executor import SimBurstExecutor
from sim.config import SimConfig
from sim.cost_model import StepCostModel
from sim.executor import SimExecutor
from sim.metrics import LogHistogram, latency_summary
from sim.replica import SimReplica
from sim.sequence import RequestRecord, SimSequence
from sim.workload import SimRequest


class Event(IntEnum):
    STEP_END = 0
    DELIVER = 1
    ARRIVE = 2
    MIGRATION_STOP = 3
    TICK = 4
    ACTION = 5
    READY = 6


@dataclass
class Timeline:
    """Per-tick samples: (time, replica, running, waiting, KV usage)."""

    rows: list[tuple[float, str, int, int, float]] = field(default_factory=list)


@dataclass(frozen=True)
class SimResult:
    calibration: str
    calibration_source: str
    summary: dict
    simulated_s: float
    wall_s: float
    num_events: int
    actions: dict[str, int]
    timeline: Timeline
    records: list[RequestRecord]

    def to_json(self) -> dict:
        return {"calibration": self.calibration, "calibration_source": self.calibration_source, **self.summary,
                "simulated_s": self.simulated_s, "wall_s": self.wall_s, "num_events": self.num_events,
                "simulated_s_per_wall_s": self.simulated_s / self.wall_s if self.wall_s else None,
                "actions": self.actions}


class Simulation:
    def __init__(self, config: SimConfig, cost: StepCostModel | None = None):
        """`cost` overrides the calibration named in `config`."""
        self.config = config
        cost = cost or StepCostModel.load(config.calibration)
        self.cost = cost.with_capacity(config.num_blocks) if config.num_blocks else cost
        self.now_s = 0.0
        self.replicas: dict[ReplicaId, SimReplica] = {}
        self.target_sizes = {p.name: p.num_replicas for p in config.pools}
        self._pool_roles = {p.name: p.role for p in config.pools}
        self.device = PowerCurve.load(config.device)
        self._pool_clocks = {p.name: p.clock_mhz or self.device.max_clock_mhz for p in config.pools}
        self._replica_since: dict[ReplicaId, float] = {}
        self._retired_j = 0.0
        self.clocks = (PoolClocks(config.clock_mode, None, config.clock_policy,
                                  SloTargets(config.slo.ttft_s, config.slo.tpot_s), list(self._pool_roles))
                       if config.clock_mode != ClockMode.OFF else None)
        self._events: list = []
        self._counter = itertools.count()
        self._ids = itertools.count()
        self._router = make_router(config.routing, config.routing_sample_size)
        self._router_state = RouterState()
        self._routing_snapshot: ClusterSnapshot | None = None
        # Per role, the routing snapshot's replicas that can take requests.
        self._candidates: dict[Role, list] = {}
        self._snapshot_version = 0
        self.itl = LogHistogram()
        self.timeline = Timeline()
        self.executor = SimExecutor(self)
        self.burst = SimBurstExecutor(self, config.burst) if config.burst is not None else None
        self.num_events = 0
        for pool in config.pools:
            for _ in range(pool.num_replicas):
                self.add_replica(pool.name)

    # ---- cluster membership (the executor's) ----
    def add_replica(self, pool: str, start_s: float = 0.0) -> SimReplica:
        """A replica of `pool` that serves after `start_s` (its engine starting)."""
        replica_id = ReplicaId(f"{pool}-{next(self._ids)}")
        clock = self._pool_clocks[pool]
        latencies = LatencyWindow(self.config.latency_window_s) if self.clocks is not None else None
        replica = SimReplica(replica_id, pool, self._pool_roles[pool], self.cost, clock / self.device.max_clock_mhz,
                             self.config.max_decode_run_steps, self.device.power_w(clock, 1.0) - self.device.idle_w,
                             clock, latencies)
        replica.offload_link = self.config.offload_link
        self.replicas[replica_id] = replica
        self._replica_since[replica_id] = self.now_s
        if start_s > 0:
            replica.health = Health.STARTING
            self._push(self.now_s + start_s, Event.READY, replica_id)
        return replica

    def set_pool_clock(self, pool: str, clock_mhz: int) -> None:
        self._pool_clocks[pool] = clock_mhz
        for replica in self.replicas.values():
            if replica.pool == pool:
                replica.set_clock(clock_mhz, clock_mhz / self.device.max_clock_mhz,
                                  self.device.power_w(clock_mhz, 1.0) - self.device.idle_w)

    def remove_replica(self, replica_id: ReplicaId) -> None:
        replica = self.replicas.pop(replica_id)
        replica.version += 1  # its pending step end is void
        self._retired_j += self._replica_energy_j(replica)
        self._candidates = {}
        for seq in replica.running + list(replica.waiting):
            self.executor.forget(seq)
            self.recompute_elsewhere(seq)

    # ---- running ----
    def run(self, requests: list[SimRequest], until_s: float | None = None) -> SimResult:
        started = time.perf_counter()
        records = [RequestRecord(r) for r in requests]
        # Arrivals are read in order rather than queued up front, so the event queue holds
        # only what the replicas have in flight (an hour of traffic is millions of requests).
        # The serving path's fixed latency: a request reaches the ingress's router then.
        overhead_s = self.cost.request_overhead_s
        arrivals = iter(sorted(records, key=lambda record: record.request.arrival_s))
        next_record = next(arrivals, None)
        self._push(0.0, Event.TICK, None)
        last_arrival = max((r.arrival_s for r in requests), default=0.0)
        horizon = until_s if until_s is not None else float("inf")
        unfinished = len(records)
        events = self._events
        at: float
        kind: Event
        payload: Any
        while (events or next_record is not None) and unfinished:
            if next_record is not None and (not events or next_record.request.arrival_s + overhead_s <= events[0][0]):
                at, kind, payload = next_record.request.arrival_s + overhead_s, Event.ARRIVE, next_record
                next_record = next(arrivals, None)
            else:
                at, _, kind, payload = heapq.heappop(events)
            if at > horizon:
                break
            self.now_s = at
            self.num_events += 1
            if kind == Event.STEP_END:
                unfinished -= self._on_step_end(*payload)
            elif kind == Event.ARRIVE:
                self._route_new(SimSequence.fresh(payload))
            elif kind == Event.DELIVER:
                self._deliver(*payload)
            elif kind == Event.MIGRATION_STOP:
                self.executor.stop_for_migration(*payload)
            elif kind == Event.ACTION:
                self.executor.execute(payload)
            elif kind == Event.READY and payload in self.replicas:
                self.replicas[payload].health = Health.HEALTHY
            elif kind == Event.TICK:
                self._tick()
                if self._events or next_record is not None:
                    self._push(at + self.config.tick_s, Event.TICK, None)
                # else: nothing left can happen (a request that fits no replica never finishes)
        span = max(last_arrival, 1e-9)
        summary = latency_summary(records, self.itl, self.config.slo, span)
        summary["energy"] = self._energy_summary(records)
        actions = dict(self.executor.counts) | (dict(self.burst.counts) if self.burst else {})
        return SimResult(self.cost.name, self.cost.source, summary, self.now_s,
                         time.perf_counter() - started, self.num_events, actions, self.timeline, records)

    def _replica_energy_j(self, replica: SimReplica) -> float:
        """Idle power over the replica's life, plus the dynamic power of its steps."""
        return self.device.idle_w * (self.now_s - self._replica_since[replica.replica_id]) + replica.dynamic_j

    def _energy_summary(self, records: list[RequestRecord]) -> dict:
        joules = self._retired_j + sum(self._replica_energy_j(r) for r in self.replicas.values())
        tokens = sum(r.request.output_tokens for r in records if r.finish_s >= 0)
        return {"device": self.device.name, "joules": joules, "joules_per_output_token": joules / max(1, tokens),
                "pool_clocks_mhz": dict(self._pool_clocks)}

    def schedule(self, at_s: float, action) -> None:
        """Carries out `action` (a policy action type) at `at_s`: scripted scaling or faults."""
        self._push(at_s, Event.ACTION, action)

    def _push(self, at_s: float, kind: Event, payload) -> None:
        heapq.heappush(self._events, (at_s, next(self._counter), kind, payload))

    def wake(self, replica: SimReplica) -> None:
        """Something new for `replica`: start a step if idle, or end a decode run early."""
        if replica.idle:
            ends = replica.start_step(self.now_s)
            if ends is not None:
                self._push(ends, Event.STEP_END, (replica.replica_id, replica.version))
        else:
            version = replica.version
            ends = replica.cut_short(self.now_s)
            if replica.version != version and ends is not None:
                self._push(ends, Event.STEP_END, (replica.replica_id, replica.version))

    def deliver_later(self, at_s: float, replica_id: ReplicaId, seq: SimSequence) -> None:
        self._push(at_s, Event.DELIVER, (replica_id, seq))

    def stop_later(self, at_s: float, *payload) -> None:
        self._push(at_s, Event.MIGRATION_STOP, payload)

    def _on_step_end(self, replica_id: ReplicaId, version: int) -> int:
        replica = self.replicas.get(replica_id)
        if replica is None or replica.version != version:
            return 0
        outcome = replica.finish_step()
        for run in outcome.decode_runs:
            self.itl.add_series(run.first_s, run.growth_s, run.num_steps, run.num_tokens)
        replica.record_latencies(self.now_s, outcome)
        for seq in outcome.handed_off:
            self._hand_off(seq)
        for seq in outcome.stopped:
            self.executor.migrated_out(seq)
        if replica.has_work:
            self.wake(replica)
        return len(outcome.finished)

    def _hand_off(self, seq: SimSequence) -> None:
        """Prefill done: the KV goes to a decode replica over the handoff link."""
        moved = SimSequence(seq.record, target_tokens=seq.num_computed, num_computed=seq.num_computed,
                            num_generated=seq.num_generated)
        decode = self._choose(Role.DECODE, moved)
        seconds = self.config.handoff_link.seconds(self.cost.kv_bytes(seq.num_computed))
        self.deliver_later(self.now_s + seconds, decode, moved)

    def _deliver(self, replica_id: ReplicaId, seq: SimSequence) -> None:
        replica = self.replicas.get(replica_id)
        if replica is None:
            return self.recompute_elsewhere(seq)
        replica.add(seq)
        self.wake(replica)

    def _route_new(self, seq: SimSequence) -> None:
        role = Role.PREFILL if self.config.disaggregated else Role.COLOCATED
        replica = self.replicas[self._choose(role, seq)]
        admission_s = self.cost.busy_admission_s * len(replica.running)
        if admission_s > 0:
            return self.deliver_later(self.now_s + admission_s, replica.replica_id, seq)
        replica.add(seq)
        self.wake(replica)

    def recompute_elsewhere(self, seq: SimSequence) -> None:
        """Its KV is gone (its replica was removed): the ingress replays prompt plus the
        tokens so far, as it does when a replica dies."""
        self._route_new(SimSequence(seq.record, seq.num_tokens, num_generated=seq.num_generated))

    def _choose(self, role: Role, seq: SimSequence) -> ReplicaId:
        snapshot = self.routing_snapshot()
        demand = RequestDemand(seq.target_tokens, -(-seq.num_tokens // self.cost.block_size))
        candidates = self._candidates.get(role)
        if candidates is None:
            candidates = self._candidates[role] = [r for r in snapshot.serving(role) if r.replica_id in self.replicas]
        replica_id, self._router_state = self._router.choose(candidates, role, demand, self._router_state)
        return replica_id

    # ---- snapshots and the controller ----
    def routing_snapshot(self) -> ClusterSnapshot:
        snap = self._routing_snapshot
        if snap is None or self.now_s - snap.taken_at_s >= self.config.routing_refresh_s:
            snap = self._routing_snapshot = self.snapshot()
            self._router_state = self._router_state.on_new_snapshot()
            self._candidates = {}
        return snap

    def snapshot(self) -> ClusterSnapshot:
        self._snapshot_version += 1
        by_pool: dict[str, list] = {name: [] for name in self.target_sizes}
        for replica in self.replicas.values():
            by_pool[replica.pool].append(replica.snapshot(self.now_s))
        pools = tuple(PoolSnapshot(name, self._pool_roles[name], self.target_sizes[name], tuple(replicas))
                      for name, replicas in by_pool.items())
        return ClusterSnapshot(self._snapshot_version, self.now_s, pools)

    def _tick(self) -> None:
        snapshot = self.snapshot()
        actions: list[Any] = list(decide_repairs(snapshot, InFlight()))
        plan = self.config.migration
        if plan is not None:
            actions += decide_migrations(snapshot, self.executor.migration_history(self.now_s), plan.settings,
                                         self.now_s, plan.mode)
        if self.clocks is not None:
            supported = {pool: self.device.supported_clocks_mhz for pool in self._pool_roles}
            actions += self.clocks.decide(snapshot, supported)
        if self.burst is not None and self.config.burst is not None:
            weight_blocks = {pool: self.burst.weight_blocks for pool in self._pool_roles}
            actions += decide_burst(snapshot, self.burst.state(), weight_blocks, self.config.burst.settings)
            self.burst.observed(snapshot)
        for action in actions:
            self.executor.execute(action)
        if len(self.replicas) <= self.config.max_timeline_replicas:
            for pool in snapshot.pools:
                for r in pool.replicas:
                    self.timeline.rows.append((self.now_s, r.replica_id, r.num_running, r.num_waiting, r.kv_usage_frac))
