"""Reading a payload field by field into record columns, keeping what is not read."""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timezone, tzinfo
from decimal import Decimal
from typing import Any, NamedTuple, TypeVar

from schemas.keys import put_keeping
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
from schemas.record import EARLIEST, LATEST, TIME_COLUMNS, CallRecord

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
    _doubts: dict[str, _Doubt] = field(default_factory=dict)

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
                local = moment.tzinfo is None
                if local:
                    # replace(tzinfo=...), at a quarter of its cost
                    moment = datetime.combine(moment, moment.time(), self.zone)
                utc = moment.astimezone(UTC)
            except (ValueError, OverflowError):
                continue
            if EARLIEST <= utc < LATEST:
                if local and not isinstance(self.zone, timezone):
                    self._note_doubt(key, moment, utc)
                return utc
        self._unread(key, value)
        return None

    def _note_doubt(self, key: str, local: datetime, first: datetime) -> None:
        """A zone-less time the zone's clock shows twice (the hour repeated when daylight
        saving ends) or never (the hour skipped when it starts) has two readings; `settled`
        chooses, once every time of the record is read."""
        other = local.replace(fold=1)
        if other.utcoffset() == local.utcoffset():
            return  # the usual time: one reading
        second = other.astimezone(UTC)
        shown = first.astimezone(self.zone).replace(tzinfo=None)
        kind = TIME_AMBIGUOUS if shown == local.replace(tzinfo=None) else TIME_NONEXISTENT
        self._doubts[key] = _Doubt(kind, first, second)

    def settled(self, record: CallRecord) -> CallRecord:
        """`record` with each doubtful local time (see `_note_doubt`) read so that its times
        keep their order (submitted <= started <= ringing <= answered <= ended) where a
        choice of readings does, else as first read (the earlier offset's reading), and
        the fields named in `extra`: `time_ambiguous` (a repeated hour) and
        `time_nonexistent` (a skipped hour), each a sorted list of the provider's names.
        Every provider returns its record through this."""
        if not self._doubts:
            return record
        doubtful = {
            column: doubt
            for column in TIME_COLUMNS
            for doubt in self._doubts.values()
            if getattr(record, column) is doubt.first
        }
        changes: dict[str, Any] = _ordered_choice(record, doubtful)
        flags: dict[str, list[str]] = {}
        for key, doubt in sorted(self._doubts.items()):
            flags.setdefault(doubt.kind, []).append(key)
        extra = dict(record.extra)
        for kind, keys in flags.items():
            put_keeping(extra, kind, keys)  # a provider's own field of that name stays too
        changes["extra"] = extra
        return dataclasses.replace(record, **changes)

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


TIME_AMBIGUOUS = "time_ambiguous"
TIME_NONEXISTENT = "time_nonexistent"


class _Doubt(NamedTuple):
    kind: str  # TIME_AMBIGUOUS or TIME_NONEXISTENT
    first: datetime  # with the offset in force before the change (fold=0)
    second: datetime  # with the offset in force after it (fold=1)


def _ordered_choice(record: CallRecord, doubtful: dict[str, _Doubt]) -> dict[str, datetime]:
    """A reading per doubtful column that keeps the record's times in order: the first such
    choice, earlier readings preferred; the first readings when no choice does."""
    columns = list(doubtful)
    for readings in itertools.product(*((d.first, d.second) for d in doubtful.values())):
        chosen = dict(zip(columns, readings, strict=True))
        times = [chosen.get(c, getattr(record, c)) for c in TIME_COLUMNS]
        present = [t for t in times if t is not None]
        if all(a <= b for a, b in itertools.pairwise(present)):
            return chosen
    return {}


def _meaning(meanings: Mapping[K, V], key: K | None) -> V | None:
    return None if key is None else meanings.get(key)
