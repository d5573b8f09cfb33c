"""The callback router's shortcut resolves every path as aiohttp's own router does."""

from __future__ import annotations

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from cdrflow.settings import Settings
from ingress.ingress_app import create_app
from ingress.routing import CALLBACK_PATH, CallbackRouter, add_callback_route
from tests.support.sources import load_test_sources

PATHS = [
    "/v1/callbacks/nx-cc/tok-123",
    "/v1/callbacks/nx-cc/tok-123?a=1&b=2",
    "/v1/callbacks/nx-cc/tok%2F123",
    "/v1/callbacks/nx%25cc/tok",
    "/v1/callbacks/nx-cc/tok/more",
    "/v1/callbacks/nx-cc/",
    "/v1/callbacks/nx-cc",
    "/v1/callbacks//tok",
    "/v1/callbacks/",
    "/v1/callbacks/a{b}/tok",
    "/v1/callbacks/nx-cc/t%7Bk",
    "/v1/callbacks/成功/接通",
    "/v1/callback/nx-cc/tok",
    "/v1/callbacksx/nx-cc/tok",
    "/healthz",
    "/readyz",
    "/metrics",
    "/",
    "/anything/else",
]


async def handler(request: web.Request) -> web.Response:
    return web.Response()


def apps() -> tuple[web.Application, web.Application]:
    """The same routes, one app routing callbacks through the shortcut."""
    plain, ours = web.Application(), web.Application()
    plain.router.add_route("*", CALLBACK_PATH, handler)
    add_callback_route(ours, handler)
    for app in (plain, ours):
        app.router.add_get("/healthz", handler)
        app.router.add_route("*", "/{path:.*}", handler)
    return plain, ours


@pytest.mark.parametrize("method", ["GET", "POST", "PUT"])
@pytest.mark.parametrize("path", PATHS)
async def test_the_shortcut_resolves_as_aiohttp_does(path: str, method: str) -> None:
    plain, ours = apps()
    expected = await plain.router.resolve(make_mocked_request(method, path, app=plain))
    got = await ours.router.resolve(make_mocked_request(method, path, app=ours))
    assert dict(got) == dict(expected)
    assert type(got.http_exception) is type(expected.http_exception)
    assert (got.route.resource and got.route.resource.canonical) == (
        expected.route.resource and expected.route.resource.canonical
    )


def test_the_ingress_routes_callbacks_through_the_shortcut() -> None:
    """Pins what the class change relies on: aiohttp's router is a plain UrlDispatcher."""
    app = create_app(Settings(amqp_url="amqp://unused"), load_test_sources())
    assert type(app.router) is CallbackRouter
    assert app.router.callback is not None
    assert app.router.callback.resource is not None
    assert app.router.callback.resource.canonical == CALLBACK_PATH
