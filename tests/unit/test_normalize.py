"""A bad report is rejected alone, whatever is wrong with it; never a crash of the batch."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from schemas.envelope import BACKFILL, PUSH
from schemas.jsoncodec import MAX_NESTING, JSONError, canonical_json, dumps, loads_exact
from schemas.providers import Provider, default_registry
from schemas.providers.values import to_decimal, to_int
from schemas.record import CallRecord
from schemas.sources import Source
from tests.support.samples import Sample, envelope, sample
from tests.support.sources import load_test_sources
from workers.normalize import MAX_EXTERNAL_ID, normalize_envelope
from workers.storage.database import is_data_error, is_transient

SOURCES = load_test_sources()


def run(
    body: bytes, source: str = "nx-voice", content_type: str = "application/json"
) -> tuple[list[str], list[tuple[int, str]]]:
    result = normalize_envelope(
        envelope(Sample(source, "", "POST", body, content_type)), SOURCES, default_registry()
    )
    return [d.record.external_id for d in result.deliveries], [
        (r.item, r.reason) for r in result.rejections
    ]


def test_an_integer_beyond_64_bits_stays_exact_and_storable() -> None:
    stored, rejected = run(b'[{"voiceId":"a","callDuration":123456789012345678901234567890}]')
    assert (stored, rejected) == (["a"], [])
    result = normalize_envelope(
        envelope(
            Sample("nx-voice", "", "POST", b'{"voiceId":"a","x":123456789012345678901234567890}')
        ),
        SOURCES,
        default_registry(),
    )
    record = result.deliveries[0].record
    assert record.extra["x"] == Decimal("123456789012345678901234567890")
    assert dumps(record.raw) == b'{"voiceId":"a","x":123456789012345678901234567890}'


def test_an_exponent_bomb_rejects_the_request_without_being_expanded() -> None:
    # 1e400000000 written out is 400 million digits; in jsonb, 1e131071 reads back as 131 kB.
    stored, rejected = run(b'[{"voiceId":"a","rate":1e400000000}]')
    assert (stored, rejected) == ([], [(-1, "unparseable_body")])


def test_a_large_but_bounded_exponent_is_kept_raw_not_as_money() -> None:
    body = b'[{"voiceId":"a","rate":1e999,"cost":"1e999","callDuration":1e99}]'
    result = normalize_envelope(
        envelope(Sample("nx-voice", "", "POST", body)), SOURCES, default_registry()
    )
    record = result.deliveries[0].record
    assert (record.rate, record.cost, record.talk_seconds) == (None, None, None)
    # jsonb would write 1e999 out as 1,000 digits: it is kept as the string of its text.
    assert record.extra["rate"] == "1e999"
    assert record.raw["callDuration"] == "1e99"


def test_an_absurdly_long_number_rejects_only_the_request() -> None:
    stored, rejected = run(b'{"voiceId":"a","x":' + b"9" * 5000 + b"}")
    assert stored == []
    assert rejected == [(-1, "unparseable_body")]


def test_deep_nesting_is_a_parse_error_not_a_crash() -> None:
    stored, rejected = run(b'{"voiceId":"a","x":' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    assert (stored, rejected) == ([], [(-1, "unparseable_body")])


def test_a_lone_surrogate_is_replaced_and_the_report_kept() -> None:
    body = (
        b'[{"voiceId":"a","calledInfo":"half \\ud83d"},{"voiceId":"b","calledInfo":"nul\\u0000"}]'
    )
    result = normalize_envelope(
        envelope(Sample("nx-voice", "", "POST", body)), SOURCES, default_registry()
    )
    assert [d.record.user_data for d in result.deliveries] == ["half \ufffd", "nul\ufffd"]
    for delivery in result.deliveries:
        canonical_json(delivery.record.raw)  # orjson accepts what remains


def test_an_id_too_long_to_be_an_id_rejects_that_report_alone() -> None:
    long_id = "v" * (MAX_EXTERNAL_ID + 1)
    stored, rejected = run(f'[{{"voiceId":"ok"}},{{"voiceId":"{long_id}"}}]'.encode())
    assert stored == ["ok"]
    assert rejected == [(1, "invalid_field")]


@pytest.mark.parametrize("depth", [MAX_NESTING, 255, 300, 1_000])
def test_nesting_beyond_the_limit_is_an_unparseable_body_never_a_crash(depth: int) -> None:
    # 255 to ~1,000 levels: fine for Python's parser, too deep for orjson (internal_error).
    deep = "[" * depth + "]" * depth
    stored, rejected = run(f'[{{"voiceId":"ok"}},{{"voiceId":"deep","x":{deep}}}]'.encode())
    assert (stored, rejected) == ([], [(-1, "unparseable_body")])


def test_nesting_up_to_the_limit_is_stored() -> None:
    deep = "[" * (MAX_NESTING - 2) + "]" * (MAX_NESTING - 2)  # the batch and report are 2
    stored, rejected = run(f'[{{"voiceId":"ok","x":{deep}}}]'.encode())
    assert (stored, rejected) == (["ok"], [])


@pytest.mark.parametrize(
    "text", ["1e400000000", "1E-400000000", "12345678901234567890123456789012345678901234567890"]
)
def test_money_and_integers_refuse_absurd_magnitudes(text: str) -> None:
    assert to_decimal(text) is None
    assert to_int(Decimal(text)) is None


def test_json_rejects_nan_and_overlong_numbers() -> None:
    with pytest.raises(JSONError):
        loads_exact('{"a": NaN}')
    with pytest.raises(JSONError):
        loads_exact('{"a": ' + "1" * 65 + "}")
    assert loads_exact('{"a": 1.50}') == {"a": Decimal("1.50")}


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (ConnectionRefusedError(), True),
        (TimeoutError(), True),
        (asyncpg.CannotConnectNowError("x"), True),
        (asyncpg.AdminShutdownError("x"), True),
        (asyncpg.ConnectionDoesNotExistError("x"), True),
        (asyncpg.DeadlockDetectedError("x"), True),
        (asyncpg.SerializationError("x"), True),
        (asyncpg.ReadOnlySQLTransactionError("x"), True),
        (asyncpg.TooManyConnectionsError("x"), True),
        (asyncpg.UndefinedTableError("x"), True),
        (asyncpg.InvalidCachedStatementError("x"), True),
        (asyncpg.exceptions.InsufficientPrivilegeError("x"), True),  # permissions revoked
        (asyncpg.exceptions.PostgresIOError("x"), True),  # 58030: the disk, not the data
        (asyncpg.exceptions.InternalServerError("x"), True),  # XX000
        (asyncpg.exceptions.QueryCanceledError("x"), True),  # statement timeout
        (asyncpg.ProgramLimitExceededError("x"), False),  # index row too large
        (asyncpg.NumericValueOutOfRangeError("x"), False),
        (asyncpg.UniqueViolationError("x"), False),
        (asyncpg.CharacterNotInRepertoireError("x"), False),
        (OverflowError(), False),
        # what asyncpg raises for an argument it cannot encode (not exported elsewhere)
        (asyncpg.exceptions._base.DataError("invalid input for query argument $1"), False),
    ],
)
def test_only_the_databases_state_is_retried_its_refusals_are_isolated(
    error: BaseException, transient: bool
) -> None:
    assert is_transient(error) is transient
    assert is_data_error(error) is (not transient)


class _ClaimsABackfill:
    """A provider module that (wrongly) says where its report came from."""

    def __init__(self, inner: Provider) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def normalize(self, payload: Mapping[str, Any], source: Source) -> CallRecord:
        return dataclasses.replace(self.inner.normalize(payload, source), origin=BACKFILL)


@pytest.mark.parametrize("origin", [PUSH, BACKFILL])
def test_a_record_says_the_origin_its_envelope_says(origin: str) -> None:
    item = dataclasses.replace(envelope(sample("nx-dr", "o-1")), origin=origin)
    (delivery,) = normalize_envelope(item, SOURCES, default_registry()).deliveries
    assert delivery.record.origin == origin
    providers: dict[str, Any] = dict(default_registry())
    providers[item.provider] = _ClaimsABackfill(providers[item.provider])
    (claimed,) = normalize_envelope(item, SOURCES, providers).deliveries
    assert claimed.record.origin == origin  # the envelope's word, not the provider's
    assert claimed.content_hash == delivery.content_hash
