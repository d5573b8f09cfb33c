"""The worst inputs of docs/hostile-input.md, each near the 1 MiB body limit,
sent to a voice-report source (the provider that takes JSON arrays): the worker's time
per input byte against a typical callback's. Each case has a database and queues of its
own and a worker already consuming; the time runs from the first publish until every
request is stored (as records or rejections) and the outbox is empty."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import orjson

from schemas.providers import SimulatedCallback, default_registry
from tests.support.sources import load_test_sources, provider_source
from tools.bench import mix
from tools.bench.options import Options
from tools.bench.pipeline import fill, topology
from tools.bench.processes import alive, bench_settings, workers
from tools.bench.services import Services

PROVIDER = "nxcloud.voice_report"
LIMIT = 1024 * 1024


def _report() -> dict[str, object]:
    source = load_test_sources()[provider_source(PROVIDER)]
    callback = default_registry()[PROVIDER].simulate(random.Random(8), datetime.now(UTC), source)
    document: dict[str, object] = orjson.loads(callback.body)
    return document


def _versions(size: int) -> bytes:
    """One voice report's id, many times in one array, each version other content."""
    report = _report()
    one = len(orjson.dumps(report)) + 1
    return orjson.dumps([{**report, "callDuration": n} for n in range(max(2, size // one))])


def _deep(size: int) -> bytes:
    depth = size // 2
    return orjson.dumps(_report())[:-1] + b',"userData":' + b"[" * depth + b"]" * depth + b"}"


def _array(size: int) -> bytes:
    return orjson.dumps({**_report(), "userData": list(range(size // 7))})


def _string(size: int) -> bytes:
    return orjson.dumps({**_report(), "userData": "x" * size})


def _numbers(size: int) -> bytes:
    return (
        orjson.dumps(_report())[:-1]
        + b',"userData":['
        + b",".join([b"1e999"] * (size // 6))
        + b"]}"
    )


CASES: dict[str, tuple[str, Callable[[int], bytes]]] = {
    "hostile.versions": ("many versions of one id in one voice-report array", _versions),
    "hostile.deep": ("JSON nested as deep as the body allows", _deep),
    "hostile.array": ("one field holding a huge array of numbers", _array),
    "hostile.string": ("one field holding a huge string", _string),
    "hostile.numbers": ("a huge array of 1e999 numbers (amplification)", _numbers),
}


@dataclass(frozen=True)
class Cost:
    requests: int
    body_bytes: int
    seconds: float
    finished: bool

    @property
    def microseconds_per_byte(self) -> float:
        return self.seconds / self.body_bytes * 1e6


async def typical(services: Services, options: Options, workdir: Path) -> Cost:
    backlog = list(mix.callbacks(options.hostile_typical, seed=5))
    return await _cost(services, backlog, options, workdir, "typical", per_message=32)


async def hostile(services: Services, options: Options, workdir: Path, key: str) -> Cost:
    size = min(LIMIT - 64, int(LIMIT * options.hostile_scale))
    body = CASES[key][1](size)
    source = load_test_sources()[provider_source(PROVIDER)]
    request = mix.Callback(source, SimulatedCallback("POST", body, "application/json"))
    copies = 3 if options.hostile_scale >= 0.5 else 1
    return await _cost(
        services, [request] * copies, options, workdir, key.split(".")[1], per_message=1
    )


_DONE = """
SELECT (SELECT count(DISTINCT ingest_id) FROM
          (SELECT ingest_id FROM deliveries UNION ALL SELECT ingest_id FROM rejected_callbacks) i),
       (SELECT count(*) FROM outbox)
"""


async def _cost(
    services: Services,
    backlog: list[mix.Callback],
    options: Options,
    workdir: Path,
    label: str,
    *,
    per_message: int,
) -> Cost:
    timeout = 120 if options.hostile_scale >= 0.5 else 30
    database_url = await services.fresh_database(f"hostile_{label}")
    settings = bench_settings(services.amqp_url, database_url, workdir)
    db = await asyncpg.connect(database_url)
    try:
        async with topology(settings) as broker, workers(settings, workdir) as running:
            await broker.until_consumed_by(1)
            started = time.monotonic()
            await fill(broker, backlog, per_message=per_message)
            while time.monotonic() - started < timeout:
                alive(running)
                done = await db.fetchrow(_DONE)
                if done is not None and done[0] >= len(backlog) and done[1] == 0:
                    break
                await asyncio.sleep(0.05)
            else:
                return Cost(len(backlog), sum(len(c.request.body) for c in backlog), timeout, False)
            elapsed = time.monotonic() - started
    finally:
        await db.close()
        await services.drop(database_url)
    return Cost(len(backlog), sum(len(c.request.body) for c in backlog), elapsed, True)
