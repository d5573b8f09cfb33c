"""Fails loudly, naming the installed aiohttp, when the server internals that
`ingress.aiohttp_server` relies on change: aiohttp's own runner, server and protocol, fed
bytes directly, no socket."""

from __future__ import annotations

import collections
import inspect
from collections.abc import AsyncIterator
from importlib.metadata import version
from typing import Any

import pytest
from aiohttp import http_exceptions, web
from aiohttp.http_parser import RawRequestMessage

from ingress.aiohttp_server import ParsingHandler, ProtocolRunner, Refused


def changed(what: str) -> str:
    return (
        f"aiohttp {version('aiohttp')} changed {what}: ingress/aiohttp_server.py relies on "
        'it; see docs/benchmarks.md, "Private library internals"'
    )


class Built:
    """A protocol factory that keeps what aiohttp's server called it with."""

    def __init__(self) -> None:
        self.kwargs: dict[str, Any] = {}

    def __call__(self, manager: web.Server, **kwargs: Any) -> ParsingHandler:
        self.kwargs = kwargs
        return ParsingHandler(manager, **kwargs)


@pytest.fixture
async def built() -> Built:
    return Built()


@pytest.fixture
async def runner(built: Built) -> AsyncIterator[ProtocolRunner]:
    started = ProtocolRunner(web.Application(), built, keepalive_timeout=7)
    await started.setup()
    yield started
    await started.cleanup()


def connection(runner: ProtocolRunner) -> ParsingHandler:
    assert runner.server is not None, changed("AppRunner.setup (no server)")
    protocol = runner.server()
    assert isinstance(protocol, ParsingHandler), changed("AppRunner._make_server or Server")
    return protocol


async def answer(request: web.BaseRequest) -> web.StreamResponse:
    return web.Response()


async def test_the_runner_and_the_server_keep_what_the_protocol_runner_replaces() -> None:
    make_server = getattr(web.AppRunner, "_make_server", None)
    assert inspect.iscoroutinefunction(make_server), changed("AppRunner._make_server")
    assert list(inspect.signature(make_server).parameters) == ["self"], changed(
        "the signature of AppRunner._make_server"
    )
    server = web.Server(answer, keepalive_timeout=7)
    assert server._kwargs == {"keepalive_timeout": 7}, changed("Server._kwargs")
    assert server._loop is not None, changed("Server._loop")


async def test_every_connection_is_built_by_our_protocol_with_the_runners_options(
    runner: ProtocolRunner, built: Built
) -> None:
    connection(runner)
    assert built.kwargs.get("keepalive_timeout") == 7, changed("Server.__call__ (its kwargs)")
    assert "loop" in built.kwargs, changed("Server.__call__ (its loop)")


async def test_a_connection_counts_and_keeps_what_its_parser_made(
    runner: ProtocolRunner,
) -> None:
    protocol = connection(runner)
    assert protocol._request_count == 0, changed("RequestHandler._request_count")
    assert isinstance(protocol._messages, collections.deque), changed("RequestHandler._messages")
    assert protocol.parse(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HT") != ()
    parsed = protocol.parse(b"TP/1.1\r\nHost: x\r\n\r\n")
    assert [type(message) for message, _ in parsed] == [RawRequestMessage], changed(
        "RequestHandler.data_received (what it appends to _messages)"
    )
    assert parsed[0][0].path == "/b"  # type: ignore[union-attr]
    assert protocol.parse(b"GET /c HTTP/1.1\r\n") == ()


async def test_a_refused_request_comes_back_with_its_error(runner: ProtocolRunner) -> None:
    protocol = connection(runner)
    (refused, _), *rest = protocol.parse(b"GET /a HTTP/1.1\r\nno colon here\r\n\r\n")
    assert not rest
    assert isinstance(refused, Refused)
    assert isinstance(refused.exc, http_exceptions.HttpProcessingError), changed(
        "RequestHandler.data_received (_ErrInfo.exc)"
    )
    assert refused.message == refused.exc.message, changed("_ErrInfo.message")
