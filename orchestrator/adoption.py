"""A restarted controller adopts the replica actors it finds by name (a mixin of
`ControllerActor`): replicas are detached, so a controller crash loses none of them.

A replica that does not answer within `health_timeout_s` is not given up: an ordinary
start builds its engine on the actor's event loop, so a replica that was starting when the
controller died answers only once its engine is up, and a busy one may answer late. It is
counted as starting (the pool starts no second replica for it) and adopted when its start
call returns, within `start_timeout_s`; only then is it stopped if it still has not.
"""

from __future__ import annotations

import asyncio
import time

import ray

from actors.messages import ReplicaInfo
from actors.weights_gate import StartBehindGate
from orchestrator.events import ActionKind
from orchestrator.managed_replica import ManagedReplica
from orchestrator.replica_handle import ReplicaHandle, replica_actor_name
from policies.snapshot import ReplicaId

ADOPTED_BEHIND_GATE = "stopped: it was starting behind its weights gate"


class ReplicaAdoption:
    async def _adopt_existing_replicas(self) -> None:
        prefix = replica_actor_name(self.config.name, ReplicaId(""))
        namespace = self.config.name
        names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                 if a["namespace"] == namespace and a["name"].startswith(prefix)]
        found = []
        for name in names:
            replica_id = ReplicaId(name.removeprefix(prefix))
            pool, _, index = replica_id.rpartition("-")
            if pool not in self._next_index or not index.isdigit():
                continue
            # Past every name found, adopted or not: a name is held until its actor is gone.
            self._next_index[pool] = max(self._next_index[pool], int(index) + 1)
            found.append((replica_id, pool, ray.get_actor(name, namespace=namespace)))
        await asyncio.gather(*(self._adopt(*replica) for replica in found))

    async def _adopt(self, replica_id: ReplicaId, pool: str, actor) -> None:
        started = time.perf_counter()
        handle = ReplicaHandle(replica_id, actor)
        try:
            info = await handle.start(self.config.controller.health_timeout_s)
        except asyncio.TimeoutError:
            self._replicas[replica_id] = ManagedReplica(handle=handle, pool=pool)
            self._spawn(self._adopt_when_started(replica_id, started), lambda: None)
            return
        except StartBehindGate:
            # Started for a switch (or as a standby) by the controller before this one.
            self._stop_unadopted(handle, pool, started, ADOPTED_BEHIND_GATE)
            return
        except (ray.exceptions.RayError, ValueError):
            return  # gone already
        self._replicas[replica_id] = ManagedReplica(handle=handle, pool=info.pool)
        self._adopted(replica_id, info, started)

    async def _adopt_when_started(self, replica_id: ReplicaId, started: float) -> None:
        managed = self._replicas[replica_id]
        try:
            info = await managed.handle.start(self.config.controller.start_timeout_s)
        except StartBehindGate:
            outcome = ADOPTED_BEHIND_GATE
        except (ray.exceptions.RayError, ValueError, asyncio.TimeoutError) as exc:
            outcome = f"stopped: its start did not finish: {type(exc).__name__}: {exc}"
        else:
            if self._replicas.get(replica_id) is managed:
                self._adopted(replica_id, info, started, outcome=f"ok: answered after {time.perf_counter() - started:.1f} s")
            return
        self._replicas.pop(replica_id, None)
        self._stop_unadopted(managed.handle, managed.pool, started, outcome)

    def _adopted(self, replica_id: ReplicaId, info: ReplicaInfo, started: float, outcome: str = "ok") -> None:
        managed = self._replicas[replica_id]
        managed.info, managed.last_ok_at_s, managed.num_members = info, time.time(), info.pipeline_stages
        if info.pipeline_stages > 1:
            self._adopt_pipeline(replica_id, info.pool, info.pipeline_stages)
        self._record(ActionKind.ADOPT, "controller_start", replica_id, info.pool, started, outcome=outcome)

    def _stop_unadopted(self, handle: ReplicaHandle, pool: str, started: float, outcome: str) -> None:
        handle.kill()
        self._record(ActionKind.ADOPT, "controller_start", handle.replica_id, pool, started, outcome=outcome)
