"""`make bench`: throughput of the ingress and of a worker, each as a ratio against a
baseline measured in the same run on the same machine (shared machines are noisy; only
the ratios travel).

- ingress: HTTP callbacks/s through a `cdrflow ingress` process to confirmed messages,
  coalescing (the defaults) against one broker confirm per request;
- worker: callbacks/s from a full `cdr.raw` to committed rows, batches (the defaults)
  against one transaction per message.

Options: `make bench BENCH_ARGS="--requests 8000 --concurrency 200 --callbacks 10000"`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aio_pika
import aiohttp
import asyncpg

from cdrflow import logs
from cdrflow.amqp import declare
from cdrflow.settings import Settings
from schemas.jsoncodec import dumps
from tests.support.env import AMQP_URL, POSTGRES_URL, RUN_ID, unique
from tests.support.samples import envelope, sample
from tests.support.sources import ENVIRON, SOURCES_TOML, callback_path
from tests.support.workers import publish_envelopes, settings_env
from workers.migrate import migrate


@dataclass
class Run:
    label: str
    count: int
    seconds: float
    latencies: list[float] | None = None

    @property
    def rate(self) -> float:
        return self.count / self.seconds

    def describe(self) -> str:
        text = f"{self.label:<34} {self.count:>7} in {self.seconds:6.2f} s = {self.rate:9.0f}/s"
        if self.latencies:
            ordered = sorted(self.latencies)
            p50 = statistics.median(ordered) * 1000
            p99 = ordered[int(len(ordered) * 0.99) - 1] * 1000
            text += f"   p50 {p50:6.1f} ms  p99 {p99:6.1f} ms"
        return text


def base_settings(database_url: str) -> Settings:
    name = unique("bench")
    return Settings(
        amqp_url=AMQP_URL,
        database_url=database_url,
        raw_queue=f"{name}.raw",
        dead_exchange=f"{name}.dead",
        dead_queue=f"{name}.dead",
        records_exchange=f"{name}.records",
        log_level="info",
    )


def spawn(command: list[str], settings: Settings, workdir: Path) -> subprocess.Popen[bytes]:
    sources = workdir / "sources.toml"
    sources.write_text(SOURCES_TOML)
    env = {**os.environ, **ENVIRON, **settings_env(settings), "CDRFLOW_SOURCES": str(sources)}
    with (workdir / f"{command[0]}.log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "cdrflow.cli", *command],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )


async def drop_topology(settings: Settings) -> None:
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        for queue in (settings.raw_queue, settings.dead_queue):
            await channel.queue_delete(queue)
        for exchange in (settings.dead_exchange, settings.records_exchange):
            await channel.exchange_delete(exchange)


async def bench_ingress(
    label: str, settings: Settings, requests: int, concurrency: int, workdir: Path
) -> Run:
    port = 18000 + os.getpid() % 1000
    process = spawn(["ingress", "--host", "127.0.0.1", "--port", str(port)], settings, workdir)
    base = f"http://127.0.0.1:{port}"
    url = base + callback_path("nx-cc")
    latencies: list[float] = []
    try:
        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=connector) as session:
            for _ in range(200):
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(base + "/readyz") as ready:
                        if ready.status == 200:
                            break
                await asyncio.sleep(0.05)
            bodies = [dumps({"callSessionId": f"b{n}", "callDuration": n}) for n in range(requests)]
            queue: asyncio.Queue[bytes] = asyncio.Queue()
            for body in bodies:
                queue.put_nowait(body)

            async def client() -> None:
                while not queue.empty():
                    body = queue.get_nowait()
                    started = time.perf_counter()
                    async with session.post(url, data=body) as response:
                        await response.read()
                        if response.status != 200:
                            raise RuntimeError(f"ingress answered {response.status}")
                    latencies.append(time.perf_counter() - started)

            started = time.perf_counter()
            await asyncio.gather(*(client() for _ in range(concurrency)))
            elapsed = time.perf_counter() - started
    finally:
        process.terminate()
        process.wait(timeout=30)
        await drop_topology(settings)
    return Run(label, requests, elapsed, latencies)


async def bench_worker(label: str, settings: Settings, callbacks: int, workdir: Path) -> Run:
    connection = await aio_pika.connect(settings.amqp_url)
    db = await asyncpg.connect(settings.database_url)
    try:
        await db.execute("TRUNCATE call_records, deliveries, rejected_callbacks, outbox")
        channel = await connection.channel()
        await declare(channel, settings.topology())
        start = datetime.now(UTC)
        items = []
        for n in range(callbacks):  # one in four is a re-push of an earlier call
            call = sample("nx-cc", f"w{n // 4 * 4 if n % 4 == 3 else n}")
            items.append(envelope(call, start + timedelta(microseconds=n)))
        await publish_envelopes(channel, settings, items, per_message=8)
        process = spawn(["worker"], settings, workdir)
        started = time.perf_counter()
        try:
            while True:
                stored = await db.fetchval(
                    "SELECT coalesce(sum(delivery_count), 0) FROM call_records"
                )
                if stored >= callbacks:
                    break
                if process.poll() is not None:
                    raise RuntimeError("the worker exited")
                await asyncio.sleep(0.02)
            elapsed = time.perf_counter() - started
        finally:
            process.terminate()
            process.wait(timeout=60)
    finally:
        await db.close()
        await connection.close()
        await drop_topology(settings)
    return Run(label, callbacks, elapsed)


async def main(args: argparse.Namespace) -> None:
    logs.configure("warning", "console")
    database_url = f"{POSTGRES_URL}/cdrflow_bench_{RUN_ID}"
    await migrate(database_url)
    print(f"cdrflow bench, {os.cpu_count()} CPUs; baselines measured in this same run\n")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(os.environ.get("BENCH_WORKDIR", tmp))
            one = await bench_ingress(
                "ingress, one confirm per request",
                base_settings(database_url).with_(coalesce_max_envelopes=1),
                args.requests,
                args.concurrency,
                workdir,
            )
            print(one.describe())
            many = await bench_ingress(
                "ingress, coalesced (defaults)",
                base_settings(database_url),
                args.requests,
                args.concurrency,
                workdir,
            )
            print(many.describe())
            print(f"  -> coalescing: {many.rate / one.rate:.2f}x the per-request baseline\n")

            single = await bench_worker(
                "worker, one transaction per message",
                base_settings(database_url).with_(batch_size=1),
                args.callbacks // 4,
                workdir,
            )
            print(single.describe())
            batched = await bench_worker(
                "worker, batches (defaults)", base_settings(database_url), args.callbacks, workdir
            )
            print(batched.describe())
            print(f"  -> batching: {batched.rate / single.rate:.2f}x the per-message baseline")
    finally:
        admin = await asyncpg.connect(f"{POSTGRES_URL}/postgres")
        await admin.execute(f'DROP DATABASE IF EXISTS "cdrflow_bench_{RUN_ID}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=6000, help="HTTP requests per ingress run")
    parser.add_argument("--concurrency", type=int, default=200, help="concurrent HTTP clients")
    parser.add_argument("--callbacks", type=int, default=12000, help="callbacks per worker run")
    asyncio.run(main(parser.parse_args()))
