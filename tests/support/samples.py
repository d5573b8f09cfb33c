"""Callbacks for integration tests, with a variant switch that changes the content (for
revisions):

- `simulated(provider)`: a callback of any registered provider, built by the provider's
  own `simulate()` and sent to its plain test source; what the per-provider tests use;
- `sample(source)`: fixed callbacks of the four sources `nx-voice`, `nx-cc`, `nx-dr`,
  `hw`, for the tests that assert their exact values (labels, durations, zones)."""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jsonschema

from schemas.envelope import RawEnvelope, uuid7
from schemas.jsoncodec import dumps
from schemas.providers import Registry, default_registry
from schemas.providers.huawei_aicc_release import render_map
from schemas.sources import Sources
from tests.support.sources import load_test_sources, provider_source

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas"


@dataclass(frozen=True)
class Sample:
    source: str
    external_id: str
    method: str
    body: bytes
    content_type: str = ""
    query: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)  # beside Content-Type


def simulated(
    provider: str,
    external_id: str | None = None,
    variant: int = 0,
    *,
    source: str | None = None,
    sources: Sources | None = None,
    registry: Registry | None = None,
) -> Sample:
    """A callback from the provider's `simulate()`, to its plain test source unless
    `source` names another. The same id and variant give the same callback; another
    variant is another report of the same call, with other content."""
    source_name = source or provider_source(provider)
    target = (sources or load_test_sources())[source_name]
    ext = external_id or uuid.uuid4().hex[:16]
    rng = random.Random(f"{ext}:{variant}")
    callback = (registry or default_registry())[provider].simulate(
        rng, datetime.now(UTC), target, ext
    )
    return Sample(
        source_name,
        callback.external_id,
        callback.method,
        callback.body,
        callback.content_type,
        callback.query,
        callback.headers,
    )


def sample(source: str, external_id: str | None = None, variant: int = 0) -> Sample:
    ext = external_id or uuid.uuid4().hex[:16]
    if source == "nx-voice":
        report: dict[str, Any] = {
            "voiceId": ext,
            "type": 1,
            "callee": "63123456788",
            "displayNum": "6311012125",
            "submitTime": 1670939112097,
            "callTime": 1670939568000,
            "ringingTime": 1670939570000,
            "answerTime": 1670939582000,
            "hangupTime": 1670939595000,
            "chargedDuration": 20,
            "callDuration": 13 + variant,
            "billPeriod": "20+20",
            "code": "India(Karnataka)",
            "rate": "0.023625",
            "baseCost": "0.0",
            "cost": "0.007875",
            "terminationCode": "0",
            "terminationReason": "Called hang up",
            "sipCode": "200",
            "feedbackValue": "-1",
        }
        return Sample(source, ext, "POST", dumps(report), "application/json;charset=UTF-8")
    if source == "nx-cc":
        cc: dict[str, Any] = {
            "callId": "",
            "callSessionId": ext,
            "called": "8613800000000",
            "caller": "8675500000000",
            "ccode": "86",
            "ccodeName": "China",
            "agentName": "Alice",
            "agentGroupName": "Sales",
            "callDuration": 15,
            "callType": 3,
            "hangupCode": "200",
            "hangupReason": 1,
            "hangingDirection": 0,
            "labels": ["Intended customers"] + (["High level"] if variant else []),
            "baseCost": "0.0",
            "cost": "0.0135",
            "callStartTime": "2023-11-17 13:42:30",
            "answerTime": "2023-11-17 13:42:33",
            "callEndTime": "2023-11-17 13:42:48",
        }
        return Sample(source, ext, "POST", dumps(cc), "application/json;charset=UTF-8")
    if source == "nx-dr":
        fields = {
            "phone": "8615088888888",
            "countryCode": "86",
            "duration": str(10 + variant),
            "voice_type": "0",
            "messageid": ext,
            "basic_price": "0.005",
            "second": "10",
            "cycle": "60",
            "size": "1",
            "customer_price": "0.036",
            "start_time": "2020-12-01 00:00:00",
            "end_time": "2020-12-01 00:00:10",
            "result": "成功接通",
            "hangup_cause": "NORMAL_CLEARING",
            "hangup_disposition": "send_bye",
            "ivr_result": "",
        }
        return Sample(
            source, ext, "POST", urlencode(fields).encode(), "application/x-www-form-urlencoded"
        )
    if source == "hw":
        event = {
            "callSerialNo": ext,
            "serviceNo": None,
            "called": "88880067",
            "caller": "960003",
            "callerPresent": "960003",
            "callData": None,
            "createCallTime": "2022/02/22,10:04:28:823",
            "alertingTime": "2022/02/22,10:04:29:004",
            "talkingTime": "2022/02/22,10:04:30:418",
            "releaseTime": "2022/02/22,10:04:36:318",
            "talkDuration": str(6 + variant),
            "recordfile": "Y:/2/mobileAgent/20220222/1645524268-824.wav",
            "locationId": "0",
            "releaseReason": "0",
            "agentTalkDuration": "2022/02/22,10:04:29:004",
        }
        return Sample(source, ext, "POST", render_map(event).encode())
    raise ValueError(source)


def envelope(
    sample: Sample, received_at: datetime | None = None, ingest_id: uuid.UUID | None = None
) -> RawEnvelope:
    source = load_test_sources()[sample.source]
    return RawEnvelope(
        ingest_id=ingest_id or uuid7(),
        source=sample.source,
        tenant=source.tenant,
        provider=source.provider,
        received_at=received_at or datetime.now(UTC),
        method=sample.method,
        path=f"/v1/callbacks/{sample.source}",
        query=sample.query,
        content_type=sample.content_type,
        body=sample.body,
        client="127.0.0.1",
    )


@cache
def record_validator() -> jsonschema.Draft202012Validator:
    """The published schema, closed: consumers must accept fields added within a
    schema_version, but what cdrflow publishes has only the fields the schema names."""
    return strict_record_validator(SCHEMA_DIR)


def strict_record_validator(schema_dir: Path) -> jsonschema.Draft202012Validator:
    """The record schema in `schema_dir`, closed (as `record_validator`)."""
    schema = json.loads((schema_dir / "call_record.schema.json").read_text())
    strict = {**schema, "additionalProperties": False}
    return jsonschema.Draft202012Validator(strict, format_checker=jsonschema.FormatChecker())


@cache
def raw_batch_validator() -> jsonschema.Draft202012Validator:
    schema = json.loads((SCHEMA_DIR / "raw_batch.schema.json").read_text())
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
