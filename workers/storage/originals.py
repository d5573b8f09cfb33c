"""What a revision keeps of the request that brought it: the original request (its bytes
exactly as received, with what a provider's parser reads beside them) and the parsed
payload, packed into `originals` rows of at most `BUNDLE_ITEMS` items.

Many to a row, because PostgreSQL compresses a value only once its row passes about 2 KB:
a callback's bytes alone never reach that, and a bundle of the calls stored together does,
where lz4 finds their shared keys and values (docs/storage.md has the measured sizes). A
revision names its bundle and the two items' places in it; SQL reads them back through the
views `record_history` and `record_payloads` (migration 8). A payload that is the body as
received, byte for byte (most JSON bodies), is not stored again: the revision names its
original request's item as its payload's too (migration 15)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from schemas.envelope import RawEnvelope
from schemas.jsoncodec import dumps, loads_exact

Connection = asyncpg.Connection | PoolConnectionProxy

# Enough calls for lz4 to find what they share (50 calls compress to 0.28 of their bytes,
# 10 to 0.36), few enough that reading one revision decompresses some 70 KB, not a batch:
# 64 calls with a payload of their own, up to 127 whose payload is their body.
BUNDLE_ITEMS = 128
_HEADER_END = b"\n"

# Bundles numbered as they are inserted (`cdrflow migrate`'s data step).
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


def payload_is_body(envelope: RawEnvelope, payload: bytes) -> bool:
    """Whether the parsed payload's bytes are the body as received, exactly: then it is
    not stored again (the body is valid UTF-8 JSON, since the payload is)."""
    return payload == envelope.body


@dataclass(frozen=True, slots=True)
class Place:
    """Where a revision's original request and parsed payload are. A payload whose bytes
    are the request's body exactly (a JSON body as our writer renders it: most are) is not
    stored again: its `payload_item` is then the `original_item`, and the payload is that
    item's body (migration 15)."""

    bundle_id: int
    original_item: int  # 1-based, as SQL arrays count
    payload_item: int


_RESERVE = "SELECT array_agg(nextval('originals_bundle_seq')) FROM generate_series(1, $1)"
# With the ids taken before (`Bundles.reserve`): the batch's rows name them already.
# Stored at or after every record and revision that names it ($3: the latest `stored_at`
# of the batch's records), as readers bound it: see NEW_REVISIONS.
_INSERT_RESERVED = """
INSERT INTO originals (bundle_id, items, stored_at)
SELECT u.bundle_id, array_agg(u.item ORDER BY u.n), greatest(now(), $3::timestamptz)
FROM unnest($1::bigint[], $2::bytea[]) WITH ORDINALITY AS u(bundle_id, item, n)
GROUP BY u.bundle_id
"""
_EMPTY = b""


class Bundles:
    """A batch's bundles, planned for every content before the batch knows which contents
    are new: each content's place goes into the staging table, so that a new record names
    its bundle in the insert that creates it. `write` then stores only what the new
    revisions need: the other items stay empty (a few bytes each)."""

    def __init__(self, requests: Sequence[tuple[RawEnvelope, bytes]]) -> None:
        self._items: list[list[bytes]] = []
        self._owners: list[list[list[int]]] = []  # per item, the contents that need it
        self._places: list[tuple[int, int, int]] = []
        originals: dict[uuid.UUID, int] = {}
        for index, (envelope, payload) in enumerate(requests):
            if not self._items or len(self._items[-1]) + 2 > BUNDLE_ITEMS:
                self._items.append([])
                self._owners.append([])
                originals = {}
            items, owners = self._items[-1], self._owners[-1]
            original = originals.get(envelope.ingest_id)
            if original is None:
                items.append(original_of(envelope))
                owners.append([])
                original = originals[envelope.ingest_id] = len(items)
            owners[original - 1].append(index)
            if payload_is_body(envelope, payload):
                self._places.append((len(self._items) - 1, original, original))
                continue
            items.append(payload)
            owners.append([index])
            self._places.append((len(self._items) - 1, original, len(items)))
        self._ids: list[int] = []

    async def reserve(self, connection: Connection) -> None:
        if self._items:
            self._ids = list(await connection.fetchval(_RESERVE, len(self._items)))

    def place(self, index: int) -> Place:
        bundle, original, payload = self._places[index]
        return Place(self._ids[bundle], original, payload)

    async def write(
        self, connection: Connection, kept: set[int], records_stored_at: datetime | None
    ) -> None:
        """Store the bundles, with the items of the contents in `kept` (by index), at or
        after `records_stored_at`, the latest `stored_at` of the records they belong to."""
        ids: list[int] = []
        items: list[bytes] = []
        for bundle_id, bundle, owners in zip(self._ids, self._items, self._owners, strict=True):
            if not any(kept.intersection(owner) for owner in owners):
                continue
            for item, owner in zip(bundle, owners, strict=True):
                ids.append(bundle_id)
                items.append(item if kept.intersection(owner) else _EMPTY)
        if ids:
            await connection.execute(_INSERT_RESERVED, ids, items, records_stored_at)
