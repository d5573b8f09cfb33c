"""The HTTP connection layer of the ingress: aiohttp's protocol with two additions.

1. Request lines are repaired before aiohttp's parser sees them (see ingress/requestline.py).
   That needs to know where each request line starts on a keep-alive or pipelined
   connection, so `EdgeRequestHandler` follows the framing: it holds a request's head
   (request line and headers, up to CRLFCRLF), repairs its first line, and feeds the head
   with the Content-Length body bytes that follow, usually in one call, so a well-formed
   request costs one extra scan. After each head it checks that aiohttp's parser saw the
   same request end (one new request, same length, not chunked); if the two ever disagree,
   or the body is chunked, it stops repairing for the rest of that connection and passes
   bytes through untouched. So a repair can never touch a body, and every refusal of the
   parser (Transfer-Encoding with Content-Length, duplicate Content-Length, bare LF,
   obs-fold) still happens, in the parser.
2. Requests the parser refuses are counted (`cdrflow_ingress_unroutable_requests_total`)
   and logged on one line with the client address and the first bytes of the request,
   token scrubbed, instead of aiohttp's ERROR with a traceback.

`edge_runner` is `web.AppRunner` whose server builds `EdgeRequestHandler`s. What this needs
of aiohttp's private internals is in `ingress.aiohttp_server`, and nowhere else."""

from __future__ import annotations

import enum
import functools
import re
from collections.abc import Sequence
from typing import Any

from aiohttp import hdrs, http_exceptions, web
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestPayloadError
from aiohttp.web_request import BaseRequest

from cdrflow.logs import CALLBACK_PATH, REDACTOR, get_logger
from ingress.aiohttp_server import Parsed, ParsingHandler, ProtocolRunner
from ingress.ingress_metrics import IngressMetrics
from ingress.requestline import repair_request_line

log = get_logger("cdrflow.ingress")

FIRST_BYTES_LOGGED = 160
# The request line is scrubbed whole before it is cut to FIRST_BYTES_LOGGED: a token cut
# in two is recognised by neither the path pattern nor the known tokens.
FIRST_BYTES_SCRUBBED = 8 * 1024


MAX_HEAD_HELD = 64 * 1024  # past this without CRLFCRLF the parser decides alone
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*([0-9]+)[ \t]*\r\n", re.IGNORECASE)
# A request line that needs no repair (method, a target of visible ASCII, version, CRLF):
# nearly every request, which then goes to the parser as it came, in one piece.
_CLEAN_LINE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+ [\x21-\x7e]+ HTTP/1\.[01]\r\n")


class _Framing(enum.Enum):
    HEAD = enum.auto()
    BODY = enum.auto()
    PASS_THROUGH = enum.auto()


class EdgeRequestHandler(ParsingHandler):
    def __init__(self, manager: web.Server, *, metrics: IngressMetrics, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._edge_metrics = metrics
        self._framing = _Framing.HEAD
        self._head = bytearray()  # a request head held until its CRLFCRLF arrives
        self._body_left = 0
        self._first_bytes = b""  # of the request being parsed, for the unroutable log line
        self._open_payload: StreamReader | None = None  # body of the last request parsed

    def data_received(self, data: bytes) -> None:
        if not data:
            self._feed(data)  # aiohttp re-parses what it buffered while paused
        while data:
            if self._framing is _Framing.HEAD:
                data = self._take_head(data)
            elif self._framing is _Framing.BODY:
                data = self._take_body(data)
            else:
                self._feed(data)
                data = b""

    def _take_head(self, data: bytes) -> bytes:
        """Feed one request head, repaired, with what follows of its body; return the rest."""
        if self._head:
            self._head += data
            data = bytes(self._head)
            self._head.clear()
        end = data.find(b"\r\n\r\n")
        if end < 0:
            return self._hold_head(data)
        clean = _CLEAN_LINE.match(data)
        if clean is not None:
            self._first_bytes = data[: min(clean.end() - 2, FIRST_BYTES_SCRUBBED)]
            return self._take_framed(data, end + 4)
        line_end = data.find(b"\r\n")
        if line_end == 0:  # an empty line before a request is allowed (RFC 9112, 2.2)
            self._feed(b"\r\n")
            return data[2:]
        line = data[:line_end]
        self._first_bytes = line[:FIRST_BYTES_SCRUBBED]
        repaired = repair_request_line(line)
        return self._take_framed(repaired + data[line_end:], end + 4 + len(repaired) - line_end)

    def _take_framed(self, data: bytes, head_end: int) -> bytes:
        """Feed the request whose head ends at `head_end`, with what follows of its body
        (the whole of `data` at once when it holds no more than this request); return the
        rest."""
        declared = _CONTENT_LENGTH.search(data, 0, head_end)
        length = int(declared[1]) if declared else 0
        request_end = head_end + length
        whole = request_end >= len(data)
        if not self._feed_one(data if whole else data[:request_end], length):
            self._pass_through(b"" if whole else data[request_end:])
            return b""
        if request_end > len(data):
            self._framing, self._body_left = _Framing.BODY, request_end - len(data)
        return b"" if whole else data[request_end:]

    def _feed_one(self, data: bytes, length: int) -> bool:
        """Feed bytes that end one request by our framing, or stop inside its body; whether
        the parser saw exactly that: one new request, of that length, with a plain body."""
        parsed = self.parse(data)
        message, payload = parsed[0] if len(parsed) == 1 else (None, None)
        if not isinstance(message, RawRequestMessage):
            self._took(parsed)
            return False
        self._open_payload = payload
        return (
            not message.chunked
            and not message.upgrade
            and int(message.headers.get(hdrs.CONTENT_LENGTH, "0")) == length
        )

    def _hold_head(self, data: bytes) -> bytes:
        bare_line_feed = data.count(b"\n") != data.count(b"\r\n")
        if bare_line_feed:  # no CRLFCRLF may ever come: let the parser refuse it now
            self._pass_through(data)
            return b""
        if len(data) <= MAX_HEAD_HELD:
            self._head[:] = data
            return b""
        line, crlf, rest = data.partition(b"\r\n")
        self._pass_through(repair_request_line(line) + crlf + rest)
        return b""

    def _take_body(self, data: bytes) -> bytes:
        part, rest = data[: self._body_left], data[self._body_left :]
        self._feed(part)
        self._body_left -= len(part)
        if self._body_left == 0:
            self._framing = _Framing.HEAD
        return rest

    def _feed(self, data: bytes) -> None:
        self._took(self.parse(data))

    def _took(self, parsed: Sequence[Parsed]) -> None:
        """Note the messages the parser gave: the body a bad chunk must fail."""
        for message, payload in parsed:
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
            first_bytes=scrub_token(self._first_bytes)[:FIRST_BYTES_LOGGED],
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
    """Text for a log line, the URL token replaced, whatever the path's spelling, and every
    known token, literal or percent-encoded (the log's redactor does the same, but a
    request that fails to parse is the one place a token may come mangled)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "backslashreplace")
    return REDACTOR.scrub(CALLBACK_PATH.sub(r"\1[redacted]", text))


def edge_runner(app: web.Application, metrics: IngressMetrics, **kwargs: Any) -> web.AppRunner:
    """`web.AppRunner` serving every connection through an `EdgeRequestHandler`."""
    return ProtocolRunner(app, functools.partial(EdgeRequestHandler, metrics=metrics), **kwargs)
