"""RabbitMQ topology as values: declared in one place (`cdrflow.amqp.declare`), idempotently,
by every process that uses it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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

    @classmethod
    def build(
        cls,
        *,
        raw_queue: str = "cdr.raw",
        dead_exchange: str = "cdr.dead",
        dead_queue: str = "cdr.dead",
        records_exchange: str = "cdr.records",
        delivery_limit: int = 20,
    ) -> Topology:
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
        )
