"""Typed messages between the front door and replicas. Replicas speak tokens (contract 1)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vllm import SamplingParams

from actors.engine_spec import TransferFailurePolicy
from actors.kv.medium import KVHandle
from policies.snapshot import ReplicaId, RequestId, Role


@dataclass(frozen=True)
class TokenRequest:
    request_id: RequestId
    prompt_token_ids: list[int]
    # vLLM's own sampling parameters; max_tokens is what this replica should still produce.
    sampling: SamplingParams
    # KV computed elsewhere for a prefix of prompt_token_ids.
    kv_handle: KVHandle | None = None
    # Overrides the replica's policy when the KV cannot be fetched.
    on_transfer_failure: TransferFailurePolicy | None = None


@dataclass(frozen=True)
class RequestTimings:
    """Per request, as seen by the replica that served it (seconds)."""

    queue_s: float = 0.0
    prefill_s: float = 0.0
    first_token_s: float = 0.0
    token_intervals_s: tuple[float, ...] = ()


@dataclass(frozen=True)
class TokenDelta:
    request_id: RequestId
    token_ids: list[int]
    num_prompt_tokens: int
    num_cached_tokens: int = 0
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    logprobs: list[dict[int, Any]] | None = None
    # On a request's first delta only: vLLM's prompt logprobs (None for the first token).
    prompt_logprobs: list[dict[int, Any] | None] | None = None
    timings: RequestTimings | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass(frozen=True)
class PrefillResult:
    """The first token of a request and, when its prompt filled at least one block, the
    handle of its staged KV."""

    first: TokenDelta
    kv_handle: KVHandle | None = None


@dataclass(frozen=True)
class TransferRecord:
    medium: str
    direction: str
    num_bytes: int
    seconds: float
    ok: bool
    error: str | None = None


@dataclass(frozen=True)
class ReplicaInfo:
    replica_id: ReplicaId
    pool: str
    role: Role
    node_id: str
    pid: int
    num_total_blocks: int
    block_size: int
    max_model_len: int
    clock_backend: str = "emulated"
    # False: the platform refused clock control; the device is observed only.
    clock_control: bool = True
    supported_clocks_mhz: tuple[int, ...] = ()
    # > 1: the engine is a pipeline standing for that many replicas (parameter dropping).
    pipeline_stages: int = 1
