"""The `cdrflow` command as operators run it: start-up checks, migrate, graceful stop."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from aio_pika.abc import AbstractChannel

from cdrflow.settings import Settings
from schemas.jsoncodec import dumps
from tests.support.broker import take_envelopes
from tests.support.env import POSTGRES_URL, RUN_ID
from tests.support.sources import ENVIRON, SOURCES_TOML, callback_path
from tests.support.workers import settings_env
from workers.migrate import LATEST, migrate, schema_version


def cdrflow(
    *args: str, env: dict[str, str], timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cdrflow.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        (
            '[sources.cc]\nprovider = "nxcloud.cc"\ntoken = "0123456789abcdef"\n',
            "source 'cc': field 'provider'",
        ),
        (
            '[sources.cc]\nprovider = "nxcloud.voice_dr"\ntoken = "short"\n',
            "source 'cc': field 'token'",
        ),
        (
            '[sources.cc]\nprovider = "nxcloud.voice_dr"\ntoken_env = "NOT_SET_ANYWHERE"\n',
            "field 'token_env'",
        ),
        (
            '[sources.cc]\nprovider = "nxcloud.voice_dr"\ntoken = "0123456789abcdef"\n'
            'timezone = "Mars/Base"\n',
            "field 'timezone'",
        ),
        (
            '[sources.cc]\nprovider = "nxcloud.voice_dr"\ntoken = "0123456789abcdef"\nextra = 1\n',
            "field 'extra': unknown key",
        ),
    ],
)
def test_a_wrong_sources_file_stops_the_ingress_at_once_with_one_line(
    tmp_path: Path, toml: str, expected: str
) -> None:
    path = tmp_path / "sources.toml"
    path.write_text(toml)
    result = cdrflow("ingress", "--port", "0", env={"CDRFLOW_SOURCES": str(path)}, timeout=20)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]
    assert str(path) in lines[0]


def test_a_missing_sources_setting_is_one_line_too() -> None:
    result = cdrflow("worker", env={"CDRFLOW_SOURCES": ""}, timeout=20)
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == "cdrflow: CDRFLOW_SOURCES is not set: it names the sources TOML file"
    )


def test_check_lists_the_sources(tmp_path: Path) -> None:
    path = tmp_path / "sources.toml"
    path.write_text(SOURCES_TOML)
    result = cdrflow("check", env={"CDRFLOW_SOURCES": str(path), **ENVIRON})
    assert result.returncode == 0, result.stderr
    assert (
        "nx-cc: nxcloud.call_center_report tenant=acme timezone=+08:00 signing=none"
        in result.stdout
    )
    assert "tok-" not in result.stdout  # never the tokens


async def test_migrate_creates_the_database_and_is_idempotent() -> None:
    url = f"{POSTGRES_URL}/cdrflow_migrate_{RUN_ID}"
    try:
        first, second = await asyncio.gather(migrate(url), migrate(url))  # concurrent runs
        assert sorted(first + second) == list(range(1, LATEST + 1))
        assert await migrate(url) == []
        connection = await asyncpg.connect(url)
        try:
            assert await schema_version(connection) == LATEST
            tables = {
                r["tablename"]
                for r in await connection.fetch(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
                )
            }
        finally:
            await connection.close()
        assert {
            "call_records",
            "deliveries",
            "rejected_callbacks",
            "outbox",
            "cdrflow_migrations",
        } <= tables
        result = cdrflow("migrate", env={"CDRFLOW_DATABASE_URL": url})
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"schema at version {LATEST} (up to date)"
    finally:
        admin = await asyncpg.connect(f"{POSTGRES_URL}/postgres")
        await admin.execute(f'DROP DATABASE IF EXISTS "cdrflow_migrate_{RUN_ID}" WITH (FORCE)')
        await admin.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def test_sigterm_lets_requests_in_flight_finish_and_loses_none(
    settings: Settings, channel: AbstractChannel, tmp_path: Path
) -> None:
    sources = tmp_path / "sources.toml"
    sources.write_text(SOURCES_TOML)
    port = free_port()
    env = {**os.environ, **ENVIRON, **settings_env(settings), "CDRFLOW_SOURCES": str(sources)}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cdrflow.cli",
        "ingress",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(200):
                try:
                    async with session.get(base + "/readyz") as ready:
                        if ready.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)

            async def push(n: int) -> int:
                body = dumps({"callSessionId": f"inflight-{n}"})
                try:
                    async with session.post(base + callback_path("nx-cc"), data=body) as response:
                        await response.read()
                        return response.status
                except aiohttp.ClientError:
                    return 0  # refused: the server had stopped accepting

            pushes = [asyncio.create_task(push(n)) for n in range(300)]
            await asyncio.sleep(0.01)
            process.send_signal(signal.SIGTERM)
            statuses = await asyncio.gather(*pushes)
        _, logged = await asyncio.wait_for(process.communicate(), 30)
        assert process.returncode == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.communicate()
    accepted = statuses.count(200)
    assert accepted > 0
    assert set(statuses) <= {200, 0}  # every request answered was made durable: no 503, no 500
    envelopes = await take_envelopes(channel, settings.raw_queue, count=accepted, timeout=15)
    assert len(envelopes) == accepted  # every 200 is in the queue
    assert b"ingress_stopped" in logged
