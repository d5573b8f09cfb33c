"""Huawei Cloud AICC (CEC) release event (`huawei-aicc-release-event.txt`).

No Content-Type is promised and the documented example is a Java `Map.toString()`
rendering, `{key=value, key=value}` with `null` for nulls; JSON and form bodies are read
too. The answer is HTTP 200 `{"retCode":"0","retMsg":"success"}`; any other retCode fails.

The `{k=v}` rendering is ambiguous (a value may hold `, name=` or braces): it is read with
the document's field names as anchors, balanced braces and, for a body whose keys are
sorted as the document's example (a TreeMap), the key order (`map_rendering`); for a signed
source the ingress accepts the first reading whose signature verifies, and the worker,
which holds no secret, stores the deterministic reading (the first one tried).

Signing (when the callback URL was registered with shared-key authentication): the body
carries `timestamp`, `nonce`, `signature`. The other parameters, sorted by name, rendered
as a TreeMap with every space removed; string to sign = appSecret_timestamp_nonce_params;
signature = Base64(SHA-256(string)) per the prose, or Base64(HMAC-SHA256(appSecret, string))
per the reference code: `signing = "sha256" | "hmac-sha256"`, per source. Whether the
rendering keeps the TreeMap braces is not settled by the document: both are accepted.
`timestamp` may be seconds or milliseconds. Nothing in that string is escaped, so a body
whose value holds `,name=` signs exactly like another body: it is refused
(`refuse_ambiguous`).

Times are `yyyy/MM/dd,HH:mm:ss:SSS` with no zone: read in the source's zone (default
UTC+8). The documented example puts a timestamp into `agentTalkDuration`: a duration
that is not a number is kept raw in `extra`."""

from __future__ import annotations

import hmac
import json
import random
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any
from urllib.parse import parse_qsl, urlencode

from schemas.envelope import RawEnvelope
from schemas.jsoncodec import dumps
from schemas.providers import map_rendering
from schemas.providers.answers import HTTP_STATUS, Answer, Outcome
from schemas.providers.bodies import field_reading, field_readings
from schemas.providers.call_status import is_connected
from schemas.providers.errors import Reject, Unauthenticated
from schemas.providers.fields import Fields
from schemas.providers.protocol import SimulatedCallback
from schemas.providers.signing import (
    SigningConfig,
    base64_digest,
    read_signing,
    signing_of,
    verify_any,
)
from schemas.providers.values import is_blank, to_int
from schemas.record import CallRecord, CallType, Direction, HangupBy, Status
from schemas.source_settings import SourceSettings
from schemas.sources import Source

TIME_FORMATS = ("%Y/%m/%d,%H:%M:%S:%f", "%Y/%m/%d,%H:%M:%S", "%Y-%m-%d %H:%M:%S")
SIGNATURE_FIELDS = frozenset({"timestamp", "nonce", "signature"})
# The document's Table 1, and the signing fields: the anchors of the `{k=v}` rendering.
DOCUMENTED_FIELDS = SIGNATURE_FIELDS | frozenset(
    {
        "callSerialNo",
        "serviceNo",
        "called",
        "caller",
        "callerPresent",
        "callData",
        "createCallTime",
        "alertingTime",
        "talkingTime",
        "releaseTime",
        "talkDuration",
        "recordfile",
        "locationId",
        "releaseReason",
        "agentAlertingTime",
        "agentTalkingTime",
        "agentReleaseTime",
        "agentTalkDuration",
    }
)
# releaseReason, for a call that never connected.
_REASON_STATUS: dict[int | None, Status] = {
    0: Status.REJECTED,  # the called party hung up while it rang
    1: Status.CANCELLED,  # the calling party (agent) hung up first
    2: Status.FAILED,  # call to the calling party failed
    3: Status.FAILED,  # call to the called party failed
    4: Status.NO_ANSWER,  # calling party did not answer
    5: Status.NO_ANSWER,  # called party did not answer
}
# In a bidirectional call the platform rings the agent's phone (the calling party) first.
_HANGUP_BY: dict[int | None, HangupBy] = {0: HangupBy.CALLEE, 1: HangupBy.AGENT}


# The document's example request body, verbatim (a Java Map.toString() rendering).
DOCUMENTED_SAMPLE = """{
 agentAlertingTime=2022/02/22,10:04:29:004, 
 agentReleaseTime=2022/02/22,10:04:29:004, 
 agentTalkDuration=2022/02/22,10:04:29:004, 
 agentTalkingTime=2022/02/22,10:04:29:004, 
 alertingTime=2022/02/22,10:04:29:004, 
 callData=null, 
 callSerialNo=1197765398201387012, 
 called=88880067, 
 caller=960003, 
 callerPresent=960003, 
 createCallTime=2022/02/22,10:04:28:823, 
 locationId=0, 
 nonce=-1482421808053124529, 
 recordfile=Y:/2/mobileAgent/20220222/1645524268-824.wav, 
 releaseReason=0, 
 releaseTime=2022/02/22,10:04:36:318, 
 serviceNo=null, 
 signature=+lk3***************************tO50=, 
 talkDuration=0, 
 talkingTime=2022/02/22,10:04:30:418, 
 timestamp=1645524163326
 }"""  # noqa: W291 - the document's trailing spaces are part of the sample


class HuaweiAiccRelease:
    name = "huawei.aicc_release"
    methods = frozenset({"POST"})
    default_timezone = "+08:00"
    signing_modes = frozenset({"sha256", "hmac-sha256"})
    volatile_fields = SIGNATURE_FIELDS
    # Huawei's CEC call-record queries exist, but no readable contract was at hand: a
    # Huawei source is not reconciled rather than reconciled by guesswork.
    books = None

    def configure(self, settings: SourceSettings) -> SigningConfig:
        return read_signing(settings, self.signing_modes)

    def answer(self, outcome: Outcome) -> Answer:
        if outcome is Outcome.ACCEPTED:
            code, message = "0", "success"
        else:
            code, message = str(HTTP_STATUS[outcome]), outcome.value.replace("_", " ")
        body = dumps({"retCode": code, "retMsg": message})
        return Answer(HTTP_STATUS[outcome], body, "application/json")

    def authenticate(
        self, envelope: RawEnvelope, headers: Mapping[str, str], source: Source, now: float
    ) -> int | None:
        signing = signing_of(source)
        if signing.signing == "none":
            return None
        secret, skew = signing.secret or "", signing.max_skew_seconds
        verify = partial(
            verify_signature, mode=signing.signing, secret=secret, now=now, max_skew=skew
        )
        try:
            return verify_any(field_readings(envelope, source, DOCUMENTED_FIELDS), verify)
        except Reject as exc:
            raise Unauthenticated(f"signed body cannot be read: {exc.message}") from exc

    def parse(self, envelope: RawEnvelope, source: Source) -> list[Any]:
        # The worker holds no secret: it stores the reading the ingress's signature check
        # verified (envelope.reading), else the deterministic one (the first).
        return [field_reading(envelope, source, DOCUMENTED_FIELDS, envelope.reading)]

    def normalize(self, payload: Mapping[str, Any], source: Source) -> CallRecord:
        f = Fields(payload, source.timezone)
        serial = f.require_text("callSerialNo")
        answered_at = _time(f, "talkingTime")
        talk_seconds = f.integer("talkDuration")
        reason = f.peek_int("releaseReason")
        if is_connected(answered_at, talk_seconds):
            status = Status.ANSWERED
        elif is_blank(f.peek("releaseReason")):
            status = Status.UNKNOWN
        else:  # "xxx: other exceptions occur": any code not in the table is a failure
            status = _REASON_STATUS.get(reason, Status.FAILED)
        record = CallRecord(
            source=source.name,
            tenant=source.tenant,
            provider="huawei",
            event="aicc_release",
            external_id=serial,
            raw=payload,
            status=status,
            call_type=CallType.BIDIRECTIONAL,
            direction=Direction.OUTBOUND,
            caller=f.text("caller"),
            callee=f.text("called"),
            display_number=f.text("callerPresent"),
            hangup_cause=f.text("releaseReason"),
            hangup_by=_HANGUP_BY.get(reason),
            started_at=_time(f, "createCallTime"),
            ringing_at=_time(f, "alertingTime"),
            answered_at=answered_at,
            ended_at=_time(f, "releaseTime"),
            talk_seconds=talk_seconds,
            currency=source.currency or "USD",
            recording_url=f.text("recordfile"),
            user_data=f.text("callData"),
            agent_id=f.text("serviceNo"),
            extra=f.extra(),
        )
        return f.settled(record)

    def simulate(
        self, rng: random.Random, now: datetime, source: Source, external_id: str | None = None
    ) -> SimulatedCallback:
        event = sample_event(rng, now.astimezone(source.timezone))
        event["callSerialNo"] = external_id or event["callSerialNo"]
        signing = signing_of(source)
        if signing.signing != "none":
            event = sign(event, signing.signing, signing.secret or "", now, rng)
        if rng.random() < 0.5:
            body, content_type = render_map(event).encode(), ""
        else:
            body, content_type = dumps(event), "application/json"
        return SimulatedCallback("POST", body, content_type, external_id=event["callSerialNo"])

    def documented(
        self, source: Source, now: datetime, text: str | None = None
    ) -> SimulatedCallback:
        """`text` (JSON, a form, or the document's `{k=v, ...}` rendering, which comes with
        no Content-Type) as written; for a signed source, its fields signed anew as of `now`
        and written back in the same form."""
        body = DOCUMENTED_SAMPLE if text is None else text
        form = _form_of(body)
        signing = signing_of(source)
        if signing.signing == "none":
            return SimulatedCallback("POST", body.encode(), form.content_type)
        fields = {k: v for k, v in form.read(body).items() if k not in SIGNATURE_FIELDS}
        signed = sign(fields, signing.signing, signing.secret or "", now, random.Random())
        return SimulatedCallback("POST", form.write(signed).encode(), form.content_type)


@dataclass(frozen=True)
class _BodyForm:
    content_type: str
    read: Callable[[str], dict[str, Any]]
    write: Callable[[Mapping[str, Any]], str]


def _form_of(body: str) -> _BodyForm:
    """How a body is written: JSON, the `{k=v, ...}` rendering, or a form."""
    try:
        json_document = json.loads(body)
    except ValueError:
        json_document = None
    if isinstance(json_document, dict):
        return _BodyForm("application/json", json.loads, lambda f: dumps(f).decode())
    if body.lstrip().startswith("{"):
        return _BodyForm("", parse_map_rendering, render_map)
    return _BodyForm(
        "application/x-www-form-urlencoded",
        lambda text: dict(parse_qsl(text, keep_blank_values=True)),
        lambda f: urlencode({k: _render(v) for k, v in f.items()}),
    )


def _time(f: Fields, key: str) -> datetime | None:
    value = f.peek(key)
    if to_int(value) is not None and len(str(value).strip()) == 13:  # a millisecond epoch
        return f.epoch_millis(key)
    return f.local_time(key, *TIME_FORMATS)


def parse_map_rendering(text: str) -> dict[str, Any]:
    """`{k=v, k2=v2}` as Java's Map.toString() writes it, read deterministically with the
    document's field names as anchors; `null` is None."""
    return map_rendering.read(text, DOCUMENTED_FIELDS)


render_map = map_rendering.render
_render = map_rendering.render_value


def signing_strings(
    params: Mapping[str, Any], timestamp: str, nonce: str, secret: str
) -> list[str]:
    """Both readings of the documented rendering: with and without the TreeMap braces."""
    pairs = ",".join(
        f"{key}={_render(params[key])}" for key in sorted(params) if key not in SIGNATURE_FIELDS
    ).replace(" ", "")
    return [f"{secret}_{timestamp}_{nonce}_{rendering}" for rendering in ("{" + pairs + "}", pairs)]


def refuse_ambiguous(params: Mapping[str, Any]) -> None:
    """The signed string joins `name=value` with commas, unescaped and with spaces removed,
    so a value holding `,name=` signs exactly like a body in which `name` is a field of its
    own: `talkDuration="6,talkingTime=..."` without `talkingTime` signs like the genuine
    event. A signature that cannot tell two bodies apart proves nothing about the one that
    differs: such a body is refused when the name is one the body could have carried (the
    document's or its own), or any name that sorts between the field holding it and the
    next field (where a folded field of any name would have been). So is a field name the
    rendering would change or split (a space, which is removed, or `=`, `,`, braces); no
    genuine event has one."""
    names = DOCUMENTED_FIELDS | params.keys()
    signed = sorted(key for key in params if key not in SIGNATURE_FIELDS)
    following = dict(zip(signed, [*signed[1:], None], strict=True))
    for key, value in params.items():
        if not key or any(char in key for char in _NOT_IN_A_SIGNED_NAME):
            raise Unauthenticated(f"signed body has a field name {key[:40]!r} it cannot sign")
        rendered = _render(value).replace(" ", "")
        if "," not in rendered or "=" not in rendered:
            continue
        after = following.get(key)
        for name in _NAMES_IN_VALUE.findall(rendered):
            if name in names or (key < name and (after is None or name < after)):
                raise Unauthenticated(
                    f"signed body is ambiguous: {key[:40]!r} holds ',{name[:40]}='"
                )


# `,name=` inside a value, each one (they may follow one another: `a,b=1,c=2`).
_NAMES_IN_VALUE = re.compile(r",(?=([^,=]+)=)")
_NOT_IN_A_SIGNED_NAME = frozenset(" =,{}")


def verify_signature(
    params: Mapping[str, Any], mode: str, secret: str, now: float, max_skew: int
) -> None:
    timestamp, nonce = _render(params.get("timestamp")), _render(params.get("nonce"))
    # A '+' in an unescaped form body arrives as a space; Base64 has no spaces.
    signature = _render(params.get("signature")).replace(" ", "+").strip()
    if "null" in (timestamp, nonce, signature) or not signature:
        raise Unauthenticated("timestamp, nonce or signature is missing")
    stamp = to_int(timestamp)
    if stamp is None:
        raise Unauthenticated("timestamp is not a number")
    seconds = stamp / 1000 if stamp > 100_000_000_000 else stamp  # milliseconds or seconds
    if abs(now - seconds) > max_skew:
        raise Unauthenticated("timestamp is outside the allowed clock skew")
    refuse_ambiguous(params)
    matched = False
    for text in signing_strings(params, timestamp, nonce, secret):
        matched |= hmac.compare_digest(
            base64_digest(text, mode, secret).encode(), signature.encode()
        )
    if not matched:
        raise Unauthenticated("signature does not match")


def sign(
    fields: Mapping[str, Any], mode: str, secret: str, now: datetime, rng: random.Random
) -> dict[str, Any]:
    """Sign as the platform does (braced rendering, millisecond timestamp)."""
    timestamp = str(int(now.timestamp() * 1000))
    nonce = str(rng.randrange(-(2**63), 2**63))
    text = signing_strings(fields, timestamp, nonce, secret)[0]
    return {
        **fields,
        "timestamp": timestamp,
        "nonce": nonce,
        "signature": base64_digest(text, mode, secret),
    }


def sample_event(rng: random.Random, local_now: datetime) -> dict[str, Any]:
    def stamp(moment: datetime) -> str:
        return f"{moment:%Y/%m/%d,%H:%M:%S}:{moment.microsecond // 1000:03d}"

    release = local_now.replace(tzinfo=None) - timedelta(seconds=rng.randint(0, 30))
    connected = rng.random() < 0.65
    talk = rng.randint(1, 400) if connected else 0
    talking = release - timedelta(seconds=talk) if connected else None
    alerting = (talking or release) - timedelta(seconds=rng.randint(2, 20))
    created = alerting - timedelta(milliseconds=rng.randint(100, 2_000))
    return {
        "callSerialNo": str(rng.randrange(10**18, 10**19)),
        "serviceNo": rng.choice([None, str(rng.randrange(100, 999))]),
        "called": f"8888{rng.randrange(10**4):04d}",
        "caller": f"96{rng.randrange(10**4):04d}",
        "callerPresent": f"96{rng.randrange(10**4):04d}",
        "callData": None,
        "createCallTime": stamp(created),
        "alertingTime": stamp(alerting),
        "talkingTime": stamp(talking) if talking else None,
        "releaseTime": stamp(release),
        "talkDuration": str(talk),
        "recordfile": f"Y:/2/mobileAgent/{release:%Y%m%d}/{int(release.timestamp())}.wav",
        "locationId": "0",
        "releaseReason": rng.choice(["0", "1"]) if connected else rng.choice(["3", "5"]),
        "agentAlertingTime": stamp(alerting),
        "agentTalkingTime": stamp(talking or alerting),
        "agentReleaseTime": stamp(release),
        "agentTalkDuration": str(talk),
    }


PROVIDER = HuaweiAiccRelease()
