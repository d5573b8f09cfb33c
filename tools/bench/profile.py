"""`make profile`: where one process's CPU goes, under the bench's own load, before anyone
optimizes it (py-spy, sampling the running process from outside).

    make profile                              # a worker draining 30,000 callbacks
    make profile PROFILE_ARGS="ingress"       # the ingress under wrk, 256 connections
    make profile PROFILE_ARGS="worker --callbacks 100000 --shared"

It prints the process's CPU per callback, the functions with the most samples of their own
("self") and the ones most often on the stack ("inclusive", cdrflow's own code), and keeps
the collapsed stacks (`--raw`, for a flame graph: speedscope or flamegraph.pl read them).

py-spy samples with `--nonblocking`: in its default mode it stops the process for each
sample, and on a VM the samples then pile up at system calls such as `os.urandom` and
`getpid`, cheap calls that show nowhere without the stops (docs/benchmarks.md)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from cdrflow import logs
from tools.bench import mix
from tools.bench.mix import write_wrk_requests
from tools.bench.pipeline import fill, topology, until_drained
from tools.bench.processes import NO_DATABASE, bench_settings, cpu_seconds, ingress, workers
from tools.bench.services import Services, services
from tools.bench.wrk import require_wrk, run_wrk

RATE = 200  # samples a second
TOP = 40  # functions listed in each part of the summary
OWN_CODE = ("cdrflow/", "ingress/", "workers/", "schemas/")  # py-spy's paths are relative


@dataclass(frozen=True)
class Summary:
    samples: int
    own: list[tuple[str, int]]  # frame -> samples where it is the innermost frame
    inclusive: list[tuple[str, int]]  # frame -> samples where it is on the stack


def summarize(collapsed: Iterable[str], top: int = TOP) -> Summary:
    """The collapsed stacks py-spy writes (`frame;frame;... count`, outermost first)."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in collapsed:
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        total += samples
        frames = stack.split(";")
        own[frames[-1]] += samples
        for frame in set(frames):  # a recursive function counts once per sample
            inclusive[frame] += samples
    ours = [(f, n) for f, n in inclusive.most_common() if _is_ours(f)]
    return Summary(total, own.most_common(top), ours[:top])


def _is_ours(frame: str) -> bool:
    """`function (path)` with the path in this checkout's packages (not a site-packages
    path that happens to contain one of their names)."""
    _, _, where = frame.rpartition(" (")
    return where.startswith(OWN_CODE)


def render(summary: Summary, heading: str) -> str:
    def share(samples: int) -> str:
        return f"{samples / max(1, summary.samples):6.1%}"

    lines = [heading, f"{summary.samples:,} samples", "", "self (innermost frame):"]
    lines += [f"  {share(n)}  {frame}" for frame, n in summary.own]
    lines += ["", "inclusive (cdrflow's own code on the stack):"]
    lines += [f"  {share(n)}  {frame}" for frame, n in summary.inclusive]
    return "\n".join(lines)


@contextlib.asynccontextmanager
async def sampling(pid: int, raw: Path, workdir: Path) -> AsyncIterator[None]:
    """py-spy recording `pid` while the block runs; stopped, and its file checked, after."""
    _forget(raw)  # never summarize an earlier run's stacks
    errors = workdir / "py-spy.log"
    with errors.open("wb") as log:
        spy = await asyncio.create_subprocess_exec(
            _py_spy(),
            *("record", "--pid", str(pid), "--rate", str(RATE), "--nonblocking", "--nolineno"),
            *("--format", "raw", "--output", str(raw)),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=log,
        )
    try:
        await asyncio.sleep(0.5)  # attached before the measured work starts
        if spy.returncode is not None:
            raise RuntimeError(f"py-spy could not attach: {_tail(errors)}")
        yield
    finally:
        if spy.returncode is None:
            spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        try:
            code = await asyncio.wait_for(spy.wait(), 30)
        except TimeoutError:
            spy.kill()
            raise
    if code != 0 or not _written(raw):
        raise RuntimeError(f"py-spy wrote no profile (exit {code}): {_tail(errors)}")


def _forget(raw: Path) -> None:
    raw.unlink(missing_ok=True)


def _written(raw: Path) -> bool:
    return raw.exists() and raw.stat().st_size > 0


def _tail(log: Path) -> str:
    lines = log.read_text(errors="replace").strip().splitlines()
    return lines[-1] if lines else "no message"


def _py_spy() -> str:
    """The venv's py-spy (the pinned one), else one on PATH."""
    beside = Path(sys.executable).with_name("py-spy")
    found = str(beside) if beside.exists() else shutil.which("py-spy")
    if found is None:
        raise SystemExit("py-spy is missing: `make install` puts it in the venv")
    return found


async def profile_worker(
    where: Services, database_url: str, callbacks: int, raw: Path, workdir: Path
) -> str:
    """One worker draining a backlog of the bench mix (32 callbacks a message), put on
    the queue once py-spy is attached."""
    settings = bench_settings(where.amqp_url, database_url, workdir)
    db = await asyncpg.connect(database_url)
    try:
        async with topology(settings) as broker, workers(settings, workdir) as (worker,):
            await broker.until_consumed_by(1)
            # The backlog comes once py-spy is attached: the worker drains none of it
            # unobserved (it takes messages while they are still put).
            async with sampling(worker.pid, raw, workdir):
                before, started = cpu_seconds(worker.pid), time.monotonic()
                total = await fill(broker, mix.callbacks(callbacks, seed=callbacks))
                drained = await until_drained(broker, db, at_least=total)
                spent = cpu_seconds(worker.pid) - before
    finally:
        await db.close()
    done = drained.callbacks
    rate = done / (drained.finished - started)
    return (
        f"one worker draining {done:,} callbacks, under py-spy: {rate:,.0f} callbacks/s "
        f"(from the first put on the queue), {spent / done * 1e6:.0f} µs of its CPU per callback"
    )


async def profile_ingress(where: Services, seconds: float, raw: Path, workdir: Path) -> str:
    """The ingress alone under wrk, 256 connections kept alive (no worker and no database:
    the raw queue takes the load, and is deleted after)."""
    requests = workdir / "requests.bin"
    write_wrk_requests(requests, 20_000)
    settings = bench_settings(where.amqp_url, NO_DATABASE, workdir)
    async with topology(settings), ingress(settings, workdir) as served:
        await run_wrk(served.url, requests, connections=256, seconds=2)  # warm up
        async with sampling(served.pid, raw, workdir):
            before = cpu_seconds(served.pid)
            load = await run_wrk(served.url, requests, connections=256, seconds=seconds)
            spent = cpu_seconds(served.pid) - before
    return (
        f"ingress under wrk, 256 connections kept alive, under py-spy: {load.rate:,.0f} "
        f"requests/s ({load.failed:,} failed), "
        f"{spent / max(1, load.requests) * 1e6:.0f} µs of its CPU per request"
    )


async def _profile(args: argparse.Namespace, workdir: Path) -> str:
    """The chosen process profiled on fresh services (and a database of its own, dropped
    after): the summary's heading."""
    with services(shared=args.shared) as where:
        if args.process == "ingress":
            return await profile_ingress(where, args.seconds, args.raw, workdir)
        url = await where.fresh_database("profile")
        try:
            return await profile_worker(where, url, args.callbacks, args.raw, workdir)
        finally:
            await where.drop(url)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("process", nargs="?", choices=("worker", "ingress"), default="worker")
    parser.add_argument("--callbacks", type=int, default=30_000, help="the worker's backlog")
    parser.add_argument("--seconds", type=float, default=10, help="the ingress's wrk run")
    parser.add_argument("--shared", action="store_true", help="the shared RabbitMQ and PostgreSQL")
    parser.add_argument("--raw", type=Path, default=Path("profile.raw"), help="collapsed stacks")
    parser.add_argument("--top", type=int, default=TOP)
    args = parser.parse_args()
    _py_spy()
    if args.process == "ingress":
        require_wrk()
    logs.configure("warning", "console")
    with tempfile.TemporaryDirectory(prefix="cdrflow-profile-") as directory:
        heading = asyncio.run(_profile(args, Path(directory)))
    with args.raw.open() as collapsed:
        print(render(summarize(collapsed, args.top), heading))
    print(f"\ncollapsed stacks: {args.raw}")


if __name__ == "__main__":
    main()
