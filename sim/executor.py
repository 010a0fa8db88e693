"""Carries out the policies' actions on simulated replicas: the simulator's counterpart of
the controller's executor (orchestrator/controller.py), for the same action types."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from policies.actions import Action, RemoveReplica, ReplaceReplica, StartReplica
from policies.burst import DropParameters, RestoreParameters
from policies.dvfs import SetPoolClock
from policies.migration import MigrateRequests, MigrationHistory, MigrationMode
from policies.snapshot import Health, ReplicaId
from sim.burst_executor import RestoreDone
from sim.sequence import SimSequence

if TYPE_CHECKING:
    from sim.cluster import Simulation

# A replica that starts takes this long before it serves (engine start-up).
REPLICA_START_S = 20.0


class SimExecutor:
    def __init__(self, sim: Simulation):
        self._sim = sim
        self.counts: Counter[str] = Counter()
        self._in_flight: dict[int, tuple[ReplicaId, ReplicaId]] = {}
        self._recent: list[tuple[ReplicaId, ReplicaId, float]] = []

    def execute(self, action: Action | MigrateRequests | SetPoolClock) -> None:
        self.counts[type(action).__name__] += 1
        if isinstance(action, MigrateRequests):
            self._migrate(action)
        elif isinstance(action, StartReplica):
            self._sim.add_replica(action.pool, REPLICA_START_S)
        elif isinstance(action, ReplaceReplica):
            self._sim.remove_replica(action.replica_id)
            self._sim.add_replica(action.pool, REPLICA_START_S)
        elif isinstance(action, RemoveReplica):
            self._sim.remove_replica(action.replica_id)
        elif isinstance(action, (DropParameters, RestoreParameters)):
            self._sim.burst.execute(action)
        elif isinstance(action, RestoreDone):
            self._sim.burst.finish_restore(action.members)
        elif isinstance(action, SetPoolClock):
            self._sim.clocks.apply(action, self._sim.now_s)
            self._sim.set_pool_clock(action.pool, action.clock_mhz)

    # ---- live migration ----
    def migration_history(self, now_s: float) -> MigrationHistory:
        cooldown = self._sim.config.migration.settings.cooldown_s if self._sim.config.migration else 0.0
        self._recent = [m for m in self._recent if now_s - m[2] < cooldown]
        return MigrationHistory(tuple(self._in_flight.values()), tuple(self._recent))

    def _migrate(self, action: MigrateRequests) -> None:
        """Pre-copy: the request keeps decoding on the source while its blocks are copied;
        then it stops at a step boundary and the last stage (at most `last_stage_blocks`)
        is copied while it makes no progress. Stop-and-copy copies everything while it is
        stopped; recompute copies nothing and prefills again on the destination."""
        sim = self._sim
        source = sim.replicas.get(action.source)
        if source is None or action.destination not in sim.replicas:
            return
        plan = sim.config.migration
        for seq in source.take_running(action.num_requests):
            precopy_s = 0.0
            if action.mode == MigrationMode.PRE_COPY:
                precopy_s = plan.link.seconds(sim.cost.kv_bytes(seq.num_computed))
            self._in_flight[id(seq)] = (action.source, action.destination)
            self._recent.append((action.source, action.destination, sim.now_s))
            seq.migration = action
            sim.stop_later(sim.now_s + precopy_s, source.replica_id, seq)

    def forget(self, seq: SimSequence) -> None:
        """`seq` lost its replica: a migration of it is over."""
        self._in_flight.pop(id(seq), None)

    def stop_for_migration(self, source_id: ReplicaId, seq: SimSequence) -> None:
        """The copy has caught up: stop the request at the source's next step boundary."""
        source = self._sim.replicas.get(source_id)
        if source is None or seq not in source.running:
            self._in_flight.pop(id(seq), None)  # finished, or its replica went away
            return
        source.request_stop(seq)
        self._sim.wake(source)

    def migrated_out(self, seq: SimSequence) -> None:
        """The source stopped the request: it continues on the destination after the
        downtime (the last copy stage, or a recompute there)."""
        sim, plan = self._sim, self._sim.config.migration
        action: MigrateRequests = seq.migration
        self._in_flight.pop(id(seq), None)
        seq.migration, seq.stopping = None, False
        seq.record.num_migrations += 1
        self.counts[f"migrated_{action.reason.value}"] += 1
        destination = sim.replicas.get(action.destination)
        if destination is None or destination.health != Health.HEALTHY:
            return sim.recompute_elsewhere(seq)
        if action.mode == MigrationMode.RECOMPUTE:
            moved = SimSequence(seq.record, seq.num_tokens, num_generated=seq.num_generated)
            return sim.deliver_later(sim.now_s, destination.replica_id, moved)
        copied_tokens = seq.num_computed
        if action.mode == MigrationMode.PRE_COPY:
            copied_tokens = min(seq.num_computed, plan.last_stage_blocks * sim.cost.block_size)
        downtime = plan.link.seconds(sim.cost.kv_bytes(copied_tokens))
        seq.record.stall_s += downtime
        moved = SimSequence(seq.record, target_tokens=seq.num_computed, num_computed=seq.num_computed,
                            num_generated=seq.num_generated)
        sim.deliver_later(sim.now_s + downtime, destination.replica_id, moved)
