"""The console over HTTP, on the real RabbitMQ and PostgreSQL: nothing without login, CSRF
on every POST, login attempts limited, viewers masked and unable to act, and the pages'
contents from records that went through the real ingress and worker."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aio_pika
import aiohttp
import asyncpg
import pytest
from aio_pika.abc import AbstractChannel
from yarl import URL

from cdrflow.amqp import declare
from cdrflow.settings import Settings
from console.session import COOKIE
from schemas.record import record_id_for
from schemas.sources import Sources
from tests.support.broker import depth_becomes, queue_depth
from tests.support.console import (
    PASSWORDS,
    SECRET,
    console_client,
    console_server,
    write_test_users,
)
from tests.support.ingress import ingress_client, push_all
from tests.support.processes import command_env, free_port, start_cdrflow
from tests.support.samples import envelope, sample
from tests.support.waiting import eventually, one
from tests.support.workers import publish_envelopes, running_worker


@pytest.fixture
async def console(
    settings: Settings, sources: Sources, tmp_path: Path, database_url: str
) -> AsyncIterator[str]:
    async with console_server(settings, tmp_path, list(sources)) as base:
        yield base


async def records(db: asyncpg.Connection) -> int:
    return int(await db.fetchval("SELECT count(*) FROM call_records"))


async def test_an_anonymous_request_is_sent_to_the_login_page(console: str) -> None:
    async with console_client(console) as client:
        for path in ("/", "/search?number=86", "/dead", f"/records/{uuid.uuid4()}"):
            async with client.session.get(console + path, allow_redirects=False) as response:
                assert response.status == 302, path
                assert response.headers["Location"].startswith("/login?next=/")
        status, page = await client.get("/healthz")
        assert (status, page) == (200, '{"status": "alive"}')
        status, page = await client.get("/metrics")
        assert status == 200
        assert "cdrflow_console_logins_total" in page


async def test_the_session_cookie_is_httponly_strict_and_a_forged_one_is_nobody(
    console: str,
) -> None:
    async with console_client(console) as client:
        await client.get("/login")
        form = {"name": "olga", "password": "operator password", "next": "/"}
        status, _, answer = await client.post("/login", form, allow_redirects=False)
        assert status == 302
        [set_cookie] = answer.headers.getall("Set-Cookie")
        assert set_cookie.startswith(f"{COOKIE}=")
        assert {"HttpOnly", "SameSite=Strict", f"Max-Age={480 * 60}", "Path=/"} <= {
            part.strip() for part in set_cookie.split(";")
        }
        cookie = client.session.cookie_jar.filter_cookies(URL(console))[COOKIE]
        forged = cookie.value[:-2] + ("AA" if not cookie.value.endswith("AA") else "BB")
    async with console_client(console) as client:
        client.session.cookie_jar.update_cookies({COOKIE: forged})
        async with client.session.get(console + "/", allow_redirects=False) as response:
            assert response.status == 302


async def test_a_post_without_the_csrf_token_is_refused(console: str) -> None:
    async with console_client(console) as client:
        await client.login("olga")
        for path in ("/logout", "/dead/requeue", "/rejected/replay"):
            status, page, _ = await client.post(path, {"limit": "1"}, csrf=False)
            assert status == 403, path
            assert "CSRF token is missing or wrong" in page
        client.csrf = "x" * 43
        status, _, _ = await client.post("/logout", {})
        assert status == 403
        await client.get("/")  # the session's real token again
        status, page, _ = await client.post("/logout", {})
        assert (status, "Log in" in page) == (200, True)


async def test_logins_are_limited_after_five_failures(console: str) -> None:
    async with console_client(console) as client:
        await client.get("/login")
        for _ in range(5):
            status, page, _ = await client.post(
                "/login", {"name": "olga", "password": "guess", "next": "/"}
            )
            assert status == 401
            assert "Wrong name or password." in page
        status, page, _ = await client.post(
            "/login", {"name": "olga", "password": "operator password", "next": "/"}
        )
        assert status == 429
        assert "Too many failed attempts" in page


async def test_a_record_pushed_twice_is_found_by_number_with_what_changed(
    console: str, settings: Settings, sources: Sources, db: asyncpg.Connection
) -> None:
    first = sample("nx-cc")
    second = sample("nx-cc", first.external_id, variant=1)  # one more label
    async with ingress_client(settings, sources) as ingress, running_worker(settings, sources):
        await push_all(ingress, [first])
        assert await eventually(lambda: _revision(db, 1))
        await push_all(ingress, [second])
        assert await eventually(lambda: _revision(db, 2))
    record_id = record_id_for("nx-cc", first.external_id)
    await db.execute(
        "INSERT INTO reconciliation_discrepancies (source, external_id, record_id, field, ours,"
        " theirs) VALUES ('nx-cc', $1, $2, 'cost', '0.0135', '0.0200')",
        first.external_id,
        record_id,
    )

    async with console_client(console) as operator:
        await operator.login("olga")
        status, page = await operator.get("/search?number=%2B86%20138")  # "+86 138"
        assert status == 200
        assert f'href="/records/{record_id}"' in page
        assert "8613800000000" in page
        status, page = await operator.get(f"/records/{record_id}")
        assert status == 200
        assert "Revision 2 (shown)" in page
        assert (
            '<td>labels</td><td class="changed-from">[&#34;Intended customers&#34;]</td>'
            '<td class="changed-to">[&#34;Intended customers&#34;,&#34;High level&#34;]</td>'
        ) in page
        assert f"<code>{record_id}:2</code>" in page
        assert ", origin <strong>push</strong>." in page
        assert "<td>cost</td><td>0.0135</td><td>0.0200</td>" in page
        assert (
            "<code>acme.nxcloud.call_center_report.call_center_report.answered</code>" in (page)
            or ".answered</code>" in page
        )
        status, page = await operator.get("/search?number=999")
        assert "No record matches." in page

    async with console_client(console) as viewer:
        await viewer.login("victor")
        status, page = await viewer.get(f"/records/{record_id}")
        assert status == 200
        assert "8613800000000" not in page
        assert "861********00" in page


async def _revision(db: asyncpg.Connection, revision: int) -> bool:
    return bool(await db.fetchval("SELECT max(revision) = $1 FROM call_records", revision))


async def test_a_viewer_cannot_replay_or_requeue(console: str) -> None:
    async with console_client(console) as viewer:
        await viewer.login("victor")
        status, _ = await viewer.get("/rejected/preview?source=nx-cc")
        assert status == 403
        for path in ("/rejected/replay", "/dead/requeue"):
            status, page, _ = await viewer.post(path, {"source": "nx-cc", "limit": "1"})
            assert status == 403, path
            assert "only an operator may do this" in page


async def test_an_operator_replays_a_rejected_callback_after_a_dry_run(
    console: str, settings: Settings, sources: Sources, db: asyncpg.Connection
) -> None:
    callback = sample("nx-voice")
    rejected = envelope(callback)
    await db.execute(
        "INSERT INTO rejected_callbacks (ingest_id, item, source, tenant, provider, received_at,"
        " reason, message, request, body) VALUES ($1, 0, $2, $3, $4, $5, 'internal_error',"
        " 'a bug in the adapter', $6::jsonb, $7)",
        rejected.ingest_id,
        rejected.source,
        rejected.tenant,
        rejected.provider,
        rejected.received_at,
        '{"method": "POST", "path": "/v1/callbacks/nx-voice", "content_type": "application/json"}',
        rejected.body,
    )
    async with console_client(console) as operator:
        await operator.login("olga")
        status, page = await operator.get("/rejected")
        assert "a bug in the adapter" in page
        status, page = await operator.get("/rejected/preview?source=nx-voice&reason=internal_error")
        assert status == 200
        assert '<strong id="would-send">1</strong>' in page
        assert await records(db) == 0  # the preview sent nothing
        async with running_worker(settings, sources):
            status, page, _ = await operator.post(
                "/rejected/replay", {"source": "nx-voice", "reason": "internal_error"}
            )
            assert status == 200
            assert "1 request(s) sent again to the workers" in page

            async def stored() -> bool:
                return await records(db) == 1

            assert await eventually(stored)
    row = await one(db, "SELECT resolved_at, replay_count FROM rejected_callbacks")
    assert row["resolved_at"] is not None
    assert row["replay_count"] == 1


async def test_dead_letters_are_listed_and_an_operator_moves_them_back(
    console: str, settings: Settings, channel: AbstractChannel
) -> None:
    await publish_envelopes(channel, settings, [envelope(sample("hw"))])
    raw = await channel.get_queue(settings.raw_queue, ensure=False)
    message = await raw.get(no_ack=False, timeout=5)
    assert message is not None
    await message.reject(requeue=False)
    await declare(channel, settings.topology())
    await channel.default_exchange.publish(
        aio_pika.Message(b"junk", message_id="junk-1"), settings.dead_queue
    )

    async def parked() -> bool:
        return await queue_depth(channel, settings.dead_queue) == 2

    assert await eventually(parked)
    async with console_client(console) as operator:
        await operator.login("olga")
        status, page = await operator.get("/dead")
        assert "2 message(s) parked" in page
        assert "<td>hw</td>" in page
        assert "unreadable: message is not JSON" in page
        status, page, _ = await operator.post("/dead/requeue", {"limit": "0"})
        assert status == 200
        assert "1 message(s) (1 callback(s)) moved back; 1 unreadable message(s) left" in page
    assert await depth_becomes(channel, settings.raw_queue, 1)
    assert await depth_becomes(channel, settings.dead_queue, 1)


async def test_the_overview_shows_each_source_and_the_pipeline(
    console: str, settings: Settings, sources: Sources, db: asyncpg.Connection
) -> None:
    async with ingress_client(settings, sources) as ingress, running_worker(settings, sources):
        await push_all(ingress, [sample("nx-dr"), sample("nx-dr")])

        async def stored() -> bool:
            return await records(db) == 2

        assert await eventually(stored)
        async with console_client(console) as viewer:
            await viewer.login("victor")
            status, page = await viewer.get("/")
    assert status == 200
    assert f"{settings.raw_queue}: 0 message(s), 1 consumer(s)" in page
    assert '<a href="/search?source=nx-dr">nx-dr</a>' in page
    assert "<td>answered 2</td>\n    <td>2</td>" in page  # last hour; stored
    assert "Nothing needs a human." in page


async def test_cdrflow_console_serves_until_sigterm_and_never_logs_a_password(
    settings: Settings, db: asyncpg.Connection, tmp_path: Path
) -> None:
    users = write_test_users(tmp_path / "console-users")
    port = free_port()
    log = tmp_path / "console.log"
    env = command_env(
        settings, tmp_path, CDRFLOW_CONSOLE_USERS=str(users), CDRFLOW_CONSOLE_SECRET=SECRET
    )
    with log.open("ab") as output:
        process = await start_cdrflow(
            "console", "--port", str(port), env=env, stdout=output, stderr=subprocess.STDOUT
        )
    base = f"http://127.0.0.1:{port}"
    try:

        async def ready() -> bool:
            try:
                async with console_client(base) as client:
                    return (await client.get("/readyz"))[0] == 200
            except aiohttp.ClientError:
                return False

        assert await eventually(ready, timeout=15), log.read_text()
        async with console_client(base) as client:
            await client.login("olga")
            status, page = await client.get("/search")
            assert status == 200
            assert "No record matches." in page
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 15) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    logged = log.read_text()
    assert '"event":"console_login"' in logged
    assert PASSWORDS["olga"] not in logged
    assert SECRET not in logged


async def test_the_dead_letters_page_says_when_rabbitmq_does_not_answer(
    settings: Settings, sources: Sources, tmp_path: Path, database_url: str
) -> None:
    unreachable = settings.with_(amqp_url=f"amqp://guest:guest@127.0.0.1:{free_port()}/")
    async with (
        console_server(unreachable, tmp_path, list(sources)) as base,
        console_client(base) as client,
    ):
        await client.login("olga")
        status, page = await client.get("/dead")
    assert status == 503
    assert "RabbitMQ did not answer: " in page
