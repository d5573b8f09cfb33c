"""The health and metrics endpoints both processes serve: /healthz (the process is alive),
/readyz (it can do its work now: 200, else 503) and /metrics (Prometheus text format), and
what every process's metrics registry holds besides its own metrics."""

from __future__ import annotations

import importlib.metadata
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from aiohttp import web
from prometheus_client import (
    CollectorRegistry,
    Gauge,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
)

from schemas.record import SCHEMA_VERSION

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def version() -> str:
    try:
        return importlib.metadata.version("cdrflow")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree never installed
        return "unknown"


def process_registry() -> CollectorRegistry:
    """A registry of one process's own (one per app, so tests can run several in one
    interpreter), with what the global registry would have had: the process_* and python_*
    collectors, and cdrflow_build_info."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    build = Gauge(
        "cdrflow_build_info",
        "Always 1: the running release and the schema_version of the records it writes",
        ["version", "schema_version"],
        registry=registry,
    )
    build.labels(version(), str(SCHEMA_VERSION)).set(1)
    return registry


def add_health_routes(
    app: web.Application, ready: Callable[[], bool], render_metrics: Callable[[], bytes]
) -> None:
    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def readyz(request: web.Request) -> web.Response:
        is_ready = ready()
        return web.json_response({"ready": is_ready}, status=200 if is_ready else 503)

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=render_metrics(), headers={"Content-Type": CONTENT_TYPE})

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)


@asynccontextmanager
async def serve_health(
    port: int,
    ready: Callable[[], bool],
    render_metrics: Callable[[], bytes],
    host: str = "0.0.0.0",  # noqa: S104
) -> AsyncIterator[None]:
    """Serve the endpoints on their own port while the context is open; port 0 serves
    nothing (a process without HTTP of its own, such as a worker)."""
    if not port:
        yield
        return
    app = web.Application()
    add_health_routes(app, ready, render_metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    try:
        yield
    finally:
        await runner.cleanup()
