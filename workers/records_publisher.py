"""Publishing a batch of outbox entries on `cdr.records` in one write (`cdrflow.batchpublish`).

`record_outgoing` is the one description of a record's message (`workers.outbox.record_message`
builds aio-pika's from it), encoded without an aio-pika Message, one timestamp per batch."""

from __future__ import annotations

import time
from collections.abc import Sequence

from cdrflow.amqp import BrokerLink
from cdrflow.batchpublish import Outgoing
from schemas.record import MESSAGE_TYPE, SCHEMA_VERSION
from workers.batch import OutboxEntry


def record_outgoing(entry: OutboxEntry, timestamp: int) -> Outgoing:
    record_id = str(entry.record_id)  # once: it is also the message_id's first part
    return Outgoing(
        routing_key=entry.routing_key,
        body=entry.body,
        message_id=f"{record_id}:{entry.revision}",
        content_type="application/json",
        headers={
            "schema_version": SCHEMA_VERSION,
            "record_id": record_id,
            "revision": entry.revision,
        },
        timestamp=timestamp,
        message_type=MESSAGE_TYPE,
    )


async def publish_records(
    link: BrokerLink, entries: Sequence[OutboxEntry], *, exchange: str, timeout: float
) -> list[BaseException | None]:
    """Per entry, None when the broker confirmed it, else why not. Not `mandatory`: a
    record nobody subscribed to yet is published all the same."""
    now = int(time.time())
    try:
        return await link.publish_batch(
            [record_outgoing(entry, now) for entry in entries],
            exchange=exchange,
            mandatory=False,
            timeout=timeout,
        )
    except Exception as exc:  # no connection, a closed channel: none of them is confirmed
        return [exc] * len(entries)
