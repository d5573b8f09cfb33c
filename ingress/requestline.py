"""Request lines as real clients send them, made into lines HTTP parsers accept.

Java's `HttpURLConnection` and the NXCloud DR document put the query string on the wire as
given: raw spaces, raw UTF-8 (`result=成功接通`, `start_time=2020-12-01 00:00:00`). aiohttp,
like nginx, answers such a line 400 before any routing, and a DR pushed once is lost.

`repair_request_line` percent-encodes the bytes a request-target may not hold, so the line
parses and the query keeps exactly the bytes the sender meant (`%E6%88%90` decodes back
to UTF-8, `%20` to a space). Only a line of the shape `METHOD SP target SP HTTP/1.x` is
touched, and the last ` HTTP/1.` decides where the target ends, which is how spaces inside
the target are recovered. CR and LF inside a line are never repaired: a bare LF or CR is
how requests are smuggled, and the parser must keep refusing them."""

from __future__ import annotations

import re

# Anything but visible ASCII: the bytes llhttp and aiohttp's Python parser refuse in a
# target (0x00-0x20 and 0x7f-0xff; measured in tests/unit/test_requestline.py).
_NOT_IN_TARGET = re.compile(rb"[^\x21-\x7e]")
_SHAPE = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+) (.+) (HTTP/1\.[01])", re.DOTALL)
_LINE_BREAKS = re.compile(rb"[\r\n]")


def repair_request_line(line: bytes) -> bytes:
    """The line (without its CRLF) with its target percent-encoded where HTTP forbids the
    bytes; the line itself when it needs no repair or is not a request line we can read."""
    method_end = line.find(b" ")
    version_start = line.rfind(b" HTTP/1.")
    if method_end < 0 or version_start <= method_end:
        return line
    if _NOT_IN_TARGET.search(line, method_end + 1, version_start) is None:
        return line  # the common case: one scan in C, no copy
    match = _SHAPE.fullmatch(line)
    if match is None or _LINE_BREAKS.search(line):
        return line
    method, target, version = match.groups()
    return b"%s %s %s" % (method, _NOT_IN_TARGET.sub(_percent_encode, target), version)


def _percent_encode(match: re.Match[bytes]) -> bytes:
    return b"%%%02X" % match[0][0]
