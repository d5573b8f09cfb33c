"""What a revision keeps of the request that brought it: the original request (its bytes
exactly as received, with what a provider's parser reads beside them) and the parsed
payload, packed into `originals` rows of at most `BUNDLE_ITEMS` items.

Many to a row, because PostgreSQL compresses a value only once its row passes about 2 KB:
a callback's bytes alone never reach that, and a bundle of the calls stored together does,
where lz4 finds their shared keys and values (docs/storage.md has the measured sizes). A
revision names its bundle and the two items' places in it; SQL reads them back through the
views `record_history` and `record_payloads` (migration 8)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from schemas.envelope import RawEnvelope
from schemas.jsoncodec import dumps, loads_exact

Connection = asyncpg.Connection | PoolConnectionProxy

# Enough calls for lz4 to find what they share (50 calls compress to 0.28 of their bytes,
# 10 to 0.36), few enough that reading one revision decompresses some 60 KB, not a batch.
BUNDLE_ITEMS = 128
_HEADER_END = b"\n"

INSERT = """
INSERT INTO originals (items)
SELECT array_agg(u.item ORDER BY u.n)
FROM unnest($1::bytea[], $2::integer[]) WITH ORDINALITY AS u(item, bundle, n)
GROUP BY u.bundle ORDER BY u.bundle
RETURNING bundle_id
"""


def original_of(envelope: RawEnvelope) -> bytes:
    """The request as a provider's parser reads it: a JSON header line, then the body."""
    header: dict[str, Any] = {
        "method": envelope.method,
        "content_type": envelope.content_type,
        "query": envelope.query,
    }
    if envelope.reading:
        header["reading"] = envelope.reading
    return dumps(header) + _HEADER_END + envelope.body


def read_original(original: bytes) -> tuple[dict[str, Any], bytes]:
    """The header and the body of what `original_of` made."""
    header, _, body = original.partition(_HEADER_END)
    return loads_exact(header), body


@dataclass(frozen=True, slots=True)
class Place:
    """Where a revision's original request and parsed payload are."""

    bundle_id: int
    original_item: int  # 1-based, as SQL arrays count
    payload_item: int


@dataclass
class _Bundle:
    items: list[bytes]
    originals: dict[uuid.UUID, int]  # a request's item, so that its items share it


async def store(
    connection: Connection, requests: Sequence[tuple[RawEnvelope, bytes]]
) -> list[Place]:
    """Store each (request, parsed payload as JSON) pair; their places, in order. A request
    carrying several items is stored once per bundle."""
    bundles: list[_Bundle] = []
    places: list[tuple[int, int, int]] = []
    for envelope, payload in requests:
        if not bundles or len(bundles[-1].items) + 2 > BUNDLE_ITEMS:
            bundles.append(_Bundle([], {}))
        bundle = bundles[-1]
        original = bundle.originals.get(envelope.ingest_id)
        if original is None:
            bundle.items.append(original_of(envelope))
            original = bundle.originals[envelope.ingest_id] = len(bundle.items)
        bundle.items.append(payload)
        places.append((len(bundles) - 1, original, len(bundle.items)))
    items = [item for bundle in bundles for item in bundle.items]
    numbers = [n for n, bundle in enumerate(bundles) for _ in bundle.items]
    rows = await connection.fetch(INSERT, items, numbers)
    # Identities are handed out in the order the rows are inserted, which is the bundles'.
    ids = sorted(row["bundle_id"] for row in rows)
    return [Place(ids[bundle], original, payload) for bundle, original, payload in places]
