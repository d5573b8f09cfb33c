"""The HTTP limit: a bare aiohttp handler that reads the body and answers 200, run as its
own process like the ingress (`python -m tools.bench.bare PORT`)."""

from __future__ import annotations

import sys

from aiohttp import web


async def callback(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(text="success")


async def ready(request: web.Request) -> web.Response:
    return web.Response(text="ready")


def main(port: int) -> None:
    app = web.Application()
    app.router.add_get("/readyz", ready)
    app.router.add_route("*", "/v1/callbacks/{source}/{token}", callback)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


if __name__ == "__main__":
    main(int(sys.argv[1]))
