"""The reconciler's metrics, under the names the alert rules read."""

from __future__ import annotations

from reconciler.reconciler_metrics import ReconcileMetrics


def test_every_source_has_its_series_from_start_up_and_success_once_it_happened() -> None:
    metrics = ReconcileMetrics(["nx-dr"])
    text = metrics.render().decode()
    assert 'cdrflow_reconcile_backfilled_total{source="nx-dr"} 0.0' in text
    assert 'cdrflow_reconcile_provider_records_total{source="nx-dr"} 0.0' in text
    assert 'cdrflow_reconcile_discrepancies_total{field="rate",source="nx-dr"} 0.0' in text
    # No success yet is no sample at all, never a success at the epoch.
    assert 'cdrflow_reconcile_last_success_timestamp_seconds{source="nx-dr"}' not in text
    metrics.succeeded("nx-dr")
    assert 'cdrflow_reconcile_last_success_timestamp_seconds{source="nx-dr"}' in (
        metrics.render().decode()
    )
