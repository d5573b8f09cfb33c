"""What an operator alerts on, scraped from /metrics of a running ingress and worker:
build info and the process collectors in both, labelled counters present at zero from
start-up, the end-to-end lag, unresolved rejections and the outbox read from PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import aiohttp
import asyncpg
from prometheus_client.parser import text_string_to_metric_families

from cdrflow.health import version
from cdrflow.settings import Settings
from schemas.record import SCHEMA_VERSION
from schemas.sources import Sources
from tests.support.ingress import ingress_client, push_all
from tests.support.processes import free_port
from tests.support.samples import Sample, sample
from tests.support.waiting import eventually
from tests.support.workers import running_worker
from workers.gauges import DatabaseGauges
from workers.worker_metrics import WorkerMetrics

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


async def scrape(http: aiohttp.ClientSession, url: str) -> Samples:
    async with http.get(url) as response:
        assert response.status == 200
        return parse(await response.text())


def assert_process_basics(samples: Samples) -> None:
    build = value(
        samples, "cdrflow_build_info", version=version(), schema_version=str(SCHEMA_VERSION)
    )
    assert build == 1.0
    assert (value(samples, "process_resident_memory_bytes") or 0) > 0
    assert (value(samples, "process_open_fds") or 0) > 0
    assert value(samples, "python_info", **_python_labels(samples)) == 1.0
    assert value(samples, "python_gc_collections_total", generation="0") is not None


def _python_labels(samples: Samples) -> dict[str, str]:
    return next(dict(labels) for name, labels in samples if name == "python_info")


async def test_ingress_metrics_exist_from_start_up(settings: Settings, sources: Sources) -> None:
    async with ingress_client(settings, sources) as client:
        samples = parse(await (await client.get("/metrics")).text())
    assert_process_basics(samples)
    for source in sources:
        for outcome in ("accepted", "unauthorized", "timeout", "unavailable", "too_large"):
            counter = "cdrflow_ingress_requests_total"
            assert value(samples, counter, source=source, outcome=outcome) == 0.0
    assert value(samples, "cdrflow_ingress_requests_total", source="-", outcome="not_found") == 0
    for reason in ("bad_request_line", "bad_chunk", "no_route"):
        assert value(samples, "cdrflow_ingress_unroutable_requests_total", reason=reason) == 0
    assert value(samples, "cdrflow_ingress_publish_failures_total", reason="TimeoutError") == 0


async def test_worker_reports_lag_rejections_and_build(
    settings: Settings, sources: Sources, db: asyncpg.Connection
) -> None:
    port = free_port()
    good = [sample("nx-voice") for _ in range(3)]
    bad = Sample("nx-cc", "", "POST", b"{", "application/json")
    worker_url = f"http://127.0.0.1:{port}/metrics"
    async with (
        running_worker(settings.with_(worker_port=port), sources),
        ingress_client(settings, sources) as client,
        aiohttp.ClientSession() as http,
    ):
        at_start = await scrape(http, worker_url)
        await push_all(client, [*good, bad])
        samples: Samples = {}

        async def reported() -> bool:
            nonlocal samples
            samples = await scrape(http, worker_url)
            unresolved = value(
                samples, "cdrflow_rejections_unresolved", source="nx-cc", reason="unparseable_body"
            )
            return value(samples, "cdrflow_worker_lag_seconds_count") == 3 and unresolved == 1

        assert await eventually(reported), samples
        ingress = parse(await (await client.get("/metrics")).text())

    assert_process_basics(at_start)
    assert value(at_start, "cdrflow_worker_deliveries_total", outcome="new_record") == 0
    assert value(at_start, "cdrflow_worker_rejected_total", reason="missing_field") == 0
    assert value(at_start, "cdrflow_worker_lag_seconds_count") == 0
    for source in sources:
        assert (
            value(at_start, "cdrflow_rejections_unresolved", source=source, reason="empty_body")
            == 0
        )

    lag_sum = value(samples, "cdrflow_worker_lag_seconds_sum") or 0.0
    assert 0 < lag_sum / 3 < 600  # stored within minutes of their receipt, not in the future
    assert value(samples, "cdrflow_worker_lag_seconds_bucket", le="3600.0") == 3
    assert value(samples, "cdrflow_worker_outbox_rows") is not None
    assert (
        value(ingress, "cdrflow_ingress_requests_total", source="nx-voice", outcome="accepted") == 3
    )


async def test_outbox_and_rejection_gauges_read_postgres(
    settings: Settings, db: asyncpg.Connection
) -> None:
    await db.execute(
        "INSERT INTO outbox (record_id, revision, routing_key, body, created_at)"
        " VALUES ($1, 1, 'k', 'b', now() - interval '1 hour'), ($2, 1, 'k', 'b', now())",
        uuid.uuid4(),
        uuid.uuid4(),
    )
    await _reject(db, "nx-voice", "missing_field", resolved=False)
    await _reject(db, "nx-voice", "missing_field", resolved=False)
    await _reject(db, "hw", "invalid_field", resolved=True)
    pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=1)
    try:
        metrics = WorkerMetrics(["nx-voice", "hw"])
        gauges = DatabaseGauges(pool, metrics, interval_seconds=1)
        await gauges.read_once()
        samples = parse(metrics.render().decode())
        assert value(samples, "cdrflow_worker_outbox_rows") == 2
        assert 3600 <= (value(samples, "cdrflow_worker_outbox_oldest_age_seconds") or 0) < 7200
        unresolved = "cdrflow_rejections_unresolved"
        assert value(samples, unresolved, source="nx-voice", reason="missing_field") == 2
        assert value(samples, unresolved, source="hw", reason="invalid_field") == 0

        # Resolved and emptied: the series stay, at zero.
        await db.execute("UPDATE rejected_callbacks SET resolved_at = now()")
        await db.execute("DELETE FROM outbox")
        await gauges.read_once()
        samples = parse(metrics.render().decode())
        assert value(samples, unresolved, source="nx-voice", reason="missing_field") == 0
        assert value(samples, "cdrflow_worker_outbox_rows") == 0
        assert value(samples, "cdrflow_worker_outbox_oldest_age_seconds") == 0
    finally:
        await pool.close()


async def _reject(db: asyncpg.Connection, source: str, reason: str, *, resolved: bool) -> None:
    await db.execute(
        "INSERT INTO rejected_callbacks (ingest_id, item, source, tenant, provider, received_at,"
        " reason, message, request, body, resolved_at)"
        " VALUES ($1, -1, $2, 't', 'p', now(), $3, 'm', '{}', 'x', $4)",
        uuid.uuid4(),
        source,
        reason,
        datetime.now(UTC) if resolved else None,
    )
