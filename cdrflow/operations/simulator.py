"""`cdrflow simulate`: push realistic callbacks of every configured source at a chosen rate,
with re-pushes (the same request again, as NXCloud's call-center push does) and bad inputs
(truncated or garbage bodies), all within `--count` requests at `--rate` a second. Each
provider module builds its own callbacks."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import aiohttp

from cdrflow.logs import get_logger
from cdrflow.progress import Progress
from schemas.providers import Registry, SimulatedCallback
from schemas.sources import Source, Sources

log = get_logger("cdrflow.simulate")


@dataclass
class SimulationReport:
    sent: int = 0
    repushes: int = 0
    bad: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    errors: int = 0

    def answers(self) -> dict[str, int]:
        """Answers by HTTP status, and requests that got none."""
        by_status = {str(status): n for status, n in sorted(self.statuses.items())}
        return {"sent": self.sent, **by_status, "errors": self.errors}

    def as_dict(self) -> dict[str, object]:
        return {
            "sent": self.sent,
            "repushes": self.repushes,
            "bad": self.bad,
            "errors": self.errors,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
        }


def corrupt(callback: SimulatedCallback, rng: random.Random) -> SimulatedCallback:
    """A malformed version of a callback: cut short, or not text at all."""
    if callback.body and rng.random() < 0.5:
        body = callback.body[: max(1, len(callback.body) // 2)]
    else:
        body = b"\xff\xfe<garbage>" + bytes(rng.randrange(256) for _ in range(16))
    return SimulatedCallback(
        callback.method if callback.body else "POST", body, callback.content_type
    )


@dataclass(frozen=True)
class Push:
    """One request of the run: a callback to one source, sent once more when `repush`."""

    source: Source
    callback: SimulatedCallback
    repush: bool
    bad: bool


def plan(
    sources: list[Source],
    registry: Registry,
    rng: random.Random,
    *,
    count: int,
    repush: float,
    bad: float,
) -> Iterator[Push]:
    """Exactly `count` requests: new callbacks, a share of them malformed, and a share sent
    again 1-3 times right after (re-pushes are part of the count, not added to it)."""
    sent = 0
    while sent < count:
        source = rng.choice(sources)
        callback = registry[source.provider].simulate(rng, datetime.now(UTC), source)
        malformed = rng.random() < bad
        if malformed:
            callback = corrupt(callback, rng)
        copies = 1 + (rng.randint(1, 3) if rng.random() < repush else 0)
        for copy in range(min(copies, count - sent)):
            yield Push(source, callback, repush=copy > 0, bad=malformed)
            sent += 1


async def simulate(
    url: str,
    sources: Sources,
    registry: Registry,
    *,
    rate: float,
    count: int,
    repush: float = 0.2,
    bad: float = 0.05,
    seed: int | None = None,
    concurrency: int = 64,
) -> SimulationReport:
    """Send `count` requests at `rate` requests a second, re-pushes and bad bodies included."""
    rng = random.Random(seed)
    report = SimulationReport()
    targets = [s for s in sources.values() if s.token]
    if not targets:
        raise ValueError("no source with a token to push to")
    limit = asyncio.Semaphore(concurrency)
    pending: set[asyncio.Task[None]] = set()
    progress = Progress(count, unit="answer", event="simulate_progress")
    async with aiohttp.ClientSession(base_url=url) as session:

        async def send(source: Source, callback: SimulatedCallback) -> None:
            async with limit:
                path = f"/v1/callbacks/{source.name}/{source.token}"
                if callback.query:
                    path += "?" + callback.query
                headers = dict(callback.headers)
                if callback.content_type:
                    headers["Content-Type"] = callback.content_type
                try:
                    async with session.request(
                        callback.method, path, data=callback.body or None, headers=headers
                    ) as response:
                        await response.read()
                        report.statuses[response.status] += 1
                except aiohttp.ClientError:
                    report.errors += 1
                progress.update(1, **report.answers())

        started = time.monotonic()
        pushes = plan(targets, registry, rng, count=count, repush=repush, bad=bad)
        for index, push in enumerate(pushes):
            # Pace by schedule, not by sleeping a fixed gap: keeps the rate under load.
            delay = started + index / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            report.repushes += push.repush
            report.bad += push.bad and not push.repush
            task = asyncio.create_task(send(push.source, push.callback))
            pending.add(task)
            task.add_done_callback(pending.discard)
            report.sent += 1
        try:
            if pending:
                await asyncio.gather(*pending)
        finally:
            progress.close()
    return report
