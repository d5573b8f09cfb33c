"""The whole pipeline under wrk: HTTP to committed and published, a downstream quorum
queue bound to the records exchange.

- end to end: wrk at 256 connections for a while, as fast as the ingress answers, then
  until every callback answered 200 is stored and every record is on the downstream queue;
  callbacks/s over that whole time;
- lag: `stored_at - received_at` (ingress to first commit) of the calls received while
  wrk offers a fixed rate (paced by callbacks.lua), with the worker processes
  docs/operations.md recommends for this host (`Options.lag_workers`); it grows when the median
  lag of the last third of the window is more than twice the first third's plus 50 ms,
  or when wrk achieved less than 95% of the offered rate (the rest waited in wrk)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from tools.bench import cpu
from tools.bench.checkout import Checkout
from tools.bench.options import Options
from tools.bench.pipeline import topology, until_drained
from tools.bench.processes import Served, bench_settings, ingress, workers
from tools.bench.services import Services
from tools.bench.wrk import Load, run_wrk

CONNECTIONS = 256
SUSTAINED = 0.95  # of the offered rate achieved, or the lag row counts as growing


@dataclass(frozen=True)
class EndToEnd:
    callbacks: int
    records: int
    seconds: float
    load: Load
    cpu: cpu.Account  # from the start of the load until everything was drained


@dataclass(frozen=True)
class Offered:
    """The end-to-end load, offered: what wrk saw, and when and from what CPU it began."""

    load: Load
    started: float  # time.monotonic()
    before: cpu.Snapshot
    ours: dict[int, str]  # pid -> class of the processes under test

    def cpu_since(self) -> cpu.Account:
        return cpu.account(self.before, cpu.snapshot(self.ours))


async def offer_load(served: Served, running: list[Served], options: Options) -> Offered:
    """wrk at CONNECTIONS for `end_to_end_seconds`, as fast as `served` answers: the same
    load for cdrflow and for the design limit (tools/bench/design.py)."""
    ours = {served.pid: "ingress", **{one.pid: "workers" for one in running}}
    started, before = time.monotonic(), cpu.snapshot(ours)
    load = await run_wrk(
        served.url,
        options.requests_file,
        connections=CONNECTIONS,
        seconds=options.end_to_end_seconds,
    )
    return Offered(load, started, before, ours)


async def end_to_end(
    services: Services,
    database_url: str,
    options: Options,
    worker_count: int,
    workdir: Path,
    code: Checkout | None = None,
) -> EndToEnd:
    """`code`: the tree whose ingress and workers run (this one when None)."""
    settings = bench_settings(services.amqp_url, database_url, workdir)
    db = await asyncpg.connect(database_url)
    try:
        async with (
            topology(settings) as broker,
            workers(settings, workdir, worker_count, code=code) as running,
            ingress(settings, workdir, code) as served,
        ):
            await broker.until_consumed_by(worker_count)
            offered = await offer_load(served, running, options)
            load = offered.load
            drained = await until_drained(broker, db, at_least=load.requests - load.failed)
            spent = offered.cpu_since()
    finally:
        await db.close()
    seconds = drained.finished - offered.started
    return EndToEnd(drained.callbacks, drained.records, seconds, load, spent)


@dataclass(frozen=True)
class Lag:
    offered: float
    achieved: float
    p50_ms: float
    p99_ms: float
    grows: bool
    falls_behind: bool  # wrk achieved less than SUSTAINED of the offered rate


_LAG = """
WITH lag AS (
    SELECT received_at, extract(epoch FROM stored_at - received_at) * 1000 AS ms,
           ntile(3) OVER (ORDER BY received_at) AS third
    FROM call_records)
SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY ms) AS p50,
       percentile_cont(0.99) WITHIN GROUP (ORDER BY ms) AS p99,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY ms) FILTER (WHERE third = 1) AS first,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY ms) FILTER (WHERE third = 3) AS last
FROM lag
"""


async def lag(
    services: Services, database_url: str, options: Options, rate: int, workdir: Path
) -> Lag:
    count = options.lag_workers
    settings = bench_settings(services.amqp_url, database_url, workdir)
    db = await asyncpg.connect(database_url)
    try:
        async with (
            topology(settings) as broker,
            workers(settings, workdir, count),
            ingress(settings, workdir) as served,
        ):
            await broker.until_consumed_by(count)
            load = await run_wrk(
                served.url,
                options.requests_file,
                connections=CONNECTIONS,
                seconds=options.lag_seconds,
                rate=rate,
            )
            await until_drained(broker, db, at_least=load.requests - load.failed)
            row = await db.fetchrow(_LAG)
            assert row is not None  # an aggregate always has its row
    finally:
        await db.close()
    # Short of the offered rate, the requests not yet sent queue up in wrk, before
    # received_at: the lag measured in the database no longer shows it, so that counts too.
    falls_behind = load.rate < SUSTAINED * rate
    grows = falls_behind or row["last"] > 2 * row["first"] + 50
    return Lag(rate, load.rate, row["p50"], row["p99"], grows, falls_behind)
