"""Prometheus metrics of a worker, and its optional HTTP endpoint (`CDRFLOW_WORKER_PORT`):
/healthz (alive), /readyz (consuming, database reachable), /metrics."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class WorkerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.batches = Counter(
            "cdrflow_worker_batches", "Batches committed", registry=self.registry
        )
        self.batch_seconds = Histogram(
            "cdrflow_worker_batch_seconds",
            "Time to normalize and commit one batch",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.deliveries = Counter(
            "cdrflow_worker_deliveries",
            "Call reports taken from cdr.raw, by outcome",
            ["outcome"],  # new_record, revision, duplicate, seen_before
            registry=self.registry,
        )
        self.rejected = Counter(
            "cdrflow_worker_rejected",
            "Callbacks stored in rejected_callbacks, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.published = Counter(
            "cdrflow_worker_published", "Records confirmed on cdr.records", registry=self.registry
        )
        self.parked = Counter(
            "cdrflow_worker_parked",
            "Messages sent to the dead-letter queue",
            registry=self.registry,
        )
        self.database_up = Gauge(
            "cdrflow_worker_database_up",
            "0 while batches wait for the database",
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


@asynccontextmanager
async def serve_health(
    metrics: WorkerMetrics,
    ready: Callable[[], bool],
    port: int,
    host: str = "0.0.0.0",  # noqa: S104
) -> AsyncIterator[None]:
    """Serve the endpoint while the context is open; port 0 serves nothing."""
    if not port:
        yield
        return

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def readyz(request: web.Request) -> web.Response:
        is_ready = ready()
        return web.json_response({"ready": is_ready}, status=200 if is_ready else 503)

    async def render(request: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", render)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    try:
        yield
    finally:
        await runner.cleanup()
