"""Ingress against the HTTP limit: callbacks/s and p50/p99 latency of `cdrflow ingress`
(every 200 confirmed by the broker) and of the bare handler, the same wrk load, at 64 and
256 connections, kept alive and with a new connection per request; interleaved, so that
both see the same machine. Also the ingress's peak RSS over all of it."""

from __future__ import annotations

from pathlib import Path

from tests.bench.options import Options
from tests.bench.pipeline import topology
from tests.bench.processes import bare_handler, bench_settings, ingress, peak_rss_mb
from tests.bench.services import Services
from tests.bench.table import Table, ratio
from tests.bench.wrk import Load, run_wrk


def _describe(load: Load) -> str:
    failed = f", {load.failed} failed" if load.failed else ""
    return f"p50 {load.p50_ms:.1f} ms, p99 {load.p99_ms:.1f} ms{failed}"


async def measure(table: Table, services: Services, options: Options, workdir: Path) -> None:
    settings = bench_settings(services.amqp_url, "postgresql://unused/none", workdir)
    async with (
        topology(settings),
        bare_handler(workdir) as bare,
        ingress(settings, workdir) as served,
    ):
        for connections in (64, 256):
            for close in (False, True):
                kind = "close" if close else "keepalive"
                loads: list[Load] = []
                for url in (bare.url, served.url):
                    loads.append(
                        await run_wrk(
                            url,
                            options.requests_file,
                            connections=connections,
                            seconds=options.http_seconds,
                            close=close,
                        )
                    )
                base, ours = loads
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
                    f"{ratio(ours.rate, base.rate)} of bare; {_describe(ours)}; "
                    f"p50/p99 {ratio(ours.p50_ms, base.p50_ms)}/{ratio(ours.p99_ms, base.p99_ms)}"
                    " x bare",
                )
        table.add(
            "ingress.rss",
            "ingress peak RSS, through all the runs above",
            peak_rss_mb(served.pid),
            "MB",
        )
