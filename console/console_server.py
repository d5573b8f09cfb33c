"""Running the console: `cdrflow console [--host H] [--port P]`, until SIGTERM or SIGINT.
`create_app` puts the application together: its state and middleware (`console.console_app`)
and its routes (`console.pages`)."""

from __future__ import annotations

import secrets
from pathlib import Path

from aiohttp import web
from prometheus_client import generate_latest

from cdrflow.health import add_health_routes
from cdrflow.logs import get_logger
from cdrflow.settings import Settings
from console import pages
from console.console_app import CONSOLE, Console, database_ctx, session_middleware, templates
from console.session import SessionSigner
from console.users import User, read_users

log = get_logger("cdrflow.console")


def serve(settings: Settings, sources: list[str], host: str, port: int) -> None:
    users = read_users(Path(settings.console_users))
    if not users:
        log.warning(
            "console_no_users",
            file=settings.console_users,
            hint="cdrflow console-user add NAME --role operator --password-stdin",
        )
    if not settings.console_secret:
        log.warning("console_secret_unset", effect="a new key each start logs everyone out")
    log.info("console_starting", host=host, port=port, users=len(users))
    app = create_app(settings, users, sources)
    # aiohttp's access log would carry query strings, and so searched numbers.
    web.run_app(app, host=host, port=port, access_log=None, print=None, shutdown_timeout=5)
    log.info("console_stopped")


def create_app(
    settings: Settings, users: dict[str, User], sources: list[str], secret: str = ""
) -> web.Application:
    signer = SessionSigner(
        secret or settings.console_secret or secrets.token_urlsafe(32),
        settings.console_session_minutes * 60,
    )
    console = Console(settings, users, signer, sorted(sources), templates())
    app = web.Application(middlewares=[session_middleware], client_max_size=1024 * 1024)
    app[CONSOLE] = console
    app.cleanup_ctx.append(database_ctx)
    add_health_routes(
        app,
        lambda: console.pool is not None,
        lambda: generate_latest(console.metrics.registry),
    )
    pages.add_routes(app)
    return app
