"""Adding a provider is one module and one registry line: a provider defined here, unknown
to everything else, goes through the ingress, the worker and PostgreSQL. It signs in a
header (the ingress hands every header to `authenticate`), takes a setting of its own in
the sources file (`ping_secret`), and answers in its own words."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import random
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import aio_pika
import asyncpg
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from cdrflow.settings import Settings
from schemas.envelope import KEPT_HEADERS, RawEnvelope
from schemas.jsoncodec import dumps, loads
from schemas.providers import (
    Answer,
    Outcome,
    Reason,
    Registry,
    Reject,
    SimulatedCallback,
    Unauthenticated,
)
from schemas.providers.answers import text_answers
from schemas.providers.bodies import json_body
from schemas.providers.fields import Fields
from schemas.record import CallRecord, Status
from schemas.source_settings import SourceSettings
from schemas.sources import Source, Sources
from schemas.sources_file import parse_sources
from tests.support.ingress import IngressClient, ingress_client
from tests.support.samples import Sample, simulated
from tests.support.waiting import eventually, one
from tests.support.workers import running_worker

SIGNATURE_HEADER = "X-Ping-Signature"
TOKEN = "tok-ping-0123456789"
SECRET = "ping-secret-for-tests"


@dataclass(frozen=True)
class PingConfig:
    secret: str | None = field(repr=False)
    signing: str = "hmac-sha256-header"

    def secrets(self) -> tuple[str, ...]:
        return (self.secret,) if self.secret else ()


def signature(body: bytes, secret: str) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class Ping:
    """A made-up push: `{"pingId": ..., "seconds": ...}`, signed in a header."""

    name = "throwaway.ping"
    methods = frozenset({"POST"})
    default_timezone = "UTC"
    signing_modes = frozenset({"hmac-sha256-header"})
    volatile_fields: frozenset[str] = frozenset()
    books = None
    _answer = staticmethod(text_answers("pong", "nope"))

    def configure(self, settings: SourceSettings) -> PingConfig:
        return PingConfig(settings.secret("ping_secret", required=True))

    def answer(self, outcome: Outcome) -> Answer:
        return self._answer(outcome)

    def authenticate(
        self, envelope: RawEnvelope, headers: Mapping[str, str], source: Source, now: float
    ) -> None:
        assert isinstance(source.config, PingConfig)
        expected = signature(envelope.body, source.config.secret or "")
        if not hmac.compare_digest(headers.get(SIGNATURE_HEADER, ""), expected):
            raise Unauthenticated("signature header does not match")

    def parse(self, envelope: RawEnvelope, source: Source) -> list[dict[str, Any]]:
        document = json_body(envelope, source)
        if not isinstance(document, dict):
            raise Reject(Reason.NOT_AN_OBJECT, "body is not an object")
        return [document]

    def normalize(self, payload: Mapping[str, Any], source: Source) -> CallRecord:
        f = Fields(payload, source.timezone)
        ping_id = f.require_text("pingId")
        seconds = f.integer("seconds")
        return CallRecord(
            source=source.name,
            tenant=source.tenant,
            provider="throwaway",
            event="ping",
            external_id=ping_id,
            raw=payload,
            status=Status.ANSWERED if seconds else Status.NO_ANSWER,
            talk_seconds=seconds,
            extra=f.extra(),
        )

    def simulate(
        self, rng: random.Random, now: datetime, source: Source, external_id: str | None = None
    ) -> SimulatedCallback:
        assert isinstance(source.config, PingConfig)
        ping_id = external_id or f"ping-{rng.getrandbits(32):08x}"
        body = dumps({"pingId": ping_id, "seconds": rng.randint(0, 90), "colour": "blue"})
        return SimulatedCallback(
            "POST",
            body,
            "application/json",
            external_id=ping_id,
            headers={SIGNATURE_HEADER: signature(body, source.config.secret or "")},
        )

    def documented(
        self, source: Source, now: datetime, text: str | None = None
    ) -> SimulatedCallback:
        assert isinstance(source.config, PingConfig)
        body = (text or '{"pingId": "ping-doc", "seconds": 12}').encode()
        headers = {SIGNATURE_HEADER: signature(body, source.config.secret or "")}
        return SimulatedCallback("POST", body, "application/json", headers=headers)


REGISTRY = Registry([Ping()])  # the one registry line
SOURCES_TOML = f"""
[sources.ping]
provider = "throwaway.ping"
tenant = "lab"
token = "{TOKEN}"
ping_secret_env = "PING_SECRET"
"""


@pytest.fixture
def ping_sources() -> Sources:
    return parse_sources(
        SOURCES_TOML, origin="test", environ={"PING_SECRET": SECRET}, providers=REGISTRY
    )


@dataclass
class Published:
    messages: list[AbstractIncomingMessage] = field(default_factory=list)


@pytest.fixture
async def published(channel: AbstractChannel, settings: Settings) -> AsyncIterator[Published]:
    """Records published for the lab tenant (the JSON Schema's enums name the registered
    providers only, so the schema-checking record tap is not used here)."""
    exchange = await channel.declare_exchange(
        settings.records_exchange, aio_pika.ExchangeType.TOPIC, durable=True
    )
    queue = await channel.declare_queue("", exclusive=True, auto_delete=True)
    await queue.bind(exchange, routing_key="lab.throwaway.ping.*")
    seen = Published()

    async def collect(message: AbstractIncomingMessage) -> None:
        seen.messages.append(message)
        await message.ack()

    tag = await queue.consume(collect)
    yield seen
    await queue.cancel(tag)


async def push(client: IngressClient, item: Sample) -> tuple[int, str]:
    headers = {**item.headers, "Content-Type": item.content_type}
    response = await client.post(f"/v1/callbacks/ping/{TOKEN}", data=item.body, headers=headers)
    return response.status, await response.text()


async def test_a_provider_unknown_to_cdrflow_goes_through_ingress_worker_and_postgresql(
    settings: Settings,
    ping_sources: Sources,
    db: asyncpg.Connection,
    published: Published,
) -> None:
    assert SIGNATURE_HEADER.lower() not in KEPT_HEADERS  # signed in a header nobody kept
    item = simulated(
        "throwaway.ping", "ping-1", source="ping", sources=ping_sources, registry=REGISTRY
    )
    # another body under the first one's signature
    forged = dataclasses.replace(item, body=item.body.replace(b"ping-1", b"ping-2"))
    async with (
        running_worker(settings, ping_sources, REGISTRY),
        ingress_client(settings, ping_sources, REGISTRY) as client,
    ):
        assert await push(client, item) == (200, "pong")
        assert await push(client, item) == (200, "pong")  # a re-push
        assert await push(client, forged) == (401, "nope")

        async def counted() -> bool:
            return bool(
                await db.fetchval(
                    "SELECT delivery_count = 2 FROM call_records WHERE source = 'ping'"
                )
            )

        assert await eventually(counted)

        async def relayed() -> bool:
            return len(published.messages) == 1

        assert await eventually(relayed)
    row = await one(db, "SELECT * FROM call_records")
    assert (row["provider"], row["event"], row["tenant"]) == ("throwaway", "ping", "lab")
    assert row["external_id"] == "ping-1"
    assert row["status"] == ("answered" if row["talk_seconds"] else "no_answer")
    assert loads(row["extra"]) == {"colour": "blue"}
    assert await db.fetchval("SELECT count(*) FROM rejected_callbacks") == 0
    (message,) = published.messages
    assert message.routing_key == f"lab.throwaway.ping.{row['status']}"
    assert loads(message.body)["external_id"] == "ping-1"
