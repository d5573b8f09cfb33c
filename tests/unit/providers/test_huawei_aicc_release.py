"""Huawei AICC release event: `{k=v, ...}`, JSON or form bodies, shared-key signatures."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import pytest

from schemas.content import content_hash
from schemas.providers import HTTP_STATUS, Outcome, Reason, Reject, Unauthenticated
from schemas.providers.huawei_aicc_release import (
    DOCUMENTED_SAMPLE,
    parse_map_rendering,
    render_map,
    sign,
    signing_strings,
)
from schemas.providers.signing import base64_digest
from schemas.record import (
    CallRecord,
    CallType,
    Direction,
    HangupBy,
    Status,
    record_id_for,
)
from schemas.sources import Source

from .conftest import (
    NOW,
    SECRET,
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

NAME = "huawei.aicc_release"
ADAPTER = provider(NAME)
MODES = ("sha256", "hmac-sha256")
FORM = "application/x-www-form-urlencoded"

DOC_BODY = DOCUMENTED_SAMPLE  # the document's example request body, verbatim

DOC_FIELDS: dict[str, str | None] = {
    "agentAlertingTime": "2022/02/22,10:04:29:004",
    "agentReleaseTime": "2022/02/22,10:04:29:004",
    "agentTalkDuration": "2022/02/22,10:04:29:004",
    "agentTalkingTime": "2022/02/22,10:04:29:004",
    "alertingTime": "2022/02/22,10:04:29:004",
    "callData": None,
    "callSerialNo": "1197765398201387012",
    "called": "88880067",
    "caller": "960003",
    "callerPresent": "960003",
    "createCallTime": "2022/02/22,10:04:28:823",
    "locationId": "0",
    "nonce": "-1482421808053124529",
    "recordfile": "Y:/2/mobileAgent/20220222/1645524268-824.wav",
    "releaseReason": "0",
    "releaseTime": "2022/02/22,10:04:36:318",
    "serviceNo": None,
    "signature": "+lk3***************************tO50=",
    "talkDuration": "0",
    "talkingTime": "2022/02/22,10:04:30:418",
    "timestamp": "1645524163326",
}
SIGNATURE_FIELDS = ("timestamp", "nonce", "signature")
EVENT = {k: v for k, v in DOC_FIELDS.items() if k not in SIGNATURE_FIELDS}


def event(**changes: str | None) -> dict[str, str | None]:
    out = dict(EVENT)
    out.update(changes)
    return out


def normalize(payload: dict[str, Any], source: Source | None = None) -> CallRecord:
    return ADAPTER.normalize(payload, source or make_source(NAME))


def as_form(fields: dict[str, str | None]) -> str:
    return urlencode({k: "null" if v is None else v for k, v in fields.items()})


def as_map(fields: dict[str, str | None]) -> str:
    return "{" + ", ".join(f"{k}={'null' if v is None else v}" for k, v in fields.items()) + "}"


def render(fields: dict[str, str | None], body_format: str) -> tuple[str, str]:
    """(body, content type) of the fields in one of the three accepted renderings."""
    if body_format == "json":
        return json.dumps(fields), "application/json"
    if body_format == "form":
        return as_form(fields), FORM
    return as_map(fields), ""


# --- signing, computed independently from NOTES.md's recipe ----------------------------


def hand_signature(
    params: dict[str, str | None],
    timestamp: str,
    nonce: str,
    secret: str,
    mode: str,
    *,
    braced: bool = True,
) -> str:
    """Every parameter but timestamp/nonce/signature, sorted, `k=v` joined by commas, spaces
    removed (a TreeMap rendering); appSecret_timestamp_nonce_params; Base64 of SHA-256 or of
    HMAC-SHA256 keyed with the appSecret."""
    pairs = ",".join(
        f"{key}={'null' if params[key] is None else params[key]}"
        for key in sorted(params)
        if key not in SIGNATURE_FIELDS
    ).replace(" ", "")
    text = f"{secret}_{timestamp}_{nonce}_" + ("{" + pairs + "}" if braced else pairs)
    if mode == "hmac-sha256":
        digest = hmac.new(secret.encode("utf-8"), text.encode("utf-8"), hashlib.sha256).digest()
    else:
        digest = hashlib.sha256(text.encode("utf-8")).digest()
    return base64.b64encode(digest).decode("ascii")


def signed(
    fields: dict[str, str | None],
    mode: str,
    *,
    timestamp: str,
    nonce: str = "-1482421808053124529",
    secret: str = SECRET,
    braced: bool = True,
) -> dict[str, str | None]:
    signature = hand_signature(fields, timestamp, nonce, secret, mode, braced=braced)
    return {**fields, "timestamp": timestamp, "nonce": nonce, "signature": signature}


def seconds(moment: datetime) -> str:
    return str(int(moment.timestamp()))


def millis(moment: datetime) -> str:
    return str(int(moment.timestamp() * 1000))


def authenticate(body: str | bytes, content_type: str, source: Source) -> None:
    ADAPTER.authenticate(
        make_envelope(NAME, body, content_type=content_type), {}, source, NOW.timestamp()
    )


def signed_source(mode: str = "sha256", **options: Any) -> Source:
    return make_source(NAME, signing=mode, secret=SECRET, **options)


def test_signing_strings_literally() -> None:
    params: dict[str, Any] = {
        "releaseReason": "0",
        "called": "8888 0067",
        "callSerialNo": "123",
        "callData": None,
        "timestamp": "ignored",
        "nonce": "ignored",
        "signature": "ignored",
    }
    assert signing_strings(params, "1700000000", "42", "s3cret") == [
        "s3cret_1700000000_42_{callData=null,callSerialNo=123,called=88880067,releaseReason=0}",
        "s3cret_1700000000_42_callData=null,callSerialNo=123,called=88880067,releaseReason=0",
    ]


@pytest.mark.parametrize("mode", MODES)
def test_signature_of_matches_a_hand_computed_digest(mode: str) -> None:
    text = "s3cret_1700000000_42_{called=88880067}"
    if mode == "sha256":
        expected = base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()
    else:
        expected = base64.b64encode(
            hmac.new(b"s3cret", text.encode(), hashlib.sha256).digest()
        ).decode()
    assert base64_digest(text, mode, "s3cret") == expected
    assert len(expected) == 44


def test_the_two_modes_differ() -> None:
    text = signing_strings(EVENT, "1", "2", SECRET)[0]
    assert base64_digest(text, "sha256", SECRET) != base64_digest(text, "hmac-sha256", SECRET)


@pytest.mark.parametrize("mode", MODES)
def test_sign_matches_the_hand_computed_signature(mode: str) -> None:
    result = sign(EVENT, mode, SECRET, NOW, random.Random(7))
    assert result["timestamp"] == millis(NOW)
    nonce = result["nonce"]
    assert isinstance(nonce, str)
    assert result["signature"] == hand_signature(EVENT, millis(NOW), nonce, SECRET, mode)
    assert {k: v for k, v in result.items() if k not in SIGNATURE_FIELDS} == EVENT
    authenticate(json.dumps(result), "application/json", signed_source(mode))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("braced", [True, False])
@pytest.mark.parametrize("unit", [seconds, millis])
@pytest.mark.parametrize("body_format", ["map", "json", "form"])
def test_a_correct_signature_verifies(mode: str, braced: bool, unit: Any, body_format: str) -> None:
    fields = signed(event(called="8888 0067"), mode, timestamp=unit(NOW), braced=braced)
    body, content_type = render(fields, body_format)
    authenticate(body, content_type, signed_source(mode))


@pytest.mark.parametrize("mode", MODES)
def test_signed_in_the_other_mode_fails(mode: str) -> None:
    other = MODES[1] if mode == MODES[0] else MODES[0]
    body, content_type = render(signed(EVENT, other, timestamp=millis(NOW)), "json")
    with pytest.raises(Unauthenticated, match="does not match"):
        authenticate(body, content_type, signed_source(mode))


@pytest.mark.parametrize("mode", MODES)
def test_wrong_secret_fails(mode: str) -> None:
    fields = signed(EVENT, mode, timestamp=millis(NOW), secret="not-the-app-secret")
    with pytest.raises(Unauthenticated, match="does not match"):
        authenticate(as_map(fields), "", signed_source(mode))


@pytest.mark.parametrize("field", ["called", "talkDuration", "callData", "timestamp", "nonce"])
def test_tampered_field_fails(field: str) -> None:
    fields = signed(EVENT, "sha256", timestamp=millis(NOW))
    fields[field] = millis(NOW + timedelta(seconds=1)) if field == "timestamp" else "123"
    with pytest.raises(Unauthenticated, match="does not match"):
        authenticate(json.dumps(fields), "application/json", signed_source())


def test_an_added_field_fails() -> None:
    fields = {**signed(EVENT, "sha256", timestamp=millis(NOW)), "extraField": "x"}
    with pytest.raises(Unauthenticated, match="does not match"):
        authenticate(json.dumps(fields), "application/json", signed_source())


@pytest.mark.parametrize("unit", [seconds, millis])
@pytest.mark.parametrize(
    ("offset", "ok"),
    [(0, True), (-299, True), (299, True), (-301, False), (301, False), (-86400, False)],
)
def test_timestamp_must_be_within_the_allowed_skew(unit: Any, offset: int, ok: bool) -> None:
    fields = signed(EVENT, "sha256", timestamp=unit(NOW + timedelta(seconds=offset)))
    body, content_type = render(fields, "json")
    if ok:
        authenticate(body, content_type, signed_source())
    else:
        with pytest.raises(Unauthenticated, match="skew"):
            authenticate(body, content_type, signed_source())


def test_max_skew_seconds_is_per_source() -> None:
    fields = signed(EVENT, "sha256", timestamp=millis(NOW - timedelta(seconds=20)))
    body, content_type = render(fields, "json")
    authenticate(body, content_type, signed_source(max_skew_seconds=30))
    with pytest.raises(Unauthenticated, match="skew"):
        authenticate(body, content_type, signed_source(max_skew_seconds=10))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("body_format", ["map", "json", "form"])
def test_send_signs_the_documented_example_anew_in_its_own_form(
    mode: str, body_format: str
) -> None:
    text = DOC_BODY if body_format == "map" else render(DOC_FIELDS, body_format)[0]
    request = ADAPTER.documented(signed_source(mode), NOW, text)
    assert request.content_type == render(DOC_FIELDS, body_format)[1]
    authenticate(request.body, request.content_type, signed_source(mode))
    envelope = make_envelope(NAME, request.body, content_type=request.content_type)
    sent = parse_one(NAME, envelope)
    as_written = parse_one(NAME, make_envelope(NAME, text, content_type=request.content_type))

    def unsigned(fields: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in fields.items() if k not in SIGNATURE_FIELDS}

    assert unsigned(sent) == unsigned(as_written)
    assert sent["signature"] != as_written["signature"]
    assert sent["timestamp"] == millis(NOW)


def test_send_gives_an_unsigned_source_the_documented_example_verbatim() -> None:
    request = ADAPTER.documented(make_source(NAME), NOW)
    assert (request.method, request.body, request.content_type) == ("POST", DOC_BODY.encode(), "")


def test_the_documented_example_is_far_too_old() -> None:
    with pytest.raises(Unauthenticated, match="skew"):
        authenticate(DOC_BODY, "", signed_source())


@pytest.mark.parametrize("missing", ["signature", "nonce", "timestamp"])
def test_missing_signature_fields_fail(missing: str) -> None:
    fields = signed(EVENT, "sha256", timestamp=millis(NOW))
    del fields[missing]
    with pytest.raises(Unauthenticated, match="missing"):
        authenticate(json.dumps(fields), "application/json", signed_source())


@pytest.mark.parametrize("value", [None, ""])
def test_null_or_empty_signature_fails(value: str | None) -> None:
    fields = {**signed(EVENT, "sha256", timestamp=millis(NOW)), "signature": value}
    with pytest.raises(Unauthenticated):
        authenticate(json.dumps(fields), "application/json", signed_source())


def test_non_numeric_timestamp_fails() -> None:
    fields = signed(EVENT, "sha256", timestamp="yesterday")
    with pytest.raises(Unauthenticated, match="not a number"):
        authenticate(json.dumps(fields), "application/json", signed_source())


@pytest.mark.parametrize("body", ["", "{broken", '{"a": }'])
def test_unreadable_signed_body_fails(body: str) -> None:
    with pytest.raises(Unauthenticated, match="cannot be read"):
        authenticate(body, "", signed_source())


def test_unsigned_source_checks_nothing() -> None:
    source = make_source(NAME)
    assert source.signing == "none"
    authenticate(as_map(EVENT), "", source)
    authenticate("not even a body {", "", source)


def _nonce_giving(mode: str, wanted: Any) -> tuple[dict[str, str | None], str]:
    """Signed fields whose signature satisfies `wanted`, and that signature."""
    for n in range(100_000):
        fields = signed(EVENT, mode, timestamp=millis(NOW), nonce=str(n))
        signature = fields["signature"]
        assert signature is not None
        if wanted(signature):
            return fields, signature
    raise AssertionError("no such nonce")  # pragma: no cover


def _unescaped_form(fields: dict[str, str | None], signature: str) -> str:
    """A form body whose signature was not percent-escaped: its '+' arrive as spaces."""
    others = {k: v for k, v in fields.items() if k != "signature"}
    return as_form(others) + "&signature=" + signature


@pytest.mark.parametrize("mode", MODES)
def test_plus_in_signature_sent_unescaped_in_a_form_body_still_verifies(mode: str) -> None:
    fields, signature = _nonce_giving(mode, lambda s: "+" in s[1:] and not s.startswith("+"))
    body = _unescaped_form(fields, signature)
    assert parse_one(NAME, make_envelope(NAME, body, content_type=FORM))["signature"] != signature
    authenticate(body, FORM, signed_source(mode))


@pytest.mark.parametrize("mode", MODES)
def test_leading_plus_in_signature_sent_unescaped_still_verifies(mode: str) -> None:
    fields, signature = _nonce_giving(mode, lambda s: s.startswith("+"))
    authenticate(_unescaped_form(fields, signature), FORM, signed_source(mode))


def test_non_ascii_signature_is_unauthenticated() -> None:
    fields = {**signed(EVENT, "sha256", timestamp=millis(NOW)), "signature": "签名"}
    with pytest.raises(Unauthenticated):
        authenticate(json.dumps(fields), "application/json", signed_source())


def test_malformed_timestamp_is_unauthenticated() -> None:
    fields = signed(EVENT, "sha256", timestamp="+-1")
    with pytest.raises(Unauthenticated):
        authenticate(json.dumps(fields), "application/json", signed_source())


@pytest.mark.parametrize("mode", MODES)
def test_nonce_and_signature_do_not_change_the_content(mode: str) -> None:
    first = sign(EVENT, mode, SECRET, NOW, random.Random(1))
    again = sign(EVENT, mode, SECRET, NOW + timedelta(seconds=5), random.Random(2))
    assert first["signature"] != again["signature"]
    assert ADAPTER.volatile_fields == frozenset(SIGNATURE_FIELDS)
    source = make_source(NAME)
    records = [ADAPTER.normalize(fields, source) for fields in (first, again)]
    hashes = [content_hash(record, ADAPTER.volatile_fields) for record in records]
    assert hashes[0] == hashes[1]
    assert content_hash(records[0], frozenset()) != content_hash(records[1], frozenset())


# --- parsing -----------------------------------------------------------------------------


def test_documented_example_parses_verbatim() -> None:
    assert parse_one(NAME, make_envelope(NAME, DOC_BODY)) == DOC_FIELDS


@pytest.mark.parametrize("content_type", ["", "text/plain", FORM, "application/json"])
def test_map_rendering_is_recognized_whatever_the_content_type(content_type: str) -> None:
    envelope = make_envelope(NAME, DOC_BODY, content_type=content_type)
    assert parse_one(NAME, envelope) == DOC_FIELDS


def test_map_rendering_values() -> None:
    assert parse_map_rendering("{a=1, b=null, c=, d=x=y, e=2022/02/22,10:04:29:004}") == {
        "a": "1",
        "b": None,
        "c": "",
        "d": "x=y",
        "e": "2022/02/22,10:04:29:004",
    }
    assert parse_map_rendering("{}") == {}


def test_render_map_round_trips() -> None:
    assert parse_map_rendering(render_map(DOC_FIELDS)) == DOC_FIELDS


def test_a_sorted_body_whose_call_data_holds_a_name_keeps_it_in_user_data() -> None:
    # The document's example is a TreeMap's rendering (sorted keys): `name=` sorts after
    # callSerialNo, so it cannot be a field of that body.
    body = DOC_BODY.replace("callData=null", "callData=order-9, name=Ann")
    envelope = make_envelope(NAME, body)
    assert parse_one(NAME, envelope) == {**DOC_FIELDS, "callData": "order-9, name=Ann"}
    record = ADAPTER.normalize(parse_one(NAME, envelope), make_source(NAME))
    assert record.user_data == "order-9, name=Ann"
    assert "name" not in record.extra


def test_an_unsorted_body_whose_call_data_holds_a_name_keeps_the_anchored_reading() -> None:
    body = "{callSerialNo=7, callData=order-9, name=Ann, caller=12, called=88880067}"
    assert parse_one(NAME, make_envelope(NAME, body)) == {
        "callSerialNo": "7",
        "callData": "order-9",
        "name": "Ann",
        "caller": "12",
        "called": "88880067",
    }


@pytest.mark.parametrize("body", ["{garbage}", "{a=1", "{=1}"])
def test_broken_map_rendering_is_rejected(body: str) -> None:
    with pytest.raises(Reject) as caught:
        ADAPTER.parse(make_envelope(NAME, body), make_source(NAME))
    assert caught.value.reason is Reason.UNPARSEABLE_BODY


@pytest.mark.parametrize(
    ("body", "content_type", "reason"),
    [
        ("", "", Reason.EMPTY_BODY),
        ("  \n ", "application/json", Reason.EMPTY_BODY),
        ('{"callSerialNo": }', "", Reason.UNPARSEABLE_BODY),
        ('{"a": NaN}', "", Reason.UNPARSEABLE_BODY),
        ("[1, 2]", "application/json", Reason.NOT_AN_OBJECT),
        ('"x"', "application/json;charset=UTF-8", Reason.NOT_AN_OBJECT),
    ],
)
def test_bad_bodies_are_rejected(body: str, content_type: str, reason: Reason) -> None:
    with pytest.raises(Reject) as caught:
        ADAPTER.parse(make_envelope(NAME, body, content_type=content_type), make_source(NAME))
    assert caught.value.reason is reason


@pytest.mark.parametrize("body", ["{}", "callSerialNo=", "{callSerialNo=null}", '{"called": "1"}'])
def test_missing_call_serial_no_is_rejected(body: str) -> None:
    payload = parse_one(NAME, make_envelope(NAME, body))
    with pytest.raises(Reject) as caught:
        normalize(payload)
    assert caught.value.reason is Reason.MISSING_FIELD


# --- normalizing -------------------------------------------------------------------------


def check_documented_example(record: CallRecord) -> None:
    assert (record.provider, record.event) == ("huawei", "aicc_release")
    assert record.external_id == "1197765398201387012"
    assert record.record_id == record_id_for("src", "1197765398201387012")
    assert record.status is Status.ANSWERED  # a talking time, though talkDuration is 0
    assert record.call_type is CallType.BIDIRECTIONAL
    assert record.direction is Direction.OUTBOUND
    assert record.caller == "960003"
    assert record.callee == "88880067"
    assert record.display_number == "960003"
    assert record.hangup_cause == "0"
    assert record.hangup_by is HangupBy.CALLEE
    assert record.sip_code is None
    # yyyy/MM/dd,HH:mm:ss:SSS at +08:00, milliseconds kept.
    assert record.started_at == utc(2022, 2, 22, 2, 4, 28, 823000)
    assert record.ringing_at == utc(2022, 2, 22, 2, 4, 29, 4000)
    assert record.answered_at == utc(2022, 2, 22, 2, 4, 30, 418000)
    assert record.ended_at == utc(2022, 2, 22, 2, 4, 36, 318000)
    assert record.talk_seconds == 0
    assert record.recording_url == "Y:/2/mobileAgent/20220222/1645524268-824.wav"
    assert record.user_data is None
    assert record.agent_id is None
    assert record.currency == "USD"
    assert record.cost is None
    assert record.extra == {
        "agentAlertingTime": "2022/02/22,10:04:29:004",
        "agentReleaseTime": "2022/02/22,10:04:29:004",
        "agentTalkDuration": "2022/02/22,10:04:29:004",  # a timestamp, kept raw
        "agentTalkingTime": "2022/02/22,10:04:29:004",
        "locationId": "0",
        "nonce": "-1482421808053124529",
        "signature": "+lk3***************************tO50=",
        "timestamp": "1645524163326",
    }


def test_documented_example() -> None:
    record = record_of(NAME, DOC_BODY, content_type="")
    check_documented_example(record)
    assert record.raw == DOC_FIELDS


def test_documented_example_as_json() -> None:
    record = record_of(NAME, json.dumps(DOC_FIELDS, indent=2), content_type="")
    check_documented_example(record)
    assert record.raw == DOC_FIELDS


def test_documented_example_as_a_form_body() -> None:
    record = record_of(
        NAME, urlencode({k: v or "null" for k, v in DOC_FIELDS.items()}), content_type=FORM
    )
    check_documented_example(record)
    assert record.raw["signature"] == "+lk3***************************tO50="
    assert record.raw["serviceNo"] == "null"


def test_every_field_lands_in_a_column_or_in_extra() -> None:
    payload = {**DOC_FIELDS, "callData": "order-9", "serviceNo": "1001", "fooBar": "x"}
    record = normalize(payload)
    column_of = {
        "callSerialNo": "external_id",
        "serviceNo": "agent_id",
        "called": "callee",
        "caller": "caller",
        "callerPresent": "display_number",
        "callData": "user_data",
        "createCallTime": "started_at",
        "alertingTime": "ringing_at",
        "talkingTime": "answered_at",
        "releaseTime": "ended_at",
        "talkDuration": "talk_seconds",
        "recordfile": "recording_url",
        "releaseReason": "hangup_cause",
    }
    assert_every_field_lands(payload, record, column_of)
    assert record.extra["fooBar"] == "x"
    assert (record.user_data, record.agent_id) == ("order-9", "1001")


@pytest.mark.parametrize(
    ("zone", "answered"),
    [
        (None, utc(2022, 2, 22, 2, 4, 30, 418000)),
        ("Asia/Shanghai", utc(2022, 2, 22, 2, 4, 30, 418000)),
        ("-05:00", utc(2022, 2, 22, 15, 4, 30, 418000)),
        ("UTC", utc(2022, 2, 22, 10, 4, 30, 418000)),
    ],
)
def test_times_are_read_in_the_source_zone(zone: str | None, answered: datetime) -> None:
    record = normalize(dict(DOC_FIELDS), make_source(NAME, timezone=zone))
    assert record.answered_at == answered
    assert record.ended_at == answered + timedelta(seconds=5, milliseconds=900)


@pytest.mark.parametrize(
    ("value", "moment"),
    [
        ("2022/02/22,10:04:30", utc(2022, 2, 22, 2, 4, 30)),
        ("2022-02-22 10:04:30", utc(2022, 2, 22, 2, 4, 30)),
        ("1645524270418", utc(2022, 2, 22, 10, 4, 30, 418000)),  # a 13-digit epoch: UTC
    ],
)
def test_other_time_renderings(value: str, moment: datetime) -> None:
    assert normalize(event(talkingTime=value)).answered_at == moment


@pytest.mark.parametrize("value", ["", "null", "0", None])
def test_no_talking_time(value: str | None) -> None:
    record = normalize(event(talkingTime=value))
    assert record.answered_at is None
    assert "talkingTime" not in record.extra


def test_unreadable_time_is_kept_in_extra() -> None:
    record = normalize(event(releaseTime="22.02.2022 10:04"))
    assert record.ended_at is None
    assert record.extra["releaseTime"] == "22.02.2022 10:04"


def test_duration_holding_a_timestamp_is_kept_raw() -> None:
    record = normalize(event(talkDuration="2022/02/22,10:04:29:004"))
    assert record.talk_seconds is None
    assert record.extra["talkDuration"] == "2022/02/22,10:04:29:004"


def test_talk_duration_alone_means_answered() -> None:
    record = normalize(event(talkingTime=None, talkDuration="15", releaseReason="5"))
    assert record.status is Status.ANSWERED
    assert record.talk_seconds == 15


@pytest.mark.parametrize(
    ("reason", "status", "hangup_by"),
    [
        ("0", Status.REJECTED, HangupBy.CALLEE),  # called party hung up while it rang
        ("1", Status.CANCELLED, HangupBy.AGENT),  # calling party (the agent's phone) gave up
        ("2", Status.FAILED, None),  # call to the calling party failed
        ("3", Status.FAILED, None),  # call to the called party failed
        ("4", Status.NO_ANSWER, None),  # calling party did not answer
        ("5", Status.NO_ANSWER, None),  # called party did not answer
        ("17", Status.FAILED, None),  # other exceptions
        ("", Status.UNKNOWN, None),
        (None, Status.UNKNOWN, None),
    ],
)
def test_release_reason_of_an_unconnected_call(
    reason: str | None, status: Status, hangup_by: HangupBy | None
) -> None:
    record = normalize(event(talkingTime=None, talkDuration="0", releaseReason=reason))
    assert record.status is status
    assert record.hangup_by is hangup_by
    assert record.hangup_cause == (reason or None)


def test_record_id_is_stable_across_renderings_and_re_pushes() -> None:
    ids = {
        record_of(NAME, DOC_BODY, content_type="").record_id,
        record_of(NAME, json.dumps(DOC_FIELDS)).record_id,
        normalize(event(talkDuration="7")).record_id,
    }
    assert ids == {record_id_for("src", "1197765398201387012")}


# --- contract with the ingress -------------------------------------------------------


@pytest.mark.parametrize(
    "outcome", [Outcome.UNAVAILABLE, Outcome.UNAUTHORIZED, Outcome.TOO_LARGE, Outcome.FORBIDDEN]
)
def test_answer_failure_has_a_non_zero_ret_code(outcome: Outcome) -> None:
    answer = ADAPTER.answer(outcome)
    assert answer.status == HTTP_STATUS[outcome]
    assert answer.status != 200
    body = json.loads(answer.body)
    assert set(body) == {"retCode", "retMsg"}
    assert isinstance(body["retCode"], str)
    assert body["retCode"] != "0"
    assert body["retMsg"]
    assert answer.content_type == "application/json"


@pytest.mark.parametrize("signing", ["none", *MODES])
def test_simulate_round_trips(signing: str) -> None:
    source = make_source(NAME, signing=signing)
    statuses = set()
    for payload, record, external_id in simulated_records(NAME, source, range(50)):
        assert record.external_id == external_id == payload["callSerialNo"]
        assert record.raw == payload
        assert (record.status is Status.ANSWERED) == (record.answered_at is not None)
        assert record.ended_at is not None
        assert timedelta(0) <= NOW - record.ended_at <= timedelta(seconds=31)
        assert ("signature" in payload) == (signing != "none")
        statuses.add(record.status)
    assert {Status.ANSWERED, Status.FAILED, Status.NO_ANSWER} <= statuses


@pytest.mark.parametrize("reason", ["abc", "99", "-1"])
def test_a_release_reason_outside_the_table_is_a_failure(reason: str) -> None:
    record = normalize(event(talkingTime=None, talkDuration="0", releaseReason=reason))
    assert record.status is Status.FAILED
    assert record.hangup_cause == reason


def test_a_13_digit_epoch_sent_as_a_json_number_is_read() -> None:
    record = normalize({**event(), "talkingTime": 1645524270418})
    assert record.answered_at == utc(2022, 2, 22, 10, 4, 30, 418000)


def test_ingress_contract() -> None:
    assert_ingress_contract(
        "huawei.aicc_release",
        IngressContract(
            methods=frozenset({"POST"}),
            signing_modes=frozenset({"sha256", "hmac-sha256"}),
            volatile_fields=frozenset({"timestamp", "nonce", "signature"}),
            answers={
                Outcome.ACCEPTED: (b'{"retCode":"0","retMsg":"success"}', "application/json"),
                Outcome.UNAUTHORIZED: (
                    b'{"retCode":"401","retMsg":"unauthorized"}',
                    "application/json",
                ),
                Outcome.UNAVAILABLE: (
                    b'{"retCode":"503","retMsg":"unavailable"}',
                    "application/json",
                ),
            },
        ),
    )
