"""Prometheus metrics of the reconciler (served on `CDRFLOW_RECONCILER_PORT`). The alert
rules read these names: a backfill means pushes are being lost; no success for a while
means the books are not being read.

Every source's series exist from start-up at zero, so that `increase()` has a series to
work on before the first event."""

from __future__ import annotations

import time
from collections.abc import Iterable

from prometheus_client import Counter, Gauge, generate_latest

from cdrflow.health import process_registry
from reconciler.compare import BILLING_FIELDS


class ReconcileMetrics:
    def __init__(self, sources: Iterable[str] = ()) -> None:
        self.registry = process_registry()
        self.backfilled = Counter(
            "cdrflow_reconcile_backfilled",
            "Records found in the provider's books and not stored, sent into cdr.raw",
            ["source"],
            registry=self.registry,
        )
        self.discrepancies = Counter(
            "cdrflow_reconcile_discrepancies",
            "Differences on what bills between a stored record and the provider's books"
            " (new or changed ones), by field",
            ["source", "field"],
            registry=self.registry,
        )
        self.provider_records = Counter(
            "cdrflow_reconcile_provider_records",
            "Records listed in the provider's books",
            ["source"],
            registry=self.registry,
        )
        self.last_success = Gauge(
            "cdrflow_reconcile_last_success_timestamp_seconds",
            "When a pass over the source last listed and compared every window it was due",
            ["source"],
            registry=self.registry,
        )
        for source in sources:
            self.backfilled.labels(source)
            self.provider_records.labels(source)
            for field in BILLING_FIELDS:
                self.discrepancies.labels(source, field)

    def succeeded(self, source: str) -> None:
        self.last_success.labels(source).set(time.time())

    def render(self) -> bytes:
        return generate_latest(self.registry)
