"""The processes under test (`cdrflow ingress`, `cdrflow worker`, the bare handler), their
CPU time and peak memory from /proc, and the settings each measurement runs them with."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from cdrflow.settings import Settings
from tests.support.env import unique
from tests.support.processes import free_port
from tests.support.sources import ENVIRON, SOURCES_TOML
from tests.support.workers import settings_env
from tools.bench.checkout import Checkout

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
CLI = ("cdrflow.cli",)
NO_DATABASE = "postgresql://unused/none"  # for settings of the ingress alone: it never connects


def bench_settings(amqp_url: str, database_url: str, workdir: Path) -> Settings:
    """The defaults users run, with queue and exchange names of this measurement alone."""
    name = unique("bench")
    return Settings(
        amqp_url=amqp_url,
        database_url=database_url,
        raw_queue=f"{name}.raw",
        dead_exchange=f"{name}.dead",
        dead_queue=f"{name}.dead",
        records_exchange=f"{name}.records",
        spool_dir=str(workdir / f"{name}.spool"),
        log_format="json",
    )


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def peak_rss_mb(pid: int) -> float:
    """VmHWM: the most resident memory the process has had so far."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for {pid}")


@dataclass
class Served:
    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def failure(self) -> str:
        tail = self.log.read_text(errors="replace").splitlines()[-15:]
        return f"process {self.pid} exited with {self.process.returncode}:\n" + "\n".join(tail)

    @property
    def pid(self) -> int:
        return self.process.pid


def _spawn(
    args: list[str],
    settings: Settings | None,
    workdir: Path,
    log: str,
    code: Checkout | None = None,
) -> subprocess.Popen[bytes]:
    """`python -m args`, from this tree or from `code`'s."""
    env = dict(os.environ)
    if settings is not None:
        sources = workdir / "sources.toml"
        sources.write_text(SOURCES_TOML)
        env.update({**ENVIRON, **settings_env(settings), "CDRFLOW_SOURCES": str(sources)})
    with (workdir / log).open("ab") as output:
        return subprocess.Popen(
            [sys.executable, "-m", *args],
            env=env if code is None else code.environment(env),
            cwd=None if code is None else code.root,
            stdout=output,
            stderr=subprocess.STDOUT,
        )


async def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        for _ in range(300):
            if process.poll() is not None:
                return
            await asyncio.sleep(0.1)
        process.kill()
        process.wait()


async def _wait_ready(served: Served) -> None:
    url = served.url + "/readyz"
    async with aiohttp.ClientSession() as session:
        for _ in range(600):
            if served.process.poll() is not None:
                raise RuntimeError(served.failure())
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(url) as answer:
                    if answer.status == 200:
                        return
            await asyncio.sleep(0.05)
    raise RuntimeError(f"{url} never became ready; see {served.log}")


@contextlib.asynccontextmanager
async def bare_handler(workdir: Path) -> AsyncIterator[Served]:
    port = free_port()
    process = _spawn(["tools.bench.bare", str(port)], None, workdir, "bare.log")
    served = Served(process, f"http://127.0.0.1:{port}", workdir / "bare.log")
    try:
        await _wait_ready(served)
        yield served
    finally:
        await _stop(process)


@contextlib.asynccontextmanager
async def ingress(
    settings: Settings, workdir: Path, code: Checkout | None = None
) -> AsyncIterator[Served]:
    port = free_port()
    args = ["cdrflow.cli", "ingress", "--host", "127.0.0.1", "--port", str(port)]
    process = _spawn(args, settings, workdir, f"{settings.raw_queue}.ingress.log", code)
    served = Served(
        process, f"http://127.0.0.1:{port}", workdir / f"{settings.raw_queue}.ingress.log"
    )
    try:
        await _wait_ready(served)
        yield served
    finally:
        await _stop(process)


@contextlib.asynccontextmanager
async def workers(
    settings: Settings,
    workdir: Path,
    count: int = 1,
    command: tuple[str, ...] = CLI,
    code: Checkout | None = None,
) -> AsyncIterator[list[Served]]:
    """`command`: how each process starts (`python -m` and its first arguments); `code`:
    the tree it starts in (this one when None)."""
    logs = [workdir / f"{settings.raw_queue}.worker{n}.log" for n in range(count)]
    served = [
        Served(_spawn([*command, "worker"], settings, workdir, log.name, code), "", log)
        for log in logs
    ]
    try:
        yield served
    finally:
        await asyncio.gather(*(_stop(one.process) for one in served))
        for one in served:
            if one.process.returncode not in (0, -signal.SIGTERM, -signal.SIGKILL):
                raise RuntimeError(one.failure())


def alive(served: list[Served]) -> None:
    for one in served:
        if one.process.poll() is not None:
            raise RuntimeError(one.failure())


@contextlib.asynccontextmanager
async def onefile_pipeline(
    settings: Settings, workdir: Path, count: int
) -> AsyncIterator[tuple[Served, list[Served]]]:
    """`tools.bench.onefile` with `settings`: its ingress, ready, and `count` workers."""
    module, name = "tools.bench.onefile", settings.raw_queue
    port = free_port()
    started: list[Served] = []
    try:
        served = Served(
            _spawn([module, "ingress", str(port)], settings, workdir, f"{name}.ingress.log"),
            f"http://127.0.0.1:{port}",
            workdir / f"{name}.ingress.log",
        )
        started.append(served)
        for log in (f"{name}.worker{n}.log" for n in range(count)):
            process = _spawn([module, "worker"], settings, workdir, log)
            started.append(Served(process, "", workdir / log))
        await _wait_ready(served)
        yield served, started[1:]
    finally:
        await asyncio.gather(*(_stop(one.process) for one in started))
