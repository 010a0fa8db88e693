"""The controller actor: owns pool membership, keeps pools healthy and publishes the load
snapshot the front door routes on. The data path never goes through it (contract 2).

Each tick: observe replicas -> build a frozen snapshot -> decide (pure policies) -> drop
what is already in flight -> record -> act -> publish. The loop never dies: a failing tick
is counted and logged, and the next one runs.

It is a named, restartable actor: on (re)start it adopts the replica actors it finds by
name, so a controller crash loses neither replicas nor requests.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import deque
from dataclasses import dataclass, field

import ray
from ray.actor import ActorHandle

from actors.engine_spec import EngineSpec
from actors.messages import ReplicaInfo
from orchestrator.adoption import ReplicaAdoption
from orchestrator.config import ClockMode, ClusterConfig, SLOConfig
from orchestrator.controller_metrics import ControllerMetrics
from orchestrator.events import ActionKind, ControllerEvent
from orchestrator.managed_replica import ManagedReplica
from orchestrator.parameter_drop import ParameterDropping
from orchestrator.pool_clocks import PoolClocks
from orchestrator.replica_handle import ReplicaHandle
from policies.actions import Action, RemoveReplica, ReplaceReplica, StartReplica
from policies.burst import DropParameters, RestoreParameters
from policies.dvfs import SetPoolClock
from policies.migration import MigrateRequests, MigrationHistory, decide_migrations
from policies.repair import InFlight, decide_repairs
from policies.snapshot import ClusterSnapshot, Health, PoolSnapshot, ReplicaId, ReplicaSnapshot

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RoutingTable:
    """What the front door needs to route: the snapshot and a handle per replica."""

    snapshot: ClusterSnapshot
    actors: dict[ReplicaId, ActorHandle] = field(default_factory=dict)
    infos: dict[ReplicaId, ReplicaInfo] = field(default_factory=dict)


class ControllerActor(ParameterDropping, ReplicaAdoption):
    def __init__(self, config: ClusterConfig, model_path: str):
        self.config = config
        self.spec = config.engine_spec(model_path)
        self._replicas: dict[ReplicaId, ManagedReplica] = {}
        self._next_index: dict[str, int] = {p.name: 0 for p in config.pools}
        self._replacing: set[ReplicaId] = set()
        self._starting: dict[str, int] = {}
        self._tasks: set[asyncio.Task] = set()
        self._snapshot = ClusterSnapshot(version=0, taken_at_s=time.time())
        self._events: deque[ControllerEvent] = deque(maxlen=2048)
        self._loop: asyncio.Task | None = None
        self._started: asyncio.Future | None = None
        self._metrics = ControllerMetrics(config.name)
        self._migrating: set[tuple[ReplicaId, ReplicaId]] = set()
        self._recent_migrations: deque[tuple[ReplicaId, ReplicaId, float]] = deque(maxlen=256)
        clocks = config.clocks
        self._clocks = PoolClocks(clocks.mode, clocks.fixed_clock_mhz, clocks.policy_settings(), config.slo.targets(),
                                  [p.name for p in config.pools])
        self._setting_clock: set[ReplicaId] = set()
        self._init_drops()
        self.num_ticks = 0
        self.num_tick_errors = 0
        self.last_tick_s = 0.0

    # ---- public API (control plane only) ----
    async def start(self, wait_ready: bool = True) -> ClusterSnapshot:
        # Callers race here after a restart (every front door polls); one adopts and starts
        # the loop, the others wait for it.
        if self._started is None:
            self._started = asyncio.ensure_future(self._adopt_then_loop())
        await asyncio.shield(self._started)
        if wait_ready:
            await self.wait_until_ready(self.config.controller.start_timeout_s)
        return self._snapshot

    async def _adopt_then_loop(self) -> None:
        await self._adopt_existing_replicas()
        await self._observe()
        self._snapshot = self._build_snapshot()
        self._loop = asyncio.create_task(self._run_loop())

    async def wait_until_ready(self, timeout_s: float) -> ClusterSnapshot:
        deadline = time.monotonic() + timeout_s
        while not self._pools_ready():
            if time.monotonic() > deadline:
                raise TimeoutError(f"pools not ready after {timeout_s:.0f}s: {self._pool_summary()}")
            await asyncio.sleep(0.2)
        return self._snapshot

    async def routing_table(self) -> RoutingTable:
        await self._resume_after_restart()
        return RoutingTable(
            snapshot=self._snapshot,
            actors={rid: m.handle.actor for rid, m in self._replicas.items() if m.info is not None},
            infos={rid: m.info for rid, m in self._replicas.items() if m.info is not None},
        )

    async def snapshot(self) -> ClusterSnapshot:
        await self._resume_after_restart()
        return self._snapshot

    async def events(self, since_s: float = 0.0) -> list[ControllerEvent]:
        return [e for e in self._events if e.at_s >= since_s]

    async def set_clock_mode(self, mode: str, fixed_clock_mhz: int | None = None) -> dict[str, int]:
        """Switches the clock mode live (off, fixed, per_pool, shared); returns each pool's
        current clock. Mode off puts every replica back at its maximum clock."""
        self._clocks.change_mode(ClockMode(mode), fixed_clock_mhz, time.time())
        if ClockMode(mode) == ClockMode.OFF:
            for replica_id, managed in self._replicas.items():
                if managed.info is not None and managed.info.clock_control and managed.info.supported_clocks_mhz:
                    self._spawn(self._set_clock(replica_id, managed.info.supported_clocks_mhz[-1]), lambda: None)
        return self._clocks.chosen

    async def set_slo(self, ttft_s: float, tpot_s: float) -> None:
        """Changes the latency targets the clock policy keeps, live (an event, and the
        targets in force on the DVFS dashboard)."""
        started = time.perf_counter()
        targets = SLOConfig(ttft_s=ttft_s, tpot_s=tpot_s).targets()  # the config's own checks
        before = self._clocks.slo
        self._clocks.change_slo(targets)
        self._metrics.record_slo(targets)
        self._record(ActionKind.CLOCK, "set_slo", "", "", started,
                     outcome=f"ok: TTFT {before.ttft_s:g} -> {ttft_s:g} s, TPOT {before.tpot_s:g} -> {tpot_s:g} s")

    async def pool_clocks(self) -> dict[str, int]:
        return self._clocks.chosen

    async def stop(self) -> None:
        if self._loop is not None:
            self._loop.cancel()
            self._loop = None
        self._started = None
        for task in list(self._tasks):
            task.cancel()
        await self._stop_standbys()
        await asyncio.gather(*(m.handle.shutdown() for m in self._replicas.values()), return_exceptions=True)
        self._replicas.clear()

    async def _resume_after_restart(self) -> None:
        """Ray re-runs the constructor of a crashed controller; the first call that reaches
        the new instance (the front door polls every fraction of a second) resumes the loop."""
        if self._started is None and ray.get_runtime_context().was_current_actor_reconstructed:
            await self.start(wait_ready=False)

    # ---- the loop ----
    async def _run_loop(self) -> None:
        while True:
            started = time.perf_counter()
            failed = False
            try:
                await self._tick()
            except Exception:  # noqa: BLE001 - the loop never dies; the error is counted
                failed = True
                self.num_tick_errors += 1
                logger.exception("controller tick failed")
            self.num_ticks += 1
            self.last_tick_s = time.perf_counter() - started
            self._metrics.record_tick(self.last_tick_s, failed)
            await asyncio.sleep(max(0.0, self.config.controller.tick_s - self.last_tick_s))

    async def _tick(self) -> None:
        await self._observe()
        self._snapshot = self._build_snapshot()
        self._metrics.record_snapshot(self._snapshot)
        in_flight = InFlight(frozenset(self._replacing), tuple(sorted(self._starting.items())))
        for action in decide_repairs(self._snapshot, in_flight):
            self._act(action)
        if self.config.migration.enabled:
            history = MigrationHistory(tuple(sorted(self._migrating)), tuple(self._recent_migrations))
            migration = self.config.migration
            for action in decide_migrations(self._snapshot, history, migration.policy_settings(), time.time(),
                                            migration.mode):
                self._act(action)
        for action in self._decide_drops():
            self._act(action)
        self._steer_clocks()

    def _steer_clocks(self) -> None:
        supported = {m.pool: m.info.supported_clocks_mhz for m in self._replicas.values()
                     if m.info is not None and m.info.supported_clocks_mhz}
        for action in self._clocks.decide(self._snapshot, supported):
            self._act(action)
        controllable = {rid for rid, m in self._replicas.items() if m.info is not None and m.info.clock_control}
        for replica_id, clock in self._clocks.out_of_step(self._snapshot, controllable):
            if replica_id not in self._setting_clock:
                self._setting_clock.add(replica_id)
                self._spawn(self._set_clock(replica_id, clock), lambda r=replica_id: self._setting_clock.discard(r))
        reported = {p.name: max((r.clock_mhz for r in p.serving), default=0) for p in self._snapshot.pools}
        self._metrics.record_pool_clocks({**{k: v for k, v in reported.items() if v}, **self._clocks.chosen})
        self._metrics.record_slo(self._clocks.slo)

    async def _observe(self) -> None:
        now = time.time()
        observed = [m for m in self._replicas.values() if m.info is not None and m.dead_reason is None]
        results = await asyncio.gather(
            *(m.handle.stats(self.config.controller.health_timeout_s) for m in observed), return_exceptions=True
        )
        for managed, result in zip(observed, results, strict=True):
            if isinstance(result, ReplicaSnapshot):
                managed.last, managed.last_ok_at_s = result, now
                if result.health == Health.DEAD:
                    managed.dead_reason = "engine_dead"
            elif isinstance(result, ray.exceptions.RayActorError):
                managed.dead_reason = "actor_died"
            elif now - managed.last_ok_at_s > self.config.controller.health_timeout_s:
                managed.dead_reason = "unresponsive"

    def _build_snapshot(self) -> ClusterSnapshot:
        pools = []
        for pool in self.config.pools:
            replicas = tuple(
                self._replica_view(rid, m) for rid, m in sorted(self._replicas.items()) if m.pool == pool.name
            )
            pools.append(PoolSnapshot(pool.name, pool.role, pool.num_replicas, replicas))
        return ClusterSnapshot(version=self._snapshot.version + 1, taken_at_s=time.time(), pools=tuple(pools))

    def _replica_view(self, replica_id: ReplicaId, managed: ManagedReplica) -> ReplicaSnapshot:
        role = self.config.pool(managed.pool).role
        if managed.dead_reason is not None:
            base = managed.last or ReplicaSnapshot(replica_id, managed.pool, role, Health.DEAD,
                                                   num_members=managed.num_members)
            return dataclasses.replace(base, health=Health.DEAD, health_reason=managed.dead_reason)
        if managed.last is None:
            return ReplicaSnapshot(replica_id, managed.pool, role, Health.STARTING, num_members=managed.num_members)
        return managed.last

    # ---- acting ----
    def _act(self, action: Action) -> None:
        if isinstance(action, StartReplica):
            self._starting[action.pool] = self._starting.get(action.pool, 0) + 1
            self._spawn(self._start_replica(action.pool, action.reason), lambda: self._done_starting(action.pool))
        elif isinstance(action, ReplaceReplica):
            self._replacing.add(action.replica_id)
            self._spawn(self._replace_replica(action), lambda: self._replacing.discard(action.replica_id))
        elif isinstance(action, RemoveReplica):
            self._spawn(self._remove_replica(action), lambda: None)
        elif isinstance(action, SetPoolClock):
            self._clocks.apply(action, self._snapshot.taken_at_s)
            self._record(ActionKind.CLOCK, action.reason, "", action.pool, time.perf_counter(),
                         outcome=f"ok: {action.clock_mhz} MHz")
        elif isinstance(action, (DropParameters, RestoreParameters)):
            self._act_on_drop(action)
        elif isinstance(action, MigrateRequests):
            pair = (action.source, action.destination)
            self._migrating.add(pair)
            self._spawn(self._migrate(action), lambda: self._migrating.discard(pair))

    def _spawn(self, coro, on_done) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)

        def _finish(t: asyncio.Task) -> None:
            self._tasks.discard(t)
            on_done()

        task.add_done_callback(_finish)

    def _done_starting(self, pool: str) -> None:
        self._starting[pool] -= 1

    async def _start_replica(self, pool_name: str, reason: str) -> ReplicaId | None:
        replica_id = self._new_replica(pool_name, self.spec)
        return replica_id if await self._bring_up(replica_id, reason) else None

    def _new_replica(self, pool_name: str, spec: EngineSpec) -> ReplicaId:
        """Creates the replica's actor and counts it in its pool (starting) at once."""
        replica_id, managed = self._create_replica(pool_name, spec)
        self._replicas[replica_id] = managed
        return replica_id

    def _create_replica(self, pool_name: str, spec: EngineSpec) -> tuple[ReplicaId, ManagedReplica]:
        """Creates the replica's actor, not yet counted in its pool."""
        pool = self.config.pool(pool_name)
        replica_id = ReplicaId(f"{pool_name}-{self._next_index[pool_name]}")
        self._next_index[pool_name] += 1
        handle = ReplicaHandle.create(self.config.name, replica_id, pool, spec)
        return replica_id, ManagedReplica(handle=handle, pool=pool_name, num_members=spec.pipeline_stages)

    async def _bring_up(self, replica_id: ReplicaId, reason: str, managed: ManagedReplica | None = None,
                        gate_wait_s: float | None = None) -> bool:
        """Starts the engine of a counted replica, or of `managed` (not counted yet).
        With `gate_wait_s`, the engine waits before its weights until its gate is opened."""
        managed = managed or self._replicas[replica_id]
        started = time.perf_counter()
        try:
            managed.info = await managed.handle.start(self.config.controller.start_timeout_s, gate_wait_s)
            managed.last_ok_at_s = time.time()
        except Exception as exc:  # noqa: BLE001 - any start failure is recorded and retried
            self._replicas.pop(replica_id, None)
            managed.handle.kill()
            self._record(ActionKind.SCALE, reason, replica_id, managed.pool, started, outcome=f"failed: {exc}")
            return False
        self._record(ActionKind.SCALE, reason, replica_id, managed.pool, started)
        return True

    async def _replace_replica(self, action: ReplaceReplica) -> None:
        started = time.perf_counter()
        old = self._replicas.pop(action.replica_id, None)
        if old is not None:
            old.handle.kill()
        new_id = await self._start_replica(action.pool, reason=f"replace:{action.reason}")
        outcome = "ok" if new_id else "failed"
        self._record(ActionKind.REPLACE, action.reason, action.replica_id, action.pool, started, outcome=outcome)

    async def _remove_replica(self, action: RemoveReplica) -> None:
        started = time.perf_counter()
        managed = self._replicas.get(action.replica_id)
        if managed is None:
            return
        await managed.handle.drain(self.config.controller.start_timeout_s)
        await managed.handle.shutdown()
        self._replicas.pop(action.replica_id, None)
        self._record(ActionKind.SCALE, action.reason, action.replica_id, action.pool, started)

    async def _migrate(self, action: MigrateRequests) -> None:
        """Hands `action.num_requests` requests from source to destination, one at a time."""
        source, destination = self._replicas.get(action.source), self._replicas.get(action.destination)
        if source is None or destination is None:
            return
        for _ in range(action.num_requests):
            started = time.perf_counter()
            try:
                report = await source.handle.actor.migrate_out.remote(
                    action.destination, destination.handle.actor, action.mode.value,
                    settings=self.config.migration.mechanism_settings())
                outcome = "ok" if report.outcome == "migrated" else report.outcome
            except ray.exceptions.RayError as exc:
                report, outcome = None, f"failed: source unreachable: {type(exc).__name__}"
            self._recent_migrations.append((action.source, action.destination, time.time()))
            self._record(ActionKind.MIGRATE, action.reason.value, action.source, source.pool, started, outcome=outcome)
            if report is None or report.outcome == "no_request":
                return

    async def _set_clock(self, replica_id: ReplicaId, clock_mhz: int) -> None:
        managed = self._replicas.get(replica_id)
        if managed is None:
            return
        try:
            await managed.handle.actor.set_clock.remote(clock_mhz)
        except ray.exceptions.RayError as exc:
            logger.warning("setting %s to %d MHz failed: %s", replica_id, clock_mhz, exc)

    def _record(self, kind: ActionKind, reason: str, replica_id: str, pool: str, started: float, outcome: str = "ok") -> None:
        event = ControllerEvent(
            kind=kind, reason=reason, replica=replica_id, pool=pool, outcome=outcome,
            duration_s=time.perf_counter() - started, at_s=time.time(),
        )
        self._events.append(event)
        self._metrics.record_event(event)
        logger.info("controller event %s", event)

    # ---- status ----
    def _pools_ready(self) -> bool:
        snapshot = self._snapshot
        return bool(snapshot.pools) and all(p.num_serving_members >= p.target_size for p in snapshot.pools)

    def _pool_summary(self) -> str:
        return ", ".join(f"{p.name} {p.num_serving_members}/{p.target_size}" for p in self._snapshot.pools)
