"""The parsing side of hostile input: hostile or careless input ends as the record it means,
or as a rejection with a reason replay can act on. Each test drives `normalize_envelope`,
the path every callback takes in a worker."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

import pytest

from schemas.envelope import RawEnvelope
from schemas.jsoncodec import dumps, loads
from schemas.providers import Unauthenticated, default_registry
from schemas.providers.huawei_aicc_release import render_map, sign
from schemas.record import CallRecord, Ledger, published_body
from schemas.sources import Sources
from schemas.sources_file import parse_sources
from tests.support.samples import Sample, envelope, record_validator, sample
from tests.support.sources import SOURCES_TOML, load_test_sources
from workers.batch import Normalized
from workers.normalize import normalize_envelope

SOURCES = load_test_sources()
REGISTRY = default_registry()
FORM = "application/x-www-form-urlencoded"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def run(item: Sample, sources: Sources = SOURCES) -> Normalized:
    return normalize_envelope(envelope(item), sources, REGISTRY)


def one_record(item: Sample, sources: Sources = SOURCES) -> Any:
    result = run(item, sources)
    assert [(r.reason, r.message) for r in result.rejections] == []
    (delivery,) = result.deliveries
    return delivery.record


def digest(item: Sample) -> bytes:
    (delivery,) = run(item).deliveries
    return delivery.content_hash


def expanded(value: Any) -> str:
    """`value` as PostgreSQL's jsonb writes it back: every number in full."""
    return json.dumps(value, default=lambda number: format(number, "f"), ensure_ascii=False)


def with_settings(source: str, **settings: str) -> Sources:
    extra = "".join(f'{key} = "{value}"\n' for key, value in settings.items())
    head = f"[sources.{source}]\n"
    text = SOURCES_TOML.replace(head, head + extra, 1)
    return parse_sources(
        text, origin="tests", environ={}, providers=REGISTRY, resolve_secrets=False
    )


# --- amplification -------------------------------------------------------------------------


@pytest.mark.parametrize("number", ["1e999", "1E-999", "0e-999", "-9.9e+999", "1e60"])
def test_numbers_are_never_expanded_in_raw_extra_or_the_published_record(number: str) -> None:
    numbers = ",".join([number] * 2_000)
    body = f'{{"voiceId":"amp","x":[{numbers}],"rate":{number},"cost":{number}}}'.encode()
    record = one_record(Sample("nx-voice", "amp", "POST", body, "application/json"))
    ledger = Ledger(T0, T0, T0, T0, 1, 1)
    forms = {
        "raw": expanded(record.raw),
        "extra": expanded(record.extra),
        "published": expanded(loads(published_body(record, ledger))),
    }
    assert {name: len(form) <= 3 * len(body) for name, form in forms.items()} == dict.fromkeys(
        forms, True
    )


def test_a_long_number_is_kept_as_its_own_text() -> None:
    body = b'{"voiceId":"amp","x":1e999,"y":1.5e3,"z":0.00000001}'
    record = one_record(Sample("nx-voice", "amp", "POST", body, "application/json"))
    assert record.raw["x"] == "1e999"
    assert record.raw["y"] == Decimal("1.5e3")  # short in full: stays a number
    assert record.raw["z"] == Decimal("0.00000001")


# --- numeric columns -------------------------------------------------------------------------


@pytest.mark.parametrize("size", ["100000000", "999999999999999999", "9223372036854775807"])
def test_a_column_value_out_of_range_goes_to_extra_and_the_record_is_kept(size: str) -> None:
    fields = {"messageid": "big", "cycle": "60", "size": size, "duration": "5"}
    record = one_record(Sample("nx-dr", "big", "POST", urlencode(fields).encode(), FORM))
    assert record.billed_seconds is None  # int4 cannot hold 60 x size
    assert record.extra["billed_seconds"] == 60 * int(size)
    assert record.extra["size"] == size
    assert record.talk_seconds == 5


def call(**columns: Any) -> CallRecord:
    return CallRecord("src", "acme", "nxcloud", "voice_dr", "ext-1", raw={}, **columns)


@pytest.mark.parametrize(
    "amount",
    [
        "1e25",  # beyond 1e24: no amount of money
        "-1e25",
        "1e-25",  # below 1e-24
        "0." + "1" * 41,  # 41 significant digits, within the exponents
        "NaN",
        "sNaN",
        "Infinity",
        "-Infinity",
    ],
)
def test_money_out_of_the_columns_range_goes_to_extra_as_its_text(amount: str) -> None:
    record = call(rate=Decimal(amount), cost=Decimal(amount), base_cost=Decimal("0.05"))
    assert (record.rate, record.cost) == (None, None)
    assert record.extra == {"rate": str(Decimal(amount)), "cost": str(Decimal(amount))}
    assert record.base_cost == Decimal("0.05")


@pytest.mark.parametrize("amount", ["1e24", "-1e24", "1e-24", "0." + "1" * 40, "0"])
def test_money_at_the_columns_limits_stays_in_its_column(amount: str) -> None:
    record = call(cost=Decimal(amount))
    assert record.cost == Decimal(amount)
    assert record.extra == {}


@pytest.mark.parametrize(
    "moment",
    [
        datetime(1999, 12, 31, 23, 59, 59, tzinfo=UTC),
        datetime(1970, 1, 1, tzinfo=UTC),  # an epoch zero sent for "no time"
        datetime(2200, 1, 1, tzinfo=UTC),  # the upper bound is excluded
        datetime(9999, 12, 31, tzinfo=UTC),
    ],
)
def test_a_time_outside_2000_to_2200_goes_to_extra_and_the_others_stay(moment: datetime) -> None:
    record = call(started_at=moment, ended_at=T0)
    assert record.started_at is None
    assert record.extra == {"started_at": moment.isoformat()}
    assert record.ended_at == T0


@pytest.mark.parametrize(
    "moment",
    [datetime(2000, 1, 1, tzinfo=UTC), datetime(2199, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)],
)
def test_a_time_at_the_bounds_stays_in_its_column(moment: datetime) -> None:
    record = call(answered_at=moment)
    assert record.answered_at == moment
    assert record.extra == {}


# --- percent-escapes -------------------------------------------------------------------------


def test_one_undecodable_form_field_is_kept_in_extra_and_the_dr_is_stored() -> None:
    body = b"messageid=pct-1&duration=12&ext=%FF%FE%FD&phone=8613800000000"
    record = one_record(Sample("nx-dr", "pct-1", "POST", body, FORM))
    assert record.user_data is None
    assert record.extra["ext"] == {"undecodable": "%FF%FE%FD"}
    assert (record.talk_seconds, record.callee) == (12, "8613800000000")


def test_an_undecodable_query_field_is_kept_too() -> None:
    record = one_record(Sample("nx-dr", "pct-2", "GET", b"", query="messageid=pct-2&ext=%FF%FE"))
    assert record.extra["ext"] == {"undecodable": "%FF%FE"}


# --- Huawei's {k=v} rendering -------------------------------------------------------------------


HUAWEI = {
    "callSerialNo": "map-5",
    "caller": "12",
    "called": "88880067",
    "talkDuration": "3",
    "releaseReason": "0",
}


@pytest.mark.parametrize(
    ("body", "column", "value"),
    [
        ("{callSerialNo=map-5, callData={a=1, b=2}, caller=12}", "user_data", "{a=1, b=2}"),
        ("{callSerialNo=map-5, callData=[x, y=1], caller=12}", "user_data", "[x, y=1]"),
        (
            "{callSerialNo=map-5, recordfile=Y:/a,b=c/d.wav, caller=12}",
            "recording_url",
            "Y:/a,b=c/d.wav",
        ),
        ("{callSerialNo = map-5 , caller = 12}", "caller", "12"),
    ],
)
def test_map_rendering_values_holding_commas_braces_or_spaces(
    body: str, column: str, value: str
) -> None:
    record = one_record(Sample("hw", "map-5", "POST", body.encode()))
    assert record.external_id == "map-5"
    assert record.caller == "12"
    assert getattr(record, column) == value
    assert record.extra == {}  # no fake field


@pytest.mark.parametrize("value", ["{a=1, b=2}", "Y:/a,b=c/d.wav", "x, y=1", "{unbalanced, b=1"])
@pytest.mark.parametrize("source", ["hw-sha", "hw-hmac"])
def test_a_signed_map_rendering_verifies_whatever_its_values_hold(value: str, source: str) -> None:
    target = SOURCES[source]
    mode = target.signing
    secret = {"hw-sha": "sha-app-secret-42", "hw-hmac": "hmac-app-secret-42"}[source]
    now = datetime.now(UTC)
    event = sign({**HUAWEI, "callData": value}, mode, secret, now, random.Random(3))
    item = envelope(Sample(source, "map-5", "POST", render_map(event).encode()))
    REGISTRY["huawei.aicc_release"].authenticate(item, {}, target, now.timestamp())
    forged = item.body.replace(b"caller=12", b"caller=13")
    with pytest.raises(Unauthenticated):
        REGISTRY["huawei.aicc_release"].authenticate(
            envelope(Sample(source, "map-5", "POST", forged)), {}, target, now.timestamp()
        )


@pytest.mark.parametrize("source", ["hw-sha", "hw-hmac"])
def test_a_signed_rendering_is_stored_as_the_reading_its_signature_verified(source: str) -> None:
    # `, y=1` inside an unbraced value looks like a field of its own: the deterministic
    # reading splits there and fails the signature; a later reading verifies, and that is
    # the one the worker must store, not the deterministic one.
    target = SOURCES[source]
    secret = {"hw-sha": "sha-app-secret-42", "hw-hmac": "hmac-app-secret-42"}[source]
    now = datetime.now(UTC)
    event = sign({**HUAWEI, "callData": "x, y=1"}, target.signing, secret, now, random.Random(3))
    item = envelope(Sample(source, "map-5", "POST", render_map(event).encode()))
    provider = REGISTRY["huawei.aicc_release"]
    reading = provider.authenticate(item, {}, target, now.timestamp())
    assert reading is not None
    assert reading > 0
    # The ingress keeps the index in the envelope; it survives the wire.
    kept = RawEnvelope.from_wire(loads(replace(item, reading=reading).encode()))
    assert kept.reading == reading
    assert "reading" not in loads(item.encode())  # 0 is left out: the format is unchanged
    (payload,) = provider.parse(kept, target)
    assert payload["callData"] == "x, y=1"
    assert "y" not in payload
    (deterministic,) = provider.parse(item, target)
    assert deterministic["callData"] == "x"  # what the worker stored before


# --- NUL in an id ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "body", "content_type"),
    [
        ("nx-voice", b'{"voiceId":"nul\\u0000-3"}', "application/json"),
        ("nx-cc", b'{"callSessionId":"nul\\u0000-3"}', "application/json"),
        ("nx-dr", b"messageid=nul%00-3", FORM),
        ("hw", b'{"callSerialNo":"nul\\u0000-3"}', "application/json"),
        ("hw", b'{"callSerialNo":"half\\ud800-3"}', "application/json"),
    ],
)
def test_an_id_holding_nul_is_invalid_not_merged_with_its_replacement(
    source: str, body: bytes, content_type: str
) -> None:
    result = run(Sample(source, "", "POST", body, content_type))
    assert result.deliveries == []
    assert [r.reason for r in result.rejections] == ["invalid_field"]


def test_an_id_that_really_holds_the_replacement_character_is_stored() -> None:
    record = one_record(
        Sample("nx-voice", "", "POST", '{"voiceId":"nul\ufffd-3"}'.encode(), "application/json")
    )
    assert record.external_id == "nul\ufffd-3"


# --- the same content is the same content ----------------------------------------------------


CC = {
    "callSessionId": "same-1",
    "callDuration": 15,
    "callType": 3,
    "hangupCode": "200",
    "cost": "0.01350",
    "baseCost": "0.0",
    "answerTime": "2023-11-17 13:42:33",
    "callEndTime": "2023-11-17 13:42:48",
    "labels": ["a", "b"],
    "remark": "1.50",
    "settled": 12,
    "tags": [1, 2],
}


def cc(document: dict[str, Any] | str) -> Sample:
    body = document if isinstance(document, str) else json.dumps(document)
    return Sample("nx-cc", "same-1", "POST", body.encode(), "application/json")


@pytest.mark.parametrize(
    "variant",
    [
        json.dumps(dict(reversed(list(CC.items())))),  # key order
        json.dumps(CC, indent=4),  # whitespace
        json.dumps({**CC, "cost": "0.0135"}),  # trailing zeros of money
        json.dumps({**CC, "baseCost": "0"}),
        json.dumps({**CC, "callDuration": "15"}),  # a number as a string
        json.dumps(CC).replace('"callDuration": 15', '"callDuration": 1.5e1'),  # its spelling
        json.dumps({**CC, "settled": "12.0"}),  # in extra too
        json.dumps({**CC, "remark": "1.5"}),
        json.dumps({**CC, "answerTime": "2023-11-17T13:42:33"}),  # equivalent time spellings
        json.dumps({**CC, "callEndTime": "2023-11-17 13:42:48.000"}),
        json.dumps(CC).replace('"tags": [1, 2]', '"tags": [1.0, 2e0]'),
    ],
)
def test_equivalent_spellings_are_the_same_content(variant: str) -> None:
    assert digest(cc(variant)) == digest(cc(CC))


@pytest.mark.parametrize(
    "change",
    [
        {"cost": "0.0136"},
        {"callDuration": 16},
        {"answerTime": "2023-11-17 13:42:34"},
        {"labels": ["a"]},
        {"remark": "1.51"},
        {"settled": 13},
        {"newField": "x"},
        {"caller": "007"},
    ],
)
def test_a_real_change_is_new_content(change: dict[str, Any]) -> None:
    assert digest(cc({**CC, **change})) != digest(cc(CC))


def test_labels_spelled_as_numbers_are_one_content() -> None:
    # Found by the fuzzer: [1.0] was not read as labels while [1] was.
    plain = json.dumps({**CC, "labels": [1, 2]})
    assert digest(cc(plain.replace('"labels": [1, 2]', '"labels": [1.0, 2e0]'))) == digest(
        cc(plain)
    )


def test_phone_numbers_that_differ_in_leading_zeros_stay_different() -> None:
    assert digest(cc({**CC, "remark": "0123"})) != digest(cc({**CC, "remark": "123"}))


def test_signature_fields_are_not_content() -> None:
    now = datetime.now(UTC)
    first = sign(HUAWEI, "sha256", "s", now, random.Random(1))
    again = sign(HUAWEI, "sha256", "s", now, random.Random(2))
    hashes = [
        digest(Sample("hw", "map-5", "POST", dumps(event), "application/json"))
        for event in (first, again)
    ]
    assert hashes[0] == hashes[1]


# --- charsets, multipart, currency ------------------------------------------------------------


def test_a_gbk_form_body_without_a_charset_is_read_as_gb18030() -> None:
    body = "messageid=gbk-1&result=未接通&ext=活动-7".encode("gbk")
    record = one_record(Sample("nx-dr", "gbk-1", "POST", body, FORM))
    assert (record.extra["result"], record.user_data) == ("未接通", "活动-7")


def test_a_gbk_json_body_without_a_charset_is_read_as_gb18030() -> None:
    body = '{"callSessionId":"gbk-2","agentName":"陈伟"}'.encode("gbk")
    assert one_record(Sample("nx-cc", "gbk-2", "POST", body, "application/json")).agent_name == (
        "陈伟"
    )


def test_a_source_sets_its_charset_whatever_a_request_declares() -> None:
    sources = with_settings("nx-dr", charset="gbk")
    body = "messageid=gbk-3&ext=活动-7".encode("gbk")
    record = one_record(Sample("nx-dr", "gbk-3", "POST", body, FORM + "; charset=utf-8"), sources)
    assert record.user_data == "活动-7"


def multipart(fields: dict[str, str], boundary: str = "----cdrflow7MA4YWxk") -> tuple[bytes, str]:
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
        for k, v in fields.items()
    ]
    body = ("".join(parts) + f"--{boundary}--\r\n").encode()
    return body, f"multipart/form-data; boundary={boundary}"


def test_a_multipart_form_dr_is_read_like_an_urlencoded_one() -> None:
    fields = {"messageid": "mp-1", "duration": "12", "result": "成功接通", "ext": "a&b=c"}
    body, content_type = multipart(fields)
    record = one_record(Sample("nx-dr", "mp-1", "POST", body, content_type))
    assert (record.external_id, record.talk_seconds, record.user_data) == ("mp-1", 12, "a&b=c")
    assert record.extra["result"] == "成功接通"


def test_a_multipart_huawei_event_is_read() -> None:
    body, content_type = multipart({"callSerialNo": "mp-2", "caller": "12"})
    record = one_record(Sample("hw", "mp-2", "POST", body, content_type))
    assert (record.external_id, record.caller) == ("mp-2", "12")


def test_a_source_overrides_the_currency_rule() -> None:
    report = {"voiceId": "eur-1", "costEur": "0.5", "rate": "0.1"}
    item = Sample("nx-voice", "eur-1", "POST", dumps(report), "application/json")
    assert one_record(item).currency == "EUR"  # the rule: costEur without cost
    record = one_record(item, with_settings("nx-voice", currency="GBP"))
    assert (record.currency, record.cost) == ("GBP", Decimal("0.5"))
    dr = one_record(sample("nx-dr"), with_settings("nx-dr", currency="CNY"))
    assert dr.currency == "CNY"


# --- what is published ---------------------------------------------------------------------------


def test_the_published_body_of_a_hostile_record_validates() -> None:
    body = b'{"voiceId":"pub","rate":1e999,"chargedDuration":99999999999,"x":[[[1e5]]]}'
    record = one_record(Sample("nx-voice", "pub", "POST", body, "application/json"))
    record_validator().validate(loads(published_body(record, Ledger(T0, T0, T0, T0, 1, 1))))
