"""NXCloud call-center report (`nxcloud-call-center-report.txt`): a JSON POST per call.

The platform pushes again every 30 minutes, up to 3 times, when it thinks a push failed,
so re-pushes of the same `callSessionId` are normal (the ledger counts them).
Times are `yyyy-MM-dd HH:mm:ss` with no zone: read in the source's zone (default UTC+8,
which the sample ids suggest); the original strings stay in `raw`.
`agentAccount`, `baseCost` and `cost` are missing from some copies of the document."""

from __future__ import annotations

import random
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from schemas.envelope import RawEnvelope
from schemas.providers.bodies import json_body
from schemas.providers.call_status import is_connected, status_from_sip
from schemas.providers.errors import Reason, Reject
from schemas.providers.fields import Fields
from schemas.providers.protocol import SimulatedCallback, UnsignedTextProvider, json_callback
from schemas.record import CallRecord, CallType, Direction, HangupBy, Status
from schemas.sources import Source

TIME_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S.%f")
_CALL_TYPES = {
    1: (CallType.AGENT_GROUP_CALL, Direction.OUTBOUND),
    2: (CallType.INBOUND, Direction.INBOUND),
    3: (CallType.OUTBOUND, Direction.OUTBOUND),
}
# hangupReason, for a call that never connected.
_REASON_STATUS = {
    0: Status.NO_ANSWER,  # outgoing call not answered
    1: Status.CANCELLED,  # outgoing call hung up (before any answer)
    2: Status.CANCELLED,  # transfer ringing and hung up
    4: Status.FAILED,  # call abnormality
    5: Status.FAILED,  # called operator has no service
    6: Status.FAILED,  # called party not in the service area
    7: Status.BUSY,  # called party busy
    8: Status.NO_ANSWER,  # incoming call not answered
    9: Status.CANCELLED,  # incoming call hung up (abandoned before an agent answered)
}
_VAGUE = (Status.FAILED, Status.UNKNOWN)


class NXCloudCallCenterReport(UnsignedTextProvider):
    name = "nxcloud.call_center_report"
    methods = frozenset({"POST"})
    default_timezone = "+08:00"

    def parse(self, envelope: RawEnvelope, source: Source) -> list[Any]:
        return [json_body(envelope, source)]

    def normalize(self, payload: Mapping[str, Any], source: Source) -> CallRecord:
        if not isinstance(payload, Mapping):
            raise Reject(Reason.NOT_AN_OBJECT, "report is not a JSON object")
        f = Fields(payload, source.timezone)
        session_id = f.require_text("callSessionId")
        call_type, direction = f.code("callType", _CALL_TYPES) or (None, None)
        answered_at = f.local_time("answerTime", *TIME_FORMATS)
        talk_seconds = f.integer("callDuration")
        sip_code = f.integer("hangupCode", low=100, high=699)
        reason = f.peek_int("hangupReason")
        record = CallRecord(
            source=source.name,
            tenant=source.tenant,
            provider="nxcloud",
            event="call_center_report",
            external_id=session_id,
            raw=payload,
            status=_status(answered_at, talk_seconds, reason, sip_code),
            call_type=call_type,
            direction=direction,
            caller=f.text("caller"),
            callee=f.text("called"),
            country_code=f.text("ccode"),
            region=f.text("ccodeName"),
            hangup_cause=f.text("hangupReason"),
            hangup_by=_hangup_by(f, direction),
            sip_code=sip_code,
            started_at=f.local_time("callStartTime", *TIME_FORMATS),
            answered_at=answered_at,
            ended_at=f.local_time("callEndTime", *TIME_FORMATS),
            talk_seconds=talk_seconds,
            currency=source.currency or "USD",
            cost=f.decimal("cost"),
            base_cost=f.decimal("baseCost"),
            recording_url=f.text("voiceUrl"),
            user_data=f.text("calledInfo"),
            agent_name=f.text("agentName"),
            agent_account=f.text("agentAccount"),
            agent_group=f.text("agentGroupName"),
            labels=f.labels("labels"),
            extra=f.extra(),
        )
        return f.settled(record)

    def simulate(
        self, rng: random.Random, now: datetime, source: Source, external_id: str | None = None
    ) -> SimulatedCallback:
        report = sample_report(rng, now.astimezone(source.timezone))
        report["callSessionId"] = external_id or report["callSessionId"]
        return json_callback(report, report["callSessionId"])


def _status(
    answered_at: datetime | None, talk_seconds: int | None, reason: int | None, sip: int | None
) -> Status:
    if is_connected(answered_at, talk_seconds):
        return Status.ANSWERED
    candidates = [_REASON_STATUS.get(reason) if reason is not None else None, status_from_sip(sip)]
    found = [status for status in candidates if status is not None]
    specific = [status for status in found if status not in _VAGUE]
    if specific:
        return specific[0]
    return Status.FAILED if Status.FAILED in found else Status.UNKNOWN


def _hangup_by(f: Fields, direction: Direction | None) -> HangupBy | None:
    # 0 is the customer: the far end of an outgoing call, the caller of an incoming one.
    customer = HangupBy.CALLER if direction is Direction.INBOUND else HangupBy.CALLEE
    return f.code("hangingDirection", {0: customer, 1: HangupBy.AGENT, 3: HangupBy.SYSTEM})


def sample_report(rng: random.Random, local_now: datetime) -> dict[str, Any]:
    """A report as the platform renders it: local wall-clock times with no zone."""
    end = local_now.replace(tzinfo=None, microsecond=0) - timedelta(seconds=rng.randint(0, 60))
    answered = rng.random() < 0.7
    talk = rng.randint(1, 600) if answered else 0
    answer_at = end - timedelta(seconds=talk) if answered else None
    start = (answer_at or end) - timedelta(seconds=rng.randint(2, 30))
    call_type = rng.choice([1, 2, 3])
    report: dict[str, Any] = {
        "callId": f"{rng.getrandbits(64):016x}",
        "callSessionId": f"{end:%Y%m%d%H%M%S}{rng.randrange(10**10):010d}",
        "called": f"86{rng.randrange(10**10):010d}",
        "calledInfo": "",
        "caller": f"86{rng.randrange(10**10):010d}",
        "ccode": "86",
        "ccodeName": "China",
        "agentName": rng.choice(["Alice", "Bob", "Chen Wei"]),
        "agentGroupName": "Sales",
        "agentAccount": f"agent{rng.randrange(100):02d}@acme",
        "callDuration": talk,
        "callType": call_type,
        "hangupCode": "200" if answered else rng.choice(["486", "480", "487"]),
        "hangupReason": (1 if call_type != 2 else 9) if answered else rng.choice([0, 7, 8]),
        "hangingDirection": rng.choice([0, 1, 3]),
        "labels": rng.sample(["Intended customers", "High level", "Callback"], k=rng.randint(0, 2)),
        "baseCost": "0.0",
        "cost": f"{talk * 0.0009:.4f}",
        "remark": "",
        "callStartTime": f"{start:%Y-%m-%d %H:%M:%S}",
        "answerTime": f"{answer_at:%Y-%m-%d %H:%M:%S}" if answer_at else "",
        "callEndTime": f"{end:%Y-%m-%d %H:%M:%S}",
        "voiceUrl": f"https://rec.example.com/{rng.getrandbits(64):016x}.mp3" if answered else "",
    }
    return report


PROVIDER = NXCloudCallCenterReport()
