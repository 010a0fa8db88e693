"""The front door's own series: requests by route and status, latency, streams in flight,
replays after a replica loss, client disconnects, downtime of migrated streams. Exported through Ray's metrics pipeline,
like everything else (see docs/telemetry.md). Routes are the app's route templates, so
the label stays bounded."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable

from ray.util import metrics

LATENCY_BUCKETS_S = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0]
DOWNTIME_BUCKETS_S = [0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12]
OTHER_ROUTE = "other"


class IngressMetrics:
    def __init__(self, ingress: str, routes: Iterable[str]):
        self.routes = frozenset(routes)
        self._tags = {"ingress": ingress}
        self.requests = metrics.Counter(
            "tide_ingress_requests", "HTTP requests answered, by route and status code.",
            tag_keys=("ingress", "route", "status_code"))
        self.latency = metrics.Histogram(
            "tide_ingress_request_duration_seconds", "From request received to response complete.",
            boundaries=LATENCY_BUCKETS_S, tag_keys=("ingress", "route"))
        self.streams_in_flight = metrics.Gauge(
            "tide_ingress_streams_in_flight", "Streaming (SSE) responses in progress.", tag_keys=("ingress",))
        self.replays = metrics.Counter(
            "tide_ingress_replays", "Requests replayed on another replica after theirs failed.",
            tag_keys=("ingress", "reason"))
        self.disconnects = metrics.Counter(
            "tide_ingress_client_disconnects", "Clients that went away before their response ended.",
            tag_keys=("ingress", "route"))
        self.migration_downtime = metrics.Histogram(
            "tide_migration_downtime_seconds",
            "Time a migrated stream went without a token: last token on the source to first on the destination.",
            boundaries=DOWNTIME_BUCKETS_S, tag_keys=("ingress", "mode"))
        self._num_streams = 0
        self.streams_in_flight.set(0, tags=self._tags)

    def route_label(self, path: str) -> str:
        return path if path in self.routes else OTHER_ROUTE

    def on_replay(self, reason: str) -> None:
        self.replays.inc(1, tags={**self._tags, "reason": reason})

    def on_migration(self, mode: str, downtime_s: float) -> None:
        self.migration_downtime.observe(downtime_s, tags={**self._tags, "mode": mode})

    def on_response(self, route: str, status: int, seconds: float) -> None:
        self.requests.inc(1, tags={**self._tags, "route": route, "status_code": str(status)})
        self.latency.observe(seconds, tags={**self._tags, "route": route})

    def on_disconnect(self, route: str) -> None:
        self.disconnects.inc(1, tags={**self._tags, "route": route})

    def stream_started(self) -> None:
        self._num_streams += 1
        self.streams_in_flight.set(self._num_streams, tags=self._tags)

    def stream_ended(self) -> None:
        self._num_streams -= 1
        self.streams_in_flight.set(self._num_streams, tags=self._tags)


class HTTPMetrics:
    """Plain ASGI: counts every answer (errors from inner layers included), times it,
    tracks SSE streams and notices clients that leave mid-response."""

    def __init__(self, app, metrics: IngressMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        route = self.metrics.route_label(scope.get("path", ""))
        state = {"status": 500, "streaming": False, "done": False, "disconnected": False}

        async def watched_receive():
            message = await receive()
            if message["type"] == "http.disconnect" and not state["done"]:
                state["disconnected"] = True
            return message

        async def watched_send(message):
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                content_type = dict(message.get("headers", [])).get(b"content-type", b"")
                if content_type.startswith(b"text/event-stream"):
                    state["streaming"] = True
                    self.metrics.stream_started()
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                state["done"] = True
            await send(message)

        try:
            await self.app(scope, watched_receive, watched_send)
        except asyncio.CancelledError:
            # Ray Serve cancels a request whose client went away.
            state["disconnected"] = not state["done"]
            raise
        finally:
            if state["streaming"]:
                self.metrics.stream_ended()
            if state["disconnected"]:
                self.metrics.on_disconnect(route)
            self.metrics.on_response(route, state["status"], time.perf_counter() - started)
