"""What the spool costs per request: `python -m tools.bench.spool [DIRECTORY]`.

Appends ~1 KiB envelopes at several concurrencies and prints the CPU time per append
(this process, all threads) and the wall time of each group's write + fsync. Run it on
the disk the spool will use: the fsync figure is the disk's, not ours."""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import ingress.spool_format
from ingress.ingress_metrics import IngressMetrics
from ingress.spool import Spool

ENVELOPE = b'{"ingest_id":"01937c5e","body":"' + b"x" * 1000 + b'"}'
APPENDS = 4000


async def measure(directory: Path, concurrency: int) -> str:
    syncs: list[float] = []
    real = ingress.spool_format.write_all_and_sync

    def timed(fd: int, data: bytes) -> None:
        started = time.perf_counter()
        real(fd, data)
        syncs.append(time.perf_counter() - started)

    ingress.spool_format.write_all_and_sync = timed
    spool = await Spool.open(directory, max_bytes=1 << 30, metrics=IngressMetrics())
    try:
        pending = iter(range(APPENDS))

        async def client() -> None:
            for _ in pending:
                await spool.append(ENVELOPE)

        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    finally:
        await spool.close()
        ingress.spool_format.write_all_and_sync = real
    groups = len(syncs)
    return (
        f"concurrency {concurrency:4d}: {cpu / APPENDS * 1e6:6.1f} µs CPU per append, "
        f"{APPENDS / groups:6.1f} appends per fsync, fsync+write per group "
        f"median {statistics.median(syncs) * 1000:.2f} ms, "
        f"p99 {sorted(syncs)[int(groups * 0.99) - 1] * 1000:.2f} ms, "
        f"{APPENDS / wall:8.0f} appends/s"
    )


async def main(base: Path) -> None:
    for concurrency in (1, 16, 128):
        with tempfile.TemporaryDirectory(dir=base) as directory:
            print(await measure(Path(directory), concurrency))


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.gettempdir())))
