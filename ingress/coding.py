"""A body's `Content-Encoding`, undone by the ingress itself (aiohttp's own decompression is
off, see `ingress.ingress_server.runner_options`).

aiohttp decodes a single gzip, deflate or br layer, and nothing else: it accepts a gzip
stream cut short (no trailer, or the 10-byte header alone) as the bytes it got that far,
and passes `gzip, gzip` (or `x-gzip`) through undecoded. Here every layer listed is undone,
the last listed first, each bounded by `CDRFLOW_MAX_BODY_BYTES`, and a stream that does not
end where a complete one must (truncated, bad CRC, trailing garbage) is refused:

- every coding listed is gzip, x-gzip, deflate or identity: the body is decoded, and the
  envelope holds the decoded bytes (no `content-encoding`);
- one of them is br or zstd, which the ingress does not decode: refused (400);
- a coding the ingress does not know (`compress`, or a charset a careless client puts
  there, `UTF-8`): the body is kept as sent and the envelope keeps the header, as for any
  body that may not parse (the worker keeps it in `rejected_callbacks` if it does not).

A `Transfer-Encoding` may list codings before `chunked` (`gzip, chunked`): aiohttp undoes
the chunking alone and would pass the gzip stream on as the body. Those codings are undone
first (they were applied last), by the same rules, except that one the ingress does not
know is refused (400): nothing in the envelope could say the body still carries it."""

from __future__ import annotations

import zlib
from collections.abc import Iterable

from ingress.body import TooLarge
from ingress.inflight import Hold

_DECODED = {"gzip": zlib.MAX_WBITS | 16, "x-gzip": zlib.MAX_WBITS | 16, "deflate": zlib.MAX_WBITS}
_REFUSED = frozenset({"br", "zstd"})


class BadCoding(Exception):
    """A body that does not decode as its `Content-Encoding` says."""


def codings_of(values: Iterable[str]) -> list[str]:
    """The codings listed by every `Content-Encoding` header, in the order applied."""
    return [c.strip().lower() for value in values for c in value.split(",") if c.strip()]


def decodes(codings: list[str]) -> bool:
    """Whether the ingress undoes these codings (or refuses the body): see the module doc."""
    return bool(codings) and all(c in _DECODED or c in _REFUSED or c == "identity" for c in codings)


def undo_transfer_codings(body: bytes, values: Iterable[str], limit: int, hold: Hold) -> bytes:
    """`body` with the `Transfer-Encoding` codings (`values`) other than chunked undone."""
    codings = [c for c in codings_of(values) if c != "chunked"]
    for coding in codings:
        if coding not in _DECODED and coding != "identity":
            raise BadCoding(f"transfer-coding {coding[:40]!r} is not decoded here")
    return decode(body, codings, limit, hold)


def decode(body: bytes, codings: list[str], limit: int, hold: Hold) -> bytes:
    """`body` with every coding undone, the last applied first; each layer's output is held
    against the in-flight bound and may not pass `limit` (`TooLarge`)."""
    if not body:
        return body  # no content to decode, as aiohttp has it
    for coding in reversed(codings):
        if coding == "identity":
            continue
        if coding in _REFUSED:
            raise BadCoding(f"content-encoding {coding} is not decoded here")
        body = _inflate(body, coding, limit)
        hold.take(len(body))
    return body


def _inflate(data: bytes, coding: str, limit: int) -> bytes:
    if not data:  # an outer layer held nothing: no stream of this one
        raise BadCoding(f"empty {coding} stream")
    wbits = _DECODED[coding]
    if coding == "deflate" and data[0] & 0x0F != 8:
        wbits = -zlib.MAX_WBITS  # raw deflate, without the zlib header: as aiohttp reads it
    out: list[bytes] = []
    size = 0
    while True:  # a gzip body may be several members one after the other (RFC 1952)
        stream = zlib.decompressobj(wbits)
        try:
            chunk = stream.decompress(data, limit + 1 - size)
        except zlib.error as exc:
            raise BadCoding(f"not valid {coding}: {exc}") from exc
        size += len(chunk)
        if size > limit or stream.unconsumed_tail:
            raise TooLarge
        out.append(chunk)
        if not stream.eof:
            raise BadCoding(f"{coding} stream is cut short")
        data = stream.unused_data
        if not data or wbits != _DECODED["gzip"]:
            break
    if data:
        raise BadCoding(f"bytes after the end of the {coding} stream")
    return b"".join(out)
