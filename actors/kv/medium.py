"""Transfer mediums: how a staged KV file gets from the exporting replica to the importing one.

Two-sided contract:
- Source side, `publish(staged)`: called by the exporting replica once its engine has
  written the staged file. Returns a `KVHandle` that travels (as a Python object, through
  Ray) to the importer. After publish the medium owns whatever it created.
- Destination side, `fetch(handle)`: called by the importing replica before it submits
  the request. Returns the path of a complete, validated staged file on this node that the
  engine's connector loads and then deletes. Raises `TransferError` when the bytes cannot
  be had; the caller then recomputes or fails the request, as configured.
- `discard(handle)`: frees what publish created when the handle will never be fetched.

Timing, byte counts and failures of both sides are recorded by the replica around these
calls, so every medium reports the same figures.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from actors.kv.layout import StagedKVError, read_header


class MediumKind(str, Enum):
    SHARED_MEMORY = "shm"
    RAY = "ray"
    DISK = "disk"
    # vLLM's own NIXL connector on GPU clusters; the handle carries vLLM's params verbatim.
    NIXL = "nixl"


class TransferError(Exception):
    """The KV bytes could not be moved; the message says why."""


@dataclass(frozen=True)
class StagedExport:
    """What the exporting engine reported for a request (its `tide_staged` params)."""

    path: str
    num_tokens: int
    num_blocks: int


@dataclass(frozen=True)
class KVHandle:
    medium: MediumKind
    source_replica: str
    source_node_id: str
    num_tokens: int
    num_blocks: int
    num_bytes: int
    path: str | None = None
    object_ref: Any = None
    engine_params: dict[str, Any] | None = None
    created_at_s: float = 0.0


def validated_size(path: Path) -> int:
    try:
        return read_header(path).total_bytes
    except StagedKVError as exc:
        raise TransferError(str(exc)) from exc


class TransferMedium(ABC):
    kind: MediumKind

    def __init__(self, staging_dir: Path, replica_id: str, node_id: str, fetch_timeout_s: float = 30.0):
        self.staging_dir = staging_dir
        self.fetch_timeout_s = fetch_timeout_s
        self.replica_id = replica_id
        self.node_id = node_id
        staging_dir.mkdir(parents=True, exist_ok=True)

    @abstractmethod
    def publish(self, staged: StagedExport) -> KVHandle: ...

    @abstractmethod
    def fetch(self, handle: KVHandle) -> Path: ...

    @abstractmethod
    def discard(self, handle: KVHandle) -> None: ...

    def _handle(self, staged: StagedExport, num_bytes: int, **fields: Any) -> KVHandle:
        return KVHandle(
            medium=self.kind, source_replica=self.replica_id, source_node_id=self.node_id,
            num_tokens=staged.num_tokens, num_blocks=staged.num_blocks, num_bytes=num_bytes,
            created_at_s=time.time(), **fields,
        )
