"""Actions policies return and executors carry out (the controller on real replicas, the
simulator on simulated ones)."""

from __future__ import annotations

from dataclasses import dataclass

from policies.snapshot import ReplicaId


@dataclass(frozen=True)
class StartReplica:
    pool: str
    reason: str


@dataclass(frozen=True)
class ReplaceReplica:
    replica_id: ReplicaId
    pool: str
    reason: str


@dataclass(frozen=True)
class RemoveReplica:
    replica_id: ReplicaId
    pool: str
    reason: str


Action = StartReplica | ReplaceReplica | RemoveReplica
