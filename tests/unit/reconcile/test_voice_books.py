"""NXCloud's voice-record query as the DR provider's books: the request, the answer, and a
row read by the DR provider's own parser and normalizer."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl

import pytest

from schemas.envelope import BACKFILL, RawEnvelope, uuid7
from schemas.providers import default_registry
from schemas.providers.books import BooksRefused, Window
from schemas.providers.nxcloud_voice_books import BOOKS, REPORT_BOOKS, VoiceBooksConfig
from schemas.record import CallRecord, CallType, Status
from schemas.sources import Source, parse_zone
from tests.support.sources import load_test_sources

CONFIG = VoiceBooksConfig("the-appkey", "the-secretkey", (0, 1))
DR = default_registry()["nxcloud.voice_dr"]

# The documents' group-call example, with its numbers as JSON numbers.
GROUP_CALL_ROW = """{
  "id": 11112, "result": "Successful connection", "cycle": 20, "time": "2019-09-09 09:00:00",
  "start_time": "2019-09-09 09:00:01", "end_time": "2019-09-09 09:00:20",
  "phone": "810022458", "basic_price": 0.005, "second": 19, "countryCode": "91",
  "messageid": 784522, "customer_price": 0.05, "show_phone": "085944247", "size": 1,
  "ivr_result": 1
}"""


def answer(rows: str, total: int = 1) -> bytes:
    info = f'{{"total": {total}, "page": 1, "pageSize": 5, "rows": [{rows}]}}'
    return f'{{"code": "1", "info": {info}}}'.encode()


def dr_source() -> Source:
    return load_test_sources()["nx-dr"]  # +08:00


def read_back(row: dict[str, Any], kind: str = "0") -> tuple[dict[str, str], CallRecord]:
    backfill = BOOKS.backfill(row, kind, parse_zone("+08:00"))
    envelope = RawEnvelope(
        uuid7(), "nx-dr", "globex", "nxcloud.voice_dr", datetime.now(UTC), backfill.method,
        "/v1/callbacks/nx-dr", "", backfill.content_type, backfill.body, origin=BACKFILL,
    )  # fmt: skip
    [payload] = DR.parse(envelope, dr_source())
    return dict(parse_qsl(backfill.body.decode())), DR.normalize(payload, dr_source())


def test_the_request_is_the_documented_form_with_times_in_the_source_zone() -> None:
    # 15:30 to 17:30 UTC is 23:30 to 01:30 the next day in +08:00: across midnight.
    window = Window(
        datetime(2026, 12, 1, 15, 30, tzinfo=UTC), datetime(2026, 12, 1, 17, 30, tzinfo=UTC)
    )
    request = BOOKS.request(
        CONFIG,
        "http://books.test/api/voiceSms/getVoiceCdr",
        "1",
        window,
        3,
        100,
        parse_zone("+08:00"),
    )
    assert request.url == "http://books.test/api/voiceSms/getVoiceCdr"
    assert dict(request.form) == {
        "appkey": "the-appkey",
        "secretkey": "the-secretkey",
        "voiceType": "1",
        "start_time": "2026-12-01 23:30:00",
        "end_time": "2026-12-02 01:29:59",  # the window's end is not its own
        "page_size": "100",
        "page": "3",
    }
    assert "the-secretkey" not in repr(request)
    assert "the-appkey" not in repr(CONFIG)


def test_an_answer_is_read_into_rows_with_exact_numbers_and_ids_as_text() -> None:
    page = BOOKS.read_answer(answer(GROUP_CALL_ROW, total=7))
    assert page.total == 7
    [row] = page.rows
    assert row["customer_price"] == Decimal("0.05")  # never a float
    assert BOOKS.external_id(row) == "784522"
    assert (
        BOOKS.external_id({"messageid": 12345678901234567890123456789})
        == "12345678901234567890123456789"
    )
    assert (
        BOOKS.external_id({"messageid": " 74078a0090f17e011505297261994 "})
        == "74078a0090f17e011505297261994"
    )
    assert BOOKS.external_id({}) == ""


@pytest.mark.parametrize(
    ("body", "code", "message"),
    [
        (
            b'{"code": "0", "info": "appkey or secretkey is wrong"}',
            "0",
            "appkey or secretkey is wrong",
        ),
        (b'{"code": 5, "msg": "request too frequent"}', "5", "request too frequent"),
        (b'{"code": "1", "info": "no rows here"}', "1", "answer has no info.rows"),
        (b'{"code": "1", "info": {"rows": []}}', "1", "answer has no info.total"),
        (b"<html>502 Bad Gateway</html>", "?", "answer is not JSON"),
        (b"[1, 2]", "?", "answer is not a JSON object"),
    ],
)
def test_any_other_answer_is_refused_with_the_providers_code_and_message(
    body: bytes, code: str, message: str
) -> None:
    with pytest.raises(BooksRefused) as refused:
        BOOKS.read_answer(body)
    assert refused.value.code == code
    assert message in refused.value.message


def test_a_group_call_row_reads_as_the_dr_it_stands_for() -> None:
    fields, record = read_back(json.loads(GROUP_CALL_ROW, parse_float=Decimal))
    assert fields["messageid"] == "784522"
    assert fields["duration"] == fields["second"] == "19"  # a row has no duration
    assert fields["voice_type"] == "0"
    assert record.external_id == "784522"
    assert record.status is Status.ANSWERED
    assert record.call_type is CallType.GROUP_CALL
    assert record.talk_seconds == 19
    assert record.billed_seconds == 20  # cycle 20 x size 1
    assert record.rate == Decimal("0.05")
    assert record.base_cost == Decimal("0.005")
    assert record.callee == "810022458"
    assert record.country_code == "91"
    # zone-less times in the source's zone (+08:00)
    assert record.started_at == datetime(2019, 9, 9, 1, 0, 1, tzinfo=UTC)
    assert record.ended_at == datetime(2019, 9, 9, 1, 0, 20, tzinfo=UTC)


def test_a_verification_row_is_a_notification_dr_and_keeps_its_own_voice_type() -> None:
    row = {
        "id": 1821556, "result": "成功接通", "cycle": 1, "time": "2019-08-09 00:01:00",
        "start_time": "2019-09-09 23:59:58", "end_time": "2019-09-10 00:00:04",
        "phone": "85987053821", "second": 3, "voice_type": 2, "countryCode": "55",
        "messageid": "35a1", "customer_price": 0.1, "size": 6,
    }  # fmt: skip
    fields, record = read_back(row, kind="1")
    assert fields["voice_type"] == "1"
    assert fields["books_voice_type"] == "2"
    assert record.call_type is CallType.NOTIFICATION
    assert record.status is Status.ANSWERED
    # across midnight in +08:00
    assert record.started_at == datetime(2019, 9, 9, 15, 59, 58, tzinfo=UTC)
    assert record.ended_at == datetime(2019, 9, 9, 16, 0, 4, tzinfo=UTC)
    assert record.base_cost is None  # a verification row has no basic price


def test_an_unconnected_row_is_not_answered() -> None:
    row = {
        "messageid": "m-1",
        "result": "Unsuccessful connection",
        "second": 0,
        "cycle": 60,
        "size": 0,
    }
    _, record = read_back(row)
    assert record.status is not Status.ANSWERED
    assert record.billed_seconds == 0


def test_a_row_reads_as_the_voice_report_it_stands_for_where_the_ids_are_the_same() -> None:
    row = json.loads(GROUP_CALL_ROW, parse_float=Decimal)
    backfill = REPORT_BOOKS.backfill(row, "0", parse_zone("+08:00"))
    source = load_test_sources()["nx-voice"]
    report_provider = default_registry()["nxcloud.voice_report"]
    envelope = RawEnvelope(
        uuid7(), "nx-voice", "acme", "nxcloud.voice_report", datetime.now(UTC), "POST",
        "/v1/callbacks/nx-voice", "", backfill.content_type, backfill.body, origin=BACKFILL,
    )  # fmt: skip
    [payload] = report_provider.parse(envelope, source)
    record = report_provider.normalize(payload, source)
    assert record.external_id == backfill.external_id == "784522"
    assert record.call_type is CallType.GROUP_CALL
    assert record.status is Status.ANSWERED
    assert record.talk_seconds == 19
    assert record.billed_seconds == 20
    assert record.rate == Decimal("0.05")
    assert record.base_cost == Decimal("0.005")
    assert record.cost is None  # a row has no cost
    assert record.started_at == datetime(2019, 9, 9, 1, 0, 1, tzinfo=UTC)  # +08:00
    assert record.ended_at == datetime(2019, 9, 9, 1, 0, 20, tzinfo=UTC)
    assert record.answered_at == datetime(2019, 9, 9, 1, 0, 1, tzinfo=UTC)  # 19 s before the end
