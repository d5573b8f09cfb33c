"""Publishing a batch in one write (`cdrflow.batchpublish`) against the real broker: every
message arrives as aio-pika would have sent it, a return fails a mandatory message, a nack
fails its message, and no connection fails them all."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import aiormq
import pytest
from aio_pika.abc import AbstractChannel
from aiormq.abc import FieldTable

from cdrflow.amqp import BrokerLink, raw_message
from cdrflow.batchpublish import Outgoing
from cdrflow.settings import Settings
from schemas.record import MESSAGE_TYPE, SCHEMA_VERSION
from tests.support.env import AMQP_URL, unique
from tests.support.waiting import eventually
from workers.batch import OutboxEntry
from workers.records_publisher import publish_records


@pytest.fixture
async def link(settings: Settings) -> AsyncIterator[BrokerLink]:
    link = BrokerLink(AMQP_URL, settings.topology(), name="test-batch")
    await link.start(wait=10)
    assert link.ready
    yield link
    await link.close()


async def bound_queue(
    channel: AbstractChannel, exchange: str, arguments: FieldTable | None = None
) -> str:
    name = unique("batch")
    queue = await channel.declare_queue(name, auto_delete=True, arguments=arguments)
    await queue.bind(exchange, routing_key="#")
    return name


def entries(count: int) -> list[OutboxEntry]:
    return [
        OutboxEntry(i + 1, uuid.uuid4(), i % 3 + 1, f"acme.twilio.call.s{i % 5}", b'{"n":%d}' % i)
        for i in range(count)
    ]


async def test_every_record_arrives_confirmed_with_its_properties(
    link: BrokerLink, settings: Settings, channel: AbstractChannel
) -> None:
    queue = await bound_queue(channel, settings.records_exchange)
    sent = entries(1200)
    results = await publish_records(link, sent, exchange=settings.records_exchange, timeout=10)
    assert results == [None] * len(sent)
    target = await channel.get_queue(queue, ensure=False)
    for entry in sent:  # one channel, one write: in order
        message = await target.get(timeout=5)
        assert message is not None
        await message.ack()
        assert message.body == entry.body
        assert message.routing_key == entry.routing_key
        assert message.message_id == entry.message_id
        assert message.delivery_mode == 2
        assert message.content_type == "application/json"
        assert message.type == MESSAGE_TYPE  # the AsyncAPI document's messageType
        assert message.headers == {
            "schema_version": SCHEMA_VERSION,
            "record_id": str(entry.record_id),
            "revision": entry.revision,
        }
        assert message.timestamp is not None
        assert abs(message.timestamp.timestamp() - time.time()) < 600


async def test_a_returned_mandatory_message_fails_and_the_others_are_confirmed(
    link: BrokerLink, settings: Settings, channel: AbstractChannel
) -> None:
    queue = await channel.declare_queue(unique("batch"), auto_delete=True)
    await queue.bind(settings.records_exchange, routing_key="routed.#")
    messages = [
        Outgoing(f"{key}.x", b"{}", f"m{i}", "application/json", {}, int(time.time()))
        for i, key in enumerate(["routed", "nowhere", "routed"])
    ]
    results = await link.publish_batch(
        messages, exchange=settings.records_exchange, mandatory=True, timeout=10
    )
    assert results[0] is None
    assert results[2] is None
    assert isinstance(results[1], aiormq.exceptions.PublishError)
    assert link.ready  # a return is no nack: the link stays as it is
    assert link.opened == 1


async def test_a_nacked_message_fails(
    link: BrokerLink, settings: Settings, channel: AbstractChannel
) -> None:
    await bound_queue(
        channel, settings.records_exchange, {"x-max-length": 1, "x-overflow": "reject-publish"}
    )
    results = await publish_records(
        link, entries(3), exchange=settings.records_exchange, timeout=10
    )
    assert results[0] is None
    assert all(isinstance(r, aiormq.exceptions.DeliveryError) for r in results[1:])


async def test_a_nack_renews_the_link_at_most_once_per_interval(
    link: BrokerLink, settings: Settings, channel: AbstractChannel
) -> None:
    """A channel that RabbitMQ 3.10 nacks may go on nacking it: the link opens a new
    connection after a nack, and not again for a second nack soon after."""
    await bound_queue(
        channel, settings.records_exchange, {"x-max-length": 1, "x-overflow": "reject-publish"}
    )
    assert link.opened == 1
    first = await publish_records(link, entries(2), exchange=settings.records_exchange, timeout=10)
    assert first[0] is None
    assert isinstance(first[1], aiormq.exceptions.DeliveryError)

    async def renewed() -> bool:
        return link.ready and link.opened == 2

    assert await eventually(renewed)
    again = await publish_records(link, entries(1), exchange=settings.records_exchange, timeout=10)
    assert isinstance(again[0], aiormq.exceptions.DeliveryError)
    assert link.ready  # a renewal would have cleared `ready` already
    assert link.opened == 2


async def test_a_nacked_single_publish_raises_and_renews_the_link(
    link: BrokerLink, channel: AbstractChannel
) -> None:
    """The path of the ingress and its spool drainer: one message, confirmed or raised."""
    queue = unique("batch")
    await channel.declare_queue(
        queue, auto_delete=True, arguments={"x-max-length": 1, "x-overflow": "reject-publish"}
    )
    await link.publish(raw_message([b"{}"]), queue, timeout=10)
    with pytest.raises(aiormq.exceptions.DeliveryError):
        await link.publish(raw_message([b"{}"]), queue, timeout=10)

    async def renewed() -> bool:
        return link.ready and link.opened == 2

    assert await eventually(renewed)


async def test_without_a_connection_no_record_is_confirmed(
    link: BrokerLink, settings: Settings
) -> None:
    await link.close()
    results = await publish_records(link, entries(4), exchange=settings.records_exchange, timeout=1)
    assert len(results) == 4
    assert all(isinstance(r, Exception) for r in results)
