"""Adding a provider is one module and one registry line: a provider module cdrflow does
not ship (`tests.support.throwaway_provider`), added to the real registry by that one line,
goes through the ingress, the worker and PostgreSQL, and the record it publishes follows
the record schema `make schemas` writes for that registry, with nothing else edited."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aio_pika
import asyncpg
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from cdrflow.settings import Settings
from schemas.envelope import KEPT_HEADERS
from schemas.jsoncodec import loads
from schemas.providers import Registry
from schemas.sources import Sources
from schemas.sources_file import parse_sources
from tests.support.ingress import IngressClient, ingress_client
from tests.support.samples import SCHEMA_DIR, Sample, simulated, strict_record_validator
from tests.support.throwaway_provider import NAME, SIGNATURE_HEADER, registered, schemas_written
from tests.support.waiting import eventually, one
from tests.support.workers import running_worker

TOKEN = "tok-ping-0123456789"
SECRET = "ping-secret-for-tests"

SOURCES_TOML = f"""
[sources.ping]
provider = "throwaway.ping"
tenant = "lab"
token = "{TOKEN}"
ping_secret_env = "PING_SECRET"
"""


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> Registry:
    return registered(monkeypatch)


@pytest.fixture
def ping_sources(registry: Registry) -> Sources:
    return parse_sources(
        SOURCES_TOML, origin="test", environ={"PING_SECRET": SECRET}, providers=registry
    )


@pytest.fixture
def generated_schemas(registry: Registry, tmp_path: Path) -> Path:
    """The schema files as `make schemas` writes them with the provider registered."""
    assert schemas_written(tmp_path, registry)  # the committed ones do not name it
    return tmp_path


@dataclass
class Published:
    messages: list[AbstractIncomingMessage] = field(default_factory=list)


@pytest.fixture
async def published(channel: AbstractChannel, settings: Settings) -> AsyncIterator[Published]:
    """Records published for the lab tenant (the schema-checking record tap checks against
    the committed schema, which does not name this provider)."""
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
    registry: Registry,
    ping_sources: Sources,
    generated_schemas: Path,
    db: asyncpg.Connection,
    published: Published,
) -> None:
    assert SIGNATURE_HEADER.lower() not in KEPT_HEADERS  # signed in a header nobody kept
    item = simulated(NAME, "ping-1", source="ping", sources=ping_sources, registry=registry)
    # another body under the first one's signature
    forged = dataclasses.replace(item, body=item.body.replace(b"ping-1", b"ping-2"))
    async with (
        running_worker(settings, ping_sources, registry),
        ingress_client(settings, ping_sources, registry) as client,
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
    body = loads(message.body)
    assert body["external_id"] == "ping-1"
    strict_record_validator(generated_schemas).validate(body)
    assert not strict_record_validator(SCHEMA_DIR).is_valid(body)  # generated, not committed
