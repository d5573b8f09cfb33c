"""The ingress app served exactly as `cdrflow ingress` serves it (same runner options:
aiohttp's TestServer would force handler cancellation on), and a client for it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
from aiohttp import web

from cdrflow.settings import Settings
from ingress.ingress_app import create_app
from ingress.ingress_server import make_runner
from schemas.providers import Registry
from schemas.sources import Sources
from tests.support.samples import Sample
from tests.support.sources import callback_path


class IngressClient:
    def __init__(self, session: aiohttp.ClientSession, app: web.Application, port: int) -> None:
        self.session = session
        self.app = app
        self.host = "127.0.0.1"
        self.port = port
        self._responses: list[aiohttp.ClientResponse] = []

    def make_url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"

    async def request(self, method: str, path: str, **kwargs: Any) -> aiohttp.ClientResponse:
        response = await self.session.request(method, self.make_url(path), **kwargs)
        await response.read()  # the body stays readable; the connection is free again
        self._responses.append(response)
        return response

    async def post(self, path: str, **kwargs: Any) -> aiohttp.ClientResponse:
        return await self.request("POST", path, **kwargs)

    async def get(self, path: str, **kwargs: Any) -> aiohttp.ClientResponse:
        return await self.request("GET", path, **kwargs)

    def release(self) -> None:
        for response in self._responses:
            response.release()


@asynccontextmanager
async def ingress_client(
    settings: Settings, sources: Sources, registry: Registry | None = None
) -> AsyncIterator[IngressClient]:
    app = create_app(settings, sources, registry)
    runner = make_runner(app, settings)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with aiohttp.ClientSession() as session:
            client = IngressClient(session, app, port)
            try:
                yield client
            finally:
                client.release()
    finally:
        await runner.cleanup()


async def push_all(client: IngressClient, items: Sequence[Sample], concurrency: int = 64) -> None:
    """Send every sample through the ingress, `concurrency` at a time; each must get 200."""
    limit = asyncio.Semaphore(concurrency)

    async def push(item: Sample) -> None:
        path = callback_path(item.source) + (f"?{item.query}" if item.query else "")
        headers = {"Content-Type": item.content_type} if item.content_type else {}
        async with (
            limit,
            client.session.request(
                item.method, client.make_url(path), data=item.body, headers=headers
            ) as response,
        ):
            assert response.status == 200, await response.text()

    await asyncio.gather(*(push(item) for item in items))
