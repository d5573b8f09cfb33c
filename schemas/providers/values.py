"""Single values as providers send them: blanks, integers, money, and time strings.

Each reader returns None for what it cannot read; `Fields` decides what that means."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from schemas.record import EARLIEST, LATEST, MONEY_MAX_DIGITS, MONEY_MAX_EXPONENT

MAX_SECONDS = 10_000_000  # ~115 days: anything longer is not a call duration
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EARLIEST_MS = int((EARLIEST - _EPOCH).total_seconds() * 1000)
_LATEST_MS = int((LATEST - _EPOCH).total_seconds() * 1000)
_MAX_INTEGER_DIGITS = 19
# ASCII digits only, in every numeric field: int() and Decimal() also read Arabic-Indic,
# full-width and every other Unicode digit, and Decimal reads "1_000" as 1000. A value
# spelled otherwise is no number the provider's document describes: it stays in `extra`.
_INTEGER = re.compile(r"[+-]?[0-9]{1,19}")
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
EMPTY = ("", "null", "NULL", "None")


def is_blank(value: Any) -> bool:
    """None, "" or "null": the provider sent nothing."""
    return value is None or (isinstance(value, str) and value.strip() in EMPTY)


def as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value).strip()


def to_int(value: Any) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, Decimal):
        if not value.is_finite() or value.adjusted() > 18:  # never expand 1e400000000
            return None
        return int(value) if value == value.to_integral_value() else None
    if isinstance(value, str):
        text = value.strip()
        # Unsigned digits, the usual integer text, need not go through the pattern.
        if len(text) <= _MAX_INTEGER_DIGITS and text.isascii() and text.isdigit():
            return int(text)
        if _INTEGER.fullmatch(text):
            return int(text)
    return None


def to_decimal(value: Any) -> Decimal | None:
    if isinstance(value, bool) or value is None:
        return None
    # A coefficient has no more digits than its text has characters: a short text's
    # digits need not be counted.
    digits_known_short = False
    if isinstance(value, Decimal | int):
        amount = Decimal(value)
    elif isinstance(value, str):
        text = value.strip()
        if not _DECIMAL.fullmatch(text):
            return None
        try:
            amount = Decimal(text)
        except InvalidOperation:  # pragma: no cover - the pattern is Decimal's syntax
            return None
        digits_known_short = len(text) <= MONEY_MAX_DIGITS
    else:
        return None
    if (
        not amount.is_finite()
        or abs(amount.adjusted()) > MONEY_MAX_EXPONENT
        or (not digits_known_short and len(amount.as_tuple().digits) > MONEY_MAX_DIGITS)
    ):
        return None  # not an amount of money: kept raw in `extra`
    return amount


def from_epoch_millis(millis: int) -> datetime | None:
    """The moment, if it can be a call time."""
    if not _EARLIEST_MS <= millis < _LATEST_MS:
        return None
    return _EPOCH + timedelta(milliseconds=millis)


_ISO_FORMATS = frozenset({"%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S.%f"})
_SLASHED = re.compile(
    r"([0-9]{4})/([0-9]{2})/([0-9]{2}),([0-9]{2}):([0-9]{2}):([0-9]{2})(?::([0-9]{1,3}))?"
)


@functools.cache  # each provider's few format tuples
def time_parsers(formats: tuple[str, ...]) -> tuple[Callable[[str], datetime], ...]:
    return tuple(time_parser(fmt) for fmt in formats)


def time_parser(fmt: str) -> Callable[[str], datetime]:
    """strptime is slow; the formats every provider uses have fast equivalents."""
    if fmt in _ISO_FORMATS:
        return _parse_iso
    if fmt in ("%Y/%m/%d,%H:%M:%S:%f", "%Y/%m/%d,%H:%M:%S"):
        return _parse_slashed
    return lambda text: datetime.strptime(text, fmt)


def _parse_slashed(text: str) -> datetime:
    """`yyyy/MM/dd,HH:mm:ss[:SSS]` (Huawei), without strptime's cost."""
    match = _SLASHED.fullmatch(text)
    if match is None:
        raise ValueError(f"not yyyy/MM/dd,HH:mm:ss:SSS: {text!r}")
    year, month, day, hour, minute, second, millis = match.groups()
    micros = int(millis.ljust(3, "0")) * 1000 if millis else 0
    return datetime(int(year), int(month), int(day), int(hour), int(minute), int(second), micros)


def _parse_iso(text: str) -> datetime:
    if len(text) < 19 or text[4] != "-" or text[13] != ":":  # date-only and odd shapes
        raise ValueError(f"not yyyy-MM-dd HH:mm:ss: {text!r}")
    return datetime.fromisoformat(text)
