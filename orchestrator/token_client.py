"""The data path: routes a token request to replicas and streams its tokens back.

Colocated: one replica does everything. Disaggregated: a prefill replica computes the
prompt and the first token and publishes the prompt's KV; a decode replica admits
prompt + first token with that KV and streams the rest.

Routing runs on a routing table the client refreshes in the background from the
controller; when the controller is unreachable, the last table keeps serving (contract 2).
If the replica serving a request dies, the request is replayed on another replica with
its prompt plus the tokens already streamed (bounded by a replay budget). Requests with a
sampling seed instead restart from their prompt and skip what was streamed, so they stay
reproducible (see `resumption`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace

import ray
from ray.actor import ActorHandle
from vllm.sampling_params import SamplingType
from vllm.v1.engine.exceptions import EngineDeadError, EngineGenerateError

from actors.kv.medium import KVHandle, MediumKind
from actors.messages import TokenDelta, TokenRequest
from actors.outbox import MigrationNotice
from orchestrator.controller import RoutingTable
from orchestrator.delta_channel import DeltaChannels, ReplicaRequestError
from orchestrator.replica_handle import ReplicaHandle
from policies.routing import DataPath, NoReplicaAvailable, RequestDemand, Router, RouterState
from policies.snapshot import Health, RequestId, Role

logger = logging.getLogger(__name__)


class TokenClient:
    def __init__(
        self,
        controller: ActorHandle,
        router: Router,
        block_size: int,
        refresh_s: float = 0.2,
        max_replays: int = 3,
        replica_wait_s: float = 60.0,
        data_path: DataPath = DataPath.AUTO,
        starting_replica_wait_s: float = 600.0,
    ):
        self._controller = controller
        self._router = router
        self._block_size = block_size
        self._refresh_s = refresh_s
        self._table: RoutingTable | None = None
        self._router_state = RouterState()
        self._refresher: asyncio.Task | None = None
        self._channels = DeltaChannels()
        self.max_replays = max_replays
        self.replica_wait_s = replica_wait_s
        self.starting_replica_wait_s = starting_replica_wait_s
        self.data_path = data_path
        self.num_refresh_failures = 0
        self.num_replays = 0
        # Told the kind of failure each time a request is replayed, and the mode and
        # downtime (seconds without a token) of each migration a stream followed (metrics).
        self.on_replay: Callable[[str], None] = lambda reason: None
        self.on_migration: Callable[[str, float], None] = lambda mode, downtime_s: None

    async def start(self) -> None:
        self._table = await self._controller.routing_table.remote()
        self._refresher = asyncio.create_task(self._refresh_loop())

    async def close(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
        self._channels.close()

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_s)
            try:
                table = await asyncio.wait_for(self._controller.routing_table.remote(), 5.0)
                if self._table is None or table.snapshot.version != self._table.snapshot.version:
                    self._router_state = self._router_state.on_new_snapshot()
                self._table = table
            except (ray.exceptions.RayError, asyncio.TimeoutError):
                self.num_refresh_failures += 1

    @property
    def table(self) -> RoutingTable:
        if self._table is None:
            raise RuntimeError("TokenClient.start() has not run")
        return self._table

    @property
    def disaggregated(self) -> bool:
        if self.data_path != DataPath.AUTO:
            return self.data_path == DataPath.DISAGGREGATED
        snapshot = self.table.snapshot
        return bool(snapshot.pools_with_role(Role.PREFILL)) and bool(snapshot.pools_with_role(Role.DECODE))

    def choose(self, role: Role, num_prompt_tokens: int, avoid: frozenset[str] = frozenset()) -> ReplicaHandle:
        table = self.table
        demand = RequestDemand(num_prompt_tokens, -(-num_prompt_tokens // self._block_size))
        candidates = [
            r for r in table.snapshot.serving(role) if r.replica_id in table.actors and r.replica_id not in avoid
        ]
        replica_id, self._router_state = self._router.choose(candidates, role, demand, self._router_state)
        return ReplicaHandle(replica_id, table.actors[replica_id])

    async def generate(self, request: TokenRequest, medium: MediumKind | None = None) -> AsyncIterator[TokenDelta]:
        """Streams the request; if the replica serving it dies, replays it on another one
        with the prompt plus the tokens already streamed, so the caller sees one continuous
        stream (greedy: exactly the tokens of an uninterrupted run). Raises `RequestFailed`
        past the replay budget."""
        produced: list[int] = []
        avoid: set[str] = set()
        num_replays = 0
        while True:
            attempt = _Attempt()
            current, skip = (request, 0) if not produced else resumption(request, produced)
            try:
                stream = self._attempt(current, medium, frozenset(avoid), attempt, fresh=not produced)
                async for delta in skipping(stream, skip):
                    produced += delta.token_ids
                    yield replace(delta, num_prompt_tokens=len(request.prompt_token_ids))
                return
            except Exception as exc:  # noqa: BLE001 - classified just below
                if not is_replica_failure(exc):
                    raise
                if num_replays >= self.max_replays:
                    raise RequestFailed(
                        f"request {request.request_id} lost its replica {num_replays + 1} times; retry it"
                    ) from exc
                num_replays += 1
                self.num_replays += 1
                self.on_replay(replay_reason(exc))
                if attempt.replica_id:
                    avoid.add(attempt.replica_id)
                logger.warning("request %s: replica %s failed (%s); replaying after %d tokens",
                               request.request_id, attempt.replica_id, type(exc).__name__, len(produced))

    async def _attempt(
        self, request: TokenRequest, medium: MediumKind | None, avoid: frozenset[str], attempt: _Attempt, fresh: bool
    ) -> AsyncIterator[TokenDelta]:
        """A fresh request goes prefill -> decode; a replay recomputes on one replica."""
        n = len(request.prompt_token_ids)
        if not self.disaggregated:
            stream = self._stream_on(await self._choose_any((Role.COLOCATED,), n, avoid), request, attempt)
        elif fresh:
            stream = self._prefill_then_decode(request, medium, avoid, attempt)
        else:
            stream = self._stream_on(await self._choose_any((Role.DECODE, Role.COLOCATED), n, avoid), request, attempt)
        async for delta in stream:
            yield delta

    async def _prefill_then_decode(
        self, request: TokenRequest, medium: MediumKind | None, avoid: frozenset[str], attempt: _Attempt,
        strict: bool = False,
    ) -> AsyncIterator[TokenDelta]:
        """Prefill on the prefill pool, decode on the decode pool; unless `strict`, another
        pool that can do the work stands in when one has no healthy replica."""
        n = len(request.prompt_token_ids)
        prefill_roles = (Role.PREFILL,) if strict else (Role.PREFILL, Role.DECODE, Role.COLOCATED)
        prefill = await self._choose_any(prefill_roles, n, avoid)
        attempt.replica_id = prefill.replica_id
        result = await prefill.prefill(request, medium)
        yield result.first
        if result.first.finished:
            return
        decode = await self._choose_any((Role.DECODE,) if strict else (Role.DECODE, Role.COLOCATED), n, avoid)
        rest, skip = resumption(request, result.first.token_ids, result.kv_handle)
        async for delta in skipping(self._stream_on(decode, rest, attempt), skip):
            yield delta

    async def _stream_on(self, replica: ReplicaHandle, request: TokenRequest, attempt: _Attempt) -> AsyncIterator[TokenDelta]:
        """Streams `request` on `replica` and follows it across live migrations: after a
        `MigrationNotice` it goes on on the destination with the prompt plus what this leg
        produced and the notice's KV. A destination that fails before its first token hands
        the request back to the source, which still holds the KV."""
        skip, source, moved = 0, None, None
        last_token_at = time.perf_counter()
        while True:
            attempt.replica_id = replica.replica_id
            leg_produced: list[int] = []
            notice = None
            try:
                async for item in self._channels.get(replica.replica_id, replica.actor).stream(request):
                    if isinstance(item, MigrationNotice):
                        notice = item
                        break
                    leg_produced += item.token_ids
                    delta, skip = drop_first(item, skip)
                    if delta is None:
                        continue
                    if delta.token_ids:
                        if moved is not None:
                            self.on_migration(moved, time.perf_counter() - last_token_at)
                            moved, source = None, None
                        last_token_at = time.perf_counter()
                    yield delta
            except Exception as exc:
                if source is None or leg_produced or not is_replica_failure(exc):
                    raise
                logger.warning("request %s: migration destination %s failed (%s); back to %s",
                               request.request_id, replica.replica_id, type(exc).__name__, source.replica_id)
                replica, source = source, None
                continue
            if notice is None:
                return
            request, extra_skip = resumption(request, leg_produced, notice.kv_handle)
            skip += extra_skip
            moved = notice.mode
            source, replica = replica, await self._destination_or(notice.destination, replica)

    async def _destination_or(self, replica_id: str, fallback: ReplicaHandle) -> ReplicaHandle:
        """The migration's destination once it serves: at once for a live migration, after
        its engine starts for a parameter drop's pipeline or a restore's members. It is
        waited for while the controller lists it as starting (at most
        `starting_replica_wait_s`), and for at most `replica_wait_s` while it is not listed."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        while True:
            table = self.table
            actor = table.actors.get(replica_id)
            health = next((r.health for p in table.snapshot.pools for r in p.replicas if r.replica_id == replica_id),
                          None)
            if actor is not None and health not in (None, Health.STARTING):
                return ReplicaHandle(replica_id, actor)
            waited = loop.time() - started
            if waited > (self.starting_replica_wait_s if health == Health.STARTING else self.replica_wait_s):
                return fallback
            await asyncio.sleep(self._refresh_s)

    async def _choose_any(self, roles: tuple[Role, ...], num_prompt_tokens: int, avoid: frozenset[str]) -> ReplicaHandle:
        """The first role in `roles` with a healthy replica; waits for the controller to
        bring one up (a replacement, or a restored group's members) for at most
        `replica_wait_s`, or `starting_replica_wait_s` while one of those roles is starting."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        while True:
            for role in roles:
                try:
                    return self.choose(role, num_prompt_tokens, avoid)
                except NoReplicaAvailable:
                    continue
            starting = any(r.health == Health.STARTING and r.role in roles
                           for p in self.table.snapshot.pools for r in p.replicas)
            if loop.time() - started > (self.starting_replica_wait_s if starting else self.replica_wait_s):
                raise NoReplicaAvailable(f"no healthy {'/'.join(r.value for r in roles)} replica")
            await asyncio.sleep(0.2)

    async def generate_colocated(self, request: TokenRequest) -> AsyncIterator[TokenDelta]:
        replica = self.choose(Role.COLOCATED, len(request.prompt_token_ids))
        async for delta in self._stream_on(replica, request, _Attempt()):
            yield delta

    async def generate_disaggregated(
        self, request: TokenRequest, medium: MediumKind | None = None
    ) -> AsyncIterator[TokenDelta]:
        """One prefill -> decode pass on exactly those pools, no replay (the mechanism itself,
        for tests and benchmarks)."""
        async for delta in self._prefill_then_decode(request, medium, frozenset(), _Attempt(), strict=True):
            yield delta


class RequestFailed(Exception):
    """The request lost its replica more often than the replay budget allows. Retriable."""


@dataclass
class _Attempt:
    replica_id: str | None = None


def is_replica_failure(exc: BaseException) -> bool:
    """The replica (actor or engine) died, as opposed to the request being at fault."""
    if isinstance(exc, ray.exceptions.RayActorError):
        return True
    if isinstance(exc, ReplicaRequestError):
        return exc.replica_failed
    if isinstance(exc, ray.exceptions.RayTaskError):
        return isinstance(exc.cause, (EngineDeadError, EngineGenerateError, ray.exceptions.RayActorError))
    return False


def replay_reason(exc: BaseException) -> str:
    """A bounded label for why a replica failed a request."""
    if isinstance(exc, ray.exceptions.ActorDiedError):
        return "actor_died"
    if isinstance(exc, ray.exceptions.RayActorError):
        return "actor_unavailable"
    return "engine_failed"


def resumption(
    request: TokenRequest, produced: list[int], kv_handle: KVHandle | None = None
) -> tuple[TokenRequest, int]:
    """How another replica goes on with `request` after `produced`: the request to send and
    how many of its first tokens to drop. Seeded sampling restarts from the prompt and drops
    what was produced, so the seeded generator draws exactly as in one uninterrupted run;
    everything else continues from prompt + produced."""
    if request.sampling.sampling_type == SamplingType.RANDOM_SEED:
        sampling = request.sampling.clone()
        sampling.prompt_logprobs = None
        restart = replace(request, request_id=RequestId(f"{request.request_id}+{len(produced)}"),
                          sampling=sampling, kv_handle=kv_handle)
        return restart, len(produced)
    return continuation(request, produced, kv_handle), 0


async def skipping(stream: AsyncIterator[TokenDelta], num_tokens: int) -> AsyncIterator[TokenDelta]:
    """`stream` without its first `num_tokens` tokens."""
    async for delta in stream:
        delta, num_tokens = drop_first(delta, num_tokens)
        if delta is not None:
            yield delta


def drop_first(delta: TokenDelta, num_tokens: int) -> tuple[TokenDelta | None, int]:
    """`delta` without up to `num_tokens` leading tokens (None if nothing is left to say),
    and how many tokens are still to drop."""
    if not num_tokens:
        return delta, 0
    dropped = min(num_tokens, len(delta.token_ids))
    delta = replace(delta, token_ids=delta.token_ids[dropped:], prompt_logprobs=None,
                    logprobs=delta.logprobs[dropped:] if delta.logprobs else None)
    if not delta.token_ids and not delta.finished:
        return None, num_tokens - dropped
    return delta, num_tokens - dropped


def continuation(request: TokenRequest, produced: list[int], kv_handle: KVHandle | None) -> TokenRequest:
    """The rest of `request` after the `produced` tokens: they join the prompt and the
    token budgets shrink by as many. Its id is new: an engine may still be finishing the
    old one."""
    sampling = request.sampling.clone()
    num_produced = len(produced)
    if sampling.max_tokens is not None:
        sampling.max_tokens -= num_produced
    sampling.min_tokens = max(0, sampling.min_tokens - num_produced)
    # The first attempt delivered the prompt's logprobs; the rest does not recompute them.
    sampling.prompt_logprobs = None
    return replace(
        request,
        request_id=RequestId(f"{request.request_id}+{num_produced}"),
        prompt_token_ids=list(request.prompt_token_ids) + list(produced),
        sampling=sampling,
        kv_handle=kv_handle,
    )


__all__ = ["TokenClient", "RequestFailed", "continuation", "resumption", "is_replica_failure", "NoReplicaAvailable"]
