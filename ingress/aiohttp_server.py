"""The one place the ingress relies on aiohttp's private server internals (for
`ingress.edge`, whose request-line repair lets Java's HttpURLConnection and the providers
that send raw spaces and raw UTF-8 in a query string through; docs/benchmarks.md,
"Private library internals").

- `ParsingHandler.parse` feeds bytes to a connection's parser and returns what it made of
  them: `RequestHandler.data_received` appends each parsed request to `_messages` (a
  deque of (message, payload)) and counts it in `_request_count`; a request the parser
  refuses is there as an `_ErrInfo` with `message` and `exc`.
- `ProtocolRunner` is `web.AppRunner` serving each connection through a handler class of
  ours: `AppRunner._make_server` builds the `web.Server`, whose `__call__` builds each
  connection's `RequestHandler` from `_loop` and `_kwargs`.

aiohttp is pinned in constraints.txt; tests/unit/test_aiohttp_server.py fails, naming the
installed aiohttp, when any of this changes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import StreamReader


@dataclass(frozen=True, slots=True)
class Refused:
    """A request the parser refused: its error, where its body would be."""

    message: str
    exc: BaseException


Parsed = tuple[RawRequestMessage | Refused, StreamReader]


class ParsingHandler(web.RequestHandler):
    """aiohttp's protocol of one connection, whose parser a subclass feeds itself."""

    def parse(self, data: bytes) -> Sequence[Parsed]:
        """Feed `data` to the parser (all of it, to aiohttp's `data_received`); the
        requests it completed with it, in order."""
        before = self._request_count
        super().data_received(data)
        count = self._request_count - before
        if not count:
            return ()
        new = [self._messages[-1]] if count == 1 else list(self._messages)[-count:]
        return [
            (message, payload)
            if isinstance(message, RawRequestMessage)
            else (Refused(str(message.message), message.exc), payload)
            for message, payload in new
        ]


class ProtocolRunner(web.AppRunner):
    """`web.AppRunner` whose server builds each connection's protocol with `protocol`
    (called as aiohttp calls `RequestHandler`). aiohttp builds its `Server` from the app's
    private handler and request factory; rather than copy that, the server it built becomes
    a `_ProtocolServer`, which differs only in the protocol it creates."""

    def __init__(
        self, app: web.Application, protocol: Callable[..., web.RequestHandler], **kwargs: Any
    ) -> None:
        super().__init__(app, **kwargs)
        self._protocol = protocol

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _ProtocolServer
        assert isinstance(server, _ProtocolServer)
        server.protocol = self._protocol
        return server


class _ProtocolServer(web.Server):
    protocol: Callable[..., web.RequestHandler]

    def __call__(self) -> web.RequestHandler:
        return self.protocol(self, loop=self._loop, **self._kwargs)
