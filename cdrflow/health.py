"""The health and metrics endpoints both processes serve: /healthz (the process is alive),
/readyz (it can do its work now: 200, else 503) and /metrics (Prometheus text format)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from aiohttp import web

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


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
