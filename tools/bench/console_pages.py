"""The console's page times on a large table: `python -m tools.bench.console_pages [N]`.

Seeds a scratch database with N records (1,000,000 by default; one delivery and one
revision each, four sources, numbers spread over caller and callee), serves the console
in this process, logs in as an operator and asks each page 50 times; prints the median and
p95 per page. The queue figures need RabbitMQ; the rest is PostgreSQL's."""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import asyncpg

from cdrflow.settings import Settings
from schemas.record import record_id_for
from tests.support.console import console_client, console_server
from tests.support.env import AMQP_URL, scratch_database
from workers.storage.migrate import migrate

ROUNDS = 50
SOURCES = ["nx-cc", "nx-dr", "nx-voice", "hw"]
SEED = """
INSERT INTO call_records (record_id, source, tenant, provider, event, external_id, status,
    caller, callee, raw, schema_version, received_at, first_seen_at, last_seen_at,
    content_hash, content_received_at, content_ingest_id, content_item)
SELECT ($3::uuid[])[i], ($2::text[])[1 + i % 4], 'acme', 'nxcloud', 'voice_report',
    'ext-' || i, (ARRAY['answered','no_answer','busy','failed'])[1 + (i / 7) % 4],
    '86' || (13000000000 + (i * 7919) % 999999999)::text,
    '+86' || (15000000000 + (i * 104729) % 999999999)::text,
    '{"a": 1}', 1, now() - make_interval(secs => i * 2), now() - make_interval(secs => i * 2),
    now() - make_interval(secs => i * 2), '\\x00', now(), gen_random_uuid(), 0
FROM generate_series(1::bigint, $1::bigint) AS i
"""
KEYS = "INSERT INTO call_keys (record_id, stored_at) SELECT record_id, stored_at FROM call_records"
DELIVERIES = """
INSERT INTO deliveries (ingest_id, item, record_id, received_at)
SELECT content_ingest_id, 0, record_id, received_at FROM call_records
"""
REVISIONS = """
INSERT INTO record_revisions (record_id, revision, content_hash, content, raw, ingest_id, item,
    received_at, first_seen_at, last_seen_at, delivery_count)
SELECT record_id, 1, '\\x01', '{"status": "answered"}', raw, content_ingest_id, 0, received_at,
    first_seen_at, last_seen_at, 1
FROM call_records
"""


async def seed(url: str, records: int) -> str:
    """Fill the database; returns a record id to open."""
    connection = await asyncpg.connect(url)
    try:
        # Each record's id is the uuid5 of its key, as the workers make it: readers find
        # records by it.
        ids = [record_id_for(SOURCES[i % 4], f"ext-{i}") for i in range(1, records + 1)]
        await connection.execute(SEED, records, SOURCES, ids)
        await connection.execute(KEYS)
        await connection.execute(DELIVERIES)
        await connection.execute(REVISIONS)
        await connection.execute("ANALYZE")
        record_id = await connection.fetchval(
            "SELECT record_id FROM call_records WHERE external_id = $1", f"ext-{records // 2}"
        )
    finally:
        await connection.close()
    return str(record_id)


def pages(record_id: str, records: int) -> dict[str, str]:
    return {
        "overview": "/",
        "search, latest": "/search",
        "search, number prefix 8613000": "/search?number=8613000",
        "search, number prefix +86150001": "/search?number=%2B86150001",
        "search, external id": f"/search?external_id=ext-{records // 3}",
        "search, source + status + time": (
            "/search?source=nx-dr&status=busy&since=2026-01-01T00:00"
        ),
        "a record": f"/records/{record_id}",
        "rejected callbacks": "/rejected",
    }


async def measure(records: int) -> list[tuple[str, float, float]]:
    async with scratch_database("console_bench") as url:
        await migrate(url)
        started = time.perf_counter()
        record_id = await seed(url, records)
        print(f"seeded {records:,} records in {time.perf_counter() - started:.0f} s")
        return await time_pages(url, record_id, records)


async def time_pages(url: str, record_id: str, records: int) -> list[tuple[str, float, float]]:
    """Each page ROUNDS times: (page, median ms, p95 ms)."""
    settings = Settings(amqp_url=AMQP_URL, database_url=url)
    rows = []
    with TemporaryDirectory() as workdir:
        async with (
            console_server(settings, Path(workdir), SOURCES) as base,
            console_client(base) as client,
        ):
            await client.login("olga")
            for name, path in pages(record_id, records).items():
                times = []
                for _ in range(ROUNDS):
                    begun = time.perf_counter()
                    status, _ = await client.get(path)
                    times.append((time.perf_counter() - begun) * 1000)
                    assert status == 200, (path, status)
                p95 = statistics.quantiles(times, n=20)[-1]
                rows.append((name, statistics.median(times), p95))
    return rows


def main() -> None:
    records = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    rows = asyncio.run(measure(records))
    print(f"| page ({records:,} records) | median ms | p95 ms |")
    print("|---|---|---|")
    for name, median, p95 in rows:
        print(f"| {name} | {median:.1f} | {p95:.1f} |")


if __name__ == "__main__":
    main()
