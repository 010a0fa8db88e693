"""Every controller incarnation's events over a chaos run. A killed controller's events go
with it, so they are read while it runs: the report then shows what each controller did
around each fault, not only the last one's."""

from __future__ import annotations

import asyncio

import ray

from orchestrator.events import ControllerEvent


class ControllerEventLog:
    def __init__(self, controller, every_s: float = 2.0):
        self._controller = controller
        self._every_s = every_s
        self._seen: set[ControllerEvent] = set()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._follow())

    async def stop(self) -> list[ControllerEvent]:
        """Stops following (after one last read) and returns every event seen, oldest first."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._read()
        return sorted(self._seen, key=lambda e: e.at_s)

    async def _follow(self) -> None:
        while True:
            await self._read()
            await asyncio.sleep(self._every_s)

    async def _read(self) -> None:
        try:
            events = await asyncio.wait_for(self._controller.events.remote(), timeout=5.0)
        except (ray.exceptions.RayError, asyncio.TimeoutError):
            return  # dead or restarting: the next read catches up
        self._seen.update(events)
