"""`cdrflow` commands run as operators run them: one-shot commands, and a served ingress."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

from cdrflow.settings import Settings
from tests.support.env import child_env
from tests.support.sources import ENVIRON, SOURCES_TOML
from tests.support.waiting import eventually
from tests.support.workers import settings_env

COMMAND = (sys.executable, "-m", "cdrflow.cli")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def cdrflow(
    *args: str, env: Mapping[str, str], timeout: float = 15
) -> subprocess.CompletedProcess[str]:
    """Run a command to its end."""
    return subprocess.run(
        [*COMMAND, *args],
        env=child_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


async def start_cdrflow(
    *args: str, env: Mapping[str, str], **options: Any
) -> asyncio.subprocess.Process:
    """Start a command; `options` as for asyncio.create_subprocess_exec."""
    return await asyncio.create_subprocess_exec(*COMMAND, *args, env=child_env(env), **options)


def command_env(settings: Settings, workdir: Path, **extra: str) -> dict[str, str]:
    """What a command needs to run with `settings` and the test sources."""
    sources = workdir / "sources.toml"
    sources.write_text(SOURCES_TOML)
    return {**ENVIRON, **settings_env(settings), "CDRFLOW_SOURCES": str(sources), **extra}


class IngressProcess:
    def __init__(self, process: asyncio.subprocess.Process, port: int, log: Path) -> None:
        self.process = process
        self.url = f"http://127.0.0.1:{port}"
        self.log = log

    async def ready(self) -> bool:
        try:
            async with aiohttp.ClientSession() as session, session.get(self.url + "/readyz") as r:
                return r.status == 200
        except aiohttp.ClientError:
            return False

    def terminate(self) -> None:
        self.process.send_signal(signal.SIGTERM)

    async def exit_status(self, timeout: float = 15) -> int:
        return await asyncio.wait_for(self.process.wait(), timeout)

    def logged(self) -> str:
        return self.log.read_text()


@asynccontextmanager
async def ingress_process(
    settings: Settings, workdir: Path, name: str = "ingress", **extra_env: str
) -> AsyncIterator[IngressProcess]:
    """`cdrflow ingress` on a free port, ready (its log in `workdir/<name>.log`); killed at
    the end if it is still running."""
    port = free_port()
    log = workdir / f"{name}.log"
    with log.open("ab") as output:
        process = await start_cdrflow(
            *("ingress", "--host", "127.0.0.1", "--port", str(port)),
            env=command_env(settings, workdir, **extra_env),
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    served = IngressProcess(process, port, log)
    try:
        assert await eventually(served.ready, timeout=15), served.logged()
        yield served
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
