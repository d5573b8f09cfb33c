"""Running the console: `cdrflow console [--host H] [--port P]`, until SIGTERM or SIGINT."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from cdrflow.logs import get_logger
from cdrflow.settings import Settings
from console.console_app import create_app
from console.users import read_users

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
