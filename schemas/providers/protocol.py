"""What every provider module provides: the `Provider` protocol, and the defaults of a
provider that signs nothing.

A provider module holds everything about one kind of push: which HTTP methods it uses,
how it is answered, how it is authenticated, how its body is read, how a payload becomes
a `CallRecord`, and how a realistic callback of its kind looks. Nothing here does I/O."""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from schemas.envelope import RawEnvelope
from schemas.jsoncodec import dumps
from schemas.providers.answers import Answer, Outcome, text_answers
from schemas.providers.books import Books
from schemas.providers.signing import SigningConfig, read_signing
from schemas.record import CallRecord
from schemas.source_settings import ProviderConfig, SourceSettings
from schemas.sources import Source


@dataclass(frozen=True, slots=True)
class SimulatedCallback:
    """One request `cdrflow simulate` sends, built by the provider module itself."""

    method: str
    body: bytes = b""
    content_type: str = ""
    query: str = ""
    external_id: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)  # beside Content-Type


def json_document(text: str) -> SimulatedCallback:
    """A JSON body sent as written, as NXCloud pushes its reports."""
    return SimulatedCallback("POST", text.encode(), "application/json;charset=UTF-8")


def json_callback(document: Mapping[str, Any], external_id: str) -> SimulatedCallback:
    """A JSON POST, as NXCloud pushes its reports."""
    return SimulatedCallback(
        "POST", dumps(document), "application/json;charset=UTF-8", external_id=external_id
    )


class Provider(Protocol):
    @property
    def name(self) -> str:
        """Registry key, as written in the sources file: "vendor.event"."""

    @property
    def methods(self) -> frozenset[str]: ...

    @property
    def default_timezone(self) -> str: ...

    @property
    def volatile_fields(self) -> frozenset[str]:
        """Payload fields that change on every push (nonces, signatures): not content."""

    @property
    def signing_modes(self) -> frozenset[str]:
        """What a source's `signing` may be besides "none"; empty: it signs nothing."""

    @property
    def books(self) -> Books | None:
        """The provider's own books, to reconcile a source with (`schemas.providers.books`);
        None: it has no documented books, and its sources are not reconciled."""

    def configure(self, settings: SourceSettings) -> ProviderConfig:
        """Read and check the keys of a source's entry that are this provider's (its
        signing, say); raise `settings.fail(key, problem)`. Keys it leaves are refused."""

    def answer(self, outcome: Outcome) -> Answer: ...

    def authenticate(
        self, envelope: RawEnvelope, headers: Mapping[str, str], source: Source, now: float
    ) -> int | None:
        """Raise `Unauthenticated` unless the request is signed as the source requires.
        `headers` are all the request's headers, names case-insensitive: a signature in a
        header is at hand, whatever the envelope keeps (`schemas.envelope.stored_headers`).
        For a body with several readings, return the index of the one the signature
        verified: the ingress keeps it in the envelope (`reading`) for `parse`."""

    def parse(self, envelope: RawEnvelope, source: Source) -> list[dict[str, Any]]:
        """The payloads in one request (several for batch variants); raise `Reject`. The
        source says how its bodies are read (`charset`: `schemas.providers.bodies`)."""

    def normalize(self, payload: Mapping[str, Any], source: Source) -> CallRecord:
        """One payload as a call record; raise `Reject` when it cannot be one. A module
        that reads with `Fields` returns `fields.settled(record)`: local times daylight
        saving repeats or skips are chosen and flagged there."""

    def simulate(
        self, rng: random.Random, now: datetime, source: Source, external_id: str | None = None
    ) -> SimulatedCallback:
        """A realistic callback of this kind, for `cdrflow simulate` and the tests; with
        `external_id`, a report of that call (another report of a call already sent)."""

    def documented(
        self, source: Source, now: datetime, text: str | None = None
    ) -> SimulatedCallback:
        """The request this provider sends for `text` (one report in the provider's own
        form, as its document shows one), or for its document's own example when None;
        signed as of `now` where `source` is signed. For `cdrflow send`."""


class UnsignedTextProvider:
    """Defaults for a provider that signs nothing and is answered in plain text
    (`success`, or `error` for every failure), as all NXCloud pushes are."""

    signing_modes: frozenset[str] = frozenset()
    volatile_fields: frozenset[str] = frozenset()
    books: Books | None = None
    _answer = staticmethod(text_answers())

    def configure(self, settings: SourceSettings) -> SigningConfig:
        return read_signing(settings, self.signing_modes)

    def answer(self, outcome: Outcome) -> Answer:
        return self._answer(outcome)

    def authenticate(
        self, envelope: RawEnvelope, headers: Mapping[str, str], source: Source, now: float
    ) -> None:
        return None
