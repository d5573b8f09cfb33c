"""NXCloud call-center report: JSON object, zone-less local times, hangup tables."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest

from schemas.providers import Outcome, Reason, Reject
from schemas.providers.nxcloud_call_center_report import DOCUMENTED_SAMPLE
from schemas.record import CallRecord, CallType, Direction, HangupBy, Status, record_id_for
from schemas.sources import Source

from .conftest import (
    NOW,
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

NAME = "nxcloud.call_center_report"
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


def normalize(payload: dict[str, Any], source: Source | None = None) -> CallRecord:
    return ADAPTER.normalize(payload, source or make_source(NAME))


def unanswered(**changes: Any) -> dict[str, Any]:
    return report(**{"answerTime": "", "callDuration": 0, "hangupCode": None, **changes})


# --- the documented sample ---------------------------------------------------------


def test_documented_sample() -> None:
    record = record_of(NAME, SAMPLE, make_source(NAME, name="nxcloud-cc", tenant="acme"))
    assert (record.source, record.tenant) == ("nxcloud-cc", "acme")
    assert (record.provider, record.event) == ("nxcloud", "call_center_report")
    assert record.external_id == "202311171342480000012345"
    assert record.record_id == record_id_for("nxcloud-cc", "202311171342480000012345")
    assert record.status is Status.ANSWERED
    assert record.call_type is CallType.OUTBOUND
    assert record.direction is Direction.OUTBOUND
    assert record.caller == "6328881234"
    assert record.callee == "639171234567"
    assert record.display_number is None
    assert record.country_code == "63"
    assert record.region == "Philippines"
    assert record.hangup_cause == "1"
    assert record.hangup_by is HangupBy.CALLEE  # the customer, on an outgoing call
    assert record.sip_code == 200
    # "2023-11-17 13:42:33" read at the default +08:00.
    assert record.started_at == utc(2023, 11, 17, 5, 42, 30)
    assert record.answered_at == utc(2023, 11, 17, 5, 42, 33)
    assert record.ended_at == utc(2023, 11, 17, 5, 42, 48)
    assert record.submitted_at is None
    assert record.ringing_at is None
    assert record.talk_seconds == 15
    assert record.currency == "USD"
    assert record.cost == Decimal("0.0135")
    assert record.base_cost == Decimal("0.0")
    assert record.recording_url == "https://rec.example.com/202311171342480000012345.mp3"
    assert record.user_data == "lead-42"
    assert record.agent_id is None
    assert record.agent_name == "Chen Wei"
    assert record.agent_account == "chenwei@acme"
    assert record.agent_group == "Sales"
    assert record.labels == ("Intended customers", "High level")
    assert record.extra == {
        "callId": "6a1f0c2e9b7d4e21",
        "remark": "call back Friday",
    }


def test_raw_is_the_parsed_payload_with_the_original_time_strings() -> None:
    payload = parse_one(NAME, make_envelope(NAME, SAMPLE, content_type=CT))
    assert payload == json.loads(SAMPLE)
    record = normalize(payload)
    assert record.raw == payload
    assert record.raw["answerTime"] == "2023-11-17 13:42:33"


COLUMN_OF = {
    "callSessionId": "external_id",
    "called": "callee",
    "calledInfo": "user_data",
    "caller": "caller",
    "ccode": "country_code",
    "ccodeName": "region",
    "agentName": "agent_name",
    "agentGroupName": "agent_group",
    "agentAccount": "agent_account",
    "callDuration": "talk_seconds",
    "callType": "call_type",
    "hangupCode": "sip_code",
    "hangupReason": "hangup_cause",
    "labels": "labels",
    "baseCost": "base_cost",
    "cost": "cost",
    "callStartTime": "started_at",
    "answerTime": "answered_at",
    "callEndTime": "ended_at",
    "voiceUrl": "recording_url",
    "hangingDirection": "hangup_by",
}


def test_every_field_lands_in_a_column_or_in_extra() -> None:
    payload = report(fooBar="baz", newField=[1, {"x": None}])
    record = normalize(payload)
    assert_every_field_lands(payload, record, COLUMN_OF)
    assert record.extra["fooBar"] == "baz"
    assert record.extra["newField"] == [1, {"x": None}]


# --- times ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("zone", "hour"),
    [
        (None, 5),  # the provider default, +08:00
        ("+08:00", 5),
        ("Asia/Shanghai", 5),
        ("-05:00", 18),
        ("UTC", 13),
    ],
)
def test_zone_less_times_are_read_in_the_source_zone(zone: str | None, hour: int) -> None:
    record = normalize(report(), make_source(NAME, timezone=zone))
    assert record.answered_at == utc(2023, 11, 17, hour, 42, 33)
    assert record.started_at == utc(2023, 11, 17, hour, 42, 30)
    assert record.ended_at == utc(2023, 11, 17, hour, 42, 48)
    assert record.answered_at is not None
    assert record.answered_at.utcoffset() == timedelta(0)


def test_iso_t_and_fractional_times_are_read_too() -> None:
    record = normalize(
        report(callStartTime="2023-11-17T13:42:30", callEndTime="2023-11-17 13:42:48.250")
    )
    assert record.started_at == utc(2023, 11, 17, 5, 42, 30)
    assert record.ended_at == utc(2023, 11, 17, 5, 42, 48, 250000)


@pytest.mark.parametrize("value", ["", None, "0", 0, "null"])
def test_no_answer_time(value: Any) -> None:
    record = normalize(report(answerTime=value))  # None: the field is absent
    assert record.answered_at is None
    assert "answerTime" not in record.extra
    # callDuration > 0 still means the call was connected.
    assert record.status is Status.ANSWERED


def test_unparseable_time_is_kept_in_extra() -> None:
    record = normalize(report(callEndTime="17/11/2023 13:42"))
    assert record.ended_at is None
    assert record.extra["callEndTime"] == "17/11/2023 13:42"


# --- status --------------------------------------------------------------------------


def test_answer_time_alone_means_answered() -> None:
    record = normalize(report(callDuration=0, hangupReason=7, hangupCode="486"))
    assert record.status is Status.ANSWERED


def test_call_duration_alone_means_answered() -> None:
    record = normalize(report(answerTime="", hangupReason=0, hangupCode="480"))
    assert record.status is Status.ANSWERED
    assert record.answered_at is None


@pytest.mark.parametrize(
    ("reason", "status"),
    [
        (0, Status.NO_ANSWER),  # outgoing call not answered
        (1, Status.CANCELLED),  # outgoing call hung up before an answer
        (2, Status.CANCELLED),  # transfer ringing, hung up
        (3, Status.UNKNOWN),  # transfer successful: says nothing about an unconnected call
        (4, Status.FAILED),  # call abnormality
        (5, Status.FAILED),  # operator has no service
        (6, Status.FAILED),  # not in the service area
        (7, Status.BUSY),
        (8, Status.NO_ANSWER),  # incoming call not answered
        (9, Status.CANCELLED),  # incoming call hung up (abandoned)
        ("7", Status.BUSY),
        (42, Status.UNKNOWN),
        (None, Status.UNKNOWN),
    ],
)
def test_hangup_reason_gives_the_status_of_an_unconnected_call(reason: Any, status: Status) -> None:
    record = normalize(unanswered(hangupReason=reason))
    assert record.status is status
    if reason is not None:
        assert record.hangup_cause == str(reason)


@pytest.mark.parametrize(
    ("reason", "sip", "status"),
    [
        (4, "486", Status.BUSY),  # a specific SIP answer beats a vague reason
        (3, "487", Status.CANCELLED),
        (7, "480", Status.BUSY),  # both specific: the reason first
        (None, "404", Status.FAILED),
        (None, "603", Status.REJECTED),
        (4, "404", Status.FAILED),
        (None, "180", Status.UNKNOWN),
    ],
)
def test_hangup_code_refines_the_status(reason: Any, sip: str, status: Status) -> None:
    record = normalize(unanswered(hangupReason=reason, hangupCode=sip))
    assert record.status is status
    assert record.sip_code == int(sip)


# --- call type, direction, hangup_by ---------------------------------------------------


@pytest.mark.parametrize(
    ("code", "call_type", "direction"),
    [
        (1, CallType.AGENT_GROUP_CALL, Direction.OUTBOUND),
        (2, CallType.INBOUND, Direction.INBOUND),
        (3, CallType.OUTBOUND, Direction.OUTBOUND),
        ("2", CallType.INBOUND, Direction.INBOUND),
    ],
)
def test_call_type_gives_call_type_and_direction(
    code: Any, call_type: CallType, direction: Direction
) -> None:
    record = normalize(report(callType=code))
    assert record.call_type is call_type
    assert record.direction is direction
    assert "callType" not in record.extra


@pytest.mark.parametrize("code", [0, 4, "x"])
def test_unknown_call_type_is_kept_in_extra(code: Any) -> None:
    record = normalize(report(callType=code))
    assert (record.call_type, record.direction) == (None, None)
    assert record.extra["callType"] == code


@pytest.mark.parametrize(
    ("hanging", "call_type", "hangup_by"),
    [
        (0, 3, HangupBy.CALLEE),  # customer on an outgoing call: the callee
        (0, 1, HangupBy.CALLEE),  # group call to agent: outgoing too
        (0, 2, HangupBy.CALLER),  # customer on an incoming call: the caller
        ("0", 2, HangupBy.CALLER),
        (1, 3, HangupBy.AGENT),
        (1, 2, HangupBy.AGENT),
        (3, 3, HangupBy.SYSTEM),
        (2, 3, None),  # there is no 2
        (None, 3, None),
    ],
)
def test_hanging_direction_gives_hangup_by(
    hanging: Any, call_type: int, hangup_by: HangupBy | None
) -> None:
    record = normalize(report(hangingDirection=hanging, callType=call_type))
    assert record.hangup_by is hangup_by


@pytest.mark.parametrize("hanging", [0, "0"])
def test_hanging_direction_0_is_the_customer_and_is_consumed(hanging: Any) -> None:
    record = normalize(report(hangingDirection=hanging, callType=3))
    assert record.hangup_by is HangupBy.CALLEE
    assert "hangingDirection" not in record.extra


# --- optional and odd fields --------------------------------------------------------


def test_agent_account_and_costs_are_optional() -> None:
    record = normalize(report(agentAccount=None, baseCost=None, cost=None))
    assert record.agent_account is None
    assert record.cost is None
    assert record.base_cost is None
    assert record.currency == "USD"
    assert not {"agentAccount", "baseCost", "cost"} & set(record.extra)


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        ([], ()),
        (["Callback"], ("Callback",)),
        ("Intended customers,High level", ("Intended customers", "High level")),
    ],
)
def test_labels(labels: Any, expected: tuple[str, ...]) -> None:
    assert normalize(report(labels=labels)).labels == expected


def test_unreadable_labels_are_kept_in_extra() -> None:
    record = normalize(report(labels=[{"name": "x"}]))
    assert record.labels == ()
    assert record.extra["labels"] == [{"name": "x"}]


def test_fields_are_trimmed() -> None:
    record = normalize(report(caller=" 6328881234 ", called="639171234567\n"))
    assert (record.caller, record.callee) == ("6328881234", "639171234567")


def test_money_as_json_numbers_stays_exact() -> None:
    body = SAMPLE.replace('"cost": "0.0135"', '"cost": 0.01350000000000000000001')
    record = record_of(NAME, body)
    assert str(record.cost) == "0.01350000000000000000001"


# --- rejects ------------------------------------------------------------------------


@pytest.mark.parametrize("body", ["", " \r\n "])
def test_empty_body_is_rejected(body: str) -> None:
    with pytest.raises(Reject) as caught:
        ADAPTER.parse(make_envelope(NAME, body, content_type=CT), make_source(NAME))
    assert caught.value.reason is Reason.EMPTY_BODY


@pytest.mark.parametrize("body", ['{"callSessionId": NaN}', "{'a': 1}", "callSessionId=1"])
def test_unparseable_body_is_rejected(body: str) -> None:
    with pytest.raises(Reject) as caught:
        ADAPTER.parse(make_envelope(NAME, body, content_type=CT), make_source(NAME))
    assert caught.value.reason is Reason.UNPARSEABLE_BODY


@pytest.mark.parametrize("body", ["[" + SAMPLE + "]", '"x"', "null"])
def test_a_body_that_is_not_an_object_is_rejected(body: str) -> None:
    (payload,) = ADAPTER.parse(make_envelope(NAME, body, content_type=CT), make_source(NAME))
    with pytest.raises(Reject) as caught:
        normalize(payload)
    assert caught.value.reason is Reason.NOT_AN_OBJECT


@pytest.mark.parametrize("session_id", [None, "", "null"])
def test_missing_call_session_id_is_rejected(session_id: str | None) -> None:
    payload = report(callSessionId=None)
    if session_id is not None:
        payload["callSessionId"] = session_id
    with pytest.raises(Reject) as caught:
        normalize(payload)
    assert caught.value.reason is Reason.MISSING_FIELD


def test_record_id_is_stable_across_re_pushes() -> None:
    first = normalize(report())
    repush = normalize(report(remark="edited", callDuration=16))
    assert first.record_id == repush.record_id == record_id_for("src", first.external_id)
    assert normalize(report(), make_source(NAME, name="other")).record_id != first.record_id


@pytest.mark.parametrize("zone", ["+08:00", "Asia/Shanghai", "-05:00"])
def test_simulate_round_trips(zone: str) -> None:
    source = make_source(NAME, timezone=zone)
    statuses = set()
    for payload, record, external_id in simulated_records(NAME, source, range(50)):
        assert record.external_id == external_id == payload["callSessionId"]
        assert record.raw == payload
        connected = record.answered_at is not None or (record.talk_seconds or 0) > 0
        assert (record.status is Status.ANSWERED) == connected
        # Local wall-clock times, read back in the same zone, are the simulated moment.
        assert record.ended_at is not None
        assert timedelta(0) <= NOW - record.ended_at <= timedelta(seconds=61)
        assert record.started_at is not None
        assert record.started_at < record.ended_at
        assert record.call_type is not None
        statuses.add(record.status)
    assert {Status.ANSWERED, Status.NO_ANSWER} <= statuses


def test_ingress_contract() -> None:
    assert_ingress_contract(
        "nxcloud.call_center_report",
        IngressContract(
            methods=frozenset({"POST"}),
            signing_modes=frozenset(),
            volatile_fields=frozenset(),
            answers={
                Outcome.ACCEPTED: (b"success", "text/plain"),
                Outcome.UNAVAILABLE: (b"error", "text/plain"),
                Outcome.TIMEOUT: (b"error", "text/plain"),
            },
        ),
    )
