"""Prometheus metrics of the ingress, in a registry of its own (one per app)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class IngressMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
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

    def render(self) -> bytes:
        return generate_latest(self.registry)
