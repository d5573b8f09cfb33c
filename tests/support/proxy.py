"""A TCP proxy a test can cut and restore: the broker or the database "goes away" for the
code under test while the real server keeps running for everyone else."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

from cdrflow.settings import Settings


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._pumps: set[asyncio.Task[None]] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._open = False  # accepting: false from `cut` until `restore`

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        self._open = True

    async def cut(self) -> None:
        """Refuse new connections and drop every open one."""
        self._open = False
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def restore(self) -> None:
        await self.start()

    def stall(self) -> None:
        """Hold every byte in both directions, keeping the connections open: the peer
        neither answers nor looks gone (a hung broker, a black-holed network)."""
        self._flowing.clear()

    def resume(self) -> None:
        """Pass on what was held, then flow again."""
        self._flowing.set()

    async def close(self) -> None:
        await self.cut()
        for task in list(self._pumps):
            task.cancel()
        for task in list(self._pumps):
            with contextlib.suppress(BaseException):
                await task

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        if not self._open:  # accepted before a cut that came while the upstream connected
            writer.transport.abort()
            up_writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pump(source, sink))
            self._pumps.add(task)
            task.add_done_callback(self._pumps.discard)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._writers.discard(writer)
            writer.transport.abort()


def database_behind_proxy(
    settings: Settings, **changes: Any
) -> contextlib.AbstractAsyncContextManager[tuple[TcpProxy, Settings]]:
    """Settings whose database connections go through a proxy the test can cut."""
    return _behind_proxy(settings.database_url, "database_url", settings, changes)


def broker_behind_proxy(
    settings: Settings, **changes: Any
) -> contextlib.AbstractAsyncContextManager[tuple[TcpProxy, Settings]]:
    """Settings whose RabbitMQ connections go through a proxy the test can cut."""
    return _behind_proxy(settings.amqp_url, "amqp_url", settings, changes)


@contextlib.asynccontextmanager
async def _behind_proxy(
    url: str, field: str, settings: Settings, changes: dict[str, Any]
) -> AsyncIterator[tuple[TcpProxy, Settings]]:
    target = urlsplit(url)
    assert target.hostname is not None, url
    assert target.port is not None, url
    proxy = TcpProxy(target.hostname, target.port)
    await proxy.start()
    via_proxy = url.replace(f":{target.port}/", f":{proxy.port}/", 1)
    try:
        yield proxy, settings.with_(**{field: via_proxy, **changes})
    finally:
        await proxy.close()
