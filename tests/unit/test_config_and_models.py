from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from pydantic import ValidationError
from transformers import AutoConfig, AutoTokenizer

from actors.kv.medium import MediumKind
from orchestrator.config import ClusterConfig, ParameterDropConfig, PoolConfig
from orchestrator.model_builder import SHAPES, ModelSize, build_model, directory_digest
from orchestrator.models import resolve_model
from policies.snapshot import Role

EXAMPLES = sorted((Path(__file__).parents[2] / "examples").glob("*.yaml"))


def test_defaults_are_one_prefill_and_one_decode_over_shared_memory():
    config = ClusterConfig()
    assert [(p.role, p.num_replicas) for p in config.pools] == [(Role.PREFILL, 1), (Role.DECODE, 1)]
    assert config.disaggregated and config.kv.medium == MediumKind.SHARED_MEMORY


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_configs_load(path):
    assert ClusterConfig.from_yaml(path).pools


def test_a_prefill_pool_alone_cannot_serve():
    with pytest.raises(ValidationError, match="colocated pool, or both a prefill and a decode pool"):
        ClusterConfig(pools=(PoolConfig(name="p", role=Role.PREFILL),))


def test_pool_names_are_unique():
    with pytest.raises(ValidationError, match="unique"):
        ClusterConfig(pools=(PoolConfig(name="c", role=Role.COLOCATED), PoolConfig(name="c", role=Role.COLOCATED)))


def test_unknown_fields_are_rejected():
    with pytest.raises(ValidationError, match="extra"):
        ClusterConfig.model_validate({"engine": {"kv_cache_gb": 1}})


def test_parameter_dropping_needs_a_memory_budget_and_a_standby_needs_the_gate():
    with pytest.raises(ValidationError, match="needs parameter_drop.replica_memory_bytes"):
        ParameterDropConfig(enabled=True)
    with pytest.raises(ValidationError, match="standby_pipeline needs parameter_drop.start_behind_gate"):
        ParameterDropConfig(enabled=True, replica_memory_bytes=10**9, standby_pipeline=True, start_behind_gate=False)
    assert ParameterDropConfig(enabled=True, replica_memory_bytes=10**9, standby_pipeline=True).standby_pipeline


def test_engine_spec_carries_kv_settings():
    spec = ClusterConfig(name="c1").engine_spec("/models/x")
    assert spec.shm_dir.endswith("/c1") and spec.staging_dir_for(MediumKind.DISK).name == "c1"
    args = spec.engine_args()
    assert args.kv_transfer_config.kv_connector == "TideKVConnector"
    assert args.kv_cache_memory_bytes == spec.kv_cache_bytes


def test_a_single_stage_engine_runs_its_model_in_the_engine_core_process():
    spec = ClusterConfig(name="c1").engine_spec("/models/x")
    assert spec.process_env()["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    pipeline = dataclasses.replace(spec, pipeline_stages=2)
    assert "VLLM_ENABLE_V1_MULTIPROCESSING" not in pipeline.process_env()
    assert pipeline.engine_args().distributed_executor_backend == "mp"
    # vLLM's automatic thread binding needs a NUMA node per stage; a pipeline leaves it to the OS.
    assert "VLLM_CPU_OMP_THREADS_BIND" not in spec.process_env()
    assert pipeline.process_env()["VLLM_CPU_OMP_THREADS_BIND"] == "nobind"
    bound = dataclasses.replace(pipeline, cpu_threads_bind="0-1|2-3")
    assert bound.process_env()["VLLM_CPU_OMP_THREADS_BIND"] == "0-1|2-3"


def test_model_build_is_deterministic(tmp_path):
    a = build_model(ModelSize.TINY, tmp_path / "a", seed=0)
    b = build_model(ModelSize.TINY, tmp_path / "b", seed=0)
    c = build_model(ModelSize.TINY, tmp_path / "c", seed=1)
    assert directory_digest(a) == directory_digest(b) != directory_digest(c)


def test_built_model_is_a_normal_hugging_face_directory(tmp_path):
    path = build_model(ModelSize.TINY, tmp_path / "tiny")
    config = AutoConfig.from_pretrained(path)
    assert config.model_type == "llama" and config.num_hidden_layers == SHAPES[ModelSize.TINY].num_hidden_layers
    tokenizer = AutoTokenizer.from_pretrained(path)
    ids = tokenizer("the tide moves the cache").input_ids
    assert ids[0] == tokenizer.bos_token_id and tokenizer.decode(ids, skip_special_tokens=True) == "the tide moves the cache"
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_small_model_has_the_advertised_size():
    shape = SHAPES[ModelSize.SMALL]
    params = 2 * shape.vocab_size * shape.hidden_size + shape.num_hidden_layers * (
        2 * shape.hidden_size**2
        + 2 * shape.hidden_size * shape.num_key_value_heads * shape.hidden_size // shape.num_attention_heads
        + 3 * shape.hidden_size * shape.intermediate_size
    )
    assert 50e6 < params < 200e6


def test_resolve_model_rejects_a_directory_without_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        resolve_model(str(tmp_path))
