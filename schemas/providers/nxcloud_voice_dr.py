"""NXCloud voice delivery receipt (`nxcloud-voice-dr.txt`).

Fields arrive as an `application/x-www-form-urlencoded` or `multipart/form-data` body or in
the URL query string (older accounts), by POST or GET; both are read, body fields winning.
A field that cannot be decoded is kept undecoded in `extra` (`bodies.parse_form`).
The platform pushes a DR **once**: the ingress answers `success` only when it is durable,
`error` otherwise.
`result` comes in English or Chinese; `hangup_cause` is a FreeSWITCH cause name (or its
Q.850 number); `start_time`/`end_time` are zone-less, read in the source's zone.
`voice_type` 1 is "verification/notification": recorded as `notification`."""

from __future__ import annotations

import random
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from schemas.envelope import RawEnvelope
from schemas.keys import put_keeping
from schemas.providers.bodies import (
    body_text,
    charsets_to_try,
    is_multipart,
    parse_form,
    parse_json,
    parse_multipart,
)
from schemas.providers.errors import Reason, Reject
from schemas.providers.fields import Fields
from schemas.providers.protocol import SimulatedCallback, UnsignedTextProvider
from schemas.record import CallRecord, CallType, Direction, HangupBy, Status
from schemas.sources import Source

TIME_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S")
_CALL_TYPES = {0: CallType.GROUP_CALL, 1: CallType.NOTIFICATION}
_CONNECTED = frozenset(
    {"successful connection", "success", "connected", "成功接通", "接通", "成功"}
)
_NOT_CONNECTED = frozenset({"unsuccessful connection", "failed", "failure", "未接通", "失败"})
# FreeSWITCH hangup causes (and their Q.850 numbers) that say why a call did not connect.
_CAUSE_STATUS = {
    "USER_BUSY": Status.BUSY,
    "17": Status.BUSY,
    "NO_ANSWER": Status.NO_ANSWER,
    "19": Status.NO_ANSWER,
    "NO_USER_RESPONSE": Status.NO_ANSWER,
    "18": Status.NO_ANSWER,
    "ALLOTTED_TIMEOUT": Status.NO_ANSWER,
    "CALL_REJECTED": Status.REJECTED,
    "21": Status.REJECTED,
    "ORIGINATOR_CANCEL": Status.CANCELLED,
    "487": Status.CANCELLED,
}
# Causes that say nothing about failure (a normal end).
_NEUTRAL_CAUSES = frozenset(
    {"NORMAL_CLEARING", "16", "NORMAL_UNSPECIFIED", "31", "SUCCESS", "NONE"}
)
_DISPOSITION = {
    "send_bye": (HangupBy.CALLER, None),
    "recv_bye": (HangupBy.CALLEE, None),
    "recv_refuse": (HangupBy.CALLEE, Status.REJECTED),
    "send_cancel": (HangupBy.CALLER, Status.NO_ANSWER),  # caller gave up: ring timeout
}


class NXCloudVoiceDR(UnsignedTextProvider):
    name = "nxcloud.voice_dr"
    methods = frozenset({"POST", "GET"})
    default_timezone = "+08:00"

    def parse(self, envelope: RawEnvelope, source: Source) -> list[Any]:
        charsets = charsets_to_try(envelope, source)
        fields: dict[str, Any] = parse_form(envelope.query, charsets) if envelope.query else {}
        if is_multipart(envelope.content_type):  # "submit using form data"
            _merge(fields, parse_multipart(envelope, source))
        elif (text := body_text(envelope, source)).strip():
            if "json" in envelope.content_type.lower() or text.lstrip().startswith("{"):
                document = parse_json(text)
                if not isinstance(document, dict):
                    raise Reject(Reason.NOT_AN_OBJECT, "JSON body is not an object")
                _merge(fields, document)
            else:
                _merge(fields, parse_form(text, charsets))
        if not fields:
            raise Reject(Reason.EMPTY_BODY, "no fields in the body or the query string")
        return [fields]

    def normalize(self, payload: Mapping[str, Any], source: Source) -> CallRecord:
        f = Fields(payload, source.timezone)
        message_id = f.require_text("messageid")
        kind = f.code("voice_type", _CALL_TYPES)
        talk_seconds = f.integer("duration")
        cause = f.text("hangup_cause")
        disposition = f.lookup("hangup_disposition", _DISPOSITION, _lowered)
        hangup_by, disposition_status = disposition or (None, None)
        cycle = f.integer("cycle", low=1)
        cycles = f.peek_int("size")
        record = CallRecord(
            source=source.name,
            tenant=source.tenant,
            provider="nxcloud",
            event="voice_dr",
            external_id=message_id,
            raw=payload,
            status=_status(f.peek("result"), talk_seconds, cause, disposition_status),
            call_type=kind,
            direction=Direction.OUTBOUND,
            callee=f.text("phone"),
            country_code=f.text("countryCode"),
            hangup_cause=cause,
            hangup_by=hangup_by,
            started_at=f.local_time("start_time", *TIME_FORMATS),
            ended_at=f.local_time("end_time", *TIME_FORMATS),
            talk_seconds=talk_seconds,
            billed_seconds=cycle * cycles if cycle and cycles is not None and cycles >= 0 else None,
            billing_increment=str(cycle) if cycle else None,
            currency=source.currency or "USD",
            rate=f.decimal("customer_price"),
            base_cost=f.decimal("basic_price"),
            recording_url=f.text("record_url"),
            dtmf=f.text("ivr_result", empty=("-1",)),
            user_data=f.text("ext"),
            extra=f.extra(),
        )
        return f.settled(record)

    def simulate(
        self, rng: random.Random, now: datetime, source: Source, external_id: str | None = None
    ) -> SimulatedCallback:
        fields = sample_receipt(rng, now.astimezone(source.timezone))
        fields["messageid"] = external_id or fields["messageid"]
        query = urlencode(fields)
        if rng.random() < 0.3:  # older accounts get URL parameters, by GET
            return SimulatedCallback("GET", query=query, external_id=fields["messageid"])
        return SimulatedCallback(
            "POST",
            body=query.encode(),
            content_type="application/x-www-form-urlencoded",
            external_id=fields["messageid"],
        )


def _merge(fields: dict[str, Any], body: dict[str, Any]) -> None:
    """The body's fields over the query's: a name in both keeps the body's value, and the
    query's under a suffixed name when it differs."""
    for name, value in body.items():
        put_keeping(fields, name, value)


def _lowered(value: Any) -> str:
    return str(value or "").strip().lower()


def _status(
    result: Any, talk_seconds: int | None, cause: str | None, disposition: Status | None
) -> Status:
    verdict = str(result or "").strip().lower()
    if verdict in _CONNECTED or (talk_seconds or 0) > 0:
        return Status.ANSWERED
    cause_key = (cause or "").upper()
    by_cause = _CAUSE_STATUS.get(cause_key)
    if by_cause is not None:
        return by_cause
    if disposition is not None:
        return disposition
    if cause_key and cause_key not in _NEUTRAL_CAUSES:
        return Status.FAILED
    if verdict in _NOT_CONNECTED:
        return Status.FAILED
    return Status.UNKNOWN


def sample_receipt(rng: random.Random, local_now: datetime) -> dict[str, str]:
    end = local_now.replace(tzinfo=None, microsecond=0) - timedelta(seconds=rng.randint(0, 60))
    connected = rng.random() < 0.6
    talk = rng.randint(1, 120) if connected else 0
    start = end - timedelta(seconds=talk + rng.randint(3, 20))
    cause, disposition = (
        ("NORMAL_CLEARING", rng.choice(["send_bye", "recv_bye"]))
        if connected
        else rng.choice(
            [("USER_BUSY", "recv_refuse"), ("NO_ANSWER", "send_cancel"), ("CALL_REJECTED", "other")]
        )
    )
    result = rng.choice(["Successful connection", "成功接通"]) if connected else "未接通"
    return {
        "phone": f"86150{rng.randrange(10**8):08d}",
        "countryCode": "86",
        "duration": str(talk),
        "voice_type": rng.choice(["0", "1"]),
        "messageid": f"{rng.getrandbits(116):029x}",
        "basic_price": "0.005",
        "second": str(talk),
        "cycle": "60",
        "size": str(-(-talk // 60)),
        "customer_price": "0.036",
        "start_time": f"{start:%Y-%m-%d %H:%M:%S}",
        "end_time": f"{end:%Y-%m-%d %H:%M:%S}",
        "result": result,
        "hangup_cause": cause,
        "hangup_disposition": disposition,
        "ivr_result": rng.choice(["", "-1", "1"]),
        "ext": f"campaign-{rng.randrange(100)}",
    }


PROVIDER = NXCloudVoiceDR()
