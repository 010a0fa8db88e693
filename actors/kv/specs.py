"""What the connector's scheduler side tells its worker side each step, and the
`kv_transfer_params` keys a request uses to opt in (see `connector.py`)."""

from __future__ import annotations

from dataclasses import dataclass

EXPORT_PARAM = "tide_export"
IMPORT_PARAM = "tide_import"
STAGED_PARAM = "tide_staged"


@dataclass(frozen=True)
class ExportSpec:
    request_id: str
    path: str
    block_ids: list[int]
    num_tokens: int
    # Write a descriptor and hold the blocks until the importer reads them in place
    # (same node, one copy), instead of copying them into a staged file.
    direct: bool = False


@dataclass(frozen=True)
class ImportSpec:
    request_id: str
    path: str
    src_block_start: int
    dst_block_ids: list[int]
