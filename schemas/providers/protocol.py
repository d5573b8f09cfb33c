"""What every provider module provides: the `Provider` protocol, and the defaults of a
provider that signs nothing.

A provider module holds everything about one kind of push: which HTTP methods it uses,
how it is answered, how it is authenticated, how its body is read, how a payload becomes
a `CallRecord`, and how a realistic callback of its kind looks. Nothing here does I/O."""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from schemas.envelope import RawEnvelope
from schemas.providers.answers import Answer, Outcome, text_answers
from schemas.record import CallRecord
from schemas.sources import Source


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

    def authenticate(
        self, envelope: RawEnvelope, headers: Mapping[str, str], source: Source, now: float
    ) -> None:
        """Raise `Unauthenticated` unless the request is signed as the source requires.
        `headers` are all the request's headers, names case-insensitive: a signature in a
        header is at hand, whatever the envelope keeps (`schemas.envelope.stored_headers`)."""

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

    def authenticate(
        self, envelope: RawEnvelope, headers: Mapping[str, str], source: Source, now: float
    ) -> None:
        return None
