"""`make bench`: one table of what the pipeline does on this machine, each figure next to
the limit it is measured against in the same run (see tools/bench/__init__.py).

    make bench                          # 8 to 13 minutes on an idle 2-core machine
    make bench BENCH_ARGS=--full        # adds the 1,000,000-message backlog (12 to 20 minutes)
    make bench BENCH_ARGS="--smoke --shared"   # seconds per figure: proves it runs"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

from cdrflow import logs
from tools.bench import cpu, design, drain, flow, hostile, limits, machine, serving, storage
from tools.bench.mix import write_wrk_requests
from tools.bench.options import Options
from tools.bench.processes import bench_settings
from tools.bench.services import Services, services
from tools.bench.table import Table, median_round, ratio, spread
from tools.bench.wrk import Load, require_wrk


def _say(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


async def run(options: Options, where: Services, workdir: Path) -> Table:
    table = Table()
    table.header = await machine.describe(
        where, bench_settings(where.amqp_url, f"{where.postgres_url}/postgres", workdir)
    )
    try:
        await _measure(table, options, where, workdir)
    finally:
        await where.drop_databases()
    return table


async def _measure(table: Table, options: Options, where: Services, workdir: Path) -> None:
    _say(f"writing {options.templates} wrk requests")
    typical_body = write_wrk_requests(options.requests_file, options.templates)
    table.header.append(
        f"load: wrk, the four providers' simulate(), {options.templates} distinct requests "
        f"(mean body {typical_body} B), about 10% re-pushes, 1% malformed"
    )

    _say("ingress and bare handler")
    await serving.measure(table, where, options, workdir)

    _say("publish limit")
    publish = await limits.publish_limit(where, options)
    table.add(
        "limit.publish",
        "publish limit: confirmed persistent publishes, quorum queue, aio-pika",
        publish,
        "msg/s",
        f"{limits.IN_FLIGHT} in flight, one message each",
    )

    _say(f"one worker draining a {options.backlog:,} backlog")
    drained_db = await where.fresh_database("drain")
    drained = await drain.drain(where, drained_db, options.backlog, workdir)
    drain_rate = drained.callbacks / drained.seconds
    table.add(
        "drain.rate",
        f"one worker draining a {options.backlog:,}-callback backlog",
        drain_rate,
        "callbacks/s",
        f"{ratio(drain_rate, publish)} of publish limit",
    )
    table.add(
        "drain.cpu",
        "... its CPU per callback",
        drained.cpu_seconds / drained.callbacks * 1e6,
        "µs",
        "utime+stime of the worker process",
    )
    table.add("drain.rss", "... its peak RSS", drained.rss_mb, "MB")

    _say("database limit")
    database = await limits.database_limit(drained_db)
    await where.drop(drained_db)
    table.add(
        "limit.database",
        "database limit: staged COPY upsert of the same rows",
        database,
        "rows/s",
        f"{limits.BATCH} rows a transaction, one connection",
    )
    table.rows["drain.rate"].detail += f", {ratio(drain_rate, database)} of database limit"

    _say(f"bytes per call: {options.storage_callbacks:,} call-center callbacks")
    await _storage(table, options, where, workdir)

    for count in options.end_to_end_workers:
        first = count == options.end_to_end_workers[0]
        await _end_to_end(table, options, where, workdir, count, first, publish, database)

    first_growing = 0
    for index, rate in enumerate(options.lag_rates, start=1):
        _say(f"lag at {rate}/s offered")
        url = await where.fresh_database(f"lag{rate}")
        lag = await flow.lag(where, url, options, rate, workdir)
        await where.drop(url)
        if lag.grows and not first_growing:
            first_growing = rate
        table.add(
            f"lag.{index}",
            f"stored_at - received_at at {rate:,}/s offered (achieved {lag.achieved:,.0f}/s)",
            lag.p99_ms,
            "ms p99",
            f"p50 {lag.p50_ms:.0f} ms; {_verdict(lag)}; 1 ingress, {options.lag_workers} worker(s)",
        )
    if first_growing:
        steady = [r for r in options.lag_rates if r < first_growing]
        between = f"steady at {max(steady):,}/s" if steady else "at the lowest rate tried"
        table.add("lag.grows_from", "lag starts to grow at", first_growing, "callbacks/s", between)
    else:
        table.add(
            "lag.grows_from",
            "lag starts to grow above",
            max(options.lag_rates),
            "callbacks/s",
            "steady at every rate tried",
        )

    _say("hostile inputs")
    typical = await hostile.typical(where, options, workdir)
    table.add(
        "hostile.typical",
        "worker time per input byte, typical callbacks",
        typical.microseconds_per_byte,
        "µs/B",
        f"{typical.requests:,} callbacks in {typical.seconds:.1f} s",
    )
    for key, (what, _) in hostile.CASES.items():
        cost = await hostile.hostile(where, options, workdir, key)
        done = "" if cost.finished else f"NOT DONE in {cost.seconds:.0f} s; "
        table.add(
            key,
            f"... {what}",
            cost.microseconds_per_byte,
            "µs/B",
            f"{done}{ratio(cost.microseconds_per_byte, typical.microseconds_per_byte)} x typical"
            f"; {cost.body_bytes // cost.requests:,} B,"
            f" {cost.seconds / cost.requests:.2f} s a request",
        )

    if options.million:
        _say(f"a worker facing {options.million:,} messages")
        url = await where.fresh_database("million")
        rss = await drain.big_backlog_rss(
            where, url, options.million, options.million_seconds, workdir
        )
        await where.drop(url)
        table.add(
            "drain.rss_million",
            f"worker peak RSS, {options.million:,}-message backlog",
            rss,
            "MB",
            f"over its first {options.million_seconds:.0f} s of draining",
        )


async def _storage(table: Table, options: Options, where: Services, workdir: Path) -> None:
    url = await where.fresh_database("storage")
    kept = await storage.bytes_per_call(where, url, options.storage_callbacks, workdir)
    await where.drop(url)
    payload = f"payload {kept.body_bytes:,.0f} B a callback"
    table.add(
        "storage.bytes_per_call",
        f"bytes on disk per call ({kept.calls:,} calls, {kept.callbacks:,} callbacks)",
        kept.as_left,
        "B",
        f"{payload}: {ratio(kept.as_left, kept.body_bytes)} x; no vacuum, the worker idle",
    )
    table.add(
        "storage.bytes_per_call.vacuumed",
        "... after VACUUM ANALYZE",
        kept.vacuumed,
        "B",
        f"{payload}: {ratio(kept.vacuumed, kept.body_bytes)} x; every table, index and TOAST",
    )


async def _end_to_end(
    table: Table,
    options: Options,
    where: Services,
    workdir: Path,
    count: int,
    first: bool,
    publish: float,
    database: float,
) -> None:
    """The design limit and cdrflow with `count` workers, alternating
    `options.end_to_end_rounds` times, each design run right before cdrflow's so both see
    the same machine; the rows show the round whose ratio is the median, and list every
    round's ratio (one slow design run once made a single round's ratio 0.74 against
    0.51 to 0.55 in the three rounds after it)."""
    rounds = []
    for number in range(1, options.end_to_end_rounds + 1):
        _say(f"design limit, {count} worker(s), round {number}")
        url = await where.fresh_database(f"design{count}")
        limit = await design.design_limit(where, url, options, count, workdir)
        await where.drop(url)
        _say(f"end to end, {count} worker(s), round {number}")
        url = await where.fresh_database(f"e2e{count}")
        result = await flow.end_to_end(where, url, options, count, workdir)
        await where.drop(url)
        rounds.append((limit, result))
    ratios = [_rate(r) / _rate(d) if _rate(d) else 0.0 for d, r in rounds]
    limit, result = rounds[median_round(ratios)]

    design_key = "limit.design" if first else f"limit.design.{count}"
    design_rate = _rate(limit)
    table.add(
        design_key,
        f"design limit: the same design in one file, no per-callback logic, {count} worker(s)",
        design_rate,
        "callbacks/s",
        f"tools/bench/onefile.py; {limit.records:,} records on the bound queue from "
        f"{limit.callbacks:,} callbacks{_wrapped(limit.load, options)}",
    )
    _add_cpu(table, f"{design_key}.cpu", limit.cpu, limit.callbacks)

    key = "end_to_end" if first else f"end_to_end.{count}"
    rate = _rate(result)
    table.add(
        key,
        f"end to end, HTTP to committed and published, 1 ingress, {count} worker(s)",
        rate,
        "callbacks/s",
        f"{ratio(rate, design_rate)} of design limit{spread(ratios)}, {ratio(rate, publish)} of "
        f"publish limit, {ratio(rate, database)} of database limit; "
        f"{result.records:,} records on the bound queue from {result.callbacks:,} callbacks"
        f"{_wrapped(result.load, options)}",
    )
    _add_cpu(table, f"{key}.cpu", result.cpu, result.callbacks)
    if where.private:  # the shared PostgreSQL's processes are not told apart from others'
        _add_database_cpu(table, f"{key}.postgres", result, limit)


def _rate(run: design.DesignLimit | flow.EndToEnd) -> float:
    return run.callbacks / run.seconds if run.seconds else 0.0


def _wrapped(load: Load, options: Options) -> str:
    """Said when wrk sent its request file more than once: the requests sent again are
    re-pushes, cheaper than new callbacks, so such a row is not comparable."""
    if load.requests <= options.templates:
        return ""
    return f"; NOT COMPARABLE: wrk sent its {options.templates:,} requests more than once"


def _verdict(lag: flow.Lag) -> str:
    if lag.falls_behind:
        return f"grows: falls behind, under {flow.SUSTAINED:.0%} of the offered rate achieved"
    return "grows" if lag.grows else "steady"


def _add_cpu(table: Table, key: str, account: cpu.Account, callbacks: int) -> None:
    spent = account.per_callback(callbacks)
    table.add(
        key,
        "... CPU of the whole machine per callback",
        sum(spent.values()),
        "µs",
        ", ".join(f"{kind} {spent[kind]:.0f}" for kind in cpu.CLASSES)
        + f"; cores {account.busy:.0%} busy",
    )


def _add_database_cpu(
    table: Table, key: str, result: flow.EndToEnd, limit: design.DesignLimit
) -> None:
    """PostgreSQL's own share, beside the design limit's: what cdrflow's statements and the
    bytes it writes cost the database per callback, against the same design's bare minimum
    on the same machine in the same round."""
    spent = result.cpu.per_callback(result.callbacks)["postgres"]
    floor = limit.cpu.per_callback(limit.callbacks)["postgres"]
    table.add(
        key,
        "... PostgreSQL's CPU per callback",
        spent,
        "µs",
        f"{ratio(spent, floor)} x the design limit's {floor:.0f} µs in the same round",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--smoke", action="store_true", help="seconds per figure: proves the bench runs"
    )
    parser.add_argument("--full", action="store_true", help="add the 1,000,000-message backlog")
    parser.add_argument(
        "--shared",
        action="store_true",
        help="use the shared RabbitMQ and PostgreSQL (unique names), not private ones",
    )
    parser.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=[1, 2],
        help="worker processes of the end-to-end runs (default: 1 2)",
    )
    parser.add_argument("--json", type=Path, help="also write the table here as JSON")
    args = parser.parse_args()
    require_wrk()
    logs.configure("warning", "console")
    with tempfile.TemporaryDirectory(prefix="cdrflow-bench-") as directory:
        workdir = Path(directory)
        options = Options.from_args(args, workdir)
        with services(shared=args.shared) as where:
            table = asyncio.run(run(options, where, workdir))
    print(table.render())
    if args.json:
        args.json.write_text(json.dumps(table.as_json(), indent=2))


if __name__ == "__main__":
    main()
