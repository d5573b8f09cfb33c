"""RabbitMQ topology as values: declared in one place (`cdrflow.amqp.declare`), idempotently,
by every process that uses it."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

# Every routing key on the records exchange has exactly four words (tenant, provider, event,
# status: none of them may contain a dot). The stream binds to that shape, not to `#`, so
# that `cdrflow republish --routing-key` can reach one consumer's private binding without
# writing duplicates into the stream.
RECORD_KEY_SHAPE = "*.*.*.*"

# RabbitMQ's x-max-age: a number and one unit of Y, M, D, h, m, s.
_MAX_AGE = re.compile(r"[1-9][0-9]*[YMDhms]")


class TopologyError(ValueError):
    """A topology setting RabbitMQ would refuse."""


@dataclass(frozen=True, slots=True)
class QueueSpec:
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ExchangeSpec:
    name: str
    kind: str  # "topic", "fanout", "direct"


@dataclass(frozen=True, slots=True)
class Topology:
    raw_queue: QueueSpec
    dead_exchange: ExchangeSpec
    dead_queue: QueueSpec
    records_exchange: ExchangeSpec
    # Replayable log of every record published: RabbitMQ stream queue bound to the records
    # exchange, read with `x-stream-offset` (see `cdrflow tail --since`).
    records_stream: QueueSpec

    @classmethod
    def build(
        cls,
        *,
        raw_queue: str = "cdr.raw",
        dead_exchange: str = "cdr.dead",
        dead_queue: str = "cdr.dead",
        records_exchange: str = "cdr.records",
        delivery_limit: int = 20,
        records_stream: str = "",
        stream_max_age: str = "7D",
        stream_max_bytes: int = 20_000_000_000,
    ) -> Topology:
        if not _MAX_AGE.fullmatch(stream_max_age):
            raise TopologyError(
                f"stream max age {stream_max_age!r}: a number and a unit of Y, M, D, h, m, s"
                " (e.g. 7D, 36h)"
            )
        if stream_max_bytes <= 0:
            raise TopologyError(f"stream max bytes {stream_max_bytes}: must be above 0")
        return cls(
            raw_queue=QueueSpec(
                raw_queue,
                {
                    "x-queue-type": "quorum",
                    # RabbitMQ 3.10 sets no limit on quorum queues: without one a message
                    # that crashes every worker is redelivered forever.
                    "x-delivery-limit": delivery_limit,
                    "x-dead-letter-exchange": dead_exchange,
                    # at-least-once dead-lettering cannot lose a parked message; it
                    # requires reject-publish overflow (a full queue nacks, never drops).
                    "x-dead-letter-strategy": "at-least-once",
                    "x-overflow": "reject-publish",
                },
            ),
            dead_exchange=ExchangeSpec(dead_exchange, "fanout"),
            dead_queue=QueueSpec(dead_queue, {"x-queue-type": "quorum"}),
            records_exchange=ExchangeSpec(records_exchange, "topic"),
            records_stream=QueueSpec(
                records_stream or f"{records_exchange}.stream",
                {
                    "x-queue-type": "stream",
                    # Retention drops whole segments, the oldest first, once either limit
                    # is passed; smaller segments make it follow the limits more closely.
                    "x-max-age": stream_max_age,
                    "x-max-length-bytes": stream_max_bytes,
                    "x-stream-max-segment-size-bytes": min(
                        100_000_000, max(1_000_000, stream_max_bytes // 20)
                    ),
                },
            ),
        )
