"""Prometheus metrics of an HTTP service: request latency by route and status, and `/metrics`."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable

from fastapi import FastAPI
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

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
    app: FastAPI, service: str, extra: Callable[[FastAPI], Awaitable[Iterable[Metric]]] | None = None
) -> None:
    """Time every request and serve `/metrics`; `extra` adds families read at scrape time."""
    registry = CollectorRegistry()
    histogram = Histogram(
        "loyalty_http_request_duration_seconds",
        f"HTTP request latency of the {service}",
        ["method", "route", "status"],
        registry=registry,
        buckets=LATENCY_BUCKETS,
    )
    app.add_middleware(_Timing, histogram=histogram)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        body = generate_latest(registry)
        if extra is not None:
            snapshot = CollectorRegistry()
            snapshot.register(_Snapshot(await extra(app)))
            body += generate_latest(snapshot)
        return Response(body, media_type=CONTENT_TYPE_LATEST)
