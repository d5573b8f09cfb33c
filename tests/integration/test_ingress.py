"""The ingress against the real RabbitMQ: every provider's body kinds, every refusal in
SPEC's table, durability (never 200 without a confirm), and concurrency."""

from __future__ import annotations

import asyncio
import io
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

import aiohttp
import pytest
from aio_pika.abc import AbstractChannel

from cdrflow.settings import Settings
from schemas.envelope import decode_batch
from schemas.jsoncodec import dumps, loads
from schemas.providers.huawei_aicc_release import render_map, sign
from schemas.sources import Sources
from tests.support.broker import queue_depth, take_envelopes, take_messages
from tests.support.ingress import IngressClient, ingress_client
from tests.support.proxy import broker_behind_proxy
from tests.support.samples import raw_batch_validator
from tests.support.sources import SECRETS, TOKENS, callback_path
from tests.support.waiting import eventually

CC_REPORT = {
    "callId": "c-1",
    "callSessionId": "20231117134248000001",
    "called": "8613800000000",
    "caller": "8675500000000",
    "ccode": "86",
    "ccodeName": "China",
    "callDuration": 15,
    "callType": 3,
    "hangupCode": "200",
    "hangupReason": 1,
    "hangingDirection": 0,
    "labels": ["Intended customers", "High level"],
    "callStartTime": "2023-11-17 13:42:30",
    "answerTime": "2023-11-17 13:42:33",
    "callEndTime": "2023-11-17 13:42:48",
}
HUAWEI_EVENT = {
    "callSerialNo": "1197765398201387012",
    "serviceNo": None,
    "called": "88880067",
    "caller": "960003",
    "releaseReason": "0",
    "talkingTime": "2022/02/22,10:04:30:418",
    "releaseTime": "2022/02/22,10:04:36:318",
    "talkDuration": "6",
}


@pytest.fixture
async def client(settings: Settings, sources: Sources) -> AsyncIterator[IngressClient]:
    async with ingress_client(settings, sources) as client:
        yield client


def signed_body(source: str, now: datetime | None = None) -> bytes:
    mode = "hmac-sha256" if source == "hw-hmac" else "sha256"
    event = sign(HUAWEI_EVENT, mode, SECRETS[source], now or datetime.now(UTC), random.Random(7))
    return render_map(event).encode()


# --- accepted, for every provider and body kind -----------------------------------

CASES = [
    ("nx-voice", "POST", b'{"voiceId":"v1","type":1,"rate":"0.023625"}', "application/json", ""),
    (
        "nx-voice",
        "POST",
        b'[{"voiceId":"v1"},{"voiceId":"v2","intent":"yes"}]',
        "application/json",
        "",
    ),
    ("nx-cc", "POST", dumps(CC_REPORT), "application/json;charset=UTF-8", ""),
    (
        "nx-dr",
        "POST",
        urlencode({"messageid": "m1", "result": "成功接通"}).encode(),
        "application/x-www-form-urlencoded",
        "",
    ),
    (
        "nx-dr",
        "GET",
        b"",
        "",
        urlencode({"messageid": "m2", "start_time": "2020-12-01 00:00:00"}, safe=":"),
    ),
    ("nx-dr", "POST", b"", "", "messageid=m3&result=Unsuccessful+connection"),
    ("hw", "POST", dumps(HUAWEI_EVENT), "application/json", ""),
    (
        "hw",
        "POST",
        urlencode({"callSerialNo": "1", "talkDuration": "0"}).encode(),
        "application/x-www-form-urlencoded",
        "",
    ),
    ("hw", "POST", render_map(HUAWEI_EVENT).encode(), "", ""),
    ("nx-voice", "POST", bytes(range(256)) * 3, "application/octet-stream", ""),  # binary-safe
]


@pytest.mark.parametrize(("source", "method", "body", "content_type", "query"), CASES)
async def test_every_body_kind_is_accepted_and_kept_byte_for_byte(
    client: IngressClient,
    channel: AbstractChannel,
    settings: Settings,
    sources: Sources,
    source: str,
    method: str,
    body: bytes,
    content_type: str,
    query: str,
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    path = callback_path(source) + (f"?{query}" if query else "")
    before = datetime.now(UTC)
    response = await client.request(method, path, data=body or None, headers=headers)

    assert response.status == 200
    expected = b'{"retCode":"0","retMsg":"success"}' if source.startswith("hw") else b"success"
    assert await response.read() == expected
    (envelope,) = await take_envelopes(channel, settings.raw_queue, count=1)
    assert envelope.body == body
    assert envelope.method == method
    assert envelope.query == query
    if content_type:  # without one, the test client itself sends application/octet-stream
        assert envelope.content_type == content_type
    assert envelope.path == f"/v1/callbacks/{source}"
    assert envelope.source == source
    assert (envelope.tenant, envelope.provider) == (
        sources[source].tenant,
        sources[source].provider,
    )
    assert before <= envelope.received_at <= datetime.now(UTC)
    assert envelope.received_at.tzinfo is UTC
    assert envelope.ingest_id.version == 7


async def test_envelope_carries_source_tenant_provider_client_and_kept_headers(
    client: IngressClient, channel: AbstractChannel, settings: Settings
) -> None:
    response = await client.post(
        callback_path("nx-dr"),
        data=b"messageid=m9",
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "User-Agent": "nxcloud-pusher/1.0",
            "Authorization": "Bearer should-not-be-kept",
            "Cookie": "session=nope",
        },
    )
    assert response.status == 200
    (envelope,) = await take_envelopes(channel, settings.raw_queue, count=1)
    assert (envelope.source, envelope.tenant, envelope.provider) == (
        "nx-dr",
        "globex",
        "nxcloud.voice_dr",
    )
    assert envelope.client == "127.0.0.1"
    assert envelope.headers["user-agent"] == "nxcloud-pusher/1.0"
    assert "authorization" not in envelope.headers
    assert "cookie" not in envelope.headers


async def test_signed_huawei_callbacks_are_accepted_in_both_modes(
    client: IngressClient, channel: AbstractChannel, settings: Settings
) -> None:
    for source in ("hw-hmac", "hw-sha"):
        response = await client.post(callback_path(source), data=signed_body(source))
        assert response.status == 200, source
        assert loads(await response.read()) == {"retCode": "0", "retMsg": "success"}
    envelopes = await take_envelopes(channel, settings.raw_queue, count=2)
    assert sorted(e.source for e in envelopes) == ["hw-hmac", "hw-sha"]


# --- refused ---------------------------------------------------------------------


async def test_unknown_source_and_wrong_token_get_the_same_404(
    client: IngressClient, channel: AbstractChannel, settings: Settings
) -> None:
    unknown = await client.post("/v1/callbacks/nope/" + "x" * 20, data=b"{}")
    wrong = await client.post(callback_path("nx-cc", "y" * 20), data=b"{}")
    almost = await client.post(callback_path("nx-cc", TOKENS["nx-cc"][:-1] + "X"), data=b"{}")
    assert unknown.status == wrong.status == almost.status == 404
    bodies = {await r.read() for r in (unknown, wrong, almost)}
    assert len(bodies) == 1
    assert {unknown.content_type, wrong.content_type} == {unknown.content_type}
    assert await queue_depth(channel, settings.raw_queue) == 0


async def test_address_outside_allow_cidrs_gets_403(
    client: IngressClient, channel: AbstractChannel, settings: Settings
) -> None:
    response = await client.post(callback_path("fenced"), data=b'{"voiceId":"1"}')
    assert response.status == 403
    assert await response.text() == "error"
    assert await queue_depth(channel, settings.raw_queue) == 0


async def test_trusted_proxy_forwarded_address_is_checked_against_allow_cidrs(
    settings: Settings, sources: Sources, channel: AbstractChannel
) -> None:
    import ipaddress

    behind_proxy = settings.with_(trusted_proxies=(ipaddress.ip_network("127.0.0.0/8"),))
    async with ingress_client(behind_proxy, sources) as client:
        inside = await client.post(
            callback_path("fenced"),
            data=b'{"voiceId":"1"}',
            headers={"X-Forwarded-For": "203.0.113.9"},
        )
        outside = await client.post(
            callback_path("fenced"),
            data=b'{"voiceId":"1"}',
            headers={"X-Forwarded-For": "198.51.100.1"},
        )
    assert (inside.status, outside.status) == (200, 403)
    (envelope,) = await take_envelopes(channel, settings.raw_queue, count=1)
    assert envelope.client == "203.0.113.9"


async def test_untrusted_peer_cannot_spoof_x_forwarded_for(client: IngressClient) -> None:
    response = await client.post(
        callback_path("fenced"), data=b'{"voiceId":"1"}', headers={"X-Forwarded-For": "203.0.113.9"}
    )
    assert response.status == 403


@pytest.mark.parametrize("source", ["hw-hmac", "hw-sha"])
async def test_bad_signature_gets_401_with_a_failing_retcode(
    client: IngressClient, channel: AbstractChannel, settings: Settings, source: str
) -> None:
    tampered = signed_body(source).replace(b"called=88880067", b"called=88880068")
    response = await client.post(callback_path(source), data=tampered)
    assert response.status == 401
    assert loads(await response.read())["retCode"] != "0"
    assert await queue_depth(channel, settings.raw_queue) == 0


@pytest.mark.parametrize("skew", [timedelta(minutes=-10), timedelta(minutes=10)])
async def test_timestamp_outside_the_allowed_skew_gets_401(
    client: IngressClient, skew: timedelta
) -> None:
    response = await client.post(
        callback_path("hw-hmac"), data=signed_body("hw-hmac", datetime.now(UTC) + skew)
    )
    assert response.status == 401
    assert loads(await response.read())["retCode"] != "0"


async def test_unsigned_body_on_a_signing_source_gets_401(client: IngressClient) -> None:
    response = await client.post(callback_path("hw-sha"), data=render_map(HUAWEI_EVENT).encode())
    assert response.status == 401


async def test_body_over_the_limit_gets_413(
    settings: Settings, sources: Sources, channel: AbstractChannel
) -> None:
    small = settings.with_(max_body_bytes=1000)
    async with ingress_client(small, sources) as client:
        declared = await client.post(callback_path("nx-cc"), data=b"x" * 1001)

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(5):
                yield b"y" * 300

        chunked = await client.post(callback_path("nx-cc"), data=chunks())
        fits = await client.post(callback_path("nx-cc"), data=b"z" * 1000)
    assert (declared.status, chunked.status, fits.status) == (413, 413, 200)
    (envelope,) = await take_envelopes(channel, settings.raw_queue, count=1)
    assert envelope.body == b"z" * 1000


async def test_methods_a_provider_does_not_use_get_405(client: IngressClient) -> None:
    response = await client.get(callback_path("nx-cc"))
    assert response.status == 405
    assert response.headers["Allow"] == "POST"


# --- durability: never a 200 without a confirm ---------------------------------------


async def assert_unavailable(client: IngressClient, dr_body: bytes) -> None:
    """Both answer styles say 503, and neither reads as success to its provider."""
    dr = await client.post(callback_path("nx-dr"), data=dr_body)
    hw = await client.post(callback_path("hw"), data=render_map(HUAWEI_EVENT).encode())
    assert (dr.status, await dr.text()) == (503, "error")
    assert hw.status == 503
    assert loads(await hw.read())["retCode"] != "0"


async def test_unroutable_publish_is_a_failure_not_a_200_without_a_spool(
    settings: Settings, sources: Sources, channel: AbstractChannel
) -> None:
    async with ingress_client(settings.with_(spool_max_bytes=0), sources) as client:
        await channel.queue_delete(settings.raw_queue)  # nothing can route the message now
        await assert_unavailable(client, b"messageid=lost")


async def test_without_a_spool_broker_gone_gives_503_and_readiness_follows_the_broker(
    settings: Settings, sources: Sources, channel: AbstractChannel
) -> None:
    async with (
        broker_behind_proxy(settings, confirm_timeout=2, spool_max_bytes=0) as (proxy, via_proxy),
        ingress_client(via_proxy, sources) as client,
    ):
        assert (await client.get("/readyz")).status == 200
        await proxy.cut()
        await assert_unavailable(client, b"messageid=during-outage")
        assert (await client.get("/readyz")).status == 503
        assert (await client.get("/healthz")).status == 200

        await proxy.restore()

        async def ready() -> bool:
            return (await client.get("/readyz")).status == 200

        assert await eventually(ready)
        after = await client.post(callback_path("nx-dr"), data=b"messageid=after-outage")
        assert after.status == 200
    envelopes = await take_envelopes(channel, settings.raw_queue, count=1)
    assert [e.body for e in envelopes] == [b"messageid=after-outage"]
    assert await queue_depth(channel, settings.raw_queue) == 0


# --- concurrency -------------------------------------------------------------------


async def test_a_thousand_concurrent_requests_are_all_confirmed_and_queued_once(
    client: IngressClient, channel: AbstractChannel, settings: Settings
) -> None:
    url = client.make_url(callback_path("nx-cc"))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def push(n: int) -> int:
            body = dumps({**CC_REPORT, "callSessionId": f"s{n}"})
            async with session.post(
                url, data=body, headers={"Content-Type": "application/json"}
            ) as r:
                await r.read()
                return r.status

        statuses = await asyncio.gather(*(push(n) for n in range(1000)))
    assert statuses == [200] * 1000
    messages = await take_messages(channel, settings.raw_queue, envelopes=1000, timeout=30)
    envelopes = [e for m in messages for e in decode_batch(m.body)]
    sessions = sorted(loads(e.body)["callSessionId"] for e in envelopes)
    assert sessions == sorted(f"s{n}" for n in range(1000))
    assert len({e.ingest_id for e in envelopes}) == 1000
    assert len(messages) < 1000  # coalesced: fewer confirms than requests
    for message in messages:
        assert message.delivery_mode == 2  # persistent
        batch = loads(message.body)
        raw_batch_validator().validate(batch)
        count = len(batch["envelopes"])
        assert message.headers["cdrflow-envelopes"] == count
        assert 1 <= count <= settings.coalesce_max_envelopes
    assert await queue_depth(channel, settings.raw_queue) == 0


# --- secrets and observability ---------------------------------------------------


async def test_the_token_is_never_logged_nor_put_in_an_envelope(
    settings: Settings, sources: Sources, channel: AbstractChannel, log_output: io.StringIO
) -> None:
    no_spool = settings.with_(spool_max_bytes=0)  # so that the unroutable publish is a 503
    async with ingress_client(no_spool, sources) as client:
        await client.post(callback_path("nx-cc"), data=dumps(CC_REPORT))
        await client.post(callback_path("nx-cc", "not-the-right-token-123"), data=b"{}")
        await client.post(callback_path("fenced"), data=b"{}")
        await client.post(callback_path("hw-sha"), data=b"{bad=signature}")
        await channel.queue_delete(settings.raw_queue)
        await client.post(callback_path("nx-dr"), data=b"messageid=x")  # 503 path logs too
    logged = log_output.getvalue()
    assert "callback_refused" in logged  # the capture works
    for token in [*TOKENS.values(), "not-the-right-token-123", *SECRETS.values()]:
        assert token not in logged


async def test_envelopes_never_hold_the_token(
    client: IngressClient, channel: AbstractChannel, settings: Settings
) -> None:
    await client.post(callback_path("nx-dr") + "?messageid=q1", data=b"")
    (message,) = await take_messages(channel, settings.raw_queue, envelopes=1)
    assert TOKENS["nx-dr"].encode() not in message.body


async def test_metrics_count_requests_and_measure_confirms(client: IngressClient) -> None:
    await client.post(callback_path("nx-cc"), data=dumps(CC_REPORT))
    await client.post(callback_path("nx-cc", "z" * 20), data=b"{}")
    text = await (await client.get("/metrics")).text()
    assert 'cdrflow_ingress_requests_total{outcome="accepted",source="nx-cc"} 1.0' in text
    assert 'cdrflow_ingress_requests_total{outcome="not_found",source="-"} 1.0' in text
    assert "cdrflow_ingress_confirm_seconds_count 1.0" in text
    assert "cdrflow_ingress_batch_envelopes_count 1.0" in text
    assert "cdrflow_ingress_broker_ready 1.0" in text
    assert "cdrflow_ingress_broker_connected 1.0" in text
    assert TOKENS["nx-cc"] not in text


# --- slow and malformed clients ------------------------------------------------------


async def test_a_client_slow_to_send_its_headers_is_disconnected(
    settings: Settings, sources: Sources
) -> None:
    quick = settings.with_(header_timeout=0.5)
    async with ingress_client(quick, sources) as client:
        reader, writer = await asyncio.open_connection(client.host, client.port)
        writer.write(b"POST " + callback_path("nx-cc").encode() + b" HTTP/1.1\r\nHost: x\r\n")
        await writer.drain()
        closed = False
        for _ in range(100):  # trickle a header line every 50 ms, for up to 5 s
            await asyncio.sleep(0.05)
            if reader.at_eof():
                closed = True
                break
            writer.write(b"X-Slow: 1\r\n")
            await writer.drain()
        writer.close()
    assert closed, "the server kept a connection whose headers never completed"


async def test_a_client_slow_to_send_its_body_gets_408(
    settings: Settings, sources: Sources, channel: AbstractChannel
) -> None:
    quick = settings.with_(body_timeout=0.5)
    async with ingress_client(quick, sources) as client:
        reader, writer = await asyncio.open_connection(client.host, client.port)
        head = f"POST {callback_path('nx-cc')} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
        writer.write(head.encode() + b'{"callSessionId":')
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 10)
        writer.close()
    assert status_line.startswith(b"HTTP/1.1 408")
    assert await queue_depth(channel, settings.raw_queue) == 0


async def test_a_request_line_with_raw_spaces_is_accepted_without_logging_the_token(
    client: IngressClient, log_output: io.StringIO
) -> None:
    # NXCloud's DR document shows its example URL with unencoded spaces; HTTP forbids them,
    # the ingress repairs the line (ingress/requestline.py, tests/integration/test_edge.py).
    reader, writer = await asyncio.open_connection(client.host, client.port)
    line = f"GET {callback_path('nx-dr')}?messageid=1&result=Successful connection HTTP/1.1"
    writer.write(line.encode() + b"\r\nHost: x\r\n\r\n")
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), 10)
    writer.close()
    assert status_line.split()[1] == b"200"
    assert TOKENS["nx-dr"] not in log_output.getvalue()


async def test_a_number_bomb_in_a_signed_body_is_refused_without_being_expanded(
    client: IngressClient,
) -> None:
    # 1e400000000 expanded would be 400 million digits, before the signature check.
    event = {**HUAWEI_EVENT, "talkDuration": "1e400000000"}
    body = dumps(sign(event, "sha256", "wrong-secret", datetime.now(UTC), random.Random(1)))
    body = body.replace(b'"1e400000000"', b"1e400000000")
    response = await client.post(
        callback_path("hw-sha"), data=body, headers={"Content-Type": "application/json"}
    )
    assert response.status == 401
