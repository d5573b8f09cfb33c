"""JSON in and out without ever passing money through a float.

Provider bodies are parsed with the standard library so that every JSON number with a
fraction becomes a `Decimal` (orjson would make it a float), or by orjson when that gives
the same document (no such number in it); everything we write is rendered by orjson, with
decimals written back as the same JSON number text.

Numbers are never expanded, in any form we store or publish: PostgreSQL's jsonb writes a
number out in full (`1e999` reads back as 1,000 digits), so a number whose full form would
be more than twice as long as its text is kept as a JSON *string* of its text. A document
nested deeper than `MAX_NESTING` is refused: nothing we write can then fail on depth."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import orjson

from schemas.keys import put_keeping


class JSONError(ValueError):
    pass


MAX_NUMBER_TEXT = 64  # characters: no call datum needs more; a longer number is an attack
MAX_EXPONENT = 1000  # 1e131071 is 22 bytes in jsonb and 131 kB on every read: refused
MAX_EXPANSION = 2  # a number's full form may be this many times its text; longer: a string
# Objects and arrays inside each other: a call report has 2 or 3 levels. Deeper documents
# are refused here, so that no writer (orjson stops at 255) ever meets them.
MAX_NESTING = 64


def _reject_constant(name: str) -> Any:
    # Python's json accepts NaN and Infinity; JSON does not, and neither do we.
    raise JSONError(f"{name} is not valid JSON")


def _parse_int(text: str) -> int | Decimal:
    if len(text) > MAX_NUMBER_TEXT:
        raise JSONError(f"a number of {len(text)} digits")
    # orjson writes integers of at most 64 bits; larger ones stay exact as Decimal.
    return int(text) if len(text) < 19 else Decimal(text)


def _parse_float(text: str) -> Decimal | str:
    if len(text) > MAX_NUMBER_TEXT:
        raise JSONError(f"a number of {len(text)} characters")
    number = Decimal(text)
    if abs(number.adjusted()) > MAX_EXPONENT:
        raise JSONError(f"a number of magnitude 1e{number.adjusted()}")
    if plain_length(number) > MAX_EXPANSION * len(text):
        return text  # 1e999 stays "1e999": jsonb would store and return 1,000 digits
    return number


def plain_length(number: Decimal) -> int:
    """Characters of `number` written without an exponent, as jsonb and numeric write it
    (`format(number, "f")`), counted without writing it."""
    sign, digits, exponent = number.as_tuple()
    assert isinstance(exponent, int)  # finite: JSON has no NaN or Infinity
    if exponent >= 0:
        length = len(digits) + exponent
    elif len(digits) > -exponent:
        length = len(digits) + 1  # the point
    else:
        length = 2 - exponent  # "0." and the fraction's digits
    return length + sign


def _too_deep(document: Any) -> bool:
    stack = [(document, 1)]
    while stack:
        value, depth = stack.pop()
        children = value.values() if isinstance(value, dict) else value
        for child in children:
            if isinstance(child, dict | list):
                if depth + 1 > MAX_NESTING:
                    return True
                stack.append((child, depth + 1))
    return False


_INEXACT = object()
# `_parse_int` keeps integers of fewer than 19 characters (sign included) as int.
_INT_LOW, _INT_HIGH = -(10**17), 10**18


def _orjson_when_exact(text: str | bytes) -> Any:
    """orjson's reading (several times faster than the standard library's with its hooks) when
    it is the one the standard library's gives, else `_INEXACT`. It is when orjson accepts
    the text and every number in it is an integer `_parse_int` keeps as int: orjson makes
    any other number a float (a fraction, an exponent, an integer beyond 64 bits). What
    orjson refuses (NaN, lone surrogates, deep nesting, a BOM...) gets the standard
    library's reading, or its error message."""
    try:
        document = orjson.loads(text)
    except orjson.JSONDecodeError:
        return _INEXACT
    return document if _only_short_integers(document) else _INEXACT


def _only_short_integers(document: Any) -> bool:
    if type(document) is not dict and type(document) is not list:
        document = [document]
    stack = [document]
    while stack:
        node = stack.pop()
        for value in node.values() if type(node) is dict else node:
            kind = type(value)
            if kind is str or value is None or kind is bool:
                continue
            if kind is int:
                if _INT_LOW < value < _INT_HIGH:
                    continue
                return False
            if kind is dict or kind is list:
                stack.append(value)
            else:  # a float
                return False
    return True


def loads_exact(text: str | bytes) -> Any:
    """Parse JSON with fractional numbers as Decimal (exact), rejecting NaN/Infinity,
    absurdly long numbers and documents nested deeper than `MAX_NESTING`. A number whose
    full form is long (1e999) is kept as the string of its text (see the module doc)."""
    if isinstance(text, str):
        brackets = text.count("[") + text.count("{")
    else:
        brackets = text.count(b"[") + text.count(b"{")
    # Fewer brackets than the limit cannot nest deeper than it: most bodies skip the walk,
    # and may take orjson's reading (a deeper one is read, and refused, as it always was).
    document = _orjson_when_exact(text) if brackets <= MAX_NESTING else _INEXACT
    if document is _INEXACT:
        document = _loads_with_hooks(text)
    if isinstance(document, dict | list) and _may_repeat_a_key(text, document):
        document = _loads_with_hooks(text, object_pairs_hook=_keeping_every_value)
    if brackets > MAX_NESTING and isinstance(document, dict | list) and _too_deep(document):
        raise JSONError(f"nested deeper than {MAX_NESTING} levels")
    return document


def _loads_with_hooks(text: str | bytes, **hooks: Any) -> Any:
    try:
        return json.loads(
            text,
            parse_float=_parse_float,
            parse_int=_parse_int,
            parse_constant=_reject_constant,
            **hooks,
        )
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise JSONError(str(exc) or type(exc).__name__) from exc


# Every member of an object is a key's closing quote, maybe blanks, and a colon: the text
# has at least as many of these as its objects have members (a string may add more).
_MEMBER = re.compile(r'"[ \t\r\n]*:')
_BLANK_AFTER_QUOTE = re.compile(r'"[ \t\r\n]')


def _may_repeat_a_key(text: str | bytes, document: dict[str, Any] | list[Any]) -> bool:
    """Whether an object of the text may hold a key twice, which every parser reads as its
    last value alone: when the text has no more members than the document has keys, none
    was repeated (the usual body, at the cost of a scan and a count in C)."""
    if isinstance(text, bytes):
        return True  # not a provider body (those are decoded first): the exact reading
    # Without blanks before a colon, counting is enough.
    blanks = _BLANK_AFTER_QUOTE.search(text)
    members = len(_MEMBER.findall(text)) if blanks else text.count('":')
    if type(document) is dict and members <= len(document):
        return False  # a flat object: no deeper keys to count
    return members > _keys_in(document)


def _keys_in(document: dict[str, Any] | list[Any]) -> int:
    count, stack = 0, [document]
    while stack:
        node = stack.pop()
        if type(node) is dict:
            count += len(node)
            stack.extend(v for v in node.values() if type(v) is dict or type(v) is list)
        else:
            stack.extend(v for v in node if type(v) is dict or type(v) is list)
    return count


def _keeping_every_value(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object whose repeated key keeps its last value, and each earlier one under a
    suffixed name (`schemas.keys`): nothing the provider sent vanishes."""
    fields: dict[str, Any] = {}
    for key, value in pairs:
        put_keeping(fields, key, value)
    return fields


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
