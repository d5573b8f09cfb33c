"""Where the bench runs: a private RabbitMQ node and PostgreSQL cluster of its own (ports
5721/25721 and 5434), so that other runs' queues neither disturb it nor are disturbed by
it; or, with `--shared` (the smoke test), the shared ones under names unique to this run.
Stopped on the way out, also on failure."""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from tests.support.env import AMQP_URL, POSTGRES_URL, RUN_ID
from tools.bench.checkout import Checkout

RABBITMQ_PORT, RABBITMQ_DIST_PORT, POSTGRES_PORT = 5721, 25721, 5434
NODE = "cdrflow-bench@localhost"


@dataclass(frozen=True)
class Services:
    amqp_url: str
    postgres_url: str  # without a database name
    private: bool

    async def fresh_database(self, label: str, code: Checkout | None = None) -> str:
        """A database of its own for one measurement, migrated (by `code`'s release when
        given); dropped by `drop_databases`."""
        from workers.storage.migrate import migrate

        url = f"{self.postgres_url}/cdrflow_bench_{label}_{RUN_ID}"
        await self.drop(url)
        if code is None:
            await migrate(url)
        else:
            await asyncio.to_thread(code.migrate, url)
        return url

    async def drop(self, url: str) -> None:
        name = url.rsplit("/", 1)[1]
        admin = await asyncpg.connect(f"{self.postgres_url}/postgres")
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()

    async def drop_databases(self) -> None:
        admin = await asyncpg.connect(f"{self.postgres_url}/postgres")
        try:
            names = await admin.fetch(
                "SELECT datname FROM pg_database WHERE datname LIKE $1", f"cdrflow_bench_%_{RUN_ID}"
            )
            for row in names:
                await admin.execute(f'DROP DATABASE IF EXISTS "{row["datname"]}" WITH (FORCE)')
        finally:
            await admin.close()


@contextlib.contextmanager
def services(*, shared: bool) -> Iterator[Services]:
    if shared:
        yield Services(AMQP_URL, POSTGRES_URL, private=False)
        return
    base = Path(tempfile.mkdtemp(prefix="cdrflow-bench-"))
    base.chmod(0o755)  # the rabbitmq and postgres users work in it
    try:
        with private_rabbitmq(base / "rabbitmq") as amqp, private_postgres(base / "pg") as pg:
            yield Services(amqp, pg, private=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _refuse_busy(port: int) -> None:
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            raise RuntimeError(f"port {port} is taken: is another bench running? (or --shared)")


@contextlib.contextmanager
def private_rabbitmq(directory: Path) -> Iterator[str]:
    _refuse_busy(RABBITMQ_PORT)
    directory.mkdir()
    (directory / "plugins").write_text("[].\n")
    # The machine's rabbitmq.conf names the shared node's port, and wins over NODE_PORT.
    (directory / "rabbitmq.conf").write_text(f"listeners.tcp.local = 127.0.0.1:{RABBITMQ_PORT}\n")
    for path in (directory, directory / "plugins", directory / "rabbitmq.conf"):
        shutil.chown(path, "rabbitmq", "rabbitmq")
    env = {
        **os.environ,
        "RABBITMQ_NODENAME": NODE,
        "RABBITMQ_NODE_PORT": str(RABBITMQ_PORT),
        "RABBITMQ_DIST_PORT": str(RABBITMQ_DIST_PORT),
        "RABBITMQ_MNESIA_BASE": str(directory / "mnesia"),
        "RABBITMQ_LOG_BASE": str(directory / "log"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(directory / "plugins"),
        "RABBITMQ_CONFIG_FILE": str(directory / "rabbitmq.conf"),
    }
    subprocess.run(["rabbitmq-server", "-detached"], env=env, check=True, timeout=60)
    try:
        _await_startup()
        yield f"amqp://guest:guest@127.0.0.1:{RABBITMQ_PORT}/"
    finally:
        subprocess.run(["rabbitmqctl", "-n", NODE, "stop"], timeout=120, capture_output=True)


def _await_startup(seconds: float = 180) -> None:
    """`await_startup` fails at once while the node is not yet reachable: ask again."""
    deadline = time.monotonic() + seconds
    while True:
        answer = subprocess.run(
            ["rabbitmqctl", "-n", NODE, "await_startup"],
            timeout=seconds,
            capture_output=True,
            text=True,
            check=False,
        )
        if answer.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the bench's RabbitMQ node did not start: {answer.stderr}")
        time.sleep(1)


def _postgres_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise RuntimeError(f"PostgreSQL's {name} is not installed")
    return found[-1]


@contextlib.contextmanager
def private_postgres(directory: Path) -> Iterator[str]:
    _refuse_busy(POSTGRES_PORT)
    directory.mkdir()
    shutil.chown(directory, "postgres", "postgres")
    as_postgres = ["runuser", "-u", "postgres", "--"]
    subprocess.run(
        [
            *as_postgres,
            _postgres_bin("initdb"),
            "-D",
            str(directory / "data"),
            "-A",
            "trust",
            "-U",
            "postgres",
        ],
        check=True,
        timeout=120,
        capture_output=True,
    )
    options = f"-p {POSTGRES_PORT} -k /tmp -c listen_addresses=127.0.0.1"
    pg_ctl = [*as_postgres, _postgres_bin("pg_ctl"), "-D", str(directory / "data")]
    subprocess.run(
        [*pg_ctl, "-o", options, "-l", str(directory / "log"), "-w", "start"],
        check=True,
        timeout=120,
        capture_output=True,
    )
    try:
        yield f"postgresql://postgres@127.0.0.1:{POSTGRES_PORT}"
    finally:
        subprocess.run([*pg_ctl, "-m", "fast", "-w", "stop"], timeout=120, capture_output=True)
