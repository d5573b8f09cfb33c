"""What makes two deliveries of one call "the same content": the canonical form of a record.

A re-push is the same content when its normalized record is, compared column by column and
over `extra`, after writing every value that can be spelled several ways in one way:

- key order and whitespace of the body do not matter (the record is compared, not the body);
- a number is its value: `15`, `15.0`, `1.5e1` and the string `"15"` are one; so are the
  money strings `"0.01350"` and `"0.0135"` (a string counts as a number when it is written
  as a JSON number: `"007"` and `"+1"` stay strings, so phone numbers never merge);
- a time is its moment: columns hold UTC times; a time string left in `extra` is read in
  its ISO (`T` or space) or Huawei (`yyyy/MM/dd,HH:mm:ss:SSS`) spelling, fraction zeros
  dropped, an offset turned into UTC;
- the provider's volatile fields (signature, nonce, timestamp) are not content;
- `raw` is not content: it keeps what the first delivery of this content sent;
- `origin` is content only when it is not "push": a push and a backfill with equal fields
  are two contents (a push for a backfilled id is its next revision), and every push's
  hash is what it was before records had an origin.

Pure: no I/O."""

from __future__ import annotations

import hashlib
import operator
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from schemas.envelope import PUSH
from schemas.jsoncodec import MAX_EXPANSION, MAX_NUMBER_TEXT, canonical_json, plain_length
from schemas.record import CONTENT_COLUMNS, CallRecord, CallType, Direction, HangupBy, Status

# Bumped when the canonical form changes: hashes of one form never meet hashes of another.
CONTENT_FORM = b"cdrflow.content/2\n"
_JSON_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_ISO_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}:[0-9]{2}")
_SLASHED_TIME = re.compile(
    r"([0-9]{4})/([0-9]{2})/([0-9]{2}),([0-9]{2}):([0-9]{2}):([0-9]{2})(?::([0-9]{1,3}))?"
)
_COMPARED_COLUMNS = tuple(c for c in CONTENT_COLUMNS if c not in ("raw", "extra", "origin"))
_compared_values = operator.attrgetter(*_COMPARED_COLUMNS)
_NUMBER_OR_TIME_START = frozenset("-0123456789")
_SHORT_INTEGER = 10**18
_EXACT_DIGITS = 28  # the default Decimal context's precision, which `_number` rounds to


def content_hash(record: CallRecord, volatile: frozenset[str]) -> bytes:
    """SHA-256 of the record's canonical content (see the module doc)."""
    return hashlib.sha256(
        CONTENT_FORM + canonical_json(canonical_content(record, volatile))
    ).digest()


def canonical_content(record: CallRecord, volatile: frozenset[str]) -> dict[str, Any]:
    values = _compared_values(record)  # one C call instead of a getattr per column
    # `canonical`, one call shallower: the spelling of the value's exact type, or
    # `canonical` itself for other types; most columns are None, its own spelling.
    spelling = _BY_TYPE.get
    content = {
        column: None if value is None else spelling(type(value), canonical)(value)
        for column, value in zip(_COMPARED_COLUMNS, values, strict=True)
    }
    content["extra"] = {
        key: spelling(type(value), canonical)(value)
        for key, value in record.extra.items()
        if key not in volatile
    }
    if record.origin != PUSH:
        content["origin"] = record.origin
    return content


def canonical(value: Any) -> Any:
    """One spelling of a value (nested values too)."""
    # Most values are of these exact types; other subclasses take the general path below.
    spell = _BY_TYPE.get(type(value))
    if spell is not None:
        return spell(value)
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | Decimal):
        return _number(Decimal(value))
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, datetime):
        return _moment(value)
    if isinstance(value, Mapping):
        return {str(k): canonical(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [canonical(v) for v in value]
    return str(value)


def _same(value: Any) -> Any:
    return value


def _integer(value: int) -> str:
    # Below 10**18 in magnitude (every int a body's JSON gives: `jsoncodec._parse_int`),
    # the number's plain spelling is its digits: no exponent, no trailing zeros to drop,
    # not rounded (28 digits), never over the expansion bound.
    if -_SHORT_INTEGER < value < _SHORT_INTEGER:
        return str(value)
    return _number(Decimal(value))


def _mapping(value: dict[Any, Any]) -> dict[str, Any]:
    return {str(k): canonical(v) for k, v in value.items()}


def _sequence(value: list[Any] | tuple[Any, ...]) -> list[Any]:
    return [canonical(v) for v in value]


def _number(number: Decimal) -> str:
    if not number.is_finite():
        return str(number)
    if number.is_zero():
        return "0"
    reduced = number.normalize()
    if plain_length(reduced) > MAX_EXPANSION * MAX_NUMBER_TEXT:
        return str(reduced)  # kept short; such numbers only come from a column misfit
    return format(reduced, "f")


def _text(text: str) -> str:
    # A JSON number and both time spellings start with a digit or "-". A string of at most
    # 28 digits is spelled as it is (a number's digits, or kept: "007" is no JSON number);
    # a longer number is rounded to Decimal's 28 digits by `normalize` in `_number`.
    if not text or text[0] not in _NUMBER_OR_TIME_START:
        return text
    if len(text) <= _EXACT_DIGITS and text.isdigit():
        return text
    if len(text) <= MAX_NUMBER_TEXT and _JSON_NUMBER.fullmatch(text):
        try:
            number = Decimal(text)
        except InvalidOperation:  # pragma: no cover - the pattern is Decimal's syntax
            return text
        if plain_length(number) <= MAX_EXPANSION * len(text):
            return _number(number)
        return text
    if _ISO_TIME.match(text):
        return _iso_time(text)
    slashed = _SLASHED_TIME.fullmatch(text)
    if slashed:
        return _slashed_time(text, slashed)
    return text


def _iso_time(text: str) -> str:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return text
    return _moment(moment)


def _slashed_time(text: str, match: re.Match[str]) -> str:
    year, month, day, hour, minute, second, millis = match.groups()
    try:  # only a real moment is respelled: not month 13 or second 61
        datetime(int(year), int(month), int(day), int(hour), int(minute), int(second))
    except ValueError:
        return text
    # The groups are ASCII digits of isoformat's widths: `_moment` of the (zone-less)
    # moment, written without building it. Milliseconds are a fraction's first digits.
    fraction = (millis or "").ljust(3, "0").rstrip("0")
    whole = f"{year}-{month}-{day}T{hour}:{minute}:{second}"
    return f"{whole}.{fraction}" if fraction else whole


def _moment(moment: datetime) -> str:
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
        # Without its zone: the same as replace(tzinfo=None), at a quarter of its cost.
        moment = datetime.combine(moment, moment.time())
        suffix = "Z"
    else:
        suffix = ""
    text = moment.isoformat()  # the fraction, when there is one, has six digits
    if moment.microsecond:
        text = text.rstrip("0")  # its trailing zeros (a non-zero digit stops the strip)
    return text + suffix


_BY_TYPE: dict[type, Callable[[Any], Any]] = {
    type(None): _same,
    bool: _same,
    int: _integer,
    Decimal: _number,
    str: _text,
    datetime: _moment,
    dict: _mapping,
    list: _sequence,
    tuple: _sequence,
    # The columns' StrEnums are text: spelled as the general path spells a str subclass.
    **dict.fromkeys((Status, CallType, Direction, HangupBy), _text),
}
