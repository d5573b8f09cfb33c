"""Prometheus metrics of a worker (served by `cdrflow.health` on `CDRFLOW_WORKER_PORT`)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class WorkerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.batches = Counter(
            "cdrflow_worker_batches", "Batches committed", registry=self.registry
        )
        self.batch_seconds = Histogram(
            "cdrflow_worker_batch_seconds",
            "Time to normalize and commit one batch",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.deliveries = Counter(
            "cdrflow_worker_deliveries",
            "Call reports taken from cdr.raw, by outcome",
            ["outcome"],  # new_record, revision, duplicate, seen_before
            registry=self.registry,
        )
        self.rejected = Counter(
            "cdrflow_worker_rejected",
            "Callbacks stored in rejected_callbacks, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.published = Counter(
            "cdrflow_worker_published", "Records confirmed on cdr.records", registry=self.registry
        )
        self.redelivered = Counter(
            "cdrflow_worker_redelivered",
            "Messages that came back after a fault (they carry a delivery count)",
            registry=self.registry,
        )
        self.parked = Counter(
            "cdrflow_worker_parked",
            "Messages sent to the dead-letter queue",
            registry=self.registry,
        )
        self.database_up = Gauge(
            "cdrflow_worker_database_up",
            "0 while batches wait for the database",
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
