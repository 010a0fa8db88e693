"""The staged KV file: a request's KV blocks, keyed by layer name.

Layout: a JSON header padded to `HEADER_BYTES`, then one contiguous chunk per layer holding
that layer's blocks in order (the block dimension of the engine's own cache layout, so a
chunk is a plain `index_select` of the paged cache). An importer can read every layer or a
subset, and every block or a prefix.

Files are written under a temporary name and renamed when complete, so a reader never sees
a partial file; `read_header` checks the size, so a truncated file is rejected.
"""

from __future__ import annotations

import errno
import json
import os
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from actors.kv.cross_memory import CrossMemoryError, read_from_process

MAGIC = "TIDEKV1"
DIRECT_MAGIC = "TIDEKVD1"
HEADER_BYTES = 4096
_ALIGN = 4096


def staged_kv_path(directory: Path, owner: str) -> Path:
    """A new staged file name; `owner` (a replica id) lets the owner sweep what it left."""
    return directory / f"{owner}-{uuid.uuid4().hex}.kv"


def sweep_staged_kv(directory: Path, owner: str, older_than_s: float, now_s: float) -> int:
    """Deletes `owner`'s staged files older than `older_than_s`; returns how many."""
    removed = 0
    for path in directory.glob(f"{owner}-*.kv*"):
        try:
            if now_s - path.stat().st_mtime > older_than_s:
                path.unlink()
                removed += 1
        except FileNotFoundError:
            continue
    return removed


class StagedKVError(Exception):
    """The staged KV file is missing, truncated or does not match the engine."""


@dataclass(frozen=True)
class LayerChunk:
    name: str
    offset: int
    shape: tuple[int, ...]


@dataclass(frozen=True)
class StagedKVHeader:
    dtype: str
    block_dim: int
    block_size: int
    num_blocks: int
    num_tokens: int
    total_bytes: int
    layers: tuple[LayerChunk, ...]

    def layer(self, name: str) -> LayerChunk:
        for chunk in self.layers:
            if chunk.name == name:
                return chunk
        raise StagedKVError(f"layer {name!r} is not in the staged KV")


def _torch_dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name.removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype):
        raise StagedKVError(f"unknown dtype {name!r}")
    return dtype


def _chunk_shape(layer_cache: torch.Tensor, block_dim: int, num_blocks: int) -> tuple[int, ...]:
    shape = list(layer_cache.shape)
    shape[block_dim] = num_blocks
    return tuple(shape)


def plan_layout(
    kv_caches: dict[str, torch.Tensor], block_dim: int, block_size: int, num_blocks: int, num_tokens: int
) -> StagedKVHeader:
    offset = HEADER_BYTES
    chunks = []
    dtype = None
    for name, cache in kv_caches.items():
        dtype = cache.dtype
        shape = _chunk_shape(cache, block_dim, num_blocks)
        chunks.append(LayerChunk(name=name, offset=offset, shape=shape))
        nbytes = cache.element_size() * int(torch.Size(shape).numel())
        offset += -(-nbytes // _ALIGN) * _ALIGN
    return StagedKVHeader(
        dtype=str(dtype), block_dim=block_dim, block_size=block_size, num_blocks=num_blocks,
        num_tokens=num_tokens, total_bytes=offset, layers=tuple(chunks),
    )


def _encode_header(header: StagedKVHeader) -> bytes:
    raw = json.dumps({"magic": MAGIC, **asdict(header)}).encode()
    if len(raw) > HEADER_BYTES:
        raise StagedKVError("too many layers for the staged KV header")
    return raw.ljust(HEADER_BYTES, b" ")


def write_staged_kv(
    path: Path, kv_caches: dict[str, torch.Tensor], block_ids: list[int], header: StagedKVHeader
) -> int:
    """Copies `block_ids` of every layer into a new file at `path`; returns its size."""
    tmp_path = path.with_name(path.name + ".partial")
    fd = os.open(tmp_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.ftruncate(fd, header.total_bytes)
        os.pwrite(fd, _encode_header(header), 0)
    finally:
        os.close(fd)
    mapped = torch.from_file(str(tmp_path), shared=True, size=header.total_bytes, dtype=torch.uint8)
    index = torch.tensor(block_ids, dtype=torch.long)
    dtype = _torch_dtype(header.dtype)
    for chunk in header.layers:
        cache = kv_caches[chunk.name]
        out = _chunk_view(mapped, chunk, dtype)
        torch.index_select(cache, header.block_dim, index, out=out)
    del mapped
    os.replace(tmp_path, path)
    return header.total_bytes


def stage_part_path(path: Path, stage: int) -> Path:
    """Where stage `stage` of a pipeline engine stages its layers of the file `path`."""
    return path.with_name(f"{path.name}.part{stage}")


def merge_staged_kv(parts: list[Path], path: Path) -> StagedKVHeader:
    """One staged file at `path` of every layer in `parts`, the files a pipeline engine's
    stages each wrote of their own layers of one request; the parts are removed. Parts
    that disagree on the blocks they hold are a StagedKVError (nothing is written)."""
    headers = [read_header(part) for part in parts]
    first = headers[0]
    shared = (first.dtype, first.block_dim, first.block_size, first.num_blocks, first.num_tokens)
    for part, header in zip(parts, headers):
        if (header.dtype, header.block_dim, header.block_size, header.num_blocks, header.num_tokens) != shared:
            raise StagedKVError(f"stage file {part} holds other blocks than {parts[0]}")
    # Each part's body (its aligned layer chunks) is copied whole: chunk offsets shift by
    # where the body lands in the merged file.
    layers, bodies, offset = [], [], HEADER_BYTES
    for part, header in zip(parts, headers):
        shift = offset - HEADER_BYTES
        layers += [LayerChunk(c.name, c.offset + shift, c.shape) for c in header.layers]
        bodies.append((part, offset, header.total_bytes - HEADER_BYTES))
        offset += header.total_bytes - HEADER_BYTES
    merged = StagedKVHeader(dtype=first.dtype, block_dim=first.block_dim, block_size=first.block_size,
                            num_blocks=first.num_blocks, num_tokens=first.num_tokens, total_bytes=offset,
                            layers=tuple(layers))
    tmp_path = path.with_name(path.name + ".partial")
    fd = os.open(tmp_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.ftruncate(fd, merged.total_bytes)
        os.pwrite(fd, _encode_header(merged), 0)
        for part, at, length in bodies:
            with open(part, "rb") as src:
                _copy_range(src.fileno(), fd, HEADER_BYTES, at, length)
    except BaseException:
        os.close(fd)
        tmp_path.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp_path, path)
    for part in parts:
        part.unlink(missing_ok=True)
    return merged


def _copy_range(src: int, dst: int, src_at: int, dst_at: int, length: int) -> None:
    """Copies in the kernel where the filesystem can (no pass through user memory)."""
    copied = 0
    try:
        while copied < length:
            n = os.copy_file_range(src, dst, length - copied, src_at + copied, dst_at + copied)
            if n == 0:
                raise StagedKVError("a stage file ended early")
            copied += n
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise
        while copied < length:
            data = os.pread(src, min(length - copied, 1 << 24), src_at + copied)
            if not data:
                raise StagedKVError("a stage file ended early") from None
            os.pwrite(dst, data, dst_at + copied)
            copied += len(data)


@dataclass(frozen=True)
class DirectKV:
    """A descriptor instead of bytes: where the exporter's blocks are in its own memory.

    Lease protocol (all steps are single atomic file operations):
    - the exporter creates `lease_path` and holds the blocks while `lease_path` or
      `claimed_path` exists;
    - the importer renames `lease_path` to `claimed_path` before reading, reads, then
      deletes `claimed_path`;
    - an expiring lease is deleted; if that happens first, the importer's rename fails and
      it computes instead, so blocks are never freed under a reader."""

    header: StagedKVHeader
    source_pid: int
    block_ids: tuple[int, ...]
    layer_addresses: tuple[int, ...]
    block_bytes: int
    lease_path: str

    @property
    def claimed_path(self) -> str:
        return self.lease_path + ".claimed"


def write_direct_kv(path: Path, kv_caches: dict[str, torch.Tensor], block_ids: list[int], header: StagedKVHeader) -> int:
    """Writes the descriptor of `block_ids` (block dimension 0) and its lease; no KV bytes move."""
    first = next(iter(kv_caches.values()))
    fields = {
        "magic": DIRECT_MAGIC, "header": asdict(header), "source_pid": os.getpid(), "block_ids": list(block_ids),
        "layer_addresses": [kv_caches[c.name].data_ptr() for c in header.layers],
        "block_bytes": first.stride(0) * first.element_size(), "lease_path": str(path) + ".lease",
    }
    Path(fields["lease_path"]).touch()
    tmp_path = path.with_name(path.name + ".partial")
    tmp_path.write_text(json.dumps(fields))
    os.replace(tmp_path, path)
    return fields["block_bytes"] * len(block_ids) * len(header.layers)


def _decode_header(fields: dict) -> StagedKVHeader:
    layers = tuple(LayerChunk(c["name"], c["offset"], tuple(c["shape"])) for c in fields.pop("layers"))
    return StagedKVHeader(layers=layers, **fields)


def read_staged(path: Path) -> StagedKVHeader | DirectKV:
    """The header of a staged file, or the descriptor of a direct export."""
    try:
        with open(path, "rb") as f:
            raw = f.read(HEADER_BYTES)
            if raw.startswith(b'{"magic": "' + DIRECT_MAGIC.encode()):
                raw += f.read()
        size = os.path.getsize(path)
    except OSError as exc:
        raise StagedKVError(f"staged KV {path} is unreadable: {exc}") from exc
    try:
        fields = json.loads(raw.decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StagedKVError(f"staged KV {path} has a corrupt header") from exc
    magic = fields.pop("magic", None)
    if magic == DIRECT_MAGIC:
        header = _decode_header(fields.pop("header"))
        return DirectKV(header=header, **{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})
    if magic != MAGIC:
        raise StagedKVError(f"{path} is not a staged KV file")
    header = _decode_header(fields)
    if size < header.total_bytes:
        raise StagedKVError(f"staged KV {path} is truncated ({size} of {header.total_bytes} bytes)")
    return header


def read_header(path: Path) -> StagedKVHeader:
    staged = read_staged(path)
    return staged.header if isinstance(staged, DirectKV) else staged


def release_staged_kv(path: Path) -> None:
    """The importer is done with `path` (loaded or given up): delete it, and end the lease
    of a direct export so the exporter frees its blocks."""
    path.unlink(missing_ok=True)
    Path(str(path) + ".lease").unlink(missing_ok=True)
    Path(str(path) + ".lease.claimed").unlink(missing_ok=True)


def release_stage_import(path: Path, stage: int, num_stages: int) -> bool:
    """Stage `stage` of a pipeline engine is done with `path` (each stage loads its own
    layers from it). The file is released once every stage is done: each stage marks
    itself before it counts, so the last to mark always sees all marks. True if this
    stage released it."""
    Path(f"{path}.stage{stage}.done").touch()
    marks = [Path(f"{path}.stage{i}.done") for i in range(num_stages)]
    if not all(mark.exists() for mark in marks):
        return False
    release_staged_kv(path)
    for mark in marks:
        mark.unlink(missing_ok=True)
    return True


def _chunk_view(mapped: torch.Tensor, chunk: LayerChunk, dtype: torch.dtype) -> torch.Tensor:
    nbytes = torch.Size(chunk.shape).numel() * torch.empty((), dtype=dtype).element_size()
    return mapped[chunk.offset : chunk.offset + nbytes].view(dtype).view(chunk.shape)


def load_staged_kv(
    path: Path,
    kv_caches: dict[str, torch.Tensor],
    src_block_start: int,
    dst_block_ids: list[int],
    shared_claim: bool = False,
) -> int:
    """Copies staged blocks [src_block_start, src_block_start + len(dst_block_ids)) of
    every layer in `kv_caches` into the engine's blocks `dst_block_ids`; returns the bytes
    copied. `shared_claim`: the other stages of this pipeline engine read the same direct
    export, so its claim is left for `release_stage_import`."""
    staged = read_staged(path)
    if isinstance(staged, DirectKV):
        return _load_direct(staged, kv_caches, src_block_start, dst_block_ids, shared_claim)
    header = staged
    if src_block_start + len(dst_block_ids) > header.num_blocks:
        raise StagedKVError(
            f"staged KV holds {header.num_blocks} blocks, asked for "
            f"{src_block_start}+{len(dst_block_ids)}"
        )
    dtype = _torch_dtype(header.dtype)
    mapped = torch.from_file(str(path), shared=False, size=header.total_bytes, dtype=torch.uint8)
    index = torch.tensor(dst_block_ids, dtype=torch.long)
    num_bytes = 0
    for name, cache in kv_caches.items():
        chunk = header.layer(name)
        if cache.dtype != dtype or _chunk_shape(cache, header.block_dim, header.num_blocks) != chunk.shape:
            raise StagedKVError(f"staged KV layer {name!r} does not match this engine's cache")
        src = _chunk_view(mapped, chunk, dtype).narrow(header.block_dim, src_block_start, len(dst_block_ids))
        cache.index_copy_(header.block_dim, index, src)
        num_bytes += src.numel() * src.element_size()
    return num_bytes


def _load_direct(direct: DirectKV, kv_caches: dict[str, torch.Tensor], src_block_start: int, dst_block_ids: list[int],
                 shared_claim: bool) -> int:
    header = direct.header
    if src_block_start + len(dst_block_ids) > header.num_blocks:
        raise StagedKVError(f"direct KV holds {header.num_blocks} blocks, asked for {src_block_start}+{len(dst_block_ids)}")
    names = [c.name for c in header.layers]
    copies = []
    for name, cache in kv_caches.items():
        chunk = header.layer(name)
        block_bytes = cache.stride(0) * cache.element_size()
        if str(cache.dtype) != header.dtype or block_bytes != direct.block_bytes or header.block_dim != 0 or (
            _chunk_shape(cache, 0, header.num_blocks) != chunk.shape
        ):
            raise StagedKVError(f"direct KV layer {name!r} does not match this engine's cache")
        source = direct.layer_addresses[names.index(name)]
        for i, dst in enumerate(dst_block_ids):
            src = direct.block_ids[src_block_start + i]
            copies.append((cache.data_ptr() + dst * block_bytes, source + src * block_bytes, block_bytes))
    try:
        os.rename(direct.lease_path, direct.claimed_path)
    except FileNotFoundError:
        # Another stage of the same pipeline engine may have claimed it first.
        if not shared_claim or not Path(direct.claimed_path).exists():
            raise StagedKVError("the direct KV's lease has expired; its blocks may be reused") from None
    os.utime(direct.claimed_path)  # the claim's age, not the lease's, is what sweeping sees
    try:
        return read_from_process(direct.source_pid, copies)
    except CrossMemoryError as exc:
        raise StagedKVError(f"direct KV from pid {direct.source_pid} is unreadable: {exc}") from exc
    finally:
        if not shared_claim:
            Path(direct.claimed_path).unlink(missing_ok=True)
