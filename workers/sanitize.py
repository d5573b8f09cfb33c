"""What PostgreSQL cannot store, made storable."""

from __future__ import annotations

import re
from typing import Any

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def sanitize(value: Any) -> Any:
    """PostgreSQL text and jsonb hold neither NUL nor lone UTF-16 surrogates (a string a
    Java sender cut in half): replace them with U+FFFD rather than lose the record."""
    if isinstance(value, str):
        return _UNSTORABLE.sub("\ufffd", value) if _UNSTORABLE.search(value) else value
    if isinstance(value, dict):
        return {sanitize(k): sanitize(v) for k, v in value.items()}
    if isinstance(value, list):
        return [sanitize(v) for v in value]
    return value
