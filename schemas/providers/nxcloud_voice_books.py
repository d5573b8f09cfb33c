"""NXCloud's voice-record query (`getVoiceCdr`): the books behind voice DRs
(`providers/NOTES.md`, "The providers' own books").

The contract, as the provider documents it: a form-encoded POST (no JSON body) carrying the
voice application's `appkey` and `secretkey`, `voiceType` (0 group call, 1 verification or
notification), `start_time` and `end_time` as `yyyy-MM-dd HH:mm:ss` in the account's zone
(the same zone as the pushed times: the source's), at most 24 hours apart and at most 7
days back (an older copy says 21: the shorter is kept), `page_size` and `page` from 1; at
most one request a second. The answer is `{"code": "1", "info": {"total", "page",
"pageSize", "rows"}}`; any other code is a failure, whose message is in `info` (or `msg`).

A row carries the DR's fields, but numbers as JSON numbers (`messageid` too, in the
documents' example, where a DR pushes a 29-character string: ids are compared as text), no
`duration` (its `second` is the DR's `second`, which the documents' push example shows
equal to `duration`), no `hangup_cause` or `hangup_disposition`, and `voice_type` only in
verification rows, where one copy shows a value (2) the DR never pushes: the DR's
`voice_type` is the listing's `voiceType`, and a row's own differing value is kept as
`books_voice_type`. Cost in a row can lag the DR's settled cost: a window is compared only
once it has settled (`settle_minutes`), and a difference is kept, never applied.

Answers are read with exact numbers: prices as Decimal, ids as integers of any size."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, tzinfo
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

from schemas.providers.books import Backfill, BooksPage, BooksRefused, BooksRequest, Window
from schemas.source_settings import SourceSettings

SUCCESS = "1"
VOICE_TYPES = (0, 1)  # group call; verification or notification
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
FORM = "application/x-www-form-urlencoded"
_ONE_SECOND = timedelta(seconds=1)
# A DR's and a row's `result` for a connected call, lower-cased, in English or Chinese.
CONNECTED_RESULTS = frozenset(
    {"successful connection", "success", "connected", "成功接通", "接通", "成功"}
)


@dataclass(frozen=True, slots=True)
class VoiceBooksConfig:
    appkey: str | None = field(repr=False)  # None where the books' secrets are not read
    secretkey: str | None = field(repr=False)
    voice_types: tuple[int, ...] = VOICE_TYPES

    def kinds(self) -> tuple[str, ...]:
        return tuple(str(voice_type) for voice_type in self.voice_types)

    def account(self) -> str:
        # The provider counts requests per voice application; its key is a credential, so
        # only a digest of it is stored beside the shared rate limit.
        digest = hashlib.sha256((self.appkey or "").encode()).hexdigest()[:16]
        return f"nxcloud.voice:{digest}"

    def secrets(self) -> tuple[str, ...]:
        return tuple(secret for secret in (self.appkey, self.secretkey) if secret)


class NXCloudVoiceBooks:
    max_span = timedelta(hours=24)
    horizon = timedelta(days=7)

    def configure(self, settings: SourceSettings) -> VoiceBooksConfig:
        appkey = settings.secret("appkey", required=True)
        secretkey = settings.secret("secretkey", required=True)
        voice_types = settings.value("voice_types", list(VOICE_TYPES))
        if (
            not isinstance(voice_types, list)
            or not voice_types
            or any(v not in VOICE_TYPES or isinstance(v, bool) for v in voice_types)
            or len(set(voice_types)) != len(voice_types)
        ):
            raise settings.fail("voice_types", "must be a list of 0 (group call) and/or 1")
        return VoiceBooksConfig(appkey, secretkey, tuple(voice_types))

    def request(
        self,
        config: Any,
        url: str,
        kind: str,
        window: Window,
        page: int,
        page_size: int,
        zone: tzinfo,
    ) -> BooksRequest:
        assert isinstance(config, VoiceBooksConfig)
        # The API's bounds are whole seconds, both included: a window [start, end) asks up
        # to the second before its end, so a call on the boundary is listed once.
        form = {
            "appkey": config.appkey or "",
            "secretkey": config.secretkey or "",
            "voiceType": kind,
            "start_time": window.start.astimezone(zone).strftime(TIME_FORMAT),
            "end_time": (window.end - _ONE_SECOND).astimezone(zone).strftime(TIME_FORMAT),
            "page_size": str(page_size),
            "page": str(page),
        }
        return BooksRequest(url, form)

    def read_answer(self, body: bytes) -> BooksPage:
        try:
            document = json.loads(body, parse_float=Decimal)
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
            raise BooksRefused("?", f"answer is not JSON: {body[:200]!r}") from exc
        if not isinstance(document, dict):
            raise BooksRefused("?", "answer is not a JSON object")
        code = _text(document.get("code"))
        if code != SUCCESS:
            raise BooksRefused(code or "?", _message(document))
        info = document.get("info")
        rows = info.get("rows") if isinstance(info, dict) else None
        if not isinstance(info, dict) or not isinstance(rows, list):
            raise BooksRefused(code, "answer has no info.rows")
        total = _integer(info.get("total"))
        if total is None:
            raise BooksRefused(code, "answer has no info.total")
        return BooksPage([row for row in rows if isinstance(row, dict)], total)

    def external_id(self, row: Mapping[str, Any]) -> str:
        return _text(row.get("messageid"))

    def backfill(self, row: Mapping[str, Any], kind: str, zone: tzinfo) -> Backfill:
        fields = {key: _text(value) for key, value in row.items() if value is not None}
        if "duration" not in fields and "second" in fields:
            fields["duration"] = fields["second"]
        if fields.get("voice_type", kind) != kind:
            fields["books_voice_type"] = fields["voice_type"]
        fields["voice_type"] = kind
        message_id = self.external_id(row)
        fields["messageid"] = message_id
        return Backfill(message_id, "POST", FORM, urlencode(fields).encode())


def _text(value: Any) -> str:
    """A JSON value as the push would carry it: text, numbers without exponent."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal):
        integral = value == value.to_integral_value()
        return str(int(value)) if integral and "." not in str(value) else format(value, "f")
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value).strip()


def _integer(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def _message(document: Mapping[str, Any]) -> str:
    for key in ("info", "msg", "message"):
        value = document.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()[:500]
    return json.dumps(document, ensure_ascii=False, default=str)[:500]


BOOKS = NXCloudVoiceBooks()


class NXCloudVoiceReportBooks(NXCloudVoiceBooks):
    """The same books for a voice-report source, on one condition the source states: NXCloud
    does not say that a report's `voiceId` is the record's `messageid`, so a reconcile table
    of a voice-report source must set `same_ids_as_dr = true`, which its operator sets only
    after seeing the two match. A wrong `true` would backfill every report a second time
    under another id.

    A row becomes the report NXCloud would have pushed: `voiceId` the row's `messageid`,
    `type` 1 (group call) or 2 (verification code) after the listing, millisecond epochs of
    the row's zone-less times (`time` submitted, `start_time` called, `end_time` hung up),
    and for a connected call an `answerTime` its `second` before the hang-up: a report's
    answer time, which a row does not carry, is what makes the record answered. No `cost`:
    a row has none."""

    def configure(self, settings: SourceSettings) -> VoiceBooksConfig:
        if settings.value("same_ids_as_dr") is not True:
            raise settings.fail(
                "same_ids_as_dr",
                "must be true: NXCloud does not document that a voice report's voiceId is the"
                " voice record's messageid; set it only once you have seen them match",
            )
        return super().configure(settings)

    def backfill(self, row: Mapping[str, Any], kind: str, zone: tzinfo) -> Backfill:
        message_id = self.external_id(row)
        report: dict[str, Any] = {"voiceId": message_id, "type": _REPORT_TYPES.get(kind, 1)}
        for field_name, value in (
            ("callee", row.get("phone")),
            ("displayNum", row.get("show_phone")),
            ("code", row.get("countryCode")),
            ("rate", row.get("customer_price")),
            ("baseCost", row.get("basic_price")),
            ("feedbackValue", row.get("ivr_result")),
        ):
            if value is not None:
                report[field_name] = _text(value)
        for field_name, source_field in _REPORT_TIMES:
            moment = _epoch_millis(row.get(source_field), zone)
            if moment is not None:
                report[field_name] = moment
        second, cycle, size = (_integer(_text(row.get(k))) for k in ("second", "cycle", "size"))
        if second is not None:
            report["callDuration"] = second
        if cycle is not None and size is not None:
            report["chargedDuration"] = cycle * size
            report["billPeriod"] = f"{cycle}+{cycle}"
        if second and "hangupTime" in report and _connected(row):
            report["answerTime"] = report["hangupTime"] - second * 1000
        body = json.dumps(report, ensure_ascii=False).encode()
        return Backfill(message_id, "POST", "application/json;charset=UTF-8", body)


_REPORT_TYPES = {"0": 1, "1": 2}  # voiceType: group call; verification code
_REPORT_TIMES = (("submitTime", "time"), ("callTime", "start_time"), ("hangupTime", "end_time"))
_CONNECTED = frozenset(
    {"successful connection", "success", "connected", "成功接通", "接通", "成功"}
)


def _connected(row: Mapping[str, Any]) -> bool:
    return _text(row.get("result")).lower() in _CONNECTED


def _epoch_millis(value: Any, zone: tzinfo) -> int | None:
    try:
        local = datetime.strptime(_text(value), TIME_FORMAT)
    except ValueError:
        return None
    return int(local.replace(tzinfo=zone).timestamp() * 1000)


REPORT_BOOKS = NXCloudVoiceReportBooks()
