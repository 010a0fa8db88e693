"""Medium kind -> implementation, and where each stages its files."""

from __future__ import annotations

from pathlib import Path

from actors.kv.file_mediums import DiskMedium, SharedMemoryMedium
from actors.kv.medium import MediumKind, TransferMedium
from actors.kv.ray_medium import RayObjectStoreMedium

MEDIUMS: dict[MediumKind, type[TransferMedium]] = {
    MediumKind.SHARED_MEMORY: SharedMemoryMedium,
    MediumKind.RAY: RayObjectStoreMedium,
    MediumKind.DISK: DiskMedium,
}


def make_medium(
    kind: MediumKind, staging_dir: Path, replica_id: str, node_id: str, fetch_timeout_s: float
) -> TransferMedium:
    if kind not in MEDIUMS:
        raise ValueError(f"medium {kind.value!r} moves KV inside vLLM's own connector, not through Tide")
    return MEDIUMS[kind](staging_dir, replica_id, node_id, fetch_timeout_s)
