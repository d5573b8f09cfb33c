"""The HTTP connection layer of the ingress: aiohttp's protocol with two additions.

1. Request lines are repaired before aiohttp's parser sees them (see ingress/requestline.py).
   That needs to know where each request line starts on a keep-alive or pipelined
   connection, so `EdgeRequestHandler` follows the framing: the request line (held until
   its CRLF arrives), the header block (up to CRLFCRLF), then Content-Length body bytes.
   After each header block it checks that aiohttp's parser saw the same request end; if
   the two ever disagree, or the body is chunked, it stops repairing for the rest of that
   connection and passes bytes through untouched. So a repair can never touch a body, and
   every refusal of the parser (Transfer-Encoding with Content-Length, duplicate
   Content-Length, bare LF, obs-fold) still happens, in the parser.
2. Requests the parser refuses are counted (`cdrflow_ingress_unroutable_requests_total`)
   and logged on one line with the client address and the first bytes of the request,
   token scrubbed, instead of aiohttp's ERROR with a traceback.

`EdgeRunner` is `web.AppRunner` whose server builds `EdgeRequestHandler`s."""

from __future__ import annotations

import enum
import re
from typing import Any

from aiohttp import http_exceptions, web
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler, RequestPayloadError
from aiohttp.web_request import BaseRequest

from cdrflow.logs import get_logger
from ingress.metrics import IngressMetrics
from ingress.requestline import repair_request_line

log = get_logger("cdrflow.ingress")

FIRST_BYTES_LOGGED = 160
_CALLBACK_TOKEN = re.compile(r"(/v1/callbacks/[^/\s?#'\"]+/)[^/\s?#'\"]*")


class _Framing(enum.Enum):
    REQUEST_LINE = enum.auto()
    HEADERS = enum.auto()
    BODY = enum.auto()
    PASS_THROUGH = enum.auto()


class EdgeRequestHandler(RequestHandler):
    def __init__(self, manager: web.Server, *, metrics: IngressMetrics, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._edge_metrics = metrics
        self._framing = _Framing.REQUEST_LINE
        self._line = bytearray()  # request line bytes held until its CRLF
        self._header_tail = b""  # last bytes fed of the header block, to find CRLFCRLF
        self._body_left = 0
        self._first_bytes = b""  # of the request being parsed, for the unroutable log line
        self._open_payload: StreamReader | None = None  # body of the last request parsed

    def data_received(self, data: bytes) -> None:
        if not data:
            self._feed(data)  # aiohttp re-parses what it buffered while paused
        while data:
            data = self._feed_next(data)

    def _feed_next(self, data: bytes) -> bytes:
        """Feed the parser what belongs to the current part of a request; return the rest."""
        if self._framing is _Framing.REQUEST_LINE:
            return self._take_request_line(data)
        if self._framing is _Framing.HEADERS:
            return self._take_headers(data)
        if self._framing is _Framing.BODY:
            return self._take_body(data)
        self._feed(data)
        return b""

    def _take_request_line(self, data: bytes) -> bytes:
        self._line += data
        end = self._line.find(b"\r\n")
        if end < 0:
            if len(self._line) > self.max_line_size:
                self._pass_through(bytes(self._line))  # the parser refuses it: LineTooLong
            return b""
        line, rest = bytes(self._line[:end]), bytes(self._line[end + 2 :])
        self._line.clear()
        if not line:  # an empty line before a request is allowed (RFC 9112, 2.2)
            self._feed(b"\r\n")
            return rest
        self._first_bytes = line[:FIRST_BYTES_LOGGED]
        self._feed(repair_request_line(line) + b"\r\n")
        self._framing = _Framing.HEADERS
        self._header_tail = b"\r\n"
        return rest

    def _take_headers(self, data: bytes) -> bytes:
        seen = self._header_tail + data
        end = seen.find(b"\r\n\r\n")
        if end < 0:
            self._feed(data)
            self._header_tail = seen[-3:]
            return b""
        cut = end + 4 - len(self._header_tail)
        requests_before = self._request_count
        self._feed(data[:cut])
        message = self._messages[-1][0] if self._request_count == requests_before + 1 else None
        if not isinstance(message, RawRequestMessage) or message.chunked or message.upgrade:
            self._pass_through(data[cut:])
            return b""
        self._body_left = int(message.headers.get("Content-Length", "0"))
        self._framing = _Framing.BODY if self._body_left else _Framing.REQUEST_LINE
        return data[cut:]

    def _take_body(self, data: bytes) -> bytes:
        part = data[: self._body_left]
        self._feed(part)
        self._body_left -= len(part)
        if self._body_left == 0:
            self._framing = _Framing.REQUEST_LINE
        return data[len(part) :]

    def _feed(self, data: bytes) -> None:
        requests_before = self._request_count
        super().data_received(data)
        parsed = self._request_count - requests_before
        for message, payload in list(self._messages)[-parsed:] if parsed else ():
            if isinstance(message, RawRequestMessage):
                self._open_payload = payload
            elif self._open_payload is not None and not self._open_payload.is_eof():
                # A bad chunk fails the parser, not the body being read: without this the
                # handler would wait for the rest of the body until its timeout.
                failure = RequestPayloadError(message.message)
                failure.__cause__ = message.exc
                self._open_payload.set_exception(failure)

    def _pass_through(self, data: bytes) -> None:
        self._framing = _Framing.PASS_THROUGH
        if data:
            self._feed(data)

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status != 400 or not isinstance(exc, http_exceptions.HttpProcessingError):
            return super().handle_error(request, status, exc, message)
        reason = unroutable_reason(exc)
        self._edge_metrics.unroutable.labels(reason).inc()
        log.warning(
            "request_unroutable",
            reason=reason,
            client=request.remote or "",
            error=scrub_token(str(exc.message))[:300],  # it may quote the request line
            first_bytes=scrub_token(self._first_bytes),
        )
        response = web.Response(status=400, text="bad request")
        response.force_close()
        return response


def unroutable_reason(exc: BaseException) -> str:
    """The reason label of a request the parser refused before its body."""
    if isinstance(exc, http_exceptions.LineTooLong):
        return "line_too_long"
    if isinstance(exc, http_exceptions.BadStatusLine | http_exceptions.InvalidURLError):
        return "bad_request_line"
    return "bad_headers"


def body_error_reason(exc: BaseException) -> str:
    """The reason label of a body aiohttp could not read (`exc`: the parser's error)."""
    if isinstance(exc, http_exceptions.ContentEncodingError | http_exceptions.DecompressSizeError):
        return "bad_content_encoding"
    if isinstance(exc, http_exceptions.ContentLengthError):
        return "incomplete_body"
    return "bad_chunk"  # the only other framing a body has


def scrub_token(text: str | bytes) -> str:
    """Text for a log line, the URL token replaced (the log's redactor would catch it too,
    but a request that fails to parse is the one place a token may come mangled)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "backslashreplace")
    return _CALLBACK_TOKEN.sub(r"\1[redacted]", text)


class EdgeServer(web.Server):
    metrics: IngressMetrics

    def __call__(self) -> RequestHandler:
        return EdgeRequestHandler(self, metrics=self.metrics, loop=self._loop, **self._kwargs)


class EdgeRunner(web.AppRunner):
    """`web.AppRunner` serving through `EdgeRequestHandler`. aiohttp builds its `Server`
    from the app's private handler and request factory; rather than copy that, the server
    it built becomes an `EdgeServer`, which differs only in the protocol it creates
    (pinned by tests/integration/test_edge.py)."""

    def __init__(self, app: web.Application, metrics: IngressMetrics, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._edge_metrics = metrics

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = EdgeServer
        assert isinstance(server, EdgeServer)
        server.metrics = self._edge_metrics
        return server
