"""The data path: routes a token request to replicas and streams its tokens back.

Colocated: one replica does everything. Disaggregated: a prefill replica computes the
prompt and the first token and publishes the prompt's KV; a decode replica admits
prompt + first token with that KV and streams the rest.

Routing runs on a routing table the client refreshes in the background from the
controller; when the controller is unreachable, the last table keeps serving (contract 2).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import replace

import ray
from ray.actor import ActorHandle

from actors.kv.medium import MediumKind
from actors.messages import TokenDelta, TokenRequest
from orchestrator.controller import RoutingTable
from orchestrator.replica_handle import ReplicaHandle
from policies.routing import NoReplicaAvailable, RequestDemand, Router, RouterState
from policies.snapshot import Role

logger = logging.getLogger(__name__)


class TokenClient:
    def __init__(self, controller: ActorHandle, router: Router, block_size: int, refresh_s: float = 0.2):
        self._controller = controller
        self._router = router
        self._block_size = block_size
        self._refresh_s = refresh_s
        self._table: RoutingTable | None = None
        self._router_state = RouterState()
        self._refresher: asyncio.Task | None = None
        self.num_refresh_failures = 0

    async def start(self) -> None:
        self._table = await self._controller.routing_table.remote()
        self._refresher = asyncio.create_task(self._refresh_loop())

    async def close(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_s)
            try:
                self._table = await asyncio.wait_for(self._controller.routing_table.remote(), 5.0)
            except (ray.exceptions.RayError, asyncio.TimeoutError):
                self.num_refresh_failures += 1

    @property
    def table(self) -> RoutingTable:
        if self._table is None:
            raise RuntimeError("TokenClient.start() has not run")
        return self._table

    @property
    def disaggregated(self) -> bool:
        snapshot = self.table.snapshot
        return bool(snapshot.pools_with_role(Role.PREFILL)) and bool(snapshot.pools_with_role(Role.DECODE))

    def choose(self, role: Role, num_prompt_tokens: int) -> ReplicaHandle:
        table = self.table
        demand = RequestDemand(num_prompt_tokens, -(-num_prompt_tokens // self._block_size))
        candidates = [r for r in table.snapshot.serving(role) if r.replica_id in table.actors]
        replica_id, self._router_state = self._router.choose(candidates, role, demand, self._router_state)
        return ReplicaHandle(replica_id, table.actors[replica_id])

    async def generate(self, request: TokenRequest, medium: MediumKind | None = None) -> AsyncIterator[TokenDelta]:
        stream = self.generate_disaggregated(request, medium) if self.disaggregated else self.generate_colocated(request)
        async for delta in stream:
            yield delta

    async def generate_colocated(self, request: TokenRequest) -> AsyncIterator[TokenDelta]:
        replica = self.choose(Role.COLOCATED, len(request.prompt_token_ids))
        async for delta in replica.stream(request):
            yield delta

    async def generate_disaggregated(
        self, request: TokenRequest, medium: MediumKind | None = None
    ) -> AsyncIterator[TokenDelta]:
        prefill = self.choose(Role.PREFILL, len(request.prompt_token_ids))
        result = await prefill.prefill(request, medium)
        yield result.first
        if result.first.finished:
            return
        decode = self.choose(Role.DECODE, len(request.prompt_token_ids))
        async for delta in decode.stream(continuation(request, result.first, result.kv_handle)):
            yield delta


def continuation(request: TokenRequest, produced: TokenDelta, kv_handle) -> TokenRequest:
    """The rest of `request` after `produced`: the produced tokens join the prompt and the
    token budgets shrink by as many."""
    sampling = request.sampling.clone()
    num_produced = len(produced.token_ids)
    if sampling.max_tokens is not None:
        sampling.max_tokens -= num_produced
    sampling.min_tokens = max(0, sampling.min_tokens - num_produced)
    return replace(
        request,
        prompt_token_ids=list(request.prompt_token_ids) + list(produced.token_ids),
        sampling=sampling,
        kv_handle=kv_handle,
    )


__all__ = ["TokenClient", "continuation", "NoReplicaAvailable"]
