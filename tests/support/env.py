"""Where the test services are, names unique to this test run, scratch databases, and the
environment of the `cdrflow` processes a test starts."""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import asyncpg
import coverage

AMQP_URL = os.environ.get("CDRFLOW_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
POSTGRES_URL = os.environ.get("CDRFLOW_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432")
RUN_ID = uuid.uuid4().hex[:10]
_counter = itertools.count(1)


def unique(prefix: str) -> str:
    """A name no other test of this run or of another run uses."""
    return f"{prefix}.{RUN_ID}.{next(_counter)}"


async def drop_database(name: str) -> None:
    admin = await asyncpg.connect(f"{POSTGRES_URL}/postgres")
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@asynccontextmanager
async def scratch_database(label: str, *, create: bool = True) -> AsyncIterator[str]:
    """The URL of a database of this test's own, dropped afterwards. With `create=False`
    it does not exist yet: creating it is left to the code under test."""
    name = f"cdrflow_{label}_{RUN_ID}"
    if create:
        admin = await asyncpg.connect(f"{POSTGRES_URL}/postgres")
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
    try:
        yield f"{POSTGRES_URL}/{name}"
    finally:
        await drop_database(name)


def child_env(*overrides: Mapping[str, str]) -> dict[str, str]:
    """The environment of a `cdrflow` command a test runs: this process's, then `overrides`.

    When this run measures coverage (`make coverage`), the command is measured too: this is
    what coverage's `patch = subprocess` exports to every child, given here only to the
    commands. The fault tests' busy worker processes stay unmeasured: tracing them made
    those tests several times slower, for lines their in-process twins cover anyway."""
    env = dict(os.environ)
    for override in overrides:
        env.update(override)
    measuring = coverage.Coverage.current()
    if measuring is not None:
        env["COVERAGE_PROCESS_CONFIG"] = measuring.config.serialize()
    return env
