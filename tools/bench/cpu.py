"""Where the machine's CPU goes during a run: utime + stime of every process, from /proc,
by what it is (the ingress, the workers, RabbitMQ, PostgreSQL, wrk, anything else), and
how busy the cores were. With private services (the default) RabbitMQ and PostgreSQL are
this run's own node and cluster; with `--shared` they count as "other"."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tools.bench.processes import CLOCK_TICKS
from tools.bench.services import NODE

CLASSES = ("workers", "ingress", "rabbitmq", "postgres", "wrk", "other")


@dataclass(frozen=True)
class Snapshot:
    seconds: dict[int, tuple[str, float]]  # pid -> (class, CPU seconds so far)
    busy: int  # clock ticks the cores were busy, all cores
    total: int  # clock ticks, all cores


def snapshot(ours: Mapping[int, str]) -> Snapshot:
    """`ours`: pid -> class of the processes under test."""
    table: dict[int, tuple[str, int, float]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            found = _read(int(entry))
            if found is not None:
                table[int(entry)] = found
    seconds = {pid: (_classify(pid, table, ours), row[2]) for pid, row in table.items()}
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = ticks[3] + ticks[4]  # idle + iowait
    return Snapshot(seconds, sum(ticks) - idle, sum(ticks))


def _read(pid: int) -> tuple[str, int, float] | None:
    """(what it is, parent pid, CPU seconds), or None once it has gone."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except (OSError, UnicodeDecodeError):
        return None
    if b"RABBITMQ_NODENAME=" + NODE.encode() in environ:
        kind = "rabbitmq"
    elif "postgres" in command and "cdrflow-bench-" in command:
        kind = "postgres"
    elif os.path.basename(command.split(" ", 1)[0]) == "wrk":
        kind = "wrk"
    else:
        kind = ""
    return kind, int(fields[1]), (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _classify(
    pid: int, table: Mapping[int, tuple[str, int, float]], ours: Mapping[int, str]
) -> str:
    """A process is what it or its nearest known ancestor is (PostgreSQL backends are
    the postmaster's children)."""
    for _ in range(8):
        if pid in ours:
            return ours[pid]
        if pid not in table:
            return "other"
        kind, parent, _ = table[pid]
        if kind:
            return kind
        pid = parent
    return "other"


@dataclass(frozen=True)
class Account:
    seconds: dict[str, float]  # class -> CPU seconds over the run
    busy: float  # share of the machine's cores busy over the run

    def per_callback(self, callbacks: int) -> dict[str, float]:
        """µs of CPU per callback, by class."""
        return {kind: self.seconds.get(kind, 0.0) / callbacks * 1e6 for kind in CLASSES}


def account(before: Snapshot, after: Snapshot) -> Account:
    seconds: dict[str, float] = {}
    for pid, (kind, cpu) in after.seconds.items():
        # A process that started during the run counts from zero.
        start = before.seconds.get(pid, (kind, 0.0))[1]
        seconds[kind] = seconds.get(kind, 0.0) + max(0.0, cpu - start)
    total = max(1, after.total - before.total)
    return Account(seconds, (after.busy - before.busy) / total)
