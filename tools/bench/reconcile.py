"""`make bench-reconcile`: `cdrflow reconcile` over a day of 100,000 records in the local
NXCloud voice-record query (`tests/support/fake_nxcloud.py`), at the documented page size.

At the documented rate (one request a second) a day of 100,000 records is 1,000 pages: at
least 1,000 s whatever cdrflow does, which is no measurement of cdrflow. So the pass runs
with the fake's rate limit lifted, which gives cdrflow's own time, CPU and peak RSS for the
whole day; the table sets that against the documented floor. 99% of the records are
stored beforehand (1% differing in price), 1% are not: one realistic pass lists, compares
and backfills them.

    make bench-reconcile                              # 100,000 records
    make bench-reconcile BENCH_ARGS="--records 5000"  # seconds: proves it runs"""

from __future__ import annotations

import argparse
import asyncio
import resource
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aio_pika
import asyncpg

from cdrflow.settings import Settings
from schemas.record import record_id_for
from schemas.sources import parse_zone
from tests.support.env import AMQP_URL, scratch_database, unique
from tests.support.fake_nxcloud import FakeNXCloud
from tests.support.processes import start_cdrflow
from tests.support.workers import settings_env
from workers.storage.migrate import migrate

PAGE_SIZE = 100
DOCUMENTED_SECONDS_PER_REQUEST = 1.0
RSS_BUDGET_MB = 200
ZONE = parse_zone("+08:00")
ENV = {"BENCH_NX_APPKEY": "fake-appkey", "BENCH_NX_SECRETKEY": "fake-secretkey"}

# 99% of the records stored as a push would have stored them (1% at another price).
_STORE = """
INSERT INTO call_records (record_id, source, tenant, provider, event, external_id, status,
    talk_seconds, billed_seconds, rate, base_cost, raw, schema_version, received_at,
    first_seen_at, last_seen_at, content_hash, content_received_at, content_ingest_id,
    content_item)
SELECT ($2::uuid[])[i + 1], 'bench-dr', 'bench', 'nxcloud', 'voice_dr', 'bench-' || i,
    'answered', 30, 60, CASE WHEN i % 100 = 1 THEN 0.05 ELSE 0.036 END, 0.005, '{}', 1,
    now(), now(), now(), '\\x00', now(), gen_random_uuid(), 0
FROM generate_series(0, $1 - 1) AS i
WHERE i % 100 <> 0
"""


def sources_toml(url: str) -> str:
    return f"""
[sources.bench-dr]
provider = "nxcloud.voice_dr"
tenant = "bench"
token = "tok-bench-dr-0123456789"
timezone = "+08:00"

[sources.bench-dr.reconcile]
url = "{url}"
appkey_env = "BENCH_NX_APPKEY"
secretkey_env = "BENCH_NX_SECRETKEY"
voice_types = [0]
page_size = {PAGE_SIZE}
requests_per_second = 1000
"""


def seed(fake: FakeNXCloud, records: int, day: datetime) -> None:
    step = timedelta(days=1) / records
    for i in range(records):
        start = day + i * step
        fake.add(
            0,
            {
                "id": i,
                "messageid": f"bench-{i}",
                "phone": f"86150{i:08d}",
                "countryCode": "86",
                "result": "Successful connection",
                "time": fake.local(start),
                "start_time": fake.local(start),
                "end_time": fake.local(start + timedelta(seconds=35)),
                "second": 30,
                "cycle": 60,
                "size": 1,
                "customer_price": 0.036,
                "basic_price": 0.005,
            },
        )


async def measure(records: int, workdir: Path) -> list[str]:
    fake = FakeNXCloud(min_interval=0, jitter=0)
    day = (datetime.now(UTC) - timedelta(days=2)).replace(hour=0, minute=0, second=0, microsecond=0)
    seed(fake, records, day)
    await fake.start()
    try:
        async with scratch_database("bench_reconcile") as database_url:
            await migrate(database_url)
            connection = await asyncpg.connect(database_url)
            try:
                # Each record's id is the uuid5 of its key, as the workers make it.
                ids = [record_id_for("bench-dr", f"bench-{i}") for i in range(records)]
                await connection.execute(_STORE, records, ids)
                await connection.execute(
                    "INSERT INTO call_keys (record_id, stored_at)"
                    " SELECT record_id, stored_at FROM call_records"
                )
            finally:
                await connection.close()
            settings = Settings(database_url=database_url, raw_queue=unique("bench.reconcile"))
            try:
                return await _run(fake, settings, workdir, day, records)
            finally:
                await _delete_queue(settings.raw_queue)
    finally:
        await fake.close()


async def _run(
    fake: FakeNXCloud, settings: Settings, workdir: Path, day: datetime, records: int
) -> list[str]:
    path = workdir / "bench-sources.toml"
    path.write_text(sources_toml(fake.url))
    env = {**settings_env(settings), **ENV, "CDRFLOW_SOURCES": str(path)}
    bounds = ("--since", day.isoformat(), "--until", (day + timedelta(days=1)).isoformat())
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    process = await start_cdrflow(
        "reconcile",
        *bounds,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    peak = asyncio.create_task(_peak_rss_mb(process.pid))
    out, err = await process.communicate()
    wall = time.monotonic() - started
    peak_mb = await peak
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if process.returncode != 0:
        raise SystemExit(
            f"cdrflow reconcile exited {process.returncode}:\n{out.decode()}{err.decode()}"
        )
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    requests = fake.answered
    floor = requests * DOCUMENTED_SECONDS_PER_REQUEST
    return [
        f"reconcile: {records:,} provider records in one day, page size {PAGE_SIZE}, "
        f"{len(range(0, records, 100)):,} not stored",
        out.decode().strip(),
        f"requests to the provider: {requests:,}; at the documented 1 request/s: "
        f"at least {floor:,.0f} s ({floor / 60:.1f} min)",
        f"cdrflow's own pass (rate limit lifted): {wall:.1f} s wall, {cpu:.1f} s CPU, "
        f"peak RSS {peak_mb:.0f} MB (budget {RSS_BUDGET_MB} MB)",
        f"the provider's rate dominates: its floor is {floor / wall:.0f} times cdrflow's own time",
    ]


async def _peak_rss_mb(pid: int) -> float:
    """The process's own peak RSS (VmHWM), read until it exits. Not the children's
    ru_maxrss: a child is forked from this process, which holds the fake's 100,000 rows,
    and counts this process's pages until it execs."""
    peak = 0
    while (high_water := _high_water_kb(pid)) is not None:
        peak = max(peak, high_water)
        await asyncio.sleep(0.05)
    return peak / 1024


def _high_water_kb(pid: int) -> int | None:
    """VmHWM of a running process (a read of /proc: no disk), None once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return None


async def _delete_queue(name: str) -> None:
    connection = await aio_pika.connect(AMQP_URL)
    try:
        channel = await connection.channel()
        await channel.queue_delete(name)
    finally:
        await connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="cdrflow reconcile over a day of records")
    parser.add_argument("--records", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cdrflow-bench-reconcile-") as name:
        lines = asyncio.run(measure(args.records, Path(name)))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
