"""JSON in and out without ever passing money through a float.

Provider bodies are parsed with the standard library so that every JSON number with a
fraction becomes a `Decimal` (orjson would make it a float); everything we write is
rendered by orjson, with decimals written back as the same JSON number text."""

from __future__ import annotations

import json
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import orjson


class JSONError(ValueError):
    pass


MAX_NUMBER_TEXT = 64  # characters: no call datum needs more; a longer number is an attack
MAX_EXPONENT = 1000  # 1e131071 is 22 bytes in jsonb and 131 kB on every read: refused


def _reject_constant(name: str) -> Any:
    # Python's json accepts NaN and Infinity; JSON does not, and neither do we.
    raise JSONError(f"{name} is not valid JSON")


def _parse_int(text: str) -> int | Decimal:
    if len(text) > MAX_NUMBER_TEXT:
        raise JSONError(f"a number of {len(text)} digits")
    # orjson writes integers of at most 64 bits; larger ones stay exact as Decimal.
    return int(text) if len(text) < 19 else Decimal(text)


def _parse_float(text: str) -> Decimal:
    if len(text) > MAX_NUMBER_TEXT:
        raise JSONError(f"a number of {len(text)} characters")
    number = Decimal(text)
    if abs(number.adjusted()) > MAX_EXPONENT:
        raise JSONError(f"a number of magnitude 1e{number.adjusted()}")
    return number


def loads_exact(text: str | bytes) -> Any:
    """Parse JSON with fractional numbers as Decimal (exact), rejecting NaN/Infinity and
    absurdly long numbers. A Decimal keeps its exponent: 1e400000000 is never expanded."""
    try:
        return json.loads(
            text, parse_float=_parse_float, parse_int=_parse_int, parse_constant=_reject_constant
        )
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise JSONError(str(exc) or type(exc).__name__) from exc


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        # str() keeps the number's own form (1.50, 1E+400000000): valid JSON, never expanded.
        return orjson.Fragment(str(value).encode())
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, frozenset | set):
        return sorted(value)
    raise TypeError(f"cannot serialize {type(value).__name__}")


_OPTIONS = orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC


def dumps(value: Any) -> bytes:
    return orjson.dumps(value, default=_default, option=_OPTIONS)


def canonical_json(value: Any) -> bytes:
    """Key-sorted rendering: equal documents give equal bytes."""
    return orjson.dumps(value, default=_default, option=_OPTIONS | orjson.OPT_SORT_KEYS)


loads = orjson.loads
