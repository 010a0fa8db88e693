"""The controller's side of parameter dropping (KunServe), a mixin of `ControllerActor`.

Drop: the members stop and one pipeline replica takes their place: a vLLM engine with
pipeline parallelism over the members' devices (`pipeline_stages` = g), each stage holding
a contiguous 1/g of the layers and, in what the other layers' weights leave of its memory,
KV for its layers only, so the group holds weight_blocks x (g - 1) more blocks. Restore:
the pipeline stops and g replicas start again. The new engines start while the group still
serves, as far as their weights (actors/weights_gate.py: processes, imports, distributed
set-up; no weights, no KV); then the switch: the running requests are handed over with
their KV staged (at a drop each stage loads its own layers of it; at a restore each stage
stages its layers and the parts become one file of every layer), the old engines stop, the
gates open, and the new engines load their weights, allocate KV and serve. The group
serves nothing only during the switch, which is the drop / restore event's duration and
metric; the start behind the gates is in the event's outcome. With
`standby_pipeline`, a pipeline waits behind its gates before any burst, so a drop has no
start to wait for (`_keep_standbys`; which pools get one: policies/standby.py).

A pipeline that dies (any stage's process) is replaced like any dead replica; its group is
forgotten, and the pool's repair starts the other members again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time

from actors.engine_spec import EngineSpec
from orchestrator.dropped_groups import DroppedGroups
from orchestrator.events import ActionKind
from orchestrator.managed_replica import ManagedReplica
from policies.burst import DropParameters, DroppedGroup, RestoreParameters, decide_burst
from policies.snapshot import ReplicaId
from policies.standby import StandbyView, pools_wanting_a_standby


@dataclasses.dataclass(frozen=True)
class StandbyPipeline:
    pool: str
    replica_id: ReplicaId
    stages: int
    at_gate: bool  # every stage waits at its weights gate


@dataclasses.dataclass
class _Standby:
    """A pipeline started behind its weights gates before a drop needs it."""

    replica_id: ReplicaId
    managed: ManagedReplica  # not counted in its pool
    start: asyncio.Task  # ends once its gates open (a drop) or its wait runs out
    at_gate: asyncio.Task
    created_s: float


class ParameterDropping:
    def _init_drops(self) -> None:
        self._drops = DroppedGroups()
        self._memory = self.config.replica_memory(self.spec.model)
        self._standbys: dict[str, _Standby] = {}
        # (drop / restore / standby, pool) -> when its last start failed: no new try
        # before retry_after_s.
        self._failed_start_at: dict[tuple[str, str], float] = {}

    # ---- public API ----
    async def drop_parameters(self, pool: str, members: list[str] | None = None) -> ReplicaId:
        """Drops a group now (the first two serving replicas of `pool` unless `members`
        are named); returns the pipeline replica's id once it serves. The group stays
        dropped until `restore_parameters`."""
        if members is None:
            members = [r.replica_id for r in self._snapshot_pool(pool).serving if r.num_members == 1][:2]
        action = DropParameters(pool, tuple(ReplicaId(m) for m in members), 0, reason="manual")
        pipeline_id = await self._drop(action)
        if pipeline_id is None:
            raise RuntimeError(f"dropping {members} of pool {pool} failed; see the controller's events")
        return pipeline_id

    async def restore_parameters(self, pipeline_id: str) -> list[ReplicaId]:
        """Restores the group a pipeline replica stands for; returns the members' new ids."""
        return await self._restore(ReplicaId(pipeline_id), reason="manual")

    async def dropped_groups(self) -> list[DroppedGroup]:
        return list(self._drops.state().groups)

    async def standby_pipelines(self) -> list[StandbyPipeline]:
        return [StandbyPipeline(pool, s.replica_id, s.managed.num_members, _is_at_gate(s))
                for pool, s in self._standbys.items()]

    # ---- the tick ----
    def _decide_drops(self) -> list[DropParameters | RestoreParameters]:
        self._forget_lost_pipelines()
        self._record_drops()
        drop = self.config.parameter_drop
        if not drop.enabled or self._memory is None:
            self._drops.observed(self._snapshot)
            return []
        weight_blocks = {p.name: self._memory.weight_blocks for p in self.config.pools}
        busy = self._drops.switching
        snapshot = self._snapshot
        actions = [a for a in decide_burst(snapshot, self._drops.state(), weight_blocks, drop.settings())
                   if not busy.intersection(a.members)
                   and not self._retrying_too_soon(_kind_of(a), a.pool)]
        self._drops.observed(snapshot)
        self._keep_standbys()
        return actions

    def _retrying_too_soon(self, kind: str, pool: str) -> bool:
        failed_at = self._failed_start_at.get((kind, pool))
        return failed_at is not None and time.monotonic() - failed_at < self.config.parameter_drop.retry_after_s

    def _keep_standbys(self) -> None:
        drop = self.config.parameter_drop
        if not drop.standby_pipeline:
            return
        for pool, standby in list(self._standbys.items()):
            if standby.start.done():  # only a drop opens its gates: its start failed
                del self._standbys[pool]
                self._failed_start_at[("standby", pool)] = time.monotonic()
        view = StandbyView(with_standby=frozenset(self._standbys),
                           backing_off=frozenset(p.name for p in self.config.pools
                                                 if self._retrying_too_soon("standby", p.name)),
                           starting=frozenset(p for p, n in self._starting.items() if n),
                           switching=bool(self._drops.switching))
        g = drop.max_group_size
        for pool in pools_wanting_a_standby(self._snapshot, view, g, drop.settings().roles):
            replica_id, managed = self._create_replica(pool, self._pipeline_spec(g))
            start = asyncio.ensure_future(self._bring_up(replica_id, "drop:standby", managed,
                                                         gate_wait_s=drop.standby_wait_s))
            at_gate = asyncio.ensure_future(managed.handle.wait_at_gate(self.config.controller.start_timeout_s))
            self._standbys[pool] = _Standby(replica_id, managed, start, at_gate, time.perf_counter())

    def _take_standby(self, pool: str, stages: int) -> _Standby | None:
        standby = self._standbys.get(pool)
        if standby is None or standby.managed.num_members != stages or standby.start.done():
            return None
        return self._standbys.pop(pool)

    async def _stop_standbys(self) -> None:
        standbys = list(self._standbys.values())
        self._standbys.clear()
        for standby in standbys:
            standby.managed.handle.kill()
        await asyncio.gather(*(s.start for s in standbys), *(s.at_gate for s in standbys), return_exceptions=True)

    def _pipeline_spec(self, stages: int) -> EngineSpec:
        return dataclasses.replace(self.spec, pipeline_stages=stages, kv_cache_bytes=self._memory.kv_bytes(stages))

    def _record_drops(self) -> None:
        for pool in self.config.pools:
            gained = 0
            for managed in self._replicas.values():
                if managed.pool == pool.name and managed.num_members > 1 and managed.info and self._memory:
                    gained += managed.info.num_total_blocks - managed.num_members * self._memory.num_blocks(1)
            standby = self._standbys.get(pool.name)
            self._metrics.record_dropped_groups(pool.name, self._drops.count(pool.name), gained,
                                                standby_at_gate=int(standby is not None and _is_at_gate(standby)))

    def _act_on_drop(self, action: DropParameters | RestoreParameters) -> None:
        if isinstance(action, DropParameters):
            self._spawn(self._drop(action), lambda: None)
        else:
            pipeline_id = self._drops.serving_as(action.members)
            if pipeline_id is not None:
                self._spawn(self._restore(pipeline_id, action.reason), lambda: None)

    # ---- acting ----
    async def _drop(self, action: DropParameters) -> ReplicaId | None:
        started = time.perf_counter()
        members = [self._replicas.get(m) for m in action.members]
        g = len(members)
        if self._memory is None or g < 2 or any(m is None or m.info is None or m.num_members != 1 for m in members):
            self._record(ActionKind.DROP, action.reason, ",".join(action.members), action.pool, started,
                         outcome="failed: members not serving alone, or no replica memory budget configured")
            return None
        standby = self._take_standby(action.pool, g)
        if standby is not None:
            pipeline_id, pipeline = standby.replica_id, standby.managed
        else:
            pipeline_id, pipeline = self._create_replica(action.pool, self._pipeline_spec(g))
        self._drops.switching.update((pipeline_id, *action.members))
        try:
            # The members serve on (and take requests) while the pipeline starts.
            starts = await self._start_behind_gates({pipeline_id: pipeline}, f"drop:{action.reason}",
                                                    [standby.start] if standby else None)
            if None in starts:
                self._failed_start_at[(ActionKind.DROP.value, action.pool)] = time.monotonic()
                self._record(ActionKind.DROP, action.reason, pipeline_id, action.pool, started,
                             outcome="failed: the pipeline did not reach its weights; the members serve on")
                return None
            prestart_s = time.perf_counter() - started
            if starts:
                self._metrics.record_gated_start(ActionKind.DROP.value, action.pool, prestart_s)
            switch_started = time.perf_counter()
            # One step, no await: the pool never counts fewer members than it has. (A
            # member that died meanwhile is already gone: the pool's repair replaced it.)
            for member_id in action.members:
                self._replicas.pop(member_id, None)
            self._replicas[pipeline_id] = pipeline
            restored_blocks = g * self._memory.num_blocks(1)
            self._drops.add(DroppedGroup(action.pool, action.members, time.time(), pipeline_id, restored_blocks,
                                         pinned=action.reason == "manual"))
            # The members' running requests move to the pipeline with their KV staged, and
            # continue there once it serves; then the members' devices are freed for it.
            moved = await asyncio.gather(*(m.handle.hand_over_all([pipeline_id], self.config.controller.health_timeout_s)
                                           for m in members))
            await asyncio.gather(*(m.handle.shutdown() for m in members))
            (up,) = await self._open_gates({pipeline_id: pipeline}, starts, f"drop:{action.reason}")
        finally:
            self._drops.switching.difference_update((pipeline_id, *action.members))
        if not up:
            self._drops.remove(pipeline_id)
            self._record(ActionKind.DROP, action.reason, pipeline_id, action.pool, switch_started,
                         outcome="failed: the pipeline did not start; the pool's repair restarts the members")
            return None
        # The group's time dropped counts from when the pipeline serves.
        self._drops.add(dataclasses.replace(self._drops.remove(pipeline_id), since_s=time.time()))
        gained = self._replicas[pipeline_id].info.num_total_blocks - restored_blocks
        self._record(ActionKind.DROP, action.reason, pipeline_id, action.pool, switch_started,
                     outcome=f"ok: {g} stages for {','.join(action.members)}, {gained:+d} KV blocks, "
                             f"{handed_over(moved)}, "
                             f"{started_behind_gates(prestart_s, bool(starts), standby and standby.created_s)}")
        return pipeline_id

    async def _restore(self, pipeline_id: ReplicaId, reason: str) -> list[ReplicaId]:
        started = time.perf_counter()
        group = self._drops.group(pipeline_id)
        pipeline = self._replicas.get(pipeline_id)
        if group is None or pipeline is None or pipeline_id in self._drops.switching:
            return []
        members = dict(self._create_replica(group.pool, self.spec) for _ in group.members)
        member_ids = list(members)
        self._drops.switching.update((pipeline_id, *member_ids))
        try:
            # The pipeline serves on while the members start.
            starts = await self._start_behind_gates(members, f"restore:{reason}")
            if None in starts:
                self._failed_start_at[(ActionKind.RESTORE.value, group.pool)] = time.monotonic()
                self._record(ActionKind.RESTORE, reason, pipeline_id, group.pool, started,
                             outcome="failed: the members did not reach their weights; the pipeline serves on")
                return []
            prestart_s = time.perf_counter() - started
            if starts:
                self._metrics.record_gated_start(ActionKind.RESTORE.value, group.pool, prestart_s)
            switch_started = time.perf_counter()
            # One step, no await, as at a drop.
            self._drops.remove(pipeline_id)
            self._replicas.pop(pipeline_id, None)
            self._replicas.update(members)
            # The pipeline's running requests are split over the members with their KV
            # (each stage stages its layers) and continue there once they serve.
            moved = await pipeline.handle.hand_over_all(member_ids, self.config.controller.health_timeout_s)
            await pipeline.handle.shutdown()
            up = await self._open_gates(members, starts, f"restore:{reason}")
        finally:
            self._drops.switching.difference_update((pipeline_id, *member_ids))
        outcome = "ok" if all(up) else "failed: some members did not start; the pool's repair retries them"
        self._record(ActionKind.RESTORE, reason, pipeline_id, group.pool, switch_started,
                     outcome=f"{outcome}: {pipeline_id} -> {','.join(member_ids)}, {handed_over([moved])}, "
                             f"{started_behind_gates(prestart_s, bool(starts))}")
        return [m for m, ok in zip(member_ids, up) if ok]

    async def _start_behind_gates(self, replicas: dict, reason: str,
                                  starts: list[asyncio.Task] | None = None) -> list[asyncio.Task | None]:
        """Starts the engines of `replicas` (not counted in their pool yet) as far as their
        weights (actors/weights_gate.py) while the replicas they replace still serve: the
        start-ups to finish with `_open_gates`. If any engine does not get there, all are
        stopped and the list holds None. With `start_behind_gate` off, nothing starts
        here: `_open_gates` starts the engines. `starts`: start-ups already under way
        (a standby pipeline's)."""
        if not self.config.parameter_drop.start_behind_gate:
            return []
        timeout_s = self.config.controller.start_timeout_s
        if starts is None:
            starts = [asyncio.ensure_future(self._bring_up(replica_id, reason, managed, gate_wait_s=timeout_s))
                      for replica_id, managed in replicas.items()]
        at_gates = await asyncio.gather(*(m.handle.wait_at_gate(timeout_s) for m in replicas.values()))
        if all(at_gates):
            return starts
        for managed in replicas.values():
            managed.handle.kill()
        await asyncio.gather(*starts, return_exceptions=True)
        return [None] * len(starts)

    async def _open_gates(self, replicas: dict, starts: list, reason: str) -> list[bool]:
        if not starts:  # started cold, now that the old engines have stopped
            return list(await asyncio.gather(*(self._bring_up(replica_id, reason, managed)
                                               for replica_id, managed in replicas.items())))
        for managed in replicas.values():
            await managed.handle.open_gate()
        return list(await asyncio.gather(*starts))

    def _forget_lost_pipelines(self) -> None:
        """A dead pipeline is replaced by the pool's repair; its group is over."""
        for pipeline_id in self._drops.pipelines():
            managed = self._replicas.get(pipeline_id)
            if pipeline_id in self._drops.switching:
                continue
            if managed is None or managed.dead_reason is not None:
                group = self._drops.remove(pipeline_id)
                self._record(ActionKind.RESTORE, f"pipeline_{managed.dead_reason if managed else 'gone'}",
                             pipeline_id, group.pool, time.perf_counter(), outcome="ok: members restart as replicas")

    def _adopt_pipeline(self, replica_id: ReplicaId, pool: str, stages: int) -> None:
        """A pipeline found after a controller restart keeps its group."""
        if self._memory is not None:
            members = tuple(ReplicaId(f"{replica_id}/{i}") for i in range(stages))
            self._drops.add(DroppedGroup(pool, members, time.time(), replica_id, stages * self._memory.num_blocks(1)))

    def _snapshot_pool(self, pool: str):
        for p in self._snapshot.pools:
            if p.name == pool:
                return p
        raise KeyError(pool)


def started_behind_gates(seconds: float, behind_gate: bool = True, standby_since: float | None = None) -> str:
    """`standby_since`: the perf_counter time a standby pipeline was created."""
    if not behind_gate:
        return "engines started once the old ones stopped"
    if standby_since:
        return (f"a standby pipeline took over (started {time.perf_counter() - standby_since:.0f} s before; "
                f"the drop waited {seconds:.1f} s for its gates)")
    return f"engines started behind their weights gates in {seconds:.1f} s while the group served"


def _kind_of(action: DropParameters | RestoreParameters) -> str:
    return (ActionKind.DROP if isinstance(action, DropParameters) else ActionKind.RESTORE).value


def _is_at_gate(standby: _Standby) -> bool:
    return standby.at_gate.done() and not standby.at_gate.cancelled() and standby.at_gate.result() is True


def handed_over(moved: list[tuple[int, int]]) -> str:
    """The hand-over part of a drop or restore event: `moved` is each replica's (requests
    moved, of them with their KV)."""
    return (f"{sum(m for m, _ in moved)} running requests handed over, "
            f"{sum(k for _, k in moved)} with their KV")
