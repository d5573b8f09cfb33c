"""Running the ingress: `cdrflow ingress [--host H] [--port P]`.

SIGTERM (or SIGINT): stop accepting, let requests in flight finish (up to
`shutdown_timeout`), ship what is coalescing, wait for its confirms, close."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from cdrflow.logs import get_logger
from cdrflow.settings import Settings
from ingress.app import create_app
from schemas.sources import Sources

log = get_logger("cdrflow.ingress")


def runner_options(settings: Settings) -> dict[str, Any]:
    """aiohttp server options, shared by `serve` and the tests."""
    return {
        "access_log": None,  # its lines carry the URL, and the URL carries the token
        # aiohttp closes a connection that has not sent complete request headers within
        # keepalive_timeout of connecting or of its last answer: our header-read guard
        # (aiohttp has no header timeout of its own; the body is bounded in read_body).
        "keepalive_timeout": settings.header_timeout,
        "shutdown_timeout": settings.shutdown_timeout,
        # A provider hanging up must not cancel a request whose envelope is being made
        # durable; the publish is shielded anyway, but nothing gains from cancelling.
        "handler_cancellation": False,
    }


def serve(settings: Settings, sources: Sources, host: str, port: int) -> None:
    app = create_app(settings, sources)
    log.info("ingress_starting", host=host, port=port, sources=sorted(sources))
    web.run_app(
        app, host=host, port=port, print=None, handle_signals=True, **runner_options(settings)
    )
    log.info("ingress_stopped")
