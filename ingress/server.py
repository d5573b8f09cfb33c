"""Running the ingress: `cdrflow ingress [--host H] [--port P]`.

SIGTERM (or SIGINT): stop accepting, let requests in flight finish (up to
`shutdown_timeout`), ship what is coalescing, wait for its confirms, close."""

from __future__ import annotations

from aiohttp import web

from cdrflow.logs import get_logger
from cdrflow.settings import Settings
from ingress.app import create_app
from schemas.sources import Sources

log = get_logger("cdrflow.ingress")


def serve(settings: Settings, sources: Sources, host: str, port: int) -> None:
    app = create_app(settings, sources)
    log.info("ingress_starting", host=host, port=port, sources=sorted(sources))
    web.run_app(
        app,
        host=host,
        port=port,
        access_log=None,  # its lines carry the URL, and the URL carries the token
        # aiohttp closes a connection that has sent no complete request headers within
        # keepalive_timeout of connecting or of its last answer: our header-read guard.
        keepalive_timeout=settings.header_timeout,
        shutdown_timeout=settings.shutdown_timeout,
        print=None,
        handle_signals=True,
    )
    log.info("ingress_stopped")
