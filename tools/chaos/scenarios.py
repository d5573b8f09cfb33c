"""The faults, one per scenario. Each runs while wrk sends traffic, on a timeline from the
start of the load, and leaves the pipeline whole again (services up, one ingress, the
usual number of workers) before the load ends."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aio_pika

from tools.chaos.pipeline import INGRESS_PORT, Pipeline
from tools.chaos.services import PostgresCluster, RabbitNode, wait_port_closed

POISON_BODY = b"chaos poison: not an envelope batch"


@dataclass
class Stage:
    """What a fault acts on, and what it has to say about it."""

    pipeline: Pipeline
    rabbit: RabbitNode
    postgres: PostgresCluster
    raw_queue: str
    spools: Path
    notes: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    started: float = 0.0
    _spool_serial: int = 0

    def at(self, second: float) -> None:
        """Sleep until `second` seconds after the load started."""
        time.sleep(max(0.0, self.started + second - time.monotonic()))

    def elapsed(self) -> str:
        return f"{time.monotonic() - self.started:.1f} s"

    def new_spool(self) -> Path:
        self._spool_serial += 1
        return self.spools / f"ingress-{self._spool_serial:02d}"

    def current_spool(self) -> Path:
        return self.spools / f"ingress-{self._spool_serial:02d}"

    def expect_exit(self, process: subprocess.Popen[bytes], what: str, timeout: float) -> None:
        try:
            code = process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.failures.append(f"{what} still running {timeout:.0f} s after SIGTERM")
            process.kill()
            process.wait()
            return
        self.notes.append(f"{what} exited {code} after SIGTERM")
        if code != 0:
            self.failures.append(f"{what} exited {code} after SIGTERM")


@dataclass(frozen=True)
class Scenario:
    name: str
    seconds: int  # of load
    fault: Callable[[Stage], None]
    refuse_none: bool = False  # every request must be answered success
    poison: bool = False  # unparseable callbacks in the traffic, a non-batch on cdr.raw


def restart_broker(stage: Stage) -> None:
    stage.at(5)
    stage.rabbit.stop()
    stage.notes.append(f"RabbitMQ stopped at {stage.elapsed()}")
    stage.at(8)
    stage.rabbit.start()
    stage.notes.append(f"RabbitMQ up again at {stage.elapsed()}")


def stop_database(stage: Stage) -> None:
    stage.at(5)
    stage.postgres.stop("immediate")
    stage.notes.append(f"PostgreSQL stopped (immediate) at {stage.elapsed()}")
    stage.at(35)
    stage.postgres.start()
    stage.notes.append(f"PostgreSQL up again at {stage.elapsed()}")


def kill_worker(stage: Stage) -> None:
    stage.at(6)
    killed = stage.pipeline.signal_worker(0, signal.SIGKILL)
    killed.wait()
    stage.notes.append(f"worker pid {killed.pid} SIGKILLed at {stage.elapsed()}")
    stage.at(12)
    stage.pipeline.start_worker()
    stage.notes.append(f"a new worker started at {stage.elapsed()}")


def kill_spooling_ingress(stage: Stage) -> None:
    stage.at(4)
    stage.rabbit.stop_app()
    stage.notes.append(f"RabbitMQ app stopped at {stage.elapsed()}")
    deadline = time.monotonic() + 15
    spooled = 0.0
    while time.monotonic() < deadline:
        spooled = stage.pipeline.ingress_metric("cdrflow_spool_records") or 0.0
        if spooled >= 500:
            break
        time.sleep(0.2)
    killed = stage.pipeline.signal_ingress(signal.SIGKILL)
    killed.wait()
    stage.notes.append(f"ingress SIGKILLed at {stage.elapsed()} with {spooled:.0f} spooled")
    if spooled == 0:
        stage.failures.append("nothing was spooled before the ingress was killed")
    # Same spool directory: the new process must find and send what the old one kept.
    stage.pipeline.start_ingress(stage.current_spool())
    stage.notes.append(f"ingress restarted on its spool at {stage.elapsed()}, RabbitMQ down")
    stage.at(16)
    stage.rabbit.start_app()
    stage.notes.append(f"RabbitMQ app up again at {stage.elapsed()}")


def terminate_under_load(stage: Stage) -> None:
    stage.at(6)
    old_ingress = stage.pipeline.signal_ingress(signal.SIGTERM)
    old_worker = stage.pipeline.signal_worker(0, signal.SIGTERM)
    stage.notes.append(f"ingress and a worker SIGTERMed at {stage.elapsed()}")
    stage.pipeline.start_worker()
    # As a deploy does: the new ingress takes the port once the old one let it go, with a
    # spool directory of its own (the old process holds its own until it exits).
    if not wait_port_closed(INGRESS_PORT, timeout=60):
        stage.failures.append("the old ingress still listens 60 s after SIGTERM")
        return
    stage.notes.append(f"old ingress stopped listening at {stage.elapsed()}")
    stage.pipeline.start_ingress(stage.new_spool())
    stage.notes.append(f"new ingress ready at {stage.elapsed()}")
    stage.expect_exit(old_ingress, "old ingress", 60)
    stage.expect_exit(old_worker, "old worker", 60)


async def _publish_poison(amqp_url: str, queue: str) -> None:
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        await channel.default_exchange.publish(
            aio_pika.Message(
                POISON_BODY,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                message_id="chaos-poison",
            ),
            routing_key=queue,
        )


def send_poison(stage: Stage) -> None:
    stage.at(5)
    asyncio.run(_publish_poison(stage.rabbit.url, stage.raw_queue))
    stage.notes.append(f"a message that is not an envelope batch published at {stage.elapsed()}")


SCENARIOS = (
    Scenario("broker restart", 30, restart_broker, refuse_none=True),
    Scenario("postgres stopped 30 s", 45, stop_database),
    Scenario("worker SIGKILL", 20, kill_worker),
    Scenario("ingress SIGKILL, spooled", 25, kill_spooling_ingress),
    Scenario("SIGTERM ingress+worker", 20, terminate_under_load),
    Scenario("poison message", 15, send_poison, poison=True),
)
