"""Which pools get a standby pipeline (`parameter_drop.standby_pipeline`): a pipeline
engine over a group's devices that waits at its weights gates before any burst, so a drop
switches without waiting for a start. Pure: the snapshot, and what the controller knows of
its own standbys and starts.

A pool gets one once it has a group to drop (at least `group_size` single replicas
serving) and starts nothing else: a standby would take the devices a replacement or a
scale-up needs, and during a drop or restore the pool's shape is about to change."""

from __future__ import annotations

from dataclasses import dataclass

from policies.snapshot import ClusterSnapshot, Health, Role


@dataclass(frozen=True)
class StandbyView:
    """The controller's side of the decision, beside the snapshot."""

    # Pools that have a standby, starting or at its gates.
    with_standby: frozenset[str] = frozenset()
    # Pools whose last standby failed to start less than `retry_after_s` ago.
    backing_off: frozenset[str] = frozenset()
    # Pools with a replica start in flight.
    starting: frozenset[str] = frozenset()
    # A drop or restore is under way somewhere.
    switching: bool = False


def pools_wanting_a_standby(snapshot: ClusterSnapshot, view: StandbyView, group_size: int,
                            roles: tuple[Role, ...]) -> tuple[str, ...]:
    if view.switching:
        return ()
    wanting = []
    for pool in snapshot.pools:
        if (pool.role not in roles or pool.name in view.with_standby or pool.name in view.backing_off
                or pool.name in view.starting):
            continue
        singles = [r for r in pool.replicas if r.num_members == 1 and r.health not in (Health.STARTING, Health.DEAD)]
        if len(singles) >= group_size:
            wanting.append(pool.name)
    return tuple(wanting)
