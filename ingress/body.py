"""Reading a callback's body within the ingress's bounds: the size limit (413), the
in-flight byte bound (503 fast) and the body timeout (408)."""

from __future__ import annotations

import asyncio

from aiohttp import web

from ingress.inflight import Hold, Overloaded


class TooLarge(Exception):
    """The body is over `CDRFLOW_MAX_BODY_BYTES`."""


async def read_body(request: web.Request, limit: int, timeout: float, hold: Hold) -> bytes:
    """The body (decompressed), each chunk counted against the in-flight bound as it
    arrives; a declared length that cannot fit is refused before anything is read.
    A body that is all there already is taken at once (a payload error still raises)."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise TooLarge
    if declared is not None and not hold.has_room_for(declared):
        raise Overloaded
    content = request.content
    if content.is_eof():
        # The whole body has arrived with the headers (the usual callback): no waiting, so
        # no timeout and no chunk loop.
        body = content.read_nowait()
        if len(body) > limit:
            raise TooLarge
        hold.take(len(body))
        return body
    chunks: list[bytes] = []
    size = 0
    async with asyncio.timeout(timeout):
        async for chunk in request.content.iter_any():
            size += len(chunk)
            if size > limit:
                raise TooLarge
            hold.take(len(chunk))
            chunks.append(chunk)
    return b"".join(chunks)
