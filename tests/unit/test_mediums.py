from __future__ import annotations

import os
import time

import pytest
import ray
import torch

from actors.kv.file_mediums import DiskMedium, SharedMemoryMedium
from actors.kv.layout import plan_layout, read_header, staged_kv_path, sweep_staged_kv, write_staged_kv
from actors.kv.medium import StagedExport, TransferError
from actors.kv.ray_medium import RayObjectStoreMedium


def stage(directory, owner="prefill-0") -> StagedExport:
    caches = {"layer.0": torch.arange(8 * 32 * 64, dtype=torch.float32).reshape(8, 1, 32, 64)}
    header = plan_layout(caches, 0, 32, num_blocks=2, num_tokens=64)
    path = staged_kv_path(directory, owner)
    directory.mkdir(parents=True, exist_ok=True)
    write_staged_kv(path, caches, [3, 4], header)
    return StagedExport(path=str(path), num_tokens=64, num_blocks=2)


def test_shared_memory_hands_over_the_same_file_on_the_same_node(tmp_path):
    source = SharedMemoryMedium(tmp_path, "prefill-0", node_id="n1")
    dest = SharedMemoryMedium(tmp_path, "decode-0", node_id="n1")
    handle = source.publish(stage(tmp_path))
    assert handle.num_bytes == read_header(dest.fetch(handle)).total_bytes


def test_shared_memory_refuses_another_node(tmp_path):
    handle = SharedMemoryMedium(tmp_path, "prefill-0", node_id="n1").publish(stage(tmp_path))
    with pytest.raises(TransferError, match="use the ray or disk medium"):
        SharedMemoryMedium(tmp_path, "decode-0", node_id="n2").fetch(handle)


def test_disk_reads_from_any_node_that_sees_the_path(tmp_path):
    handle = DiskMedium(tmp_path, "prefill-0", node_id="n1").publish(stage(tmp_path))
    assert DiskMedium(tmp_path, "decode-0", node_id="n2").fetch(handle).exists()


def test_disk_reports_a_missing_file(tmp_path):
    medium = DiskMedium(tmp_path, "prefill-0", node_id="n1")
    handle = medium.publish(stage(tmp_path))
    medium.discard(handle)
    with pytest.raises(TransferError, match="not visible"):
        medium.fetch(handle)


@pytest.fixture(scope="module")
def local_ray():
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, namespace="tide-unit")
    yield
    if started:
        ray.shutdown()


def test_ray_object_store_round_trip(tmp_path, local_ray):
    source = RayObjectStoreMedium(tmp_path / "src", "prefill-0", "n1")
    dest = RayObjectStoreMedium(tmp_path / "dst", "decode-0", "n2")
    staged = stage(tmp_path / "src")
    original = open(staged.path, "rb").read()
    handle = source.publish(staged)
    assert not (tmp_path / "src").joinpath(staged.path).exists()  # moved into the object store
    fetched = dest.fetch(handle)
    assert fetched.parent == tmp_path / "dst" and fetched.read_bytes() == original


def test_ray_object_store_times_out_instead_of_hanging(tmp_path, local_ray):
    @ray.remote(num_cpus=0)
    def never():
        time.sleep(600)

    source = RayObjectStoreMedium(tmp_path, "prefill-0", "n1")
    handle = source.publish(stage(tmp_path))
    dest = RayObjectStoreMedium(tmp_path, "decode-0", "n1", fetch_timeout_s=0.5)
    started = time.monotonic()
    with pytest.raises(TransferError, match="unavailable"):
        dest.fetch(type(handle)(**{**handle.__dict__, "object_ref": never.remote()}))
    assert time.monotonic() - started < 5


def test_sweep_removes_only_the_owners_old_files(tmp_path):
    mine, theirs = stage(tmp_path, "prefill-0"), stage(tmp_path, "prefill-1")
    assert sweep_staged_kv(tmp_path, "prefill-0", older_than_s=60, now_s=time.time()) == 0
    assert sweep_staged_kv(tmp_path, "prefill-0", older_than_s=60, now_s=time.time() + 120) == 1
    assert not os.path.exists(mine.path) and os.path.exists(theirs.path)
