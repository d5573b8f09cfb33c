"""The console in a real browser: Debian's chromium driven by Playwright, against the real
ingress, worker, RabbitMQ and PostgreSQL. One walk through, as an operator and a viewer
would take it; each page is photographed (into CDRFLOW_TEST_SCREENSHOTS when set: that is
how docs/console/*.png are made, else into the test's own directory)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import aio_pika
import asyncpg
import pytest
from aio_pika.abc import AbstractChannel
from playwright.async_api import Browser, Page, async_playwright

from cdrflow.settings import Settings
from schemas.sources import Sources
from tests.support.broker import queue_depth
from tests.support.console import PASSWORDS, console_server
from tests.support.ingress import ingress_client, push_all
from tests.support.samples import envelope, sample
from tests.support.waiting import eventually
from tests.support.workers import running_worker

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("CDRFLOW_TEST_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


async def log_in(page: Page, base: str, name: str) -> None:
    await page.goto(base + "/login")
    await page.fill("input[name=name]", name)
    await page.fill("input[name=password]", PASSWORDS[name])
    await page.click("button[type=submit]")
    await page.wait_for_url(base + "/")


async def csrf_of(page: Page) -> str:
    token = await page.locator("input[name=csrf]").first.get_attribute("value")
    assert token
    return token


async def reject_a_valid_callback(db: asyncpg.Connection) -> str:
    """A rejection a replay can now store (the adapter's bug fixed since)."""
    callback = sample("nx-voice")
    item = envelope(callback)
    await db.execute(
        "INSERT INTO rejected_callbacks (ingest_id, item, source, tenant, provider, received_at,"
        " reason, message, request, body) VALUES ($1, 0, $2, $3, $4, $5, 'internal_error',"
        " 'RuntimeError: a bug in the adapter', $6::jsonb, $7)",
        item.ingest_id,
        item.source,
        item.tenant,
        item.provider,
        item.received_at,
        '{"method": "POST", "path": "/v1/callbacks/nx-voice", "content_type": "application/json"}',
        item.body,
    )
    return callback.external_id


async def test_an_operator_and_a_viewer_use_the_console_in_a_browser(
    browser: Browser,
    shots: Path,
    settings: Settings,
    sources: Sources,
    channel: AbstractChannel,
    db: asyncpg.Connection,
    tmp_path: Path,
) -> None:
    first = sample("nx-cc")
    second = sample("nx-cc", first.external_id, variant=1)
    async with (
        console_server(settings, tmp_path, list(sources)) as base,
        ingress_client(settings, sources) as ingress,
        running_worker(settings, sources),
    ):
        await push_all(ingress, [first, sample("nx-dr"), sample("hw")])
        assert await eventually(lambda: _revision_of(db, first.external_id, 1))
        await push_all(ingress, [second])
        assert await eventually(lambda: _revision_of(db, first.external_id, 2))
        replayable = await reject_a_valid_callback(db)

        operator = await browser.new_context(viewport={"width": 1280, "height": 800})
        page = await operator.new_page()

        # Anonymous: sent to the login page.
        await page.goto(base + "/search")
        assert page.url == base + "/login?next=/search"
        await page.screenshot(path=shots / "login.png")
        await log_in(page, base, "olga")
        await page.screenshot(path=shots / "overview.png", full_page=True)

        # Find the record by its number, as a provider would write it.
        await page.click("text=Search")
        await page.fill("input[name=number]", "+86 138")
        await page.click("button:has-text('Search')")
        link = page.locator(f"a:has-text('{first.external_id}')")
        assert await link.count() == 1
        await page.screenshot(path=shots / "search.png", full_page=True)
        await link.click()
        assert await page.locator("h3", has_text="Revision 2 (shown)").count() == 1
        assert await page.locator("h3", has_text="Revision 1").count() == 1
        change = page.locator("table.changes tr", has_text="labels")
        assert await change.locator(".changed-from").inner_text() == '["Intended customers"]'
        assert (
            await change.locator(".changed-to").inner_text()
            == '["Intended customers","High level"]'
        )
        await page.screenshot(path=shots / "record.png", full_page=True)

        # Replay a rejected callback, after seeing what a dry run would send.
        await page.click("text=Rejected callbacks")
        await page.screenshot(path=shots / "rejected.png", full_page=True)
        await page.click("text=replay…")
        assert await page.locator("#would-send").inner_text() == "1"
        await page.screenshot(path=shots / "replay-preview.png", full_page=True)
        await page.click("button:has-text('Replay these 1 request(s)')")
        assert "1 request(s) sent again" in await page.locator("[role=status]").inner_text()
        assert await eventually(lambda: _stored(db, replayable))
        await page.goto(f"{base}/search?external_id={replayable}")
        assert await page.locator(f"a:has-text('{replayable}')").count() == 1

        # A POST without the CSRF token is refused, whoever sends it.
        refused = await operator.request.post(base + "/dead/requeue", form={"limit": "0"})
        assert refused.status == 403

        # Dead letters, as an operator sees them.
        await _worker_parks_garbage(channel, settings)
        await page.click("text=Dead letters")
        assert await page.locator("td", has_text="rejected ×1").count() == 1
        assert await page.locator("td", has_text="unreadable: message is not JSON").count() == 1
        await page.screenshot(path=shots / "dead-letters.png", full_page=True)

        # A viewer: numbers masked, and no replay.
        viewer = await browser.new_context(viewport={"width": 1280, "height": 800})
        page = await viewer.new_page()
        await log_in(page, base, "victor")
        await page.goto(f"{base}/search?number=8613800000000")
        assert await page.locator("td", has_text="861********00").count() >= 1
        assert "8613800000000" not in await page.locator("table").inner_text()
        preview = await page.goto(base + "/rejected/preview?source=nx-voice")
        assert preview is not None
        assert preview.status == 403
        await page.goto(base + "/rejected")
        forced = await viewer.request.post(
            base + "/rejected/replay", form={"csrf": await csrf_of(page), "source": "nx-voice"}
        )
        assert forced.status == 403
        assert "only an operator may do this" in await forced.text()
        await page.screenshot(path=shots / "viewer-search.png", full_page=True)


async def _revision_of(db: asyncpg.Connection, external_id: str, revision: int) -> bool:
    found = await db.fetchval(
        "SELECT revision FROM call_records WHERE external_id = $1", external_id
    )
    return int(found or 0) == revision


async def _stored(db: asyncpg.Connection, external_id: str) -> bool:
    return bool(
        await db.fetchval("SELECT count(*) FROM call_records WHERE external_id = $1", external_id)
    )


async def _worker_parks_garbage(channel: AbstractChannel, settings: Settings) -> None:
    """A message no worker can read: the running worker parks it in the dead-letter queue."""
    await channel.default_exchange.publish(
        aio_pika.Message(b"<xml>not a batch</xml>", message_id="garbage-1"), settings.raw_queue
    )

    async def parked() -> bool:
        return await queue_depth(channel, settings.dead_queue) == 1

    assert await eventually(parked)
