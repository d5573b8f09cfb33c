"""Inputs an adversarial review got through, the parsing side: money spelled `-0`, digits
that are not ASCII, NUL hidden by a multipart transfer encoding, keys that collide, and a
signed Huawei body that signs like another. Each test drives `normalize_envelope` (the path
every callback takes in a worker) or the provider's signature check."""

from __future__ import annotations

import base64
import random
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

import pytest

from cdrflow import logs
from ingress.edge import scrub_token
from schemas.jsoncodec import dumps, loads
from schemas.providers import Unauthenticated
from schemas.providers.huawei_aicc_release import PROVIDER as HUAWEI_PROVIDER
from schemas.providers.huawei_aicc_release import render_map, sign
from schemas.record import CallRecord, Ledger, published_body
from schemas.sources_file import parse_sources
from tests.support.samples import Sample, envelope
from tests.support.sources import SOURCES_TOML, TOKENS
from tests.unit.test_hostile_input import FORM, REGISTRY, SOURCES, T0, one_record, run

JSON = "application/json"

# --- money spelled -0 -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "published"),
    [
        (b'{"callSessionId":"z-1","cost":"-0"}', "0"),
        (b'{"callSessionId":"z-1","cost":"-0.00"}', "0.00"),
        (b'{"callSessionId":"z-1","cost":-0.0}', "0.0"),
        (b'{"callSessionId":"z-1","cost":-0}', "0"),
        (b'{"callSessionId":"z-1","cost":"-0e-2"}', "0.00"),
    ],
)
def test_negative_zero_money_is_published_as_the_row_stores_it(body: bytes, published: str) -> None:
    record = one_record(Sample("nx-cc", "z-1", "POST", body, JSON))
    assert record.cost == 0
    assert not record.cost.is_signed()  # numeric has no -0: the row says 0
    message = loads(published_body(record, Ledger(T0, T0, T0, T0, 1, 1)))
    assert message["cost"] == published


@pytest.mark.parametrize("column", ["rate", "cost", "base_cost"])
def test_every_money_column_drops_the_sign_of_zero(column: str) -> None:
    amounts: dict[str, Any] = {column: Decimal("-0.0")}
    record = CallRecord("src", "acme", "nxcloud", "voice_dr", "e", raw={}, **amounts)
    assert str(getattr(record, column)) == "0.0"


# --- digits -----------------------------------------------------------------------------

ARABIC_INDIC = "١٢٣"  # 123
FULL_WIDTH = "１２３"
NOT_ASCII_NUMBERS = [ARABIC_INDIC, FULL_WIDTH, "1_23", "٠.٥"]


def cc_record(**fields: Any) -> Any:
    body = dumps({"callSessionId": "d-1", **fields})
    return one_record(Sample("nx-cc", "d-1", "POST", body, JSON))


@pytest.mark.parametrize("number", NOT_ASCII_NUMBERS)
@pytest.mark.parametrize(
    ("field", "column"),
    [
        ("cost", "cost"),
        ("baseCost", "base_cost"),
        ("callDuration", "talk_seconds"),
        ("hangupCode", "sip_code"),
    ],
)
def test_a_call_center_number_in_other_digits_is_kept_in_extra(
    field: str, column: str, number: str
) -> None:
    record = cc_record(**{field: number})
    assert getattr(record, column) is None
    assert record.extra[field] == number


@pytest.mark.parametrize("number", NOT_ASCII_NUMBERS)
@pytest.mark.parametrize(
    ("field", "column"),
    [
        ("rate", "rate"),
        ("cost", "cost"),
        ("baseCost", "base_cost"),
        ("callDuration", "talk_seconds"),
        ("ringDuration", "ring_seconds"),
        ("chargedDuration", "billed_seconds"),
        ("sipCode", "sip_code"),
        ("answerTime", "answered_at"),
    ],
)
def test_a_voice_report_number_in_other_digits_is_kept_in_extra(
    field: str, column: str, number: str
) -> None:
    body = dumps({"voiceId": "d-2", field: number})
    record = one_record(Sample("nx-voice", "d-2", "POST", body, JSON))
    assert getattr(record, column) is None
    assert record.extra[field] == number


@pytest.mark.parametrize(
    ("field", "column", "value"),
    [
        ("customer_price", "rate", ARABIC_INDIC),
        ("basic_price", "base_cost", FULL_WIDTH),
        ("duration", "talk_seconds", ARABIC_INDIC),
        ("cycle", "billing_increment", FULL_WIDTH),
        ("start_time", "started_at", "٢٠٢٣-11-17 13:42:30"),
        ("end_time", "ended_at", "２０２３-11-17 13:42:48"),
    ],
)
def test_a_dr_number_or_time_in_other_digits_is_kept_in_extra(
    field: str, column: str, value: str
) -> None:
    body = urlencode({"messageid": "d-3", field: value}).encode()
    record = one_record(Sample("nx-dr", "d-3", "POST", body, FORM))
    assert getattr(record, column) is None
    assert record.extra[field] == value


@pytest.mark.parametrize(
    ("field", "column", "value"),
    [
        ("talkingTime", "answered_at", "٢٠٢٢/02/22,10:04:30:418"),
        ("releaseTime", "ended_at", "2022/02/22,10:0４:30"),
        ("createCallTime", "started_at", "٢٠٢٢-02-22 10:04:30"),
        ("talkDuration", "talk_seconds", ARABIC_INDIC),
    ],
)
def test_a_huawei_time_or_duration_in_other_digits_is_kept_in_extra(
    field: str, column: str, value: str
) -> None:
    body = dumps({"callSerialNo": "d-4", field: value})
    record = one_record(Sample("hw", "d-4", "POST", body, JSON))
    assert getattr(record, column) is None
    assert record.extra[field] == value


def test_ascii_numbers_are_still_read() -> None:
    record = cc_record(
        cost="+1.5", baseCost=".5", callDuration=" 12 ", answerTime="2023-11-17 13:42:33"
    )
    assert (record.cost, record.base_cost, record.talk_seconds) == (
        Decimal("1.5"),
        Decimal(".5"),
        12,
    )
    assert record.answered_at == datetime(2023, 11, 17, 5, 42, 33, tzinfo=UTC)


# --- NUL hidden by a multipart transfer encoding ----------------------------------------


def encoded_part(name: str, encoding: str, payload: str, charset: str = "") -> str:
    kind = f"Content-Type: text/plain; charset={charset}\r\n" if charset else ""
    return (
        f'Content-Disposition: form-data; name="{name}"\r\n{kind}'
        f"Content-Transfer-Encoding: {encoding}\r\n\r\n{payload}\r\n"
    )


def multipart_with(id_field: str, ext: str, part: str) -> Sample:
    boundary = "----cdrflowNUL"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{id_field}"\r\n\r\n{ext}\r\n'
        f"--{boundary}\r\n{part}--{boundary}--\r\n"
    ).encode()
    source = {"messageid": "nx-dr", "callSerialNo": "hw"}[id_field]
    return Sample(source, ext, "POST", body, f"multipart/form-data; boundary={boundary}")


NUL_PARTS = {
    "base64": encoded_part("phone", "base64", base64.b64encode(b"86\x00138").decode()),
    "quoted-printable": encoded_part("phone", "quoted-printable", "86=00138"),
    "utf-16 part": encoded_part(
        "phone", "base64", base64.b64encode("86\x00138".encode("utf-16")).decode(), "utf-16"
    ),
    "utf-7 part": encoded_part("phone", "7bit", "86+AAA-138", "utf-7"),
}


@pytest.mark.parametrize("part", NUL_PARTS.values(), ids=NUL_PARTS.keys())
def test_nul_through_a_multipart_encoding_is_scrubbed_like_nul_in_json(part: str) -> None:
    record = one_record(multipart_with("messageid", "mp-nul", part))
    # NUL's place is kept, as for a JSON "\u0000": the record can be stored.
    assert record.callee == "86\ufffd138"
    assert record.raw["phone"] == "86\ufffd138"


def test_nul_in_a_multipart_huawei_field_is_scrubbed() -> None:
    part = encoded_part("caller", "quoted-printable", "12=003")
    record = one_record(multipart_with("callSerialNo", "mp-hw", part))
    assert record.caller == "12\ufffd3"


def test_nul_in_a_multipart_id_is_still_refused() -> None:
    boundary = "----cdrflowNUL"
    body = (
        f"--{boundary}\r\n"
        + encoded_part("messageid", "base64", base64.b64encode(b"id\x00-1").decode())
        + f"--{boundary}--\r\n"
    ).encode()
    result = run(Sample("nx-dr", "", "POST", body, f"multipart/form-data; boundary={boundary}"))
    assert [r.reason for r in result.rejections] == ["invalid_field"]


# --- keys that collide -------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b'{"voiceId":"k-1","x\\u0000":"nul","x\\ufffd":"replacement"}',
        b'{"voiceId":"k-1","x\\ufffd":"replacement","x\\u0000":"nul"}',
        b'{"voiceId":"k-1","x\\ud800":"nul","x\\ufffd":"replacement"}',
    ],
)
def test_keys_that_sanitize_alike_both_stay(body: bytes) -> None:
    record = one_record(Sample("nx-voice", "k-1", "POST", body, JSON))
    for kept in (record.raw, record.extra):
        assert kept["x\ufffd"] == "replacement"  # a clean key keeps its name
        assert kept["x\ufffd~1"] == "nul"


def test_three_keys_that_sanitize_alike_all_stay() -> None:
    body = b'{"voiceId":"k-2","x\\u0000":"a","x\\ud800":"b","x\\ufffd":"c","x\\ufffd~1":"d"}'
    record = one_record(Sample("nx-voice", "k-2", "POST", body, JSON))
    assert sorted(v for k, v in record.extra.items() if k.startswith("x")) == ["a", "b", "c", "d"]


def test_nested_keys_that_sanitize_alike_both_stay() -> None:
    body = b'{"voiceId":"k-3","inner":{"y\\u0000":1,"y\\ufffd":2}}'
    record = one_record(Sample("nx-voice", "k-3", "POST", body, JSON))
    assert record.extra["inner"] == {"y\ufffd": 2, "y\ufffd~1": 1}


def test_form_keys_that_sanitize_alike_both_stay() -> None:
    body = b"messageid=k-4&x%00=nul&x%EF%BF%BD=replacement"
    record = one_record(Sample("nx-dr", "k-4", "POST", body, FORM))
    assert (record.extra["x\ufffd"], record.extra["x\ufffd~1"]) == ("replacement", "nul")


@pytest.mark.parametrize(
    ("sample", "kept"),
    [
        (Sample("nx-dr", "k-5", "POST", b"messageid=k-5&ext=1&ext=2", FORM), ("2", "1")),
        (
            Sample("nx-dr", "k-5", "POST", b"messageid=k-5&ext=2", FORM, query="ext=1"),
            ("2", "1"),
        ),
        (Sample("hw", "k-5", "POST", b"{callData=1, callData=2, callSerialNo=k-5}"), ("2", "1")),
        (Sample("hw", "k-5", "POST", b"callSerialNo=k-5&callData=1&callData=2", FORM), ("2", "1")),
    ],
)
def test_a_repeated_field_keeps_its_last_value_and_the_earlier_one(
    sample: Sample, kept: tuple[str, str]
) -> None:
    record = one_record(sample)
    assert record.user_data == kept[0]  # the last value is what the columns read, as before
    assert record.extra["ext~1" if sample.source == "nx-dr" else "callData~1"] == kept[1]


def test_a_value_sent_twice_is_kept_once() -> None:
    record = one_record(Sample("nx-dr", "k-6", "POST", b"messageid=k-6&ext=1&ext=1", FORM))
    assert record.user_data == "1"
    assert record.extra == {}


# --- a token in any spelling ------------------------------------------------------------

TOKEN = "adv-token-0123456789"


def percent(text: str, upper: bool = False) -> str:
    return "".join(f"%{ord(c):02X}" if upper else f"%{ord(c):02x}" for c in text)


@pytest.mark.parametrize(
    "spelling",
    [
        percent(TOKEN),
        percent(TOKEN, upper=True),
        "".join(f"%{ord(c):02x}" if i % 2 else c for i, c in enumerate(TOKEN)),  # partly
        "".join(f"%{ord(c):02X}" if i % 3 else f"%{ord(c):02x}" for i, c in enumerate(TOKEN)),
        percent(TOKEN).replace("%", "%25"),  # encoded twice
    ],
)
def test_a_known_token_is_redacted_however_it_is_percent_encoded(spelling: str) -> None:
    redactor = logs.Redactor([TOKEN])
    scrubbed = redactor.scrub(f"POST /somewhere/{spelling} HTTP/1.1")
    assert scrubbed == f"POST /somewhere/{logs.REDACTED} HTTP/1.1"


@pytest.mark.parametrize(
    "path",
    [
        "/v1//callbacks/nx-cc/",
        "//v1/callbacks//nx-cc//",
        "/V1/CallBacks/nx-cc/",
        "/v1%2Fcallbacks%2Fnx-cc%2F",
        "/v1%2fcallbacks/nx-cc%2f",
    ],
)
def test_an_unknown_token_on_a_callback_path_is_redacted_however_the_path_is_spelled(
    path: str,
) -> None:
    first_bytes = scrub_token(f"POST {path}{percent('unknown-token-9876')} HTTP/1.1".encode())
    assert "unknown" not in first_bytes
    assert percent("unknown")[:6] not in first_bytes
    assert first_bytes.endswith(f"{logs.REDACTED} HTTP/1.1")


def test_text_without_a_token_is_left_alone() -> None:
    text = "GET /v1/healthz?a=%61%62 100%"
    assert logs.Redactor([TOKEN]).scrub(text) == text


# --- a signed Huawei body that signs like another ---------------------------------------

HUAWEI_EVENT = {
    "callSerialNo": "sig-1",
    "caller": "9612",
    "callerPresent": "9634",
    "called": "88880067",
    "talkingTime": "2022/02/22,10:04:30:418",
    "releaseTime": "2022/02/22,10:04:36:418",
    "talkDuration": "6",
    "releaseReason": "0",
}
SIGNED_SOURCES = {"hw-sha": "sha-app-secret-42", "hw-hmac": "hmac-app-secret-42"}


def signed(source: str, fields: dict[str, Any], now: datetime) -> dict[str, Any]:
    mode = SOURCES[source].signing
    return sign(fields, mode, SIGNED_SOURCES[source], now, random.Random(5))


def authenticate(source: str, body: bytes, content_type: str, now: datetime) -> int | None:
    item = envelope(Sample(source, "sig-1", "POST", body, content_type))
    return HUAWEI_PROVIDER.authenticate(item, {}, SOURCES[source], now.timestamp())


def folded(event: dict[str, Any], into: str, name: str, spaced: bool = False) -> dict[str, Any]:
    """`event` with field `name` folded into the value of `into`: it signs alike."""
    tampered = dict(event)
    separator = ", " if spaced else ","
    tampered[into] = f"{tampered[into]}{separator}{name}={tampered.pop(name)}"
    return tampered


@pytest.mark.parametrize("source", sorted(SIGNED_SOURCES))
@pytest.mark.parametrize(
    ("into", "name", "spaced"),
    [
        ("talkDuration", "talkingTime", False),  # answered becomes rejected
        ("caller", "callerPresent", False),
        ("talkDuration", "talkingTime", True),  # the signed string removes the space
    ],
)
@pytest.mark.parametrize("form", ["json", "form"])
def test_a_signed_body_with_a_field_folded_into_a_value_is_refused(
    source: str, into: str, name: str, spaced: bool, form: str
) -> None:
    now = datetime.now(UTC)
    event = signed(source, HUAWEI_EVENT, now)
    tampered = folded(event, into, name, spaced)
    encode, content_type = {"json": (dumps, JSON), "form": (form_bytes, FORM)}[form]
    assert authenticate(source, encode(event), content_type, now) in (None, 0)
    with pytest.raises(Unauthenticated, match="ambiguous"):
        authenticate(source, encode(tampered), content_type, now)


def form_bytes(fields: dict[str, Any]) -> bytes:
    return urlencode(fields).encode()


@pytest.mark.parametrize("source", sorted(SIGNED_SOURCES))
def test_a_folded_map_rendering_is_read_and_stored_as_the_genuine_fields(source: str) -> None:
    # The `{k=v}` text of the folded event is the genuine one's: its deterministic reading
    # splits at the documented name again, verifies first, and is what the worker stores.
    now = datetime.now(UTC)
    tampered = folded(signed(source, HUAWEI_EVENT, now), "talkDuration", "talkingTime")
    body = render_map(tampered).encode()
    assert authenticate(source, body, "", now) in (None, 0)
    (payload,) = HUAWEI_PROVIDER.parse(envelope(Sample(source, "", "POST", body)), SOURCES[source])
    assert (payload["talkDuration"], payload["talkingTime"]) == ("6", HUAWEI_EVENT["talkingTime"])


@pytest.mark.parametrize("source", sorted(SIGNED_SOURCES))
@pytest.mark.parametrize(
    "extra",
    [
        {"callData": "a,callSerialNo=x"},  # a documented name, not in the body's own keys...
        {"callData": "a,locationId=0"},  # ... nor in the body at all
        {"callData": "a,custom=1", "custom": "2"},  # a name of the body's own
        {"callData": "{a=1, caller=2}"},  # nested: the signed string does not see braces
    ],
)
def test_a_signed_value_holding_a_field_boundary_is_refused(
    source: str, extra: dict[str, str]
) -> None:
    now = datetime.now(UTC)
    event = signed(source, {**HUAWEI_EVENT, **extra}, now)
    with pytest.raises(Unauthenticated, match="ambiguous"):
        authenticate(source, dumps(event), JSON, now)


@pytest.mark.parametrize("source", sorted(SIGNED_SOURCES))
@pytest.mark.parametrize("name", ["talk Duration", "a=b", "a,b", "{a", "a}", ""])
def test_a_signed_body_with_a_name_the_rendering_would_change_is_refused(
    source: str, name: str
) -> None:
    now = datetime.now(UTC)
    event = signed(source, {**HUAWEI_EVENT, name: "1"}, now)
    with pytest.raises(Unauthenticated, match="field name"):
        authenticate(source, dumps(event), JSON, now)


@pytest.mark.parametrize("source", sorted(SIGNED_SOURCES))
@pytest.mark.parametrize("value", ["x, y=1", "a,b", "k=v", "Y:/a,b=c/d.wav", "x,Caller=1"])
def test_a_signed_value_with_commas_but_no_field_boundary_still_verifies(
    source: str, value: str
) -> None:
    now = datetime.now(UTC)
    event = signed(source, {**HUAWEI_EVENT, "callData": value}, now)
    assert authenticate(source, dumps(event), JSON, now) in (None, 0)


# --- a local time daylight saving repeats or skips --------------------------------------

NEW_YORK = parse_sources(
    SOURCES_TOML.replace(
        f'token = "{TOKENS["nx-cc"]}"\ntimezone = "+08:00"',
        f'token = "{TOKENS["nx-cc"]}"\ntimezone = "America/New_York"',
    ),
    origin="tests",
    environ={},
    providers=REGISTRY,
    resolve_secrets=False,
)


def new_york_record(**times: str) -> Any:
    body = dumps({"callSessionId": "dst-1", **times})
    return one_record(Sample("nx-cc", "dst-1", "POST", body, JSON), NEW_YORK)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_a_repeated_hour_is_read_so_that_the_call_ends_after_it_starts() -> None:
    # 01:00-02:00 happens twice on 2023-11-05: 05:00-06:00Z (EDT), then 06:00-07:00Z (EST).
    record = new_york_record(callStartTime="2023-11-05 01:30:00", callEndTime="2023-11-05 01:10:00")
    assert record.started_at == utc("2023-11-05 05:30:00")  # the first 01:30 (EDT)
    assert record.ended_at == utc("2023-11-05 06:10:00")  # the second 01:10 (EST)
    assert record.extra["time_ambiguous"] == ["callEndTime", "callStartTime"]
    assert "time_nonexistent" not in record.extra


def test_an_answer_inside_a_repeated_hour_is_read_between_start_and_end() -> None:
    record = new_york_record(
        callStartTime="2023-11-05 01:50:00",  # in the repeated hour too
        answerTime="2023-11-05 01:05:00",
        callEndTime="2023-11-05 02:10:00",  # after the repeat: one reading, EST
    )
    assert record.started_at == utc("2023-11-05 05:50:00")
    assert record.answered_at == utc("2023-11-05 06:05:00")
    assert record.ended_at == utc("2023-11-05 07:10:00")
    assert record.started_at <= record.answered_at <= record.ended_at
    assert record.extra["time_ambiguous"] == ["answerTime", "callStartTime"]


def test_ambiguous_times_already_in_order_keep_the_first_reading_and_are_flagged() -> None:
    record = new_york_record(callStartTime="2023-11-05 01:10:00", callEndTime="2023-11-05 01:30:00")
    assert (record.started_at, record.ended_at) == (
        utc("2023-11-05 05:10:00"),
        utc("2023-11-05 05:30:00"),
    )
    assert record.extra["time_ambiguous"] == ["callEndTime", "callStartTime"]


def test_a_skipped_hour_is_flagged() -> None:
    # 02:00-03:00 does not exist on 2023-03-12: the clock goes from 01:59:59 EST to 03:00 EDT.
    record = new_york_record(callStartTime="2023-03-12 02:30:00", callEndTime="2023-03-12 03:10:00")
    assert record.extra["time_nonexistent"] == ["callStartTime"]
    assert "time_ambiguous" not in record.extra
    assert record.started_at is not None
    assert record.ended_at is not None
    assert record.started_at <= record.ended_at
    assert record.ended_at == utc("2023-03-12 07:10:00")


def test_an_order_no_reading_can_keep_keeps_the_first_readings_and_is_flagged() -> None:
    record = new_york_record(callStartTime="2023-11-05 01:30:00", callEndTime="2023-11-05 00:10:00")
    assert record.started_at == utc("2023-11-05 05:30:00")
    assert record.extra["time_ambiguous"] == ["callStartTime"]


def test_an_ordinary_time_in_a_zone_with_daylight_saving_is_not_flagged() -> None:
    record = new_york_record(callStartTime="2023-07-01 01:30:00", callEndTime="2023-07-01 01:40:00")
    assert record.started_at == utc("2023-07-01 05:30:00")
    assert "time_ambiguous" not in record.extra
    assert "time_nonexistent" not in record.extra


def test_a_time_with_its_own_offset_is_never_doubtful() -> None:
    record = new_york_record(callStartTime="2023-11-05T01:30:00-04:00")
    assert record.started_at == utc("2023-11-05 05:30:00")
    assert "time_ambiguous" not in record.extra


@pytest.mark.parametrize(
    "body",
    [
        b'{"callSessionId":"k-7","remark":"first","remark":"second"}',
        b'{"callSessionId":"k-7","remark" : "first",\n "remark"\t:"second"}',
        b'{"callSessionId":"k-7","remark":"first","cost":"1.5","remark":"second"}',  # hooks path
    ],
)
def test_a_json_key_sent_twice_keeps_both_values(body: bytes) -> None:
    record = one_record(Sample("nx-cc", "k-7", "POST", body, JSON))
    assert (record.extra["remark"], record.extra["remark~1"]) == ("second", "first")


def test_a_json_key_sent_twice_in_a_batch_item_keeps_both_values() -> None:
    body = b'[{"voiceId":"k-8","x":1,"x":2},{"voiceId":"k-9","y":"a:b","y":"c"}]'
    result = run(Sample("nx-voice", "k-8", "POST", body, JSON))
    extras = {d.record.external_id: d.record.extra for d in result.deliveries}
    assert extras == {"k-8": {"x": 2, "x~1": 1}, "k-9": {"y": "c", "y~1": "a:b"}}


def test_colons_in_values_alone_change_nothing() -> None:
    body = b'{"callSessionId":"k-10","remark":"a\\":b","note":"13:42:30"}'
    record = one_record(Sample("nx-cc", "k-10", "POST", body, JSON))
    assert record.extra == {"remark": 'a":b', "note": "13:42:30"}


def test_a_provider_field_named_like_the_flag_is_kept_beside_it() -> None:
    record = new_york_record(callStartTime="2023-11-05 01:30:00", time_ambiguous="mine")
    assert record.extra["time_ambiguous"] == ["callStartTime"]
    assert record.extra["time_ambiguous~1"] == "mine"


@pytest.mark.parametrize("source", sorted(SIGNED_SOURCES))
@pytest.mark.parametrize(
    ("into", "name"),
    [
        ("caller", "callerA"),  # a field the document does not name, between two it does
        ("talkingTime", "zz"),  # after the last field
    ],
)
def test_a_signed_body_with_an_undocumented_field_folded_is_refused(
    source: str, into: str, name: str
) -> None:
    now = datetime.now(UTC)
    event = signed(source, {**HUAWEI_EVENT, name: "x"}, now)
    assert authenticate(source, dumps(event), JSON, now) in (None, 0)
    with pytest.raises(Unauthenticated, match="ambiguous"):
        authenticate(source, dumps(folded(event, into, name)), JSON, now)
