"""Whether writing into aiormq's channel state (`cdrflow.aiormq_channel`) still pays
(docs/benchmarks.md, "Private library internals"): a worker's CPU per callback draining a
backlog, publishing its records with `cdrflow.batchpublish` or with aio-pika's public API
(one confirmed publish per record, gathered), the two alternating in one run.

    python -m tools.bench.internals [--shared] [--rounds 3] [--backlog 50000]

`python -m tools.bench.internals worker-public` is the worker with aio-pika publishing."""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import asyncpg

from cdrflow.amqp import BrokerLink
from tools.bench import mix
from tools.bench.pipeline import fill, stored, topology, until_drained
from tools.bench.processes import CLI, bench_settings, cpu_seconds, workers
from tools.bench.services import Services, services
from workers.batch import OutboxEntry
from workers.outbox import record_message

PUBLIC = ("tools.bench.internals", "worker-public")


async def worker_cpu(
    where: Services, backlog: int, workdir: Path, command: tuple[str, ...]
) -> float:
    """µs of the worker's CPU per callback, draining `backlog` callbacks."""
    database_url = await where.fresh_database("internals")
    settings = bench_settings(where.amqp_url, database_url, workdir)
    db = await asyncpg.connect(database_url)
    try:
        async with topology(settings) as broker:
            total = await fill(broker, mix.callbacks(backlog, seed=backlog))
            async with workers(settings, workdir, command=command) as (worker,):
                await broker.until_consumed_by(1)
                cpu_started, first = cpu_seconds(worker.pid), await stored(db)
                drained = await until_drained(broker, db, at_least=total)
                cpu = cpu_seconds(worker.pid) - cpu_started
    finally:
        await db.close()
        await where.drop(database_url)
    return cpu / (drained.callbacks - first) * 1e6


async def measure(where: Services, rounds: int, backlog: int, workdir: Path) -> None:
    for number in range(rounds):
        order = (CLI, PUBLIC) if number % 2 == 0 else (PUBLIC, CLI)
        cost = {command: await worker_cpu(where, backlog, workdir, command) for command in order}
        saved = (cost[PUBLIC] - cost[CLI]) / cost[PUBLIC]
        print(
            f"worker: {cost[CLI]:.1f} µs CPU per callback with cdrflow.batchpublish, "
            f"{cost[PUBLIC]:.1f} with aio-pika: {saved:.1%} of its CPU saved",
            flush=True,
        )


def run_public_worker(argv: list[str]) -> int:
    """`cdrflow` with `argv` (`worker`), its records published through aio-pika."""
    import workers.outbox
    from cdrflow import cli

    workers.outbox.publish_records = _publish_each  # type: ignore[attr-defined]
    return cli.main(argv)


async def _publish_each(
    link: BrokerLink, entries: Sequence[OutboxEntry], *, exchange: str, timeout: float
) -> list[BaseException | None]:
    return await asyncio.gather(
        *(
            link.publish(
                record_message(entry),
                entry.routing_key,
                exchange=exchange,
                mandatory=False,
                timeout=timeout,
            )
            for entry in entries
        ),
        return_exceptions=True,
    )


def main() -> None:
    if sys.argv[1:2] == ["worker-public"]:
        sys.exit(run_public_worker(sys.argv[2:]))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", action="store_true", help="RabbitMQ and PostgreSQL running")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backlog", type=int, default=50_000)
    args = parser.parse_args()
    with services(shared=args.shared) as where, tempfile.TemporaryDirectory() as workdir:
        asyncio.run(measure(where, args.rounds, args.backlog, Path(workdir)))


if __name__ == "__main__":
    main()
