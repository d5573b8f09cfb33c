"""The load every measurement shares: callbacks of the four providers from each provider's
own `simulate()` (as `cdrflow simulate` makes them), with varied ids, about 10% re-pushes
(the same request again) and about 1% malformed bodies; rendered as raw HTTP requests for
wrk, or as the envelopes the ingress would have put on `cdr.raw` (for backlogs)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cdrflow.operations.simulator import corrupt
from schemas.envelope import RawEnvelope, stored_headers, uuid7
from schemas.providers import SimulatedCallback, default_registry
from schemas.sources import Source
from tests.support.sources import load_test_sources, provider_source

REPUSH = 0.10
MALFORMED = 0.01


@dataclass(frozen=True)
class Callback:
    source: Source
    request: SimulatedCallback

    @property
    def headers(self) -> dict[str, str]:
        headers = dict(self.request.headers)
        if self.request.content_type:
            headers["Content-Type"] = self.request.content_type
        return headers

    def http(self) -> bytes:
        """The raw HTTP/1.1 request, token in the path as providers send it."""
        target = f"/v1/callbacks/{self.source.name}/{self.source.token}"
        if self.request.query:
            target += "?" + self.request.query
        lines = [f"{self.request.method} {target} HTTP/1.1", "Host: bench"]
        lines += [f"{name}: {value}" for name, value in self.headers.items()]
        lines.append(f"Content-Length: {len(self.request.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + self.request.body

    def envelope(self, received_at: datetime) -> RawEnvelope:
        """What the ingress puts on `cdr.raw` for this request."""
        return RawEnvelope(
            ingest_id=uuid7(),
            source=self.source.name,
            tenant=self.source.tenant,
            provider=self.source.provider,
            received_at=received_at,
            method=self.request.method,
            path=f"/v1/callbacks/{self.source.name}",
            query=self.request.query,
            content_type=self.request.content_type,
            body=self.request.body,
            client="127.0.0.1",
            headers=stored_headers(self.headers),
        )


def callbacks(
    count: int, seed: int = 9, *, providers: tuple[str, ...] = (), malformed: float = MALFORMED
) -> Iterator[Callback]:
    """`count` requests of the mix (of `providers` alone, when named); a re-push repeats an
    earlier request byte for byte."""
    rng = random.Random(seed)
    registry = default_registry()
    sources = load_test_sources()
    targets = [sources[provider_source(name)] for name in providers or registry]
    now = datetime.now(UTC)
    sent: list[Callback] = []
    for _ in range(count):
        if sent and rng.random() < REPUSH:
            yield rng.choice(sent[-2000:])  # providers re-push recent calls
            continue
        source = rng.choice(targets)
        request = registry[source.provider].simulate(rng, now, source)
        if rng.random() < malformed:
            request = corrupt(request, rng)
        callback = Callback(source, request)
        sent.append(callback)
        yield callback


def write_wrk_requests(path: Path, count: int) -> int:
    """The file `callbacks.lua` reads: each request as `<length>\\n<raw HTTP bytes>`;
    returns the body bytes of a typical request."""
    body_bytes = 0
    with path.open("wb") as out:
        for callback in callbacks(count):
            raw = callback.http()
            out.write(b"%d\n" % len(raw))
            out.write(raw)
            body_bytes += len(callback.request.body)
    return body_bytes // max(count, 1)
