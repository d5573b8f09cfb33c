"""The local spool: callbacks made durable on disk while RabbitMQ cannot confirm them.

A segment log of our own (the README says why): a directory of append-only files
`seg-<sequence>.log`, each starting with `MAGIC`, then records

    [payload length u32][crc32 u32][spooled at, ms since the epoch u64][payload]

little-endian; the checksum covers the length, the time and the payload, so a torn or
corrupted record is recognised on reading. A payload is one encoded envelope.

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
import fcntl
import os
import struct
import time
import zlib
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from cdrflow.logs import get_logger
from cdrflow.settings import PREFIX, Settings, SettingsError
from ingress.metrics import IngressMetrics

log = get_logger("cdrflow.ingress.spool")

MAGIC = b"CDRSPL1\n"
HEADER = struct.Struct("<IIQ")  # length, crc32, spooled_at_ms
_CHECKED = struct.Struct("<IQ")  # the header fields the checksum covers, with the payload
_POSITION = struct.Struct("<QQI")  # segment sequence, offset, crc32 of both
SEGMENT_BYTES = 16 * 1024 * 1024
_LOCK_FILE = "LOCK"
_POSITION_FILE = "position"


class SpoolError(SettingsError):
    """The spool directory cannot be used (not creatable, or held by another process)."""


class SpoolFull(Exception):
    """The spool cannot take this record: it is full, or a write to it failed."""


def encode_record(payload: bytes, spooled_at_ms: int) -> bytes:
    checksum = zlib.crc32(payload, zlib.crc32(_CHECKED.pack(len(payload), spooled_at_ms)))
    return HEADER.pack(len(payload), checksum, spooled_at_ms) + payload


@dataclass(frozen=True)
class Record:
    offset: int  # of its header, within the segment file
    size: int  # header and payload
    spooled_at_ms: int
    payload: bytes


@dataclass(frozen=True)
class Scan:
    records: list[Record]
    end: int  # offset after the last good record
    damaged: bool  # bytes after `end` are not a whole, intact record


def scan_records(data: bytes, start: int) -> Scan:
    """The intact records of `data` from `start` on; stops at the first torn or corrupt one
    (past it, no length can be trusted)."""
    records: list[Record] = []
    offset = start
    while offset < len(data):
        if len(data) - offset < HEADER.size:
            return Scan(records, offset, damaged=True)
        length, checksum, spooled_at = HEADER.unpack_from(data, offset)
        begin, end = offset + HEADER.size, offset + HEADER.size + length
        if end > len(data):
            return Scan(records, offset, damaged=True)
        payload = data[begin:end]
        if zlib.crc32(payload, zlib.crc32(_CHECKED.pack(length, spooled_at))) != checksum:
            return Scan(records, offset, damaged=True)
        records.append(Record(offset, end - offset, spooled_at, payload))
        offset = end
    return Scan(records, offset, damaged=False)


@dataclass
class _Segment:
    sequence: int
    path: Path
    size: int  # bytes on disk that are fsynced and intact
    read_fd: int | None = None


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
        self._segments: deque[_Segment] = deque()
        self._active: _Segment | None = None  # the segment appends go to
        self._write_fd: int | None = None
        self._read_offset = len(MAGIC)  # in the first segment
        self._next_sequence = 1
        self._pending = _Pending()
        self._committer: asyncio.Task[None] | None = None
        self._writing = False
        self._broken: str | None = None
        self._has_records = asyncio.Event()
        self._empty = asyncio.Event()
        self._empty.set()
        self._lock_fd = -1
        self._position_fd = -1

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
            assert self._write_fd is not None
            await asyncio.to_thread(_write_all_and_sync, self._write_fd, data)
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
            self.oldest_ms = HEADER.unpack_from(data)[2]
        self.records += len(group.records)
        self.bytes += len(data)
        self._has_records.set()
        self._empty.clear()
        self.metrics.spool_writes.inc(len(group.records))
        for waiter in group.waiters:
            waiter.set_result(None)

    async def _segment_for_writing(self) -> _Segment:
        active = self._active
        if active is not None and active.size < self.segment_bytes:
            return active
        segment = await asyncio.to_thread(self._create_segment)
        if self._write_fd is not None:
            os.close(self._write_fd)
        self._write_fd = os.open(segment.path, os.O_WRONLY | os.O_APPEND)
        self._segments.append(segment)
        self._active = segment
        self._disk_bytes += len(MAGIC)
        return segment

    def _create_segment(self) -> _Segment:
        sequence = self._next_sequence
        self._next_sequence += 1
        path = self.directory / f"seg-{sequence:020d}.log"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            _write_all_and_sync(fd, MAGIC)
        finally:
            os.close(fd)
        _sync_directory(self.directory)
        return _Segment(sequence, path, len(MAGIC))

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
        if segment.read_fd is None:
            segment.read_fd = os.open(segment.path, os.O_RDONLY)
        available = segment.size - start
        data = await asyncio.to_thread(
            os.pread, segment.read_fd, min(available, max(max_bytes, HEADER.size)), start
        )
        if len(data) >= HEADER.size:
            first = HEADER.unpack_from(data)[0] + HEADER.size
            if len(data) < first <= available:  # one record larger than max_bytes goes alone
                data = await asyncio.to_thread(os.pread, segment.read_fd, first, start)
        found = scan_records(data, 0)
        records = found.records[: max(1, max_records)]
        if not records:
            self._skip_damaged(segment, start)
            return None
        end = start + records[-1].offset + records[-1].size
        return DrainBatch(segment.sequence, start, end, [r.payload for r in records], end - start)

    def _skip_damaged(self, segment: _Segment, start: int) -> None:
        """A record that was intact when written no longer is (the disk changed under us):
        count it and give up the rest of that segment, since no length past it can be
        trusted."""
        self.metrics.spool_torn_records.inc()
        lost = segment.size - start
        log.error("spool_record_damaged", segment=segment.path.name, offset=start, bytes=lost)
        self._read_offset = segment.size
        # Rare enough to afford reading the other segments' headers again.
        remaining = [
            record
            for later in list(self._segments)[1:]
            for record in scan_records(later.path.read_bytes()[: later.size], len(MAGIC)).records
        ]
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
        if batch.end >= segment.size and (segment is not self._active or not self._writing):
            await self._retire_first()
        self._save_position()
        self._note_oldest()

    async def _retire_first(self) -> None:
        segment = self._segments.popleft()
        if segment is self._active:
            self._active = None
            if self._write_fd is not None:
                os.close(self._write_fd)
                self._write_fd = None
        if segment.read_fd is not None:
            os.close(segment.read_fd)
        await asyncio.to_thread(_delete_segment, segment.path)
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
        if segment.read_fd is None:
            segment.read_fd = os.open(segment.path, os.O_RDONLY)
        # 16 bytes just written or read: in the page cache, a few microseconds.
        header = os.pread(segment.read_fd, HEADER.size, offset)
        self.oldest_ms = HEADER.unpack(header)[2]

    def _save_position(self) -> None:
        # Not fsynced: after a power loss an older position only means re-sending more.
        sequence = self._segments[0].sequence if self._segments else self._next_sequence - 1
        offset = self._read_offset if self._segments else 0
        body = struct.pack("<QQ", sequence, offset)
        os.pwrite(self._position_fd, _POSITION.pack(sequence, offset, zlib.crc32(body)), 0)

    # --- opening and closing -----------------------------------------------------------

    def _recover(self) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(self.directory / _LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise SpoolError(f"{PREFIX}SPOOL_DIR: {self.directory}: {exc.strerror}") from exc
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(self._lock_fd)
            raise SpoolError(
                f"{PREFIX}SPOOL_DIR: {self.directory} is in use by another process "
                "(each ingress needs a spool directory of its own)"
            ) from exc
        self._position_fd = os.open(self.directory / _POSITION_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        confirmed = self._read_position()
        paths = sorted(self.directory.glob("seg-*.log"))
        last = max([_sequence_of(p) for p in paths] + [confirmed[0]], default=0)
        self._next_sequence = last + 1
        for path in paths:
            self._recover_segment(path, confirmed)
        if self._segments:
            self._read_offset = max(len(MAGIC), self._first_offset(confirmed))
            self._note_oldest()
        log.info(
            "spool_opened",
            directory=str(self.directory),
            records=self.records,
            bytes=self.bytes,
            max_bytes=self.max_bytes,
        )

    def _read_position(self) -> tuple[int, int]:
        raw = os.pread(self._position_fd, _POSITION.size, 0)
        if len(raw) != _POSITION.size:
            return (0, 0)
        sequence, offset, checksum = _POSITION.unpack(raw)
        if zlib.crc32(struct.pack("<QQ", sequence, offset)) != checksum:
            return (0, 0)  # a torn position only means re-sending more: duplicates, no loss
        return (sequence, offset)

    def _first_offset(self, confirmed: tuple[int, int]) -> int:
        sequence, offset = confirmed
        return offset if self._segments[0].sequence == sequence else len(MAGIC)

    def _recover_segment(self, path: Path, confirmed: tuple[int, int]) -> None:
        sequence = _sequence_of(path)
        if sequence < confirmed[0]:
            _delete_segment(path)  # all confirmed; the crash came before its deletion
            return
        data = path.read_bytes()
        if not data.startswith(MAGIC):
            if not MAGIC.startswith(data):  # not merely a segment torn at its creation
                log.error("spool_segment_unreadable", segment=path.name, bytes=len(data))
                path.rename(path.with_suffix(".unreadable"))
            else:
                _delete_segment(path)
            return
        found = scan_records(data, len(MAGIC))
        if found.damaged:
            self._cut_torn_tail(path, found.end, len(data) - found.end)
        start = confirmed[1] if sequence == confirmed[0] else len(MAGIC)
        undrained = [r for r in found.records if r.offset >= start]
        if not undrained:
            _delete_segment(path)
            return
        self._segments.append(_Segment(sequence, path, found.end))
        self._disk_bytes += found.end
        self.records += len(undrained)
        self.bytes += sum(r.size for r in undrained)
        self._has_records.set()
        self._empty.clear()

    def _cut_torn_tail(self, path: Path, end: int, torn_bytes: int) -> None:
        # Cut, so that the next start-up does not count the same torn record again.
        self.metrics.spool_torn_records.inc()
        log.warning("spool_torn_record", segment=path.name, offset=end, bytes=torn_bytes)
        fd = os.open(path, os.O_WRONLY)
        try:
            os.ftruncate(fd, end)
            os.fsync(fd)
        finally:
            os.close(fd)

    async def close(self) -> None:
        """Finish the writes under way, then release the directory."""
        if self._committer is not None:
            await asyncio.shield(self._committer)
        for segment in self._segments:
            if segment.read_fd is not None:
                os.close(segment.read_fd)
                segment.read_fd = None
        for fd in (self._write_fd, self._position_fd, self._lock_fd):
            if fd is not None and fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._write_fd = None
        self._position_fd = self._lock_fd = -1


def _sequence_of(path: Path) -> int:
    try:
        return int(path.stem.removeprefix("seg-"))
    except ValueError:
        return 0


def _write_all_and_sync(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
    os.fsync(fd)


def _sync_directory(directory: Path) -> None:
    # A new or deleted file is durable only once its directory entry is.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _delete_segment(path: Path) -> None:
    path.unlink(missing_ok=True)
    _sync_directory(path.parent)
