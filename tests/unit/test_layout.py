from __future__ import annotations

import json
import os

import pytest
import torch

from actors.kv.connector_worker import find_block_dim
from actors.kv.layout import (
    DirectKV,
    StagedKVError,
    load_staged_kv,
    merge_staged_kv,
    plan_layout,
    read_header,
    read_staged,
    release_stage_import,
    release_staged_kv,
    stage_part_path,
    write_direct_kv,
    write_staged_kv,
)

NUM_BLOCKS = 16


def caches(block_dim: int, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    # CPU layout [blocks, heads, block_size, 2*head] or K/V-first [2, blocks, block_size, heads, head].
    shape = (NUM_BLOCKS, 2, 32, 64) if block_dim == 0 else (2, NUM_BLOCKS, 32, 2, 32)
    return {f"model.layers.{i}.self_attn.attn": torch.randn(*shape, generator=generator) for i in range(3)}


@pytest.mark.parametrize("block_dim", [0, 1])
def test_round_trip_moves_exactly_the_chosen_blocks(tmp_path, block_dim):
    src, dst = caches(block_dim, seed=1), caches(block_dim, seed=2)
    assert find_block_dim(next(iter(src.values())), NUM_BLOCKS) == block_dim
    header = plan_layout(src, block_dim, block_size=32, num_blocks=3, num_tokens=96)
    path = tmp_path / "r.kv"
    write_staged_kv(path, src, [5, 9, 2], header)
    before = {k: v.clone() for k, v in dst.items()}
    load_staged_kv(path, dst, src_block_start=0, dst_block_ids=[0, 1, 7])
    for name in src:
        for s, d in ((5, 0), (9, 1), (2, 7)):
            assert torch.equal(src[name].select(block_dim, s), dst[name].select(block_dim, d))
        untouched = [b for b in range(NUM_BLOCKS) if b not in (0, 1, 7)]
        idx = torch.tensor(untouched)
        assert torch.equal(before[name].index_select(block_dim, idx), dst[name].index_select(block_dim, idx))


def test_importer_can_take_a_subset_of_layers_and_blocks(tmp_path):
    src, dst = caches(0, seed=3), caches(0, seed=4)
    header = plan_layout(src, 0, 32, num_blocks=4, num_tokens=128)
    path = tmp_path / "r.kv"
    write_staged_kv(path, src, [1, 2, 3, 4], header)
    one_layer = {"model.layers.1.self_attn.attn": dst["model.layers.1.self_attn.attn"]}
    load_staged_kv(path, one_layer, src_block_start=2, dst_block_ids=[10, 11])
    layer = "model.layers.1.self_attn.attn"
    assert torch.equal(src[layer][3], dst[layer][10]) and torch.equal(src[layer][4], dst[layer][11])
    assert not torch.equal(src["model.layers.0.self_attn.attn"][3], dst["model.layers.0.self_attn.attn"][10])


def test_truncated_file_is_rejected(tmp_path):
    src = caches(0)
    header = plan_layout(src, 0, 32, num_blocks=2, num_tokens=64)
    path = tmp_path / "r.kv"
    write_staged_kv(path, src, [0, 1], header)
    os.truncate(path, header.total_bytes - 1)
    with pytest.raises(StagedKVError, match="truncated"):
        read_header(path)


def test_foreign_file_is_rejected(tmp_path):
    path = tmp_path / "r.kv"
    path.write_bytes(b"not kv" * 1000)
    with pytest.raises(StagedKVError):
        read_header(path)


def test_mismatched_engine_is_rejected(tmp_path):
    src = caches(0)
    header = plan_layout(src, 0, 32, num_blocks=2, num_tokens=64)
    path = tmp_path / "r.kv"
    write_staged_kv(path, src, [0, 1], header)
    other = {name: torch.zeros(NUM_BLOCKS, 4, 32, 64) for name in src}
    with pytest.raises(StagedKVError, match="does not match"):
        load_staged_kv(path, other, 0, [0, 1])


def test_asking_for_more_blocks_than_staged_is_rejected(tmp_path):
    src = caches(0)
    header = plan_layout(src, 0, 32, num_blocks=2, num_tokens=64)
    path = tmp_path / "r.kv"
    write_staged_kv(path, src, [0, 1], header)
    with pytest.raises(StagedKVError, match="holds 2 blocks"):
        load_staged_kv(path, caches(0), 1, [0, 1])


def test_no_partial_file_is_visible(tmp_path):
    src = caches(0)
    header = plan_layout(src, 0, 32, num_blocks=2, num_tokens=64)
    write_staged_kv(tmp_path / "r.kv", src, [0, 1], header)
    assert [p.name for p in tmp_path.iterdir()] == ["r.kv"]


def test_direct_export_is_read_in_place_and_leased(tmp_path):
    """A direct export writes only a descriptor; the importer copies the blocks out of the
    exporter's memory (here the same process) and ending the lease frees them."""
    src, dst = caches(0, seed=5), caches(0, seed=6)
    header = plan_layout(src, 0, 32, num_blocks=3, num_tokens=96)
    path = tmp_path / "r.kv"
    write_direct_kv(path, src, [4, 1, 9], header)
    staged = read_staged(path)
    assert isinstance(staged, DirectKV) and staged.block_ids == (4, 1, 9) and staged.source_pid == os.getpid()
    assert os.path.getsize(path) < 4096 and read_header(path).num_blocks == 3
    copied = load_staged_kv(path, dst, src_block_start=1, dst_block_ids=[12, 13])
    for name in src:
        assert torch.equal(src[name][1], dst[name][12]) and torch.equal(src[name][9], dst[name][13])
    assert copied == 2 * len(src) * src["model.layers.0.self_attn.attn"][0].numel() * 4
    release_staged_kv(path)
    assert not path.exists() and not os.path.exists(staged.lease_path)


def test_direct_export_from_a_dead_process_is_a_load_error(tmp_path):
    src = caches(0)
    header = plan_layout(src, 0, 32, num_blocks=1, num_tokens=32)
    path = tmp_path / "r.kv"
    write_direct_kv(path, src, [0], header)
    fields = json.loads(path.read_text())
    fields["source_pid"] = 2**22 + 12345  # no such process
    path.write_text(json.dumps(fields))
    with pytest.raises(StagedKVError, match="unreadable"):
        load_staged_kv(path, caches(0), 0, [0])


def test_expired_lease_is_never_read(tmp_path):
    """Once the lease is gone (expired) the importer must not read: the exporter may
    already have reused the blocks."""
    src = caches(0)
    header = plan_layout(src, 0, 32, num_blocks=1, num_tokens=32)
    path = tmp_path / "r.kv"
    write_direct_kv(path, src, [0], header)
    os.unlink(read_staged(path).lease_path)
    with pytest.raises(StagedKVError, match="lease has expired"):
        load_staged_kv(path, caches(0), 0, [0])


def _stage_caches(src: dict[str, torch.Tensor], layers: list[int], seed: int) -> dict[str, torch.Tensor]:
    """A pipeline stage's cache: only its own layers."""
    full = caches(0, seed=seed)
    return {name: full[name] for name in src if int(name.split(".")[2]) in layers}


@pytest.mark.parametrize("direct", [False, True])
def test_pipeline_stages_each_load_their_layers_and_the_last_one_releases(tmp_path, direct):
    """Two stages of one pipeline engine read the same staged KV, each its own layers; the
    file (and a direct export's lease) outlives the first and is gone after the second."""
    src = caches(0, seed=7)
    header = plan_layout(src, 0, 32, num_blocks=2, num_tokens=64)
    path = tmp_path / "r.kv"
    (write_direct_kv if direct else write_staged_kv)(path, src, [3, 8], header)
    lease = read_staged(path).lease_path if direct else None
    stages = [_stage_caches(src, [0, 1], seed=8), _stage_caches(src, [2], seed=9)]
    for rank, stage in enumerate(stages):
        load_staged_kv(path, stage, 0, [5, 6], shared_claim=True)
        for name, cache in stage.items():
            assert torch.equal(src[name][3], cache[5]) and torch.equal(src[name][8], cache[6])
        released = release_stage_import(path, rank, num_stages=2)
        assert released == (rank == 1)
        assert path.exists() == (rank == 0)
        if direct:
            # The exporter holds its blocks until every stage is done.
            assert (os.path.exists(lease) or os.path.exists(lease + ".claimed")) == (rank == 0)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("block_dim", [0, 1])
def test_stage_parts_merge_into_one_file_of_every_layer(tmp_path, block_dim):
    """A pipeline's stages each stage their own layers of a request; the merged file loads
    into an engine holding every layer exactly as one engine's own staged file would."""
    src, dst = caches(block_dim, seed=1), caches(block_dim, seed=2)
    names = list(src)
    stages = [{n: src[n] for n in names[:2]}, {n: src[n] for n in names[2:]}]
    block_ids = [5, 9, 2]
    parts = [stage_part_path(tmp_path / "r.kv", rank) for rank in range(2)]
    for part, layers in zip(parts, stages):
        write_staged_kv(part, layers, block_ids, plan_layout(layers, block_dim, 32, 3, 96))
    merged = merge_staged_kv(parts, tmp_path / "r.kv")
    assert [c.name for c in merged.layers] == names
    assert not any(part.exists() for part in parts)
    whole = tmp_path / "whole.kv"
    write_staged_kv(whole, src, block_ids, plan_layout(src, block_dim, 32, 3, 96))
    from_one_engine = {k: v.clone() for k, v in dst.items()}
    load_staged_kv(whole, from_one_engine, 0, [0, 1, 2])
    load_staged_kv(tmp_path / "r.kv", dst, 0, [0, 1, 2])
    for name in names:
        assert torch.equal(dst[name], from_one_engine[name])
        assert torch.equal(dst[name].select(block_dim, 1), src[name].select(block_dim, 9))


def test_stage_parts_holding_other_blocks_are_not_merged(tmp_path):
    src = caches(0)
    names = list(src)
    parts = [stage_part_path(tmp_path / "r.kv", rank) for rank in range(2)]
    write_staged_kv(parts[0], {names[0]: src[names[0]]}, [1, 2], plan_layout({names[0]: src[names[0]]}, 0, 32, 2, 64))
    write_staged_kv(parts[1], {names[1]: src[names[1]]}, [1, 2, 3],
                    plan_layout({names[1]: src[names[1]]}, 0, 32, 3, 96))
    with pytest.raises(StagedKVError, match="other blocks"):
        merge_staged_kv(parts, tmp_path / "r.kv")
    assert not (tmp_path / "r.kv").exists()
