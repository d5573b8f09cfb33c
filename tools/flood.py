"""A flood of slow 1 MiB bodies against a `cdrflow ingress` process on 127.0.0.1; prints
the ingress's peak RSS and how the requests were answered. Bounded in time.

    .venv/bin/python -m tools.flood [--connections 400] [--inflight-mib 64]

Each connection sends the headers of a 1 MiB callback, then trickles the body in 64 KiB
pieces (1 MiB in about 3 s, inside the body timeout), all at once."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import socket
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import aio_pika

from cdrflow.settings import Settings
from tests.support.env import AMQP_URL, unique
from tests.support.sources import ENVIRON, SOURCES_TOML, callback_path
from tests.support.workers import settings_env

BODY = 1024 * 1024
PIECE = 64 * 1024


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def peak_rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    found = re.search(r"VmHWM:\s+(\d+) kB", status)
    return int(found[1]) / 1024 if found else 0.0


async def slow_push(port: int, pause: float) -> str:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return "refused"
    try:
        head = (
            f"POST {callback_path('nx-voice')} HTTP/1.1\r\nHost: flood\r\n"
            f"Content-Type: application/json\r\nContent-Length: {BODY}\r\n\r\n"
        )
        writer.write(head.encode())
        body = b'{"pad":"' + b"x" * (BODY - 10) + b'"}'
        for start in range(0, BODY, PIECE):
            if reader.at_eof() or writer.is_closing():
                break
            writer.write(body[start : start + PIECE])
            await writer.drain()
            await asyncio.sleep(pause)
        status = await asyncio.wait_for(reader.readline(), 30)
        return status.split(b" ")[1].decode() if status else "closed"
    except (OSError, TimeoutError):
        return "reset"
    finally:
        writer.close()


async def flood(connections: int, inflight_mib: int) -> None:
    base = unique("flood")
    settings = Settings(
        amqp_url=AMQP_URL,
        raw_queue=f"{base}.raw",
        dead_exchange=f"{base}.dead",
        dead_queue=f"{base}.dead",
        records_exchange=f"{base}.records",
        max_inflight_bytes=inflight_mib * 1024 * 1024,
        drain_seconds=0,
    )
    port = free_port()
    with tempfile.TemporaryDirectory() as workdir:
        sources = Path(workdir) / "sources.toml"
        sources.write_text(SOURCES_TOML)
        env = {
            **os.environ,
            **ENVIRON,
            **settings_env(settings),
            "CDRFLOW_SOURCES": str(sources),
            "CDRFLOW_SPOOL_DIR": str(Path(workdir) / "spool"),
            "CDRFLOW_LOG_LEVEL": "warning",
        }
        process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "cdrflow.cli", "ingress", "--port", str(port)),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            await asyncio.sleep(3)
            idle = peak_rss_mib(process.pid)
            answers = await asyncio.gather(
                *(slow_push(port, pause=0.2) for _ in range(connections))
            )
            print(
                f"connections={connections} inflight_bound={inflight_mib} MiB "
                f"rss_idle={idle:.0f} MiB rss_peak={peak_rss_mib(process.pid):.0f} MiB "
                f"answers={dict(Counter(answers))}"
            )
        finally:
            process.terminate()
            await asyncio.wait_for(process.wait(), 30)
            await _delete_queues(settings)


async def _delete_queues(settings: Settings) -> None:
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        with contextlib.suppress(Exception):
            await channel.queue_delete(settings.raw_queue)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=400)
    parser.add_argument("--inflight-mib", type=int, default=64)
    args = parser.parse_args()
    asyncio.run(flood(args.connections, args.inflight_mib))


if __name__ == "__main__":
    main()
