"""The front door's end of a replica channel (see actors/outbox.py): one Ray stream per
replica carries the deltas of all this process's requests on it; a reader task hands
each delta to the request it belongs to."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import ray
from ray.actor import ActorHandle

from actors.messages import TokenDelta, TokenRequest
from actors.outbox import MigrationNotice, RequestError
from policies.snapshot import ReplicaId, RequestId


class ReplicaRequestError(Exception):
    """A request failed on its replica; `replica_failed` when the engine itself failed."""

    def __init__(self, message: str, replica_failed: bool):
        super().__init__(message)
        self.replica_failed = replica_failed


class DeltaChannel:
    def __init__(self, actor: ActorHandle):
        self._actor = actor
        self._channel_id = uuid.uuid4().hex
        self._queues: dict[RequestId, asyncio.Queue[TokenDelta | MigrationNotice | BaseException]] = {}
        self.failure: BaseException | None = None
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for ref in self._actor.open_channel.options(num_returns="streaming").remote(self._channel_id):
                for item in await ref:
                    queue = self._queues.get(item.request_id)
                    if queue is None:
                        continue  # the request's consumer is gone
                    if isinstance(item, RequestError):
                        queue.put_nowait(ReplicaRequestError(item.message, item.replica_failed))
                    else:
                        queue.put_nowait(item)
            self.failure = ray.exceptions.RayActorError()
        except Exception as exc:  # noqa: BLE001 - handed to every request on the channel
            self.failure = exc
        for queue in self._queues.values():
            queue.put_nowait(self.failure)

    async def stream(self, request: TokenRequest) -> AsyncIterator[TokenDelta | MigrationNotice]:
        """The request's deltas; a `MigrationNotice`, if one comes, is the last item."""
        if self.failure is not None:
            raise self.failure
        queue: asyncio.Queue[TokenDelta | MigrationNotice | BaseException] = asyncio.Queue()
        self._queues[request.request_id] = queue
        finished = False
        try:
            self._actor.submit.remote(request, self._channel_id)
            while not finished:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                finished = isinstance(item, MigrationNotice) or item.finished
                yield item
        finally:
            del self._queues[request.request_id]
            if not finished and self.failure is None:
                # The consumer went away (or the request failed): stop generating for nobody.
                self._actor.abort.remote(request.request_id)

    def close(self) -> None:
        self._reader.cancel()


class DeltaChannels:
    """One live channel per replica, opened on first use and reopened after a failure."""

    def __init__(self) -> None:
        self._channels: dict[ReplicaId, DeltaChannel] = {}

    def get(self, replica_id: ReplicaId, actor: ActorHandle) -> DeltaChannel:
        channel = self._channels.get(replica_id)
        if channel is None or channel.failure is not None:
            channel = self._channels[replica_id] = DeltaChannel(actor)
        return channel

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()
