"""`cdrflow replay`: send rejected callbacks through the workers again, after a fix.

Each selected request is re-published on `cdr.raw` as its original envelope (same ingest
id, same received time, marked `replay`). The workers then treat it like any delivery:
reports of the request that were stored before are recognised by their ingest id and not
counted twice; one that now parses becomes a record with the `record_id` it would always
have had, and its `rejected_callbacks` row gets `resolved_at` and `record_id`. A replay that
fails again keeps the row open with the new reason. `replayed_at` and `replay_count` say
when and how often a row was sent again.

The command sends at most `DEFAULT_LIMIT` requests unless told otherwise, oldest first: a
replay of everything after a long outage is a choice, not an accident."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from cdrflow.amqp import BrokerLink, BrokerUnavailable, raw_message
from cdrflow.logs import get_logger
from cdrflow.settings import Settings
from schemas.envelope import RawEnvelope
from schemas.jsoncodec import loads

log = get_logger("cdrflow.replay")

CHUNK = 100
DEFAULT_LIMIT = 1000

# The open rejections a `ReplaySelection` picks ($1 to $4).
_SELECTED = """
FROM rejected_callbacks
WHERE resolved_at IS NULL
  AND ($1::text IS NULL OR source = $1)
  AND ($2::text IS NULL OR reason = $2)
  AND ($3::timestamptz IS NULL OR received_at >= $3)
  AND ($4::timestamptz IS NULL OR received_at < $4)
"""
_SELECT = f"""
SELECT * FROM (
    SELECT DISTINCT ON (ingest_id) ingest_id, source, tenant, provider, received_at, request, body
    {_SELECTED}
    ORDER BY ingest_id
) AS open_requests
ORDER BY received_at
LIMIT $5
"""  # noqa: S608 (values are parameters)
_SUMMARY = f"""
SELECT source, reason, count(DISTINCT ingest_id) AS requests, min(received_at) AS oldest
{_SELECTED}
GROUP BY source, reason
ORDER BY source, reason
"""
_MARK = """
UPDATE rejected_callbacks SET replayed_at = now(), replay_count = replay_count + 1
WHERE ingest_id = ANY($1::uuid[]) AND resolved_at IS NULL
"""


@dataclass(frozen=True)
class ReplaySelection:
    source: str | None = None
    reason: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int | None = None  # None: every selected request


@dataclass(frozen=True)
class OpenRejections:
    """What a dry run lists: unresolved requests of one source and reason."""

    source: str
    reason: str
    requests: int
    oldest: datetime


def envelope_of(row: Any) -> RawEnvelope:
    request = loads(row["request"]) if isinstance(row["request"], str) else row["request"]
    return RawEnvelope(
        ingest_id=row["ingest_id"],
        source=row["source"],
        tenant=row["tenant"],
        provider=row["provider"],
        received_at=row["received_at"],
        method=request.get("method", "POST"),
        path=request.get("path", ""),
        query=request.get("query", ""),
        content_type=request.get("content_type", ""),
        headers=request.get("headers", {}),
        client=request.get("client", ""),
        body=bytes(row["body"]),
        replay=True,
    )


async def select_requests(
    connection: asyncpg.Connection, selection: ReplaySelection
) -> list[RawEnvelope]:
    rows = await connection.fetch(
        _SELECT,
        selection.source,
        selection.reason,
        selection.since,
        selection.until,
        selection.limit,
    )
    return [envelope_of(row) for row in rows]


async def summarize(
    connection: asyncpg.Connection, selection: ReplaySelection
) -> list[OpenRejections]:
    """The selected requests by source and reason, whatever the limit."""
    rows = await connection.fetch(
        _SUMMARY, selection.source, selection.reason, selection.since, selection.until
    )
    return [OpenRejections(r["source"], r["reason"], r["requests"], r["oldest"]) for r in rows]


async def replay(
    settings: Settings,
    selection: ReplaySelection,
    *,
    dry_run: bool = False,
    selected: Callable[[int], None] = lambda _count: None,
    progress: Callable[[int], None] = lambda _sent: None,
) -> int:
    """Send the selected requests again; returns how many were sent (or would be).
    `selected` is told how many were selected, `progress` the size of each chunk RabbitMQ
    confirmed."""
    connection = await asyncpg.connect(settings.database_url)
    try:
        envelopes = await select_requests(connection, selection)
        selected(len(envelopes))
        if dry_run or not envelopes:
            return len(envelopes)
        await _send(settings, connection, envelopes, progress)
    finally:
        await connection.close()
    log.info(
        "replay_sent", requests=len(envelopes), source=selection.source, reason=selection.reason
    )
    return len(envelopes)


async def _send(
    settings: Settings,
    connection: asyncpg.Connection,
    envelopes: list[RawEnvelope],
    progress: Callable[[int], None],
) -> None:
    link = BrokerLink(settings.amqp_url, settings.topology(), name="cdrflow-replay")
    await link.start()
    try:
        if not link.ready:
            raise BrokerUnavailable("cannot reach RabbitMQ")
        for start in range(0, len(envelopes), CHUNK):
            chunk = envelopes[start : start + CHUNK]
            message = raw_message([e.encode() for e in chunk])
            await link.publish(
                message, settings.raw_queue, mandatory=True, timeout=settings.confirm_timeout
            )
            await connection.execute(_MARK, [e.ingest_id for e in chunk])
            progress(len(chunk))
    finally:
        await link.close()
