"""Running wrk with `callbacks.lua` and reading what it measured."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

SCRIPT = Path(__file__).with_name("callbacks.lua")
THREADS = 1  # one wrk thread keeps up with these servers and leaves them the other core


@dataclass(frozen=True)
class Load:
    requests: int
    seconds: float
    failed: int  # connect/read/write errors, timeouts, and answers other than 2xx/3xx
    p50_ms: float
    p99_ms: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


def require_wrk() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise RuntimeError(
            "wrk is not installed (`make bench` installs it; or apt-get install wrk)"
        )
    return found


async def run_wrk(
    url: str,
    requests_file: Path,
    *,
    connections: int,
    seconds: float,
    close: bool = False,
    rate: float = 0,
) -> Load:
    env = {
        **os.environ,
        "BENCH_REQUESTS": str(requests_file),
        "BENCH_WRK_THREADS": str(THREADS),
        "BENCH_CLOSE": "1" if close else "0",
        "BENCH_RATE": str(rate) if rate else "0",
    }
    process = await asyncio.create_subprocess_exec(
        require_wrk(),
        *("-t", str(THREADS), "-c", str(connections), "-d", f"{seconds:g}s", "--timeout", "10s"),
        *("-s", str(SCRIPT), url),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    text = output.decode(errors="replace")
    for line in text.splitlines():
        if line.startswith("BENCH "):
            result = json.loads(line[len("BENCH ") :])
            break
    else:
        raise RuntimeError(f"wrk printed no result:\n{text}")
    failed = sum(result[k] for k in ("connect", "read", "write", "status", "timeout"))
    return Load(
        requests=result["requests"],
        seconds=result["duration_us"] / 1e6,
        failed=failed,
        p50_ms=result["p50_us"] / 1000,
        p99_ms=result["p99_us"] / 1000,
    )
