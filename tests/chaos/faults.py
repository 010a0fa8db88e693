"""The faults a chaos run injects into a live Tide cluster, each the way it happens in
production: an actor or a whole node dies, the KV staging area vanishes under the
transfers, a replica's device slows down."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import ray

from policies.snapshot import Role
from tests.chaos.local_cluster import NODE_RESOURCE_PREFIX, LocalRayCluster
from tests.integration.helpers import ask


async def replica_actors(controller, role: Role) -> list[tuple[str, object]]:
    table = await _routing_table(controller)
    return [(r.replica_id, table.actors[r.replica_id]) for r in table.snapshot.serving(role)]


async def kill_busiest_replica(controller, role: Role) -> str:
    """Kills the replica of `role` with the most running requests (mid-stream)."""
    table = await _routing_table(controller)
    serving = sorted(table.snapshot.serving(role), key=lambda r: -r.num_running)
    victim = serving[0].replica_id
    ray.kill(table.actors[victim], no_restart=True)
    return victim


async def _routing_table(controller):
    return await ask(controller.routing_table.remote)


def kill_controller(controller) -> None:
    """The controller dies; Ray restarts it (max_restarts=-1) and it adopts the replicas."""
    ray.kill(controller, no_restart=False)


async def stop_node_hosting(cluster: LocalRayCluster, controller, role: Role) -> str:
    """Stops the whole node that hosts the busiest replica of `role`."""
    table = await _routing_table(controller)
    busiest = sorted(table.snapshot.serving(role), key=lambda r: -r.num_running)[0]
    node_id = table.infos[busiest.replica_id].node_id
    [node] = [n for n in ray.nodes() if n["NodeID"] == node_id]
    [name] = [k.removeprefix(NODE_RESOURCE_PREFIX) for k in node["Resources"] if k.startswith(NODE_RESOURCE_PREFIX)]
    cluster.stop_node(name)
    return f"node {name} (hosting {busiest.replica_id})"


async def break_staging(staging_dir: Path, seconds: float) -> int:
    """Deletes staged KV as fast as it appears for `seconds`: exports and fetches find
    nothing and fall back to recomputing. Returns how many files it removed."""
    removed = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for path in list(staging_dir.glob("*")) if staging_dir.exists() else []:
            if path.is_dir():
                continue
            try:
                path.unlink()
                removed += 1
            except FileNotFoundError:
                pass
        await asyncio.sleep(0.002)
    return removed


async def slow_replica(controller, role: Role, clock_mhz: int, seconds: float) -> str:
    """Locks one replica's (emulated) device at a low clock for a while: its engine steps
    really stretch, the replica slows down but stays alive."""
    [(replica_id, actor), *_] = await replica_actors(controller, role)
    await actor.set_clock.remote(clock_mhz)
    await asyncio.sleep(seconds)
    try:
        await actor.set_clock.remote(100_000)
    except ray.exceptions.RayActorError:
        pass
    return replica_id


def clear_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
