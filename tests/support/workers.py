"""Workers for tests: in this process (fast, inspectable) or as real `cdrflow worker`
processes (for SIGKILL and SIGTERM)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

import aiormq
from aio_pika.abc import AbstractChannel

from cdrflow.amqp import declare, raw_message
from cdrflow.settings import Settings
from schemas.envelope import RawEnvelope
from schemas.providers import Provider, default_registry
from schemas.sources import Source
from tests.support.sources import ENVIRON, SOURCES_TOML
from workers.worker import Worker


@asynccontextmanager
async def running_worker(
    settings: Settings,
    sources: Mapping[str, Source],
    providers: Mapping[str, Provider] | None = None,
) -> AsyncIterator[Worker]:
    worker = Worker(settings, sources, providers or default_registry())
    task = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(worker.consuming.wait(), 20)
        yield worker
    finally:
        worker.stop()
        await asyncio.wait_for(task, 30)


def settings_env(settings: Settings) -> dict[str, str]:
    env = {}
    for name, value in settings:
        if isinstance(value, tuple):
            value = ",".join(str(v) for v in value)
        env[Settings.variable(name)] = str(value)
    return env


class WorkerProcess:
    """A real `cdrflow worker` process."""

    def __init__(self, settings: Settings, workdir: Path, name: str = "worker") -> None:
        sources = workdir / "sources.toml"
        sources.write_text(SOURCES_TOML)
        self.log = workdir / f"{name}.log"
        self.env = {
            **os.environ,
            **ENVIRON,
            **settings_env(settings),
            "CDRFLOW_SOURCES": str(sources),
            "CDRFLOW_LOG_FORMAT": "json",
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "cdrflow.cli", "worker"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def signal(self, signum: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    async def wait(self, timeout: float = 30) -> int:
        assert self.process is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.process.poll() is None:
            if loop.time() > deadline:
                self.process.kill()
                raise TimeoutError("worker did not exit")
            await asyncio.sleep(0.05)
        return self.process.returncode

    def logged(self) -> str:
        return self.log.read_text()

    def ensure_dead(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


async def publish_envelopes(
    channel: AbstractChannel,
    settings: Settings,
    envelopes: Iterable[RawEnvelope],
    per_message: int = 10,
) -> int:
    """Put envelopes straight on the raw queue, as the ingress would (declaring the
    topology first, as the ingress does); returns the number of messages sent."""
    items = list(envelopes)
    await declare(channel, settings.topology())
    sent = 0
    for start in range(0, len(items), per_message):
        chunk = items[start : start + per_message]
        result = await channel.default_exchange.publish(
            raw_message([e.encode() for e in chunk]),
            routing_key=settings.raw_queue,
        )
        assert isinstance(result, aiormq.spec.Basic.Ack), result  # confirmed, not returned
        sent += 1
    return sent


def stop_all(processes: Iterable[WorkerProcess]) -> None:
    for process in processes:
        process.ensure_dead()


__all__ = [
    "WorkerProcess",
    "publish_envelopes",
    "running_worker",
    "settings_env",
    "signal",
    "stop_all",
]
