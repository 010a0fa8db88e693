"""Mediums where the staged file itself is what moves: shared memory and disk."""

from __future__ import annotations

from pathlib import Path

from actors.kv.layout import release_staged_kv
from actors.kv.medium import KVHandle, MediumKind, StagedExport, TransferError, TransferMedium, validated_size


class SharedMemoryMedium(TransferMedium):
    """Same node only. The exporter writes a descriptor of its blocks into /dev/shm and
    holds them; the importer copies them straight out of the exporter's memory (one copy)
    and ends the lease. A staged file with the bytes themselves works the same way."""

    kind = MediumKind.SHARED_MEMORY

    def publish(self, staged: StagedExport) -> KVHandle:
        return self._handle(staged, validated_size(Path(staged.path)), path=staged.path)

    def fetch(self, handle: KVHandle) -> Path:
        if handle.source_node_id != self.node_id:
            raise TransferError(
                f"shared-memory KV from node {handle.source_node_id} cannot be read on node "
                f"{self.node_id}; use the ray or disk medium across nodes"
            )
        path = Path(handle.path or "")
        validated_size(path)
        return path

    def discard(self, handle: KVHandle) -> None:
        release_staged_kv(Path(handle.path or ""))


class DiskMedium(SharedMemoryMedium):
    """A directory, local or shared between nodes (NFS, a shared volume): the exporter
    stages into it and the importer reads the file by path from any node that mounts it."""

    kind = MediumKind.DISK

    def fetch(self, handle: KVHandle) -> Path:
        path = Path(handle.path or "")
        if not path.exists():
            raise TransferError(f"staged KV {path} is not visible on node {self.node_id}")
        validated_size(path)
        return path
