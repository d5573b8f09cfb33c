"""Waiting for the pipeline to get somewhere, with a generous upper bound: the tests
assert on what happened, never on how fast."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout: float = 12.0, interval: float = 0.05
) -> bool:
    """Whether `check` came true within `timeout`. The default stays under the per-test limit
    (20 s) so that a wait that never ends fails on the test's own assertion."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        if await check():
            return True
        if loop.time() > deadline:
            return False
        await asyncio.sleep(interval)


async def one(db: asyncpg.Connection, query: str, *args: Any) -> asyncpg.Record:
    """The single row a query must return."""
    row = await db.fetchrow(query, *args)
    assert row is not None, f"no row for {query}"
    return row
