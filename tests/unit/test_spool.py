"""The spool's log format on a real directory: group commit, torn tails, checksums,
rotation, the bound, and the drain position across restarts."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

import ingress.spool_format
from ingress.ingress_metrics import IngressMetrics
from ingress.spool import Spool, SpoolFull
from ingress.spool_format import HEADER, MAGIC, SpoolError, encode_record, scan_records


async def opened(directory: Path, **options: int) -> Spool:
    return await Spool.open(
        directory, max_bytes=options.pop("max_bytes", 1 << 20), metrics=IngressMetrics(), **options
    )


async def drain_all(spool: Spool, max_records: int = 1000) -> list[bytes]:
    drained: list[bytes] = []
    while (batch := await spool.next_batch(max_records, 1 << 20)) is not None:
        drained.extend(batch.payloads)
        await spool.confirm(batch)
    return drained


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("seg-*.log"))


def counted(spool: Spool, name: str) -> float | None:
    return spool.metrics.registry.get_sample_value(name)


def torn(spool: Spool) -> float | None:
    return counted(spool, "cdrflow_spool_torn_records_total")


PAYLOADS = [f"callback-{n}".encode() * (n + 1) for n in range(5)]


# --- the record format -------------------------------------------------------------


def test_scan_reads_back_what_was_encoded() -> None:
    data = MAGIC + b"".join(encode_record(p, 1_700_000_000_000 + n) for n, p in enumerate(PAYLOADS))
    found = scan_records(data, len(MAGIC))
    assert [r.payload for r in found.records] == PAYLOADS
    assert [r.spooled_at_ms for r in found.records] == [1_700_000_000_000 + n for n in range(5)]
    assert found.end == len(data)
    assert not found.damaged


@pytest.mark.parametrize("cut", [1, HEADER.size - 1, HEADER.size, HEADER.size + 3])
def test_a_torn_last_record_is_detected_and_what_precedes_it_kept(cut: int) -> None:
    whole = b"".join(encode_record(p, 1) for p in PAYLOADS)
    last = encode_record(b"the last one", 1)
    found = scan_records(whole + last[:cut], 0)
    assert [r.payload for r in found.records] == PAYLOADS
    assert found.end == len(whole)
    assert found.damaged


@pytest.mark.parametrize("where", ["length", "checksum", "time", "payload"])
def test_a_changed_byte_anywhere_in_a_record_fails_its_checksum(where: str) -> None:
    record = bytearray(encode_record(b"a payload of some length", 5))
    index = {"length": 0, "checksum": 4, "time": 8, "payload": HEADER.size + 3}[where]
    record[index] ^= 0x01
    first = encode_record(b"first", 5)
    found = scan_records(first + bytes(record), 0)
    assert [r.payload for r in found.records] == [b"first"]
    assert found.damaged


# --- appending and recovering ------------------------------------------------------


async def test_appends_survive_a_restart_in_order(tmp_path: Path) -> None:
    spool = await opened(tmp_path)
    for payload in PAYLOADS:
        await spool.append(payload)
    assert (spool.records, counted(spool, "cdrflow_spool_writes_total")) == (5, 5)
    await spool.close()

    again = await opened(tmp_path)
    assert again.records == 5
    assert again.bytes == sum(HEADER.size + len(p) for p in PAYLOADS)
    assert await drain_all(again, max_records=2) == PAYLOADS
    assert (again.records, again.bytes, again.oldest_ms) == (0, 0, None)
    assert counted(again, "cdrflow_spool_drained_total") == 5
    assert counted(again, "cdrflow_spool_records") == 0
    assert segments(tmp_path) == []  # all confirmed: deleted
    await again.close()


async def test_concurrent_appends_share_one_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    syncs: list[int] = []
    real = ingress.spool_format.write_all_and_sync

    def counting(fd: int, data: bytes) -> None:
        syncs.append(len(data))
        real(fd, data)

    monkeypatch.setattr(ingress.spool_format, "write_all_and_sync", counting)
    spool = await opened(tmp_path)
    await asyncio.gather(*(spool.append(b"x%d" % n) for n in range(100)))
    assert spool.records == 100
    # one for the segment's magic, then groups: the first append's alone, the rest together
    assert len(syncs) <= 3
    await spool.close()
    assert len(await drain_all(await opened(tmp_path))) == 100


async def test_a_torn_tail_is_cut_counted_once_and_the_rest_delivered(tmp_path: Path) -> None:
    spool = await opened(tmp_path)
    for payload in PAYLOADS:
        await spool.append(payload)
    await spool.close()
    [segment] = segments(tmp_path)
    intact = segment.stat().st_size
    with segment.open("ab") as file:  # what a kill in the middle of a write leaves
        file.write(encode_record(b"never answered", 1)[:20])

    recovered = await opened(tmp_path)
    assert torn(recovered) == 1
    assert recovered.records == 5
    assert segment.stat().st_size == intact  # cut, so it is not found again
    await recovered.close()

    again = await opened(tmp_path)
    assert torn(again) == 0
    assert await drain_all(again) == PAYLOADS
    await again.close()


async def test_a_bad_checksum_in_the_last_record_skips_only_that_record(tmp_path: Path) -> None:
    spool = await opened(tmp_path)
    for payload in PAYLOADS:
        await spool.append(payload)
    await spool.close()
    [segment] = segments(tmp_path)
    data = bytearray(segment.read_bytes())
    data[-1] ^= 0xFF
    segment.write_bytes(bytes(data))

    recovered = await opened(tmp_path)
    assert torn(recovered) == 1
    assert await drain_all(recovered) == PAYLOADS[:-1]
    await recovered.close()


async def test_segments_rotate_and_each_is_deleted_once_drained(tmp_path: Path) -> None:
    spool = await opened(tmp_path, segment_bytes=100)
    payloads = [b"%03d" % n * 10 for n in range(12)]  # 30 bytes + header each
    for payload in payloads:
        await spool.append(payload)
    assert len(segments(tmp_path)) >= 4
    batch = await spool.next_batch(1000, 1 << 20)
    assert batch is not None
    await spool.confirm(batch)  # a batch never spans segments
    assert len(segments(tmp_path)) == len(set(segments(tmp_path)))
    first_left = segments(tmp_path)[0]
    assert first_left.name > f"seg-{batch.sequence:020d}.log"
    rest = await drain_all(spool)
    assert batch.payloads + rest == payloads
    assert segments(tmp_path) == []
    await spool.append(b"after")  # writing starts a new segment, with a higher number
    assert segments(tmp_path)[0].name > first_left.name
    await spool.close()


async def test_the_spool_is_bounded_and_gets_room_back_when_drained(tmp_path: Path) -> None:
    spool = await opened(tmp_path, max_bytes=len(MAGIC) + 3 * (HEADER.size + 100))
    for _ in range(3):
        await spool.append(b"x" * 100)
    assert (spool.has_room, spool.can_take(1)) == (False, False)
    with pytest.raises(SpoolFull):
        await spool.append(b"x" * 100)
    assert spool.records == 3
    await drain_all(spool)
    assert (spool.has_room, spool.can_take(100)) == (True, True)
    await spool.append(b"x" * 100)
    await spool.close()


async def test_a_restart_does_not_send_confirmed_records_again(tmp_path: Path) -> None:
    spool = await opened(tmp_path)
    for payload in PAYLOADS:
        await spool.append(payload)
    confirmed = await spool.next_batch(2, 1 << 20)
    assert confirmed is not None
    await spool.confirm(confirmed)
    unconfirmed = await spool.next_batch(2, 1 << 20)  # published, crash before the confirm
    assert unconfirmed is not None
    await spool.close()

    again = await opened(tmp_path)
    assert again.records == 3
    assert await drain_all(again) == PAYLOADS[2:]
    await again.close()


async def test_the_oldest_record_is_the_next_to_drain(tmp_path: Path) -> None:
    spool = await opened(tmp_path)
    empty = spool.oldest_ms
    await spool.append(b"first")
    first = spool.oldest_ms
    await asyncio.sleep(0.01)
    await spool.append(b"second")
    assert (empty, spool.oldest_ms) == (None, first)
    batch = await spool.next_batch(1, 1 << 20)
    assert batch is not None
    await spool.confirm(batch)
    second = spool.oldest_ms
    assert first is not None
    assert second is not None
    assert second > first
    await spool.close()


async def test_a_directory_serves_one_process_at_a_time(tmp_path: Path) -> None:
    spool = await opened(tmp_path)
    with pytest.raises(SpoolError, match="in use by another process"):
        await opened(tmp_path)
    await spool.close()
    await (await opened(tmp_path)).close()


async def test_an_unusable_directory_is_a_settings_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(SpoolError, match="CDRFLOW_SPOOL_DIR"):
        await opened(blocker / "spool")


async def test_a_segment_torn_at_its_creation_is_removed(tmp_path: Path) -> None:
    spool = await opened(tmp_path)
    await spool.append(b"kept")
    await spool.close()
    (tmp_path / f"seg-{99:020d}.log").write_bytes(MAGIC[:3])
    again = await opened(tmp_path)
    assert (again.records, torn(again)) == (1, 0)
    assert len(segments(tmp_path)) == 1
    await again.close()


async def test_a_large_record_is_drained_alone(tmp_path: Path) -> None:
    spool = await opened(tmp_path)
    await spool.append(b"L" * 5000)
    await spool.append(b"small")
    batch = await spool.next_batch(100, 1000)
    assert batch is not None
    assert batch.payloads == [b"L" * 5000]
    await spool.confirm(batch)
    assert await drain_all(spool) == [b"small"]
    await spool.close()
    assert os.listdir(tmp_path)  # LOCK and position stay
