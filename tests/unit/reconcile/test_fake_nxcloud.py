"""The local NXCloud voice-record query refuses what the documents forbid: the tests that
count no refusal would prove nothing if it refused nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import aiohttp
import pytest

from tests.support.fake_nxcloud import FakeNXCloud

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def fake() -> AsyncIterator[FakeNXCloud]:
    fake = await FakeNXCloud(min_interval=0.5, jitter=0.1).start()
    yield fake
    await fake.close()


def form(fake: FakeNXCloud, **changes: str) -> dict[str, str]:
    now = datetime.now(fake.zone)
    fields = {
        "appkey": fake.appkey,
        "secretkey": fake.secretkey,
        "voiceType": "0",
        "start_time": fake.local(now - timedelta(hours=2)),
        "end_time": fake.local(now),
        "page_size": "2",
        "page": "1",
    }
    return fields | changes


async def ask(fake: FakeNXCloud, **options: Any) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.post(fake.url, **options) as answer:
        document: dict[str, Any] = await answer.json()
        return document


async def test_it_lists_pages_and_refuses_each_broken_rule(fake: FakeNXCloud) -> None:
    now = datetime.now(fake.zone)
    for minute in range(3):
        start = now - timedelta(minutes=30 - minute)
        fake.add(0, {"messageid": minute, "start_time": fake.local(start)})
    first = await ask(fake, data=form(fake))
    assert first["code"] == "1"
    assert first["info"]["total"] == 3
    assert [r["messageid"] for r in first["info"]["rows"]] == [0, 1]
    assert (await ask(fake, data=form(fake, page="2")))["code"] == "10"  # too soon
    fake.arrivals.clear()
    second = await ask(fake, data=form(fake, page="2"))
    assert [r["messageid"] for r in second["info"]["rows"]] == [2]

    refused = {
        "not_a_form": {"json": form(fake)},
        "credentials": {"data": form(fake, secretkey="wrong")},
        "span": {"data": form(fake, start_time=fake.local(now - timedelta(hours=25)))},
        "horizon": {
            "data": form(
                fake,
                start_time=fake.local(now - timedelta(days=8)),
                end_time=fake.local(now - timedelta(days=7, hours=23)),
            )
        },
    }
    for rule, options in refused.items():
        fake.arrivals.clear()
        assert (await ask(fake, **options))["code"] != "1", rule
        assert getattr(fake.refusals, rule) == 1, rule
    assert fake.refusals.rate == 1
