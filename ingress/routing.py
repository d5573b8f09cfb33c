"""Routing a callback without aiohttp's general walk.

aiohttp's router finds `/v1/callbacks/{source}/{token}` by looking up the path and each of
its parents in an index, then matching the resource's regex: about 4 µs for the request
the ingress serves most. `CallbackRouter` matches that one route by string operations
first and leaves every other request to aiohttp. It answers exactly as aiohttp would:
each part is what `[^{}/]+` allows, and a path with `%`, `{` or `}` (which aiohttp
percent-decodes or refuses) is left to aiohttp; no other route of the ingress lies under
the callback prefix, so none could have matched first."""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler

CALLBACK_PATH = "/v1/callbacks/{source}/{token}"
_PREFIX = "/v1/callbacks/"


class CallbackRouter(web.UrlDispatcher):
    callback: web.AbstractRoute | None = None

    async def resolve(self, request: web.Request) -> web.UrlMappingMatchInfo:
        route = self.callback
        path = request.rel_url.path_safe
        if route is not None and path.startswith(_PREFIX):
            parts = callback_parts(path)
            if parts is not None:
                return web.UrlMappingMatchInfo(parts, route)
        return await super().resolve(request)


def callback_parts(path: str) -> dict[str, str] | None:
    """{source, token} of a plain callback path; None for anything else (aiohttp decides)."""
    if "%" in path or "{" in path or "}" in path:
        return None
    source, _, token = path[len(_PREFIX) :].partition("/")
    if not source or not token or "/" in token:
        return None
    return {"source": source, "token": token}


def add_callback_route(app: web.Application, handler: Handler) -> None:
    """Route CALLBACK_PATH, every method, to `handler` through a `CallbackRouter`. aiohttp
    takes a router of our own only through a deprecated argument, so the app's router
    becomes one: the class adds a method and one attribute, nothing aiohttp sets up
    (pinned by tests/unit/test_routing.py)."""
    router = app.router
    router.__class__ = CallbackRouter
    assert isinstance(router, CallbackRouter)
    router.callback = router.add_route("*", CALLBACK_PATH, handler)
