"""The spool's files on disk: segments of records, the drain position, the lock.

A segment `seg-<sequence>.log` starts with `MAGIC`, then holds records

    [payload length u32][crc32 u32][spooled at, ms since the epoch u64][payload]

little-endian; the checksum covers the length, the time and the payload, so a torn or
corrupted record is recognised on reading. A payload is one encoded envelope. The position
file holds the drain position (segment sequence and offset) with its own checksum."""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from cdrflow.logs import get_logger
from cdrflow.settings import PREFIX, SettingsError

log = get_logger("cdrflow.ingress.spool")

MAGIC = b"CDRSPL1\n"
HEADER = struct.Struct("<IIQ")  # length, crc32, spooled_at_ms
_CHECKED = struct.Struct("<IQ")  # the header fields the checksum covers, with the payload
_POSITION = struct.Struct("<QQI")  # segment sequence, offset, crc32 of both
_POSITION_BODY = struct.Struct("<QQ")
LOCK_FILE = "LOCK"
POSITION_FILE = "position"


class SpoolError(SettingsError):
    """The spool directory cannot be used (not creatable, or held by another process)."""


def encode_record(payload: bytes, spooled_at_ms: int) -> bytes:
    checksum = zlib.crc32(payload, zlib.crc32(_CHECKED.pack(len(payload), spooled_at_ms)))
    return HEADER.pack(len(payload), checksum, spooled_at_ms) + payload


def spooled_at_ms(header: bytes) -> int:
    """The time in the header at the start of `header`."""
    return int(HEADER.unpack_from(header)[2])


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
class Segment:
    """A segment file of the live log, read and written through descriptors kept open."""

    sequence: int
    path: Path
    size: int  # bytes on disk that are fsynced and intact
    read_fd: int | None = None
    write_fd: int | None = None

    def open_writer(self) -> None:
        self.write_fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)

    def append(self, data: bytes) -> None:
        """Write `data` at the end and fsync it; `size` is the caller's to advance."""
        assert self.write_fd is not None
        write_all_and_sync(self.write_fd, data)

    def close_writer(self) -> None:
        if self.write_fd is not None:
            os.close(self.write_fd)
            self.write_fd = None

    def open_reader(self) -> int:
        if self.read_fd is None:
            self.read_fd = os.open(self.path, os.O_RDONLY)
        return self.read_fd

    def records_from(self, start: int, max_bytes: int) -> Scan:
        """The records from `start` on, up to `max_bytes` of them but at least the first
        (a record larger than `max_bytes` goes alone). Call `open_reader` first."""
        assert self.read_fd is not None
        available = self.size - start
        data = os.pread(self.read_fd, min(available, max(max_bytes, HEADER.size)), start)
        if len(data) >= HEADER.size:
            first = HEADER.unpack_from(data)[0] + HEADER.size
            if len(data) < first <= available:
                data = os.pread(self.read_fd, first, start)
        return scan_records(data, 0)

    def spooled_at_ms(self, offset: int) -> int:
        """The time of the record at `offset`."""
        # 16 bytes just written or read: in the page cache, a few microseconds.
        return spooled_at_ms(os.pread(self.open_reader(), HEADER.size, offset))

    def intact_records(self) -> list[Record]:
        return scan_records(self.path.read_bytes()[: self.size], len(MAGIC)).records

    def close_reader(self) -> None:
        if self.read_fd is not None:
            os.close(self.read_fd)
            self.read_fd = None


@dataclass
class Recovery:
    """What a start-up finds in the spool directory."""

    segments: list[Segment] = field(default_factory=list)
    records: int = 0  # not yet drained
    bytes: int = 0  # ... and their size
    torn: int = 0  # segments whose torn tail was cut
    next_sequence: int = 1
    read_offset: int = len(MAGIC)  # in the first segment


def recover(directory: Path, confirmed: tuple[int, int]) -> Recovery:
    """The segments holding records not drained yet, given the `confirmed` drain position;
    the others are deleted."""
    paths = segment_paths(directory)
    last = max([sequence_of(p) for p in paths] + [confirmed[0]], default=0)
    found = Recovery(next_sequence=last + 1)
    for path in paths:
        _recover_segment(path, confirmed, found)
    if found.segments and found.segments[0].sequence == confirmed[0]:
        found.read_offset = max(len(MAGIC), confirmed[1])
    return found


def _recover_segment(path: Path, confirmed: tuple[int, int], found: Recovery) -> None:
    sequence = sequence_of(path)
    if sequence < confirmed[0]:
        delete_segment(path)  # all confirmed; the crash came before its deletion
        return
    scan = read_segment(path)
    if scan is None:
        return
    if scan.damaged:
        found.torn += 1
    start = confirmed[1] if sequence == confirmed[0] else len(MAGIC)
    undrained = [r for r in scan.records if r.offset >= start]
    if not undrained:
        delete_segment(path)
        return
    found.segments.append(Segment(sequence, path, scan.end))
    found.records += len(undrained)
    found.bytes += sum(r.size for r in undrained)


def read_segment(path: Path) -> Scan | None:
    """The records of a segment found at start-up, its torn tail cut off; None for a file
    that holds no segment (torn at its creation: deleted; anything else: set aside)."""
    data = path.read_bytes()
    if not data.startswith(MAGIC):
        if not MAGIC.startswith(data):  # not merely a segment torn at its creation
            log.error("spool_segment_unreadable", segment=path.name, bytes=len(data))
            path.rename(path.with_suffix(".unreadable"))
        else:
            delete_segment(path)
        return None
    found = scan_records(data, len(MAGIC))
    if found.damaged:
        # Cut, so that the next start-up does not count the same torn record again.
        log.warning(
            "spool_torn_record", segment=path.name, offset=found.end, bytes=len(data) - found.end
        )
        _truncate(path, found.end)
    return found


def segment_path(directory: Path, sequence: int) -> Path:
    return directory / f"seg-{sequence:020d}.log"


def segment_paths(directory: Path) -> list[Path]:
    return sorted(directory.glob("seg-*.log"))


def sequence_of(path: Path) -> int:
    try:
        return int(path.stem.removeprefix("seg-"))
    except ValueError:
        return 0


def create_segment(directory: Path, sequence: int) -> Segment:
    path = segment_path(directory, sequence)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        write_all_and_sync(fd, MAGIC)
    finally:
        os.close(fd)
    _sync_directory(directory)
    return Segment(sequence, path, len(MAGIC))


def delete_segment(path: Path) -> None:
    path.unlink(missing_ok=True)
    _sync_directory(path.parent)


class SpoolDirectory:
    """The spool directory, held: its lock, and the file of the drain position."""

    def __init__(self, directory: Path) -> None:
        self._lock_fd = _lock(directory)
        self._position_fd = os.open(directory / POSITION_FILE, os.O_RDWR | os.O_CREAT, 0o600)

    def read_position(self) -> tuple[int, int]:
        """The confirmed drain position: (segment sequence, offset), or (0, 0)."""
        raw = os.pread(self._position_fd, _POSITION.size, 0)
        if len(raw) != _POSITION.size:
            return (0, 0)
        sequence, offset, checksum = _POSITION.unpack(raw)
        if zlib.crc32(_POSITION_BODY.pack(sequence, offset)) != checksum:
            return (0, 0)  # a torn position only means re-sending more: duplicates, no loss
        return (sequence, offset)

    def write_position(self, sequence: int, offset: int) -> None:
        # Not fsynced: after a power loss an older position only means re-sending more.
        checksum = zlib.crc32(_POSITION_BODY.pack(sequence, offset))
        os.pwrite(self._position_fd, _POSITION.pack(sequence, offset, checksum), 0)

    def release(self) -> None:
        for fd in (self._position_fd, self._lock_fd):
            with contextlib.suppress(OSError):
                os.close(fd)


def _lock(directory: Path) -> int:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise SpoolError(f"{PREFIX}SPOOL_DIR: {directory}: {exc.strerror}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        os.close(fd)
        raise SpoolError(
            f"{PREFIX}SPOOL_DIR: {directory} is in use by another process "
            "(each ingress needs a spool directory of its own)"
        ) from exc
    return fd


def write_all_and_sync(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
    os.fsync(fd)


def _truncate(path: Path, end: int) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.ftruncate(fd, end)
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_directory(directory: Path) -> None:
    # A new or deleted file is durable only once its directory entry is.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
