"""End to end, for every registered provider: HTTP -> ingress -> cdr.raw -> worker ->
PostgreSQL -> cdr.records, on the real RabbitMQ and PostgreSQL. The callbacks come from
each provider's own `simulate()`, and what is stored is what its module makes of them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

import asyncpg
import pytest
from aio_pika.abc import AbstractChannel

from cdrflow.settings import Settings
from schemas.jsoncodec import loads
from schemas.providers import default_registry
from schemas.record import SCHEMA_VERSION, CallRecord, record_id_for
from schemas.sources import Sources
from tests.support.broker import RecordTap, record_tap
from tests.support.ingress import IngressClient, ingress_client
from tests.support.samples import Sample, envelope, record_validator, sample, simulated
from tests.support.sources import callback_path, load_test_sources, provider_source
from tests.support.waiting import eventually, one
from tests.support.workers import running_worker

PROVIDERS = sorted(default_registry())


def expected_record(item: Sample) -> CallRecord:
    """What the provider module itself makes of the callback: what must be stored."""
    source = load_test_sources()[item.source]
    provider = default_registry()[source.provider]
    (payload,) = provider.parse(envelope(item), source)
    return provider.normalize(payload, source)


@dataclass
class Pipeline:
    client: IngressClient
    tap: RecordTap
    db: asyncpg.Connection

    async def push(self, item: Sample) -> None:
        path = callback_path(item.source) + (f"?{item.query}" if item.query else "")
        headers = dict(item.headers)
        if item.content_type:
            headers["Content-Type"] = item.content_type
        response = await self.client.request(item.method, path, data=item.body, headers=headers)
        assert response.status == 200, await response.text()

    async def row(self, source: str, external_id: str) -> asyncpg.Record | None:
        return await self.db.fetchrow(
            "SELECT * FROM call_records WHERE source = $1 AND external_id = $2", source, external_id
        )

    async def wait_row(self, source: str, external_id: str, **expected: object) -> asyncpg.Record:
        async def ready() -> bool:
            row = await self.row(source, external_id)
            return row is not None and all(row[k] == v for k, v in expected.items())

        assert await eventually(ready), f"no row {source}/{external_id} with {expected}"
        row = await self.row(source, external_id)
        assert row is not None
        return row

    async def barrier(self) -> None:
        """Wait until everything pushed before has been published: push one more record
        and wait for its message (one worker publishes its batches in order)."""
        marker = sample("nx-voice")
        await self.push(marker)
        record_id = str(record_id_for("nx-voice", marker.external_id))

        async def published() -> bool:
            return bool(self.tap.of(record_id))

        assert await eventually(published), "the barrier record was never published"


@pytest.fixture
async def pipeline(
    settings: Settings, sources: Sources, channel: AbstractChannel, db: asyncpg.Connection
) -> AsyncIterator[Pipeline]:
    async with (
        record_tap(channel, settings) as tap,
        running_worker(settings, sources),
        ingress_client(settings, sources) as client,
    ):
        yield Pipeline(client, tap, db)


@pytest.mark.parametrize("provider_name", PROVIDERS)
async def test_a_callback_becomes_one_row_and_one_message(
    pipeline: Pipeline, provider_name: str
) -> None:
    item = simulated(provider_name)
    source = item.source
    await pipeline.push(item)
    row = await pipeline.wait_row(source, item.external_id)
    await pipeline.barrier()

    expected = expected_record(item)
    provider, event, status = expected.provider, expected.event, expected.status.value
    assert f"{provider}.{event}" == provider_name
    assert (row["provider"], row["event"], row["status"]) == (provider, event, status)
    assert (row["delivery_count"], row["revision"], row["schema_version"]) == (1, 1, SCHEMA_VERSION)
    assert row["record_id"] == record_id_for(source, item.external_id)
    assert row["received_at"] == row["first_seen_at"] == row["last_seen_at"]
    assert row["received_at"].tzinfo is not None

    (message,) = pipeline.tap.of(str(row["record_id"]))
    body = loads(message.body)
    record_validator().validate(body)
    assert message.routing_key == f"{row['tenant']}.{provider}.{event}.{status}"
    assert message.message_id == f"{row['record_id']}:1"
    assert message.content_type == "application/json"
    assert message.delivery_mode == 2
    assert message.headers["schema_version"] == SCHEMA_VERSION
    assert body["external_id"] == item.external_id
    assert body["delivery_count"] == 1
    assert "raw" not in body
    kept = await one(
        pipeline.db,
        "SELECT raw, body, method, content_type, query FROM record_payloads WHERE record_id = $1",
        row["record_id"],
    )
    assert loads(kept["raw"]) is not None
    # The request as the provider sent it, to be parsed again (`cdrflow reprocess`).
    assert bytes(kept["body"]) == item.body
    assert kept["method"] == item.method
    # the published record is the stored one
    for column in ("status", "callee", "talk_seconds", "currency", "hangup_cause"):
        assert body[column] == row[column], column


@pytest.mark.parametrize("provider_name", PROVIDERS)
async def test_a_repush_three_times_counts_four_deliveries_and_publishes_once(
    pipeline: Pipeline, provider_name: str
) -> None:
    item = simulated(provider_name)
    source = item.source
    for _ in range(4):
        await pipeline.push(item)
    row = await pipeline.wait_row(source, item.external_id, delivery_count=4)
    await pipeline.barrier()

    assert row["revision"] == 1
    assert row["last_seen_at"] > row["first_seen_at"]
    assert (
        await pipeline.db.fetchval(
            "SELECT count(*) FROM call_records WHERE source = $1 AND external_id = $2",
            source,
            item.external_id,
        )
        == 1
    )
    messages = pipeline.tap.of(str(row["record_id"]))
    assert [m.message_id for m in messages] == [f"{row['record_id']}:1"]


@pytest.mark.parametrize("provider_name", PROVIDERS)
async def test_changed_content_gives_revision_2_and_a_second_message(
    pipeline: Pipeline, provider_name: str
) -> None:
    first = simulated(provider_name, variant=0)
    source = first.source
    await pipeline.push(first)
    await pipeline.wait_row(source, first.external_id)
    await pipeline.push(simulated(provider_name, first.external_id, variant=1))
    row = await pipeline.wait_row(source, first.external_id, revision=2)
    await pipeline.barrier()

    assert row["delivery_count"] == 2
    messages = pipeline.tap.of(str(row["record_id"]))
    assert [m.message_id for m in messages] == [f"{row['record_id']}:1", f"{row['record_id']}:2"]
    bodies = [loads(m.body) for m in messages]
    assert bodies[0]["revision"] == 1
    assert bodies[1]["revision"] == 2
    assert bodies[0] != bodies[1]
    for body in bodies:
        record_validator().validate(body)
    assert row["updated_at"] >= row["stored_at"]


@pytest.mark.parametrize(
    ("source", "body", "content_type", "item"),
    [
        *(
            (provider_source(name), b"\x00{definitely not a callback", "application/json", -1)
            for name in PROVIDERS
        ),
        # a DR form without its messageid: the report, not the body, is bad
        ("nx-dr", b"phone=86150&result=x", "application/x-www-form-urlencoded", 0),
    ],
)
async def test_a_malformed_body_is_kept_in_rejected_callbacks(
    pipeline: Pipeline, source: str, body: bytes, content_type: str, item: int
) -> None:
    await pipeline.push(Sample(source, "", "POST", body, content_type))

    async def rejected() -> bool:
        return bool(await pipeline.db.fetchval("SELECT count(*) FROM rejected_callbacks"))

    assert await eventually(rejected)
    row = await one(pipeline.db, "SELECT * FROM rejected_callbacks")
    assert row["source"] == source
    assert row["reason"] in ("unparseable_body", "missing_field")
    assert row["message"]
    assert bytes(row["body"]) == body
    request = loads(row["request"])
    assert (request["method"], request["path"]) == ("POST", f"/v1/callbacks/{source}")
    assert request["content_type"] == content_type
    assert row["item"] == item
    assert await pipeline.db.fetchval("SELECT count(*) FROM call_records") == 0


async def test_zone_less_times_are_read_in_the_source_zone_and_money_is_exact(
    pipeline: Pipeline,
) -> None:
    item = sample("nx-cc")
    await pipeline.push(item)
    row = await pipeline.wait_row("nx-cc", item.external_id)
    # "2023-11-17 13:42:30" at the source's +08:00
    assert row["started_at"] == datetime(2023, 11, 17, 5, 42, 30, tzinfo=UTC)
    assert row["answered_at"] == datetime(2023, 11, 17, 5, 42, 33, tzinfo=UTC)
    assert row["cost"] == Decimal("0.0135")
    assert isinstance(row["cost"], Decimal)
    assert row["labels"] == ["Intended customers"]
    assert row["hangup_by"] == "callee"
    await pipeline.barrier()
    body = loads(pipeline.tap.of(str(row["record_id"]))[0].body)
    assert body["cost"] == "0.0135"  # a string: never a float on the wire
    assert body["started_at"] == "2023-11-17T05:42:30Z"
