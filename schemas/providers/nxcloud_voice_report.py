"""NXCloud voice report (`nxcloud-voice-report.txt`): a JSON POST, one report per call.

Variants from the platform's white-label copies, all accepted:
- a JSON array of reports (batch variant), which adds `recordingFileId`, `scriptId`, `intent`;
- `costEur` instead of `cost`: that copy's `rate`, `baseCost` and `costEur` are all in EUR
  (the sample's arithmetic: 0.023625/min for a 20 s cycle is 0.007875), so `currency` is EUR;
  beside `cost`, it is kept in `extra` and the USD figures are the columns. The rule reads
  only whether `cost` is blank and `costEur` is not; a source's `currency` setting
  overrides it (and labels every money column of that source);
- `outRecallCount`, kept in `extra`.

`terminationCode` is "0 = success" in one copy and a SIP code (200 established) in the
others; neither decides `answered` on its own: an answer time or a talk duration does.
Times are millisecond epochs. No signature; the platform expects HTTP 200 `success`."""

from __future__ import annotations

import random
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from schemas.envelope import RawEnvelope
from schemas.providers.bodies import json_body
from schemas.providers.call_status import is_connected, status_from_sip
from schemas.providers.errors import Reason, Reject
from schemas.providers.fields import Fields
from schemas.providers.protocol import SimulatedCallback, UnsignedTextProvider, json_callback
from schemas.providers.values import is_blank
from schemas.record import CallRecord, CallType, Direction, Status
from schemas.sources import Source

_CALL_TYPES = {
    1: CallType.GROUP_CALL,
    2: CallType.VERIFICATION,
    3: CallType.TELEPHONE,
    4: CallType.DIRECT_DIAL,
}
_CONNECTED_CODES = (0, 200)


class NXCloudVoiceReport(UnsignedTextProvider):
    name = "nxcloud.voice_report"
    methods = frozenset({"POST"})
    default_timezone = "+08:00"  # unused: every time in this report is an epoch

    def parse(self, envelope: RawEnvelope, source: Source) -> list[Any]:
        document = json_body(envelope, source)
        if isinstance(document, list):
            if not document:
                raise Reject(Reason.EMPTY_BODY, "batch body is an empty JSON array")
            return document
        return [document]

    def normalize(self, payload: Mapping[str, Any], source: Source) -> CallRecord:
        if not isinstance(payload, Mapping):
            raise Reject(Reason.NOT_AN_OBJECT, "report is not a JSON object")
        f = Fields(payload, source.timezone)
        voice_id = f.require_text("voiceId")
        answered_at = f.epoch_millis("answerTime")
        talk_seconds = f.integer("callDuration")
        sip_code = f.integer("sipCode", low=100, high=699)
        if is_blank(f.peek("cost")) and not is_blank(f.peek("costEur")):
            currency, cost = "EUR", f.decimal("costEur")
        else:
            currency, cost = "USD", f.decimal("cost")
        currency = source.currency or currency
        call_type = f.code("type", _CALL_TYPES)
        record = CallRecord(
            source=source.name,
            tenant=source.tenant,
            provider="nxcloud",
            event="voice_report",
            external_id=voice_id,
            raw=payload,
            status=_status(answered_at, talk_seconds, sip_code, f.peek_int("terminationCode")),
            call_type=call_type,
            direction=Direction.OUTBOUND,
            callee=f.text("callee"),
            display_number=f.text("displayNum"),
            region=f.text("code"),
            hangup_cause=f.text("terminationReason"),
            sip_code=sip_code,
            submitted_at=f.epoch_millis("submitTime"),
            started_at=f.epoch_millis("callTime"),
            ringing_at=f.epoch_millis("ringingTime"),
            answered_at=answered_at,
            ended_at=f.epoch_millis("hangupTime"),
            ring_seconds=f.integer("ringDuration"),
            talk_seconds=talk_seconds,
            billed_seconds=f.integer("chargedDuration"),
            billing_increment=f.text("billPeriod"),
            currency=currency,
            rate=f.decimal("rate"),
            cost=cost,
            base_cost=f.decimal("baseCost"),
            recording_url=f.text("recordingFileId"),
            dtmf=f.text("feedbackValue", empty=("-1",)),
            user_data=f.text("calledInfo"),
            extra=f.extra(),
        )
        return f.settled(record)

    def simulate(
        self, rng: random.Random, now: datetime, source: Source, external_id: str | None = None
    ) -> SimulatedCallback:
        report = sample_report(rng, now)
        report["voiceId"] = external_id or report["voiceId"]
        return json_callback(report, report["voiceId"])


def _status(
    answered_at: datetime | None,
    talk_seconds: int | None,
    sip_code: int | None,
    termination: int | None,
) -> Status:
    if is_connected(answered_at, talk_seconds):
        return Status.ANSWERED
    by_sip = status_from_sip(sip_code) or status_from_sip(termination)
    if by_sip is not None:
        return by_sip
    if termination is not None and termination not in _CONNECTED_CODES:
        return Status.FAILED
    return Status.UNKNOWN


def sample_report(rng: random.Random, now: datetime) -> dict[str, Any]:
    submitted = int(now.timestamp() * 1000) - rng.randint(60_000, 600_000)
    called = submitted + rng.randint(1_000, 30_000)
    ringing = called + rng.randint(500, 3_000)
    answered = rng.random() < 0.6
    talk = rng.randint(1, 300) if answered else 0
    answer_time = ringing + rng.randint(1_000, 15_000) if answered else 0
    hangup = (answer_time + talk * 1000) if answered else ringing + rng.randint(5_000, 40_000)
    charged = -(-talk // 20) * 20 if talk else 0
    report: dict[str, Any] = {
        "voiceId": f"{now:%y%m%d%H%M}{rng.randrange(10**9):09d}",
        "type": rng.choice([1, 2, 3, 4]),
        "callee": f"63{rng.randrange(10**9):09d}",
        "displayNum": f"63{rng.randrange(10**8):08d}",
        "submitTime": submitted,
        "callTime": called,
        "ringingTime": ringing,
        "answerTime": answer_time,
        "hangupTime": hangup,
        "callDuration": talk,
        "chargedDuration": charged,
        "billPeriod": "20+20",
        "code": "Philippines(Smart)",
        "voiceFileId": f"{rng.getrandbits(128):032x}.mp3",
        "rate": "0.023625",
        "baseCost": "0.0",
        "cost": f"{charged * 0.023625 / 60:.6f}",
        "terminationCode": "0" if answered else rng.choice(["486", "480", "603"]),
        "terminationReason": "Called hang up" if answered else "No answer",
        "sipCode": "200" if answered else rng.choice(["486", "480", "603"]),
        "feedbackValue": rng.choice(["-1", "1", "2"]),
        "calledInfo": f"order-{rng.randrange(10**6)}",
        "ringDuration": str(max(0, (answer_time or hangup) - ringing) // 1000),
    }
    return report


PROVIDER = NXCloudVoiceReport()
