"""Completeness end to end: the ingress is down while NXCloud pushes N voice DRs into the
void (NXCloud pushes a DR once); `cdrflow reconcile` finds them in the provider's books and
they are stored and published as backfills; a second pass changes nothing; a late push of
one of them becomes its revision 2, a push again."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlencode

import aiohttp
import asyncpg
import pytest
from aio_pika.abc import AbstractChannel

from cdrflow.settings import Settings
from tests.integration.test_reconcile import (
    BOOKS_ENV,
    ZONE,
    parse,
    reconcile,
    row,
    sources_toml,
)
from tests.support.broker import record_tap
from tests.support.fake_nxcloud import FakeNXCloud
from tests.support.processes import free_port, ingress_process
from tests.support.waiting import eventually
from tests.support.workers import running_worker

pytestmark = pytest.mark.timeout(120)

N = 5
TOKEN = "tok-books-dr-0123456789abcdef"


def push_form(call: dict[str, object]) -> bytes:
    fields = {key: str(value) for key, value in call.items()}
    fields |= {"duration": fields["second"], "voice_type": "0"}
    fields |= {"hangup_cause": "NORMAL_CLEARING", "hangup_disposition": "send_bye"}
    return urlencode(fields).encode()


async def push(url: str, call: dict[str, object]) -> int | str:
    """NXCloud pushing one DR: the status it got, or why it got none."""
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.post(url, data=push_form(call), headers=headers) as response,
        ):
            return response.status
    except aiohttp.ClientConnectionError as exc:
        return type(exc).__name__


async def test_drs_pushed_while_the_ingress_was_down_are_backfilled_and_a_late_push_wins(
    settings: Settings, db: asyncpg.Connection, channel: AbstractChannel, tmp_path: Path
) -> None:
    fake = await FakeNXCloud().start()
    start = datetime.now(ZONE) - timedelta(hours=2)
    calls = [row(f"dr-{i:03d}-{start:%H%M%S}", start + timedelta(minutes=i), 30) for i in range(N)]
    for call in calls:
        fake.add(0, call)
    toml = sources_toml(fake.url, "books-dr", page_size=2)
    path = tmp_path / "books.toml"
    path.write_text(toml)
    since = (start - timedelta(minutes=5)).astimezone(UTC).isoformat()
    until = (start + timedelta(minutes=N + 5)).astimezone(UTC).isoformat()
    try:
        # The ingress is down: every push finds nothing listening, and NXCloud never retries.
        void = f"http://127.0.0.1:{free_port()}/v1/callbacks/books-dr/{TOKEN}"
        assert [await push(void, call) for call in calls] == ["ClientConnectorError"] * N

        async with (
            record_tap(channel, settings) as tap,
            running_worker(settings, parse(toml)),
            ingress_process(settings, tmp_path, CDRFLOW_SOURCES=str(path)) as ingress,
        ):
            code, out, err = await reconcile(
                settings, tmp_path, toml, "--since", since, "--until", until
            )
            assert code == 0, out + err
            await tap.wait_for(N)
            rows = await db.fetch("SELECT * FROM call_records ORDER BY external_id")
            assert [(r["external_id"], r["origin"], r["revision"]) for r in rows] == [
                (call["messageid"], "backfill", 1) for call in calls
            ]
            assert sorted(json.loads(m.body)["origin"] for m in tap.messages) == ["backfill"] * N

            code, out, err = await reconcile(
                settings, tmp_path, toml, "--since", since, "--until", until
            )
            assert code == 0, out + err
            late = calls[0]
            url = f"{ingress.url}/v1/callbacks/books-dr/{TOKEN}"
            assert await push(url, late) == 200

            async def revised() -> bool:
                return bool(
                    await db.fetchval(
                        "SELECT revision = 2 AND origin = 'push' FROM call_records"
                        " WHERE external_id = $1",
                        late["messageid"],
                    )
                )

            assert await eventually(revised)
            await tap.wait_for(N + 1)
        assert json.loads(tap.messages[-1].body)["origin"] == "push"
        assert await db.fetchval("SELECT count(*) FROM call_records") == N
        runs = await db.fetch("SELECT backfilled FROM reconciliation_runs ORDER BY run_id")
        assert [r["backfilled"] for r in runs] == [N, 0]
    finally:
        await fake.close()
    assert BOOKS_ENV["TEST_NX_SECRETKEY"] not in out + err
