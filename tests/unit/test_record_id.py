"""A record's id, pinned: the uuid5 of RECORD_NAMESPACE and "{source}\\n{external_id}" in
UTF-8. Stored rows, published messages and SQL's `record_id_for` (migration 13) all hold
these values; a change here orphans every stored record."""

from __future__ import annotations

import uuid

import pytest

from schemas.record import RECORD_NAMESPACE, record_id_for

PINNED = [
    ("nx-cc", "abc", "333a9a6b-323d-5f32-8023-ed7f8ad70917"),
    ("", "", "ccce43f0-c010-54d0-9fbe-b09a96c700e5"),
    ("é" * 100, "日本", "9fa54434-3681-537b-8c80-cfde384bb096"),
]


@pytest.mark.parametrize(("source", "external_id", "expected"), PINNED)
def test_record_id_is_the_pinned_uuid5(source: str, external_id: str, expected: str) -> None:
    assert record_id_for(source, external_id) == uuid.UUID(expected)
    assert uuid.uuid5(RECORD_NAMESPACE, f"{source}\n{external_id}") == uuid.UUID(expected)
