"""How a batch's original requests are packed into bundles (`workers.storage.originals`);
what PostgreSQL makes of them is in tests/integration/test_store_single_revision.py."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from schemas.envelope import RawEnvelope
from workers.storage.originals import BUNDLE_ITEMS, Bundles, original_of, read_original


def request(body: bytes, reading: int = 0, ingest_id: uuid.UUID | None = None) -> RawEnvelope:
    return RawEnvelope(
        ingest_id or uuid.uuid4(),
        "nx-dr",
        "acme",
        "nxcloud.voice_dr",
        datetime(2026, 11, 2, tzinfo=UTC),
        "GET",
        "/v1/callbacks/nx-dr",
        "a=1&b=%20x",
        "",
        body,
        reading=reading,
    )


class Recorder:
    """Stands in for the connection: hands out ids, keeps what would be inserted."""

    def __init__(self) -> None:
        self.inserted: list[tuple[int, bytes]] = []

    async def fetchval(self, query: str, count: int) -> list[int]:
        return [100 + n for n in range(count)]

    async def execute(
        self, query: str, ids: list[int], items: list[bytes], stored_at: datetime | None
    ) -> None:
        self.inserted += list(zip(ids, items, strict=True))


def test_an_original_is_its_header_and_the_body_exactly() -> None:
    body = b"\x00\xff{k=v, name=a\nb}\n"
    header, kept = read_original(original_of(request(body, reading=2)))
    assert kept == body
    assert header == {"method": "GET", "content_type": "", "query": "a=1&b=%20x", "reading": 2}
    assert "reading" not in read_original(original_of(request(body)))[0]


async def test_a_request_with_several_items_is_stored_once_and_unneeded_items_stay_empty() -> None:
    shared = request(b"[1,2]")
    alone = request(b" 3")
    bundles = Bundles([(shared, b"1"), (shared, b"2"), (alone, b"3")])
    connection: Any = Recorder()
    await bundles.reserve(connection)
    places = [bundles.place(n) for n in range(3)]
    assert [(p.bundle_id, p.original_item, p.payload_item) for p in places] == [
        (100, 1, 2),
        (100, 1, 3),
        (100, 4, 5),
    ]
    await bundles.write(connection, {1}, None)  # only the second item is a new revision
    assert connection.inserted == [
        (100, original_of(shared)),
        (100, b""),
        (100, b"2"),
        (100, b""),
        (100, b""),
    ]


async def test_bundles_hold_at_most_their_items_and_one_not_needed_is_not_written() -> None:
    requests = [(request(b"%d" % n), b"p") for n in range(BUNDLE_ITEMS)]
    bundles = Bundles(requests)
    connection: Any = Recorder()
    await bundles.reserve(connection)
    assert {bundles.place(n).bundle_id for n in range(len(requests))} == {100, 101}
    await bundles.write(connection, {0}, None)
    assert {bundle for bundle, _ in connection.inserted} == {100}
    assert len(connection.inserted) == BUNDLE_ITEMS


async def test_a_payload_that_is_the_body_exactly_is_the_original_item() -> None:
    same = request(b'{"a":1}')
    spaced = request(b'{"a": 1}')
    shared = request(b"[1]")
    bundles = Bundles([(same, b'{"a":1}'), (spaced, b'{"a":1}'), (shared, b"1"), (shared, b"[1]")])
    connection: Any = Recorder()
    await bundles.reserve(connection)
    places = [bundles.place(n) for n in range(4)]
    assert [(p.original_item, p.payload_item) for p in places] == [(1, 1), (2, 3), (4, 5), (4, 4)]
    await bundles.write(connection, {0, 3}, None)
    assert connection.inserted == [
        (100, original_of(same)),  # and the payload: its body
        (100, b""),
        (100, b""),
        (100, original_of(shared)),
        (100, b""),
    ]
