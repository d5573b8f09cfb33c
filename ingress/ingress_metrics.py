"""Prometheus metrics of the ingress, in a registry of its own (one per app).

Every label value known in advance is there from start-up at zero, so that `rate()` and
`increase()` in alert rules have a series to work on before the first event."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

from prometheus_client import Counter, Gauge, Histogram, generate_latest

from cdrflow.health import process_registry
from schemas.providers.answers import Outcome

if TYPE_CHECKING:
    from cdrflow.amqp import BrokerLink


class SpoolGauges(Protocol):
    """What the spool gauges read from `ingress.spool.Spool` (which imports this module)."""

    @property
    def records(self) -> int: ...
    @property
    def bytes(self) -> int: ...
    @property
    def oldest_ms(self) -> int | None: ...
    @property
    def max_bytes(self) -> int: ...


NO_SOURCE = "-"  # the source label of a request whose path names no source
NOT_FOUND = "not_found"  # its outcome
# The reasons `ingress.edge.unroutable_reason`, `body_error_reason` and the unrouted
# handler give.
UNROUTABLE_REASONS = (
    "line_too_long",
    "bad_request_line",
    "bad_headers",
    "bad_content_encoding",
    "incomplete_body",
    "bad_chunk",
    "no_route",
)
# The exceptions a publish to RabbitMQ usually ends with (the label is the type's name).
PUBLISH_FAILURES = ("BrokerUnavailable", "TimeoutError", "DeliveryError", "PublishError")


class IngressMetrics:
    def __init__(self, sources: Iterable[str] = ()) -> None:
        self.registry = process_registry()
        self.requests = Counter(
            "cdrflow_ingress_requests",
            "Callback requests by source and outcome",
            ["source", "outcome"],
            registry=self.registry,
        )
        self.confirm_seconds = Histogram(
            "cdrflow_ingress_confirm_seconds",
            "Time from publishing a coalesced message to the broker's confirm",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=self.registry,
        )
        self.batch_envelopes = Histogram(
            "cdrflow_ingress_batch_envelopes",
            "Callbacks coalesced into one confirmed message",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            registry=self.registry,
        )
        self.batch_bytes = Histogram(
            "cdrflow_ingress_batch_bytes",
            "Size of one coalesced message",
            buckets=(1024, 4096, 16384, 65536, 262144, 1048576, 4194304),
            registry=self.registry,
        )
        self.publish_failures = Counter(
            "cdrflow_ingress_publish_failures",
            "Coalesced messages the broker did not confirm, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.broker_ready = Gauge(
            "cdrflow_ingress_broker_ready",
            "1 while callbacks can be made durable on RabbitMQ",
            registry=self.registry,
        )
        self.broker_connected = Gauge(
            "cdrflow_ingress_broker_connected",
            "1 while the ingress holds a confirmed channel to RabbitMQ (readiness stays up "
            "without one while the spool has room)",
            registry=self.registry,
        )
        self.unroutable = Counter(
            "cdrflow_ingress_unroutable_requests",
            "Requests refused before they reached a source: bad request line, headers, "
            "chunk or content encoding, or no such path",
            ["reason"],
            registry=self.registry,
        )
        self.inflight_bytes = Gauge(
            "cdrflow_ingress_inflight_bytes",
            "Body bytes held by requests that are being read or made durable",
            registry=self.registry,
        )

        self.spool_records = Gauge(
            "cdrflow_spool_records",
            "Callbacks in the local spool, not yet confirmed by RabbitMQ",
            registry=self.registry,
        )
        self.spool_bytes = Gauge(
            "cdrflow_spool_bytes",
            "Size on disk of the callbacks in the local spool",
            registry=self.registry,
        )
        self.spool_oldest_age = Gauge(
            "cdrflow_spool_oldest_age_seconds",
            "Age of the oldest callback in the local spool (0 when empty)",
            registry=self.registry,
        )
        self.spool_capacity = Gauge(
            "cdrflow_spool_capacity_bytes",
            "The local spool's bound (0: no spool)",
            registry=self.registry,
        )
        self.spool_writes = Counter(
            "cdrflow_spool_writes",
            "Callbacks made durable in the local spool",
            registry=self.registry,
        )
        self.spool_drained = Counter(
            "cdrflow_spool_drained",
            "Spooled callbacks confirmed by RabbitMQ and removed from the spool",
            registry=self.registry,
        )
        self.spool_torn_records = Counter(
            "cdrflow_spool_torn_records",
            "Torn or damaged records found in the spool and skipped",
            registry=self.registry,
        )

        self._start_at_zero(sources)

    def _start_at_zero(self, sources: Iterable[str]) -> None:
        for source in sources:
            for outcome in Outcome:
                self.requests.labels(source, outcome.value)
        self.requests.labels(NO_SOURCE, NOT_FOUND)
        for reason in UNROUTABLE_REASONS:
            self.unroutable.labels(reason)
        for reason in PUBLISH_FAILURES:
            self.publish_failures.labels(reason)

    def watch_spool(self, spool: SpoolGauges) -> None:
        self.spool_records.set_function(lambda: spool.records)
        self.spool_bytes.set_function(lambda: spool.bytes)
        self.spool_oldest_age.set_function(
            lambda: 0 if spool.oldest_ms is None else max(0, time.time() - spool.oldest_ms / 1000)
        )
        self.spool_capacity.set(spool.max_bytes)

    def watch_link(self, link: BrokerLink) -> None:
        self.broker_connected.set_function(lambda: 1 if link.ready else 0)

    def render(self) -> bytes:
        return generate_latest(self.registry)
