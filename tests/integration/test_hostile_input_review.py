"""Inputs an adversarial review got through, the ingress side, over real sockets and the
real RabbitMQ: compressed bodies cut short or compressed twice, and a token the log must
not show however it is spelled. What is answered 200 must be what is kept."""

from __future__ import annotations

import gzip
import io
import json
import random
import zlib
from collections.abc import AsyncIterator

import asyncpg
import pytest
from aio_pika.abc import AbstractChannel

from cdrflow.settings import Settings
from schemas.jsoncodec import loads
from schemas.sources import Sources
from tests.integration.test_edge import exchange, statuses, unroutable
from tests.support.broker import queue_depth, record_tap, take_envelopes
from tests.support.ingress import IngressClient, ingress_client
from tests.support.samples import Sample, envelope, sample
from tests.support.sources import TOKENS, callback_path
from tests.support.workers import publish_envelopes, running_worker

JSON = "application/json"


@pytest.fixture
async def client(settings: Settings, sources: Sources) -> AsyncIterator[IngressClient]:
    async with ingress_client(settings, sources) as client:
        yield client


def long_report() -> bytes:
    rng = random.Random(3)
    remark = "".join(rng.choice("abcdefghij") for _ in range(3000))
    return (
        '{"callSessionId":"T-trunc","callType":3,"callDuration":15,"remark":"' + remark + '"}'
    ).encode()


def raw_request(body: bytes, encoding: str) -> bytes:
    return (
        f"POST {callback_path('nx-cc')} HTTP/1.1\r\nHost: x\r\n"
        f"Content-Type: application/json\r\nContent-Encoding: {encoding}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


COMPRESSED = gzip.compress(long_report())
BROKEN = {
    "cut in half": (COMPRESSED[: len(COMPRESSED) // 2], "gzip"),
    "header only": (COMPRESSED[:10], "gzip"),
    "trailer cut": (COMPRESSED[:-4], "gzip"),
    "bad crc": (COMPRESSED[:-8] + bytes(8), "gzip"),
    "garbage after": (COMPRESSED + b"garbage!", "gzip"),
    "inner layer cut": (gzip.compress(COMPRESSED[:-4]), "gzip, gzip"),
    "deflate cut": (zlib.compress(long_report())[:-6], "deflate"),
    "brotli": (b"\x1b\x03\x00\xf8\xa5", "br"),
    "empty inner layer": (gzip.compress(b""), "deflate, gzip"),
}


@pytest.mark.parametrize(("body", "encoding"), BROKEN.values(), ids=BROKEN.keys())
async def test_a_body_that_does_not_decode_whole_is_refused_and_nothing_is_queued(
    client: IngressClient,
    settings: Settings,
    channel: AbstractChannel,
    log_output: io.StringIO,
    body: bytes,
    encoding: str,
) -> None:
    answer = await exchange(client, raw_request(body, encoding))
    assert statuses(answer) == [400], answer
    assert answer.endswith(b"\r\n\r\nerror")  # NXCloud's failure answer
    assert unroutable(client, "bad_content_encoding") == 1
    assert await queue_depth(channel, settings.raw_queue) == 0
    events = [loads(line) for line in log_output.getvalue().splitlines()]
    assert [e["reason"] for e in events if e["event"] == "request_unroutable"] == [
        "bad_content_encoding"
    ]


LAYERED = {
    "gzip, gzip": (gzip.compress(gzip.compress(long_report())), "gzip, gzip"),
    "x-gzip": (gzip.compress(long_report()), "x-gzip"),
    "GZIP": (gzip.compress(long_report()), "GZIP"),
    "deflate, gzip": (gzip.compress(zlib.compress(long_report())), "deflate, gzip"),
    "raw deflate": (zlib.compress(long_report(), wbits=-15), "deflate"),
    "identity, gzip": (gzip.compress(long_report()), "identity, gzip"),
    "two members": (
        gzip.compress(long_report()[:100]) + gzip.compress(long_report()[100:]),
        "gzip",
    ),
}


@pytest.mark.parametrize(("body", "encoding"), LAYERED.values(), ids=LAYERED.keys())
async def test_every_listed_layer_is_decoded_and_the_envelope_says_so(
    client: IngressClient,
    settings: Settings,
    channel: AbstractChannel,
    body: bytes,
    encoding: str,
) -> None:
    answer = await exchange(client, raw_request(body, encoding))
    assert statuses(answer) == [200], answer
    [envelope] = await take_envelopes(channel, settings.raw_queue, count=1)
    assert envelope.body == long_report()
    assert "content-encoding" not in envelope.headers
    assert envelope.headers["content-length"] == str(len(long_report()))


async def test_content_encoding_on_two_lines_is_every_layer(
    client: IngressClient, settings: Settings, channel: AbstractChannel
) -> None:
    body = gzip.compress(gzip.compress(long_report()))
    request = raw_request(body, "gzip").replace(
        b"Content-Encoding: gzip\r\n", b"Content-Encoding: gzip\r\nContent-Encoding: gzip\r\n"
    )
    assert statuses(await exchange(client, request)) == [200]
    [envelope] = await take_envelopes(channel, settings.raw_queue, count=1)
    assert envelope.body == long_report()


async def test_a_coding_the_ingress_does_not_know_is_kept_as_sent_with_its_header(
    client: IngressClient, settings: Settings, channel: AbstractChannel
) -> None:
    item = sample("nx-cc")
    answer = await exchange(client, raw_request(item.body, "UTF-8"))
    assert statuses(answer) == [200]
    [envelope] = await take_envelopes(channel, settings.raw_queue, count=1)
    assert envelope.body == item.body
    assert envelope.headers["content-encoding"] == "UTF-8"


async def test_a_bomb_in_the_inner_layer_is_413(
    client: IngressClient, settings: Settings, channel: AbstractChannel
) -> None:
    inner = gzip.compress(b"{" + b" " * (settings.max_body_bytes + 1) + b"}")
    answer = await exchange(client, raw_request(gzip.compress(inner), "gzip, gzip"))
    assert statuses(answer) == [413], answer
    assert await queue_depth(channel, settings.raw_queue) == 0


# --- a token in any spelling ------------------------------------------------------------


def percent(text: str) -> str:
    return "".join(f"%{ord(c):02x}" for c in text)


@pytest.mark.parametrize(
    "path",
    [
        "/v1//callbacks/nx-cc/{encoded}",
        "/v1/callbacks//nx-cc/{encoded}",
        "/V1/CALLBACKS/nx-cc/{encoded}",
        "/v1/callbacks%2Fnx-cc%2F{encoded}",
        "/nowhere/{encoded}",  # no callback path at all: the known token still goes
        "/nowhere/{upper}",
    ],
)
async def test_an_encoded_token_on_a_path_that_does_not_route_is_not_logged(
    client: IngressClient, log_output: io.StringIO, path: str
) -> None:
    token = TOKENS["nx-cc"]
    target = path.format(encoded=percent(token), upper=percent(token).upper())
    # Connection: close, so that the answer ends the exchange: a kept-alive connection would
    # wait out the ingress's header timeout for a next request.
    request = f"POST {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    answer = await exchange(client, request.encode())
    assert statuses(answer) == [404]
    logged = log_output.getvalue()
    [event] = [e for e in map(loads, logged.splitlines()) if e["event"] == "request_unroutable"]
    assert "[redacted]" in event["first_bytes"]
    for leak in (token, percent(token), percent(token).upper(), percent(token[:8])):
        assert leak not in logged


# --- stored as answered: NUL in a multipart part, -0, keys that collide -------------------


async def test_what_got_through_is_stored_and_published_as_the_row_says(
    settings: Settings, sources: Sources, channel: AbstractChannel, db: asyncpg.Connection
) -> None:
    boundary = "----cdrflowNUL"
    dr = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="messageid"\r\n\r\nnul-dr\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="phone"\r\n'
        f"Content-Transfer-Encoding: base64\r\n\r\nODYAMTM4\r\n"
        f'--{boundary}\r\nContent-Disposition: form-data; name="ext"\r\n'
        f"Content-Transfer-Encoding: quoted-printable\r\n\r\na=00b\r\n"
        f"--{boundary}--\r\n"
    ).encode()
    items = [
        Sample("nx-dr", "nul-dr", "POST", dr, f"multipart/form-data; boundary={boundary}"),
        Sample("nx-cc", "zero-cc", "POST", b'{"callSessionId":"zero-cc","cost":"-0"}', JSON),
        Sample(
            "nx-voice",
            "keys-voice",
            "POST",
            b'{"voiceId":"keys-voice","x\\u0000":"nul","x\\ufffd":"replacement","rate":-0.0}',
            JSON,
        ),
    ]
    async with record_tap(channel, settings) as tap:
        await publish_envelopes(channel, settings, [envelope(item) for item in items])
        async with running_worker(settings, sources):
            await tap.wait_for(3)
    assert await db.fetchval("SELECT count(*) FROM rejected_callbacks") == 0
    rows = {
        r["external_id"]: r
        for r in await db.fetch(
            "SELECT external_id, callee, user_data, cost::text, rate::text, extra::text"
            " FROM call_records"
        )
    }
    assert (rows["nul-dr"]["callee"], rows["nul-dr"]["user_data"]) == ("86\ufffd138", "a\ufffdb")
    assert json.loads(rows["keys-voice"]["extra"]) == {"x\ufffd": "replacement", "x\ufffd~1": "nul"}
    published = {loads(m.body)["external_id"]: loads(m.body) for m in tap.messages}
    assert published["zero-cc"]["cost"] == rows["zero-cc"]["cost"] == "0"
    assert published["keys-voice"]["rate"] == rows["keys-voice"]["rate"] == "0.0"


@pytest.mark.parametrize("refused", [True, False])
async def test_a_token_that_straddles_the_logged_bytes_is_not_logged_in_part(
    client: IngressClient, log_output: io.StringIO, refused: bool
) -> None:
    # The line is cut to its first 160 characters for the log: a token across the cut
    # must not leave its first half there.
    token = TOKENS["nx-cc"]
    padding = "p" * (160 - len("POST /nowhere/") - len(token) // 2)
    head = b"Host: x\r\nBad Header: 1\r\n" if refused else b"Host: x\r\nConnection: close\r\n"
    request = f"POST /nowhere/{padding}{token}/more HTTP/1.1\r\n".encode() + head + b"\r\n"
    answer = await exchange(client, request)
    assert statuses(answer) == ([400] if refused else [404])
    logged = log_output.getvalue()
    [event] = [e for e in map(loads, logged.splitlines()) if e["event"] == "request_unroutable"]
    assert event["first_bytes"].startswith(f"POST /nowhere/{padding}")
    assert token[:6] not in logged


def chunked_request(body: bytes, transfer: str, encoding: str = "") -> bytes:
    content_encoding = f"Content-Encoding: {encoding}\r\n" if encoding else ""
    return (
        f"POST {callback_path('nx-cc')} HTTP/1.1\r\nHost: x\r\n"
        f"Content-Type: application/json\r\n{content_encoding}"
        f"Transfer-Encoding: {transfer}\r\nConnection: close\r\n\r\n"
    ).encode() + (f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n")


@pytest.mark.parametrize(
    ("body", "transfer", "encoding"),
    [
        (gzip.compress(long_report()), "gzip, chunked", ""),
        (gzip.compress(long_report()), "GZIP,chunked", ""),
        (zlib.compress(long_report()), "deflate, chunked", ""),
        (gzip.compress(gzip.compress(long_report())), "gzip, chunked", "gzip"),
        (long_report(), "identity, chunked", ""),
    ],
)
async def test_a_transfer_coding_before_chunked_is_undone_too(
    client: IngressClient,
    settings: Settings,
    channel: AbstractChannel,
    body: bytes,
    transfer: str,
    encoding: str,
) -> None:
    answer = await exchange(client, chunked_request(body, transfer, encoding))
    assert statuses(answer) == [200], answer
    [envelope] = await take_envelopes(channel, settings.raw_queue, count=1)
    assert envelope.body == long_report()
    assert "content-encoding" not in envelope.headers


@pytest.mark.parametrize(
    ("body", "transfer"),
    [
        (COMPRESSED[: len(COMPRESSED) // 2], "gzip, chunked"),
        (long_report(), "compress, chunked"),  # the ingress cannot say it is still there
        (b"\x1b\x03\x00\xf8\xa5", "br, chunked"),
    ],
)
async def test_a_transfer_coding_that_cannot_be_undone_is_refused(
    client: IngressClient,
    settings: Settings,
    channel: AbstractChannel,
    body: bytes,
    transfer: str,
) -> None:
    answer = await exchange(client, chunked_request(body, transfer))
    assert statuses(answer) == [400], answer
    assert unroutable(client, "bad_content_encoding") == 1
    assert await queue_depth(channel, settings.raw_queue) == 0
