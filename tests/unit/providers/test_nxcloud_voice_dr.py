"""NXCloud voice DR: form body or query string, POST or GET, Chinese or English results."""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

import pytest

from schemas.providers import Outcome, Reason, Reject
from schemas.providers.nxcloud_voice_dr import DOCUMENTED_URL
from schemas.record import CallRecord, CallType, Direction, HangupBy, Status, record_id_for
from schemas.sources import Source

from .conftest import (
    NOW,
    IngressContract,
    assert_every_field_lands,
    assert_ingress_contract,
    make_envelope,
    make_source,
    parse_one,
    provider,
    record_of,
    simulated_records,
    utc,
)

NAME = "nxcloud.voice_dr"
ADAPTER = provider(NAME)
FORM = "application/x-www-form-urlencoded"

DOC_URL = DOCUMENTED_URL  # the document's push example, verbatim
DOC_FIELDS = {
    "phone": "8615088888888",
    "countryCode": "86",
    "duration": "10",
    "voice_type": "0",
    "messageid": "74078a0090f17e011505297261994",
    "basic_price": "0.005",
    "second": "10",
    "cycle": "60",
    "size": "1",
    "customer_price": "0.036",
    "start_time": "2020-12-01 00:00:00",
    "end_time": "2020-12-01 00:00:10",
    "result": "Successful connection",
    "hangup_cause": "NORMAL_CLEARING",
    "hangup_disposition": "send_bye",
    "ivr_result": "",
}
# The verification/notification variant: no basic_price or ivr_result; record_url and ext.
VERIFICATION_FIELDS = {
    "phone": "8615088888888",
    "countryCode": "86",
    "duration": "25",
    "voice_type": "1",
    "messageid": "74078a0090f17e011505297261995",
    "second": "25",
    "cycle": "6",
    "size": "5",
    "customer_price": "0.036",
    "record_url": "https://rec.example.com/74078a0090f17e011505297261995.wav",
    "start_time": "2020-12-01 00:00:00",
    "end_time": "2020-12-01 00:00:31",
    "result": "成功接通",
    "hangup_cause": "NORMAL_CLEARING",
    "hangup_disposition": "recv_bye",
    "ext": "campaign-7|lead-42",
}


def fields(**changes: str | None) -> dict[str, str]:
    """The documented fields, changed (None removes a field)."""
    out = dict(DOC_FIELDS)
    for key, value in changes.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def posted(payload: dict[str, str], source: Source | None = None) -> CallRecord:
    return record_of(NAME, urlencode(payload), source, content_type=FORM)


def normalize(payload: dict[str, Any]) -> CallRecord:
    return ADAPTER.normalize(payload, make_source(NAME))


# --- the documented example, every way it can arrive -------------------------------


def check_documented_example(record: CallRecord, source: str = "src") -> None:
    assert (record.provider, record.event) == ("nxcloud", "voice_dr")
    assert record.source == source
    assert record.external_id == "74078a0090f17e011505297261994"
    assert record.record_id == record_id_for(source, "74078a0090f17e011505297261994")
    assert record.status is Status.ANSWERED
    assert record.call_type is CallType.GROUP_CALL
    assert record.direction is Direction.OUTBOUND
    assert record.callee == "8615088888888"
    assert record.country_code == "86"
    assert record.hangup_cause == "NORMAL_CLEARING"
    assert record.hangup_by is HangupBy.CALLER  # send_bye
    assert record.started_at == utc(2020, 11, 30, 16, 0, 0)  # +08:00 by default
    assert record.ended_at == utc(2020, 11, 30, 16, 0, 10)
    assert record.talk_seconds == 10
    assert record.billed_seconds == 60  # cycle 60 x size 1
    assert record.billing_increment == "60"
    assert record.currency == "USD"
    assert record.rate == Decimal("0.036")
    assert record.base_cost == Decimal("0.005")
    assert record.cost is None
    assert record.dtmf is None  # ivr_result ""
    assert record.user_data is None
    assert record.recording_url is None
    assert record.extra == {
        "second": "10",
        "size": "1",
        "result": "Successful connection",
    }
    assert record.raw == DOC_FIELDS


def test_documented_example_as_a_get_query_string() -> None:
    record = record_of(NAME, b"", make_source(NAME), method="GET", query=urlencode(DOC_FIELDS))
    check_documented_example(record)


def test_documented_example_query_with_its_unencoded_spaces() -> None:
    query = DOC_URL.partition("?")[2]
    envelope = make_envelope(NAME, method="GET", query=query)
    assert parse_one(NAME, envelope) == DOC_FIELDS


def test_documented_example_as_a_posted_form_body() -> None:
    check_documented_example(posted(DOC_FIELDS, make_source(NAME, name="nx-dr")), "nx-dr")


def test_documented_example_as_a_posted_query_string() -> None:
    record = record_of(NAME, b"", make_source(NAME), query=urlencode(DOC_FIELDS), content_type="")
    check_documented_example(record)


def test_body_and_query_are_merged_and_the_body_wins() -> None:
    query = urlencode({"messageid": "from-query", "phone": "1111", "ext": "only-in-query"})
    body = urlencode({"messageid": "from-body", "phone": " 2222 ", "duration": "3"})
    envelope = make_envelope(NAME, body, content_type=FORM, query=query)
    payload = parse_one(NAME, envelope)
    assert payload == {
        "messageid": "from-body",
        "phone": " 2222 ",
        "ext": "only-in-query",
        "duration": "3",
        # the query's values the body replaced are kept (they land in `extra`)
        "messageid~1": "from-query",
        "phone~1": "1111",
    }
    record = normalize(payload)
    assert (record.external_id, record.callee, record.user_data) == (
        "from-body",
        "2222",
        "only-in-query",
    )


def test_a_json_body_is_read_too() -> None:
    body = '{"messageid": "m-1", "duration": 12, "customer_price": 0.0360000000000000001}'
    record = record_of(NAME, body, content_type="application/json")
    assert record.external_id == "m-1"
    assert record.talk_seconds == 12
    assert str(record.rate) == "0.0360000000000000001"


def test_verification_variant() -> None:
    record = posted(VERIFICATION_FIELDS)
    assert record.call_type is CallType.NOTIFICATION
    assert record.status is Status.ANSWERED
    assert record.hangup_by is HangupBy.CALLEE  # recv_bye
    assert record.recording_url == "https://rec.example.com/74078a0090f17e011505297261995.wav"
    assert record.user_data == "campaign-7|lead-42"  # ext
    assert record.billed_seconds == 30
    assert record.billing_increment == "6"
    assert record.base_cost is None
    assert record.dtmf is None
    assert record.extra == {
        "second": "25",
        "size": "5",
        "result": "成功接通",
    }


def test_every_field_lands_in_a_column_or_in_extra() -> None:
    payload = {**VERIFICATION_FIELDS, "basic_price": "0.005", "ivr_result": "2", "fooBar": "x"}
    record = normalize(payload)
    column_of = {
        "phone": "callee",
        "countryCode": "country_code",
        "duration": "talk_seconds",
        "voice_type": "call_type",
        "messageid": "external_id",
        "basic_price": "base_cost",
        "cycle": "billing_increment",
        "customer_price": "rate",
        "record_url": "recording_url",
        "start_time": "started_at",
        "end_time": "ended_at",
        "hangup_cause": "hangup_cause",
        "ivr_result": "dtmf",
        "ext": "user_data",
        "hangup_disposition": "hangup_by",
    }
    assert_every_field_lands(payload, record, column_of)
    assert record.extra["fooBar"] == "x"
    assert record.dtmf == "2"


# --- charsets ------------------------------------------------------------------------


def test_percent_encoded_gbk_form_body() -> None:
    payload = fields(result="成功接通", ext="活动-7")
    body = urlencode(payload, encoding="gbk")
    assert "%B3%C9%B9%A6%BD%D3%CD%A8" in body  # 成功接通 in GBK
    record = record_of(NAME, body, content_type=f"{FORM}; charset=GBK")
    assert record.extra["result"] == "成功接通"
    assert record.user_data == "活动-7"
    assert record.status is Status.ANSWERED


def test_raw_gbk_form_body() -> None:
    body = "messageid=m-gbk&result=未接通&hangup_cause=USER_BUSY&ext=活动-7".encode("gbk")
    record = record_of(NAME, body, content_type=f"{FORM};charset=gbk")
    assert record.extra["result"] == "未接通"
    assert record.user_data == "活动-7"
    assert record.status is Status.BUSY


def test_gbk_body_without_a_declared_charset_is_read_as_gb18030() -> None:
    body = "messageid=m-gbk&result=未接通&ext=活动-7".encode("gbk")
    record = record_of(NAME, body, content_type=FORM)
    assert record.extra["result"] == "未接通"
    assert record.user_data == "活动-7"


def test_utf8_chinese_result_by_get() -> None:
    query = urlencode(fields(result="未接通", duration="0", hangup_cause="NO_ANSWER"))
    record = record_of(NAME, b"", method="GET", query=query)
    assert record.extra["result"] == "未接通"
    assert record.status is Status.NO_ANSWER


# --- status --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("result", "duration", "status"),
    [
        ("Successful connection", "0", Status.ANSWERED),
        ("成功接通", "0", Status.ANSWERED),
        ("  successful CONNECTION ", "0", Status.ANSWERED),
        ("Unsuccessful connection", "0", Status.FAILED),
        ("未接通", "0", Status.FAILED),
        ("未接通", "5", Status.ANSWERED),  # a talk duration means it connected
        ("Unsuccessful connection", "5", Status.ANSWERED),
        ("", "0", Status.UNKNOWN),
        ("who knows", "0", Status.UNKNOWN),
        (None, "", Status.UNKNOWN),
    ],
)
def test_result_and_duration(result: str | None, duration: str, status: Status) -> None:
    payload = fields(result=result, duration=duration, hangup_disposition="other")
    assert normalize(payload).status is status


@pytest.mark.parametrize(
    ("cause", "status"),
    [
        ("USER_BUSY", Status.BUSY),
        ("user_busy", Status.BUSY),
        ("NO_ANSWER", Status.NO_ANSWER),
        ("NO_USER_RESPONSE", Status.NO_ANSWER),
        ("ALLOTTED_TIMEOUT", Status.NO_ANSWER),
        ("ORIGINATOR_CANCEL", Status.CANCELLED),
        ("CALL_REJECTED", Status.REJECTED),
        ("NORMAL_CLEARING", Status.FAILED),  # a normal end of a call that did not connect
        ("UNALLOCATED_NUMBER", Status.FAILED),  # an unknown cause: failed
        ("", Status.FAILED),
        # Q.850 numbers
        ("17", Status.BUSY),
        ("18", Status.NO_ANSWER),
        ("19", Status.NO_ANSWER),
        ("21", Status.REJECTED),
        ("487", Status.CANCELLED),
        ("16", Status.FAILED),
        ("1", Status.FAILED),
    ],
)
def test_hangup_cause_of_an_unconnected_call(cause: str, status: Status) -> None:
    payload = fields(result="未接通", duration="0", hangup_cause=cause, hangup_disposition="other")
    record = normalize(payload)
    assert record.status is status
    assert record.hangup_cause == (cause or None)


@pytest.mark.parametrize(
    ("cause", "status"),
    [
        ("NORMAL_CLEARING", Status.UNKNOWN),  # no result, a normal end: nothing said
        ("16", Status.UNKNOWN),
        ("UNALLOCATED_NUMBER", Status.FAILED),
        ("USER_BUSY", Status.BUSY),
    ],
)
def test_hangup_cause_without_a_result(cause: str, status: Status) -> None:
    payload = fields(result=None, duration="0", hangup_cause=cause, hangup_disposition="other")
    assert normalize(payload).status is status


@pytest.mark.parametrize(
    ("disposition", "hangup_by", "status"),
    [
        ("send_bye", HangupBy.CALLER, Status.FAILED),
        ("recv_bye", HangupBy.CALLEE, Status.FAILED),
        ("recv_refuse", HangupBy.CALLEE, Status.REJECTED),
        ("send_cancel", HangupBy.CALLER, Status.NO_ANSWER),  # caller timed out: ring timeout
        ("SEND_BYE", HangupBy.CALLER, Status.FAILED),
        ("other", None, Status.FAILED),
        ("", None, Status.FAILED),
    ],
)
def test_hangup_disposition(disposition: str, hangup_by: HangupBy | None, status: Status) -> None:
    payload = fields(result="未接通", duration="0", hangup_disposition=disposition)
    record = normalize(payload)
    assert record.hangup_by is hangup_by
    assert record.status is status
    # translated into hangup_by, it is consumed; an unknown one stays in extra
    assert record.extra.get("hangup_disposition") == (None if hangup_by else disposition)


def test_a_specific_cause_beats_the_disposition() -> None:
    payload = fields(result="未接通", duration="0", hangup_cause="USER_BUSY")
    record = normalize({**payload, "hangup_disposition": "recv_refuse"})
    assert record.status is Status.BUSY
    assert record.hangup_by is HangupBy.CALLEE


# --- fields --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("voice_type", "call_type"), [("0", CallType.GROUP_CALL), ("1", CallType.NOTIFICATION)]
)
def test_voice_type(voice_type: str, call_type: CallType) -> None:
    record = normalize(fields(voice_type=voice_type))
    assert record.call_type is call_type
    assert "voice_type" not in record.extra


@pytest.mark.parametrize("voice_type", ["2", "", "x"])
def test_unknown_voice_type_is_kept_in_extra(voice_type: str) -> None:
    record = normalize(fields(voice_type=voice_type))
    assert record.call_type is None
    assert record.extra["voice_type"] == voice_type


@pytest.mark.parametrize(
    ("cycle", "size", "billed", "increment"),
    [
        ("60", "1", 60, "60"),
        ("60", "2", 120, "60"),
        ("6", "5", 30, "6"),
        ("60", "0", 0, "60"),
        ("60", "", None, "60"),
        ("60", "x", None, "60"),
        ("0", "1", None, None),
        ("", "1", None, None),
    ],
)
def test_billed_seconds_is_cycle_times_size(
    cycle: str, size: str, billed: int | None, increment: str | None
) -> None:
    record = normalize(fields(cycle=cycle, size=size))
    assert record.billed_seconds == billed
    assert record.billing_increment == increment
    assert record.extra["size"] == size


def test_unreadable_cycle_is_kept_in_extra() -> None:
    record = normalize(fields(cycle="0"))
    assert record.extra["cycle"] == "0"


@pytest.mark.parametrize(("ivr", "dtmf"), [("", None), ("-1", None), ("1", "1"), ("12#", "12#")])
def test_ivr_result_is_dtmf(ivr: str, dtmf: str | None) -> None:
    record = normalize(fields(ivr_result=ivr))
    assert record.dtmf == dtmf
    assert "ivr_result" not in record.extra


@pytest.mark.parametrize(
    ("zone", "start"),
    [
        (None, utc(2020, 11, 30, 16)),
        ("+08:00", utc(2020, 11, 30, 16)),
        ("Asia/Shanghai", utc(2020, 11, 30, 16)),
        ("-05:00", utc(2020, 12, 1, 5)),
    ],
)
def test_times_are_read_in_the_source_zone(zone: str | None, start: datetime) -> None:
    record = ADAPTER.normalize(fields(), make_source(NAME, timezone=zone))
    assert record.started_at == start
    assert record.ended_at == start + timedelta(seconds=10)


# --- rejects ------------------------------------------------------------------------


@pytest.mark.parametrize("messageid", [None, "", " ", "null"])
def test_missing_messageid_is_rejected(messageid: str | None) -> None:
    with pytest.raises(Reject) as caught:
        posted(fields(messageid=None) | ({} if messageid is None else {"messageid": messageid}))
    assert caught.value.reason is Reason.MISSING_FIELD


def test_nothing_in_body_or_query_is_rejected() -> None:
    for envelope in (
        make_envelope(NAME, b"", method="GET"),
        make_envelope(NAME, b"  ", content_type=FORM),
    ):
        with pytest.raises(Reject) as caught:
            ADAPTER.parse(envelope, make_source(NAME))
        assert caught.value.reason is Reason.EMPTY_BODY


@pytest.mark.parametrize(
    ("body", "reason"), [("[1, 2]", Reason.NOT_AN_OBJECT), ("{x", Reason.UNPARSEABLE_BODY)]
)
def test_json_body_that_is_not_an_object(body: str, reason: Reason) -> None:
    with pytest.raises(Reject) as caught:
        ADAPTER.parse(make_envelope(NAME, body, content_type="application/json"), make_source(NAME))
    assert caught.value.reason is reason


def test_record_id_is_stable() -> None:
    first = posted(DOC_FIELDS)
    again = record_of(NAME, b"", method="GET", query=urlencode(DOC_FIELDS))
    assert first.record_id == again.record_id == record_id_for("src", DOC_FIELDS["messageid"])


@pytest.mark.parametrize("zone", ["+08:00", "Asia/Shanghai", "-05:00"])
def test_simulate_round_trips(zone: str) -> None:
    statuses = set()
    for payload, record, external_id in simulated_records(
        NAME, make_source(NAME, timezone=zone), range(50)
    ):
        assert record.external_id == external_id == payload["messageid"]
        assert record.raw == payload
        assert (record.status is Status.ANSWERED) == ((record.talk_seconds or 0) > 0)
        assert record.ended_at is not None
        assert timedelta(0) <= NOW - record.ended_at <= timedelta(seconds=61)
        assert record.billed_seconds is not None
        assert record.billed_seconds >= (record.talk_seconds or 0)
        assert record.hangup_by is not None or payload["hangup_disposition"] == "other"
        statuses.add(record.status)
    assert {Status.ANSWERED, Status.BUSY, Status.NO_ANSWER, Status.REJECTED} <= statuses


def test_simulate_sends_both_get_query_strings_and_post_form_bodies() -> None:
    source = make_source(NAME)
    callbacks = [ADAPTER.simulate(random.Random(seed), NOW, source) for seed in range(50)]
    gets = [c for c in callbacks if c.method == "GET"]
    posts = [c for c in callbacks if c.method == "POST"]
    assert gets
    assert posts
    assert all(c.query and not c.body for c in gets)
    assert all(c.body and not c.query and c.content_type == FORM for c in posts)


def test_a_query_string_that_is_not_utf8_is_read_as_gb18030_not_garbled() -> None:
    query = "messageid=m1&result=%B3%C9%B9%A6"  # GBK bytes in the URL: not UTF-8
    payload = parse_one(NAME, make_envelope(NAME, b"", method="GET", query=query))
    assert payload["result"] == "成功"


def test_send_writes_the_documented_url_query_as_given_raw_spaces_and_all() -> None:
    request = ADAPTER.documented(make_source(NAME), NOW)
    assert (request.method, request.body) == ("GET", b"")
    assert request.query == DOC_URL.partition("?")[2]
    assert "start_time=2020-12-01 00:00:00" in request.query
    assert ADAPTER.documented(make_source(NAME), NOW, "a=1&b=x y\n").query == "a=1&b=x y"


def test_ingress_contract() -> None:
    assert_ingress_contract(
        "nxcloud.voice_dr",
        IngressContract(
            methods=frozenset({"POST", "GET"}),
            signing_modes=frozenset(),
            volatile_fields=frozenset(),
            answers={
                Outcome.ACCEPTED: (b"success", "text/plain"),
                Outcome.UNAVAILABLE: (b"error", "text/plain"),
                Outcome.UNAUTHORIZED: (b"error", "text/plain"),
            },
        ),
    )
