"""What every provider module provides, and the small tools they share.

A provider module holds everything about one kind of push: which HTTP methods it uses,
how it is answered, how it is authenticated, how its body is read, and how a payload
becomes a `CallRecord`. Nothing here does I/O."""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any, Protocol
from urllib.parse import parse_qsl

from schemas.envelope import RawEnvelope
from schemas.jsoncodec import JSONError, loads_exact
from schemas.record import CallRecord, Status
from schemas.sources import Source


class Outcome(StrEnum):
    """How the ingress ended a request; a provider turns it into its own answer."""

    ACCEPTED = "accepted"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    TIMEOUT = "timeout"
    TOO_LARGE = "too_large"
    UNAVAILABLE = "unavailable"


HTTP_STATUS = {
    Outcome.ACCEPTED: 200,
    Outcome.UNAUTHORIZED: 401,
    Outcome.FORBIDDEN: 403,
    Outcome.METHOD_NOT_ALLOWED: 405,
    Outcome.TIMEOUT: 408,
    Outcome.TOO_LARGE: 413,
    Outcome.UNAVAILABLE: 503,
}


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: bytes
    content_type: str


def text_answers(success: str = "success", failure: str = "error") -> Callable[[Outcome], Answer]:
    """Plain-text answers: `success` for accepted, `failure` for everything else."""

    def answer(outcome: Outcome) -> Answer:
        body = success if outcome is Outcome.ACCEPTED else failure
        return Answer(HTTP_STATUS[outcome], body.encode(), "text/plain")

    return answer


class Reason(StrEnum):
    """Machine-readable reason codes stored in `rejected_callbacks.reason`."""

    EMPTY_BODY = "empty_body"
    UNPARSEABLE_BODY = "unparseable_body"
    NOT_AN_OBJECT = "not_an_object"
    MISSING_FIELD = "missing_field"
    INVALID_FIELD = "invalid_field"
    UNKNOWN_SOURCE = "unknown_source"
    UNKNOWN_PROVIDER = "unknown_provider"
    INTERNAL_ERROR = "internal_error"
    STORE_ERROR = "store_error"


class Reject(Exception):
    """This callback cannot become a record. The worker stores it in `rejected_callbacks`
    with this reason and acknowledges its message: nothing is retried or lost."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class Unauthenticated(Exception):
    """The signature or its timestamp does not check out: the ingress answers 401."""


@dataclass(frozen=True, slots=True)
class SimulatedCallback:
    """One request `cdrflow simulate` sends, built by the provider module itself."""

    method: str
    body: bytes = b""
    content_type: str = ""
    query: str = ""
    external_id: str = ""


class Provider(Protocol):
    @property
    def name(self) -> str:
        """Registry key, as written in the sources file: "vendor.event"."""

    @property
    def methods(self) -> frozenset[str]: ...

    @property
    def default_timezone(self) -> str: ...

    @property
    def signing_modes(self) -> frozenset[str]: ...

    @property
    def volatile_fields(self) -> frozenset[str]:
        """Payload fields that change on every push (nonces, signatures): not content."""

    def answer(self, outcome: Outcome) -> Answer: ...

    def authenticate(self, envelope: RawEnvelope, source: Source, now: float) -> None:
        """Raise `Unauthenticated` unless the request is signed as the source requires."""

    def parse(self, envelope: RawEnvelope) -> list[dict[str, Any]]:
        """The payloads in one request (several for batch variants); raise `Reject`."""

    def normalize(self, payload: Mapping[str, Any], source: Source) -> CallRecord:
        """One payload as a call record; raise `Reject` when it cannot be one."""

    def simulate(self, rng: random.Random, now: datetime, source: Source) -> SimulatedCallback:
        """A realistic callback of this kind, for `cdrflow simulate` and the tests."""


class UnsignedTextProvider:
    """Defaults for a provider that signs nothing and is answered in plain text
    (`success`, or `error` for every failure), as all NXCloud pushes are."""

    signing_modes: frozenset[str] = frozenset()
    volatile_fields: frozenset[str] = frozenset()
    _answer = staticmethod(text_answers())

    def answer(self, outcome: Outcome) -> Answer:
        return self._answer(outcome)

    def authenticate(self, envelope: RawEnvelope, source: Source, now: float) -> None:
        return None


# --- reading bodies ---------------------------------------------------------------


def charset_of(content_type: str) -> str:
    for part in content_type.split(";")[1:]:
        key, _, value = part.strip().partition("=")
        if key.strip().lower() == "charset" and value:
            return value.strip().strip('"').lower()
    return "utf-8"


def body_text(envelope: RawEnvelope) -> str:
    charset = charset_of(envelope.content_type)
    try:
        return envelope.body.decode(charset).removeprefix("\ufeff")
    except (UnicodeDecodeError, LookupError) as exc:
        raise Reject(Reason.UNPARSEABLE_BODY, f"body is not valid {charset}: {exc}") from exc


def json_body(envelope: RawEnvelope) -> Any:
    """The body as exact JSON; an empty body is refused."""
    text = body_text(envelope)
    if not text.strip():
        raise Reject(Reason.EMPTY_BODY, "body is empty")
    return parse_json(text)


def parse_json(text: str) -> Any:
    try:
        return loads_exact(text)
    except JSONError as exc:
        raise Reject(Reason.UNPARSEABLE_BODY, f"body is not valid JSON: {exc}") from exc


def parse_form(text: str, charset: str = "utf-8") -> dict[str, str]:
    """`a=1&b=2` (form body or query string). A repeated key keeps its last value."""
    try:
        return dict(parse_qsl(text, keep_blank_values=True, encoding=charset, errors="strict"))
    except (UnicodeDecodeError, LookupError, ValueError) as exc:
        raise Reject(Reason.UNPARSEABLE_BODY, f"form data cannot be decoded: {exc}") from exc


def require_text(payload: Mapping[str, Any], key: str) -> str:
    value = payload.get(key)
    text = "" if value is None or isinstance(value, dict | list | bool) else str(value).strip()
    if not text or text == "null":
        raise Reject(Reason.MISSING_FIELD, f"required field {key!r} is missing or empty")
    return text


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


# --- reading fields ----------------------------------------------------------------

MAX_SECONDS = 10_000_000  # ~115 days: anything longer is not a call duration
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Times outside these bounds are not call times: kept raw in `extra`, never a crash.
_EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
_LATEST = datetime(2200, 1, 1, tzinfo=UTC)
_EARLIEST_MS = int((_EARLIEST - _EPOCH).total_seconds() * 1000)
_LATEST_MS = int((_LATEST - _EPOCH).total_seconds() * 1000)
_INTEGER = re.compile(r"[+-]?[0-9]{1,19}")
_EMPTY = ("", "null", "NULL", "None")


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

    def take(self, key: str) -> Any:
        self._consumed.add(key)
        return self.payload.get(key)

    def extra(self) -> dict[str, Any]:
        kept = {k: v for k, v in self.payload.items() if k not in self._consumed}
        kept.update(self._unreadable)
        return kept

    def _unread(self, key: str, value: Any) -> None:
        self._unreadable[key] = value

    def text(self, key: str, *, empty: tuple[str, ...] = ()) -> str | None:
        value = self.take(key)
        if value is None:
            return None
        if isinstance(value, dict | list):
            self._unread(key, value)
            return None
        text = _as_text(value)
        return None if text in _EMPTY or text in empty else text

    def integer(self, key: str, *, low: int = 0, high: int = MAX_SECONDS) -> int | None:
        value = self.take(key)
        number = to_int(value)
        if number is None:
            if not _blank(value):
                self._unread(key, value)
            return None
        if not low <= number <= high:
            self._unread(key, value)
            return None
        return number

    def decimal(self, key: str) -> Decimal | None:
        value = self.take(key)
        if _blank(value):
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
            if not _blank(value):
                self._unread(key, value)
            return None
        if millis == 0:
            return None
        if not _EARLIEST_MS <= millis < _LATEST_MS:
            self._unread(key, value)
            return None
        return _EPOCH + timedelta(milliseconds=millis)

    def local_time(self, key: str, *formats: str) -> datetime | None:
        """A time string in one of `formats` (strptime), read in the source's zone unless
        it carries its own offset, returned in UTC."""
        value = self.take(key)
        if _blank(value) or value == 0 or value == "0":
            return None
        text = _as_text(value)
        for fmt in formats:
            try:
                moment = _parser(fmt)(text)
                if moment.tzinfo is None:
                    moment = moment.replace(tzinfo=self.zone)
                moment = moment.astimezone(UTC)
            except (ValueError, OverflowError):
                continue
            if _EARLIEST <= moment < _LATEST:
                return moment
        self._unread(key, value)
        return None

    def labels(self, key: str) -> tuple[str, ...]:
        value = self.take(key)
        if _blank(value):
            return ()
        if isinstance(value, list) and all(isinstance(v, str | int) for v in value):
            return tuple(str(v).strip() for v in value if str(v).strip())
        if isinstance(value, str):
            return tuple(v.strip() for v in value.split(",") if v.strip())
        self._unread(key, value)
        return ()


_ISO_FORMATS = frozenset({"%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S.%f"})
_SLASHED = re.compile(r"(\d{4})/(\d{2})/(\d{2}),(\d{2}):(\d{2}):(\d{2})(?::(\d{1,3}))?")


def _parse_slashed(text: str) -> datetime:
    """`yyyy/MM/dd,HH:mm:ss[:SSS]` (Huawei), without strptime's cost."""
    match = _SLASHED.fullmatch(text)
    if match is None:
        raise ValueError(f"not yyyy/MM/dd,HH:mm:ss:SSS: {text!r}")
    year, month, day, hour, minute, second, millis = match.groups()
    micros = int(millis.ljust(3, "0")) * 1000 if millis else 0
    return datetime(int(year), int(month), int(day), int(hour), int(minute), int(second), micros)


def _parser(fmt: str) -> Callable[[str], datetime]:
    """strptime is slow; the formats every provider uses have fast equivalents."""
    if fmt in _ISO_FORMATS:
        return _parse_iso
    if fmt in ("%Y/%m/%d,%H:%M:%S:%f", "%Y/%m/%d,%H:%M:%S"):
        return _parse_slashed
    return lambda text: datetime.strptime(text, fmt)


def _parse_iso(text: str) -> datetime:
    if len(text) < 19 or text[4] != "-" or text[13] != ":":  # date-only and odd shapes
        raise ValueError(f"not yyyy-MM-dd HH:mm:ss: {text!r}")
    return datetime.fromisoformat(text)


def is_blank(value: Any) -> bool:
    """None, "" or "null": the provider sent nothing."""
    return _blank(value)


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip() in _EMPTY)


def _as_text(value: Any) -> str:
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
        if _INTEGER.fullmatch(text):
            return int(text)
    return None


def to_decimal(value: Any) -> Decimal | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, Decimal | int):
        amount = Decimal(value)
    elif isinstance(value, str):
        try:
            amount = Decimal(value.strip())
        except InvalidOperation:
            return None
    else:
        return None
    if not amount.is_finite() or abs(amount.adjusted()) > 24 or len(amount.as_tuple().digits) > 40:
        return None  # not an amount of money: kept raw in `extra`
    return amount


# --- shared call semantics -------------------------------------------------------


def status_from_sip(code: int | None) -> Status | None:
    """What a final SIP response code says about an unconnected call."""
    if code is None or code < 400:
        return None
    return {
        486: Status.BUSY,
        600: Status.BUSY,
        408: Status.NO_ANSWER,
        480: Status.NO_ANSWER,
        603: Status.REJECTED,
        487: Status.CANCELLED,
    }.get(code, Status.FAILED)


def is_connected(answered_at: datetime | None, talk_seconds: int | None) -> bool:
    """SPEC: a call is answered exactly when it has an answer time or talked > 0 s."""
    return answered_at is not None or (talk_seconds or 0) > 0
