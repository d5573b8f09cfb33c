"""The local spool: callbacks made durable on disk while RabbitMQ cannot confirm them.

A segment log of our own (docs/operations.md says why; the files are `ingress.spool_format`'s).
Appends are group-committed: requests that arrive while a write is on disk wait for the
next one, and one `os.write` plus one `fsync` serves all of them. A request is answered
only once its record is fsynced. Writing always goes to the newest segment; a new one is
started at `segment_bytes`, and at every start-up, so that a torn tail, which only a crash
leaves, is found and cut once. The drainer reads records oldest first and confirms them
here once the broker has; a segment is deleted when all of it is confirmed. The drain
position is written (not fsynced) after each confirm: after a process crash nothing
confirmed is sent again, after a power loss at most the tail of one segment is, and the
worker's ledger makes that harmless."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from cdrflow.logs import get_logger
from cdrflow.settings import Settings
from ingress.ingress_metrics import IngressMetrics
from ingress.spool_format import (
    HEADER,
    MAGIC,
    Segment,
    SpoolDirectory,
    create_segment,
    delete_segment,
    encode_record,
    recover,
    spooled_at_ms,
)

log = get_logger("cdrflow.ingress.spool")

SEGMENT_BYTES = 16 * 1024 * 1024


class SpoolFull(Exception):
    """The spool cannot take this record: it is full, or a write to it failed."""


@dataclass
class DrainBatch:
    """Records read for one publish, confirmed together."""

    sequence: int
    start: int
    end: int
    payloads: list[bytes]
    size: int


@dataclass
class _Pending:
    records: list[bytes] = field(default_factory=list)
    waiters: list[asyncio.Future[None]] = field(default_factory=list)


async def open_spool(settings: Settings, metrics: IngressMetrics) -> Spool | None:
    """The ingress's spool, or None when the settings turn it off."""
    if settings.spool_max_bytes <= 0:
        return None
    return await Spool.open(
        Path(settings.spool_dir), max_bytes=settings.spool_max_bytes, metrics=metrics
    )


class Spool:
    """Open it with `await Spool.open(...)`; close it with `await spool.close()`."""

    def __init__(
        self, directory: Path, max_bytes: int, segment_bytes: int, metrics: IngressMetrics
    ) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.metrics = metrics
        self.records = 0  # spooled, not yet confirmed by the broker
        self.bytes = 0  # ... and their size on disk
        self.oldest_ms: int | None = None
        self._disk_bytes = 0  # every segment file, plus appends waiting for their write
        self._segments: deque[Segment] = deque()
        self._active: Segment | None = None  # the segment appends go to
        self._read_offset = len(MAGIC)  # in the first segment
        self._next_sequence = 1
        self._pending = _Pending()
        self._committer: asyncio.Task[None] | None = None
        self._writing = False
        self._broken: str | None = None
        self._has_records = asyncio.Event()
        self._empty = asyncio.Event()
        self._empty.set()
        self._held: SpoolDirectory | None = None

    @classmethod
    async def open(
        cls,
        directory: Path,
        *,
        max_bytes: int,
        metrics: IngressMetrics,
        segment_bytes: int = SEGMENT_BYTES,
    ) -> Spool:
        spool = cls(directory, max_bytes, segment_bytes, metrics)
        await asyncio.to_thread(spool._recover)
        metrics.watch_spool(spool)
        return spool

    # --- appending ---------------------------------------------------------------------

    @property
    def has_room(self) -> bool:
        return self._broken is None and self._disk_bytes < self.max_bytes

    def can_take(self, size: int) -> bool:
        return self._broken is None and self._disk_bytes + HEADER.size + size <= self.max_bytes

    async def append(self, payload: bytes) -> None:
        """Return once the payload is fsynced in the spool; else SpoolFull."""
        if self._broken is not None:
            raise SpoolFull(f"spool unusable: {self._broken}")
        if not self.can_take(len(payload)):
            raise SpoolFull("spool full")
        record = encode_record(payload, time.time_ns() // 1_000_000)
        self._disk_bytes += len(record)
        waiter = asyncio.get_running_loop().create_future()
        self._pending.records.append(record)
        self._pending.waiters.append(waiter)
        if self._committer is None:
            self._committer = asyncio.create_task(self._commit_groups())
        # Shielded: a client that hangs up must not cancel the shared write.
        await asyncio.shield(waiter)

    async def _commit_groups(self) -> None:
        try:
            while self._pending.records:
                group, self._pending = self._pending, _Pending()
                await self._commit(group)
        finally:
            self._committer = None

    async def _commit(self, group: _Pending) -> None:
        data = b"".join(group.records)
        self._writing = True
        try:
            segment = await self._segment_for_writing()
            await asyncio.to_thread(segment.append, data)
        except OSError as exc:
            # After a failed fsync the page cache cannot be trusted (PostgreSQL's
            # "fsyncgate"): refuse further appends until a restart re-reads the disk.
            self._broken = f"{type(exc).__name__}: {exc}"
            self._disk_bytes -= len(data)
            log.error("spool_write_failed", error=self._broken, records=len(group.records))
            for waiter in group.waiters:
                waiter.set_exception(SpoolFull(f"spool write failed: {self._broken}"))
                waiter.exception()  # retrieved here: waiters may all have gone
            return
        finally:
            self._writing = False
        segment.size += len(data)
        if self.records == 0:
            self.oldest_ms = spooled_at_ms(data)
        self.records += len(group.records)
        self.bytes += len(data)
        self._has_records.set()
        self._empty.clear()
        self.metrics.spool_writes.inc(len(group.records))
        for waiter in group.waiters:
            waiter.set_result(None)

    async def _segment_for_writing(self) -> Segment:
        active = self._active
        if active is not None and active.size < self.segment_bytes:
            return active
        segment = await asyncio.to_thread(create_segment, self.directory, self._next_sequence)
        self._next_sequence += 1
        if active is not None:
            active.close_writer()
        segment.open_writer()
        self._segments.append(segment)
        self._active = segment
        self._disk_bytes += len(MAGIC)
        return segment

    # --- draining ----------------------------------------------------------------------

    async def wait_for_records(self) -> None:
        await self._has_records.wait()

    async def wait_until_empty(self) -> None:
        await self._empty.wait()

    async def next_batch(self, max_records: int, max_bytes: int) -> DrainBatch | None:
        """The oldest unconfirmed records (at least one, then up to the limits), all from
        one segment; None when nothing is spooled."""
        if self.records == 0:
            return None
        segment = self._segments[0]
        start = self._read_offset
        if start >= segment.size:
            if segment is self._active:
                return None
            await self._retire_first()  # all of it was confirmed while it was still written
            return await self.next_batch(max_records, max_bytes)
        segment.open_reader()
        found = await asyncio.to_thread(segment.records_from, start, max_bytes)
        records = found.records[: max(1, max_records)]
        if not records:
            self._skip_damaged(segment, start)
            return None
        end = start + records[-1].offset + records[-1].size
        return DrainBatch(segment.sequence, start, end, [r.payload for r in records], end - start)

    def _skip_damaged(self, segment: Segment, start: int) -> None:
        """A record that was intact when written no longer is (the disk changed under us):
        count it and give up the rest of that segment, since no length past it can be
        trusted."""
        self.metrics.spool_torn_records.inc()
        lost = segment.size - start
        log.error("spool_record_damaged", segment=segment.path.name, offset=start, bytes=lost)
        self._read_offset = segment.size
        # Rare enough to afford reading the other segments' headers again.
        remaining = [r for later in list(self._segments)[1:] for r in later.intact_records()]
        self.records, self.bytes = len(remaining), sum(r.size for r in remaining)
        self._note_oldest()

    async def confirm(self, batch: DrainBatch) -> None:
        """The broker confirmed `batch`: forget it, and delete what is all confirmed."""
        segment = self._segments[0]
        if segment.sequence != batch.sequence or self._read_offset != batch.start:
            raise RuntimeError("spool batches must be confirmed in the order they were read")
        self._read_offset = batch.end
        self.records -= len(batch.payloads)
        self.bytes -= batch.size
        self.metrics.spool_drained.inc(len(batch.payloads))
        if self.records == 0:
            self.oldest_ms = None  # a scrape during the await below sees the gauges agree
        if batch.end >= segment.size and (segment is not self._active or not self._writing):
            await self._retire_first()
        self._save_position()
        self._note_oldest()  # then tells who waits for an empty spool: the position is saved

    async def _retire_first(self) -> None:
        segment = self._segments.popleft()
        if segment is self._active:
            self._active = None
        segment.close_writer()
        segment.close_reader()
        await asyncio.to_thread(delete_segment, segment.path)
        self._disk_bytes -= segment.size
        self._read_offset = len(MAGIC)

    def _note_oldest(self) -> None:
        if self.records == 0:
            self.oldest_ms = None
            self._has_records.clear()
            self._empty.set()
            return
        segment = self._segments[0]
        offset = self._read_offset
        if offset >= segment.size:
            segment, offset = self._segments[1], len(MAGIC)
        self.oldest_ms = segment.spooled_at_ms(offset)

    def _save_position(self) -> None:
        sequence = self._segments[0].sequence if self._segments else self._next_sequence - 1
        offset = self._read_offset if self._segments else 0
        assert self._held is not None
        self._held.write_position(sequence, offset)

    # --- opening and closing -----------------------------------------------------------

    def _recover(self) -> None:
        self._held = SpoolDirectory(self.directory)
        found = recover(self.directory, self._held.read_position())
        if found.torn:
            self.metrics.spool_torn_records.inc(found.torn)
        self._next_sequence = found.next_sequence
        self._segments.extend(found.segments)
        self._disk_bytes += sum(segment.size for segment in found.segments)
        self.records, self.bytes = found.records, found.bytes
        if self._segments:
            self._has_records.set()
            self._empty.clear()
            self._read_offset = found.read_offset
            self._note_oldest()
        log.info(
            "spool_opened",
            directory=str(self.directory),
            records=self.records,
            bytes=self.bytes,
            max_bytes=self.max_bytes,
        )

    async def close(self) -> None:
        """Finish the writes under way, then release the directory."""
        if self._committer is not None:
            await asyncio.shield(self._committer)
        for segment in self._segments:
            segment.close_reader()
            with contextlib.suppress(OSError):
                segment.close_writer()
        if self._held is not None:
            self._held.release()
            self._held = None
