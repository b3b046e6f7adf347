"""Prometheus metrics of an HTTP service: request latency by route and status, and `/metrics`.

Under `serving.serve` every worker process writes its counts to files of the run (Prometheus'
multiprocess mode) and `/metrics` adds them up, whichever worker answers the scrape.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable, Iterable

from fastapi import FastAPI
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.serving import MULTIPROCESS_ENV, Admission, Rotation, ServingSettings

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _Snapshot(Collector):
    """Metric families computed just before a scrape."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self._families


class _Timing:
    """ASGI middleware: one observation per request, labelled by route template, not raw path."""

    def __init__(self, app: ASGIApp, histogram: Histogram) -> None:
        self._app = app
        self._histogram = histogram

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self._app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            self._histogram.labels(scope["method"], path, str(status)).observe(time.perf_counter() - started)


def install_http_metrics(
    app: FastAPI,
    service: str,
    serving: ServingSettings,
    extra: Callable[[FastAPI], Awaitable[Iterable[Metric]]] | None = None,
) -> None:
    """Time every request, shed what cannot start in time, rotate connections, and serve `/metrics`.

    `extra` adds families read at scrape time. Install it last: admission then comes first (behind
    only the rotation's coin toss), so a request that is shed costs as little as possible.
    """
    registry = CollectorRegistry()
    histogram = Histogram(
        "loyalty_http_request_duration_seconds",
        f"HTTP request latency of the {service}",
        ["method", "route", "status"],
        registry=registry,
        buckets=LATENCY_BUCKETS,
    )
    shed = Counter(
        "loyalty_http_requests_shed",
        f"Requests the {service} answered 503 because none of its turns was free within the budget, by "
        "reason: late (its event loop ran late), backlog (more queued than the budget), standing (the "
        "queue stood), budget (it waited the budget out), behind (a command: the processor answers its "
        "partition later than the command budget)",
        ["reason"],
        registry=registry,
    )
    app.state.shed = shed
    app.add_middleware(_Timing, histogram=histogram)
    app.add_middleware(
        Admission, limit=serving.api_max_in_flight, budget_s=serving.api_queue_budget_ms / 1000, shed=shed
    )
    app.add_middleware(Rotation, every=serving.api_requests_per_connection)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        body = generate_latest(_every_worker() if MULTIPROCESS_ENV in os.environ else registry)
        if extra is not None:
            snapshot = CollectorRegistry()
            snapshot.register(_Snapshot(await extra(app)))
            body += generate_latest(snapshot)
        return Response(body, media_type=CONTENT_TYPE_LATEST)


def _every_worker() -> CollectorRegistry:
    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry
