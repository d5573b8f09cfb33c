"""Prometheus metrics of a worker (served by `cdrflow.health` on `CDRFLOW_WORKER_PORT`).

Every label value known in advance is there from start-up at zero, so that `rate()` and
`increase()` in alert rules have a series to work on before the first event."""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import datetime

from prometheus_client import Counter, Gauge, Histogram, generate_latest

from cdrflow.health import process_registry
from schemas.providers.errors import Reason

# backfill_ignored: a backfill of a record stored already (or pushed in the same batch),
# which changes nothing.
DELIVERY_OUTCOMES = ("new_record", "revision", "duplicate", "seen_before", "backfill_ignored")
# From a healthy 10 ms up to the hour: the alert on a stalled backlog compares the median
# with 600 s, which a histogram ending at 60 s could never report.
LAG_BUCKETS = (
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600,
)  # fmt: skip


class WorkerMetrics:
    def __init__(self, sources: Iterable[str] = ()) -> None:
        self.registry = process_registry()
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
            ["outcome"],  # DELIVERY_OUTCOMES
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

        self.lag_seconds = Histogram(
            "cdrflow_worker_lag_seconds",
            "From the ingress's receipt of a callback to the commit of its report"
            " (stored_at - received_at)",
            buckets=LAG_BUCKETS,
            registry=self.registry,
        )
        self.outbox_rows = Gauge(
            "cdrflow_worker_outbox_rows",
            "Stored records not yet confirmed on cdr.records (read from PostgreSQL)",
            registry=self.registry,
        )
        self.outbox_oldest_age = Gauge(
            "cdrflow_worker_outbox_oldest_age_seconds",
            "Age of the oldest outbox row (0 when empty)",
            registry=self.registry,
        )
        self.rejections_unresolved = Gauge(
            "cdrflow_rejections_unresolved",
            "Rejected callbacks not yet resolved by a replay, by source and reason"
            " (read from PostgreSQL; every worker reports the same numbers)",
            ["source", "reason"],
            registry=self.registry,
        )
        self.sources = tuple(sources)
        for outcome in DELIVERY_OUTCOMES:
            self.deliveries.labels(outcome)
        for reason in Reason:
            self.rejected.labels(reason.value)
            for source in self.sources:
                self.rejections_unresolved.labels(source, reason.value)

    def observe_lag(self, received_at: Iterable[datetime]) -> None:
        """Called right after a commit, with the receipt time of each report it stored."""
        now = time.time()
        for moment in received_at:
            self.lag_seconds.observe(max(0.0, now - moment.timestamp()))

    def render(self) -> bytes:
        return generate_latest(self.registry)
