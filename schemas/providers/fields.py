"""Reading a payload field by field into record columns, keeping what is not read."""

from __future__ import annotations

import re
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from decimal import Decimal
from typing import Any, TypeVar

from schemas.providers.errors import Reason, Reject
from schemas.providers.values import (
    EMPTY,
    MAX_SECONDS,
    as_text,
    from_epoch_millis,
    is_blank,
    time_parsers,
    to_decimal,
    to_int,
)
from schemas.record import EARLIEST, LATEST

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


# NUL and lone surrogates cannot be stored and are replaced later (`workers.sanitize`): in
# an id, that would make two ids one record, so such an id is refused instead.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def require_text(payload: Mapping[str, Any], key: str) -> str:
    """A required text field: the report's id."""
    value = payload.get(key)
    text = "" if value is None or isinstance(value, dict | list | bool) else str(value).strip()
    if not text or text == "null":
        raise Reject(Reason.MISSING_FIELD, f"required field {key!r} is missing or empty")
    if _UNSTORABLE.search(text):
        raise Reject(Reason.INVALID_FIELD, f"required field {key!r} holds NUL or broken UTF-16")
    return text


@dataclass
class Fields:
    """Reads a payload field by field. A field whose value, or a one-to-one translation
    of it (a type code to `call_type`), lands in a column is consumed. Every field not
    consumed ends in `extra`: also those that only inform a derived column (a result code
    behind `status`), so their exact value is at hand without digging in `raw`; and so
    does every consumed value that could not be read (a duration that is not a number),
    so nothing the provider sent is lost."""

    payload: Mapping[str, Any]
    zone: tzinfo = UTC
    _consumed: set[str] = field(default_factory=set)
    _unreadable: dict[str, Any] = field(default_factory=dict)

    def peek(self, key: str) -> Any:
        """Read without consuming: the value also stays in `extra`."""
        return self.payload.get(key)

    def peek_int(self, key: str) -> int | None:
        """`peek` read as an integer: a code that informs a derived column (0 stays 0)."""
        return to_int(self.payload.get(key))

    def take(self, key: str) -> Any:
        self._consumed.add(key)
        return self.payload.get(key)

    def require_text(self, key: str) -> str:
        """The report's id (`require_text`), consumed."""
        text = require_text(self.payload, key)
        self._consumed.add(key)
        return text

    def extra(self) -> dict[str, Any]:
        kept = {k: v for k, v in self.payload.items() if k not in self._consumed}
        kept.update(self._unreadable)
        return kept

    def code(self, key: str, meanings: Mapping[int, V]) -> V | None:
        """What this field's integer code means (0 is a code like any other). The field is
        consumed when `meanings` knows the code; an unknown code stays in `extra`."""
        return self.lookup(key, meanings, to_int)

    def lookup(
        self, key: str, meanings: Mapping[K, V], read: Callable[[Any], K | None]
    ) -> V | None:
        """`code` for values that are not integers: `read` turns the value into a key of
        `meanings` (None when it cannot)."""
        found = _meaning(meanings, read(self.payload.get(key)))
        if found is not None:
            self._consumed.add(key)
        return found

    def _unread(self, key: str, value: Any) -> None:
        self._unreadable[key] = value

    def text(self, key: str, *, empty: tuple[str, ...] = ()) -> str | None:
        value = self.take(key)
        if value is None:
            return None
        if type(value) is str:  # most values: `as_text` without its checks
            text = value.strip()
        elif isinstance(value, dict | list):
            self._unread(key, value)
            return None
        else:
            text = as_text(value)
        return None if text in EMPTY or text in empty else text

    def integer(self, key: str, *, low: int = 0, high: int = MAX_SECONDS) -> int | None:
        value = self.take(key)
        number = to_int(value)
        if number is None:
            if not is_blank(value):
                self._unread(key, value)
            return None
        if not low <= number <= high:
            self._unread(key, value)
            return None
        return number

    def decimal(self, key: str) -> Decimal | None:
        value = self.take(key)
        if is_blank(value):
            return None
        amount = to_decimal(value)
        if amount is None:
            self._unread(key, value)
        return amount

    def epoch_millis(self, key: str) -> datetime | None:
        """Millisecond epoch; 0 and "" mean none."""
        value = self.take(key)
        millis = to_int(value)
        if millis is None:
            if not is_blank(value):
                self._unread(key, value)
            return None
        if millis == 0:
            return None
        moment = from_epoch_millis(millis)
        if moment is None:
            self._unread(key, value)
        return moment

    def local_time(self, key: str, *formats: str) -> datetime | None:
        """A time string in one of `formats` (strptime), read in the source's zone unless
        it carries its own offset, returned in UTC."""
        value = self.take(key)
        if is_blank(value) or value == 0 or value == "0":
            return None
        text = as_text(value)
        if not text.isascii():  # strptime, like int(), reads every Unicode digit
            self._unread(key, value)
            return None
        for parse in time_parsers(formats):
            try:
                moment = parse(text)
                if moment.tzinfo is None:
                    # replace(tzinfo=...), at a quarter of its cost
                    moment = datetime.combine(moment, moment.time(), self.zone)
                moment = moment.astimezone(UTC)
            except (ValueError, OverflowError):
                continue
            if EARLIEST <= moment < LATEST:
                return moment
        self._unread(key, value)
        return None

    def labels(self, key: str) -> tuple[str, ...]:
        value = self.take(key)
        if is_blank(value):
            return ()
        if isinstance(value, list) and all(isinstance(v, str | int | Decimal) for v in value):
            return tuple(str(v).strip() for v in value if str(v).strip())
        if isinstance(value, str):
            return tuple(v.strip() for v in value.split(",") if v.strip())
        self._unread(key, value)
        return ()


def _meaning(meanings: Mapping[K, V], key: K | None) -> V | None:
    return None if key is None else meanings.get(key)
