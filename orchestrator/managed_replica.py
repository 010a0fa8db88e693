"""What the controller keeps per replica it manages."""

from __future__ import annotations

from dataclasses import dataclass

from actors.messages import ReplicaInfo
from orchestrator.replica_handle import ReplicaHandle
from policies.snapshot import ReplicaSnapshot


@dataclass
class ManagedReplica:
    handle: ReplicaHandle
    pool: str
    info: ReplicaInfo | None = None  # None while it starts
    last: ReplicaSnapshot | None = None
    last_ok_at_s: float = 0.0
    dead_reason: str | None = None
    # > 1: a pipeline replica standing for that many members (parameter dropping).
    num_members: int = 1
