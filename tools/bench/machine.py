"""The lines above the table: the machine, the versions and the settings of this run."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib.metadata import version
from pathlib import Path

import aio_pika
import asyncpg

from cdrflow.settings import Settings
from tools.bench.services import Services


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def _memory_gb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 1024 / 1024
    return 0.0


def _wrk_version() -> str:
    output = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    return (output.stdout or output.stderr).split(" [")[0].replace("wrk ", "")


async def describe(services: Services, settings: Settings) -> list[str]:
    connection = await aio_pika.connect(services.amqp_url)
    try:
        properties = connection.transport.connection.server_properties  # type: ignore[union-attr]
        rabbitmq = properties.get("version", "?")
        rabbitmq = rabbitmq.decode() if isinstance(rabbitmq, bytes) else str(rabbitmq)
    finally:
        await connection.close()
    db = await asyncpg.connect(f"{services.postgres_url}/postgres")
    try:
        postgres = await db.fetchval("SHOW server_version")
        pg_settings = {
            name: await db.fetchval(f"SHOW {name}")
            for name in ("shared_buffers", "synchronous_commit", "max_wal_size")
        }
    finally:
        await db.close()
    where = "private node and cluster of this run" if services.private else "the shared ones"
    return [
        f"cdrflow bench: {_cpu_model()}, {os.cpu_count()} cores, {_memory_gb():.1f} GB; "
        f"{platform.system()} {platform.release()}",
        f"Python {platform.python_version()}, aiohttp {version('aiohttp')}, "
        f"aio-pika {version('aio-pika')}, asyncpg {version('asyncpg')}, "
        f"RabbitMQ {rabbitmq}, PostgreSQL {postgres}, wrk {_wrk_version()} (1 thread)",
        f"RabbitMQ and PostgreSQL co-located ({where}); PostgreSQL "
        + ", ".join(f"{k} {v}" for k, v in pg_settings.items()),
        f"cdrflow defaults: batch_size {settings.batch_size}, "
        f"prefetch {settings.effective_prefetch}, "
        f"batch_wait_ms {settings.batch_wait_ms:g}, db_pool_size {settings.db_pool_size}, "
        f"coalesce_max_envelopes {settings.coalesce_max_envelopes}, "
        f"coalesce_linger_ms {settings.coalesce_linger_ms:g}, log_level {settings.log_level}",
    ]
