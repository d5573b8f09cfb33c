"""The ingress edge over raw sockets, on the real RabbitMQ (and PostgreSQL where a value
must be stored): request lines as real clients send them, what is still refused (request
smuggling), unroutable requests, errors aiohttp raises, compressed bodies, X-Forwarded-For,
the in-flight bound, and the drain on SIGTERM."""

from __future__ import annotations

import asyncio
import gzip
import io
import ipaddress
import os
import re
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qsl

import aiohttp
import asyncpg
import pytest
from aio_pika.abc import AbstractChannel

from cdrflow.settings import Settings
from ingress.edge import EdgeRequestHandler
from ingress.ingress_app import INGRESS, create_app
from ingress.ingress_server import make_runner
from schemas.jsoncodec import loads
from schemas.providers import default_registry
from schemas.sources import Sources
from tests.integration.test_processes import free_port
from tests.support.broker import take_envelopes
from tests.support.ingress import IngressClient, ingress_client
from tests.support.samples import sample, simulated
from tests.support.sources import ENVIRON, SOURCES_TOML, TOKENS, callback_path
from tests.support.waiting import eventually
from tests.support.workers import running_worker, settings_env
from tests.unit.test_requestline import DR_DOCUMENT_QUERY

STATUS = re.compile(rb"HTTP/1\.[01] (\d{3}) ")


@pytest.fixture
async def client(settings: Settings, sources: Sources) -> AsyncIterator[IngressClient]:
    async with ingress_client(settings, sources) as client:
        yield client


async def exchange(client: IngressClient, data: bytes) -> bytes:
    """Send raw bytes on one connection; everything answered until the server closes it."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 15)
    finally:
        writer.close()


def statuses(answer: bytes) -> list[int]:
    return [int(code) for code in STATUS.findall(answer)]


def raw_line(source: str, query: str, method: str = "GET") -> bytes:
    return f"{method} {callback_path(source)}?{query} HTTP/1.1\r\n".encode()


def unroutable(client: IngressClient, reason: str) -> float:
    registry = client.app[INGRESS].metrics.registry
    value = registry.get_sample_value(
        "cdrflow_ingress_unroutable_requests_total", {"reason": reason}
    )
    return value or 0.0


def the_dr_document_query(messageid: str, result: str = "Successful connection") -> str:
    query = DR_DOCUMENT_QUERY.replace("74078a0090f17e011505297261994", messageid)
    return query.replace("Successful connection", result)


# --- request lines as real clients send them -------------------------------------------


async def test_dr_request_lines_with_raw_spaces_and_utf8_are_stored_as_the_sender_meant(
    client: IngressClient, settings: Settings, sources: Sources, db: asyncpg.Connection
) -> None:
    english, chinese = f"doc-{uuid.uuid4().hex[:12]}", f"q-3-{uuid.uuid4().hex[:8]}"
    answer = await exchange(
        client,
        raw_line("nx-dr", the_dr_document_query(english))
        + b"Host: x\r\n\r\n"
        + raw_line("nx-dr", the_dr_document_query(chinese, "成功接通"))
        + b"Host: x\r\nConnection: close\r\n\r\n",
    )
    assert statuses(answer) == [200, 200], answer
    assert answer.count(b"success") == 2
    async with running_worker(settings, sources):
        for messageid in (english, chinese):

            async def stored(messageid: str = messageid) -> bool:
                found = await db.fetchval(
                    "SELECT count(*) FROM call_records WHERE external_id = $1", messageid
                )
                return bool(found == 1)

            assert await eventually(stored), messageid
    rows = await db.fetch(
        "SELECT external_id, status, started_at, ended_at FROM call_records"
        " WHERE external_id = ANY($1::text[])",
        [english, chinese],
    )
    assert {r["external_id"]: r["status"] for r in rows} == {
        english: "answered",
        chinese: "answered",
    }
    for row in rows:  # "2020-12-01 00:00:00" with its space, at the source's +08:00
        assert row["started_at"] == datetime(2020, 11, 30, 16, 0, tzinfo=UTC)
        assert row["ended_at"] == datetime(2020, 11, 30, 16, 0, 10, tzinfo=UTC)


@pytest.mark.parametrize("provider", sorted(default_registry()))
async def test_every_providers_callback_with_a_raw_query_is_routed_with_its_body_intact(
    client: IngressClient, settings: Settings, channel: AbstractChannel, provider: str
) -> None:
    item = simulated(provider, "raw-query-1")  # an id whose simulated callback has a body
    source = item.source
    content_type = item.content_type or "application/json"
    request = (
        raw_line(source, "note=a b&结果=成功\x01", method="POST")
        + f"Host: x\r\nContent-Type: {content_type}\r\n".encode()
        + f"Content-Length: {len(item.body)}\r\nConnection: close\r\n\r\n".encode()
        + item.body
    )
    assert statuses(await exchange(client, request)) == [200]
    [envelope] = await take_envelopes(channel, settings.raw_queue, count=1)
    assert dict(parse_qsl(envelope.query, errors="strict")) == {"note": "a b", "结果": "成功\x01"}
    assert envelope.body == item.body


@pytest.mark.parametrize("first_result", ["a b", "ab"])  # to repair, or a clean line
async def test_keep_alive_and_pipelining_repair_each_line_and_never_touch_a_body(
    client: IngressClient, settings: Settings, channel: AbstractChannel, first_result: str
) -> None:
    body = b"messageid=in-body&result=x HTTP/1.1\r\nGET /v1/callbacks/nx-dr/t?a b HTTP/1.1\r\n"
    first = (
        raw_line("nx-dr", f"messageid=one&result={first_result}", method="POST")
        + b"Host: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    second = raw_line("nx-dr", "messageid=two&result=成功 接通") + b"Host: x\r\n\r\n"
    third = raw_line("nx-dr", "messageid=three") + b"Host: x\r\nConnection: close\r\n\r\n"
    # One write, then the same requests trickled a few bytes at a time.
    for chunk_size in (len(first + second + third), 7):
        reader, writer = await asyncio.open_connection(client.host, client.port)
        data = first + second + third
        for start in range(0, len(data), chunk_size):
            writer.write(data[start : start + chunk_size])
            await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 15)
        writer.close()
        assert statuses(answer) == [200, 200, 200], answer
        envelopes = await take_envelopes(channel, settings.raw_queue, count=3)
        assert [e.body for e in envelopes] == [body, b"", b""]
        assert [dict(parse_qsl(e.query)) for e in envelopes] == [
            {"messageid": "one", "result": first_result},
            {"messageid": "two", "result": "成功 接通"},
            {"messageid": "three"},
        ]


async def test_the_jdk_http_client_is_accepted(
    client: IngressClient, settings: Settings, channel: AbstractChannel, tmp_path: Path
) -> None:
    """Java's HttpURLConnection as a provider runs it: the query string as given."""
    if shutil.which("java") is None:
        pytest.skip("no java here")
    program = Path(__file__).parent / "java" / "RawQueryPush.java"
    query = the_dr_document_query("jdk-1", "成功接通")
    url = client.make_url(callback_path("nx-dr")) + "?" + query
    result = await asyncio.to_thread(
        subprocess.run,
        ["java", "-Dfile.encoding=UTF-8", str(program), url],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["200", "success"]
    [envelope] = await take_envelopes(channel, settings.raw_queue, count=1)
    sent = dict(pair.split("=", 1) for pair in query.split("&"))
    assert dict(parse_qsl(envelope.query, keep_blank_values=True, errors="strict")) == sent


# --- what is still refused --------------------------------------------------------------

SMUGGLING = {
    "transfer_encoding_with_content_length": (
        b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ),
    "duplicate_content_length": b"Content-Length: 2\r\nContent-Length: 0\r\n\r\nab",
    "bare_lf": b"X-A: 1\nContent-Length: 0\r\n\r\n",
    "obs_fold": b"X-A: 1\r\n  folded\r\nContent-Length: 0\r\n\r\n",
}


@pytest.mark.parametrize("query", ["messageid=s-1", "messageid=s-1&result=a b"])
@pytest.mark.parametrize("pattern", sorted(SMUGGLING))
async def test_request_smuggling_patterns_are_still_refused(
    client: IngressClient,
    settings: Settings,
    channel: AbstractChannel,
    log_output: io.StringIO,
    pattern: str,
    query: str,
) -> None:
    request = raw_line("nx-dr", query, method="POST") + b"Host: x\r\n" + SMUGGLING[pattern]
    answer = await exchange(client, request)
    assert statuses(answer) == [400], answer
    assert unroutable(client, "bad_headers") == 1
    logged = [loads(line) for line in log_output.getvalue().splitlines()]
    [warning] = [e for e in logged if e["event"] == "request_unroutable"]
    assert warning["client"] == "127.0.0.1"
    assert warning["first_bytes"].startswith("POST /v1/callbacks/nx-dr/[redacted]?messageid")
    assert TOKENS["nx-dr"] not in log_output.getvalue()
    assert "Traceback" not in log_output.getvalue()
    # Nothing reached the queue: the next envelope is this one.
    assert statuses(
        await exchange(client, raw_line("nx-dr", "m=ok") + b"Host: x\r\nConnection: close\r\n\r\n")
    ) == [200]
    [envelope] = await take_envelopes(channel, settings.raw_queue, count=1)
    assert envelope.query == "m=ok"


async def test_a_line_that_cannot_be_repaired_is_counted_and_logged_without_its_token(
    client: IngressClient, log_output: io.StringIO
) -> None:
    answer = await exchange(client, raw_line("nx-dr", "a=1\rb=2") + b"Host: x\r\n\r\n")
    assert statuses(answer) == [400]
    assert unroutable(client, "bad_request_line") == 1
    event = next(
        loads(line)
        for line in log_output.getvalue().splitlines()
        if loads(line)["event"] == "request_unroutable"
    )
    assert event["level"] == "warning"
    assert event["first_bytes"] == "GET /v1/callbacks/nx-dr/[redacted]?a=1\rb=2 HTTP/1.1"
    assert TOKENS["nx-dr"] not in log_output.getvalue()


async def test_a_path_that_is_no_callback_is_counted(client: IngressClient) -> None:
    response = await client.post("/v1/callback/nx-dr/" + TOKENS["nx-dr"])
    assert response.status == 404
    assert unroutable(client, "no_route") == 1


async def test_a_wrong_token_gets_404_whatever_the_method(client: IngressClient) -> None:
    for method in ("PUT", "DELETE", "PATCH", "GET", "POST"):
        response = await client.request(method, callback_path("nx-cc", "wrong-token-000000"))
        assert response.status == 404, method
    right = await client.request("PUT", callback_path("nx-cc"))
    assert right.status == 405
    assert right.headers["Allow"] == "POST"


# --- errors aiohttp raises itself --------------------------------------------------------


@pytest.mark.parametrize(
    ("reason", "framing", "body"),
    [
        ("bad_chunk", b"Transfer-Encoding: chunked\r\n", b"zz\r\nabc\r\n0\r\n\r\n"),
        (
            "bad_content_encoding",
            b"Content-Encoding: gzip\r\nContent-Length: 12\r\n",
            b"not gzipped!",
        ),
    ],
)
async def test_a_body_aiohttp_cannot_decode_gets_the_failure_body_and_one_warning(
    client: IngressClient, log_output: io.StringIO, reason: str, framing: bytes, body: bytes
) -> None:
    request = (
        f"POST {callback_path('nx-cc')} HTTP/1.1\r\nHost: x\r\n".encode()
        + framing
        + b"Content-Type: application/json\r\n\r\n"
        + body
    )
    answer = await exchange(client, request)
    assert statuses(answer) == [400], answer
    assert answer.endswith(b"\r\n\r\nerror")  # NXCloud's failure body
    assert unroutable(client, reason) == 1
    logged = log_output.getvalue()
    events = [loads(line) for line in logged.splitlines()]
    assert [e["level"] for e in events if e["event"] == "request_unroutable"] == ["warning"]
    assert not [e for e in events if e["level"] in ("error", "critical")]
    assert "Traceback" not in logged


async def test_a_compressed_body_is_stored_as_the_provider_meant(
    client: IngressClient, settings: Settings, channel: AbstractChannel
) -> None:
    item = sample("nx-cc")
    response = await client.post(
        callback_path("nx-cc"),
        data=gzip.compress(item.body),
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
    )
    assert response.status == 200
    [envelope] = await take_envelopes(channel, settings.raw_queue, count=1)
    assert envelope.body == item.body
    assert "content-encoding" not in envelope.headers
    assert envelope.headers["content-length"] == str(len(item.body))


# --- client address behind proxies ------------------------------------------------------


async def test_x_forwarded_for_lines_are_combined_and_the_right_most_untrusted_hop_wins(
    settings: Settings, sources: Sources
) -> None:
    behind_proxy = settings.with_(trusted_proxies=(ipaddress.ip_network("127.0.0.0/8"),))
    async with ingress_client(behind_proxy, sources) as client:
        # The client writes an allowed address in its own line; HAProxy adds the real one.
        request = (
            f"POST {callback_path('fenced')} HTTP/1.1\r\nHost: x\r\n".encode()
            + b"X-Forwarded-For: 203.0.113.9\r\n"
            + b"X-Forwarded-For: 198.51.100.7\r\n"
            + b"Content-Length: 2\r\nConnection: close\r\n\r\n{}"
        )
        assert statuses(await exchange(client, request)) == [403]
        allowed = request.replace(b"198.51.100.7", b"203.0.113.10, 127.0.0.1")
        assert statuses(await exchange(client, allowed)) == [200]


# --- overload -------------------------------------------------------------------------


async def test_bodies_past_the_in_flight_bound_get_503_at_once(
    settings: Settings, sources: Sources, channel: AbstractChannel
) -> None:
    bounded = settings.with_(max_inflight_bytes=4096)
    async with ingress_client(bounded, sources) as client:
        inflight = client.app[INGRESS].inflight
        declared = await exchange(
            client,
            f"POST {callback_path('nx-cc')} HTTP/1.1\r\nHost: x\r\n".encode()
            + b"Content-Length: 5000\r\n\r\n",  # the body never comes: refused before reading
        )
        assert statuses(declared) == [503]
        assert declared.endswith(b"error")
        chunked = await exchange(
            client,
            f"POST {callback_path('nx-cc')} HTTP/1.1\r\nHost: x\r\n".encode()
            + b"Transfer-Encoding: chunked\r\n\r\n"
            + b"".join(b"400\r\n" + b"x" * 1024 + b"\r\n" for _ in range(5))
            + b"0\r\n\r\n",
        )
        assert statuses(chunked) == [503]
        assert inflight.held == 0
        small = await client.post(callback_path("nx-cc"), data=sample("nx-cc").body)
        assert small.status == 200
        assert inflight.held == 0
    await take_envelopes(channel, settings.raw_queue, count=1)


# --- the runner and the drain ---------------------------------------------------------


async def test_the_runner_serves_through_the_edge_protocol(
    settings: Settings, sources: Sources
) -> None:
    """The runner's server is the protocol factory of every connection, and it builds an
    EdgeRequestHandler."""
    runner = make_runner(create_app(settings, sources), settings)
    await runner.setup()
    try:
        assert runner.server is not None
        assert isinstance(runner.server(), EdgeRequestHandler)
    finally:
        await runner.cleanup()


async def test_sigterm_turns_readyz_503_and_keeps_serving_for_the_drain_period(
    settings: Settings, channel: AbstractChannel, tmp_path: Path
) -> None:
    sources = tmp_path / "sources.toml"
    sources.write_text(SOURCES_TOML)
    port = free_port()
    env = {
        **os.environ,
        **ENVIRON,
        **settings_env(settings),
        "CDRFLOW_SOURCES": str(sources),
        "CDRFLOW_DRAIN_SECONDS": "3",
        "CDRFLOW_SPOOL_DIR": str(tmp_path / "spool"),
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "cdrflow.cli", "ingress", "--host", "127.0.0.1", "--port", str(port)),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:

            async def ready_status() -> int:
                try:
                    async with session.get(base + "/readyz") as response:
                        return response.status
                except aiohttp.ClientError:
                    return 0

            async def ready_is(expected: int) -> bool:
                return await ready_status() == expected

            assert await eventually(lambda: ready_is(200))
            process.send_signal(signal.SIGTERM)
            assert await eventually(lambda: ready_is(503))
            # Draining: a new connection is still accepted and a callback still stored.
            connector = aiohttp.TCPConnector(force_close=True)
            async with (
                aiohttp.ClientSession(connector=connector) as fresh,
                fresh.post(base + callback_path("nx-cc"), data=sample("nx-cc").body) as pushed,
            ):
                assert pushed.status == 200
        _, logged = await asyncio.wait_for(process.communicate(), 30)
        assert process.returncode == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.communicate()
    assert b"ingress_draining" in logged
    assert b"ingress_stopped" in logged
    assert len(await take_envelopes(channel, settings.raw_queue, count=1)) == 1
