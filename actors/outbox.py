"""Deltas of many requests, batched for one subscriber.

A replica answers each front-door process on one Ray stream (a channel) instead of one
stream per request: whatever its requests produced since the subscriber last took is
sent as one message, so an engine step costs one Ray message per subscriber, not one
per running request.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from actors.kv.medium import KVHandle
from actors.messages import TokenDelta
from policies.snapshot import RequestId


@dataclass(frozen=True)
class RequestError:
    """A request ended with an error on the replica. `replica_failed`: the engine itself
    failed (the request may be replayed elsewhere), not the request."""

    request_id: RequestId
    message: str
    replica_failed: bool


@dataclass(frozen=True)
class MigrationNotice:
    """The request stopped on `source` and continues on `destination`: prompt plus the
    tokens already streamed, with their KV in `kv_handle` (None: recompute)."""

    request_id: RequestId
    source: str
    destination: str
    kv_handle: KVHandle | None
    mode: str


ChannelItem = TokenDelta | RequestError | MigrationNotice


class Outbox:
    def __init__(self) -> None:
        self._items: list[ChannelItem] = []
        self._ready = asyncio.Event()
        self.request_ids: set[RequestId] = set()

    def put(self, item: ChannelItem) -> None:
        self._items.append(item)
        self._ready.set()

    async def take(self) -> list[ChannelItem]:
        await self._ready.wait()
        self._ready.clear()
        items, self._items = self._items, []
        return items
