"""The console's web application: its state, the middleware every request passes (session,
login, CSRF, security headers) and what its pages (`console.pages`) share."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import quote

import asyncpg
import jinja2
from aiohttp import web
from aiohttp.web_request import FileField
from multidict import MultiDictProxy
from prometheus_client import CollectorRegistry, Counter

from cdrflow.health import process_registry
from cdrflow.logs import get_logger
from cdrflow.settings import Settings
from console.masking import Viewer
from console.session import COOKIE, LoginLimiter, Session, SessionSigner
from console.users import User

log = get_logger("cdrflow.console")

# Reached without a login: the login page itself, and the probes and metrics, which show
# nothing of any record (and which a NetworkPolicy keeps to the cluster).
PUBLIC = frozenset({"/login", "/healthz", "/readyz", "/metrics"})
SECURITY_HEADERS = {
    # No script at all, no framing, nothing from elsewhere; the one stylesheet is inline.
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; form-action 'self';"
        " frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ConsoleMetrics:
    def __init__(self) -> None:
        self.registry: CollectorRegistry = process_registry()
        self.logins = Counter(
            "cdrflow_console_logins_total",
            "Login attempts by outcome (ok, refused, limited)",
            ["outcome"],
            registry=self.registry,
        )
        self.actions = Counter(
            "cdrflow_console_actions_total",
            "Replays and requeues done from the console",
            ["action"],
            registry=self.registry,
        )
        self.forbidden = Counter(
            "cdrflow_console_forbidden_total",
            "Requests refused with 403 (no CSRF token, or a viewer acting)",
            registry=self.registry,
        )


@dataclass
class Console:
    settings: Settings
    users: dict[str, User]
    signer: SessionSigner
    sources: list[str]
    templates: jinja2.Environment
    limiter: LoginLimiter = field(default_factory=LoginLimiter)
    metrics: ConsoleMetrics = field(default_factory=ConsoleMetrics)
    pool: asyncpg.Pool | None = None

    @asynccontextmanager
    async def browse(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection for reading (the read-only role, when one is set)."""
        assert self.pool is not None
        async with self.pool.acquire() as proxy:
            # The pool's proxy forwards every call to the connection it holds.
            yield cast(asyncpg.Connection, proxy)


CONSOLE = web.AppKey("console", Console)
SESSION = web.RequestKey("session", Session)
NEW_SESSION = web.RequestKey("new_session", bool)
SET_SESSION: web.RequestKey[Session | None] = web.RequestKey("set_session")
USER: web.RequestKey[User | None] = web.RequestKey("user")
FORM: web.RequestKey[MultiDictProxy[str | bytes | bytearray | FileField]] = web.RequestKey("form")


def templates() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("console", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )


async def database_ctx(app: web.Application) -> AsyncIterator[None]:
    console = app[CONSOLE]
    settings = console.settings
    console.pool = await asyncpg.create_pool(
        settings.console_database_url or settings.database_url,
        min_size=1,
        max_size=4,
        # A search's plan depends on its values: a number prefix that matches 100 rows and
        # one that matches millions want different plans, and a generic plan (asyncpg
        # prepares every statement) picked a scan of the whole table for the first kind.
        # Planning costs about a millisecond.
        server_settings={"plan_cache_mode": "force_custom_plan"},
    )
    try:
        yield
    finally:
        await console.pool.close()
        console.pool = None


def current_user(request: web.Request) -> User | None:
    return request.get(USER)


def viewer_of(request: web.Request) -> Viewer:
    user = current_user(request)
    return Viewer(full_numbers=user is not None and user.can_act)


def render(request: web.Request, template: str, status: int = 200, **context: Any) -> web.Response:
    console = request.app[CONSOLE]
    session = request[SESSION]
    page = console.templates.get_template(template).render(
        user=current_user(request),
        csrf=session.csrf,
        show=viewer_of(request),
        path=request.path,
        **context,
    )
    return web.Response(text=page, status=status, content_type="text/html", charset="utf-8")


def forbidden(request: web.Request, why: str) -> web.HTTPForbidden:
    request.app[CONSOLE].metrics.forbidden.inc()
    user = current_user(request)
    log.warning("console_forbidden", user=user.name if user else None, path=request.path, why=why)
    page = render(request, "forbidden.html", status=403, why=why)
    return web.HTTPForbidden(text=page.text, content_type="text/html")


def require_operator(request: web.Request) -> User:
    user = current_user(request)
    if user is None or not user.can_act:
        raise forbidden(request, "only an operator may do this")
    return user


@web.middleware
async def session_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    console = request.app[CONSOLE]
    cookie = request.cookies.get(COOKIE, "")
    session = console.signer.loads(cookie) if cookie else None
    request[NEW_SESSION] = session is None
    session = session or Session.fresh()
    request[SESSION] = session
    user = console.users.get(session.user) if session.user else None
    request[USER] = user
    try:
        if request.path not in PUBLIC and user is None:
            target = request.path_qs if request.method == "GET" else "/"
            raise web.HTTPFound(f"/login?next={quote(target, safe='/?=&')}")
        if request.method == "POST":
            form = await request.post()
            token = form.get("csrf")
            if not isinstance(token, str) or not session.accepts(token):
                raise forbidden(request, "the form's CSRF token is missing or wrong")
            request[FORM] = form
        response = await handler(request)
    except web.HTTPException as answer:
        _finish(request, answer)
        raise
    _finish(request, response)
    return response


def _finish(request: web.Request, response: web.StreamResponse) -> None:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    replaced = request.get(SET_SESSION)
    if request[NEW_SESSION] or replaced is not None:
        session = replaced or request[SESSION]
        signer = request.app[CONSOLE].signer
        response.set_cookie(
            COOKIE,
            signer.dumps(session),
            max_age=signer.max_age,
            path="/",
            httponly=True,
            samesite="Strict",
            secure=request.secure,
        )


def start_session(request: web.Request, session: Session) -> None:
    """The response carries this session's cookie instead of the request's."""
    request[SET_SESSION] = session
