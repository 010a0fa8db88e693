"""Ray object store medium: works across nodes, no shared filesystem needed.

The exporter's staged file is put into the object store (the file is then deleted; the
object lives while the handle is referenced). The importer gets the object (zero-copy on
the same node, pulled by Ray from another node) and stages it into a local file for its
engine's connector.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import ray
from ray.exceptions import GetTimeoutError, RayError

from actors.kv.layout import staged_kv_path
from actors.kv.medium import (
    KVHandle,
    MediumKind,
    StagedExport,
    TransferError,
    TransferMedium,
    validated_size,
)


class RayObjectStoreMedium(TransferMedium):
    kind = MediumKind.RAY

    def publish(self, staged: StagedExport) -> KVHandle:
        path = Path(staged.path)
        num_bytes = validated_size(path)
        try:
            payload = np.fromfile(path, dtype=np.uint8)
        except OSError as exc:
            raise TransferError(f"staged KV {path} vanished before it was published: {exc}") from exc
        object_ref = ray.put(payload)
        path.unlink(missing_ok=True)
        return self._handle(staged, num_bytes, object_ref=object_ref)

    def fetch(self, handle: KVHandle) -> Path:
        try:
            payload = ray.get(handle.object_ref, timeout=self.fetch_timeout_s)
        except (RayError, GetTimeoutError) as exc:
            raise TransferError(f"KV object from replica {handle.source_replica} is unavailable: {exc}") from exc
        path = staged_kv_path(self.staging_dir, self.replica_id)
        tmp_path = path.with_name(path.name + ".partial")
        try:
            with open(tmp_path, "wb") as f:
                f.write(memoryview(payload))
            os.replace(tmp_path, path)
        except OSError as exc:
            raise TransferError(f"KV from replica {handle.source_replica} could not be staged: {exc}") from exc
        validated_size(path)
        return path

    def discard(self, handle: KVHandle) -> None:
        # The object is freed by Ray's reference counting when the handle is dropped.
        return None
