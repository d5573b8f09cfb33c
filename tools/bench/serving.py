"""Ingress against the HTTP limit: callbacks/s and p50/p99 latency of `cdrflow ingress`
(every 200 confirmed by the broker) and of the bare handler, the same wrk load, at 64 and
256 connections, kept alive and with a new connection per request. The two alternate,
`Options.http_rounds` times per setting, each going first in turn, with the raw queue
emptied between rounds; the rows show the round whose ratio is the median (a shared
machine moves single runs by a third), and list every round's ratio. Also the ingress's
peak RSS over all of it."""

from __future__ import annotations

from pathlib import Path

from tools.bench.options import Options
from tools.bench.pipeline import Broker, topology
from tools.bench.processes import (
    NO_DATABASE,
    bare_handler,
    bench_settings,
    ingress,
    peak_rss_mb,
)
from tools.bench.services import Services
from tools.bench.table import Table, median_round, ratio, spread
from tools.bench.wrk import Load, run_wrk


def _describe(load: Load) -> str:
    failed = f", {load.failed} failed" if load.failed else ""
    return f"p50 {load.p50_ms:.1f} ms, p99 {load.p99_ms:.1f} ms{failed}"


async def measure(table: Table, services: Services, options: Options, workdir: Path) -> None:
    settings = bench_settings(services.amqp_url, NO_DATABASE, workdir)
    async with (
        topology(settings) as broker,
        bare_handler(workdir) as bare,
        ingress(settings, workdir) as served,
    ):
        for connections in (64, 256):
            for close in (False, True):
                rounds = await _rounds(bare.url, served.url, broker, options, connections, close)
                _add_rows(table, rounds, connections, close)
        table.add(
            "ingress.rss",
            "ingress peak RSS, through all the runs above",
            peak_rss_mb(served.pid),
            "MB",
        )


async def _rounds(
    bare: str, ours: str, broker: Broker, options: Options, connections: int, close: bool
) -> list[tuple[Load, Load]]:
    """(bare, ingress) runs, `options.http_rounds` times, each going first in turn."""
    rounds = []
    for number in range(options.http_rounds):
        first, second = (ours, bare) if number % 2 else (bare, ours)
        loads = {url: await _run(url, options, connections, close) for url in (first, second)}
        rounds.append((loads[bare], loads[ours]))
        # The ingress's callbacks from this round, so that the next sees an empty queue.
        raw = await broker.channel.get_queue(broker.settings.raw_queue, ensure=False)
        await raw.purge()
    return rounds


async def _run(url: str, options: Options, connections: int, close: bool) -> Load:
    return await run_wrk(
        url,
        options.requests_file,
        connections=connections,
        seconds=options.http_seconds,
        close=close,
    )


def _add_rows(table: Table, rounds: list[tuple[Load, Load]], connections: int, close: bool) -> None:
    ratios = [ours.rate / base.rate if base.rate else 0.0 for base, ours in rounds]
    base, ours = rounds[median_round(ratios)]
    kind = "close" if close else "keepalive"
    connection = "new connection per request" if close else "kept alive"
    table.add(
        f"bare.{connections}.{kind}",
        f"bare aiohttp handler, {connections} connections, {connection}",
        base.rate,
        "req/s",
        _describe(base),
    )
    table.add(
        f"ingress.{connections}.{kind}",
        f"ingress, {connections} connections, {connection}",
        ours.rate,
        "callbacks/s",
        f"{ratio(ours.rate, base.rate)} of bare{spread(ratios)}; {_describe(ours)}; "
        f"p50/p99 {ratio(ours.p50_ms, base.p50_ms)}/{ratio(ours.p99_ms, base.p99_ms)} x bare",
    )
