"""Building an index without stopping writes, in a way a migration can run again."""

from __future__ import annotations

import asyncpg

from cdrflow.logs import get_logger

log = get_logger("cdrflow.migrate")

_VALID = "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass($1)"


async def build_concurrently(connection: asyncpg.Connection, name: str, create: str) -> None:
    """Run `create` (a `CREATE [UNIQUE] INDEX CONCURRENTLY name ...` statement) unless the
    index `name` exists and is valid; an interrupted CONCURRENTLY build leaves an invalid
    index, dropped and built again."""
    valid = await connection.fetchval(_VALID, name)
    if valid:
        return
    if valid is False:
        await connection.execute(f"DROP INDEX CONCURRENTLY {name}")
    await connection.execute(create)
    log.info("index_built", index=name)
