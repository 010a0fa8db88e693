"""Parameter dropping for memory bursts (KunServe): when a pool's KV demand exceeds what its
replicas hold, a group of g replicas drops replicated weights and serves as one pipeline
(member i keeps a contiguous 1/g of the layers); the freed memory becomes KV blocks.
When the pressure is gone, the group restores.

Trigger (KunServe's votes): a replica votes to drop when its KV usage is at least
`drop_usage` and the blocks its waiting requests need are at least its free blocks. A
group drops when at least `min_vote_share` of its members vote. A group restores when
every member's usage is at most `restore_usage`, no member's usage rose since the last
look, and nothing waits.

A group serves either as its members (each a pipeline stage; the simulator) or as one
pipeline replica standing for them (`serving_as`; the real cluster, where the members'
engines are replaced by one vLLM pipeline-parallel engine over their devices). Such a
group restores once what the pipeline holds would fit the members at `restore_usage`.

Plan: a group of g frees weight_blocks x (g - 1) blocks (each member keeps 1/g of the
weights), so the fewest members that cover the voters' deficit, since each pipeline stage
costs latency; voters first (most pressed first), then the least loaded peers; no replica
in two groups. Pure: frozen snapshots in, actions out.
"""

from __future__ import annotations

from dataclasses import dataclass

from policies.snapshot import ClusterSnapshot, ReplicaId, ReplicaSnapshot, Role


@dataclass(frozen=True)
class BurstSettings:
    drop_usage: float = 0.95
    restore_usage: float = 0.50
    min_vote_share: float = 0.5
    max_group_size: int = 4
    # A group serves dropped at least this long before it may restore (a pipeline that
    # has just started has not yet taken its members' requests back).
    min_dropped_s: float = 0.0
    # Roles whose pools hold KV long enough to run out (prefill replicas hand it off).
    roles: tuple[Role, ...] = (Role.DECODE, Role.COLOCATED)


@dataclass(frozen=True)
class DroppedGroup:
    pool: str
    # In pipeline order: member i holds layers [i L / g, (i + 1) L / g).
    members: tuple[ReplicaId, ...]
    since_s: float
    # The pipeline replica the group serves as ("" while the members serve as stages),
    # and the blocks the members hold once restored.
    serving_as: ReplicaId = ReplicaId("")
    restored_blocks: int = 0
    # Dropped by an operator: restored by one too, never by the policy.
    pinned: bool = False


@dataclass(frozen=True)
class BurstState:
    groups: tuple[DroppedGroup, ...] = ()
    # Each replica's KV usage at the previous decision, to tell rising from falling.
    previous_usage: tuple[tuple[ReplicaId, float], ...] = ()


@dataclass(frozen=True)
class DropParameters:
    pool: str
    members: tuple[ReplicaId, ...]
    # KV blocks the group gains: weight_blocks x (g - 1).
    extra_blocks: int
    reason: str = "kv_deficit"


@dataclass(frozen=True)
class RestoreParameters:
    pool: str
    members: tuple[ReplicaId, ...]
    reason: str = "pressure_gone"


def votes_to_drop(replica: ReplicaSnapshot, settings: BurstSettings) -> bool:
    return (replica.kv_usage_frac >= settings.drop_usage
            and replica.num_waiting_blocks > 0 and replica.num_waiting_blocks >= replica.num_free_blocks)


def deficit_blocks(replica: ReplicaSnapshot) -> int:
    return max(0, replica.num_waiting_blocks - replica.num_free_blocks)


def group_size_for(deficit: int, weight_blocks: int, available: int, max_size: int) -> int:
    """The fewest members (at least 2) whose freed weights cover `deficit` blocks; the
    largest group possible when none does."""
    largest = min(available, max_size)
    for size in range(2, largest + 1):
        if weight_blocks * (size - 1) >= deficit:
            return size
    return largest


def decide_burst(snapshot: ClusterSnapshot, state: BurstState, weight_blocks: dict[str, int],
                 settings: BurstSettings) -> list[DropParameters | RestoreParameters]:
    """`weight_blocks[pool]`: the KV blocks one replica's full weights would hold."""
    actions: list[DropParameters | RestoreParameters] = []
    previous = dict(state.previous_usage)
    grouped = {m for g in state.groups for m in (*g.members, g.serving_as)}
    for group in state.groups:
        if group.pinned:
            continue
        if group.serving_as:
            if snapshot.taken_at_s - group.since_s < settings.min_dropped_s:
                continue
            if _pipeline_may_restore(snapshot.replica(group.serving_as), group, previous, settings):
                actions.append(RestoreParameters(group.pool, group.members))
            continue
        members = [snapshot.replica(m) for m in group.members]
        if any(m is None or not m.accepts_requests for m in members):
            continue  # a member died or drains: the group's failover, not a restore decision
        if all(m.kv_usage_frac <= settings.restore_usage and m.num_waiting == 0
               and m.kv_usage_frac <= previous.get(m.replica_id, 1.0) for m in members):
            actions.append(RestoreParameters(group.pool, group.members))
    for pool in snapshot.pools:
        if pool.role not in settings.roles or weight_blocks.get(pool.name, 0) <= 0:
            continue
        free = [r for r in pool.serving if r.replica_id not in grouped and r.num_members == 1]
        voters = sorted((r for r in free if votes_to_drop(r, settings)), key=lambda r: -deficit_blocks(r))
        peers = sorted((r for r in free if not votes_to_drop(r, settings)), key=lambda r: r.kv_usage_frac)
        while voters and len(voters) + len(peers) >= 2:
            size = group_size_for(sum(deficit_blocks(v) for v in voters), weight_blocks[pool.name],
                                  len(voters) + len(peers), settings.max_group_size)
            # Voters first, at most as many as the group has room for; peers fill it.
            chosen_voters = voters[:size]
            chosen_peers = peers[:size - len(chosen_voters)]
            if len(chosen_voters) < settings.min_vote_share * size or len(chosen_voters) + len(chosen_peers) < 2:
                break
            members = tuple(r.replica_id for r in chosen_voters + chosen_peers)
            actions.append(DropParameters(pool.name, members, weight_blocks[pool.name] * (len(members) - 1)))
            voters, peers = voters[size:], peers[len(chosen_peers):]
    return actions


def _pipeline_may_restore(pipeline: ReplicaSnapshot | None, group: DroppedGroup, previous: dict[ReplicaId, float],
                          settings: BurstSettings) -> bool:
    if pipeline is None or not pipeline.accepts_requests:
        return False  # the pipeline died: the pool's repair brings the members back
    used = pipeline.num_total_blocks - pipeline.num_free_blocks
    before = previous.get(pipeline.replica_id)
    return (used <= settings.restore_usage * group.restored_blocks and pipeline.num_waiting == 0
            and before is not None and pipeline.kv_usage_frac <= before)
