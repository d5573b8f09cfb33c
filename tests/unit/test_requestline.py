"""Request-line repair: what real clients send becomes a line aiohttp parses, with the
query the sender meant; anything else is left for the parser to refuse."""

from __future__ import annotations

import asyncio
from urllib.parse import parse_qsl, urlsplit

import pytest
from aiohttp.http_parser import HttpRequestParser

from ingress.edge import scrub_token
from ingress.requestline import repair_request_line

# The NXCloud voice DR document's own push example, byte for byte.
DR_DOCUMENT_QUERY = (
    "phone=8615088888888&countryCode=86&duration=10&voice_type=0"
    "&messageid=74078a0090f17e011505297261994&basic_price=0.005&second=10&cycle=60&size=1"
    "&customer_price=0.036&start_time=2020-12-01 00:00:00&end_time=2020-12-01 00:00:10"
    "&result=Successful connection&hangup_cause=NORMAL_CLEARING&hangup_disposition=send_bye"
    "&ivr_result="
)


def query_of(line: bytes) -> dict[str, str]:
    target = line.split(b" ")[1].decode("ascii")
    return dict(parse_qsl(urlsplit(target).query, keep_blank_values=True, errors="strict"))


def test_the_dr_documents_example_keeps_every_value() -> None:
    line = f"GET /v1/callbacks/nx-dr/tok?{DR_DOCUMENT_QUERY} HTTP/1.1".encode()
    repaired = repair_request_line(line)
    assert repaired.count(b" ") == 2
    assert query_of(repaired) == dict(pair.split("=", 1) for pair in DR_DOCUMENT_QUERY.split("&"))


def test_raw_utf8_becomes_percent_escapes_that_decode_to_the_same_text() -> None:
    line = "POST /v1/callbacks/nx-dr/tok?messageid=q-3&result=成功接通 HTTP/1.0".encode()
    repaired = repair_request_line(line)
    assert repaired.isascii()
    assert repaired.endswith(b" HTTP/1.0")
    assert query_of(repaired) == {"messageid": "q-3", "result": "成功接通"}


def test_a_control_character_is_escaped_too() -> None:
    repaired = repair_request_line(b"GET /a?x=1\t2\x7f HTTP/1.1")
    assert repaired == b"GET /a?x=1%092%7F HTTP/1.1"


def test_a_well_formed_line_is_returned_as_it_is() -> None:
    line = b"GET /v1/callbacks/nx-dr/tok?a=1&b=%20 HTTP/1.1"
    assert repair_request_line(line) is line


@pytest.mark.parametrize(
    "line",
    [
        b"GET /a?x=1 2\nHost: evil HTTP/1.1",  # a bare LF: smuggling, the parser must see it
        b"GET /a?x=1 2\rHost: evil HTTP/1.1",  # a bare CR
        b"GET /a b HTTP/2.0",  # not HTTP/1.x
        b"GET /a b HTTP/1.1 ",  # the version is not at the end
        b"G\xc3T /a b HTTP/1.1",  # the method is not a token
        b"GET HTTP/1.1",  # no target
        b"",
    ],
)
def test_lines_of_another_shape_are_left_for_the_parser_to_refuse(line: bytes) -> None:
    assert repair_request_line(line) == line


async def test_the_parser_refuses_exactly_the_bytes_repair_escapes() -> None:
    """Pins aiohttp's parser: a target byte outside visible ASCII is refused, and the
    repaired line is accepted, except with a CR or LF in it. If aiohttp starts accepting
    more, repair is still harmless; if it refuses more, this fails."""

    def parses(line: bytes) -> bool:
        parser = HttpRequestParser(
            None, asyncio.get_running_loop(), 2**16, max_line_size=8190, max_field_size=8190
        )
        try:
            parser.feed_data(line + b"\r\nHost: a\r\n\r\n")
        except Exception:
            return False
        return True

    for byte in range(256):
        line = b"GET /a?x=" + bytes([byte]) + b"y HTTP/1.1"
        assert parses(line) is (0x21 <= byte <= 0x7E), hex(byte)
        never_repaired = byte in b"\r\n"  # a bare CR or LF is a smuggling attempt
        assert parses(repair_request_line(line)) is not never_repaired, hex(byte)


def test_the_token_is_scrubbed_from_what_is_logged() -> None:
    logged = scrub_token(b"GET /v1/callbacks/nx-dr/tok-dr-0123456789abc?a b\n HTTP/1.1")
    assert "tok-dr" not in logged
    assert logged.startswith("GET /v1/callbacks/nx-dr/[redacted]?a b")
    assert "secret" not in scrub_token("b'PUT /v1/callbacks/x/secret\\x00' ")
