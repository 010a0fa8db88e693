"""The controller's record of dropped groups (parameter dropping): which pipeline replica
stands for which members, what they hold once restored, and the usage seen at the last
tick (to tell rising from falling). Feeds `policies.burst.decide_burst` its state."""

from __future__ import annotations

from policies.burst import BurstState, DroppedGroup
from policies.snapshot import ClusterSnapshot, ReplicaId


class DroppedGroups:
    def __init__(self) -> None:
        self._groups: dict[ReplicaId, DroppedGroup] = {}
        # Members or pipelines being switched: no decision touches them until it is done.
        self.switching: set[ReplicaId] = set()
        self._usage: dict[ReplicaId, float] = {}

    def state(self) -> BurstState:
        groups = tuple(g for g in self._groups.values() if g.serving_as not in self.switching)
        return BurstState(groups, tuple(sorted(self._usage.items())))

    def observed(self, snapshot: ClusterSnapshot) -> None:
        self._usage = {r.replica_id: r.kv_usage_frac for p in snapshot.pools for r in p.replicas}

    def add(self, group: DroppedGroup) -> None:
        self._groups[group.serving_as] = group

    def group(self, pipeline_id: ReplicaId) -> DroppedGroup | None:
        return self._groups.get(pipeline_id)

    def remove(self, pipeline_id: ReplicaId) -> DroppedGroup | None:
        return self._groups.pop(pipeline_id, None)

    def serving_as(self, members: tuple[ReplicaId, ...]) -> ReplicaId | None:
        for pipeline_id, group in self._groups.items():
            if group.members == members:
                return pipeline_id
        return None

    def count(self, pool: str) -> int:
        return sum(1 for g in self._groups.values() if g.pool == pool)

    def pipelines(self) -> list[ReplicaId]:
        return list(self._groups)
