"""The ingress application: `create_app(settings, sources)`.

    * /v1/callbacks/{source}/{token}          a provider's callback (405 after the token check)
    GET /healthz                              alive
    GET /readyz                               callbacks can be made durable now
    GET /metrics                              Prometheus text format

The ingress never parses a body beyond what a signature check needs, and never talks to
PostgreSQL: it wraps the request in an envelope and answers once that is durable."""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from aiohttp import hdrs, web
from aiohttp.web_protocol import RequestPayloadError
from prometheus_client import Counter

from cdrflow.amqp import BrokerLink
from cdrflow.health import add_health_routes
from cdrflow.logs import REDACTOR, get_logger
from cdrflow.settings import Settings
from ingress.body import TooLarge, read_body
from ingress.client_address import client_address
from ingress.coding import BadCoding, codings_of, decode, decodes, undo_transfer_codings
from ingress.drainer import start_drainer
from ingress.edge import FIRST_BYTES_LOGGED, body_error_reason, scrub_token
from ingress.inflight import Hold, InflightBytes, Overloaded
from ingress.ingress_metrics import NO_SOURCE, NOT_FOUND, IngressMetrics
from ingress.not_found import NotFoundLog
from ingress.publisher import CoalescingPublisher, NotDurable
from ingress.spool import open_spool
from schemas.envelope import RawEnvelope, stored_headers, uuid7
from schemas.providers import (
    Answer,
    Outcome,
    Provider,
    Registry,
    Unauthenticated,
    default_registry,
)
from schemas.sources import Source, Sources

log = get_logger("cdrflow.ingress")
# Its stdlib logger answers "is debug on?" from a cache; structlog would run its chain.
_debug_log = logging.getLogger("cdrflow.ingress")

_DUMMY_TOKEN = b"0" * 32


@dataclass
class Ingress:
    settings: Settings
    sources: Sources
    registry: Registry
    metrics: IngressMetrics
    inflight: InflightBytes
    publisher: CoalescingPublisher | None = None
    draining: bool = False  # set on SIGTERM: load balancers take us out while we still serve
    not_found: NotFoundLog = field(init=False)

    # Counters by (source, outcome), looked up once, not with labels() on every request.
    _requests: dict[tuple[str, Outcome], Counter] = field(default_factory=dict)
    # A provider's answer depends on the outcome alone: each is made once.
    _answers: dict[tuple[str, Outcome], Answer] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.not_found = NotFoundLog(frozenset(self.sources))

    @property
    def ready(self) -> bool:
        return not self.draining and self.publisher is not None and self.publisher.ready

    def count(self, source: str, outcome: Outcome) -> None:
        counter = self._requests.get((source, outcome))
        if counter is None:
            counter = self.metrics.requests.labels(source, outcome.value)
            self._requests[(source, outcome)] = counter
        counter.inc()

    def answer(self, provider: Provider, outcome: Outcome) -> Answer:
        answer = self._answers.get((provider.name, outcome))
        if answer is None:
            answer = self._answers[(provider.name, outcome)] = provider.answer(outcome)
        return answer


INGRESS = web.AppKey("ingress", Ingress)


def create_app(
    settings: Settings, sources: Sources, registry: Registry | None = None
) -> web.Application:
    app = web.Application(client_max_size=settings.max_body_bytes)
    # The ingress is where tokens arrive, in any spelling: whoever starts it, its log lines
    # are scrubbed of them.
    REDACTOR.add(sources.secrets())
    metrics = IngressMetrics(sources)
    inflight = InflightBytes(settings.max_inflight_bytes, metrics.inflight_bytes)
    app[INGRESS] = Ingress(settings, sources, registry or default_registry(), metrics, inflight)
    app.cleanup_ctx.append(broker_ctx)
    # Every method: the token is checked first, so a wrong one gets 404 whatever the method.
    app.router.add_route("*", "/v1/callbacks/{source}/{token}", handle_callback)
    ingress = app[INGRESS]
    add_health_routes(app, lambda: _report_ready(ingress), lambda: _render_metrics(ingress))
    app.router.add_route("*", "/{path:.*}", handle_unrouted)
    return app


async def broker_ctx(app: web.Application) -> AsyncIterator[None]:
    ingress = app[INGRESS]
    settings = ingress.settings
    spool = await open_spool(settings, ingress.metrics)
    link = BrokerLink(settings.amqp_url, settings.topology(), name="cdrflow-ingress")
    ingress.metrics.watch_link(link)
    await link.start()
    ingress.publisher = CoalescingPublisher(
        link,
        queue=settings.raw_queue,
        max_envelopes=settings.coalesce_max_envelopes,
        max_bytes=settings.coalesce_max_bytes,
        linger_ms=settings.coalesce_linger_ms,
        confirm_timeout=settings.confirm_timeout,
        metrics=ingress.metrics,
        spool=spool,
    )
    drainer = start_drainer(spool, link, settings, ingress.publisher)
    yield
    # aiohttp has stopped accepting and waited for requests in flight: ship what is left.
    await ingress.publisher.drain()
    if drainer is not None and spool is not None:
        await drainer.finish(settings.shutdown_timeout)
        await spool.close()
    await link.close()


async def handle_callback(request: web.Request) -> web.StreamResponse:
    ingress = request.app[INGRESS]
    source = _authorize(ingress.sources, request)
    if source is None:
        ingress.metrics.requests.labels(NO_SOURCE, NOT_FOUND).inc()
        client = client_address(request, ingress.settings.trusted_proxies)
        ingress.not_found.refused(request.match_info["source"], client)
        raise web.HTTPNotFound()
    provider = ingress.registry[source.provider]
    client = client_address(request, ingress.settings.trusted_proxies)

    def finish(outcome: Outcome, **fields: object) -> web.Response:
        ingress.count(source.name, outcome)
        if outcome is not Outcome.ACCEPTED:
            # A 503 is a warning: a DR pushed once is lost at the provider.
            report = log.warning if outcome is Outcome.UNAVAILABLE else log.info
            report(
                "callback_refused",
                source=source.name,
                outcome=outcome.value,
                client=client,
                **fields,
            )
        return _answer(ingress, provider, outcome)

    if not source.allows(client):
        return finish(Outcome.FORBIDDEN)
    if request.method not in provider.methods:
        return finish(Outcome.METHOD_NOT_ALLOWED, method=request.method)
    with ingress.inflight.hold() as hold:
        try:
            body, decoded = await _read_decoded(request, ingress.settings, hold)
        except TooLarge:
            return _close_after(finish(Outcome.TOO_LARGE))
        except TimeoutError:
            return _close_after(finish(Outcome.TIMEOUT))
        except Overloaded:
            return _close_after(finish(Outcome.UNAVAILABLE, reason="overloaded"))
        except (RequestPayloadError, BadCoding) as exc:
            return _bad_body(request, provider, source, client, exc)

        envelope = _envelope(request, source, provider, client, body, decoded)
        try:
            envelope = _authenticated(provider, envelope, request, source)
        except Unauthenticated as exc:
            return finish(Outcome.UNAUTHORIZED, reason=str(exc))
        if ingress.publisher is None:
            return finish(Outcome.UNAVAILABLE, reason="starting")
        try:
            await ingress.publisher.make_durable(envelope.encode())
        except NotDurable as exc:
            return finish(Outcome.UNAVAILABLE, reason=str(exc), ingest_id=str(envelope.ingest_id))
    _log_accepted(source, envelope)
    return finish(Outcome.ACCEPTED)


async def _read_decoded(request: web.Request, settings: Settings, hold: Hold) -> tuple[bytes, bool]:
    """The body with its transfer codings and Content-Encoding undone (`ingress.coding`),
    and whether a Content-Encoding was."""
    body = await read_body(request, settings.max_body_bytes, settings.body_timeout, hold)
    transfer = request.headers.getall(hdrs.TRANSFER_ENCODING, ())
    if transfer:
        body = undo_transfer_codings(body, transfer, settings.max_body_bytes, hold)
    codings = codings_of(request.headers.getall(hdrs.CONTENT_ENCODING, ()))
    if not decodes(codings):
        return body, False
    return decode(body, codings, settings.max_body_bytes, hold), True


def _log_accepted(source: Source, envelope: RawEnvelope) -> None:
    if _debug_log.isEnabledFor(logging.DEBUG):  # cheaper than a structlog call it filters
        log.debug(
            "callback_accepted",
            source=source.name,
            ingest_id=str(envelope.ingest_id),
            bytes=len(envelope.body),
        )


def _answer(
    ingress: Ingress, provider: Provider, outcome: Outcome, status: int | None = None
) -> web.Response:
    answer = ingress.answer(provider, outcome)
    response = web.Response(
        status=status or answer.status, body=answer.body, content_type=answer.content_type
    )
    if outcome is Outcome.METHOD_NOT_ALLOWED:
        response.headers["Allow"] = ", ".join(sorted(provider.methods))
    return response


def _bad_body(
    request: web.Request, provider: Provider, source: Source, client: str, exc: Exception
) -> web.Response:
    """A body that cannot be decoded (a bad chunk, a bad or truncated compressed stream):
    the provider's failure answer and one warning, not a 500 with a traceback anyone can
    trigger, and never a 200 for a body kept cut."""
    cause = exc.__cause__ or exc
    reason = "bad_content_encoding" if isinstance(exc, BadCoding) else body_error_reason(cause)
    # Ends the body: aiohttp would otherwise read on after the answer, hit the same error
    # again and log it as an unhandled exception.
    request.content.feed_eof()
    ingress = request.app[INGRESS]
    ingress.metrics.unroutable.labels(reason).inc()
    log.warning(
        "request_unroutable", reason=reason, source=source.name, client=client, error=str(cause)
    )
    return _close_after(_answer(ingress, provider, Outcome.UNAVAILABLE, status=400))


async def handle_unrouted(request: web.Request) -> web.Response:
    """No such path (or a method our health paths do not serve): counted, so that a
    provider pointed at a wrong URL shows up in /metrics and the log."""
    ingress = request.app[INGRESS]
    ingress.metrics.unroutable.labels("no_route").inc()
    line = scrub_token(f"{request.method} {request.raw_path}".encode())
    log.info(
        "request_unroutable",
        reason="no_route",
        client=client_address(request, ingress.settings.trusted_proxies),
        first_bytes=line[:FIRST_BYTES_LOGGED],
    )
    raise web.HTTPNotFound()


def _authenticated(
    provider: Provider, envelope: RawEnvelope, request: web.Request, source: Source
) -> RawEnvelope:
    """The envelope, noting which reading of an ambiguous body the signature verified."""
    reading = provider.authenticate(envelope, request.headers, source, time.time())
    return replace(envelope, reading=reading) if reading else envelope


def _authorize(sources: Sources, request: web.Request) -> Source | None:
    """The source, if the name exists and the token matches; one answer for both failures."""
    source = sources.get(request.match_info["source"])
    token = request.match_info["token"]
    if source is None:
        hmac.compare_digest(token.encode(), _DUMMY_TOKEN)  # same work as a real comparison
        return None
    return source if source.token_matches(token) else None


def _envelope(
    request: web.Request,
    source: Source,
    provider: Provider,
    client: str,
    body: bytes,
    decoded: bool,
) -> RawEnvelope:
    return RawEnvelope(
        ingest_id=uuid7(),
        source=source.name,
        tenant=source.tenant,
        provider=provider.name,
        received_at=datetime.now(UTC),
        method=request.method,
        path=f"/v1/callbacks/{source.name}",
        query=request.rel_url.raw_query_string,
        content_type=request.headers.get("Content-Type", ""),
        headers=_kept_headers(request, body, decoded),
        client=client,
        body=body,
    )


def _kept_headers(request: web.Request, body: bytes, decoded: bool) -> dict[str, str]:
    headers = stored_headers(request.headers)
    if decoded:
        # The body was decoded (ingress/coding.py): the envelope describes the bytes it
        # holds. A coding that was not decoded stays, with the bytes as sent.
        headers.pop("content-encoding", None)
        headers["content-length"] = str(len(body))
    elif hdrs.CONTENT_ENCODING in request.headers:  # every line of it, not the last alone
        headers["content-encoding"] = ", ".join(request.headers.getall(hdrs.CONTENT_ENCODING))
    return headers


def _close_after(response: web.Response) -> web.Response:
    # The rest of the body is not worth reading: end the connection with the answer.
    response.force_close()
    return response


def _report_ready(ingress: Ingress) -> bool:
    ready = ingress.ready
    ingress.metrics.broker_ready.set(1 if ready else 0)
    return ready


def _render_metrics(ingress: Ingress) -> bytes:
    _report_ready(ingress)
    return ingress.metrics.render()
