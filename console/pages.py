"""The console's pages: login, overview, search, a record, rejected callbacks (replay) and
dead letters (requeue). Reading is for every user; acting is for operators."""

from __future__ import annotations

import asyncio
import re
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from cdrflow.logs import get_logger
from cdrflow.operations.dead_letters import list_dead, printable, requeue_dead
from cdrflow.operations.history import load_history
from cdrflow.operations.pipeline_status import (
    PipelineStatus,
    outbox_limit,
    read_database,
    read_queues,
)
from cdrflow.operations.replay_rejected import ReplaySelection, replay, select_requests, summarize
from console import queries
from console.console_app import (
    CONSOLE,
    FORM,
    current_user,
    render,
    require_operator,
    start_session,
    viewer_of,
)
from console.masking import hide_secrets
from console.session import Session
from console.users import authenticate
from schemas.jsoncodec import dumps, loads

log = get_logger("cdrflow.console")

DEAD_SHOWN = 50
REPLAY_LIMIT = 1000


def add_routes(app: web.Application) -> None:
    app.router.add_get("/login", login_page)
    app.router.add_post("/login", login)
    app.router.add_post("/logout", logout)
    app.router.add_get("/", overview)
    app.router.add_get("/search", search)
    app.router.add_get("/records/{record_id}", record)
    app.router.add_get("/rejected", rejected)
    app.router.add_get("/rejected/preview", replay_preview)
    app.router.add_post("/rejected/replay", replay_selection)
    app.router.add_get("/dead", dead)
    app.router.add_post("/dead/requeue", requeue)


# --- login ---------------------------------------------------------------------------


def _next(target: str) -> str:
    """Only a path of this console: never another site (browsers read `//host` and
    `/\\host` as another site)."""
    return target if re.fullmatch(r"/(?![/\\])[^\s]*", target) else "/"


async def login_page(request: web.Request) -> web.Response:
    return render(request, "login.html", next=_next(request.query.get("next", "/")), error="")


async def login(request: web.Request) -> web.StreamResponse:
    console = request.app[CONSOLE]
    form = request[FORM]
    name, password = str(form.get("name", "")), str(form.get("password", ""))
    target = _next(str(form.get("next", "/")))
    client = request.remote or ""
    if not console.limiter.allowed(client, name):
        console.metrics.logins.labels("limited").inc()
        log.warning("console_login_limited", user=name, client=client)
        error = "Too many failed attempts: wait a few minutes."
        return render(request, "login.html", status=429, next=target, error=error)
    user = await asyncio.to_thread(authenticate, console.users, name, password)
    if user is None:
        console.limiter.failed(client, name)
        console.metrics.logins.labels("refused").inc()
        log.warning("console_login_refused", user=name, client=client)
        error = "Wrong name or password."
        return render(request, "login.html", status=401, next=target, error=error)
    console.limiter.succeeded(client, name)
    console.metrics.logins.labels("ok").inc()
    log.info("console_login", user=user.name, role=user.role, client=client)
    start_session(request, Session.fresh(user.name))  # a new CSRF token too
    raise web.HTTPFound(target)


async def logout(request: web.Request) -> web.StreamResponse:
    start_session(request, Session.fresh())
    raise web.HTTPFound("/login")


# --- reading ---------------------------------------------------------------------------


async def overview(request: web.Request) -> web.Response:
    console = request.app[CONSOLE]
    status = PipelineStatus()
    await read_queues(console.settings, status)
    async with console.browse() as connection:
        await read_database(connection, status, console.sources)
        sources = await queries.overview(connection, console.sources)
    last = {s.name: s.last_callback for s in status.sources}
    problems = status.problems(outbox_limit(console.settings))
    return render(
        request,
        "overview.html",
        status=200,
        pipeline=status,
        sources=sources,
        last=last,
        problems=problems,
    )


def _time_filter(text: str) -> datetime | None:
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise queries.SearchError(f"{text!r} is not a time (2026-01-31T08:00, in UTC)") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _search_of(request: web.Request) -> queries.Search:
    q = request.query
    after = q.get("after", "")
    return queries.Search(
        source=q.get("source", "").strip(),
        external_id=q.get("external_id", "").strip(),
        number=q.get("number", "").strip(),
        record_id=q.get("record_id", "").strip(),
        since=_time_filter(q.get("since", "").strip()),
        until=_time_filter(q.get("until", "").strip()),
        status=q.get("status", "").strip(),
        after=queries.Cursor.decode(after) if after else None,
        known_sources=tuple(request.app[CONSOLE].sources),
    )


async def search(request: web.Request) -> web.Response:
    console = request.app[CONSOLE]
    error, rows, more = "", [], None
    try:
        query = _search_of(request)
        async with console.browse() as connection:
            rows = await queries.search(connection, query)
    except queries.SearchError as exc:
        error = str(exc)
    if len(rows) > queries.PAGE:
        rows = rows[: queries.PAGE]
        last = rows[-1]
        params = {k: v for k, v in request.query.items() if k != "after"}
        params["after"] = queries.Cursor(last["received_at"], last["record_id"]).encode()
        more = str(request.rel_url.with_query(params))
    return render(
        request,
        "search.html",
        rows=rows,
        more=more,
        error=error,
        q=request.query,
        sources=console.sources,
        statuses=queries.STATUSES,
    )


async def record(request: web.Request) -> web.Response:
    console = request.app[CONSOLE]
    try:
        record_id = uuid.UUID(request.match_info["record_id"])
    except ValueError:
        raise web.HTTPNotFound(text="no such record") from None
    async with console.browse() as connection:
        row = await queries.record(connection, record_id)
        if row is None:
            raise web.HTTPNotFound(text="no such record")
        history = await load_history(connection, record_id)
    show = viewer_of(request)
    columns = {k: _json_column(v) for k, v in dict(row).items() if k != "content_hash"}
    columns.pop("raw")
    payload = columns.pop("payload")
    fields = show.record(columns)
    changes = [
        (
            revision,
            [
                (
                    column,
                    show.record({column: before})[column],
                    show.record({column: after})[column],
                )
                for column, (before, after) in revision.changed.items()
            ],
        )
        for revision in (history.revisions if history else [])
    ]
    raw = show.text(
        orjson.dumps(hide_secrets(payload), option=orjson.OPT_INDENT_2, default=str).decode()
    )
    return render(
        request,
        "record.html",
        fields=fields,
        changes=changes,
        deliveries=history.deliveries if history else [],
        discrepancies=history.discrepancies if history else [],
        raw=raw,
        routing_key=f"{row['tenant']}.{row['provider']}.{row['event']}.{row['status']}",
        message_id=f"{row['record_id']}:{row['revision']}",
        origin=dict(row).get("origin"),
        as_text=_as_text,
    )


def _json_column(value: Any) -> Any:
    """A jsonb column, which asyncpg hands over as its text."""
    return loads(value) if isinstance(value, str) and value[:1] in ("{", "[") else value


def _as_text(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, (dict, list, tuple)):
        return dumps(value).decode()
    return str(value)


# --- rejected callbacks and replay -------------------------------------------------------


def _selection(values: Any, limit: int = REPLAY_LIMIT) -> ReplaySelection:
    source = str(values.get("source", "")).strip() or None
    reason = str(values.get("reason", "")).strip() or None
    return ReplaySelection(source=source, reason=reason, limit=limit)


async def rejected(request: web.Request) -> web.Response:
    console = request.app[CONSOLE]
    selection = _selection(request.query)
    async with console.browse() as connection:
        groups = await summarize(connection, ReplaySelection())
        rows = await queries.rejected(connection, selection.source, selection.reason)
    show = viewer_of(request)
    shown = [(row, show.text(printable(bytes(row["body"]), 300))) for row in rows]
    return render(request, "rejected.html", groups=groups, rows=shown, selection=selection)


async def replay_preview(request: web.Request) -> web.Response:
    """What a replay of the selection would send: a dry run, nothing sent."""
    require_operator(request)
    console = request.app[CONSOLE]
    selection = _selection(request.query)
    async with console.browse() as connection:
        envelopes = await select_requests(connection, selection)
    shown = [(e, viewer_of(request).text(printable(e.body, 120))) for e in envelopes]
    return render(request, "replay_preview.html", selection=selection, envelopes=shown)


async def replay_selection(request: web.Request) -> web.Response:
    user = require_operator(request)
    console = request.app[CONSOLE]
    selection = _selection(request[FORM])
    sent = await replay(console.settings, selection)
    console.metrics.actions.labels("replay").inc()
    log.info(
        "console_replay",
        user=user.name,
        requests=sent,
        source=selection.source,
        reason=selection.reason,
    )
    return render(request, "done.html", what=f"{sent} request(s) sent again to the workers")


# --- dead letters ----------------------------------------------------------------------


async def dead(request: web.Request) -> web.Response:
    console = request.app[CONSOLE]
    try:
        listing = await list_dead(console.settings, DEAD_SHOWN)
    except Exception as exc:  # whatever ails the broker, the page says so
        error = f"RabbitMQ did not answer: {type(exc).__name__}"
        return render(request, "dead.html", status=503, letters=[], depth=0, error=error)
    show = viewer_of(request)
    letters = [(letter, show.text(letter.first_bytes)) for letter in listing.letters]
    return render(request, "dead.html", letters=letters, depth=listing.depth, error="")


async def requeue(request: web.Request) -> web.Response:
    user = require_operator(request)
    console = request.app[CONSOLE]
    try:
        limit = max(0, int(str(request[FORM].get("limit", "0"))))
    except ValueError:
        raise web.HTTPBadRequest(text="limit: a whole number") from None
    report = await requeue_dead(console.settings, limit)
    console.metrics.actions.labels("requeue").inc()
    log.info("console_requeue", user=user.name, messages=len(report.moved), error=report.error)
    what = f"{len(report.moved)} message(s) ({report.callbacks} callback(s)) moved back"
    if report.left:
        what += f"; {len(report.left)} unreadable message(s) left parked"
    if report.error:
        what += f"; stopped: {report.error}"
    return render(request, "done.html", what=what)


__all__ = ["add_routes", "current_user"]
