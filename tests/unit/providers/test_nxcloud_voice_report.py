"""NXCloud voice report: JSON object or JSON array (batch), millisecond epochs, money."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest

from schemas.providers import Outcome, Reason, Reject
from schemas.providers.nxcloud_voice_report import DOCUMENTED_SAMPLE
from schemas.record import CallRecord, CallType, Direction, Status, record_id_for

from .conftest import (
    IngressContract,
    assert_every_field_lands,
    assert_ingress_contract,
    exact_json,
    make_envelope,
    make_source,
    parse_one,
    provider,
    record_of,
    simulated_records,
    utc,
)

NAME = "nxcloud.voice_report"
ADAPTER = provider(NAME)
CT = "application/json;charset=UTF-8"

SAMPLE = DOCUMENTED_SAMPLE  # the document's push sample, completed


def report(**changes: Any) -> dict[str, Any]:
    """The sample as a dict, with fields changed (a value of None removes the field)."""
    payload: dict[str, Any] = exact_json(SAMPLE)
    for key, value in changes.items():
        if value is None:
            payload.pop(key, None)
        else:
            payload[key] = value
    return payload


def normalize(payload: dict[str, Any]) -> CallRecord:
    return ADAPTER.normalize(payload, make_source(NAME))


def unanswered(**changes: Any) -> dict[str, Any]:
    return report(**{"answerTime": 0, "callDuration": 0, "sipCode": None, **changes})


# --- the documented sample ---------------------------------------------------------


def test_documented_sample() -> None:
    record = record_of(NAME, SAMPLE, make_source(NAME, name="nx-voice", tenant="acme"))
    assert record.source == "nx-voice"
    assert record.tenant == "acme"
    assert (record.provider, record.event) == ("nxcloud", "voice_report")
    assert record.external_id == "22121121451211349002"
    assert record.record_id == record_id_for("nx-voice", "22121121451211349002")
    assert record.status is Status.ANSWERED
    assert record.call_type is CallType.GROUP_CALL
    assert record.direction is Direction.OUTBOUND
    assert record.caller is None
    assert record.callee == "63123456788"
    assert record.display_number == "6311012125"
    assert record.region == "India(Karnataka)"
    assert record.country_code is None
    assert record.hangup_cause == "Called hang up"
    assert record.hangup_by is None
    assert record.sip_code == 200
    assert record.submitted_at == utc(2022, 12, 13, 13, 45, 12, 97000)
    assert record.started_at == utc(2022, 12, 13, 13, 52, 48)
    assert record.ringing_at == utc(2022, 12, 13, 13, 52, 50)
    assert record.answered_at == utc(2022, 12, 13, 13, 53, 2)
    assert record.ended_at == utc(2022, 12, 13, 13, 53, 15)
    assert record.ring_seconds == 12
    assert record.talk_seconds == 13
    assert record.billed_seconds == 20
    assert record.billing_increment == "20+20"
    # costEur without cost: the whole copy is in EUR.
    assert record.currency == "EUR"
    assert record.rate == Decimal("0.023625")
    assert record.cost == Decimal("0.007875")
    assert str(record.base_cost) == "0.0"
    assert record.recording_url is None
    assert record.dtmf is None  # -1: no key pressed
    assert record.user_data == "order-1234"
    assert record.labels == ()
    assert record.extra == {
        "voiceFileId": "12043042052c5b61378df42324286fe4a4ace40ve.mp3",
        "terminationCode": "0",
        "settleRate": "1.2793",
        "quoteExchange": "0.938",
        "settlePay": "0.007387",
        "currency": "EUR",
    }


def test_raw_is_the_parsed_payload() -> None:
    envelope = make_envelope(NAME, SAMPLE, content_type=CT)
    payload = parse_one(NAME, envelope)
    assert payload == json.loads(SAMPLE)
    record = ADAPTER.normalize(payload, make_source(NAME))
    assert record.raw == payload


# Payload field -> the column it lands in (for the completed sample).
COLUMN_OF = {
    "voiceId": "external_id",
    "type": "call_type",
    "callee": "callee",
    "displayNum": "display_number",
    "submitTime": "submitted_at",
    "callTime": "started_at",
    "ringingTime": "ringing_at",
    "answerTime": "answered_at",
    "hangupTime": "ended_at",
    "chargedDuration": "billed_seconds",
    "callDuration": "talk_seconds",
    "billPeriod": "billing_increment",
    "code": "region",
    "rate": "rate",
    "baseCost": "base_cost",
    "costEur": "cost",
    "terminationReason": "hangup_cause",
    "sipCode": "sip_code",
    "calledInfo": "user_data",
    "ringDuration": "ring_seconds",
    "recordingFileId": "recording_url",
    "feedbackValue": "dtmf",
}


def test_every_field_lands_in_a_column_or_in_extra() -> None:
    payload = report(
        fooBar={"nested": [1, 2]}, outRecallCount=2, recordingFileId="rec-9", feedbackValue="5"
    )
    record = normalize(payload)
    assert_every_field_lands(payload, record, COLUMN_OF)
    assert record.extra["fooBar"] == {"nested": [1, 2]}
    assert record.extra["outRecallCount"] == 2
    assert record.dtmf == "5"
    assert record.recording_url == "rec-9"


# --- variants ------------------------------------------------------------------------


def test_batch_variant_is_a_json_array_of_reports() -> None:
    first = report(recordingFileId="rf-001", scriptId="sc-7", intent="A")
    second = report(voiceId="22121121451211349003", recordingFileId="rf-002", intent="B")
    envelope = make_envelope(NAME, json.dumps([first, second], default=str), content_type=CT)
    payloads = ADAPTER.parse(envelope, make_source(NAME))
    assert [p["voiceId"] for p in payloads] == ["22121121451211349002", "22121121451211349003"]
    records = [ADAPTER.normalize(p, make_source(NAME)) for p in payloads]
    assert [r.recording_url for r in records] == ["rf-001", "rf-002"]
    assert records[0].extra["scriptId"] == "sc-7"
    assert [r.extra["intent"] for r in records] == ["A", "B"]
    assert "recordingFileId" not in records[0].extra
    assert records[0].record_id != records[1].record_id


def test_batch_item_that_is_not_an_object_is_rejected_alone() -> None:
    body = "[" + SAMPLE + ', "oops", 5, null]'
    payloads = ADAPTER.parse(make_envelope(NAME, body, content_type=CT), make_source(NAME))
    assert len(payloads) == 4
    assert ADAPTER.normalize(payloads[0], make_source(NAME)).external_id == "22121121451211349002"
    for item in payloads[1:]:
        with pytest.raises(Reject) as caught:
            ADAPTER.normalize(item, make_source(NAME))
        assert caught.value.reason is Reason.NOT_AN_OBJECT


@pytest.mark.parametrize("body", ['"just a string"', "42", "null"])
def test_a_body_that_is_not_an_object_is_rejected(body: str) -> None:
    (payload,) = ADAPTER.parse(make_envelope(NAME, body, content_type=CT), make_source(NAME))
    with pytest.raises(Reject) as caught:
        ADAPTER.normalize(payload, make_source(NAME))
    assert caught.value.reason is Reason.NOT_AN_OBJECT


def test_cost_in_usd_is_the_default_currency() -> None:
    record = normalize(report(costEur=None, currency=None, cost="0.0079"))
    assert record.currency == "USD"
    assert record.cost == Decimal("0.0079")
    assert "cost" not in record.extra


def test_cost_beside_cost_eur_wins_and_cost_eur_stays_in_extra() -> None:
    record = normalize(report(cost="0.0084"))
    assert record.currency == "USD"
    assert record.cost == Decimal("0.0084")
    assert record.extra["costEur"] == "0.007875"
    assert record.rate == Decimal("0.023625")


def test_money_as_json_numbers_stays_exact() -> None:
    body = SAMPLE.replace('"costEur": "0.007875"', '"cost": 0.00787512345678901234567').replace(
        '"rate": "0.023625"', '"rate": 0.1000000000000000055511151231257827'
    )
    record = record_of(NAME, body)
    assert isinstance(record.cost, Decimal)
    assert str(record.cost) == "0.00787512345678901234567"
    assert str(record.rate) == "0.1000000000000000055511151231257827"
    assert record.raw["cost"] == Decimal("0.00787512345678901234567")


def test_unreadable_money_is_kept_in_extra() -> None:
    record = normalize(report(rate="n/a"))
    assert record.rate is None
    assert record.extra["rate"] == "n/a"


def test_out_recall_count_is_kept_in_extra() -> None:
    assert normalize(report(outRecallCount="3")).extra["outRecallCount"] == "3"


@pytest.mark.parametrize(
    ("code", "call_type"),
    [
        (1, CallType.GROUP_CALL),
        (2, CallType.VERIFICATION),
        ("3", CallType.TELEPHONE),
        (4, CallType.DIRECT_DIAL),
    ],
)
def test_type_maps_to_call_type(code: Any, call_type: CallType) -> None:
    record = normalize(report(type=code))
    assert record.call_type is call_type
    assert "type" not in record.extra


@pytest.mark.parametrize("code", [0, 9, "x"])
def test_unknown_type_is_kept_in_extra(code: Any) -> None:
    record = normalize(report(type=code))
    assert record.call_type is None
    assert record.extra["type"] == code


@pytest.mark.parametrize(("value", "dtmf"), [("-1", None), ("", None), ("1", "1"), ("12#", "12#")])
def test_feedback_value_is_dtmf(value: str, dtmf: str | None) -> None:
    record = normalize(report(feedbackValue=value))
    assert record.dtmf == dtmf
    assert "feedbackValue" not in record.extra


@pytest.mark.parametrize("value", [0, "0", ""])
def test_answer_time_zero_or_empty_is_none(value: Any) -> None:
    record = normalize(report(answerTime=value, ringingTime=0, callTime=""))
    assert record.answered_at is None
    assert record.ringing_at is None
    assert record.started_at is None
    assert "answerTime" not in record.extra
    # callDuration 13 still says the call was connected.
    assert record.status is Status.ANSWERED


def test_epoch_in_seconds_is_not_a_time_and_is_kept() -> None:
    record = normalize(report(hangupTime=1670939595))
    assert record.ended_at is None
    assert record.extra["hangupTime"] == 1670939595


def test_sip_code_out_of_range_is_kept_in_extra() -> None:
    record = normalize(report(sipCode="0"))
    assert record.sip_code is None
    assert record.extra["sipCode"] == "0"


# --- status --------------------------------------------------------------------------


def test_answer_time_alone_means_answered() -> None:
    record = normalize(report(callDuration=0, terminationCode="486", sipCode="486"))
    assert record.status is Status.ANSWERED


def test_talk_duration_alone_means_answered() -> None:
    record = normalize(report(answerTime=0, terminationCode="1"))
    assert record.status is Status.ANSWERED
    assert record.answered_at is None


@pytest.mark.parametrize(
    ("changes", "status"),
    [
        # terminationCode 0 / 200 is "success" but no answer time or talk confirms it.
        ({"terminationCode": "0"}, Status.UNKNOWN),
        ({"terminationCode": "200"}, Status.UNKNOWN),
        ({"terminationCode": None}, Status.UNKNOWN),
        ({"terminationCode": "486"}, Status.BUSY),
        ({"terminationCode": "480"}, Status.NO_ANSWER),
        ({"terminationCode": "487"}, Status.CANCELLED),
        ({"terminationCode": "603"}, Status.REJECTED),
        ({"terminationCode": "404"}, Status.FAILED),
        ({"terminationCode": "1"}, Status.FAILED),  # the "0 = success, other = failure" copy
        ({"terminationCode": "0", "sipCode": "486"}, Status.BUSY),
        ({"terminationCode": "0", "sipCode": "603"}, Status.REJECTED),
        ({"terminationCode": "486", "sipCode": "480"}, Status.NO_ANSWER),  # sipCode first
        ({"terminationCode": "1", "sipCode": "200"}, Status.FAILED),
        ({"terminationCode": "0", "sipCode": "200"}, Status.UNKNOWN),
    ],
)
def test_status_of_an_unconnected_call(changes: dict[str, Any], status: Status) -> None:
    record = normalize(unanswered(**changes))
    assert record.status is status
    if "terminationCode" in changes and changes["terminationCode"] is not None:
        assert record.extra["terminationCode"] == changes["terminationCode"]  # raw value kept


# --- rejects ------------------------------------------------------------------------


@pytest.mark.parametrize("body", ["", "  \n", "[]", " [ ] "])
def test_empty_body_or_empty_batch_is_rejected(body: str) -> None:
    with pytest.raises(Reject) as caught:
        ADAPTER.parse(make_envelope(NAME, body, content_type=CT), make_source(NAME))
    assert caught.value.reason is Reason.EMPTY_BODY


@pytest.mark.parametrize(
    "body", ['{"voiceId": "1", "cost": NaN}', '{"voiceId": "1", "cost": Infinity}', "{", "<xml/>"]
)
def test_unparseable_json_is_rejected(body: str) -> None:
    with pytest.raises(Reject) as caught:
        ADAPTER.parse(make_envelope(NAME, body, content_type=CT), make_source(NAME))
    assert caught.value.reason is Reason.UNPARSEABLE_BODY


@pytest.mark.parametrize("voice_id", [None, "", "  ", "null"])
def test_missing_voice_id_is_rejected(voice_id: str | None) -> None:
    payload = report(voiceId=None)
    if voice_id is not None:
        payload["voiceId"] = voice_id
    with pytest.raises(Reject) as caught:
        normalize(payload)
    assert caught.value.reason is Reason.MISSING_FIELD


def test_voice_id_is_trimmed_and_record_id_is_stable() -> None:
    first = normalize(report(voiceId=" 22121121451211349002 "))
    again = normalize(report(callDuration=14))
    assert first.external_id == again.external_id == "22121121451211349002"
    assert first.record_id == again.record_id
    other_source = ADAPTER.normalize(report(), make_source(NAME, name="elsewhere"))
    assert other_source.record_id != first.record_id


def test_simulate_round_trips() -> None:
    seen = set()
    for payload, record, external_id in simulated_records(NAME, make_source(NAME), range(50)):
        assert record.external_id == external_id == payload["voiceId"]
        assert record.raw == payload
        connected = record.answered_at is not None or (record.talk_seconds or 0) > 0
        assert (record.status is Status.ANSWERED) == connected
        assert record.status is not Status.UNKNOWN
        assert isinstance(record.cost, Decimal)
        assert record.ended_at is not None
        assert record.submitted_at is not None
        assert record.submitted_at < record.ended_at
        seen.add(record.status)
    assert Status.ANSWERED in seen
    assert len(seen) >= 3


@pytest.mark.parametrize("blank", ["", None, "null"])
def test_a_blank_cost_beside_cost_eur_counts_as_absent(blank: Any) -> None:
    record = normalize(report(cost=blank, costEur="0.007875"))
    assert (record.currency, record.cost) == ("EUR", Decimal("0.007875"))


def test_ingress_contract() -> None:
    assert_ingress_contract(
        "nxcloud.voice_report",
        IngressContract(
            methods=frozenset({"POST"}),
            signing_modes=frozenset(),
            volatile_fields=frozenset(),
            answers={
                Outcome.ACCEPTED: (b"success", "text/plain"),
                Outcome.UNAVAILABLE: (b"error", "text/plain"),
                Outcome.TOO_LARGE: (b"error", "text/plain"),
            },
        ),
    )
