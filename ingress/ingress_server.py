"""Running the ingress: `cdrflow ingress [--host H] [--port P]`.

SIGTERM (or SIGINT): `/readyz` turns 503 at once while the ingress keeps accepting and
answering for `drain_seconds`, so a load balancer takes it out of rotation before anything
is refused. Then it stops accepting, lets requests in flight finish (up to
`shutdown_timeout`), ships what is coalescing, waits for its confirms, and closes."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import Any

from aiohttp import web

from cdrflow.gc_tuning import tune_gc
from cdrflow.logs import get_logger
from cdrflow.settings import Settings
from ingress.edge import edge_runner
from ingress.ingress_app import INGRESS, create_app
from schemas.sources import Sources

log = get_logger("cdrflow.ingress")


def runner_options(settings: Settings) -> dict[str, Any]:
    """aiohttp server options, shared by `serve` and the tests."""
    return {
        "access_log": None,  # its lines carry the URL, and the URL carries the token
        # aiohttp closes a connection that has not sent complete request headers within
        # keepalive_timeout of connecting or of its last answer: our header-read guard
        # (aiohttp has no header timeout of its own; the body is bounded in ingress/body.py).
        "keepalive_timeout": settings.header_timeout,
        "shutdown_timeout": settings.shutdown_timeout,
        # After an answer given before the whole body came (408, 413, ...) aiohttp keeps the
        # connection to read and drop the rest, so the client sees the answer and not a reset;
        # by default for 10 s, even after the client hung up. The body timeout bounds it.
        "lingering_time": settings.body_timeout,
        # A provider hanging up must not cancel a request whose envelope is being made
        # durable; the publish is shielded anyway, but nothing gains from cancelling.
        "handler_cancellation": False,
        # The ingress undoes Content-Encoding itself (ingress/coding.py): aiohttp accepts a
        # gzip stream cut short, and passes `gzip, gzip` through undecoded.
        "auto_decompress": False,
    }


def make_runner(app: web.Application, settings: Settings) -> web.AppRunner:
    """The runner `serve` uses, with the ingress's own connection layer (ingress/edge.py)."""
    return edge_runner(app, app[INGRESS].metrics, **runner_options(settings))


def serve(settings: Settings, sources: Sources, host: str, port: int) -> None:
    log.info("ingress_starting", host=host, port=port, sources=sorted(sources))
    tune_gc()
    asyncio.run(_serve(create_app(settings, sources), settings, host, port))
    log.info("ingress_stopped")


async def _serve(app: web.Application, settings: Settings, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    runner = make_runner(app, settings)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        await stop.wait()
        app[INGRESS].draining = True
        log.info("ingress_draining", seconds=settings.drain_seconds)
        stop.clear()
        with contextlib.suppress(TimeoutError):  # a second signal ends the drain early
            await asyncio.wait_for(stop.wait(), settings.drain_seconds)
    finally:
        await runner.cleanup()  # stop listening, finish requests in flight, flush
