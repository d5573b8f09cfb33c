"""A provider cdrflow does not ship, written as a provider module is: what the tests that
add a provider register, with the one line `registered` adds to `schemas.providers`.

A made-up push: `{"pingId": ..., "seconds": ...}`, signed in a header (the ingress hands
every header to `authenticate`), with a setting of its own in the sources file
(`ping_secret`), answered in its own words."""

from __future__ import annotations

import hashlib
import hmac
import random
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

import schemas.providers
from cdrflow.operations import schema_files
from schemas.envelope import RawEnvelope
from schemas.jsoncodec import dumps
from schemas.providers import (
    Answer,
    Outcome,
    Reason,
    Registry,
    Reject,
    SimulatedCallback,
    Unauthenticated,
    default_registry,
)
from schemas.providers.answers import text_answers
from schemas.providers.bodies import json_body
from schemas.providers.fields import Fields
from schemas.record import CallRecord, Status
from schemas.registry_documents import DOCUMENTS
from schemas.source_settings import SourceSettings
from schemas.sources import Source

NAME = "throwaway.ping"
SIGNATURE_HEADER = "X-Ping-Signature"


def registered(monkeypatch: pytest.MonkeyPatch) -> Registry:
    """The default registry with this provider in it: the one registry line a new provider
    adds to `schemas.providers.PROVIDERS`, added for the test and taken away after it."""
    monkeypatch.setattr(schemas.providers, "PROVIDERS", (*schemas.providers.PROVIDERS, PROVIDER))
    return default_registry()


def schemas_written(directory: Path, registry: Registry) -> list[Path]:
    """Copies the committed schema files into `directory` and runs what `make schemas`
    runs on them for `registry`; returns the files it changed."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in DOCUMENTS:
        shutil.copyfile(schema_files.SCHEMAS / name, directory / name)
    return schema_files.write(directory, registry)


@dataclass(frozen=True)
class PingConfig:
    secret: str | None = field(repr=False)
    signing: str = "hmac-sha256-header"

    def secrets(self) -> tuple[str, ...]:
        return (self.secret,) if self.secret else ()


def signature(body: bytes, secret: str) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class Ping:
    name = NAME
    methods = frozenset({"POST"})
    default_timezone = "UTC"
    signing_modes = frozenset({"hmac-sha256-header"})
    volatile_fields: frozenset[str] = frozenset()
    books = None
    _answer = staticmethod(text_answers("pong", "nope"))

    def configure(self, settings: SourceSettings) -> PingConfig:
        return PingConfig(settings.secret("ping_secret", required=True))

    def answer(self, outcome: Outcome) -> Answer:
        return self._answer(outcome)

    def authenticate(
        self, envelope: RawEnvelope, headers: Mapping[str, str], source: Source, now: float
    ) -> None:
        expected = signature(envelope.body, _secret(source))
        if not hmac.compare_digest(headers.get(SIGNATURE_HEADER, ""), expected):
            raise Unauthenticated("signature header does not match")

    def parse(self, envelope: RawEnvelope, source: Source) -> list[dict[str, Any]]:
        document = json_body(envelope, source)
        if not isinstance(document, dict):
            raise Reject(Reason.NOT_AN_OBJECT, "body is not an object")
        return [document]

    def normalize(self, payload: Mapping[str, Any], source: Source) -> CallRecord:
        f = Fields(payload, source.timezone)
        ping_id = f.require_text("pingId")
        seconds = f.integer("seconds")
        return CallRecord(
            source=source.name,
            tenant=source.tenant,
            provider="throwaway",
            event="ping",
            external_id=ping_id,
            raw=payload,
            status=Status.ANSWERED if seconds else Status.NO_ANSWER,
            talk_seconds=seconds,
            extra=f.extra(),
        )

    def simulate(
        self, rng: random.Random, now: datetime, source: Source, external_id: str | None = None
    ) -> SimulatedCallback:
        ping_id = external_id or f"ping-{rng.getrandbits(32):08x}"
        body = dumps({"pingId": ping_id, "seconds": rng.randint(0, 90), "colour": "blue"})
        return self._signed(body, source, ping_id)

    def documented(
        self, source: Source, now: datetime, text: str | None = None
    ) -> SimulatedCallback:
        return self._signed((text or '{"pingId": "ping-doc", "seconds": 12}').encode(), source)

    def _signed(self, body: bytes, source: Source, external_id: str = "") -> SimulatedCallback:
        headers = {SIGNATURE_HEADER: signature(body, _secret(source))}
        return SimulatedCallback(
            "POST", body, "application/json", external_id=external_id, headers=headers
        )


def _secret(source: Source) -> str:
    assert isinstance(source.config, PingConfig)
    return source.config.secret or ""


PROVIDER = Ping()
