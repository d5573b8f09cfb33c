"""The helpers provider modules share (answers, bodies, fields, values, call status), and
the registry, zones, record ids."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from schemas.jsoncodec import JSONError, loads_exact
from schemas.providers import PROVIDERS, Registry, default_registry, nxcloud_voice_report
from schemas.providers.answers import HTTP_STATUS, Outcome, text_answers
from schemas.providers.bodies import body_text, charset_of, parse_form, parse_json
from schemas.providers.call_status import is_connected, status_from_sip
from schemas.providers.errors import Reason, Reject
from schemas.providers.fields import Fields, require_text
from schemas.providers.values import MAX_SECONDS, to_decimal, to_int
from schemas.record import Status, record_id_for
from schemas.sources import parse_zone

from .conftest import make_envelope, make_source, utc

PLUS_8 = timezone(timedelta(hours=8))
FMT = "%Y-%m-%d %H:%M:%S"


# --- registry, answers, reasons ------------------------------------------------------


def test_the_default_registry_holds_every_provider_line_under_its_name() -> None:
    registry = default_registry()
    assert list(registry) == [provider.name for provider in PROVIDERS]
    assert list(registry.values()) == list(PROVIDERS)


def test_registry_refuses_a_provider_registered_twice() -> None:
    with pytest.raises(ValueError, match="registered twice"):
        Registry([nxcloud_voice_report.PROVIDER, nxcloud_voice_report.PROVIDER])


def test_every_outcome_has_an_http_status() -> None:
    assert set(HTTP_STATUS) == set(Outcome)
    assert HTTP_STATUS[Outcome.ACCEPTED] == 200
    assert HTTP_STATUS[Outcome.UNAUTHORIZED] == 401
    assert HTTP_STATUS[Outcome.FORBIDDEN] == 403
    assert HTTP_STATUS[Outcome.TOO_LARGE] == 413
    assert HTTP_STATUS[Outcome.UNAVAILABLE] == 503


@pytest.mark.parametrize("outcome", list(Outcome))
def test_text_answers_say_success_only_when_accepted(outcome: Outcome) -> None:
    answer = text_answers("ok", "bad")(outcome)
    assert answer.status == HTTP_STATUS[outcome]
    assert answer.body == (b"ok" if outcome is Outcome.ACCEPTED else b"bad")
    assert answer.content_type == "text/plain"


def test_reject_carries_reason_and_message() -> None:
    exc = Reject(Reason.MISSING_FIELD, "no id")
    assert exc.reason is Reason.MISSING_FIELD
    assert exc.message == "no id"
    assert str(exc) == "no id"
    assert str(Reason.NOT_AN_OBJECT) == "not_an_object"


# --- reading bodies ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "charset"),
    [
        ("", "utf-8"),
        ("application/json", "utf-8"),
        ("application/json;charset=UTF-8", "utf-8"),
        ("application/x-www-form-urlencoded; charset=GBK", "gbk"),
        ('text/plain; Charset="gb2312"', "gb2312"),
        ("text/plain; charset=", "utf-8"),
    ],
)
def test_charset_of(content_type: str, charset: str) -> None:
    assert charset_of(content_type) == charset


def test_body_text_defaults_to_utf8_and_drops_a_bom() -> None:
    envelope = make_envelope("nxcloud.voice_report", '\ufeff{"a":"成功"}'.encode())
    assert body_text(envelope) == '{"a":"成功"}'


def test_body_text_honours_the_declared_charset() -> None:
    body = "result=成功接通".encode("gbk")
    envelope = make_envelope(
        "nxcloud.voice_dr", body, content_type="application/x-www-form-urlencoded; charset=GBK"
    )
    assert body_text(envelope) == "result=成功接通"


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"\xff\xfe", "text/plain"),  # neither UTF-8 nor GB18030
        ("成功".encode("gbk"), "text/plain; charset=utf-8"),  # declared: no second guess
        (b"abc", "text/plain; charset=no-such-charset"),
    ],
)
def test_body_text_rejects_undecodable_bodies(body: bytes, content_type: str) -> None:
    envelope = make_envelope("nxcloud.voice_dr", body, content_type=content_type)
    with pytest.raises(Reject) as caught:
        body_text(envelope)
    assert caught.value.reason is Reason.UNPARSEABLE_BODY


def test_parse_json_reads_fractions_exactly() -> None:
    document = parse_json('{"cost": 0.1000000000000000055511151231257827, "n": 3}')
    assert document == {"cost": Decimal("0.1000000000000000055511151231257827"), "n": 3}
    assert type(document["n"]) is int


@pytest.mark.parametrize("text", ["NaN", '{"cost": NaN}', '{"cost": Infinity}', "{", "[1,]"])
def test_parse_json_rejects_what_is_not_json(text: str) -> None:
    with pytest.raises(Reject) as caught:
        parse_json(text)
    assert caught.value.reason is Reason.UNPARSEABLE_BODY


def test_loads_exact_rejects_nan() -> None:
    with pytest.raises(JSONError):
        loads_exact("[-Infinity]")


def test_parse_form() -> None:
    assert parse_form("a=1&b=&c=x+y&d=%E6%88%90%E5%8A%9F&a=2") == {
        "a": "2",  # a repeated key keeps its last value
        "a~1": "1",  # and the earlier one, under a suffixed name
        "b": "",  # blank values are kept
        "c": "x y",
        "d": "成功",
    }


def test_parse_form_decodes_escapes_in_the_given_charset() -> None:
    assert parse_form("result=%B3%C9%B9%A6%BD%D3%CD%A8", "gbk") == {"result": "成功接通"}


def test_parse_form_rejects_an_unknown_charset() -> None:
    with pytest.raises(Reject) as caught:
        parse_form("a=%41", "no-such")
    assert caught.value.reason is Reason.UNPARSEABLE_BODY


@pytest.mark.parametrize(
    ("value", "text"), [("  abc  ", "abc"), (123, "123"), (Decimal("1.50"), "1.50")]
)
def test_require_text_returns_trimmed_text(value: Any, text: str) -> None:
    assert require_text({"id": value}, "id") == text


@pytest.mark.parametrize("value", [None, "", "   ", "null", {"a": 1}, [1], True])
def test_require_text_rejects_missing_or_empty(value: Any) -> None:
    payload: dict[str, Any] = {"id": value}
    with pytest.raises(Reject) as caught:
        require_text(payload, "id")
    assert caught.value.reason is Reason.MISSING_FIELD
    with pytest.raises(Reject):
        require_text({}, "id")


# --- to_int / to_decimal ----------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (42, 42),
        (-3, -3),
        ("42", 42),
        ("  42 ", 42),
        ("+7", 7),
        ("-7", -7),
        (Decimal("13"), 13),
        (Decimal("13.0"), 13),
        (Decimal("13.5"), None),
        (Decimal("NaN"), None),
        ("13.0", None),
        ("1e3", None),
        ("", None),
        ("abc", None),
        ("４２", None),  # full-width digits are not a number here
        (None, None),
        (True, None),
        (False, None),
        ([1], None),
        (1.0, None),
    ],
)
def test_to_int(value: Any, expected: int | None) -> None:
    assert to_int(value) == expected


@pytest.mark.parametrize("value", ["+-5", "-+5", "--5"])
def test_to_int_does_not_crash_on_doubled_signs(value: str) -> None:
    assert to_int(value) is None


def test_to_int_does_not_crash_on_a_huge_number() -> None:
    assert to_int("9" * 5000) is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0.007875", Decimal("0.007875")),
        (" 0.5 ", Decimal("0.5")),
        (
            Decimal("0.1000000000000000055511151231257827"),
            Decimal("0.1000000000000000055511151231257827"),
        ),
        (3, Decimal(3)),
        ("1E-3", Decimal("0.001")),
    ],
)
def test_to_decimal(value: Any, expected: Decimal) -> None:
    amount = to_decimal(value)
    assert isinstance(amount, Decimal)
    assert amount == expected


def test_to_decimal_keeps_every_digit() -> None:
    assert str(to_decimal("0.0078750000000000000001")) == "0.0078750000000000000001"


@pytest.mark.parametrize(
    "value", [None, True, "", "abc", "NaN", "Infinity", "-inf", Decimal("NaN"), 0.5, [1]]
)
def test_to_decimal_refuses_non_amounts(value: Any) -> None:
    assert to_decimal(value) is None


# --- status_from_sip / is_connected -------------------------------------------------


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (None, None),
        (100, None),
        (180, None),
        (200, None),
        (302, None),
        (399, None),
        (486, Status.BUSY),
        (600, Status.BUSY),
        (408, Status.NO_ANSWER),
        (480, Status.NO_ANSWER),
        (603, Status.REJECTED),
        (487, Status.CANCELLED),
        (400, Status.FAILED),
        (404, Status.FAILED),
        (503, Status.FAILED),
        (604, Status.FAILED),
    ],
)
def test_status_from_sip(code: int | None, status: Status | None) -> None:
    assert status_from_sip(code) == status


@pytest.mark.parametrize(
    ("answered_at", "talk", "connected"),
    [
        (None, None, False),
        (None, 0, False),
        (None, 1, True),
        (datetime(2024, 1, 1, tzinfo=UTC), 0, True),
        (datetime(2024, 1, 1, tzinfo=UTC), None, True),
    ],
)
def test_is_connected(answered_at: datetime | None, talk: int | None, connected: bool) -> None:
    assert is_connected(answered_at, talk) is connected


# --- Fields -------------------------------------------------------------------------


@pytest.mark.parametrize("zero", [0, "0", " 0 ", Decimal("0")])
def test_fields_code_zero_is_a_code_not_a_blank(zero: Any) -> None:
    # `to_int(x) or -1` used to turn a 0 code into "unknown".
    f = Fields({"kind": zero})
    assert f.code("kind", {0: "zero", 1: "one"}) == "zero"
    assert f.extra() == {}  # translated: consumed


@pytest.mark.parametrize("value", [7, "x", "", None, "-1"])
def test_fields_code_unknown_or_unreadable_stays_in_extra(value: Any) -> None:
    f = Fields({"kind": value})
    assert f.code("kind", {0: "zero", 1: "one"}) is None
    assert f.extra() == {"kind": value}


def test_fields_lookup_reads_the_value_as_the_table_needs() -> None:
    f = Fields({"who": " Send_Bye ", "other": "nope"})
    assert f.lookup("who", {"send_bye": "caller"}, lambda v: str(v).strip().lower()) == "caller"
    assert f.lookup("other", {"send_bye": "caller"}, lambda v: None) is None
    assert f.extra() == {"other": "nope"}


def test_fields_peek_int_reads_a_code_without_consuming_it() -> None:
    f = Fields({"reason": "0", "size": " 12 ", "word": "x"})
    assert f.peek_int("reason") == 0  # 0 is a code, not a blank
    assert f.peek_int("size") == 12
    assert f.peek_int("word") is None
    assert f.peek_int("missing") is None
    assert f.extra() == {"reason": "0", "size": " 12 ", "word": "x"}


def test_fields_require_text_consumes_the_id_and_refuses_a_missing_one() -> None:
    f = Fields({"id": " abc ", "other": "1"})
    assert f.require_text("id") == "abc"
    assert f.extra() == {"other": "1"}
    with pytest.raises(Reject) as caught:
        Fields({"id": " "}).require_text("id")
    assert caught.value.reason is Reason.MISSING_FIELD


def test_fields_extra_holds_what_was_not_consumed() -> None:
    f = Fields({"a": "1", "b": "2", "c": "3"})
    assert f.peek("a") == "1"  # peeking does not consume
    assert f.text("b") == "2"
    assert f.take("c") == "3"
    assert f.take("missing") is None
    assert f.extra() == {"a": "1"}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("  +8613800000000 ", "+8613800000000"),
        (86, "86"),
        (True, "true"),
        (Decimal("0.50"), "0.50"),
        ("", None),
        ("   ", None),
        ("null", None),
        ("NULL", None),
        ("None", None),
        (None, None),
    ],
)
def test_fields_text(value: Any, expected: str | None) -> None:
    f = Fields({"k": value})
    assert f.text("k") == expected
    assert f.extra() == {}


def test_fields_text_with_extra_empty_values() -> None:
    assert Fields({"k": "-1"}).text("k", empty=("-1",)) is None
    assert Fields({"k": "1"}).text("k", empty=("-1",)) == "1"


@pytest.mark.parametrize("value", [{"nested": 1}, [1, 2]])
def test_fields_text_keeps_structured_values_in_extra(value: Any) -> None:
    f = Fields({"k": value})
    assert f.text("k") is None
    assert f.extra() == {"k": value}


@pytest.mark.parametrize(
    ("value", "expected"),
    [(13, 13), ("13", 13), (" 13 ", 13), (Decimal("13.0"), 13), (0, 0), (MAX_SECONDS, MAX_SECONDS)],
)
def test_fields_integer_reads_whole_numbers(value: Any, expected: int) -> None:
    f = Fields({"k": value})
    assert f.integer("k") == expected
    assert f.extra() == {}


@pytest.mark.parametrize("value", [None, "", " ", "null"])
def test_fields_integer_blank_is_none_and_not_kept(value: Any) -> None:
    f = Fields({"k": value})
    assert f.integer("k") is None
    assert f.extra() == {}


@pytest.mark.parametrize(
    "value",
    [
        "abc",
        "2022/02/22,10:04:29:004",  # a timestamp where a duration belongs
        "13.5",
        Decimal("13.5"),
        -1,
        MAX_SECONDS + 1,
        {"a": 1},
        True,
    ],
)
def test_fields_integer_keeps_unreadable_values_in_extra(value: Any) -> None:
    f = Fields({"k": value})
    assert f.integer("k") is None
    assert f.extra() == {"k": value}


def test_fields_integer_bounds() -> None:
    f = Fields({"sip": "200", "low": "99", "high": "700"})
    assert f.integer("sip", low=100, high=699) == 200
    assert f.integer("low", low=100, high=699) is None
    assert f.integer("high", low=100, high=699) is None
    assert f.extra() == {"low": "99", "high": "700"}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0.007875", "0.007875"),
        (Decimal("0.023625"), "0.023625"),
        ("0.0", "0.0"),
        (3, "3"),
        (Decimal("0.00787512345678901234567"), "0.00787512345678901234567"),
    ],
)
def test_fields_decimal_is_exact(value: Any, expected: str) -> None:
    f = Fields({"k": value})
    amount = f.decimal("k")
    assert isinstance(amount, Decimal)
    assert str(amount) == expected
    assert f.extra() == {}


@pytest.mark.parametrize("value", [None, "", "null"])
def test_fields_decimal_blank_is_none(value: Any) -> None:
    f = Fields({"k": value})
    assert f.decimal("k") is None
    assert f.extra() == {}


@pytest.mark.parametrize("value", ["abc", "NaN", "Infinity", True, [1]])
def test_fields_decimal_keeps_unreadable_values_in_extra(value: Any) -> None:
    f = Fields({"k": value})
    assert f.decimal("k") is None
    assert f.extra() == {"k": value}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1670939582000, utc(2022, 12, 13, 13, 53, 2)),
        ("1670939112097", utc(2022, 12, 13, 13, 45, 12, 97000)),
        (Decimal("1670939112097"), utc(2022, 12, 13, 13, 45, 12, 97000)),
    ],
)
def test_fields_epoch_millis(value: Any, expected: datetime) -> None:
    f = Fields({"k": value})
    assert f.epoch_millis("k") == expected
    assert f.extra() == {}


@pytest.mark.parametrize("value", [0, "0", "", None, "null"])
def test_fields_epoch_millis_zero_or_blank_is_none(value: Any) -> None:
    f = Fields({"k": value})
    assert f.epoch_millis("k") is None
    assert f.extra() == {}


@pytest.mark.parametrize(
    "value",
    [
        1670939582,  # seconds, not milliseconds: 1970-01-20
        -1,
        7_258_118_400_000,  # 2200-01-01: out of range
        "yesterday",
        Decimal("1670939582000.5"),
    ],
)
def test_fields_epoch_millis_keeps_implausible_values_in_extra(value: Any) -> None:
    f = Fields({"k": value})
    assert f.epoch_millis("k") is None
    assert f.extra() == {"k": value}


@pytest.mark.parametrize("value", [10**17, 300_000_000_000_000])
def test_fields_epoch_millis_does_not_crash_on_absurd_values(value: int) -> None:
    f = Fields({"k": value})
    assert f.epoch_millis("k") is None
    assert f.extra() == {"k": value}


@pytest.mark.parametrize(
    ("zone", "expected"),
    [
        (PLUS_8, utc(2023, 11, 17, 5, 42, 33)),
        (ZoneInfo("Asia/Shanghai"), utc(2023, 11, 17, 5, 42, 33)),
        (timezone(timedelta(hours=-5)), utc(2023, 11, 17, 18, 42, 33)),
        (UTC, utc(2023, 11, 17, 13, 42, 33)),
    ],
)
def test_fields_local_time_reads_in_the_zone_and_returns_utc(
    zone: timezone | ZoneInfo, expected: datetime
) -> None:
    f = Fields({"k": "2023-11-17 13:42:33"}, zone)
    moment = f.local_time("k", FMT)
    assert moment == expected
    assert moment is not None
    assert moment.utcoffset() == timedelta(0)
    assert f.extra() == {}


def test_fields_local_time_across_a_dst_change() -> None:
    zone = ZoneInfo("America/New_York")
    f = Fields({"winter": "2024-01-15 12:00:00", "summer": "2024-07-15 12:00:00"}, zone)
    assert f.local_time("winter", FMT) == utc(2024, 1, 15, 17)
    assert f.local_time("summer", FMT) == utc(2024, 7, 15, 16)


def test_fields_local_time_tries_each_format() -> None:
    f = Fields({"k": "2022/02/22,10:04:29:004"}, PLUS_8)
    assert f.local_time("k", FMT, "%Y/%m/%d,%H:%M:%S:%f") == utc(2022, 2, 22, 2, 4, 29, 4000)


@pytest.mark.parametrize("value", [None, "", "null", 0, "0"])
def test_fields_local_time_none_for_blank_or_zero(value: Any) -> None:
    f = Fields({"k": value}, PLUS_8)
    assert f.local_time("k", FMT) is None
    assert f.extra() == {}


@pytest.mark.parametrize("value", ["17/11/2023 13:42", "2023-13-01 00:00:00", 20231117, ["x"]])
def test_fields_local_time_keeps_unparseable_values_in_extra(value: Any) -> None:
    f = Fields({"k": value}, PLUS_8)
    assert f.local_time("k", FMT) is None
    assert f.extra() == {"k": value}


def test_fields_local_time_does_not_crash_on_year_one() -> None:
    f = Fields({"k": "0001-01-01 00:00:00"}, PLUS_8)
    assert f.local_time("k", FMT) is None
    assert f.extra() == {"k": "0001-01-01 00:00:00"}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (["Intended customers", " High level ", ""], ("Intended customers", "High level")),
        (["a", 7], ("a", "7")),
        ("a, b ,,c", ("a", "b", "c")),
        ([], ()),
        ("", ()),
        (None, ()),
    ],
)
def test_fields_labels(value: Any, expected: tuple[str, ...]) -> None:
    f = Fields({"k": value})
    assert f.labels("k") == expected
    assert f.extra() == {}


@pytest.mark.parametrize("value", [[{"a": 1}], ["a", ["b"]], 5, {"a": "b"}])
def test_fields_labels_keeps_unreadable_values_in_extra(value: Any) -> None:
    f = Fields({"k": value})
    assert f.labels("k") == ()
    assert f.extra() == {"k": value}


# --- zones and record ids -----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "offset"),
    [
        ("+08:00", timedelta(hours=8)),
        ("-05:00", timedelta(hours=-5)),
        ("-0530", timedelta(hours=-5, minutes=-30)),
        ("UTC", timedelta(0)),
        ("Z", timedelta(0)),
        ("Asia/Shanghai", timedelta(hours=8)),
    ],
)
def test_parse_zone(text: str, offset: timedelta) -> None:
    assert parse_zone(text).utcoffset(datetime(2023, 11, 17, 12)) == offset


@pytest.mark.parametrize("text", ["Mars/Olympus", "+24:00", "8"])
def test_parse_zone_rejects_unknown_zones(text: str) -> None:
    with pytest.raises(ValueError, match=r"zone|range"):
        parse_zone(text)


def test_source_timezone_defaults_to_the_provider_zone() -> None:
    source = make_source("nxcloud.call_center_report")
    assert source.timezone_name == "+08:00"
    assert source.timezone.utcoffset(None) == timedelta(hours=8)
    assert source.tenant == "default"
    assert make_source("huawei.aicc_release", timezone="Asia/Shanghai").timezone == ZoneInfo(
        "Asia/Shanghai"
    )


def test_record_id_is_a_fixed_uuid5_of_source_and_external_id() -> None:
    namespace = uuid.UUID("6f0d2c1e-8a7b-5e43-9c1d-3b2a4f5e6d70")
    expected = uuid.uuid5(namespace, "nxcloud-cc\n2023111713424800001")
    assert record_id_for("nxcloud-cc", "2023111713424800001") == expected
    assert record_id_for("nxcloud-cc", "2023111713424800001") == expected
    assert record_id_for("other", "2023111713424800001") != expected
    assert record_id_for("nxcloud-cc", "2023111713424800002") != expected
