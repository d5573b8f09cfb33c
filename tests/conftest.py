"""Fixtures: a fresh database per test run, fresh RabbitMQ names per test."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aio_pika
import asyncpg
import pytest
from aio_pika.abc import AbstractChannel

from cdrflow import logs
from cdrflow.settings import Settings
from schemas.sources import Sources
from tests.support.env import AMQP_URL, POSTGRES_URL, RUN_ID, drop_database, unique
from tests.support.sources import load_test_sources
from workers.storage.migrate import migrate

TABLES = (
    "call_records",
    "call_keys",
    "record_revisions",
    "deliveries",
    "rejected_callbacks",
    "outbox",
    "reconciliation_runs",
    "reconciliation_discrepancies",
)
INTEGRATION = Path(__file__).parent / "integration"
# Every fixture that reaches RabbitMQ or PostgreSQL needs one of these (db and settings
# build on database_url).
SERVICE_FIXTURES = frozenset({"database_url", "channel"})


# Past the 20 s of pyproject: tests that push hundreds of callbacks through several
# processes. 5-10 s on an idle machine, 18-45 s on a loaded 2-core one (their own waits
# allow 60 s). Their owners may move these onto the tests as @pytest.mark.timeout(...).
LONGER_TIMEOUTS = {
    "test_a_worker_killed_mid_batch_loses_nothing_and_counts_nothing_twice": 90,
    "test_two_worker_processes_on_duplicate_heavy_traffic": 60,
    "test_a_consumer_that_starts_after_1000_records_reads_all_of_them": 60,
    "test_sigkill_while_spooling_loses_no_answered_callback_and_counts_a_torn_record": 60,
    "test_every_answer_the_ingress_gives_matches_the_openapi_document": 60,
}

# `make test` runs the suite on several pytest-xdist workers sharing the cores, so a test
# may take that many times as long as it does alone: its limit, there to end a hang, is
# scaled by as much.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the tests that need the real services, so `-m "not integration"` is the pure run;
    give the few long ones their limit."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if item.path.is_relative_to(INTEGRATION) or fixtures & SERVICE_FIXTURES:
            item.add_marker(pytest.mark.integration)
        seconds = LONGER_TIMEOUTS.get(getattr(item, "originalname", item.name))
        if seconds is not None:
            item.add_marker(pytest.mark.timeout(seconds))
        if WORKERS > 1:
            item.add_marker(pytest.mark.timeout(limit(config, item) * WORKERS), append=False)


def limit(config: pytest.Config, item: pytest.Item) -> float:
    """The test's pytest-timeout limit: its marker's, or the run's."""
    marker = item.get_closest_marker("timeout")
    if marker is not None and (marker.args or "timeout" in marker.kwargs):
        return float(marker.args[0] if marker.args else marker.kwargs["timeout"])
    return float(config.getoption("timeout", None) or config.getini("timeout"))


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    url = f"{POSTGRES_URL}/cdrflow_test_{RUN_ID}"
    asyncio.run(migrate(url))
    yield url
    asyncio.run(drop_database(f"cdrflow_test_{RUN_ID}"))


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection to the test database, emptied before the test."""
    connection = await asyncpg.connect(database_url)
    await connection.execute(f"TRUNCATE {', '.join(TABLES)}")
    try:
        yield connection
    finally:
        await connection.close()


@pytest.fixture
def sources() -> Sources:
    return load_test_sources()


@pytest.fixture
async def settings(database_url: str, tmp_path: Path) -> AsyncIterator[Settings]:
    """Settings whose queue and exchange names, and spool directory, belong to this test
    alone."""
    base = unique("t")
    settings = Settings(
        amqp_url=AMQP_URL,
        database_url=database_url,
        raw_queue=f"{base}.raw",
        dead_exchange=f"{base}.dead",
        dead_queue=f"{base}.dead",
        records_exchange=f"{base}.records",
        delivery_limit=5,
        batch_wait_ms=20,
        outbox_grace_seconds=1,
        outbox_interval_seconds=0.3,
        shutdown_timeout=5,
        db_retry_max_seconds=1,
        header_timeout=5,
        body_timeout=5,
        spool_dir=str(tmp_path / "spool"),
    )
    yield settings
    connection = await aio_pika.connect(AMQP_URL)
    try:
        channel = await connection.channel()
        for queue in (
            settings.raw_queue,
            settings.dead_queue,
            settings.topology().records_stream.name,
        ):
            with contextlib.suppress(Exception):
                await channel.queue_delete(queue)
            if channel.is_closed:
                channel = await connection.channel()
        for exchange in (settings.dead_exchange, settings.records_exchange):
            with contextlib.suppress(Exception):
                await channel.exchange_delete(exchange)
            if channel.is_closed:
                channel = await connection.channel()
    finally:
        await connection.close()


@pytest.fixture
async def channel() -> AsyncIterator[AbstractChannel]:
    connection = await aio_pika.connect(AMQP_URL)
    try:
        yield await connection.channel()
    finally:
        await connection.close()


@pytest.fixture(autouse=True)
def production_logs() -> None:
    """Logs as `cdrflow` writes them: JSON lines on stderr (pytest shows them for a failing
    test). Never structlog's development default, which renders each traceback with its
    local variables through rich: that made a test with the database down 5 to 10 times
    slower."""
    logs.configure("info", "json")


@pytest.fixture
def log_output() -> Iterator[io.StringIO]:
    """Everything logged during the test, as the JSON lines a production process writes."""
    stream = io.StringIO()
    logs.configure("debug", "json", stream)
    yield stream
    logs.configure("warning", "json", io.StringIO())
