"""A database at an earlier schema version, to test `cdrflow migrate` from it."""

from __future__ import annotations

import asyncpg

from workers.storage.migrate import available


async def apply_up_to(url: str, version: int) -> None:
    """Apply the migrations up to `version` (their SQL alone) to the empty database `url`."""
    connection = await asyncpg.connect(url)
    try:
        await connection.execute(
            "CREATE TABLE cdrflow_migrations (version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for step in available():
            if step.version <= version:
                await connection.execute(step.sql)
                await connection.execute(
                    "INSERT INTO cdrflow_migrations VALUES ($1, $2)", step.version, step.name
                )
    finally:
        await connection.close()
