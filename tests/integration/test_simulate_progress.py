"""`cdrflow simulate` shows its progress (cdrflow/progress.py): a live bar when stderr is a
terminal, and where nobody watches a bar (a pipe, a pod's log) a `simulate_progress` log
line, at least the one at the end, with the answers by status."""

from __future__ import annotations

import asyncio
import fcntl
import os
import pty
import re
import struct
import termios
from pathlib import Path

import orjson

from cdrflow.settings import Settings
from schemas.sources import Sources
from tests.support.ingress import ingress_client
from tests.support.processes import command_env, start_cdrflow

COUNT = 40


def simulate_args(url: str) -> tuple[str, ...]:
    return ("simulate", "--url", url, "--rate", "200", "--count", str(COUNT), "--seed", "3")


async def test_without_a_terminal_the_progress_is_a_log_line_with_the_answers(
    settings: Settings, sources: Sources, tmp_path: Path
) -> None:
    async with ingress_client(settings, sources) as client:
        process = await start_cdrflow(
            *simulate_args(client.make_url("")),
            env=command_env(settings, tmp_path),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    report = orjson.loads(out)
    lines = [orjson.loads(line) for line in err.decode().splitlines() if line.startswith("{")]
    progress = [line for line in lines if line["event"] == "simulate_progress"]
    assert progress, err.decode()
    last = progress[-1]
    assert last["done"] == last["sent"] == report["sent"] == last["total"] == COUNT
    assert {key: last[key] for key in report["statuses"]} == report["statuses"]
    assert last["errors"] == report["errors"]
    assert "\r" not in err.decode()  # no bar drawn into a log


async def test_on_a_terminal_the_progress_is_a_live_bar(
    settings: Settings, sources: Sources, tmp_path: Path
) -> None:
    terminal, device = pty.openpty()
    fcntl.ioctl(device, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 250, 0, 0))
    try:
        async with ingress_client(settings, sources) as client:
            process = await start_cdrflow(
                *simulate_args(client.make_url("")),
                env=command_env(settings, tmp_path),
                stdout=asyncio.subprocess.PIPE,
                stderr=device,
            )
            os.close(device)
            device = -1
            screen, (out, _) = await asyncio.gather(
                asyncio.to_thread(read_until_closed, terminal),
                asyncio.wait_for(process.communicate(), 60),
            )
    finally:
        os.close(terminal)
        if device >= 0:
            os.close(device)
    assert process.returncode == 0, screen
    report = orjson.loads(out)
    # The bar redraws its line with a carriage return; the last drawing holds the totals.
    drawings = [d for d in re.split(r"[\r\n]+", screen) if "answer" in d]
    assert drawings, screen
    final = drawings[-1]
    assert re.search(rf"\b{COUNT}/{COUNT}\b", final), final  # the total is known from the start
    assert report["sent"] == COUNT
    assert f"sent={report['sent']}" in final
    assert all(f"{status}={n}" in final for status, n in report["statuses"].items()), final
    assert "simulate_progress" not in screen  # the bar, not the log lines


def read_until_closed(terminal: int) -> str:
    """Everything written to the terminal until its last writer closes it."""
    chunks = []
    while True:
        try:
            chunk = os.read(terminal, 4096)
        except OSError:  # EIO: the process has exited and closed its end
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", "replace")
