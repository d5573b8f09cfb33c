"""The `cdrflow` command as operators run it: start-up checks, migrate, graceful stop."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import asyncpg
import pytest
from aio_pika.abc import AbstractChannel

from cdrflow.operations.replay_rejected import ReplaySelection, select_requests
from cdrflow.operations.simulator import simulate
from cdrflow.settings import Settings
from schemas.jsoncodec import dumps
from schemas.providers import default_registry
from schemas.sources import Sources
from tests.support.broker import queue_depth, take_envelopes
from tests.support.env import scratch_database
from tests.support.ingress import ingress_client
from tests.support.processes import cdrflow, free_port, ingress_process, start_cdrflow
from tests.support.proxy import database_behind_proxy
from tests.support.samples import Sample, envelope, sample
from tests.support.sources import ENVIRON, SOURCES_TOML, callback_path
from tests.support.waiting import eventually
from tests.support.workers import publish_envelopes, running_worker, settings_env
from workers.storage.migrate import LATEST, available, migrate, schema_version
from workers.worker import Worker

__all__ = ["free_port"]  # tests/integration/test_edge.py takes it from here


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        (
            '[sources.cc]\nprovider = "nxcloud.cc"\ntoken = "0123456789abcdef"\n',
            "source 'cc': field 'provider'",
        ),
        (
            '[sources.cc]\nprovider = "nxcloud.voice_dr"\ntoken = "short"\n',
            "source 'cc': field 'token'",
        ),
        (
            '[sources.cc]\nprovider = "nxcloud.voice_dr"\ntoken_env = "NOT_SET_ANYWHERE"\n',
            "field 'token_env'",
        ),
        (
            '[sources.cc]\nprovider = "nxcloud.voice_dr"\ntoken = "0123456789abcdef"\n'
            'timezone = "Mars/Base"\n',
            "field 'timezone'",
        ),
        (
            '[sources.cc]\nprovider = "nxcloud.voice_dr"\ntoken = "0123456789abcdef"\nextra = 1\n',
            "field 'extra': unknown key",
        ),
    ],
)
def test_a_wrong_sources_file_stops_the_ingress_at_once_with_one_line(
    tmp_path: Path, toml: str, expected: str
) -> None:
    path = tmp_path / "sources.toml"
    path.write_text(toml)
    result = cdrflow("ingress", "--port", "0", env={"CDRFLOW_SOURCES": str(path)}, timeout=20)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]
    assert str(path) in lines[0]


def test_a_missing_sources_setting_is_one_line_too() -> None:
    result = cdrflow("worker", env={"CDRFLOW_SOURCES": ""}, timeout=20)
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == "cdrflow: CDRFLOW_SOURCES is not set: it names the sources TOML file"
    )


def test_check_lists_the_sources(tmp_path: Path, settings: Settings) -> None:
    path = tmp_path / "sources.toml"
    path.write_text(SOURCES_TOML)
    env = {**settings_env(settings), "CDRFLOW_SOURCES": str(path), **ENVIRON}
    result = cdrflow("check", env=env)
    assert result.returncode == 0, result.stderr
    assert (
        "nx-cc: nxcloud.call_center_report tenant=acme timezone=+08:00 signing=none"
        in result.stdout
    )
    assert (
        "hw: huawei.aicc_release tenant=acme timezone=Asia/Shanghai signing=none;"
        " no reconciliation (huawei.aicc_release has no documented books)" in result.stdout
    )
    assert "tok-" not in result.stdout  # never the tokens


async def test_migrate_creates_the_database_and_is_idempotent() -> None:
    async with scratch_database("migrate", create=False) as url:
        first, second = await asyncio.gather(migrate(url), migrate(url))  # concurrent runs
        assert sorted(first + second) == [m.version for m in available()]
        assert await migrate(url) == []
        connection = await asyncpg.connect(url)
        try:
            assert await schema_version(connection) == LATEST
            tables = {
                r["tablename"]
                for r in await connection.fetch(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
                )
            }
        finally:
            await connection.close()
        assert {
            "call_records",
            "deliveries",
            "rejected_callbacks",
            "outbox",
            "cdrflow_migrations",
        } <= tables
        result = cdrflow("migrate", env={"CDRFLOW_DATABASE_URL": url})
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"schema at version {LATEST} (up to date)"


async def test_sigterm_lets_requests_in_flight_finish_and_loses_none(
    settings: Settings, channel: AbstractChannel, tmp_path: Path
) -> None:
    async with ingress_process(settings, tmp_path) as ingress, aiohttp.ClientSession() as session:

        async def push(n: int) -> int:
            body = dumps({"callSessionId": f"inflight-{n}"})
            url = ingress.url + callback_path("nx-cc")
            try:
                async with session.post(url, data=body) as response:
                    await response.read()
                    return response.status
            except aiohttp.ClientError:
                return 0  # refused: the server had stopped accepting

        pushes = [asyncio.create_task(push(n)) for n in range(300)]
        await asyncio.sleep(0.01)
        ingress.terminate()
        statuses = await asyncio.gather(*pushes)
        assert await ingress.exit_status() == 0
    accepted = statuses.count(200)
    assert accepted > 0
    assert set(statuses) <= {200, 0}  # every request answered was made durable: no 503, no 500
    envelopes = await take_envelopes(channel, settings.raw_queue, count=accepted, timeout=15)
    assert len(envelopes) == accepted  # every 200 is in the queue
    assert "ingress_stopped" in ingress.logged()


# --- replay, tail and simulate as commands ---------------------------------------------


async def test_replay_selects_by_source_reason_time_and_limit(
    settings: Settings,
    sources: Sources,
    channel: AbstractChannel,
    db: asyncpg.Connection,
    tmp_path: Path,
) -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    broken = [
        envelope(
            Sample("nx-cc", "", "POST", b"{broken", "application/json"), t0 + timedelta(hours=h)
        )
        for h in range(4)
    ]
    broken.append(envelope(Sample("nx-voice", "", "POST", b"{broken", "application/json"), t0))
    await publish_envelopes(channel, settings, broken)
    async with running_worker(settings, sources):
        assert await eventually(lambda: _rejected(db, 5))
    connection = await asyncpg.connect(settings.database_url)
    try:

        async def chosen(**selection: Any) -> list[datetime]:
            found = await select_requests(connection, ReplaySelection(**selection))
            return [e.received_at for e in found]

        assert len(await chosen()) == 5
        assert len(await chosen(source="nx-cc")) == 4
        assert len(await chosen(reason="unparseable_body")) == 5
        assert await chosen(
            source="nx-cc", since=t0 + timedelta(hours=1), until=t0 + timedelta(hours=3)
        ) == [
            t0 + timedelta(hours=1),
            t0 + timedelta(hours=2),
        ]
        assert await chosen(source="nx-cc", limit=2) == [
            t0,
            t0 + timedelta(hours=1),
        ]  # oldest first
    finally:
        await connection.close()
    result = cdrflow(
        "replay",
        "--source",
        "nx-cc",
        "--since",
        "2026-01-01T02:00:00",
        "--dry-run",
        env=settings_env(settings),
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0].split("\t")[:3] == ["nx-cc", "unparseable_body", "2"]
    assert lines[0].endswith("oldest 2026-01-01T02:00:00+00:00")
    assert lines[-1] == "2 request(s) would be sent again"


async def _rejected(db: asyncpg.Connection, count: int) -> bool:
    return int(await db.fetchval("SELECT count(*) FROM rejected_callbacks")) >= count


async def test_tail_as_a_command_prints_records(
    settings: Settings, channel: AbstractChannel
) -> None:
    process = await start_cdrflow(
        *("tail", "acme.#", "--count", "1"),
        env=settings_env(settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    exchange = await channel.declare_exchange(settings.records_exchange, "topic", durable=True)
    record = b'{"record_id":"r1","tenant":"acme"}'
    for _ in range(100):  # until the command has bound its queue and printed one record
        await exchange.publish(
            aio_pika.Message(record), routing_key="acme.nxcloud.voice_dr.answered"
        )
        await exchange.publish(aio_pika.Message(b'{"other":1}'), routing_key="globex.huawei.x.y")
        if process.returncode is not None:
            break
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(process.wait(), 0.2)
    out, err = await asyncio.wait_for(process.communicate(), 10)
    assert process.returncode == 0, err
    assert out.decode().splitlines() == [record.decode()]


async def test_simulate_pushes_every_source_with_repushes_and_bad_bodies(
    settings: Settings, sources: Sources, channel: AbstractChannel
) -> None:
    open_sources = Sources({n: s for n, s in sources.items() if not s.allow_cidrs})
    async with ingress_client(settings, sources) as client:
        report = await simulate(
            client.make_url(""),
            open_sources,
            default_registry(),
            rate=500,
            count=60,
            repush=0.3,
            bad=0.2,
            seed=5,
        )
    assert report.repushes > 0
    assert report.bad > 0
    assert report.sent == 60  # re-pushes and bad bodies are part of --count
    assert report.errors == 0
    assert sum(report.statuses.values()) == report.sent
    assert set(report.statuses) <= {200, 401}  # corrupted signed bodies fail their signature
    envelopes = await take_envelopes(channel, settings.raw_queue, count=report.statuses[200])
    assert len(envelopes) == report.statuses[200]
    assert {e.source for e in envelopes} >= {"nx-voice", "nx-cc", "nx-dr", "hw"}


# --- stopping and starting ---------------------------------------------------------


async def test_at_shutdown_with_the_database_down_the_work_is_handed_back(
    settings: Settings, sources: Sources, channel: AbstractChannel
) -> None:
    async with database_behind_proxy(settings, shutdown_timeout=1) as (proxy, via_proxy):
        async with running_worker(via_proxy, sources):
            await proxy.cut()
            await publish_envelopes(
                channel, settings, [envelope(sample("nx-dr")) for _ in range(5)], per_message=1
            )

            async def holding() -> bool:
                return await queue_depth(channel, settings.raw_queue) < 5

            assert await eventually(holding)
        # the worker has stopped: what it held is back in the queue
        assert await eventually(lambda: _depth(channel, settings, 5))


async def _depth(channel: AbstractChannel, settings: Settings, depth: int) -> bool:
    return await queue_depth(channel, settings.raw_queue) == depth


async def test_a_worker_waits_for_the_schema_then_starts(
    settings: Settings, sources: Sources
) -> None:
    async with scratch_database("unmigrated") as url:
        worker = Worker(settings.with_(database_url=url), sources, default_registry())
        task = asyncio.create_task(worker.run())
        try:
            await asyncio.sleep(1.5)
            assert not worker.consuming.is_set()  # no schema: it takes no work
            await migrate(url)
            await asyncio.wait_for(worker.consuming.wait(), 15)
        finally:
            worker.stop()
            await asyncio.wait_for(task, 15)


async def test_migrate_upgrades_a_version_1_database_and_keeps_its_rows() -> None:
    async with scratch_database("upgrade") as url:
        connection = await asyncpg.connect(url)
        try:
            version_1 = next(m for m in available() if m.version == 1)
            await connection.execute(version_1.sql)
            await connection.execute(
                "CREATE TABLE cdrflow_migrations (version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now());"
                "INSERT INTO cdrflow_migrations (version, name) VALUES (1, 'initial')"
            )
            await connection.execute(
                "INSERT INTO call_records (record_id, source, tenant, provider, event, external_id,"
                " status, raw, schema_version, received_at, first_seen_at, last_seen_at,"
                " content_hash, content_received_at, content_ingest_id, content_item)"
                " VALUES (gen_random_uuid(), 's', 't', 'nxcloud', 'voice_dr', 'kept', 'answered',"
                " '{}', 1, now(), now(), now(), '\\x00', now(), gen_random_uuid(), 0)"
            )
            assert await migrate(url) == [m.version for m in available() if m.version > 1]
            assert await connection.fetchval("SELECT external_id FROM call_records") == "kept"
            key = await connection.fetchval(
                "SELECT pg_get_constraintdef(oid) FROM pg_constraint"
                " WHERE conname = 'call_records_pkey'"
            )
            # The key is call_keys' (record_id, the uuid5 of source and external id); the
            # records are partitioned by stored_at, which their primary key holds.
            assert key == "PRIMARY KEY (record_id, stored_at)"
            assert await connection.fetchval("SELECT count(*) FROM call_keys") == 1
        finally:
            await connection.close()
