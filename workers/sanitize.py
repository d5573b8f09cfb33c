"""What PostgreSQL cannot store, made storable."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from schemas.keys import free_key
from schemas.providers import Reason, Reject
from schemas.record import CallRecord

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def sanitize(value: Any) -> Any:
    """PostgreSQL text and jsonb hold neither NUL nor lone UTF-16 surrogates (a string a
    Java sender cut in half): replace them with U+FFFD rather than lose the record."""
    if isinstance(value, str):
        return _UNSTORABLE.sub("\ufffd", value) if _UNSTORABLE.search(value) else value
    if isinstance(value, dict):
        return _sanitize_mapping(value)
    if isinstance(value, list | tuple):
        return [sanitize(v) for v in value]
    return value


def _sanitize_mapping(value: dict[Any, Any]) -> dict[Any, Any]:
    """`sanitize` over keys and values. A key that changes and then equals another key
    (`x\\x00` beside `x\\ufffd`) takes a suffixed name (`schemas.keys`): both
    values are kept."""
    if not any(isinstance(k, str) and _UNSTORABLE.search(k) for k in value):
        return {k: sanitize(v) for k, v in value.items()}
    unchanged = {k for k in value if not (isinstance(k, str) and _UNSTORABLE.search(k))}
    result: dict[Any, Any] = {}
    for key, item in value.items():
        name = key
        if key not in unchanged:
            name = sanitize(key)
            if name in unchanged or name in result:
                name = free_key(name, unchanged | result.keys())
        result[name] = sanitize(item)
    return result


def sanitize_record(record: CallRecord) -> CallRecord:
    """`sanitize` over every text of a record. Its id is never rewritten: `a\\x00` and
    `a\\ufffd` would become one record, so an id holding such text is `invalid_field`."""
    if _UNSTORABLE.search(record.external_id):
        raise Reject(Reason.INVALID_FIELD, "the provider's id holds NUL or broken UTF-16")
    changes = {
        f.name: sanitize(value)
        for f in dataclasses.fields(record)
        if isinstance(value := getattr(record, f.name), str | dict | list | tuple)
        and f.name != "external_id"
    }
    changes["labels"] = tuple(changes["labels"])
    return dataclasses.replace(record, **changes)
