"""Parameter drop and restore on simulated replicas: the simulator's counterpart of the
controller's, for the same actions (policies/burst.py).

Drop: each of the g members gains weight_blocks x (g - 1) / g KV blocks and serves as a
pipeline stage (slower steps, see `BurstPlan`); the group's waiting requests are spread
over its members (KunServe merges the members' queues into the pipeline's). Restore: the
dropped weights come back over the restore link while the group keeps serving; then each
member returns to its own blocks and speed, once its used blocks fit (otherwise the restore
waits for the next decision).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

from policies.burst import BurstState, DroppedGroup, DropParameters, RestoreParameters
from policies.snapshot import ClusterSnapshot, ReplicaId

if TYPE_CHECKING:
    from sim.cluster import Simulation
    from sim.config import BurstPlan


@dataclass(frozen=True)
class RestoreDone:
    """The dropped weights of `members` are back (scheduled by a restore)."""

    members: tuple[ReplicaId, ...]


class SimBurstExecutor:
    def __init__(self, sim: Simulation, plan: BurstPlan):
        self._sim = sim
        self._plan = plan
        self.weight_blocks = sim.cost.weight_bytes // (sim.cost.kv_bytes_per_token * sim.cost.block_size)
        self._groups: dict[tuple[ReplicaId, ...], DroppedGroup] = {}
        self._base_blocks: dict[ReplicaId, int] = {}
        self._restoring: set[tuple[ReplicaId, ...]] = set()
        self._usage: dict[ReplicaId, float] = {}
        self.counts: Counter[str] = Counter()
        # (time, event, members) for timelines.
        self.events: list[tuple[float, str, tuple[str, ...]]] = []

    def state(self) -> BurstState:
        return BurstState(tuple(g for key, g in self._groups.items() if key not in self._restoring),
                          tuple(sorted(self._usage.items())))

    def observed(self, snapshot: ClusterSnapshot) -> None:
        self._usage = {r.replica_id: r.kv_usage_frac for p in snapshot.pools for r in p.replicas}

    def execute(self, action: DropParameters | RestoreParameters) -> None:
        if isinstance(action, DropParameters):
            self._drop(action)
        elif action.members in self._groups and action.members not in self._restoring:
            self._restoring.add(action.members)
            weights = self._sim.cost.weight_bytes * (len(action.members) - 1) // len(action.members)
            self._sim.schedule(self._sim.now_s + self._plan.restore_link.seconds(weights), RestoreDone(action.members))

    def finish_restore(self, members: tuple[ReplicaId, ...]) -> None:
        self._restoring.discard(members)
        replicas = [self._sim.replicas.get(m) for m in members]
        if any(r is None for r in replicas):
            self._groups.pop(members, None)  # a member is gone: the survivors serve alone
            for r in replicas:
                if r is not None:
                    self._leave_pipeline(r)
            return
        if any(r.used_blocks > self._base_blocks[r.replica_id] for r in replicas):
            self.counts["restore_deferred"] += 1
            return
        del self._groups[members]
        for replica in replicas:
            self._leave_pipeline(replica)
        self.counts["restored"] += 1
        self.events.append((self._sim.now_s, "restore", members))

    def _drop(self, action: DropParameters) -> None:
        replicas = [self._sim.replicas[m] for m in action.members]
        g = len(replicas)
        per_member = self.weight_blocks * (g - 1) // g
        hop = self._plan.pipeline_link
        hidden = self._plan.hidden_bytes_per_token
        for replica in replicas:
            self._base_blocks[replica.replica_id] = replica.num_blocks
            replica.resize_kv(replica.num_blocks + per_member)
            replica.pipeline_factor = self._plan.pipeline_factor
            replica.pipeline_hop_s = lambda tokens, g=g: (g - 1) * hop.seconds(tokens * hidden)
        waiting = [seq for r in replicas for seq in r.waiting]
        for replica in replicas:
            replica.waiting.clear()
        for i, seq in enumerate(sorted(waiting, key=lambda s: s.record.request.arrival_s)):
            replicas[i % g].add(seq)
        for replica in replicas:
            self._sim.wake(replica)
        self._groups[action.members] = DroppedGroup(action.pool, action.members, self._sim.now_s)
        self.counts["dropped"] += 1
        self.events.append((self._sim.now_s, "drop", action.members))

    def _leave_pipeline(self, replica) -> None:
        replica.resize_kv(self._base_blocks.pop(replica.replica_id))
        replica.pipeline_factor = 1.0
        replica.pipeline_hop_s = None
        self._sim.wake(replica)
