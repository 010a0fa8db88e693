"""KV transfer bandwidth per medium against memcpy, measured in the same run.

Two Ray actors stand in for a source and a destination replica, each with a paged
"KV cache" tensor in the CPU layout vLLM uses ([blocks, kv_heads, block_size, 2*head]).
One transfer = the source exports a request's blocks (shm: a descriptor of the blocks in
its memory; ray and disk: a staged file with a copy of them) and publishes it on the
medium; the destination fetches it and copies the blocks into its own cache (shm: one
cross-memory read straight from the source process). Bandwidth = payload bytes / that whole time.
The baseline is one single-threaded `torch` copy of the same number of bytes in one
process, measured in the same run.

    .venv/bin/python -m bench.kv_transfer_bandwidth [--sizes-mib 0.0625 1 16 256] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import ray
import torch

from actors.kv.layout import (
    load_staged_kv,
    plan_layout,
    release_staged_kv,
    staged_kv_path,
    write_direct_kv,
    write_staged_kv,
)
from actors.kv.medium import KVHandle, MediumKind, StagedExport
from actors.kv.registry import make_medium

# The `small` model's geometry: 4 KV heads, 32-token blocks, head size 64, float32, so one
# block of one layer is 64 KiB. Payloads under 1 MiB move a subset of layers of one block
# (as a layer-keyed import does); larger ones move whole blocks of 16 layers.
MAX_LAYERS = 16
BLOCK_SHAPE = (4, 32, 128)  # kv_heads, block_size, 2*head_size
BLOCK_BYTES = 4 * BLOCK_SHAPE[0] * BLOCK_SHAPE[1] * BLOCK_SHAPE[2]


def geometry(payload_bytes: int) -> tuple[int, int]:
    """(layers, blocks) for a payload."""
    layers = max(1, min(MAX_LAYERS, payload_bytes // BLOCK_BYTES))
    return layers, max(1, payload_bytes // (BLOCK_BYTES * layers))
MEDIUMS = (MediumKind.SHARED_MEMORY, MediumKind.RAY, MediumKind.DISK)


def make_cache(num_blocks: int) -> dict[str, torch.Tensor]:
    return {f"layers.{i}": torch.randn(num_blocks, *BLOCK_SHAPE) for i in range(MAX_LAYERS)}


class Endpoint:
    """One side of a transfer: a cache and the mediums, like a replica."""

    def __init__(self, name: str, num_blocks: int, root: str):
        self.name = name
        self.cache = make_cache(num_blocks)
        node = ray.get_runtime_context().get_node_id()
        self.dirs = {MediumKind.DISK: Path(root) / "disk", MediumKind.SHARED_MEMORY: Path("/dev/shm/tide-bench"),
                     MediumKind.RAY: Path("/dev/shm/tide-bench")}
        self.mediums = {k: make_medium(k, self.dirs[k], name, node, 60.0) for k in MEDIUMS}

    def layers(self, num_layers: int) -> dict[str, torch.Tensor]:
        return {name: self.cache[name] for name in list(self.cache)[:num_layers]}

    def export_publish(self, medium: MediumKind, num_layers: int, num_blocks: int) -> tuple[KVHandle, float]:
        started = time.perf_counter()
        caches = self.layers(num_layers)
        header = plan_layout(caches, 0, 32, num_blocks, num_blocks * 32)
        path = staged_kv_path(self.dirs[medium], self.name)
        # Shared memory moves blocks in place (one cross-memory copy), as replicas do.
        write = write_direct_kv if medium == MediumKind.SHARED_MEMORY else write_staged_kv
        write(path, caches, list(range(num_blocks)), header)
        handle = self.mediums[medium].publish(StagedExport(str(path), num_blocks * 32, num_blocks))
        return handle, time.perf_counter() - started

    def fetch_import(self, handle: KVHandle, num_layers: int) -> float:
        started = time.perf_counter()
        path = self.mediums[handle.medium].fetch(handle)
        load_staged_kv(path, self.layers(num_layers), 0, list(range(handle.num_blocks)))
        release_staged_kv(path)
        return time.perf_counter() - started


def memcpy_seconds(num_bytes: int, repeats: int) -> float:
    """One thread, like the endpoints' copies (Ray actors run with one OpenMP thread)."""
    torch.set_num_threads(1)
    src = torch.randn(num_bytes // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


@dataclass(frozen=True)
class Row:
    payload_bytes: int
    medium: str
    median_s: float
    gib_per_s: float
    memcpy_gib_per_s: float
    ratio_to_memcpy: float


def run(sizes_mib: list[float], repeats: int, root: str) -> list[Row]:
    max_blocks = max(geometry(int(s * 2**20))[1] for s in sizes_mib)
    endpoint = ray.remote(Endpoint).options(num_cpus=0)
    source = endpoint.remote("bench-src", max_blocks, root)
    dest = endpoint.remote("bench-dst", max_blocks, root)
    rows = []
    for size_mib in sizes_mib:
        num_layers, num_blocks = geometry(int(size_mib * 2**20))
        payload = num_blocks * BLOCK_BYTES * num_layers
        memcpy_s = memcpy_seconds(payload, repeats)
        for medium in MEDIUMS:
            times = []
            for _ in range(repeats + 1):
                handle, export_s = ray.get(source.export_publish.remote(medium, num_layers, num_blocks))
                import_s = ray.get(dest.fetch_import.remote(handle, num_layers))
                times.append(export_s + import_s)
            median_s = statistics.median(times[1:])  # the first run warms caches and the object store
            row = Row(payload, medium.value, median_s, payload / median_s / 2**30, payload / memcpy_s / 2**30,
                      memcpy_s / median_s)
            rows.append(row)
            print(f"{payload / 2**20:>9.3f} MiB  {medium.value:<5} {row.gib_per_s:7.2f} GiB/s  "
                  f"memcpy {row.memcpy_gib_per_s:7.2f} GiB/s  ratio {row.ratio_to_memcpy:5.2f}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes-mib", type=float, nargs="+", default=[0.0625, 0.25, 1, 4, 16, 64, 256])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--disk-dir", default="/tmp/tide-bench")
    parser.add_argument("--out", default="bench/results/kv_transfer_bandwidth.json")
    args = parser.parse_args()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=2 << 30)
    print(f"blocks of {BLOCK_BYTES // 1024} KiB per layer, up to {MAX_LAYERS} layers; median of {args.repeats}", flush=True)
    rows = run(args.sizes_mib, args.repeats, args.disk_dir)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
