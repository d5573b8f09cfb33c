"""The fault suite's own RabbitMQ node and PostgreSQL cluster: restarting or stopping them
disturbs nobody else on the machine (the shared 5672/5432 keep running)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

RABBIT_PORT = 5701
RABBIT_DIST_PORT = 25701
RABBIT_NODE = "cdrflow-chaos@localhost"
POSTGRES_PORT = 5433
POSTGRES_BIN = Path("/usr/lib/postgresql/15/bin")


def _run(*command: str, user: str | None = None, timeout: float = 120) -> None:
    if user is not None:
        command = ("runuser", "-u", user, "--", *command)
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}: {done.stderr[-800:]}")


def _chown(path: Path, user: str) -> None:
    shutil.chown(path, user, user)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            shutil.chown(Path(root) / name, user, user)


class RabbitNode:
    """A single RabbitMQ node of our own, on `RABBIT_PORT`."""

    def __init__(self, workdir: Path) -> None:
        self.home = workdir / "rabbitmq"
        self.url = f"amqp://guest:guest@127.0.0.1:{RABBIT_PORT}/"

    def _env(self) -> dict[str, str]:
        return {
            **os.environ,
            "RABBITMQ_NODENAME": RABBIT_NODE,
            "RABBITMQ_NODE_PORT": str(RABBIT_PORT),
            "RABBITMQ_DIST_PORT": str(RABBIT_DIST_PORT),
            "RABBITMQ_MNESIA_BASE": str(self.home / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.home / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.home / "plugins"),
            # /etc/rabbitmq/rabbitmq.conf names the shared node's listener: ours has its own.
            "RABBITMQ_CONFIG_FILE": str(self.home / "rabbitmq.conf"),
        }

    def start(self) -> None:
        if not (self.home / "plugins").exists():
            self.home.mkdir(parents=True)
            (self.home / "plugins").write_text("[].\n")
            (self.home / "rabbitmq.conf").write_text(
                f"listeners.tcp.local = 127.0.0.1:{RABBIT_PORT}\n"
            )
            _chown(self.home, "rabbitmq")
        subprocess.run(
            ["rabbitmq-server", "-detached"], env=self._env(), check=True, capture_output=True
        )
        self._await_startup()

    def _await_startup(self) -> None:
        # await_startup gives up at once on a node not registered yet: ping until it is.
        deadline = time.monotonic() + 90
        while not self.running():
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"RabbitMQ node {RABBIT_NODE} did not start: see {self.home}/log"
                )
            time.sleep(0.5)
        self.ctl("await_startup", "--timeout", "90")

    def stop(self) -> None:
        self.ctl("stop")

    def stop_app(self) -> None:
        """The node stays, the broker inside it stops: every connection drops, and new
        ones are refused."""
        self.ctl("stop_app")

    def start_app(self) -> None:
        self.ctl("start_app")
        self._await_startup()

    def ctl(self, *args: str) -> None:
        _run("rabbitmqctl", "-q", "-n", RABBIT_NODE, *args)

    def running(self) -> bool:
        done = subprocess.run(
            ["rabbitmqctl", "-q", "-n", RABBIT_NODE, "-t", "5", "ping"],
            capture_output=True,
            timeout=30,
            check=False,
        )
        return done.returncode == 0

    def remove(self) -> None:
        """Stop the node if it still runs, and delete its data."""
        if self.running():
            self.stop()
        shutil.rmtree(self.home, ignore_errors=True)


class PostgresCluster:
    """A PostgreSQL cluster of our own, on `POSTGRES_PORT` unless told another port."""

    def __init__(self, workdir: Path, port: int = POSTGRES_PORT) -> None:
        self.port = port
        self.home = workdir / "postgres"
        self.data = self.home / "data"
        self.url = f"postgresql://postgres@127.0.0.1:{port}"

    def start(self) -> None:
        if not self.data.exists():
            self.home.mkdir(parents=True)
            _chown(self.home, "postgres")
            _run(
                str(POSTGRES_BIN / "initdb"),
                *("-D", str(self.data), "-A", "trust", "-U", "postgres"),
                user="postgres",
            )
        options = f"-p {self.port} -k {self.home} -c listen_addresses=127.0.0.1"
        _run(
            str(POSTGRES_BIN / "pg_ctl"),
            *("-D", str(self.data), "-o", options, "-l", str(self.home / "log"), "-w", "start"),
            user="postgres",
        )

    def stop(self, mode: str = "fast") -> None:
        _run(
            str(POSTGRES_BIN / "pg_ctl"),
            *("-D", str(self.data), "-m", mode, "-w", "stop"),
            user="postgres",
        )

    def running(self) -> bool:
        done = subprocess.run(
            [
                "runuser",
                "-u",
                "postgres",
                "--",
                str(POSTGRES_BIN / "pg_ctl"),
                "-D",
                str(self.data),
                "status",
            ],
            capture_output=True,
            timeout=30,
            check=False,
        )
        return done.returncode == 0

    def remove(self) -> None:
        if self.data.exists() and self.running():
            self.stop("immediate")
        shutil.rmtree(self.home, ignore_errors=True)


def wait_port_closed(port: int, timeout: float) -> bool:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) != 0:
                return True
        time.sleep(0.05)
    return False
