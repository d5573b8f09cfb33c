"""Reconciliation against a local NXCloud voice-record query that keeps the documented
rules (`tests/support/fake_nxcloud.py`), with a real worker, RabbitMQ and PostgreSQL:
`cdrflow reconcile` run as an operator runs it."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import asyncpg
import pytest
from aio_pika.abc import AbstractChannel

from cdrflow.settings import Settings
from reconciler.reconciler_metrics import ReconcileMetrics
from reconciler.runner import Reconciliation
from schemas.envelope import RawEnvelope, uuid7
from schemas.providers import default_registry
from schemas.sources import Sources, parse_zone
from schemas.sources_file import parse_sources
from tests.support.fake_nxcloud import FakeNXCloud
from tests.support.processes import free_port, start_cdrflow
from tests.support.waiting import eventually, one
from tests.support.workers import publish_envelopes, running_worker, settings_env

pytestmark = pytest.mark.timeout(120)

ZONE = parse_zone("+08:00")
BOOKS_ENV = {"TEST_NX_APPKEY": "fake-appkey", "TEST_NX_SECRETKEY": "fake-secretkey"}


def sources_toml(url: str, *names: str, **reconcile: Any) -> str:
    settings = {"page_size": 2, "settle_minutes": 0, **reconcile}
    lines = "".join(f"{key} = {value}\n" for key, value in settings.items())
    return "".join(
        f"""
[sources.{name}]
provider = "nxcloud.voice_dr"
tenant = "globex"
token = "tok-{name}-0123456789abcdef"
timezone = "+08:00"

[sources.{name}.reconcile]
url = "{url}"
appkey_env = "TEST_NX_APPKEY"
secretkey_env = "TEST_NX_SECRETKEY"
{lines}"""
        for name in names
    )


@dataclass
class Books:
    """The fake's calls around the last midnight in +08:00, and the window holding them."""

    fake: FakeNXCloud
    since: datetime
    until: datetime
    pushed: list[dict[str, Any]]
    never_pushed: list[dict[str, Any]]
    midnight: datetime


def row(message_id: Any, start: datetime, seconds: int, price: float = 0.036) -> dict[str, Any]:
    end = start + timedelta(seconds=seconds + 5)
    return {
        "id": abs(hash(str(message_id))) % 10**6,
        "messageid": message_id,
        "phone": "8615088888888",
        "countryCode": "86",
        "result": "Successful connection" if seconds else "Unsuccessful connection",
        "time": start.astimezone(ZONE).strftime("%Y-%m-%d %H:%M:%S"),
        "start_time": start.astimezone(ZONE).strftime("%Y-%m-%d %H:%M:%S"),
        "end_time": end.astimezone(ZONE).strftime("%Y-%m-%d %H:%M:%S"),
        "second": seconds,
        "cycle": 60,
        "size": -(-seconds // 60),
        "customer_price": price,
        "basic_price": 0.005,
    }


@pytest.fixture
async def books() -> AsyncIterator[Books]:
    fake = await FakeNXCloud().start()
    local_now = datetime.now(ZONE)
    midnight = (local_now - timedelta(hours=2)).replace(hour=0, minute=0, second=0, microsecond=0)
    hour = timedelta(hours=1)
    pushed = [
        row(f"{uuid7().hex[:29]}", midnight + hour / 2, 30),
        row(f"{uuid7().hex[:29]}", midnight + hour, 0),
        row(f"{uuid7().hex[:29]}", midnight + 1.5 * hour, 70),  # its books price differs
    ]
    never_pushed = [
        row(784522, midnight - 3 * hour + timedelta(minutes=1), 19),  # a numeric messageid
        row(f"{uuid7().hex[:29]}", midnight - timedelta(seconds=10), 20),  # across midnight
        row(f"{uuid7().hex[:29]}", midnight + 2 * hour, 45),
    ]
    # The books list by time: page 1 of the group calls holds two calls never pushed
    # (page size 2).
    for call in [never_pushed[0], never_pushed[1], pushed[0], pushed[2]]:
        fake.add(0, {**call, "customer_price": 0.05} if call is pushed[2] else call)
    for call in [pushed[1], never_pushed[2]]:
        fake.add(1, {**call, "voice_type": 1})
    yield Books(fake, midnight - 3 * hour, midnight + 3 * hour, pushed, never_pushed, midnight)
    await fake.close()


def push_of(call: dict[str, Any], voice_type: int) -> RawEnvelope:
    """The DR NXCloud pushed for a call: the row's fields as text, and what only a push has."""
    fields = {key: str(value) for key, value in call.items()}
    fields |= {"duration": fields["second"], "voice_type": str(voice_type)}
    fields |= {"hangup_cause": "NORMAL_CLEARING", "hangup_disposition": "send_bye"}
    return RawEnvelope(
        uuid7(), "books-dr", "globex", "nxcloud.voice_dr", datetime.now(UTC), "POST",
        "/v1/callbacks/books-dr", "", "application/x-www-form-urlencoded",
        urlencode(fields).encode(),
    )  # fmt: skip


def parse(text: str) -> Sources:
    return parse_sources(
        text, origin="t", environ=BOOKS_ENV, providers=default_registry(), reconcile_secrets=True
    )


async def reconcile(
    settings: Settings, tmp_path: Path, toml: str, *args: str
) -> tuple[int, str, str]:
    path = tmp_path / "books.toml"
    path.write_text(toml)
    env = {**settings_env(settings), **BOOKS_ENV, "CDRFLOW_SOURCES": str(path)}
    process = await start_cdrflow(
        "reconcile", *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 90)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def bounds(books: Books) -> tuple[str, ...]:
    return ("--since", books.since.isoformat(), "--until", books.until.isoformat())


async def stored(db: asyncpg.Connection) -> dict[str, asyncpg.Record]:
    rows = await db.fetch("SELECT * FROM call_records WHERE source = 'books-dr'")
    return {row["external_id"]: row for row in rows}


async def count_is(db: asyncpg.Connection, count: int) -> bool:
    return len(await stored(db)) == count


async def push_the_pushed(
    books: Books, channel: AbstractChannel, settings: Settings, db: asyncpg.Connection
) -> None:
    pushes = [push_of(books.pushed[0], 0), push_of(books.pushed[1], 1), push_of(books.pushed[2], 0)]
    await publish_envelopes(channel, settings, pushes)
    assert await eventually(lambda: count_is(db, 3))


async def test_reconcile_backfills_what_was_never_pushed_and_keeps_what_differs_once(
    books: Books,
    settings: Settings,
    db: asyncpg.Connection,
    channel: AbstractChannel,
    tmp_path: Path,
) -> None:
    toml = sources_toml(books.fake.url, "books-dr")
    async with running_worker(settings, parse(toml)):
        await push_the_pushed(books, channel, settings, db)
        code, out, err = await reconcile(settings, tmp_path, toml, *bounds(books))
        assert code == 0, out + err
        assert await eventually(lambda: count_is(db, 6)), out
        first = await stored(db)
        code, again, err = await reconcile(settings, tmp_path, toml, *bounds(books))
        assert code == 0, again + err
        await asyncio.sleep(0.5)  # a backfill sent by mistake would be stored by now
        second = await stored(db)

    across_midnight = books.never_pushed[1]
    assert {str(call["messageid"]) for call in books.pushed + books.never_pushed} == set(first)
    assert first["784522"]["talk_seconds"] == 19  # a numeric messageid, as text
    crossing = first[across_midnight["messageid"]]
    assert crossing["started_at"] == books.midnight - timedelta(seconds=10)
    assert crossing["ended_at"] == books.midnight + timedelta(seconds=15)
    differing = books.pushed[2]["messageid"]
    assert first[differing]["rate"] == Decimal("0.036")  # pushed content kept: never the books'
    # The second pass changed nothing: no record, revision or delivery more.
    assert {k: (r["revision"], r["delivery_count"]) for k, r in second.items()} == {
        k: (r["revision"], r["delivery_count"]) for k, r in first.items()
    }

    discrepancies = await db.fetch("SELECT * FROM reconciliation_discrepancies")
    assert [(d["external_id"], d["field"], d["ours"], d["theirs"]) for d in discrepancies] == [
        (differing, "rate", "0.036", "0.05")
    ]
    assert discrepancies[0]["record_id"] == first[differing]["record_id"]
    runs = await db.fetch("SELECT * FROM reconciliation_runs ORDER BY run_id")
    assert [
        (r["status"], r["provider_records"], r["stored"], r["backfilled"], r["discrepancies"])
        for r in runs
    ] == [("ok", 6, 3, 3, 1), ("ok", 6, 6, 0, 1)]
    assert "books-dr" in out
    assert "ok" in out
    assert books.fake.refusals.__dict__ == {
        "rate": 0, "credentials": 0, "parameters": 0, "horizon": 0, "span": 0,
        "not_a_form": 0, "injected": 0,
    }  # fmt: skip
    assert "fake-secretkey" not in out + err + again


async def test_a_dry_run_names_what_it_would_backfill_and_sends_nothing(
    books: Books,
    settings: Settings,
    db: asyncpg.Connection,
    channel: AbstractChannel,
    tmp_path: Path,
) -> None:
    toml = sources_toml(books.fake.url, "books-dr")
    async with running_worker(settings, parse(toml)):
        await push_the_pushed(books, channel, settings, db)
        code, out, err = await reconcile(settings, tmp_path, toml, *bounds(books), "--dry-run")
        await asyncio.sleep(0.5)
        assert await count_is(db, 3)
    assert code == 0, out + err
    for call in books.never_pushed:
        assert f"would backfill books-dr {call['messageid']}" in out
    assert await db.fetchval("SELECT count(*) FROM reconciliation_discrepancies") == 0


async def test_a_provider_answering_errors_fails_the_pass_and_the_next_pass_catches_up(
    books: Books,
    settings: Settings,
    db: asyncpg.Connection,
    channel: AbstractChannel,
    tmp_path: Path,
) -> None:
    # A lookback of 1 hour: the next pass reaches the failed window only because it failed.
    toml = sources_toml(books.fake.url, "books-dr", lookback_hours=1)
    books.fake.fail_after = 1  # the first page is answered, then "system busy"
    async with running_worker(settings, parse(toml)):
        await push_the_pushed(books, channel, settings, db)
        code, out, err = await reconcile(settings, tmp_path, toml, *bounds(books))
        assert code == 1, out + err
        later = str(books.never_pushed[2]["messageid"])
        # What was listed before the failure is backfilled all the same.
        assert await eventually(lambda: count_is(db, 5))
        assert later not in await stored(db)
        failed = await one(db, "SELECT * FROM reconciliation_runs")
        assert failed["status"] == "failed"
        assert "system busy" in failed["error"]
        assert "system busy" in out

        books.fake.fail_after = None
        code, out, err = await reconcile(settings, tmp_path, toml)
        assert code == 0, out + err
        assert await eventually(lambda: count_is(db, 6))
    windows = await db.fetch(
        "SELECT window_start, window_end, status FROM reconciliation_runs ORDER BY run_id"
    )
    assert (windows[0]["window_start"], windows[0]["window_end"]) == (books.since, books.until)
    retried = [w for w in windows[1:] if w["window_start"] == books.since]
    assert [w["status"] for w in retried] == ["ok"]


async def test_one_pass_per_source_at_a_time(
    books: Books, settings: Settings, db: asyncpg.Connection
) -> None:
    [source] = parse(sources_toml(books.fake.url, "books-dr")).values()
    stopping = asyncio.Event()
    first = Reconciliation(settings, default_registry(), stopping, ReconcileMetrics(), dry_run=True)
    second = Reconciliation(
        settings, default_registry(), stopping, ReconcileMetrics(), dry_run=True
    )
    async with first, second:
        running = asyncio.create_task(
            first.pass_over(source, books.since, books.until, wait_for_lock=False)
        )
        assert await eventually(lambda: _has_run(db))  # the first pass holds the source
        assert await second.pass_over(source, books.since, books.until, wait_for_lock=False) is None
        outcomes = await running
    assert outcomes is not None
    assert [o.status for o in outcomes] == ["ok"]


async def _has_run(db: asyncpg.Connection) -> bool:
    return bool(await db.fetchval("SELECT count(*) FROM reconciliation_runs"))


async def test_two_reconcilers_on_one_account_never_exceed_its_rate(
    books: Books, settings: Settings, db: asyncpg.Connection, tmp_path: Path
) -> None:
    port = free_port()
    processes = []
    for name in ("books-dr", "books-dr-2"):  # two sources of one account, one per process
        path = tmp_path / f"{name}.toml"
        path.write_text(sources_toml(books.fake.url, name, page_size=1, interval_minutes=60))
        env = {**settings_env(settings), **BOOKS_ENV, "CDRFLOW_SOURCES": str(path)}
        if name == "books-dr":
            env["CDRFLOW_RECONCILER_PORT"] = str(port)
        processes.append(
            await start_cdrflow(
                "reconciler",
                env=env,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )
        )

    async def both_listed_a_while() -> bool:
        return books.fake.answered >= 16

    try:
        assert await eventually(both_listed_a_while, timeout=60, interval=0.2)
        url = f"http://127.0.0.1:{port}/metrics"
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            metrics = await response.text()
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        codes = [await asyncio.wait_for(process.wait(), 30) for process in processes]
    assert codes == [0, 0]
    assert books.fake.refusals.rate == 0
    assert len(books.fake.arrivals) == 1  # one account
    sources = await db.fetch("SELECT DISTINCT source FROM reconciliation_runs ORDER BY source")
    assert [r["source"] for r in sources] == ["books-dr", "books-dr-2"]
    assert 'cdrflow_reconcile_provider_records_total{source="books-dr"}' in metrics
    # SIGTERM stopped them between two requests: a window in hand is recorded, never left
    # running (it stays due as failed when it was not listed whole).
    statuses = await db.fetch("SELECT DISTINCT status FROM reconciliation_runs")
    assert {r["status"] for r in statuses} <= {"ok", "failed"}


async def test_a_window_older_than_the_provider_keeps_is_reported_not_asked_for(
    books: Books, settings: Settings, db: asyncpg.Connection, tmp_path: Path
) -> None:
    now = datetime.now(UTC)
    since, until = now - timedelta(days=7, hours=2), now - timedelta(days=7) + timedelta(hours=1)
    toml = sources_toml(books.fake.url, "books-dr")
    code, out, err = await reconcile(
        settings, tmp_path, toml, "--since", since.isoformat(), "--until", until.isoformat()
    )
    assert code == 0, out + err
    runs = await db.fetch(
        "SELECT status, provider_records FROM reconciliation_runs ORDER BY run_id"
    )
    assert [(r["status"], r["provider_records"]) for r in runs] == [
        ("beyond_horizon", 0),
        ("ok", 0),
    ]
    assert "beyond_horizon" in out
    assert "older than the provider keeps (7 days)" in out
    assert books.fake.refusals.horizon == 0  # never asked the provider what it no longer has


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (("--source", "hw"), "source 'hw': no reconciliation (huawei.aicc_release has no"),
        (("--source", "nope"), "no source 'nope' in"),
        (("--since", "2026-12-02", "--until", "2026-12-01"), "--since (2026-12-02 00:00:00+00:00)"),
    ],
)
async def test_what_cannot_be_reconciled_is_a_usage_error(
    books: Books, settings: Settings, tmp_path: Path, args: tuple[str, ...], line: str
) -> None:
    toml = sources_toml(books.fake.url, "books-dr") + (
        '\n[sources.hw]\nprovider = "huawei.aicc_release"\ntoken = "tok-hw-0123456789abc"\n'
    )
    code, _, err = await reconcile(settings, tmp_path, toml, *args)
    assert code == 2
    assert err.strip().startswith("cdrflow: reconcile: ")
    assert line in err
    assert len(err.strip().splitlines()) == 1
    assert books.fake.answered == 0


async def test_a_reconciler_with_nothing_to_reconcile_says_so_and_idles_until_sigterm(
    settings: Settings, tmp_path: Path
) -> None:
    path = tmp_path / "plain.toml"
    path.write_text(
        '[sources.hw]\nprovider = "huawei.aicc_release"\ntoken = "tok-hw-0123456789abc"\n'
    )
    port = free_port()
    env = {
        **settings_env(settings),
        "CDRFLOW_SOURCES": str(path),
        "CDRFLOW_RECONCILER_PORT": str(port),
        "CDRFLOW_LOG_FORMAT": "json",
    }
    process = await start_cdrflow(
        "reconciler", env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )

    async def ready() -> bool:
        try:
            url = f"http://127.0.0.1:{port}/readyz"
            async with aiohttp.ClientSession() as session, session.get(url) as response:
                return response.status == 200
        except aiohttp.ClientError:
            return False

    try:
        assert await eventually(ready, timeout=15)
    finally:
        process.send_signal(signal.SIGTERM)
    output, _ = await asyncio.wait_for(process.communicate(), 15)
    assert process.returncode == 0
    assert '"event":"reconciler_idle"' in output.decode()


async def test_a_voice_report_source_that_states_its_ids_are_the_drs_is_backfilled_as_reports(
    books: Books, settings: Settings, db: asyncpg.Connection, tmp_path: Path
) -> None:
    toml = sources_toml(books.fake.url, "books-dr", same_ids_as_dr="true").replace(
        "nxcloud.voice_dr", "nxcloud.voice_report"
    )
    async with running_worker(settings, parse(toml)):
        code, out, err = await reconcile(settings, tmp_path, toml, *bounds(books))
        assert code == 0, out + err
        assert await eventually(lambda: count_is(db, 6))
    records = await stored(db)
    numeric = records["784522"]
    assert numeric["event"] == "voice_report"
    assert numeric["status"] == "answered"
    assert numeric["talk_seconds"] == 19
    assert numeric["ended_at"] - numeric["started_at"] == timedelta(seconds=24)
    unanswered = records[str(books.pushed[1]["messageid"])]
    assert unanswered["status"] != "answered"
    assert unanswered["call_type"] == "verification"
