"""The console served for tests (as `cdrflow console` serves it, on a free port), its
users, and a client that logs in and sends forms as a browser does."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import cache
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from cdrflow.settings import Settings
from console.console_server import create_app
from console.users import User, hash_password, read_users, write_users

PASSWORDS = {"olga": "operator password", "victor": "viewer password"}
SECRET = "a console secret of the tests, 32+ characters long"
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@cache
def _hashes() -> dict[str, str]:
    return {name: hash_password(password) for name, password in PASSWORDS.items()}


def write_test_users(path: Path) -> Path:
    """An operator (olga) and a viewer (victor); hashed once per test run."""
    hashes = _hashes()
    write_users(
        path,
        {
            "olga": User("olga", "operator", hashes["olga"]),
            "victor": User("victor", "viewer", hashes["victor"]),
        },
    )
    return path


@asynccontextmanager
async def console_server(
    settings: Settings, workdir: Path, sources: list[str]
) -> AsyncIterator[str]:
    """The console's base URL while the context is open."""
    users = read_users(write_test_users(workdir / "console-users"))
    app = create_app(settings, users, sources, secret=SECRET)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def csrf_of(page: str) -> str:
    found = _CSRF.search(page)
    assert found is not None, "no CSRF token on the page"
    return found.group(1)


class ConsoleClient:
    """One browser's worth of cookies; `post` sends the page's CSRF token unless told not to."""

    def __init__(self, base: str, session: aiohttp.ClientSession) -> None:
        self.base = base
        self.session = session
        self.csrf = ""

    async def get(self, path: str, **options: Any) -> tuple[int, str]:
        async with self.session.get(self.base + path, **options) as response:
            text = await response.text()
        token = _CSRF.search(text)
        if token:
            self.csrf = token.group(1)
        return response.status, text

    async def post(
        self, path: str, form: dict[str, str], *, csrf: bool = True, **options: Any
    ) -> tuple[int, str, aiohttp.ClientResponse]:
        data = {**form, **({"csrf": self.csrf} if csrf else {})}
        async with self.session.post(self.base + path, data=data, **options) as response:
            text = await response.text()
        return response.status, text, response

    async def login(self, name: str) -> None:
        await self.get("/login")
        status, text, _ = await self.post(
            "/login", {"name": name, "password": PASSWORDS[name], "next": "/"}
        )
        assert status == 200, (status, text)
        assert "Log out" in text
        await self.get("/search")  # the new session's token


@asynccontextmanager
async def console_client(base: str) -> AsyncIterator[ConsoleClient]:
    # unsafe: the console is on 127.0.0.1, and aiohttp keeps no cookie of an IP otherwise
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        yield ConsoleClient(base, session)
